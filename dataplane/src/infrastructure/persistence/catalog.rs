//! Catalog tables (`workflows`, `cli_tools`, `security_contexts`) mirror what the gateway serves, so
//! the runbook's queries (`SELECT id, name, tenant_id FROM workflows WHERE name = ...`) see objects
//! that came from manifests or custom resources as well as those registered over REST.

use std::collections::HashMap;

use aegis_seal_crds::{CliToolEntry, ResourceRef, SecurityContextEntry, Snapshot, WorkflowEntry};
use serde_json::Value;
use uuid::Uuid;

use super::{CatalogTable, Database, PersistenceError, REST_SOURCE, dialect};

/// Where declarative catalog rows came from. REST-registered rows (`rest`) are never touched here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogSource {
    /// The standalone gateway's manifests folder.
    Manifest,
    /// Custom resources, through the operator's snapshot.
    Kubernetes,
}

impl CatalogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// What the catalog tables mirror: a plain [`Snapshot`], or the shared entries a served snapshot
/// holds (implemented beside them), so a reload writes the tables without copying its entries.
pub trait CatalogEntries {
    fn workflows(&self) -> impl ExactSizeIterator<Item = &WorkflowEntry>;
    fn cli_tools(&self) -> impl ExactSizeIterator<Item = &CliToolEntry>;
    fn security_contexts(&self) -> impl ExactSizeIterator<Item = &SecurityContextEntry>;
}

impl CatalogEntries for Snapshot {
    fn workflows(&self) -> impl ExactSizeIterator<Item = &WorkflowEntry> {
        self.workflows.iter()
    }
    fn cli_tools(&self) -> impl ExactSizeIterator<Item = &CliToolEntry> {
        self.cli_tools.iter()
    }
    fn security_contexts(&self) -> impl ExactSizeIterator<Item = &SecurityContextEntry> {
        self.security_contexts.iter()
    }
}

/// What one [`Database::sync_catalog`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogSync {
    pub workflows: usize,
    pub cli_tools: usize,
    pub security_contexts: usize,
    /// REST-registered objects this sync replaced, because a declarative object now has their
    /// tenant and name. Reported by the one sync that replaced each, even with several replicas.
    pub replaced: Vec<ReplacedRestObject>,
}

/// A REST-registered row that a manifest or custom resource of the same tenant and name replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedRestObject {
    pub table: CatalogTable,
    pub id: String,
    pub name: String,
    pub tenant_id: Option<String>,
    /// The declarative object that took the name.
    pub by: ResourceRef,
}

/// A stable row id for a declarative object, so a reload does not churn ids.
pub fn row_id(source: &ResourceRef) -> String {
    let key = format!(
        "{}/{}/{}",
        source.kind,
        source.namespace.as_deref().unwrap_or_default(),
        source.name
    );
    Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
}

