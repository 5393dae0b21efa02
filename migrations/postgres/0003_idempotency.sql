-- Idempotency keys of API requests (Stripe's semantics): the first response to a key is
-- kept and replayed; the same key with a different request is refused. Per user.
CREATE TABLE idempotency_keys (
    user_id         text        NOT NULL,
    key             text        NOT NULL,
    -- sha256 of method, path and body, hex.
    fingerprint     text        NOT NULL,
    -- NULL while the first request is still being handled.
    status          integer,
    response_body   bytea,
    location        text,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
