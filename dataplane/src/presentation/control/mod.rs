//! The REST control plane (reference §2.2-2.5, DESIGN §4): API specs, workflows, CLI tools,
//! security contexts and the API explorer, behind operator JWT authentication, plus the OpenAPI
//! document of the whole HTTP API and its `api-docs` page.
//!
//! Tenancy (reference §4.2, B-4): objects belong to the operator token's tenant; a tenant operator
//! sees its own objects and system-global ones, and changes only its own; a platform operator sees
//! and changes everything. Any other access answers 403 `tenant mismatch`. Objects from manifests
//! or custom resources are listed and readable here but answer 409 to every write.

// Handlers short-circuit with the finished error response (`?` on `Result<_, Response<Body>>`);
// it is built at most once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod cli_tools;
mod contexts;
mod explorer;
mod named;
pub mod openapi;
mod specs;
mod workflows;

use bytes::Bytes;
use chrono::Utc;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::application::registry;
use crate::gateway::GatewayState;
use crate::infrastructure::auth::operator::OperatorIdentity;
use crate::infrastructure::persistence::{
    AuditEvent, CatalogTable, NameHolder, PersistenceError, REST_SOURCE,
};
use crate::presentation::http::{
    Body, error, json_response, percent_decode, read_body, unavailable,
};
use crate::presentation::routes::{authenticate, method_not_allowed};

const HANDLER: &str = "control_plane";

/// Routes `/v1/specs`, `/v1/workflows`, `/v1/cli-tools`, `/v1/security-contexts` and `/v1/explorer`.
/// `None` when the path is none of those.
pub async fn route(
    state: &GatewayState,
    req: Request<Incoming>,
    segments: &[&str],
) -> Option<Response<Body>> {
    let method = req.method().clone();
    let collection = match segments {
        ["v1", "specs", rest @ ..] => (Collection::Specs, rest),
        ["v1", "workflows", rest @ ..] => (Collection::Workflows, rest),
        ["v1", "cli-tools", rest @ ..] => (Collection::CliTools, rest),
        ["v1", "security-contexts", rest @ ..] => (Collection::SecurityContexts, rest),
        ["v1", "explorer"] => (Collection::Explorer, &[][..]),
        _ => return None,
    };
    let (collection, rest) = collection;
    let allowed = match (collection, rest) {
        (Collection::Explorer, []) => "POST",
        (_, []) => "GET, POST",
        (_, [_]) => "GET, PUT, DELETE",
        _ => return Some(empty_not_found()),
    };
    let reads_body = method == Method::POST || method == Method::PUT;
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        return Some(method_not_allowed(allowed));
    }
    let operator = match authenticate(state, &req).await {
        Ok(o) => o,
        Err(response) => return Some(response),
    };
    let query = Query::parse(req.uri().query());
    let body = if reads_body {
        match read_body(req.into_body(), state.max_body_bytes).await {
            Ok(b) => b,
            Err(response) => return Some(response),
        }
    } else {
        Bytes::new()
    };
    let ctx = Ctx {
        state,
        operator: &operator,
        query,
    };
    let key = rest.first().copied();
    Some(match (collection, method, key) {
        (Collection::Specs, Method::GET, None) => specs::list(&ctx).await,
        (Collection::Specs, Method::POST, None) => specs::create(&ctx, body).await,
        (Collection::Specs, Method::GET, Some(id)) => specs::get(&ctx, id).await,
        (Collection::Specs, Method::PUT, Some(id)) => specs::update(&ctx, id, body).await,
        (Collection::Specs, Method::DELETE, Some(id)) => specs::delete(&ctx, id).await,
        (Collection::Workflows, Method::GET, None) => workflows::list(&ctx).await,
        (Collection::Workflows, Method::POST, None) => workflows::create(&ctx, body).await,
        (Collection::Workflows, Method::GET, Some(id)) => workflows::get(&ctx, id).await,
        (Collection::Workflows, Method::PUT, Some(id)) => workflows::update(&ctx, id, body).await,
        (Collection::Workflows, Method::DELETE, Some(id)) => workflows::delete(&ctx, id).await,
        (Collection::CliTools, Method::GET, None) => named::list::<cli_tools::CliTools>(&ctx).await,
        (Collection::CliTools, Method::POST, None) => cli_tools::upsert(&ctx, None, body).await,
        (Collection::CliTools, Method::GET, Some(name)) => {
            named::get::<cli_tools::CliTools>(&ctx, name).await
        }
        (Collection::CliTools, Method::PUT, Some(name)) => {
            cli_tools::upsert(&ctx, Some(name), body).await
        }
        (Collection::CliTools, Method::DELETE, Some(name)) => {
            named::delete::<cli_tools::CliTools>(&ctx, name).await
        }
        (Collection::SecurityContexts, Method::GET, None) => {
            named::list::<contexts::SecurityContexts>(&ctx).await
        }
        (Collection::SecurityContexts, Method::POST, None) => {
            contexts::upsert(&ctx, None, body).await
        }
        (Collection::SecurityContexts, Method::GET, Some(name)) => {
            named::get::<contexts::SecurityContexts>(&ctx, name).await
        }
        (Collection::SecurityContexts, Method::PUT, Some(name)) => {
            contexts::upsert(&ctx, Some(name), body).await
        }
        (Collection::SecurityContexts, Method::DELETE, Some(name)) => {
            named::delete::<contexts::SecurityContexts>(&ctx, name).await
        }
        (Collection::Explorer, Method::POST, None) => explorer::explore(&ctx, body).await,
        _ => method_not_allowed(allowed),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Specs,
    Workflows,
    CliTools,
    SecurityContexts,
    Explorer,
}

fn empty_not_found() -> Response<Body> {
    crate::presentation::http::empty(StatusCode::NOT_FOUND)
}

/// What every control-plane handler works with.
struct Ctx<'a> {
    state: &'a GatewayState,
    operator: &'a OperatorIdentity,
    query: Query,
}

