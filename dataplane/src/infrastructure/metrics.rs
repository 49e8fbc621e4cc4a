//! Prometheus metrics of the data plane (reference §12.1, issue 11).
//!
//! The upstream series keep their names, types, labels and buckets so existing dashboards and
//! alerts keep working:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `aegis_seal_attestations_total` | counter | `outcome` |
//! | `aegis_seal_signature_failures_total` | counter | – |
//! | `aegis_seal_sessions_active` | gauge | – |
//! | `aegis_tool_policy_violations_total` | counter | `violation_type` |
//! | `aegis_tool_invocations_total` | counter | `tool_name`, `path`, `status` |
//! | `aegis_tool_invocation_duration_seconds` | histogram | `tool_name`, `path` |
//! | `aegis_seal_http_requests_total` | counter | `method`, `path_template`, `status_code` |
//! | `aegis_seal_http_request_duration_seconds` | histogram | `method`, `path_template` |
//!
//! The gRPC pair (`aegis_seal_grpc_*`) is absent: this data plane has no gRPC listener.
//!
//! Added for operators (see `docs/observability.md`): the served snapshot and reload outcomes, the
//! replay store's size, the audit writer's queue depth and commit latency, outbound latency per
//! upstream, credential exchange outcomes and container runs by outcome.
//!
//! Every label value comes from a closed set or from configuration (resolved tool names, upstream
//! hosts, snapshot hash), never from what a caller sends: a caller-supplied tool name that does not
//! exist is labelled `unknown`, an unrouted path `unknown_path`, an unusual method `other`. That
//! keeps the series count fixed whatever callers do (upstream grows by about 2 KB per unknown name).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::Row;

use crate::infrastructure::persistence::Database;

/// The log target of this module (reference §12.2).
pub const TARGET: &str = "aegis_seal_gateway::infrastructure::metrics";

/// Upper bounds of every `*_duration_seconds` histogram (reference §12.1).
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often `aegis_seal_sessions_active` is recounted from the database (reference §12.1).
pub const SESSION_GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// The `tool_name` of a call whose tool does not exist.
pub const UNKNOWN_TOOL: &str = "unknown";
/// The `path_template` of a request no route matched.
pub const UNKNOWN_PATH: &str = "unknown_path";
/// The `upstream` of requests to hosts beyond [`MAX_UPSTREAMS`].
pub const OTHER_UPSTREAM: &str = "other";
/// Most distinct `upstream` label values. Upstream hosts come from configuration, but a bound here
/// keeps a misconfiguration (or a redirect-following setting) from growing the series without end.
pub const MAX_UPSTREAMS: usize = 256;

/// Every `outcome` of `aegis_seal_attestations_total`, all pre-registered at zero so `rate()` and
/// alerts work before the first failure.
pub const ATTESTATION_OUTCOMES: [&str; 9] = [
    "ok",
    "signature_invalid",
    "replay",
    "expired",
    "unauthorized",
    "context_mismatch",
    "tool_not_allowed",
    "forbidden",
    "malformed",
];

/// The `outcome` of one envelope (reference §1.5, "metric outcome" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    Ok,
    SignatureInvalid,
    Replay,
    Expired,
    Unauthorized,
    ContextMismatch,
    ToolNotAllowed,
    Forbidden,
    Malformed,
}

impl Attestation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::SignatureInvalid => "signature_invalid",
            Self::Replay => "replay",
            Self::Expired => "expired",
            Self::Unauthorized => "unauthorized",
            Self::ContextMismatch => "context_mismatch",
            Self::ToolNotAllowed => "tool_not_allowed",
            Self::Forbidden => "forbidden",
            Self::Malformed => "malformed",
        }
    }
}

/// How a tool was dispatched (`path` label). `native` exists upstream but its catalog is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPath {
    Cli,
    Workflow,
}

impl ToolPath {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Workflow => "workflow",
        }
    }
}

/// How a container run ended (`aegis_seal_container_runs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRun {
    /// Exit code 0.
    Ok,
    /// The command ran and exited with another code.
    NonzeroExit,
    /// Killed at the tool's timeout.
    TimedOut,
    /// The run could not happen or finish: no container CLI, login or spawn failure, registry
    /// credential failure.
    Failed,
}

