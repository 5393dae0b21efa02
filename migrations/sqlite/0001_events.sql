-- The event log and consumer checkpoints (SQLite).
--
-- `position` is the global order of the log. SQLite has one writer at a time, so rowids
-- are assigned in commit order; AUTOINCREMENT keeps a position from ever being reused.
--
-- payload and metadata hold JSON text, written by the store through SQLite's own JSON
-- functions and so always well formed; a json_valid() CHECK would parse every document a
-- second time (measured: 10-15% of append throughput), and the reader reports a row that
-- does not parse as corrupt anyway. recorded_at holds RFC 3339 UTC text with exactly
-- six fractional digits (`2026-11-23T05:06:07.123456Z`): fixed width, so text order is
-- time order, readable from the sqlite3 shell, and the same microsecond precision as
-- PostgreSQL's timestamptz.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    partition_key   TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 1),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    -- {event_id, correlation_id, causation_id, actor}
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL
) STRICT;

-- The last line of defence against two writers extending a stream from the same version.
-- Same name as the PostgreSQL constraint.
CREATE UNIQUE INDEX events_stream_version_key ON events (stream_id, version);

-- Loading one show (partition) in log order.
CREATE INDEX events_partition_position_idx ON events (partition_key, position);

-- Events are immutable (EVENTS.md rule 7): a mistake is corrected by a new event.
CREATE TRIGGER events_reject_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: UPDATE rejected');
END;

CREATE TRIGGER events_reject_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are immutable: DELETE rejected');
END;

-- How far each consumer (projection, saga, …) has read the global log.
CREATE TABLE checkpoints (
    consumer    TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL CHECK (position >= 0),
    updated_at  TEXT    NOT NULL
) STRICT;
