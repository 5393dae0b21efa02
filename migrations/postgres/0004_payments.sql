-- The payment provider's webhooks, stored durably and deduplicated by the provider's
-- event id before the provider is answered 200; the saga then re-reads the payment.
CREATE TABLE payment_webhooks (
    event_id        TEXT    PRIMARY KEY,
    event_type      TEXT    NOT NULL,
    intent_id       TEXT    NOT NULL,
    reservation_id  TEXT,
    body            TEXT    NOT NULL,
    -- Unix milliseconds.
    received_at     BIGINT  NOT NULL,
    processed_at    BIGINT
);
CREATE INDEX payment_webhooks_unprocessed_idx
    ON payment_webhooks (received_at) WHERE processed_at IS NULL;
