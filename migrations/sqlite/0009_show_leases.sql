-- Show ownership (docs/adr/0009-show-ownership.md). The SQLite backend is one process,
-- which owns every show, so nothing reads or writes this table; it exists so that both
-- backends keep matching migration numbers and schemas.
CREATE TABLE show_leases (
    show_id     TEXT    PRIMARY KEY,
    owner_node  TEXT    NOT NULL,
    owner_url   TEXT    NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    -- Unix milliseconds.
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX show_leases_expires_idx ON show_leases (expires_at);
