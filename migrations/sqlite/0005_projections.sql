-- Read models built from the event log by the projector runtime (boxoffice-projections),
-- and the notification outbox (SQLite). Everything here except the outbox and the
-- webhook settings can be deleted and rebuilt from the log.
--
-- Timestamps are RFC 3339 UTC text with six fractional digits, like the event log's
-- recorded_at (fixed width, so text order is time order). JSON is text.

-- How far each projection has applied the log, and with which version of its code. A
-- projection's rows and its checkpoint are written in one transaction.
CREATE TABLE projection_checkpoints (
    name        TEXT    PRIMARY KEY,
    version     INTEGER NOT NULL CHECK (version >= 0),
    position    INTEGER NOT NULL CHECK (position >= 0),
    updated_at  TEXT    NOT NULL
) STRICT;

-- The orders projection. orders_reservations is its memory of each reservation placed
-- (who, which show, what currency, what was captured), which TicketsIssued, naming only
-- the reservation, turns into an order.
CREATE TABLE orders_reservations (
    reservation_id  TEXT    PRIMARY KEY,
    show_id         TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    currency        TEXT    NOT NULL,
    total_minor     INTEGER NOT NULL,
    captured_minor  INTEGER,
    captured_at     TEXT
) STRICT;

CREATE TABLE orders (
    order_id        TEXT    PRIMARY KEY,
    reservation_id  TEXT    NOT NULL,
    show_id         TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('paid', 'refunded')),
    total_minor     INTEGER NOT NULL,
    currency        TEXT    NOT NULL,
    paid_at         TEXT    NOT NULL,
    refunded_at     TEXT,
    -- The position of the TicketsIssued event that created the order: the list order.
    position        INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX orders_reservation_key ON orders (reservation_id);
-- Listing newest first, all / by buyer / by show, with a (position, order_id) cursor.
CREATE INDEX orders_position_idx ON orders (position, order_id);
CREATE INDEX orders_user_position_idx ON orders (user_id, position, order_id);
CREATE INDEX orders_show_position_idx ON orders (show_id, position, order_id);

CREATE TABLE tickets (
    ticket_id       TEXT    PRIMARY KEY,
    order_id        TEXT    NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    show_id         TEXT    NOT NULL,
    reservation_id  TEXT    NOT NULL,
    seat            TEXT,
    section         TEXT,
    code            TEXT    NOT NULL,
    -- Place in the TicketsIssued event, so an order lists its tickets as issued.
    ordinal         INTEGER NOT NULL
) STRICT;

CREATE INDEX tickets_order_idx ON tickets (order_id, ordinal);

-- The notifications projection: who each waitlist entry and reservation belongs to.
CREATE TABLE notifications_waitlist_entries (
    entry_id    TEXT PRIMARY KEY,
    show_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL
) STRICT;

CREATE TABLE notifications_reservations (
    reservation_id  TEXT PRIMARY KEY,
    show_id         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    currency        TEXT NOT NULL,
    origin          TEXT NOT NULL CHECK (origin IN ('direct', 'waitlist')),
    entry_id        TEXT
) STRICT;

-- Per-user notifications. The id comes from the event that caused it (ntf_ + event_id),
-- so a rebuild makes the same ids and receivers can deduplicate on it.
CREATE TABLE notifications (
    id          TEXT    PRIMARY KEY,
    user_id     TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    position    INTEGER NOT NULL
) STRICT;

CREATE INDEX notifications_user_position_idx ON notifications (user_id, position, id);

-- Deliveries still to make or made, one row per notification and channel, inserted in
-- the transaction that creates the notification. Not part of the projection's rebuild: a
-- rebuilt notification finds its row here and is not sent again.
CREATE TABLE notification_outbox (
    notification_id TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('email_file', 'webhook')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TEXT    NOT NULL,
    delivered_at    TEXT,
    -- Set when the worker gave up (attempts exhausted, or nowhere to deliver to).
    failed_at       TEXT,
    last_error      TEXT,
    PRIMARY KEY (notification_id, channel)
) STRICT;

CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- A user's own webhook, used instead of the globally configured one.
CREATE TABLE notification_webhooks (
    user_id     TEXT    PRIMARY KEY,
    url         TEXT    NOT NULL,
    secret      BLOB    NOT NULL,
    updated_at  TEXT    NOT NULL
) STRICT;
