-- Clusters merged into older ones (the story index's second-chance merge). Another
-- instance may still file stories or alerts under an absorbed id: save_poll moves them
-- to the survivor, and cluster_alerts looks an absorbed id up under it.
CREATE TABLE cluster_merges (
    gone     TEXT PRIMARY KEY,
    into_id  TEXT NOT NULL
);
CREATE INDEX cluster_merges_into ON cluster_merges (into_id);
