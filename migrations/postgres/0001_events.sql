-- The event log and consumer checkpoints (PostgreSQL).
--
-- `position` is the global order of the log. It comes from a bigserial, which on its own
-- would be assigned at insert but become visible at commit, out of order under concurrent
-- appends. The store therefore serializes every append behind one transaction-scoped
-- advisory lock, so positions are handed out in commit order (docs/adr/0002-global-order.md).
CREATE TABLE events (
    position        bigserial   PRIMARY KEY,
    partition_key   text        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    -- {event_id, correlation_id, causation_id, actor}
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_version_positive CHECK (version >= 1),
    -- The last line of defence against two writers extending a stream from the same
    -- version (and so against oversell). The store maps a violation of this constraint,
    -- by name, to a version conflict.
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- Loading one show (partition) in log order.
CREATE INDEX events_partition_position_idx ON events (partition_key, position);

-- Events are immutable (EVENTS.md rule 7): a mistake is corrected by a new event.
CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % rejected', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();

-- How far each consumer (projection, saga, …) has read the global log.
CREATE TABLE checkpoints (
    consumer    text        PRIMARY KEY,
    position    bigint      NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