/// The query parameters the control plane reads.
#[derive(Debug, Default)]
struct Query {
    /// Picks the tenant of a by-name object (`?tenant_id=`); empty means system-global.
    tenant_id: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let tenant_id = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "tenant_id")
            .map(|(_, v)| percent_decode(v));
        Self { tenant_id }
    }
}

// -- tenancy -----------------------------------------------------------------------------------

fn tenant_phrase(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("tenant \"{t}\""),
        None => "the system-global scope".into(),
    }
}

fn tenant_mismatch(message: String) -> Response<Body> {
    error(StatusCode::FORBIDDEN, format!("tenant mismatch: {message}"))
}

impl Ctx<'_> {
    /// Whether the operator may read an object owned by `owner`.
    fn can_read(&self, owner: Option<&str>) -> bool {
        self.operator.platform_operator
            || owner.is_none()
            || owner == self.operator.tenant_id.as_deref()
    }

    /// 403 unless the operator may read an object owned by `owner`.
    fn check_read(&self, what: &str, owner: Option<&str>) -> Result<(), Response<Body>> {
        if self.can_read(owner) {
            Ok(())
        } else {
            Err(tenant_mismatch(format!("{what} belongs to another tenant")))
        }
    }

    /// 403 unless the operator may change an object owned by `owner`: its own tenant's, or any
    /// for a platform operator (B-4). System-global objects are a platform operator's alone.
    fn check_write(&self, what: &str, owner: Option<&str>) -> Result<(), Response<Body>> {
        if self.operator.platform_operator {
            return Ok(());
        }
        match owner {
            None => Err(tenant_mismatch(format!(
                "{what} is system-global; only a platform operator may change it"
            ))),
            Some(t) if Some(t) == self.operator.tenant_id.as_deref() => Ok(()),
            Some(_) => Err(tenant_mismatch(format!("{what} belongs to another tenant"))),
        }
    }

    /// Whether the operator may change or delete this stored object here: its tenancy
    /// ([`Self::check_write`], 403) and that it is REST-owned ([`require_rest`], 409), in that order.
    fn check_rest_write(
        &self,
        what: &str,
        id: &str,
        owner: Option<&str>,
        source: &str,
    ) -> Result<(), Response<Body>> {
        self.check_write(what, owner)?;
        require_rest(what, id, owner, source)
    }

    /// 403 when the tenant `owner` already has as many REST objects as
    /// `control.max_objects_per_tenant` allows. Called under the registry lock, so this
    /// replica's creations cannot pass it together; creations through other replicas at the
    /// same moment may overshoot it by one each.
    async fn check_quota(&self, owner: Option<&str>) -> Result<(), Response<Body>> {
        let Some(tenant) = owner else {
            return Ok(());
        };
        let limit = self.state.max_objects_per_tenant;
        match self.state.db.rest_objects_of(tenant).await {
            Ok(count) if count >= u64::from(limit) => {
                tracing::warn!(
                    tenant_id = tenant,
                    count,
                    limit,
                    "REST registration refused: the tenant's object quota is reached"
                );
                Err(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "quota exceeded: tenant \"{tenant}\" has {count} objects registered over \
                         REST, as many as control.max_objects_per_tenant ({limit}) allows; \
                         delete some first"
                    ),
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(db_error(&e)),
        }
    }

    /// The owner of a new object ([`OperatorIdentity::owner_for_create`]), or 403.
    fn owner_for_create(&self, requested: Option<&str>) -> Result<Option<String>, Response<Body>> {
        self.operator.owner_for_create(requested).map_err(|t| {
            tenant_mismatch(format!(
                "an operator of {} cannot create objects for {}",
                tenant_phrase(self.operator.tenant_id.as_deref()),
                tenant_phrase(Some(&t))
            ))
        })
    }

    /// The tenant a by-name request means: `?tenant_id=` when given (empty: system-global),
    /// else the operator's own.
    fn addressed_tenant(&self) -> Option<Option<String>> {
        self.query
            .tenant_id
            .as_ref()
            .map(|t| Some(t.trim().to_owned()).filter(|t| !t.is_empty()))
    }

    /// Picks, among every tenant's objects named alike (owners given by `owner`), the one the
    /// request means: the addressed tenant's, else the operator's own, else the system-global one.
    fn pick_named<'r, T>(
        &self,
        what: &str,
        rows: &'r [T],
        owner: impl Fn(&T) -> Option<&str>,
    ) -> Result<&'r T, Response<Body>> {
        let find = |tenant: Option<&str>| rows.iter().find(|r| owner(r) == tenant);
        let picked = match self.addressed_tenant() {
            Some(tenant) => find(tenant.as_deref()),
            None => self
                .operator
                .tenant_id
                .as_deref()
                .and_then(|t| find(Some(t)))
                .or_else(|| find(None))
                .or_else(|| {
                    // A tenant-less platform operator may name another tenant's object when only
                    // one tenant has that name.
                    (self.operator.platform_operator && rows.len() == 1).then(|| &rows[0])
                }),
        };
        match picked {
            Some(row) => {
                self.check_read(what, owner(row))?;
                Ok(row)
            }
            None if rows.iter().any(|r| !self.can_read(owner(r))) => {
                Err(tenant_mismatch(format!("{what} belongs to another tenant")))
            }
            None if rows.len() > 1 => Err(error(
                StatusCode::BAD_REQUEST,
                format!("several tenants have {what}; say which with ?tenant_id="),
            )),
            None => Err(not_found(what)),
        }
    }

    async fn audit(&self, event: AuditEvent) -> Result<(), Response<Body>> {
        self.state
            .audit
            .write(vec![event])
            .await
            .map_err(|e| unavailable(HANDLER, &e))
    }

    /// Records that an object was deleted over REST and answers the caller.
    async fn deleted(
        &self,
        table: CatalogTable,
        id: &str,
        name: &str,
        tenant_id: Option<&str>,
    ) -> Response<Body> {
        let event =
            registry::deleted_event(table, id, name, tenant_id, &self.registered_by(), None);
        if let Err(r) = self.audit(event).await {
            return r;
        }
        tracing::info!(event_type = table.deleted_event(), %id, %name, "object deleted");
        json_response(StatusCode::OK, &json!({"deleted": true}))
    }

    /// Who registered an object, for audit events.
    fn registered_by(&self) -> String {
        self.operator
            .subject
            .clone()
            .unwrap_or_else(|| "operator".into())
    }
}

