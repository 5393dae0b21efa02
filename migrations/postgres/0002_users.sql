-- Registered users. Not part of the event log: a user's credentials must be changeable
-- and erasable, which an immutable log cannot offer. Email is stored lowercased.
CREATE TABLE users (
    user_id         text        PRIMARY KEY,
    email           text        NOT NULL,
    password_hash   text        NOT NULL,
    display_name    text,
    -- Comma-separated roles: buyer, organizer, support, auditor, admin.
    roles           text        NOT NULL,
    created_at      timestamptz NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);
