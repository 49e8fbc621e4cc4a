//! Rows of the catalog tables (`api_specs`, `workflows`, `cli_tools`, `security_contexts`) as the
//! REST control plane reads and writes them. Rows with `source = 'rest'` are owned by the REST API;
//! the others mirror manifests or custom resources ([`super::CatalogSource`]) and are read-only here.
//!
//! JSON columns are read as text on both backends (`::text` on Postgres) and parsed by the caller's
//! types, so one row mapping serves SQLite and Postgres.

use serde_json::Value;
use sqlx::Row;

use super::{Database, PersistenceError, dialect};

/// `source` of rows registered over the REST API.
pub const REST_SOURCE: &str = "rest";

/// A catalog table the REST API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogTable {
    ApiSpecs,
    Workflows,
    CliTools,
    SecurityContexts,
}

impl CatalogTable {
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiSpecs => "api_specs",
            Self::Workflows => "workflows",
            Self::CliTools => "cli_tools",
            Self::SecurityContexts => "security_contexts",
        }
    }

    /// The audit event recording that one of its REST-registered rows is gone.
    pub fn deleted_event(self) -> &'static str {
        match self {
            Self::ApiSpecs => "ApiSpecDeleted",
            Self::Workflows => "WorkflowDeleted",
            Self::CliTools => "CliToolDeleted",
            Self::SecurityContexts => "SecurityContextDeleted",
        }
    }
}

/// A row of `api_specs`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecRow {
    pub id: String,
    pub name: String,
    pub tenant_id: Option<String>,
    pub base_url: String,
    pub source_url: Option<String>,
    pub raw_spec: Value,
    pub operations: Value,
    pub credential_path: Option<Value>,
    pub source: String,
}

/// A row of `workflows`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRow {
    pub id: String,
    pub name: String,
    pub tenant_id: Option<String>,
    pub description: String,
    pub input_schema: Value,
    /// `None` for workflows from manifests or custom resources, which embed their document.
    pub api_spec_id: Option<String>,
    pub steps: Value,
    pub source: String,
}

/// A row of `cli_tools`.
#[derive(Debug, Clone, PartialEq)]
pub struct CliToolRow {
    pub id: String,
    pub name: String,
    pub tenant_id: Option<String>,
    pub description: String,
    pub docker_image: String,
    pub allowed_subcommands: Value,
    pub require_semantic_judge: bool,
    pub default_timeout_seconds: i64,
    pub resources: Value,
    pub registry_credential_path: Option<Value>,
    pub source: String,
}

/// A row of `security_contexts`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityContextRow {
    pub id: String,
    pub name: String,
    pub tenant_id: Option<String>,
    pub description: String,
    pub capabilities: Value,
    pub deny_list: Value,
    pub source: String,
}

/// Who holds a (tenant, name) in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameHolder {
    pub id: String,
    pub tenant_id: Option<String>,
    pub source: String,
}

fn json_column(text: Option<String>, column: &str) -> Result<Option<Value>, sqlx::Error> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| sqlx::Error::Decode(format!("{column} is not JSON: {e}").into()))
    })
    .transpose()
}

fn required_json(text: String, column: &str) -> Result<Value, sqlx::Error> {
    json_column(Some(text), column).map(Option::unwrap_or_default)
}

/// Runs a query on either backend and maps every row with the same code.
macro_rules! fetch_all {
    ($db:expr, $sql:expr, $map:path $(, $bind:expr)* $(,)?) => {{
        let sql = dialect($db.backend(), &$sql);
        match $db {
            Database::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                $(.bind($bind))*
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| $map(row))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
            Database::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                $(.bind($bind))*
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| $map(row))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        }
    }};
}

/// Runs a statement on either backend; the number of rows it changed.
macro_rules! execute {
    ($db:expr, $sql:expr $(, $bind:expr)* $(,)?) => {{
        let sql = dialect($db.backend(), &$sql);
        match $db {
            Database::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                $(.bind($bind))*
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                $(.bind($bind))*
                .execute(pool)
                .await?
                .rows_affected(),
        }
    }};
}

const SPEC_COLUMNS: &str = "id, name, tenant_id, base_url, source_url, raw_spec::text AS raw_spec, \
     operations::text AS operations, credential_path::text AS credential_path, source";
