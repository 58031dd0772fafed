-- monitor store, schema version 1 (PostgreSQL). Applied by PostgresStore.open() in one
-- transaction (under an advisory lock) together with the schema_version row.

CREATE TABLE feeds (
    name            TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    configured_url  TEXT NOT NULL,
    etag            TEXT,
    last_modified   TEXT,
    body_hash       TEXT,
    last_polled     TIMESTAMPTZ,
    next_poll       TIMESTAMPTZ,
    last_success    TIMESTAMPTZ,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    gone            BOOLEAN NOT NULL DEFAULT FALSE,
    baselined       BOOLEAN NOT NULL DEFAULT FALSE,
    problem         TEXT,
    polls           INTEGER NOT NULL DEFAULT 0,
    stories_seen    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX feeds_next_poll ON feeds (next_poll);

CREATE TABLE clusters (
    id           TEXT PRIMARY KEY,
    first_story  TEXT NOT NULL,
    title        TEXT NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL,
    last_seen    TIMESTAMPTZ NOT NULL,
    sources      TEXT NOT NULL DEFAULT '[]'   -- JSON list of feed names
);
CREATE INDEX clusters_last_seen ON clusters (last_seen);

CREATE TABLE stories (
    id          TEXT PRIMARY KEY,
    feed        TEXT NOT NULL,
    link        TEXT NOT NULL,
    title       TEXT NOT NULL,
    cluster     TEXT NOT NULL REFERENCES clusters (id),
    first_seen  TIMESTAMPTZ NOT NULL,
    published   TIMESTAMPTZ NOT NULL,
    payload     TEXT NOT NULL                 -- the Story as JSON (codec.story_to_json)
);
CREATE INDEX stories_link ON stories (link);
CREATE INDEX stories_cluster ON stories (cluster);
CREATE INDEX stories_first_seen ON stories (first_seen);

CREATE TABLE deliveries (
    id            BIGSERIAL PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,
    channel       TEXT NOT NULL,
    parent_key    TEXT,
    cluster       TEXT NOT NULL,
    rule          TEXT NOT NULL,
    payload       TEXT NOT NULL,              -- the Alert as JSON (codec.alert_to_json)
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    created       TIMESTAMPTZ NOT NULL,
    next_attempt  TIMESTAMPTZ,
    sent_at       TIMESTAMPTZ,
    last_attempt  TIMESTAMPTZ,
    last_error    TEXT,
    ref           TEXT
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt);
CREATE INDEX deliveries_alert ON deliveries (cluster, rule, channel, created);
CREATE INDEX deliveries_created ON deliveries (created);