fn not_found(what: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// 409 for a write to an object that a manifest or custom resource defines.
fn declarative_conflict(what: &str, holder: &NameHolder) -> Response<Body> {
    let origin = match holder.source.as_str() {
        "kubernetes" => "a custom resource",
        "manifest" => "a manifest of the gateway's manifests folder",
        _ => "the gateway's declarative configuration",
    };
    error(
        StatusCode::CONFLICT,
        format!(
            "{what} is defined by {origin}; change it there (kubectl apply / kubectl delete), not through the REST API"
        ),
    )
}

/// The `source` of the default security contexts: served while no system-global context exists,
/// stored nowhere.
pub(super) const UNSTORED_SOURCE: &str = "default";

/// 409 when the row is not REST-owned; declarative rows are read-only here.
fn require_rest(
    what: &str,
    id: &str,
    tenant: Option<&str>,
    source: &str,
) -> Result<(), Response<Body>> {
    if source == REST_SOURCE {
        return Ok(());
    }
    if source == UNSTORED_SOURCE {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "{what} is a built-in default, served only while no system-global security context exists; register or declare one and the defaults are no longer served"
            ),
        ));
    }
    Err(declarative_conflict(
        what,
        &NameHolder {
            id: id.to_owned(),
            tenant_id: tenant.map(str::to_owned),
            source: source.to_owned(),
        },
    ))
}