const WORKFLOW_COLUMNS: &str = "id, name, tenant_id, description, input_schema::text AS input_schema, \
     api_spec_id, steps::text AS steps, source";
const CLI_COLUMNS: &str = "id, name, tenant_id, description, docker_image, \
     allowed_subcommands::text AS allowed_subcommands, require_semantic_judge, default_timeout_seconds, \
     resources::text AS resources, registry_credential_path::text AS registry_credential_path, source";
const CONTEXT_COLUMNS: &str = "id, name, tenant_id, description, capabilities::text AS capabilities, \
     deny_list::text AS deny_list, source";

fn spec_row<R: Row>(row: &R) -> Result<SpecRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SpecRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tenant_id: row.try_get("tenant_id")?,
        base_url: row.try_get("base_url")?,
        source_url: row.try_get("source_url")?,
        raw_spec: required_json(row.try_get("raw_spec")?, "raw_spec")?,
        operations: required_json(row.try_get("operations")?, "operations")?,
        credential_path: json_column(row.try_get("credential_path")?, "credential_path")?,
        source: row.try_get("source")?,
    })
}

fn workflow_row<R: Row>(row: &R) -> Result<WorkflowRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WorkflowRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tenant_id: row.try_get("tenant_id")?,
        description: row.try_get("description")?,
        input_schema: required_json(row.try_get("input_schema")?, "input_schema")?,
        api_spec_id: row.try_get("api_spec_id")?,
        steps: required_json(row.try_get("steps")?, "steps")?,
        source: row.try_get("source")?,
    })
}

fn cli_tool_row<R: Row>(row: &R) -> Result<CliToolRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(CliToolRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tenant_id: row.try_get("tenant_id")?,
        description: row.try_get("description")?,
        docker_image: row.try_get("docker_image")?,
        allowed_subcommands: required_json(
            row.try_get("allowed_subcommands")?,
            "allowed_subcommands",
        )?,
        require_semantic_judge: row.try_get("require_semantic_judge")?,
        default_timeout_seconds: row.try_get("default_timeout_seconds")?,
        resources: required_json(row.try_get("resources")?, "resources")?,
        registry_credential_path: json_column(
            row.try_get("registry_credential_path")?,
            "registry_credential_path",
        )?,
        source: row.try_get("source")?,
    })
}

fn context_row<R: Row>(row: &R) -> Result<SecurityContextRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SecurityContextRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tenant_id: row.try_get("tenant_id")?,
        description: row.try_get("description")?,
        capabilities: required_json(row.try_get("capabilities")?, "capabilities")?,
        deny_list: required_json(row.try_get("deny_list")?, "deny_list")?,
        source: row.try_get("source")?,
    })
}

fn holder_row<R: Row>(row: &R) -> Result<NameHolder, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(NameHolder {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        source: row.try_get("source")?,
    })
}

fn count_row<R: Row>(row: &R) -> Result<i64, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get("n")
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

impl Database {
    /// Who holds `name` for `tenant` (`None`: the system-global scope) in `table`.
    pub async fn name_holder(
        &self,
        table: CatalogTable,
        tenant: Option<&str>,
        name: &str,
    ) -> Result<Option<NameHolder>, PersistenceError> {
        let sql = format!(
            "SELECT id, tenant_id, source FROM {} WHERE COALESCE(tenant_id, '') = $1 AND name = $2",
            table.name()
        );
        let rows = fetch_all!(self, sql, holder_row, tenant.unwrap_or_default(), name);
        Ok(rows.into_iter().next())
    }