/// Runs one statement with the same binds on whichever backend.
macro_rules! execute {
    ($tx:expr, $sql:expr $(, $bind:expr)* $(,)?) => {
        match &mut $tx {
            Tx::Sqlite(tx) => {
                sqlx::query(sqlx::AssertSqlSafe($sql)) $(.bind($bind))* .execute(&mut **tx).await?;
            }
            Tx::Postgres(tx) => {
                sqlx::query(sqlx::AssertSqlSafe($sql)) $(.bind($bind))* .execute(&mut **tx).await?;
            }
        }
    };
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    /// `(id, name, tenant_id)` of `table`'s REST-registered rows.
    async fn rest_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<(String, String, Option<String>)>, PersistenceError> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        Ok(match self {
            Self::Sqlite(tx) => {
                sqlx::query_as(sql)
                    .bind(REST_SOURCE)
                    .fetch_all(&mut **tx)
                    .await?
            }
            Self::Postgres(tx) => {
                sqlx::query_as(sql)
                    .bind(REST_SOURCE)
                    .fetch_all(&mut **tx)
                    .await?
            }
        })
    }

    /// Deletes the REST row `id`; whether this transaction deleted it (a concurrent sync on
    /// another replica may have replaced it first).
    async fn delete_rest_row(&mut self, sql: &str, id: &str) -> Result<bool, PersistenceError> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let affected = match self {
            Self::Sqlite(tx) => sqlx::query(sql)
                .bind(id)
                .bind(REST_SOURCE)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Self::Postgres(tx) => sqlx::query(sql)
                .bind(id)
                .bind(REST_SOURCE)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        };
        Ok(affected > 0)
    }

    /// Removes the REST rows whose tenant and name a declarative object of `table` now has
    /// (`entries`: its `(tenant, name, resource)`s), so that the upserts that follow insert.
    async fn replace_rest_rows<'a>(
        &mut self,
        backend: super::Backend,
        table: CatalogTable,
        entries: impl Iterator<Item = (Option<&'a str>, &'a str, &'a ResourceRef)>,
        replaced: &mut Vec<ReplacedRestObject>,
    ) -> Result<(), PersistenceError> {
        let name = table.name();
        let rest = self
            .rest_rows(&dialect(
                backend,
                &format!("SELECT id, name, tenant_id FROM {name} WHERE source = $1"),
            ))
            .await?;
        if rest.is_empty() {
            return Ok(());
        }
        // Borrowed keys: the snapshot's entries (thousands) are looked up without a copy.
        let rest: HashMap<(Option<&str>, &str), &str> = rest
            .iter()
            .map(|(id, name, tenant)| ((tenant.as_deref(), name.as_str()), id.as_str()))
            .collect();
        let delete = dialect(
            backend,
            &format!("DELETE FROM {name} WHERE id = $1 AND source = $2"),
        );
        for (tenant, object, by) in entries {
            let Some(&id) = rest.get(&(tenant, object)) else {
                continue;
            };
            if self.delete_rest_row(&delete, id).await? {
                replaced.push(ReplacedRestObject {
                    table,
                    id: id.to_owned(),
                    name: object.to_owned(),
                    tenant_id: tenant.map(str::to_owned),
                    by: by.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Database {
    /// Replaces the declarative rows of `source` with the snapshot's entries, in one transaction.
    /// A declarative object owns its name: it replaces a REST row of the same tenant and name,
    /// which the result lists.
    pub async fn sync_catalog(
        &self,
        snapshot: &impl CatalogEntries,
        source: CatalogSource,
    ) -> Result<CatalogSync, PersistenceError> {
        let backend = self.backend();
        let sql = |s: &str| dialect(backend, s);
        let mut tx = match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        };
        let src = source.as_str();
        for table in ["workflows", "cli_tools", "security_contexts"] {
            execute!(
                tx,
                sql(&format!("DELETE FROM {table} WHERE source = $1")),
                src
            );
        }

        let mut replaced = Vec::new();
        tx.replace_rest_rows(
            backend,
            CatalogTable::Workflows,
            snapshot
                .workflows()
                .map(|w| (w.tenant_id.as_deref(), w.tool_name.as_str(), &w.source)),
            &mut replaced,
        )
        .await?;
        tx.replace_rest_rows(
            backend,
            CatalogTable::CliTools,
            snapshot
                .cli_tools()
                .map(|t| (t.tenant_id.as_deref(), t.tool_name.as_str(), &t.source)),
            &mut replaced,
        )
        .await?;
        tx.replace_rest_rows(
            backend,
            CatalogTable::SecurityContexts,
            snapshot
                .security_contexts()
                .map(|c| (c.tenant_id.as_deref(), c.name.as_str(), &c.source)),
            &mut replaced,
        )
        .await?;

        // The conflict clauses are for a REST row written after the deletes above, on another
        // replica: the declarative object still takes the name.
        let upsert_workflow = sql(
            "INSERT INTO workflows (id, name, tenant_id, description, input_schema, api_spec_id, steps, source, created_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, NULL, $6::jsonb, $7, now_utc()) \
             ON CONFLICT (COALESCE(tenant_id, ''), name) DO UPDATE SET id = excluded.id, \
             description = excluded.description, input_schema = excluded.input_schema, \
             api_spec_id = NULL, steps = excluded.steps, source = excluded.source",
        );
        for w in snapshot.workflows() {
            execute!(
                tx,
                upsert_workflow.clone(),
                row_id(&w.source),
                &w.tool_name,
                &w.tenant_id,
                &w.description,
                w.input_schema.to_string(),
                serde_json::to_string(&w.steps).unwrap_or_else(|_| "[]".into()),
                src,
            );
        }

        let upsert_cli = sql(
            "INSERT INTO cli_tools (id, name, tenant_id, description, docker_image, allowed_subcommands, \
             require_semantic_judge, default_timeout_seconds, resources, registry_credential_path, source, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb, $10::jsonb, $11, now_utc()) \
             ON CONFLICT (COALESCE(tenant_id, ''), name) DO UPDATE SET id = excluded.id, \
             description = excluded.description, docker_image = excluded.docker_image, \
             allowed_subcommands = excluded.allowed_subcommands, \
             require_semantic_judge = excluded.require_semantic_judge, \
             default_timeout_seconds = excluded.default_timeout_seconds, resources = excluded.resources, \
             registry_credential_path = excluded.registry_credential_path, source = excluded.source",
        );
        for t in snapshot.cli_tools() {
            execute!(
                tx,
                upsert_cli.clone(),
                row_id(&t.source),
                &t.tool_name,
                &t.tenant_id,
                &t.description,
                &t.docker_image,
                Value::from(t.allowed_subcommands.clone()).to_string(),
                t.require_semantic_judge,
                i64::from(t.default_timeout_seconds),
                serde_json::to_string(&t.resources).unwrap_or_else(|_| "{}".into()),
                t.registry_credential_path
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok()),
                src,
            );
        }

        let upsert_context = sql(
            "INSERT INTO security_contexts (id, name, tenant_id, description, capabilities, deny_list, source, created_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, now_utc()) \
             ON CONFLICT (COALESCE(tenant_id, ''), name) DO UPDATE SET id = excluded.id, \
             description = excluded.description, capabilities = excluded.capabilities, \
             deny_list = excluded.deny_list, source = excluded.source",
        );
        for c in snapshot.security_contexts() {
            execute!(
                tx,
                upsert_context.clone(),
                row_id(&c.source),
                &c.name,
                &c.tenant_id,
                &c.description,
                serde_json::to_string(&c.capabilities).unwrap_or_else(|_| "[]".into()),
                Value::from(c.deny_list.clone()).to_string(),
                src,
            );
        }

        match tx {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        let sync = CatalogSync {
            workflows: snapshot.workflows().len(),
            cli_tools: snapshot.cli_tools().len(),
            security_contexts: snapshot.security_contexts().len(),
            replaced,
        };
        tracing::debug!(source = src, ?sync, "catalog tables synchronised");
        Ok(sync)
    }
}
