-- Feed health (#13): the current failure streak's start, the last new story, the
-- publication times the feed's cadence is read from (JSON list of ISO 8601 times), and
-- the operational notice waiting for its recovery notice
ALTER TABLE feeds ADD COLUMN failing_since TIMESTAMPTZ;
ALTER TABLE feeds ADD COLUMN last_new_story TIMESTAMPTZ;
ALTER TABLE feeds ADD COLUMN story_times TEXT NOT NULL DEFAULT '[]';
ALTER TABLE feeds ADD COLUMN notice TEXT;
