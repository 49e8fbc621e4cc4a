-- Audit integrity (docs/audit.md): every gateway_events row carries a SHA-256 hash chained to the
-- previous row, signed checkpoints of the chain head, and the record of what retention purged.
-- Rows written before this migration keep NULL hashes; verification reports and skips them.

ALTER TABLE gateway_events ADD COLUMN prev_hash TEXT;
ALTER TABLE gateway_events ADD COLUMN hash TEXT;

-- GET /v1/events: tenant scoping and execution_id filters walk these instead of the whole table.
CREATE INDEX IF NOT EXISTS gateway_events_tenant_id ON gateway_events (tenant_id, id);
CREATE INDEX IF NOT EXISTS gateway_events_execution_id ON gateway_events (payload->>'execution_id');

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'periodic' (the chain head, signed on a timer) or 'purge' (retention removed rows).
    kind                TEXT NOT NULL CHECK (kind IN ('periodic', 'purge')),
    last_event_id       INTEGER NOT NULL,
    last_hash           TEXT NOT NULL,
    -- For 'purge': every row with id <= purged_through_id was removed; the first remaining row's
    -- prev_hash is purged_through_hash (NULL when only pre-chain rows were removed).
    purged_through_id   INTEGER,
    purged_through_hash TEXT,
    purged_events       INTEGER NOT NULL DEFAULT 0,
    -- Ed25519 public key (base64, 32 bytes) and signature (base64, 64 bytes).
    public_key          TEXT NOT NULL,
    signature           TEXT NOT NULL,
    created_at          TEXT NOT NULL
);