/// A `DELETE` of what is not there: done already, as upstream answers, so a client that retries
/// a delete whose answer it lost is not told it failed. Nothing is written.
fn already_deleted(not_found: Response<Body>) -> Response<Body> {
    if not_found.status() == StatusCode::NOT_FOUND {
        json_response(StatusCode::OK, &json!({"deleted": true}))
    } else {
        not_found
    }
}

fn db_error(e: &PersistenceError) -> Response<Body> {
    // Names are checked under this process's registry lock; another replica's write of the same
    // name between that check and this insert meets the unique index instead. A conflict, not
    // an unavailable database.
    if let PersistenceError::Database(sqlx::Error::Database(db)) = e
        && db.is_unique_violation()
    {
        tracing::info!(error = %db, "REST write refused: the name was taken meanwhile");
        return error(
            StatusCode::CONFLICT,
            "the name was taken at the same moment by another write (through another replica); list the objects and try again",
        );
    }
    unavailable(HANDLER, e)
}

/// Parses a JSON body; a 400 naming the field on failure.
fn parse_body<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Response<Body>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}: body is not JSON: {e}"),
        )
    })?;
    parse_value(what, value)
}

fn parse_value<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, Response<Body>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("invalid {what}: {inner}")
        } else {
            format!("invalid {what}: {path}: {inner}")
        };
        error(StatusCode::BAD_REQUEST, message)
    })
}

/// 400 listing the compile problems of a REST body.
fn invalid(what: &str, problems: Vec<String>) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": format!("invalid {what}: {}", problems.join("; ")), "problems": problems}),
    )
}

/// After a write, under the registry lock: serve the REST objects as they now are.
async fn swap(state: &GatewayState, base: &registry::Base) -> Result<(), Response<Body>> {
    registry::written(state, base).await.map_err(|e| {
        tracing::error!(error = %e, "REST write stored but the snapshot could not be rebuilt");
        error(StatusCode::INTERNAL_SERVER_ERROR, e)
    })
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `{"error": ...}` 400 helper for handlers.
fn bad_request(message: impl Into<String>) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, message)
}
