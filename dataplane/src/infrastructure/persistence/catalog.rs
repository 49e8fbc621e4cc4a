//! Catalog tables (`workflows`, `cli_tools`, `security_contexts`) mirror what the gateway serves, so
//! the runbook's queries (`SELECT id, name, tenant_id FROM workflows WHERE name = ...`) see objects
//! that came from manifests or custom resources as well as those registered over REST.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

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

/// Rows per multi-row upsert. The widest row (a CLI tool's) binds 11 values, so a statement
/// binds at most 5,500: below SQLite's limit of 32,766 and Postgres's of 65,535.
const ROWS_PER_STATEMENT: usize = 500;

/// One value of a catalog row, bound on either backend.
enum Cell<'a> {
    Text(Option<Cow<'a, str>>),
    Bool(bool),
    Int(i64),
}

impl<'a> Cell<'a> {
    fn text(value: String) -> Self {
        Self::Text(Some(Cow::Owned(value)))
    }

    fn borrowed(value: &'a str) -> Self {
        Self::Text(Some(Cow::Borrowed(value)))
    }
}

/// Binds a row's cells in order; one body for both backends' query types.
macro_rules! bind_cells {
    ($query:expr, $cells:expr) => {{
        let mut query = $query;
        for cell in $cells {
            query = match cell {
                Cell::Text(text) => query.bind(text.as_deref()),
                Cell::Bool(value) => query.bind(*value),
                Cell::Int(value) => query.bind(*value),
            };
        }
        query
    }};
}

/// The entries that one upsert per entry would have left: the last of each tenant and name.
/// Compiling a snapshot refuses a name defined twice, but Postgres fails a whole multi-row upsert
/// that names a row twice ("cannot affect row a second time"), so the sync does not rely on it.
fn last_of_each_name<'a, T: CatalogRow>(entries: impl Iterator<Item = &'a T>) -> Vec<&'a T> {
    let entries: Vec<&'a T> = entries.collect();
    let last: HashMap<_, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, &entry)| (entry.owner(), i))
        .collect();
    entries
        .iter()
        .enumerate()
        .filter(|&(i, &entry)| last[&entry.owner()] == i)
        .map(|(_, &entry)| entry)
        .collect()
}

/// What the sync needs of each kind of declarative object, beside its table.
trait CatalogRow {
    const TABLE: CatalogTable;
    /// The columns of the object's own kind, after [`COMMON_COLUMNS`], each with its
    /// placeholder's cast (`::jsonb` for JSON), in [`Self::cells`]'s order. The sync adds
    /// `source`, and `created_at` when it inserts.
    const COLUMNS: &'static [(&'static str, &'static str)];

    /// The tenant and name that own the object's row.
    fn owner(&self) -> (Option<&str>, &str);

    /// The manifest or custom resource it came from.
    fn source(&self) -> &ResourceRef;

    fn description(&self) -> &str;

    /// The values of [`Self::COLUMNS`], in order.
    fn cells(&self) -> Vec<Cell<'_>>;
}

/// The columns every catalog table starts with, filled from [`CatalogRow::source`] (the row id),
/// [`CatalogRow::owner`] and [`CatalogRow::description`].
const COMMON_COLUMNS: [&str; 4] = ["id", "name", "tenant_id", "description"];

/// The columns of the catalog tables' conflict key, `(COALESCE(tenant_id, ''), name)`.
const KEY_COLUMNS: [&str; 2] = ["name", "tenant_id"];

/// A row's cells in its upsert's order: [`COMMON_COLUMNS`], the kind's own, then `source`.
fn row_cells<'a, T: CatalogRow>(entry: &'a T, source: CatalogSource) -> Vec<Cell<'a>> {
    let (tenant, name) = entry.owner();
    let mut row = vec![
        Cell::text(row_id(entry.source())),
        Cell::borrowed(name),
        Cell::Text(tenant.map(Cow::Borrowed)),
        Cell::borrowed(entry.description()),
    ];
    let own = entry.cells();
    debug_assert_eq!(own.len(), T::COLUMNS.len(), "one cell per column");
    row.extend(own);
    row.push(Cell::borrowed(source.as_str()));
    row
}

