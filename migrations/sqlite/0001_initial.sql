-- SEAL Gateway schema, SQLite. Timestamps are UTC RFC 3339 text with a fixed width
-- (`2026-11-29T01:02:03.456789Z`), so they sort and compare as times.
-- Catalog rows carry `source`: 'rest' (registered over the REST API) or 'manifest' /
-- 'kubernetes' (compiled from manifests or custom resources, rewritten on every snapshot).

CREATE TABLE IF NOT EXISTS api_specs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    tenant_id       TEXT,
    base_url        TEXT NOT NULL,
    source_url      TEXT,
    raw_spec        TEXT NOT NULL CHECK (json_valid(raw_spec)),
    operations      TEXT NOT NULL CHECK (json_valid(operations)),
    credential_path TEXT CHECK (credential_path IS NULL OR json_valid(credential_path)),
    source          TEXT NOT NULL DEFAULT 'rest',
    created_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_specs_tenant_name ON api_specs (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS workflows (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    tenant_id    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    input_schema TEXT NOT NULL CHECK (json_valid(input_schema)),
    api_spec_id  TEXT,
    steps        TEXT NOT NULL CHECK (json_valid(steps)),
    source       TEXT NOT NULL DEFAULT 'rest',
    created_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS workflows_tenant_name ON workflows (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS cli_tools (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    tenant_id                TEXT,
    description              TEXT NOT NULL DEFAULT '',
    docker_image             TEXT NOT NULL,
    allowed_subcommands      TEXT NOT NULL CHECK (json_valid(allowed_subcommands)),
    require_semantic_judge   INTEGER NOT NULL DEFAULT 0,
    default_timeout_seconds  INTEGER NOT NULL,
    resources                TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(resources)),
    registry_credential_path TEXT CHECK (registry_credential_path IS NULL OR json_valid(registry_credential_path)),
    source                   TEXT NOT NULL DEFAULT 'rest',
    created_at               TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cli_tools_tenant_name ON cli_tools (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS security_contexts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    tenant_id    TEXT,
    description  TEXT NOT NULL DEFAULT '',
    capabilities TEXT NOT NULL CHECK (json_valid(capabilities)),
    deny_list    TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(deny_list)),
    source       TEXT NOT NULL DEFAULT 'rest',
    created_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS security_contexts_tenant_name ON security_contexts (COALESCE(tenant_id, ''), name);

CREATE TABLE IF NOT EXISTS seal_sessions (
    execution_id          TEXT PRIMARY KEY,
    agent_id              TEXT NOT NULL,
    security_context      TEXT NOT NULL,
    public_key_b64        TEXT NOT NULL,
    security_token        TEXT NOT NULL,
    session_status        TEXT NOT NULL CHECK (session_status IN ('Active', 'Expired', 'Revoked')),
    expires_at            TEXT NOT NULL,
    allowed_tool_patterns TEXT NOT NULL DEFAULT '["*"]' CHECK (json_valid(allowed_tool_patterns)),
    tenant_id             TEXT,
    created_at            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS seal_sessions_tenant_id ON seal_sessions (tenant_id);

CREATE TABLE IF NOT EXISTS seen_jtis (
    jti        TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_jtis_expires_at_idx ON seen_jtis (expires_at);

CREATE TABLE IF NOT EXISTS gateway_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    payload    TEXT NOT NULL CHECK (json_valid(payload) AND json_type(payload) = 'object'),
    tenant_id  TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_events_type_created ON gateway_events (event_type, created_at);
CREATE INDEX IF NOT EXISTS gateway_events_created ON gateway_events (created_at);
