-- Registered users. Not part of the event log: a user's credentials must be changeable
-- and erasable, which an immutable log cannot offer. Email is stored lowercased.
CREATE TABLE users (
    user_id         TEXT    PRIMARY KEY,
    email           TEXT    NOT NULL,
    password_hash   TEXT    NOT NULL,
    display_name    TEXT,
    -- Comma-separated roles: buyer, organizer, support, auditor, admin.
    roles           TEXT    NOT NULL,
    -- RFC 3339 UTC text, like the event log's recorded_at.
    created_at      TEXT    NOT NULL
) STRICT;

CREATE UNIQUE INDEX users_email_key ON users (email);