impl CatalogRow for WorkflowEntry {
    const TABLE: CatalogTable = CatalogTable::Workflows;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("input_schema", "::jsonb"),
        // Only REST-registered workflows reference a stored OpenAPI spec.
        ("api_spec_id", ""),
        ("steps", "::jsonb"),
    ];

    fn owner(&self) -> (Option<&str>, &str) {
        (self.tenant_id.as_deref(), &self.tool_name)
    }

    fn source(&self) -> &ResourceRef {
        &self.source
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        vec![
            Cell::text(self.input_schema.to_string()),
            Cell::Text(None),
            Cell::text(serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".into())),
        ]
    }
}

impl CatalogRow for CliToolEntry {
    const TABLE: CatalogTable = CatalogTable::CliTools;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("docker_image", ""),
        ("allowed_subcommands", "::jsonb"),
        ("require_semantic_judge", ""),
        ("default_timeout_seconds", ""),
        ("resources", "::jsonb"),
        ("registry_credential_path", "::jsonb"),
    ];

    fn owner(&self) -> (Option<&str>, &str) {
        (self.tenant_id.as_deref(), &self.tool_name)
    }

    fn source(&self) -> &ResourceRef {
        &self.source
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        vec![
            Cell::borrowed(&self.docker_image),
            Cell::text(Value::from(self.allowed_subcommands.clone()).to_string()),
            Cell::Bool(self.require_semantic_judge),
            Cell::Int(i64::from(self.default_timeout_seconds)),
            Cell::text(serde_json::to_string(&self.resources).unwrap_or_else(|_| "{}".into())),
            Cell::Text(
                self.registry_credential_path
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok())
                    .map(Cow::Owned),
            ),
        ]
    }
}

impl CatalogRow for SecurityContextEntry {
    const TABLE: CatalogTable = CatalogTable::SecurityContexts;
    const COLUMNS: &'static [(&'static str, &'static str)] =
        &[("capabilities", "::jsonb"), ("deny_list", "::jsonb")];

    fn owner(&self) -> (Option<&str>, &str) {
        (self.tenant_id.as_deref(), &self.name)
    }

    fn source(&self) -> &ResourceRef {
        &self.source
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn cells(&self) -> Vec<Cell<'_>> {
        vec![
            Cell::text(serde_json::to_string(&self.capabilities).unwrap_or_else(|_| "[]".into())),
            Cell::text(Value::from(self.deny_list.clone()).to_string()),
        ]
    }
}

