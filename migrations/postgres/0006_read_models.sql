-- Read models for analysts (PostgreSQL), built from the event log by the projections in
-- boxoffice-projections/src/analytics. Every table here can be emptied and rebuilt from
-- the log (`boxctl rebuild`); the views below only read them. Integers are bigint and
-- money is in minor units of the show's currency.

-- seat_map projection: the show catalogue, one row per seat, one row per GA section.
CREATE TABLE seat_map_shows (
    show_id         text        PRIMARY KEY,
    name            text        NOT NULL,
    starts_at       timestamptz NOT NULL,
    currency        text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('scheduled', 'cancelled')),
    cancelled_at    timestamptz,
    updated_position bigint     NOT NULL
);

CREATE TABLE seat_map (
    show_id         text    NOT NULL,
    seat_id         text    NOT NULL,
    section         text    NOT NULL,
    row_label       text    NOT NULL,
    number          bigint  NOT NULL,
    tier            text    NOT NULL,
    status          text    NOT NULL CHECK (status IN ('available', 'held', 'sold', 'blocked')),
    reservation_id  text,
    updated_position bigint NOT NULL,
    PRIMARY KEY (show_id, seat_id)
);

CREATE INDEX seat_map_status_idx ON seat_map (show_id, status);

CREATE TABLE seat_map_ga (
    show_id         text    NOT NULL,
    section         text    NOT NULL,
    tier            text    NOT NULL,
    capacity        bigint  NOT NULL CHECK (capacity >= 0),
    held            bigint  NOT NULL CHECK (held >= 0),
    sold            bigint  NOT NULL CHECK (sold >= 0),
    updated_position bigint NOT NULL,
    PRIMARY KEY (show_id, section),
    CHECK (held + sold <= capacity)
);

-- reservations projection: one row per reservation, following its life.
CREATE TABLE reservations (
    reservation_id      text        PRIMARY KEY,
    show_id             text        NOT NULL,
    user_id             text        NOT NULL,
    origin              text        NOT NULL CHECK (origin IN ('direct', 'waitlist')),
    status              text        NOT NULL CHECK (status IN ('held', 'payment_pending',
                            'confirmed', 'refunded', 'expired', 'cancelled',
                            'payment_failed', 'payment_timed_out')),
    quantity            bigint      NOT NULL,
    -- Comma-separated seat ids of a seated hold; NULL for general admission.
    seats               text,
    -- The GA section of a general-admission hold; NULL for seats.
    section             text,
    total_minor         bigint      NOT NULL,
    currency            text        NOT NULL,
    placed_at           timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    payment_started_at  timestamptz,
    paid_at             timestamptz,
    -- Whole seconds from placing the hold to the payment's capture.
    seconds_to_checkout bigint,
    confirmed_at        timestamptz,
    order_id            text,
    closed_at           timestamptz,
    close_reason        text,
    position            bigint      NOT NULL
);

CREATE INDEX reservations_show_idx ON reservations (show_id, status);

-- sales projection. sales_tiers is its memory of each show's layout (which tier a row of
-- seats or a GA section is in, and the tier's current price); sales_reservation_items is
-- what each reservation bought, by section and tier, with its share of the total.
CREATE TABLE sales_tiers (
    show_id     text    NOT NULL,
    section     text    NOT NULL,
    -- The row label of seated sections; '' for a GA section.
    row_label   text    NOT NULL,
    tier        text    NOT NULL,
    PRIMARY KEY (show_id, section, row_label)
);

CREATE TABLE sales_tier_prices (
    show_id     text    NOT NULL,
    tier        text    NOT NULL,
    currency    text    NOT NULL,
    price_minor bigint  NOT NULL,
    PRIMARY KEY (show_id, tier)
);

CREATE TABLE sales_reservation_items (
    reservation_id  text    NOT NULL,
    show_id         text    NOT NULL,
    section         text    NOT NULL,
    tier            text    NOT NULL,
    quantity        bigint  NOT NULL,
    amount_minor    bigint  NOT NULL,
    currency        text    NOT NULL,
    PRIMARY KEY (reservation_id, section, tier)
);