    /// How many objects `tenant` has registered over REST, in the four catalog tables together.
    pub async fn rest_objects_of(&self, tenant: &str) -> Result<u64, PersistenceError> {
        let count = |table: CatalogTable| {
            format!(
                "(SELECT COUNT(*) FROM {} WHERE COALESCE(tenant_id, '') = $2 AND source = $1)",
                table.name()
            )
        };
        let sql = format!(
            "SELECT {} + {} + {} + {} AS n",
            count(CatalogTable::ApiSpecs),
            count(CatalogTable::Workflows),
            count(CatalogTable::CliTools),
            count(CatalogTable::SecurityContexts)
        );
        let n = fetch_all!(self, sql, count_row, REST_SOURCE, tenant)
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Deletes a REST-owned row by id; whether it existed.
    pub async fn delete_rest_row(
        &self,
        table: CatalogTable,
        id: &str,
    ) -> Result<bool, PersistenceError> {
        let sql = format!("DELETE FROM {} WHERE id = $1 AND source = $2", table.name());
        Ok(execute!(self, sql, id, REST_SOURCE) > 0)
    }

    // -- api_specs -----------------------------------------------------------------------------

    /// Every spec, or only those of `source`.
    pub async fn list_specs(&self, source: Option<&str>) -> Result<Vec<SpecRow>, PersistenceError> {
        let sql = format!(
            "SELECT {SPEC_COLUMNS} FROM api_specs WHERE ($1 = '' OR source = $1) ORDER BY name, id"
        );
        Ok(fetch_all!(self, sql, spec_row, source.unwrap_or_default()))
    }

    pub async fn get_spec(&self, id: &str) -> Result<Option<SpecRow>, PersistenceError> {
        let sql = format!("SELECT {SPEC_COLUMNS} FROM api_specs WHERE id = $1");
        Ok(fetch_all!(self, sql, spec_row, id).into_iter().next())
    }

    /// A spec of `tenant` (exactly that scope) registered from `source_url`.
    pub async fn spec_by_source_url(
        &self,
        tenant: Option<&str>,
        source_url: &str,
    ) -> Result<Option<SpecRow>, PersistenceError> {
        let sql = format!(
            "SELECT {SPEC_COLUMNS} FROM api_specs WHERE COALESCE(tenant_id, '') = $1 AND source_url = $2"
        );
        Ok(
            fetch_all!(self, sql, spec_row, tenant.unwrap_or_default(), source_url)
                .into_iter()
                .next(),
        )
    }

    /// Inserts a REST spec, or rewrites the REST spec with the same id (its tenant never changes).
    pub async fn save_spec(&self, spec: &SpecRow) -> Result<(), PersistenceError> {
        let sql = "INSERT INTO api_specs (id, name, tenant_id, base_url, source_url, raw_spec, operations, \
             credential_path, source, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9, now_utc()) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, base_url = excluded.base_url, \
             source_url = excluded.source_url, raw_spec = excluded.raw_spec, \
             operations = excluded.operations, credential_path = excluded.credential_path";
        execute!(
            self,
            sql,
            &spec.id,
            &spec.name,
            &spec.tenant_id,
            &spec.base_url,
            &spec.source_url,
            json_text(&spec.raw_spec),
            json_text(&spec.operations),
            spec.credential_path.as_ref().map(json_text),
            REST_SOURCE,
        );
        Ok(())
    }

    // -- workflows -----------------------------------------------------------------------------

    pub async fn list_workflows(
        &self,
        source: Option<&str>,
    ) -> Result<Vec<WorkflowRow>, PersistenceError> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE ($1 = '' OR source = $1) ORDER BY name, id"
        );
        Ok(fetch_all!(
            self,
            sql,
            workflow_row,
            source.unwrap_or_default()
        ))
    }

    pub async fn get_workflow(&self, id: &str) -> Result<Option<WorkflowRow>, PersistenceError> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1");
        Ok(fetch_all!(self, sql, workflow_row, id).into_iter().next())
    }

    /// The workflows whose steps run against the spec `api_spec_id`.
    pub async fn workflows_of_spec(
        &self,
        api_spec_id: &str,
    ) -> Result<Vec<WorkflowRow>, PersistenceError> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE api_spec_id = $1 ORDER BY name"
        );
        Ok(fetch_all!(self, sql, workflow_row, api_spec_id))
    }

    pub async fn save_workflow(&self, wf: &WorkflowRow) -> Result<(), PersistenceError> {
        let sql = "INSERT INTO workflows (id, name, tenant_id, description, input_schema, api_spec_id, steps, \
             source, created_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb, $8, now_utc()) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
             input_schema = excluded.input_schema, api_spec_id = excluded.api_spec_id, steps = excluded.steps";
        execute!(
            self,
            sql,
            &wf.id,
            &wf.name,
            &wf.tenant_id,
            &wf.description,
            json_text(&wf.input_schema),
            &wf.api_spec_id,
            json_text(&wf.steps),
            REST_SOURCE,
        );
        Ok(())
    }

    // -- cli_tools -----------------------------------------------------------------------------

    pub async fn list_cli_tools(
        &self,
        source: Option<&str>,
    ) -> Result<Vec<CliToolRow>, PersistenceError> {
        let sql = format!(
            "SELECT {CLI_COLUMNS} FROM cli_tools WHERE ($1 = '' OR source = $1) ORDER BY name, id"
        );
        Ok(fetch_all!(
            self,
            sql,
            cli_tool_row,
            source.unwrap_or_default()
        ))
    }

    /// Every tenant's CLI tool called `name`.
    pub async fn cli_tools_named(&self, name: &str) -> Result<Vec<CliToolRow>, PersistenceError> {
        let sql = format!("SELECT {CLI_COLUMNS} FROM cli_tools WHERE name = $1 ORDER BY id");
        Ok(fetch_all!(self, sql, cli_tool_row, name))
    }

    pub async fn save_cli_tool(&self, tool: &CliToolRow) -> Result<(), PersistenceError> {
        let sql = "INSERT INTO cli_tools (id, name, tenant_id, description, docker_image, allowed_subcommands, \
             require_semantic_judge, default_timeout_seconds, resources, registry_credential_path, source, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb, $10::jsonb, $11, now_utc()) \
             ON CONFLICT (id) DO UPDATE SET description = excluded.description, \
             docker_image = excluded.docker_image, allowed_subcommands = excluded.allowed_subcommands, \
             require_semantic_judge = excluded.require_semantic_judge, \
             default_timeout_seconds = excluded.default_timeout_seconds, resources = excluded.resources, \
             registry_credential_path = excluded.registry_credential_path";
        execute!(
            self,
            sql,
            &tool.id,
            &tool.name,
            &tool.tenant_id,
            &tool.description,
            &tool.docker_image,
            json_text(&tool.allowed_subcommands),
            tool.require_semantic_judge,
            tool.default_timeout_seconds,
            json_text(&tool.resources),
            tool.registry_credential_path.as_ref().map(json_text),
            REST_SOURCE,
        );
        Ok(())
    }

    // -- security_contexts ---------------------------------------------------------------------

    pub async fn list_security_contexts(
        &self,
        source: Option<&str>,
    ) -> Result<Vec<SecurityContextRow>, PersistenceError> {
        let sql = format!(
            "SELECT {CONTEXT_COLUMNS} FROM security_contexts WHERE ($1 = '' OR source = $1) ORDER BY name, id"
        );
        Ok(fetch_all!(
            self,
            sql,
            context_row,
            source.unwrap_or_default()
        ))
    }

    /// Every tenant's security context called `name`.
    pub async fn security_contexts_named(
        &self,
        name: &str,
    ) -> Result<Vec<SecurityContextRow>, PersistenceError> {
        let sql =
            format!("SELECT {CONTEXT_COLUMNS} FROM security_contexts WHERE name = $1 ORDER BY id");
        Ok(fetch_all!(self, sql, context_row, name))
    }

    pub async fn save_security_context(
        &self,
        sc: &SecurityContextRow,
    ) -> Result<(), PersistenceError> {
        let sql = "INSERT INTO security_contexts (id, name, tenant_id, description, capabilities, deny_list, \
             source, created_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, now_utc()) \
             ON CONFLICT (id) DO UPDATE SET description = excluded.description, \
             capabilities = excluded.capabilities, deny_list = excluded.deny_list";
        execute!(
            self,
            sql,
            &sc.id,
            &sc.name,
            &sc.tenant_id,
            &sc.description,
            json_text(&sc.capabilities),
            json_text(&sc.deny_list),
            REST_SOURCE,
        );
        Ok(())
    }

    // -- catalog_revision ----------------------------------------------------------------------

    /// The revision of the REST objects, as the last write left it.
    pub async fn catalog_revision(&self) -> Result<i64, PersistenceError> {
        let sql = "SELECT revision FROM catalog_revision WHERE id = 1";
        let rows = fetch_all!(self, sql, revision_row);
        Ok(rows.into_iter().next().unwrap_or_default())
    }
}

fn revision_row<R: Row>(row: &R) -> Result<i64, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get("revision")
}