/// `T`'s upsert of `rows` rows, with numbered placeholders (`$n`, which `dialect` makes `?n` for
/// SQLite). On a conflict it updates the row only where a column differs, so a reload that
/// changed nothing writes nothing: no new row versions on Postgres, no pages on SQLite.
///
/// The conflict is also what lets a declarative object take the name of a REST row written after
/// the sync's deletes, on another replica.
fn upsert_sql<T: CatalogRow>(rows: usize) -> String {
    let table = T::TABLE.name();
    let columns: Vec<&str> = COMMON_COLUMNS
        .into_iter()
        .chain(T::COLUMNS.iter().map(|&(column, _)| column))
        .collect();
    let mut sql = format!(
        "INSERT INTO {table} ({}, source, created_at) VALUES ",
        columns.join(", ")
    );
    let mut next = 1;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        let casts = COMMON_COLUMNS.map(|_| "").into_iter();
        for cast in casts.chain(T::COLUMNS.iter().map(|&(_, cast)| cast)) {
            let _ = write!(sql, "${next}{cast}, ");
            next += 1;
        }
        let _ = write!(sql, "${next}, now_utc())");
        next += 1;
    }
    let updated: Vec<&str> = columns
        .into_iter()
        .filter(|column| !KEY_COLUMNS.contains(column))
        .chain(["source"])
        .collect();
    let set: Vec<String> = updated
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    let changed: Vec<String> = updated
        .iter()
        .map(|column| format!("{table}.{column} IS DISTINCT FROM excluded.{column}"))
        .collect();
    let _ = write!(
        sql,
        " ON CONFLICT (COALESCE(tenant_id, ''), name) DO UPDATE SET {} WHERE {}",
        set.join(", "),
        changed.join(" OR ")
    );
    sql
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    /// Runs one statement with `cells` bound in order; the rows it affected.
    async fn execute<'c>(
        &mut self,
        sql: String,
        cells: impl Iterator<Item = &'c Cell<'c>>,
    ) -> Result<u64, PersistenceError> {
        let sql = sqlx::AssertSqlSafe(sql);
        Ok(match self {
            Self::Sqlite(tx) => bind_cells!(sqlx::query(sql), cells)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Self::Postgres(tx) => bind_cells!(sqlx::query(sql), cells)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Upserts the rows of `entries` ([`row_cells`]), [`ROWS_PER_STATEMENT`] rows a
    /// statement. A statement per row made a reload of 2,000 workflows 2,000 round trips, all
    /// inside the sync's transaction: on SQLite that holds the write lock the audit writer's
    /// commits wait for.
    async fn upsert_rows<T: CatalogRow>(
        &mut self,
        backend: super::Backend,
        entries: &[&T],
        source: CatalogSource,
    ) -> Result<(), PersistenceError> {
        // A statement's rows at a time: their serialized JSON is not held for the whole catalog.
        for entries in entries.chunks(ROWS_PER_STATEMENT) {
            let chunk: Vec<Vec<Cell<'_>>> = entries
                .iter()
                .map(|&entry| row_cells(entry, source))
                .collect();
            let sql = dialect(backend, &upsert_sql::<T>(chunk.len()));
            self.execute(sql, chunk.iter().flatten()).await?;
        }
        Ok(())
    }

    /// `(id, name, tenant_id)` of `table`'s rows from `source`.
    async fn rows_of(
        &mut self,
        backend: super::Backend,
        table: CatalogTable,
        source: &str,
    ) -> Result<Vec<(String, String, Option<String>)>, PersistenceError> {
        let sql = sqlx::AssertSqlSafe(dialect(
            backend,
            &format!(
                "SELECT id, name, tenant_id FROM {} WHERE source = $1",
                table.name()
            ),
        ));
        Ok(match self {
            Self::Sqlite(tx) => {
                sqlx::query_as(sql)
                    .bind(source)
                    .fetch_all(&mut **tx)
                    .await?
            }
            Self::Postgres(tx) => {
                sqlx::query_as(sql)
                    .bind(source)
                    .fetch_all(&mut **tx)
                    .await?
            }
        })
    }

    /// Deletes the rows of `source` that `entries` no longer have as they are: gone, or now with
    /// another id, tenant or name. The rest are left for the upserts to update in place, where a
    /// column changed.
    async fn delete_stale_rows<T: CatalogRow>(
        &mut self,
        backend: super::Backend,
        entries: &[&T],
        source: CatalogSource,
    ) -> Result<(), PersistenceError> {
        let table = T::TABLE;
        let rows = self.rows_of(backend, table, source.as_str()).await?;
        let ids: Vec<String> = entries.iter().map(|entry| row_id(entry.source())).collect();
        let wanted: HashSet<(&str, Option<&str>, &str)> = ids
            .iter()
            .zip(entries)
            .map(|(id, entry)| {
                let (tenant, name) = entry.owner();
                (id.as_str(), tenant, name)
            })
            .collect();
        let stale: Vec<&str> = rows
            .iter()
            .filter(|(id, name, tenant)| !wanted.contains(&(id, tenant.as_deref(), name)))
            .map(|(id, _, _)| id.as_str())
            .collect();
        for ids in stale.chunks(ROWS_PER_STATEMENT) {
            let mut sql = format!("DELETE FROM {} WHERE source = $1 AND id IN (", table.name());
            for i in 0..ids.len() {
                let _ = write!(sql, "{}${}", if i == 0 { "" } else { ", " }, i + 2);
            }
            sql.push(')');
            let binds: Vec<Cell<'_>> = std::iter::once(source.as_str())
                .chain(ids.iter().copied())
                .map(Cell::borrowed)
                .collect();
            self.execute(dialect(backend, &sql), binds.iter()).await?;
        }
        Ok(())
    }

    /// Deletes the REST row `id`; whether this transaction deleted it (a concurrent sync on
    /// another replica may have replaced it first).
    async fn delete_rest_row(&mut self, sql: &str, id: &str) -> Result<bool, PersistenceError> {
        let binds = [Cell::borrowed(id), Cell::borrowed(REST_SOURCE)];
        Ok(self.execute(sql.to_owned(), binds.iter()).await? > 0)
    }

    /// Removes the REST rows whose tenant and name a declarative object of `table` now has
    /// (`entries`: its `(tenant, name, resource)`s), so that the upserts that follow insert.
    async fn replace_rest_rows<'a, T: CatalogRow + 'a>(
        &mut self,
        backend: super::Backend,
        entries: impl Iterator<Item = &'a T>,
        replaced: &mut Vec<ReplacedRestObject>,
    ) -> Result<(), PersistenceError> {
        let table = T::TABLE;
        let name = table.name();
        let rest = self.rows_of(backend, table, REST_SOURCE).await?;
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
        for entry in entries {
            let (tenant, object) = entry.owner();
            let Some(&id) = rest.get(&(tenant, object)) else {
                continue;
            };
            if self.delete_rest_row(&delete, id).await? {
                replaced.push(ReplacedRestObject {
                    table,
                    id: id.to_owned(),
                    name: object.to_owned(),
                    tenant_id: tenant.map(str::to_owned),
                    by: entry.source().clone(),
                });
            }
        }
        Ok(())
    }
}

impl Database {
    /// Makes the declarative rows of `source` the snapshot's entries, in one transaction: rows it
    /// no longer has are deleted, rows whose columns changed are updated, new ones inserted, and
    /// the rest left alone, so each replica's reload writes only what changed.
    /// A declarative object owns its name: it replaces a REST row of the same tenant and name,
    /// which the result lists.
    pub async fn sync_catalog(
        &self,
        snapshot: &impl CatalogEntries,
        source: CatalogSource,
    ) -> Result<CatalogSync, PersistenceError> {
        let backend = self.backend();
        let mut tx = match self {
            // IMMEDIATE takes the write lock (waiting out `busy_timeout`) before the stale rows
            // are read: a deferred transaction that read first fails with "database is locked",
            // without waiting, once another connection has written since its read.
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        };
        let workflows = last_of_each_name(snapshot.workflows());
        let cli_tools = last_of_each_name(snapshot.cli_tools());
        let contexts = last_of_each_name(snapshot.security_contexts());
        tx.delete_stale_rows(backend, &workflows, source).await?;
        tx.delete_stale_rows(backend, &cli_tools, source).await?;
        tx.delete_stale_rows(backend, &contexts, source).await?;

        let mut replaced = Vec::new();
        tx.replace_rest_rows(backend, snapshot.workflows(), &mut replaced)
            .await?;
        tx.replace_rest_rows(backend, snapshot.cli_tools(), &mut replaced)
            .await?;
        tx.replace_rest_rows(backend, snapshot.security_contexts(), &mut replaced)
            .await?;

        tx.upsert_rows(backend, &workflows, source).await?;
        tx.upsert_rows(backend, &cli_tools, source).await?;
        tx.upsert_rows(backend, &contexts, source).await?;

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
        tracing::debug!(
            source = source.as_str(),
            ?sync,
            "catalog tables synchronised"
        );
        Ok(sync)
    }
}