impl ContainerRun {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NonzeroExit => "nonzero_exit",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViolationLabel {
    violation_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool_name: String,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolStatusLabels {
    tool_name: String,
    path: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    path_template: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpStatusLabels {
    method: &'static str,
    path_template: &'static str,
    status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabel {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcomeLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolutionPathLabel {
    resolution_path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    resolution_path: &'static str,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(duration_histogram)
}

struct Inner {
    registry: Registry,
    attestations: Family<OutcomeLabel, Counter>,
    signature_failures: Counter,
    sessions_active: Gauge,
    policy_violations: Family<ViolationLabel, Counter>,
    tool_invocations: Family<ToolStatusLabels, Counter>,
    tool_duration: HistogramFamily<ToolLabels>,
    http_requests: Family<HttpStatusLabels, Counter>,
    http_duration: HistogramFamily<HttpLabels>,
    snapshot_info: Family<SnapshotLabel, Gauge>,
    snapshot_objects: Family<KindLabel, Gauge>,
    reloads: Family<OutcomeLabel, Counter>,
    tls_reloads: Family<OutcomeLabel, Counter>,
    replay_jtis: Gauge,
    audit_queue: Gauge,
    audit_commits: Family<OutcomeLabel, Counter>,
    audit_events: Counter,
    audit_commit_duration: Histogram,
    upstream_requests: Family<UpstreamOutcomeLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabel>,
    upstreams: Mutex<HashSet<String>>,
    credential_exchanges: Family<CredentialLabels, Counter>,
    credential_duration: HistogramFamily<ResolutionPathLabel>,
    container_runs: Family<OutcomeLabel, Counter>,
    container_duration: Histogram,
}

/// The gateway's metrics and their registry. Cheap to clone: clones share the series. Held in
/// `GatewayState` and handed to the components that record into it; there is no global registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding every series, the pre-registered ones at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let attestations = Family::<OutcomeLabel, Counter>::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "aegis_seal_attestations",
            "SEAL envelopes by verification outcome",
            attestations.clone(),
        );
        let signature_failures = Counter::default();
        registry.register(
            "aegis_seal_signature_failures",
            "Envelopes whose session key or Ed25519 signature failed to decode or verify",
            signature_failures.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "aegis_seal_sessions_active",
            "SEAL sessions with status Active (all tenants), recounted every 15 s",
            sessions_active.clone(),
        );
        let policy_violations = Family::<ViolationLabel, Counter>::default();
        registry.register(
            "aegis_tool_policy_violations",
            "Tool calls denied by a SecurityContext",
            policy_violations.clone(),
        );
        let tool_invocations = Family::<ToolStatusLabels, Counter>::default();
        registry.register(
            "aegis_tool_invocations",
            "Dispatched tool calls by tool, path and status",
            tool_invocations.clone(),
        );
        let tool_duration = histogram_family();
        registry.register(
            "aegis_tool_invocation_duration_seconds",
            "Time to run a dispatched tool call",
            tool_duration.clone(),
        );
        let http_requests = Family::<HttpStatusLabels, Counter>::default();
        registry.register(
            "aegis_seal_http_requests",
            "HTTP requests by method, route template and status code",
            http_requests.clone(),
        );
        let http_duration = histogram_family();
        registry.register(
            "aegis_seal_http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );

        let snapshot_info = Family::<SnapshotLabel, Gauge>::default();
        registry.register(
            "aegis_seal_snapshot_info",
            "The snapshot being served (1 for its hash)",
            snapshot_info.clone(),
        );
        let snapshot_objects = Family::<KindLabel, Gauge>::default();
        registry.register(
            "aegis_seal_snapshot_objects",
            "Objects of the served snapshot by kind",
            snapshot_objects.clone(),
        );
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "aegis_seal_snapshot_reloads",
            "Configuration changes served (ok) or refused, the last good snapshot serving on",
            reloads.clone(),
        );
        let tls_reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "aegis_seal_outbound_tls_reloads",
            "Changes of the outbound TLS files taken on (ok) or refused as unusable, the previous certificates serving on",
            tls_reloads.clone(),
        );
        let replay_jtis = Gauge::default();
        registry.register(
            "aegis_seal_replay_store_jtis",
            "Security-token jtis held in the in-memory replay store",
            replay_jtis.clone(),
        );
        let audit_queue = Gauge::default();
        registry.register(
            "aegis_seal_audit_queue_depth",
            "Callers waiting for the audit writer to commit their events",
            audit_queue.clone(),
        );
        let audit_commits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "aegis_seal_audit_commits",
            "Audit group commits by outcome",
            audit_commits.clone(),
        );
        let audit_events = Counter::default();
        registry.register(
            "aegis_seal_audit_events_committed",
            "Audit events made durable",
            audit_events.clone(),
        );
        let audit_commit_duration = duration_histogram();
        registry.register(
            "aegis_seal_audit_commit_duration_seconds",
            "Time of one audit group commit",
            audit_commit_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamOutcomeLabels, Counter>::default();
        registry.register(
            "aegis_seal_upstream_requests",
            "Outbound requests by upstream (host:port) and outcome (status class or error class)",
            upstream_requests.clone(),
        );
        let upstream_duration = histogram_family();
        registry.register(
            "aegis_seal_upstream_request_duration_seconds",
            "Time of an outbound request, to the last byte of the response",
            upstream_duration.clone(),
        );
        let credential_exchanges = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "aegis_seal_credential_exchanges",
            "Credential resolutions by resolution path and outcome (ok, failed, refused, unavailable)",
            credential_exchanges.clone(),
        );
        let credential_duration = histogram_family();
        registry.register(
            "aegis_seal_credential_exchange_duration_seconds",
            "Time of one credential resolution",
            credential_duration.clone(),
        );
        let container_runs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "aegis_seal_container_runs",
            "CLI tool container runs by outcome",
            container_runs.clone(),
        );
        let container_duration = duration_histogram();
        registry.register(
            "aegis_seal_container_run_duration_seconds",
            "Time of one CLI tool run, judge and registry login included",
            container_duration.clone(),
        );

