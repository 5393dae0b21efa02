-- Tamper evidence (docs/adr/0007-tamper-evidence.md): each event's keyed hash link,
-- chaining it to the previous event of its partition. The store writes it on append; the
-- key lives outside the database. Events written before this migration have none.
ALTER TABLE events ADD COLUMN chain BLOB CHECK (chain IS NULL OR length(chain) = 32);
