-- Instances (#14): every daemon heartbeats in ``instances``; the feeds and deliveries it
-- claims carry its id (``claimed_by``), so that when it misses its heartbeats for the
-- grace period (``store.dead_after``) another instance declares it dead and makes its
-- claims due again at once, instead of waiting for their leases to run out
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    started TEXT NOT NULL,
    heartbeat TEXT NOT NULL,
    dead_since TEXT,
    feeds_retaken INTEGER NOT NULL DEFAULT 0,
    deliveries_retaken INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE feeds ADD COLUMN claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
CREATE INDEX feeds_claimed_by ON feeds (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX deliveries_claimed_by ON deliveries (claimed_by) WHERE claimed_by IS NOT NULL;
