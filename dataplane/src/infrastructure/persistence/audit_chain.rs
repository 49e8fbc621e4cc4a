//! The tamper-evident audit chain: each `gateway_events` row carries `hash`, a SHA-256 over a
//! canonical encoding of the row and of `prev_hash`, the previous row's hash. Editing, removing or
//! reordering a row breaks the chain at that row; signed checkpoints (`audit_checkpoint`) pin the
//! head so that rewriting the whole chain after a row is detected too.

use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use super::events::{AuditEvent, sqlite_time};
use super::{Database, PersistenceError};

/// `prev_hash` of the first chained row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Key of the Postgres transaction-level advisory lock that orders commits of every replica.
///
/// Why a lock rather than one chain per writer: one chain in id order is what an auditor reads
/// and what `audit verify` can check without knowing which replica wrote what, and a gap left by
/// a replica's crash cannot hide in a chain of its own. The lock is held only for the group
/// commit's few statements, and a group carries up to 256 callers' events, so replicas wait on
/// each other once per group, not once per event.
const CHAIN_LOCK_KEY: i64 = 0x5EA1_A0D1;
/// Rows per SQLite insert statement: 7 parameters each stays far below SQLite's 32,766.
const SQLITE_ROWS_PER_INSERT: usize = 1000;

/// The fields of a stored row that the hash covers.
pub struct ChainedRow<'a> {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub event_type: &'a str,
    pub tenant_id: Option<&'a str>,
    pub payload: &'a Map<String, Value>,
    pub prev_hash: &'a str,
}

impl ChainedRow<'_> {
    /// Lower-case hex SHA-256 of the canonical encoding: a version tag, then one field per line,
    /// strings as JSON string literals (so no field can contain the separator) and the payload as
    /// JSON with keys sorted at every level. Times have microsecond precision, what both backends
    /// store. The tenant is covered too: it decides who may read the row over `GET /v1/events`.
    pub fn hash(&self) -> String {
        chain_hash(
            self.id,
            self.created_at,
            self.event_type,
            self.tenant_id,
            self.prev_hash,
            &canonical_payload(self.payload),
        )
    }
}

/// [`ChainedRow::hash`] of a row whose payload is already in canonical text.
fn chain_hash(
    id: i64,
    created_at: DateTime<Utc>,
    event_type: &str,
    tenant_id: Option<&str>,
    prev_hash: &str,
    canonical_payload: &str,
) -> String {
    let mut text = Vec::with_capacity(160 + canonical_payload.len());
    text.extend_from_slice(b"seal-audit-v1\n");
    let _ = writeln!(text, "{id}");
    let _ = writeln!(
        text,
        "{}",
        created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
    );
    push_json_string(&mut text, event_type);
    text.push(b'\n');
    match tenant_id {
        Some(t) => push_json_string(&mut text, t),
        None => text.extend_from_slice(b"null"),
    }
    text.push(b'\n');
    text.extend_from_slice(prev_hash.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(canonical_payload.as_bytes());
    hex(&Sha256::digest(&text))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Compact JSON with object keys sorted at every level, whatever order the map keeps: Postgres
/// `jsonb` reorders keys, so the hash must not depend on the order the payload was written in.
/// The writers store this same text, so a row's payload is serialized once. U+0000 is written as
/// U+FFFD on both backends: Postgres `jsonb` refuses `\u0000`, and one such string (an agent's
/// tool name, an upstream's response key) would fail the commit of every caller in its group.
pub(super) fn canonical_payload(map: &Map<String, Value>) -> String {
    let mut out = Vec::with_capacity(256);
    canonical_object(map, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    let s = storable(s);
    serde_json::to_writer(out, s.as_ref()).expect("writing JSON into a Vec cannot fail");
}

/// Text Postgres can hold: U+0000 replaced by U+FFFD (see [`canonical_payload`]).
pub(super) fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

fn canonical_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_string(out, k);
        out.push(b':');
        canonical_json(v, out);
    }
    out.push(b'}');
}

fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => canonical_object(map, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => push_json_string(out, s),
        other => serde_json::to_writer(out, other).expect("writing JSON into a Vec cannot fail"),
    }
}

/// An event with its place in the chain, as inserted.
pub(super) struct Linked<'a> {
    pub id: i64,
    created_at: DateTime<Utc>,
    event: &'a AuditEvent,
    /// The payload in canonical text: what is hashed and what is stored.
    payload: String,
    prev_hash: String,
    pub hash: String,
}

