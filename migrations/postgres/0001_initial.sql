-- SEAL Gateway schema, Postgres. JSON columns are JSONB (so `payload->>'field'` works), times TIMESTAMPTZ.
-- Catalog rows carry `source`: 'rest' (registered over the REST API) or 'manifest' /
-- 'kubernetes' (compiled from manifests or custom resources, rewritten on every snapshot).

CREATE TABLE IF NOT EXISTS api_specs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    tenant_id       TEXT,
    base_url        TEXT NOT NULL,
    source_url      TEXT,
    raw_spec        JSONB NOT NULL,
    operations      JSONB NOT NULL,
    credential_path JSONB,
    source          TEXT NOT NULL DEFAULT 'rest',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS api_specs_tenant_name ON api_specs (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS workflows (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    tenant_id    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    input_schema JSONB NOT NULL,
    api_spec_id  TEXT,
    steps        JSONB NOT NULL,
    source       TEXT NOT NULL DEFAULT 'rest',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS workflows_tenant_name ON workflows (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS cli_tools (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    tenant_id                TEXT,
    description              TEXT NOT NULL DEFAULT '',
    docker_image             TEXT NOT NULL,
    allowed_subcommands      JSONB NOT NULL,
    require_semantic_judge   BOOLEAN NOT NULL DEFAULT false,
    default_timeout_seconds  BIGINT NOT NULL,
    resources                JSONB NOT NULL DEFAULT '{}',
    registry_credential_path JSONB,
    source                   TEXT NOT NULL DEFAULT 'rest',
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS cli_tools_tenant_name ON cli_tools (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS security_contexts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    tenant_id    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    capabilities JSONB NOT NULL,
    deny_list    JSONB NOT NULL DEFAULT '[]',
    source       TEXT NOT NULL DEFAULT 'rest',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS security_contexts_tenant_name ON security_contexts (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS seal_sessions (
    execution_id          TEXT PRIMARY KEY,
    agent_id              TEXT NOT NULL,
    security_context      TEXT NOT NULL,
    public_key_b64        TEXT NOT NULL,
    security_token        TEXT NOT NULL,
    session_status        TEXT NOT NULL CHECK (session_status IN ('Active', 'Expired', 'Revoked')),
    expires_at            TIMESTAMPTZ NOT NULL,
    allowed_tool_patterns JSONB NOT NULL DEFAULT '["*"]',
    tenant_id             TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS seal_sessions_tenant_id ON seal_sessions (tenant_id);

CREATE TABLE IF NOT EXISTS seen_jtis (
    jti        TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_jtis_expires_at_idx ON seen_jtis (expires_at);

CREATE TABLE IF NOT EXISTS gateway_events (
    id         BIGSERIAL PRIMARY KEY,
    event_type TEXT NOT NULL,
    payload    JSONB NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    tenant_id  TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_events_type_created ON gateway_events (event_type, created_at);
CREATE INDEX IF NOT EXISTS gateway_events_created ON gateway_events (created_at);
