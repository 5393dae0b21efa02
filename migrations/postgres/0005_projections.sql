-- Read models built from the event log by the projector runtime (boxoffice-projections),
-- and the notification outbox (PostgreSQL). Everything here except the outbox and the
-- webhook settings can be deleted and rebuilt from the log.
--
-- Every integer is bigint: the same code reads these tables and SQLite's, whose
-- INTEGER is 64-bit, as i64.

-- How far each projection has applied the log, and with which version of its code. A
-- projection's rows and its checkpoint are written in one transaction.
CREATE TABLE projection_checkpoints (
    name        text        PRIMARY KEY,
    version     bigint      NOT NULL CHECK (version >= 0),
    position    bigint      NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL
);

-- The orders projection. orders_reservations is its memory of each reservation placed
-- (who, which show, what currency, what was captured), which TicketsIssued, naming only
-- the reservation, turns into an order.
CREATE TABLE orders_reservations (
    reservation_id  text        PRIMARY KEY,
    show_id         text        NOT NULL,
    user_id         text        NOT NULL,
    currency        text        NOT NULL,
    total_minor     bigint      NOT NULL,
    captured_minor  bigint,
    captured_at     timestamptz
);

CREATE TABLE orders (
    order_id        text        PRIMARY KEY,
    reservation_id  text        NOT NULL,
    show_id         text        NOT NULL,
    user_id         text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('paid', 'refunded')),
    total_minor     bigint      NOT NULL,
    currency        text        NOT NULL,
    paid_at         timestamptz NOT NULL,
    refunded_at     timestamptz,
    -- The position of the TicketsIssued event that created the order: the list order.
    position        bigint      NOT NULL,
    CONSTRAINT orders_reservation_key UNIQUE (reservation_id)
);

-- Listing newest first, all / by buyer / by show, with a (position, order_id) cursor.
CREATE INDEX orders_position_idx ON orders (position, order_id);
CREATE INDEX orders_user_position_idx ON orders (user_id, position, order_id);
CREATE INDEX orders_show_position_idx ON orders (show_id, position, order_id);

CREATE TABLE tickets (
    ticket_id       text    PRIMARY KEY,
    order_id        text    NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    show_id         text    NOT NULL,
    reservation_id  text    NOT NULL,
    seat            text,
    section         text,
    code            text    NOT NULL,
    -- Place in the TicketsIssued event, so an order lists its tickets as issued.
    ordinal         bigint  NOT NULL
);

CREATE INDEX tickets_order_idx ON tickets (order_id, ordinal);

-- The notifications projection: who each waitlist entry and reservation belongs to.
CREATE TABLE notifications_waitlist_entries (
    entry_id    text PRIMARY KEY,
    show_id     text NOT NULL,
    user_id     text NOT NULL
);

CREATE TABLE notifications_reservations (
    reservation_id  text PRIMARY KEY,
    show_id         text NOT NULL,
    user_id         text NOT NULL,
    currency        text NOT NULL,
    origin          text NOT NULL CHECK (origin IN ('direct', 'waitlist')),
    entry_id        text
);

-- Per-user notifications. The id comes from the event that caused it (ntf_ + event_id),
-- so a rebuild makes the same ids and receivers can deduplicate on it.
CREATE TABLE notifications (
    id          text        PRIMARY KEY,
    user_id     text        NOT NULL,
    kind        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    position    bigint      NOT NULL
);

CREATE INDEX notifications_user_position_idx ON notifications (user_id, position, id);

-- Deliveries still to make or made, one row per notification and channel, inserted in
-- the transaction that creates the notification. Not part of the projection's rebuild: a
-- rebuilt notification finds its row here and is not sent again.
CREATE TABLE notification_outbox (
    notification_id text        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email_file', 'webhook')),
    attempts        bigint      NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    -- Set when the worker gave up (attempts exhausted, or nowhere to deliver to).
    failed_at       timestamptz,
    last_error      text,
    PRIMARY KEY (notification_id, channel)
);

CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- A user's own webhook, used instead of the globally configured one.
CREATE TABLE notification_webhooks (
    user_id     text        PRIMARY KEY,
    url         text        NOT NULL,
    secret      bytea       NOT NULL,
    updated_at  timestamptz NOT NULL
);