/// Gives each event its id, in order, links it to the one before (`prev` is the hash of the row
/// before the first), and hashes it.
pub(super) fn link(
    events: &[AuditEvent],
    ids: impl IntoIterator<Item = i64>,
    mut prev: String,
) -> Vec<Linked<'_>> {
    events
        .iter()
        .zip(ids)
        .map(|(event, id)| {
            // Stored with microseconds on both backends: hash what will be read back.
            let created_at = event.created_at.trunc_subsecs(6);
            let payload = canonical_payload(&event.payload);
            let hash = chain_hash(
                id,
                created_at,
                event.event_type,
                event.tenant_id.as_deref(),
                &prev,
                &payload,
            );
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            Linked {
                id,
                created_at,
                event,
                payload,
                prev_hash,
                hash,
            }
        })
        .collect()
}

/// The newest row's hash (genesis for an empty table or a pre-chain row) and the last id handed
/// out, counting rows since purged (`AUTOINCREMENT` never reuses an id).
pub(super) const SQLITE_HEAD: &str = "SELECT (SELECT hash FROM gateway_events ORDER BY id DESC LIMIT 1), \
     MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'gateway_events'), 0), \
         COALESCE((SELECT MAX(id) FROM gateway_events), 0))";

pub(super) fn sqlite_head(row: &SqliteRow) -> Result<(i64, String), sqlx::Error> {
    let hash: Option<String> = row.try_get(0)?;
    Ok((row.try_get(1)?, hash.unwrap_or_else(|| GENESIS_HASH.into())))
}

/// Appends to `sql` the statements that write a group on SQLite: the jtis first used since the
/// last commit, then the chained rows. Multi-row inserts: each statement is a hop to the
/// connection's worker thread, so a group costs a few hops rather than one per row.
pub(super) fn push_sqlite_inserts<'a>(
    sql: &mut QueryBuilder<Sqlite>,
    linked: &'a [Linked<'a>],
    jtis: &'a [(String, DateTime<Utc>)],
) {
    for rows in jtis.chunks(SQLITE_ROWS_PER_INSERT) {
        sql.push("INSERT INTO seen_jtis (jti, expires_at) ");
        sql.push_values(rows, |mut row, (jti, expires_at)| {
            row.push_bind(jti.as_str())
                .push_bind(sqlite_time(*expires_at));
        });
        sql.push(" ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at; ");
    }
    for rows in linked.chunks(SQLITE_ROWS_PER_INSERT) {
        sql.push(
            "INSERT INTO gateway_events (id, event_type, payload, tenant_id, created_at, prev_hash, hash) ",
        );
        sql.push_values(rows, |mut row, l| {
            row.push_bind(l.id)
                .push_bind(l.event.event_type)
                .push_bind(l.payload.as_str())
                .push_bind(l.event.tenant_id.as_deref())
                .push_bind(sqlite_time(l.created_at))
                .push_bind(l.prev_hash.as_str())
                .push_bind(l.hash.as_str());
        });
        sql.push("; ");
    }
}