        for outcome in ATTESTATION_OUTCOMES {
            let _ = attestations.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["ok", "refused"] {
            let _ = reloads.get_or_create(&OutcomeLabel { outcome });
            let _ = tls_reloads.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["ok", "error"] {
            let _ = audit_commits.get_or_create(&OutcomeLabel { outcome });
        }
        Self(Arc::new(Inner {
            registry,
            attestations,
            signature_failures,
            sessions_active,
            policy_violations,
            tool_invocations,
            tool_duration,
            http_requests,
            http_duration,
            snapshot_info,
            snapshot_objects,
            reloads,
            tls_reloads,
            replay_jtis,
            audit_queue,
            audit_commits,
            audit_events,
            audit_commit_duration,
            upstream_requests,
            upstream_duration,
            upstreams: Mutex::new(HashSet::new()),
            credential_exchanges,
            credential_duration,
            container_runs,
            container_duration,
        }))
    }

    /// The exposition: OpenMetrics when `openmetrics`, else the Prometheus text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = if openmetrics {
            openmetrics_text::encode(&mut out, &self.0.registry)
        } else {
            prometheus_text::encode(&mut out, &self.0.registry)
        };
        out
    }

    pub fn attestation(&self, outcome: Attestation) {
        self.0
            .attestations
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn signature_failure(&self) {
        self.0.signature_failures.inc();
    }

    /// A SecurityContext denial; `violation_type` is one of the policy's fixed labels.
    pub fn policy_violation(&self, violation_type: &'static str) {
        self.0
            .policy_violations
            .get_or_create(&ViolationLabel { violation_type })
            .inc();
    }

    /// One dispatched call. `tool_name` must be a resolved tool's name, or `None` for a call whose
    /// tool does not exist (labelled [`UNKNOWN_TOOL`]).
    pub fn tool_invocation(
        &self,
        tool_name: Option<&str>,
        path: ToolPath,
        ok: bool,
        elapsed: Duration,
    ) {
        let tool_name = tool_name.unwrap_or(UNKNOWN_TOOL).to_owned();
        let path = path.as_str();
        self.0
            .tool_duration
            .get_or_create(&ToolLabels {
                tool_name: tool_name.clone(),
                path,
            })
            .observe(elapsed.as_secs_f64());
        self.0
            .tool_invocations
            .get_or_create(&ToolStatusLabels {
                tool_name,
                path,
                status: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// One HTTP request; `path_template` is the matched route's template or [`UNKNOWN_PATH`].
    pub fn http_request(
        &self,
        method: &http::Method,
        path_template: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.0
            .http_duration
            .get_or_create(&HttpLabels {
                method,
                path_template,
            })
            .observe(elapsed.as_secs_f64());
        self.0
            .http_requests
            .get_or_create(&HttpStatusLabels {
                method,
                path_template,
                status_code: status,
            })
            .inc();
    }

    /// Samples the served snapshot: its hash (one series, the old one dropped) and object counts.
    pub fn snapshot(&self, hash: &str, workflows: usize, cli_tools: usize, contexts: usize) {
        let info = &self.0.snapshot_info;
        let current = SnapshotLabel {
            hash: hash.to_owned(),
        };
        if info.get(&current).is_none() {
            info.clear();
            info.get_or_create(&current).set(1);
        }
        for (kind, n) in [
            ("workflow", workflows),
            ("cli_tool", cli_tools),
            ("security_context", contexts),
        ] {
            self.0
                .snapshot_objects
                .get_or_create(&KindLabel { kind })
                .set(gauge_value(n));
        }
    }

    /// A configuration change served (`true`) or refused.
    pub fn reload(&self, served: bool) {
        let outcome = if served { "ok" } else { "refused" };
        self.0
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A change of the outbound TLS files, taken on or refused.
    pub fn outbound_tls_reload(&self, taken_on: bool) {
        let outcome = if taken_on { "ok" } else { "refused" };
        self.0
            .tls_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn replay_store_size(&self, jtis: usize) {
        self.0.replay_jtis.set(gauge_value(jtis));
    }

    pub fn audit_queue_depth(&self, waiting: usize) {
        self.0.audit_queue.set(gauge_value(waiting));
    }

    /// One audit group commit of `events` events.
    pub fn audit_commit(&self, ok: bool, events: usize, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.0
            .audit_commits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if ok {
            self.0.audit_events.inc_by(events as u64);
        }
        self.0.audit_commit_duration.observe(elapsed.as_secs_f64());
    }

    /// One outbound request to `upstream` (`host:port`); `outcome` is the status class (`2xx`, ...)
    /// or the client's error class (`timeout`, `transport`, ...).
    pub fn upstream_request(&self, upstream: &str, outcome: &'static str, elapsed: Duration) {
        let upstream = self.bounded_upstream(upstream);
        self.0
            .upstream_duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.0
            .upstream_requests
            .get_or_create(&UpstreamOutcomeLabels { upstream, outcome })
            .inc();
    }

    fn bounded_upstream(&self, upstream: &str) -> String {
        let mut seen = self.0.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(upstream) {
            return upstream.to_owned();
        }
        if seen.len() < MAX_UPSTREAMS {
            seen.insert(upstream.to_owned());
            return upstream.to_owned();
        }
        OTHER_UPSTREAM.to_owned()
    }

    /// One credential resolution by its (fixed) resolution path label; `status` is `None` on
    /// success, else the HTTP status of the refusal.
    pub fn credential_exchange(
        &self,
        resolution_path: &'static str,
        status: Option<http::StatusCode>,
        elapsed: Duration,
    ) {
        let outcome = match status {
            None => "ok",
            Some(s) if s == http::StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            Some(s) if s.is_server_error() => "failed",
            Some(_) => "refused",
        };
        self.0
            .credential_exchanges
            .get_or_create(&CredentialLabels {
                resolution_path,
                outcome,
            })
            .inc();
        self.0
            .credential_duration
            .get_or_create(&ResolutionPathLabel { resolution_path })
            .observe(elapsed.as_secs_f64());
    }

    pub fn container_run(&self, outcome: ContainerRun, elapsed: Duration) {
        self.0
            .container_runs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.0.container_duration.observe(elapsed.as_secs_f64());
    }

    /// Recounts `aegis_seal_sessions_active` every [`SESSION_GAUGE_INTERVAL`], starting now. A
    /// failed count keeps the last value and logs `active session gauge refresh failed: {e}`.
    pub async fn refresh_sessions_active(self, db: Database) {
        let mut tick = tokio::time::interval(SESSION_GAUGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match count_active_sessions(&db).await {
                Ok(n) => {
                    self.0.sessions_active.set(n);
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, "active session gauge refresh failed: {e}")
                }
            }
        }
    }
}

/// Rows with status Active, all tenants, whatever their `expires_at` (as upstream counts them, so
/// dashboards read the same number).
async fn count_active_sessions(db: &Database) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM seal_sessions WHERE session_status = 'Active'";
    match db {
        Database::Sqlite(pool) => sqlx::query(SQL).fetch_one(pool).await?.try_get(0),
        Database::Postgres(pool) => sqlx::query(SQL).fetch_one(pool).await?.try_get(0),
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `method` label: the standard methods by name, anything else `other`, because a client may
/// send any token as a method and each would otherwise become a series.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Where `/metrics` listens: `METRICS_BIND` (an IP address, default `127.0.0.1`: the endpoint is
/// unauthenticated) and `METRICS_PORT` (default 9092). Blank values mean the default; an
/// unparseable one is a startup error `Invalid METRICS_PORT=<v>: ...` (reference §11.4).
pub fn listen_addr(env: &dyn Fn(&str) -> Option<String>) -> Result<std::net::SocketAddr, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let ip = match set("METRICS_BIND") {
        None => std::net::IpAddr::from([127, 0, 0, 1]),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("Invalid METRICS_BIND={v}: {e}"))?,
    };
    let port = match set("METRICS_PORT") {
        None => 9092,
        Some(v) => v
            .trim()
            .parse::<u16>()
            .map_err(|e| format!("Invalid METRICS_PORT={v}: {e}"))?,
    };
    Ok(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_defaults_and_refuses_garbage() {
        let none = |_: &str| None;
        assert_eq!(listen_addr(&none).unwrap().to_string(), "127.0.0.1:9092");
        let all = |k: &str| match k {
            "METRICS_BIND" => Some("0.0.0.0".to_owned()),
            "METRICS_PORT" => Some("9100".to_owned()),
            _ => None,
        };
        assert_eq!(listen_addr(&all).unwrap().to_string(), "0.0.0.0:9100");
        let blank = |_: &str| Some("  ".to_owned());
        assert_eq!(listen_addr(&blank).unwrap().to_string(), "127.0.0.1:9092");
        let bad_port = |k: &str| (k == "METRICS_PORT").then(|| "http".to_owned());
        assert!(
            listen_addr(&bad_port)
                .unwrap_err()
                .starts_with("Invalid METRICS_PORT=http: ")
        );
        let bad_bind = |k: &str| (k == "METRICS_BIND").then(|| "example.com".to_owned());
        assert!(
            listen_addr(&bad_bind)
                .unwrap_err()
                .starts_with("Invalid METRICS_BIND=example.com: ")
        );
    }

    #[test]
    fn upstream_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_UPSTREAMS + 10 {
            m.upstream_request(&format!("h{i}:80"), "2xx", Duration::from_millis(1));
        }
        let text = m.encode(false);
        let counted = |upstream: &str| {
            text.contains(&format!(
                "aegis_seal_upstream_request_duration_seconds_count{{upstream=\"{upstream}\"}}"
            ))
        };
        assert!(counted("h0:80"));
        assert!(counted(&format!("h{}:80", MAX_UPSTREAMS - 1)));
        assert!(!counted(&format!("h{MAX_UPSTREAMS}:80")));
        assert!(
            text.contains(
                "aegis_seal_upstream_request_duration_seconds_count{upstream=\"other\"} 10"
            )
        );
    }

    #[test]
    fn unusual_methods_share_one_label() {
        let m = http::Method::from_bytes(b"FOO1").unwrap();
        assert_eq!(method_label(&m), "other");
        assert_eq!(method_label(&http::Method::POST), "POST");
    }
}
