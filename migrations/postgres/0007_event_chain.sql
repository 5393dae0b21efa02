-- Tamper evidence (docs/adr/0007-tamper-evidence.md): each event's keyed hash link,
-- chaining it to the previous event of its partition. The store writes it on append; the
-- key lives outside the database. Events written before this migration have none.
ALTER TABLE events ADD COLUMN chain bytea
    CONSTRAINT events_chain_length CHECK (octet_length(chain) = 32);

-- The row triggers of 0001 do not fire on TRUNCATE; refuse it too.
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