/// Inside an open Postgres transaction: takes the chain lock, reads the head, draws the group's ids
/// from the sequence, and links the events. One round trip: the lock and the read are separate
/// statements of one simple query, so the read's snapshot (taken per statement) sees every commit
/// of the replica that held the lock before. Ids drawn under the lock make id order chain order.
/// With `begin`, the same round trip opens the transaction first.
pub(super) async fn postgres_link<'e>(
    conn: &mut PgConnection,
    events: &'e [AuditEvent],
    begin: bool,
) -> Result<Vec<Linked<'e>>, PersistenceError> {
    let count = events.len();
    let begin = if begin { "BEGIN; " } else { "" };
    // Only integers are formatted into the text: no caller data reaches it.
    let rows = sqlx::raw_sql(AssertSqlSafe(format!(
        "{begin}SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}); \
         SELECT (SELECT hash FROM gateway_events ORDER BY id DESC LIMIT 1), \
                (SELECT string_agg(id::text, ',') FROM \
                   (SELECT nextval(pg_get_serial_sequence('gateway_events', 'id')) AS id \
                    FROM generate_series(1, {count})) AS drawn)"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let row = rows.last().ok_or(sqlx::Error::RowNotFound)?;
    let head: Option<String> = row.try_get(0)?;
    let drawn: String = row.try_get(1)?;
    let mut ids = drawn
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    ids.sort_unstable();
    Ok(link(
        events,
        ids,
        head.unwrap_or_else(|| GENESIS_HASH.into()),
    ))
}

/// Inserts a linked group on Postgres in one statement.
pub(super) async fn postgres_insert(
    conn: &mut PgConnection,
    linked: Vec<Linked<'_>>,
) -> Result<(), PersistenceError> {
    let mut columns = (
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
        Vec::with_capacity(linked.len()),
    );
    for l in linked {
        columns.0.push(l.id);
        columns.1.push(l.event.event_type);
        columns.2.push(l.payload);
        columns.3.push(l.event.tenant_id.clone());
        columns.4.push(l.created_at);
        columns.5.push(l.prev_hash);
        columns.6.push(l.hash);
    }
    sqlx::query(
        "INSERT INTO gateway_events (id, event_type, payload, tenant_id, created_at, prev_hash, hash) \
         SELECT id, event_type, payload::jsonb, tenant_id, created_at, prev_hash, hash \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[]) \
         AS t (id, event_type, payload, tenant_id, created_at, prev_hash, hash)",
    )
    .bind(columns.0)
    .bind(columns.1)
    .bind(columns.2)
    .bind(columns.3)
    .bind(columns.4)
    .bind(columns.5)
    .bind(columns.6)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Database {
    /// Appends the events to the chain in one transaction: all of them are durable when this
    /// returns, or none. Every writer of `gateway_events` goes through here.
    pub async fn append_events(&self, events: &[AuditEvent]) -> Result<(), PersistenceError> {
        self.append_events_and_jtis(events, &[]).await
    }

    /// [`Self::append_events`], and on SQLite the `jtis` first used since the last commit
    /// (`ReplayGuard` decided them in memory) in the same transaction. Postgres records its jtis
    /// before the call runs, so it is never given any here.
    pub async fn append_events_and_jtis(
        &self,
        events: &[AuditEvent],
        jtis: &[(String, DateTime<Utc>)],
    ) -> Result<(), PersistenceError> {
        if events.is_empty() && jtis.is_empty() {
            return Ok(());
        }
        match self {
            Self::Sqlite(pool) => {
                // IMMEDIATE takes the write lock before the head is read: a deferred transaction
                // that read first could not upgrade once another connection had written.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let (last_id, head) = if events.is_empty() {
                    (0, String::new())
                } else {
                    sqlite_head(&sqlx::query(SQLITE_HEAD).fetch_one(&mut *tx).await?)?
                };
                let linked = link(events, last_id + 1.., head);
                let mut sql = QueryBuilder::new("");
                push_sqlite_inserts(&mut sql, &linked, jtis);
                sql.build().execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Self::Postgres(pool) => {
                debug_assert!(jtis.is_empty(), "Postgres records jtis synchronously");
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = pool.begin().await?;
                let linked = postgres_link(&mut tx, events, false).await?;
                postgres_insert(&mut tx, linked).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The newest row's id and hash (`None` for an empty table or a pre-chain row).
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, PersistenceError> {
        const SQL: &str = "SELECT id, hash FROM gateway_events ORDER BY id DESC LIMIT 1";
        let row: Option<(i64, Option<String>)> = match self {
            Self::Sqlite(pool) => sqlx::query_as(SQL).fetch_optional(pool).await?,
            Self::Postgres(pool) => sqlx::query_as(SQL).fetch_optional(pool).await?,
        };
        Ok(row.and_then(|(id, hash)| Some((id, hash?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row<'a>(payload: &'a Map<String, Value>, prev: &'a str) -> ChainedRow<'a> {
        ChainedRow {
            id: 7,
            created_at: DateTime::parse_from_rfc3339("2026-11-29T01:02:03.456789Z")
                .unwrap()
                .with_timezone(&Utc),
            event_type: "ToolCallAuthorized",
            tenant_id: Some("acme"),
            payload,
            prev_hash: prev,
        }
    }

    #[test]
    fn the_hash_ignores_key_order_and_covers_every_field() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": "é\n"}});
        let b = json!({"a": {"x": "é\n", "y": [1, {"p": 1, "q": 2}]}, "b": 1});
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        let base = row(a, GENESIS_HASH).hash();
        assert_eq!(base, row(b, GENESIS_HASH).hash());
        assert_eq!(base.len(), 64);

        let other_payload = json!({"b": 2, "a": {"y": [1, {"q": 2, "p": 1}], "x": "é\n"}});
        let changed = [
            row(other_payload.as_object().unwrap(), GENESIS_HASH).hash(),
            row(a, &"1".repeat(64)).hash(),
            ChainedRow {
                id: 8,
                ..row(a, GENESIS_HASH)
            }
            .hash(),
            ChainedRow {
                event_type: "Other",
                ..row(a, GENESIS_HASH)
            }
            .hash(),
            ChainedRow {
                tenant_id: None,
                ..row(a, GENESIS_HASH)
            }
            .hash(),
            ChainedRow {
                created_at: row(a, GENESIS_HASH).created_at + chrono::Duration::microseconds(1),
                ..row(a, GENESIS_HASH)
            }
            .hash(),
        ];
        for (i, h) in changed.iter().enumerate() {
            assert_ne!(h, &base, "variant {i} hashed like the original");
        }
    }
}
