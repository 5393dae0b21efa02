-- Idempotency keys of API requests (Stripe's semantics): the first response to a key is
-- kept and replayed; the same key with a different request is refused. Per user.
CREATE TABLE idempotency_keys (
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    -- sha256 of method, path and body, hex.
    fingerprint     TEXT    NOT NULL,
    -- NULL while the first request is still being handled.
    status          INTEGER,
    response_body   BLOB,
    location        TEXT,
    -- Unix seconds.
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT;
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
