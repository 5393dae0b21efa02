-- Show ownership (docs/adr/0009-show-ownership.md): which node runs a show's write actor.
-- A lease is taken, renewed and released with conditional statements that use the
-- database's clock (now()), never a node's. `epoch` is the fencing counter: it grows by
-- one on every change of owner, and an append that carries a fence commits only while the
-- show's lease still has the writer's epoch (checked under FOR SHARE in the append's own
-- transaction, so a takeover waits for an append in flight and every later append of the
-- old owner is refused).
CREATE TABLE show_leases (
    show_id     text        PRIMARY KEY,
    owner_node  text        NOT NULL,
    -- The base URL other nodes forward the show's commands to.
    owner_url   text        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch > 0),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX show_leases_expires_idx ON show_leases (expires_at);