-- Tickets sold and refunded, and revenue, per show, tier, section and hour (UTC) of the
-- sale or refund. Revenue is gross: refunds are counted separately.
CREATE TABLE sales (
    show_id         text        NOT NULL,
    tier            text        NOT NULL,
    section         text        NOT NULL,
    hour            timestamptz NOT NULL,
    currency        text        NOT NULL,
    tickets_sold    bigint      NOT NULL,
    revenue_minor   bigint      NOT NULL,
    tickets_refunded bigint     NOT NULL,
    refunds_minor   bigint      NOT NULL,
    PRIMARY KEY (show_id, tier, section, hour)
);

-- waitlist projection: one row per waiting-list entry.
CREATE TABLE waitlist_entries (
    entry_id        text        PRIMARY KEY,
    show_id         text        NOT NULL,
    user_id         text        NOT NULL,
    quantity        bigint      NOT NULL,
    section         text,
    status          text        NOT NULL CHECK (status IN ('waiting', 'offered', 'claimed', 'expired', 'left')),
    joined_at       timestamptz NOT NULL,
    offers          bigint      NOT NULL,
    claims          bigint      NOT NULL,
    offer_expiries  bigint      NOT NULL,
    closed_at       timestamptz
);

CREATE INDEX waitlist_entries_show_idx ON waitlist_entries (show_id, status);

-- audit_log projection: every event of the log with a readable summary.
CREATE TABLE audit_log (
    position        bigint      PRIMARY KEY,
    show_id         text        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_type      text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    actor           text        NOT NULL,
    correlation_id  text        NOT NULL,
    summary         text        NOT NULL
);

CREATE INDEX audit_log_show_idx ON audit_log (show_id, position);
CREATE INDEX audit_log_stream_idx ON audit_log (stream_id, position);

-- Views: common questions as one-liners.

-- Hold funnel per show: holds placed and how each ended.
CREATE VIEW hold_funnel AS
SELECT show_id,
       count(*) AS holds_placed,
       sum(CASE WHEN status IN ('held', 'payment_pending') THEN 1 ELSE 0 END) AS open,
       sum(CASE WHEN status = 'expired' THEN 1 ELSE 0 END) AS expired,
       sum(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
       sum(CASE WHEN status = 'payment_failed' THEN 1 ELSE 0 END) AS payment_failed,
       sum(CASE WHEN status = 'payment_timed_out' THEN 1 ELSE 0 END) AS payment_timed_out,
       sum(CASE WHEN status IN ('confirmed', 'refunded') THEN 1 ELSE 0 END) AS converted,
       avg(seconds_to_checkout) AS avg_seconds_to_checkout
FROM reservations
GROUP BY show_id;

CREATE VIEW v_hold_conversion AS
SELECT show_id, holds_placed, converted,
       CASE WHEN holds_placed - open = 0 THEN NULL
            ELSE 1.0 * converted / (holds_placed - open) END AS conversion_rate
FROM hold_funnel;

CREATE VIEW v_show_sales AS
SELECT show_id, currency,
       sum(tickets_sold) AS tickets_sold,
       sum(tickets_refunded) AS tickets_refunded,
       sum(revenue_minor) AS revenue_minor,
       sum(refunds_minor) AS refunds_minor,
       sum(revenue_minor) - sum(refunds_minor) AS net_revenue_minor
FROM sales
GROUP BY show_id, currency;

CREATE VIEW v_seats_by_status AS
SELECT show_id, status, count(*) AS seats
FROM seat_map
GROUP BY show_id, status;

CREATE VIEW waitlist_stats AS
SELECT show_id,
       count(*) AS joined,
       sum(CASE WHEN status = 'waiting' THEN 1 ELSE 0 END) AS waiting_now,
       sum(CASE WHEN status = 'offered' THEN 1 ELSE 0 END) AS offered_now,
       sum(offers) AS offers,
       sum(claims) AS claims,
       sum(offer_expiries) AS offer_expiries,
       sum(CASE WHEN status = 'left' THEN 1 ELSE 0 END) AS left_list
FROM waitlist_entries
GROUP BY show_id;
