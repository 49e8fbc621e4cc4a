//! What the endpoints of the kinds addressed by name (CLI tools, security contexts) share: list,
//! get, delete, and which stored object an upsert replaces. Each kind keeps its own body, row
//! building, validation and audit event.

use http::{Response, StatusCode};
use serde_json::Value;

use super::{Ctx, UNSTORED_SOURCE, already_deleted, bad_request, db_error, require_rest, swap};
use crate::gateway::GatewayState;
use crate::infrastructure::persistence::{CatalogTable, Database, PersistenceError};
use crate::presentation::http::{Body, json_response};

/// A catalog kind whose objects are addressed by name (unique per tenant).
pub(super) trait NamedKind {
    type Row: Clone;
    /// How messages name the kind: `CLI tool`, `security context`.
    const KIND: &'static str;
    const TABLE: CatalogTable;

    fn id(row: &Self::Row) -> &str;
    fn name(row: &Self::Row) -> &str;
    fn tenant_id(row: &Self::Row) -> Option<&str>;
    fn source(row: &Self::Row) -> &str;
    /// The JSON an endpoint answers for a row.
    fn view(row: &Self::Row) -> Value;
    /// Every stored object of the kind, all tenants, all sources.
    async fn all(db: &Database) -> Result<Vec<Self::Row>, PersistenceError>;
    /// Every tenant's object of that name.
    async fn named(db: &Database, name: &str) -> Result<Vec<Self::Row>, PersistenceError>;
    /// Objects served without being stored (the default security contexts).
    fn unstored(_state: &GatewayState) -> Vec<Self::Row> {
        Vec::new()
    }
}

/// `CLI tool "name"`: how messages refer to one object.
pub(super) fn what<K: NamedKind>(name: &str) -> String {
    format!("{} \"{name}\"", K::KIND)
}

/// `GET` of the collection: the objects the operator may read.
pub(super) async fn list<K: NamedKind>(ctx: &Ctx<'_>) -> Response<Body> {
    match K::all(&ctx.state.db).await {
        Ok(mut rows) => {
            rows.extend(K::unstored(ctx.state));
            json_response(
                StatusCode::OK,
                &Value::Array(
                    rows.iter()
                        .filter(|r| ctx.can_read(K::tenant_id(r)))
                        .map(K::view)
                        .collect(),
                ),
            )
        }
        Err(e) => db_error(&e),
    }
}

/// The object a by-name request means (see [`Ctx::pick_named`]).
pub(super) async fn load<K: NamedKind>(
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<K::Row, Response<Body>> {
    let mut rows = K::named(&ctx.state.db, name)
        .await
        .map_err(|e| db_error(&e))?;
    rows.extend(
        K::unstored(ctx.state)
            .into_iter()
            .filter(|r| K::name(r) == name),
    );
    ctx.pick_named(&what::<K>(name), &rows, K::tenant_id)
        .cloned()
}

pub(super) async fn get<K: NamedKind>(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    match load::<K>(ctx, name).await {
        Ok(row) => json_response(StatusCode::OK, &K::view(&row)),
        Err(r) => r,
    }
}

/// The name an upsert registers: the body's, else (in a PUT) the path's; a rename is refused.
pub(super) fn upsert_name<K: NamedKind>(
    body_name: &str,
    path_name: Option<&str>,
) -> Result<String, Response<Body>> {
    let name = body_name.trim();
    match path_name {
        Some(path) if name.is_empty() => Ok(path.to_owned()),
        Some(path) if name != path => Err(bad_request(format!(
            "name: a {} cannot be renamed; register the new name instead",
            K::KIND
        ))),
        _ => Ok(name.to_owned()),
    }
}

/// What an upsert replaces, and who owns the result. A PUT (`path_name`) replaces the object the
/// path means, keeping its owner (a different `tenant_id` is refused); a POST creates in the
/// owner's scope, or replaces that owner's object of the same name. Either way only REST-owned
/// objects the operator may change are replaced.
pub(super) async fn upsert_target<K: NamedKind>(
    ctx: &Ctx<'_>,
    path_name: Option<&str>,
    name: &str,
    requested_tenant: Option<&str>,
) -> Result<(Option<K::Row>, Option<String>), Response<Body>> {
    let (existing, owner) = match path_name {
        Some(path_name) => {
            let current = load::<K>(ctx, path_name).await?;
            ctx.check_write(&what::<K>(path_name), K::tenant_id(&current))?;
            if let Some(t) = requested_tenant.filter(|t| !t.trim().is_empty())
                && Some(t) != K::tenant_id(&current)
            {
                return Err(bad_request(
                    "tenant_id: an object's tenant cannot change; delete and re-create it",
                ));
            }
            let owner = K::tenant_id(&current).map(str::to_owned);
            // A served default is not stored: replacing it registers a new object.
            let stored = K::source(&current) != UNSTORED_SOURCE;
            (stored.then_some(current), owner)
        }
        None => {
            let owner = ctx.owner_for_create(requested_tenant)?;
            let rows = K::named(&ctx.state.db, name)
                .await
                .map_err(|e| db_error(&e))?;
            let current = rows
                .into_iter()
                .find(|r| K::tenant_id(r) == owner.as_deref());
            (current, owner)
        }
    };
    match &existing {
        Some(current) => require_rest(
            &what::<K>(K::name(current)),
            K::id(current),
            K::tenant_id(current),
            K::source(current),
        )?,
        None => ctx.check_quota(owner.as_deref()).await?,
    }
    Ok((existing, owner))
}

/// `DELETE /{name}`: REST-owned objects the operator may change; audited.
pub(super) async fn delete<K: NamedKind>(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    let base = ctx.state.registry.lock().await;
    let current = match load::<K>(ctx, name).await {
        Ok(row) => row,
        Err(r) => return already_deleted(r),
    };
    if let Err(r) = ctx.check_rest_write(
        &what::<K>(name),
        K::id(&current),
        K::tenant_id(&current),
        K::source(&current),
    ) {
        return r;
    }
    if let Err(e) = ctx
        .state
        .db
        .delete_rest_row(K::TABLE, K::id(&current))
        .await
    {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    ctx.deleted(
        K::TABLE,
        K::id(&current),
        K::name(&current),
        K::tenant_id(&current),
    )
    .await
}
