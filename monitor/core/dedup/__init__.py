"""Story deduplication: title features and the recent-story index of clusters."""
