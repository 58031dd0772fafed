-- monitor store, schema version 1 (SQLite). Times are UTC ISO-8601 text, fixed width,
-- so that text comparison is chronological. Applied by SQLiteStore.open() in one
-- transaction together with PRAGMA user_version = 1.

CREATE TABLE feeds (
    name            TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    configured_url  TEXT NOT NULL,
    etag            TEXT,
    last_modified   TEXT,
    body_hash       TEXT,
    last_polled     TEXT,
    next_poll       TEXT,
    last_success    TEXT,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    gone            INTEGER NOT NULL DEFAULT 0,
    baselined       INTEGER NOT NULL DEFAULT 0,
    problem         TEXT,
    polls           INTEGER NOT NULL DEFAULT 0,
    stories_seen    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX feeds_next_poll ON feeds (next_poll);

CREATE TABLE clusters (
    id           TEXT PRIMARY KEY,
    first_story  TEXT NOT NULL,
    title        TEXT NOT NULL,
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL,
    sources      TEXT NOT NULL DEFAULT '[]'   -- JSON list of feed names
);
CREATE INDEX clusters_last_seen ON clusters (last_seen);

CREATE TABLE stories (
    id          TEXT PRIMARY KEY,
    feed        TEXT NOT NULL,
    link        TEXT NOT NULL,
    title       TEXT NOT NULL,
    cluster     TEXT NOT NULL REFERENCES clusters (id),
    first_seen  TEXT NOT NULL,
    published   TEXT NOT NULL,
    payload     TEXT NOT NULL                 -- the Story as JSON (codec.story_to_json)
);
CREATE INDEX stories_link ON stories (link);
CREATE INDEX stories_cluster ON stories (cluster);
CREATE INDEX stories_first_seen ON stories (first_seen);

CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL UNIQUE,
    channel       TEXT NOT NULL,
    parent_key    TEXT,
    cluster       TEXT NOT NULL,
    rule          TEXT NOT NULL,
    payload       TEXT NOT NULL,              -- the Alert as JSON (codec.alert_to_json)
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    created       TEXT NOT NULL,
    next_attempt  TEXT,
    sent_at       TEXT,
    last_attempt  TEXT,
    last_error    TEXT,
    ref           TEXT
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt);
CREATE INDEX deliveries_alert ON deliveries (cluster, rule, channel, created);
CREATE INDEX deliveries_created ON deliveries (created);
