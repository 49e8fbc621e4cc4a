//! The one outbound HTTP client of the data plane: pooled connections, bounded time, bounded
//! response bodies, and no requests to link-local or cloud metadata addresses unless allowed,
//! nor, when so configured, to non-public addresses on a tenant's behalf.
//!
//! Logs (target `aegis_seal_gateway::infrastructure::http_client`) name the method, the URL without
//! its query or user info, the status and the duration, at `trace`. Header values are never logged:
//! they carry credentials.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Url, redirect};

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::gateway::OutboundSettings;

use crate::infrastructure::metrics::Metrics;
use crate::infrastructure::telemetry;
use tracing::Instrument;

mod tls;
mod trace_context;

pub use tls::{OutboundTls, RenewingClient, TlsFileNames};
pub use trace_context::{TraceContext, with_trace_context};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// AWS's IPv6 instance metadata address, `fd00:ec2::254`.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
/// The IPv4 instance metadata address of AWS, GCP, Azure and others.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Alibaba Cloud's instance metadata address: in shared address space (100.64.0.0/10), not
/// link-local, so named on its own.
const ALIBABA_METADATA_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
/// Host names of metadata services, refused before any DNS lookup.
const METADATA_HOSTS: [&str; 1] = ["metadata.google.internal"];

/// Settings of the [`HttpClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientConfig {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest a request may take, from connecting to the last byte of the response body, when the
    /// request sets no timeout of its own.
    pub request_timeout: Duration,
    /// Largest response body accepted when the request sets no limit of its own.
    pub max_response_bytes: u64,
    /// Allow link-local (169.254.0.0/16, fe80::/10) and cloud metadata destinations.
    pub allow_link_local: bool,
    /// Follow redirects to another scheme, host or port. Off by default: credentials travel in
    /// headers the client cannot tell apart from others, and must not reach another origin.
    pub allow_cross_origin_redirects: bool,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// CA certificates and client certificate beyond the system trust store.
    pub tls: OutboundTls,
    /// The egress proxy; `None`: every connection is direct.
    pub proxy: Option<OutboundProxy>,
    /// Requests made for a tenant ([`OutboundRequest::for_tenant`]) reach public addresses only
    /// (`outbound.tenant_upstreams_public_only`).
    pub tenant_upstreams_public_only: bool,
}

impl HttpClientConfig {
    /// The defaults, with the `outbound` settings' TLS files and proxy.
    pub fn from_settings(outbound: &OutboundSettings) -> Self {
        let proxy = match &outbound.proxy_url {
            // The config check refuses a `secret_key_ref` here; `env:` was resolved.
            Some(SecretValue::Literal(url)) => Some(OutboundProxy {
                url: url.trim().to_owned(),
                no_proxy: outbound.no_proxy.clone(),
            }),
            _ => None,
        };
        Self {
            tls: OutboundTls::from_settings(outbound),
            proxy,
            tenant_upstreams_public_only: outbound.tenant_upstreams_public_only,
            ..Self::default()
        }
    }
}

/// An egress proxy and the destinations that bypass it.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundProxy {
    /// `http(s)://[user:password@]host:port`.
    pub url: String,
    /// `NO_PROXY`-style entries: host names (with their subdomains), addresses, CIDR blocks.
    pub no_proxy: Vec<String>,
}

/// Without the URL's user info: the proxy's password must not reach a log.
impl fmt::Debug for OutboundProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = Url::parse(&self.url)
            .map(|u| redacted_url(&u))
            .unwrap_or_else(|_| "<unparseable>".into());
        f.debug_struct("OutboundProxy")
            .field("url", &shown)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl HttpClientConfig {
    /// The rules of the requests made for a tenant (`for_tenant`), or of the others.
    fn destination_rules(&self, for_tenant: bool) -> DestinationRules {
        DestinationRules {
            allow_link_local: self.allow_link_local,
            public_only: for_tenant && self.tenant_upstreams_public_only,
        }
    }
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 8 * 1024 * 1024,
            allow_link_local: false,
            allow_cross_origin_redirects: false,
            pool_idle_timeout: Duration::from_secs(90),
            tls: OutboundTls::default(),
            proxy: None,
            tenant_upstreams_public_only: false,
        }
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: Url,
    /// Sent as given; never logged.
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Overrides [`HttpClientConfig::request_timeout`].
    pub timeout: Option<Duration>,
    /// Overrides [`HttpClientConfig::max_response_bytes`].
    pub max_response_bytes: Option<u64>,
    /// Made for a tenant, to a destination a tenant chose: a tenant's workflow step, or a
    /// document or explorer call a tenant operator asked for. Held to
    /// [`HttpClientConfig::tenant_upstreams_public_only`].
    pub for_tenant: bool,
}

impl OutboundRequest {
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            timeout: None,
            max_response_bytes: None,
            for_tenant: false,
        }
    }
}

/// What a client refuses to connect to: checked on literal addresses (before connecting and at
/// each redirect) and on every address a name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DestinationRules {
    /// Link-local and cloud metadata destinations are allowed
    /// ([`HttpClientConfig::allow_link_local`]).
    allow_link_local: bool,
    /// Public addresses only: a tenant's destinations under `tenant_upstreams_public_only`.
    public_only: bool,
}

/// A response whose body was read completely (within the size bound).
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to the last byte of the body.
    pub elapsed: Duration,
}

/// A destination the client refuses to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedDestination {
    /// The host as it appears in the URL.
    pub host: String,
    /// The offending address, when the host resolved to (or is) one.
    pub address: Option<IpAddr>,
    pub reason: &'static str,
    /// Which rule refused it.
    pub rule: &'static str,
}

/// The rule refusing link-local and metadata destinations.
const LINK_LOCAL_RULE: &str =
    "link-local and cloud metadata destinations are refused unless allow_link_local is set";
/// The rule refusing a tenant's non-public destinations.
const TENANT_PUBLIC_RULE: &str =
    "a tenant's upstream must be a public address: outbound.tenant_upstreams_public_only is set";

impl fmt::Display for BlockedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(a) if a.to_string() != self.host => {
                write!(f, "{} resolves to {a}, {}", self.host, self.reason)?;
            }
            _ => write!(f, "{} is {}", self.host, self.reason)?,
        }
        write!(f, " ({})", self.rule)
    }
}

impl StdError for BlockedDestination {}

/// A redirect the client refused to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for RedirectRefused {}

/// Why a request failed, by class. The text never contains header values or the URL's query.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The client could not be built (TLS setup).
    #[error("HTTP client setup failed: {0}")]
    Setup(String),
    /// The request itself is unusable (e.g. a URL that is not http(s)).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The destination is link-local or a cloud metadata service, or a non-public address a
    /// tenant chose; nothing was sent.
    #[error("blocked destination: {0}")]
    BlockedDestination(BlockedDestination),
    /// DNS failure, connection refused or reset, TLS failure, protocol error, refused redirect.
    #[error("transport error: {method} {url}: {detail}")]
    Transport {
        method: Method,
        url: String,
        detail: String,
        /// No connection was made (DNS, connect, TLS handshake): the request was surely not
        /// sent. Otherwise it may have been, and acted on.
        unsent: bool,
    },
    /// No complete response within the request's timeout.
    #[error("timeout: {method} {url}: no complete response within {} ms", .timeout.as_millis())]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    /// The response body exceeded the size bound; reading stopped there.
    #[error(
        "response too large: {method} {url} returned {status} with a body over the limit of {limit} bytes"
    )]
    TooLarge {
        method: Method,
        url: String,
        /// The status of the response whose body was refused.
        status: StatusCode,
        limit: u64,
    },
}

impl HttpClientError {
    /// A short, stable name of the error class, for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Setup(_) => "setup",
            Self::InvalidRequest(_) => "invalid_request",
            Self::BlockedDestination(_) => "blocked_destination",
            Self::Transport { .. } => "transport",
            Self::Timeout { .. } => "timeout",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// How often [`HttpClient::follow_tls_files`] looks at the TLS files.
pub const TLS_FILES_POLL: Duration = Duration::from_secs(10);

/// The shared outbound client. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    /// Rebuilt when the TLS files change.
    client: RenewingClient,
    /// For requests made for a tenant, when they may reach public addresses only: its own pool,
    /// since its resolver refuses what the other's allows.
    tenant_client: Option<RenewingClient>,
    config: HttpClientConfig,
    /// Where each request's latency and outcome are recorded, per upstream (`host:port`).
    metrics: Option<Metrics>,
}

impl HttpClient {
    /// Builds the client. Fails on TLS files that cannot be read or parsed.
    pub fn new(config: HttpClientConfig) -> Result<Self, HttpClientError> {
        let build = |for_tenant| {
            RenewingClient::new(&config.tls, || {
                build_client(&config, config.destination_rules(for_tenant))
            })
        };
        let client = build(false)?;
        let tenant_client = config
            .tenant_upstreams_public_only
            .then(|| build(true))
            .transpose()?;
        Ok(Self {
            client,
            tenant_client,
            config,
            metrics: None,
        })
    }

    /// The underlying client now in effect, for a caller that reads a response its own way (the
    /// operator JWKS). It has this client's TLS, redirect and destination rules.
    pub fn reqwest(&self) -> reqwest::Client {
        reqwest::Client::clone(&self.client.load())
    }

    /// Rebuilds the client when a TLS file changed since it was last read, so that a renewed
    /// certificate is used for new connections without a restart. Returns what happened, if
    /// anything did: `Err` when the new files are unusable (the current client keeps serving).
    pub fn reload_tls_if_changed(&self) -> Option<Result<(), String>> {
        let renew = |client: &RenewingClient, for_tenant| {
            client.renew_if_changed(&self.config.tls, || {
                build_client(&self.config, self.config.destination_rules(for_tenant))
            })
        };
        let tenant = self.tenant_client.as_ref().and_then(|c| renew(c, true));
        let main = renew(&self.client, false);
        // Both read the same files: one outcome, the failure if either failed.
        match (main, tenant) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
            (main, tenant) => main.or(tenant),
        }
    }

    /// Polls the TLS files every [`TLS_FILES_POLL`] and takes changed ones on; runs until dropped.
    /// Nothing to do without TLS files.
    pub async fn follow_tls_files(self) {
        if self.config.tls.is_empty() {
            return;
        }
        let mut ticks = tokio::time::interval(TLS_FILES_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(result) = self.reload_tls_if_changed() else {
                continue;
            };
            if let Some(metrics) = &self.metrics {
                metrics.outbound_tls_reload(result.is_ok());
            }
            match result {
                Ok(()) => tracing::info!(
                    "outbound TLS files changed; new connections use the new certificates"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "outbound TLS files changed but are unusable; the previous certificates stay in use"
                ),
            }
        }
    }

    /// Records every request of this client (and its clones) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn config(&self) -> &HttpClientConfig {
        &self.config
    }

    /// Sends the request and reads the whole response body, within the request's time and size bounds.
    pub async fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, HttpClientError> {
        let started = Instant::now();
        let method = req.method.clone();
        let shown = redacted_url(&req.url);
        let upstream = upstream_label(&req.url);
        // The CLIENT span of this request; its context is the `traceparent` sent (trace_context.rs).
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "http.client",
            otel.name = method.as_str(),
            otel.kind = "client",
            http.request.method = method.as_str(),
            server.address = req.url.host_str().unwrap_or_default(),
            server.port = req.url.port_or_known_default().unwrap_or_default(),
            url.full = shown.as_str(),
        );
        let result = self.send_inner(req, &shown).instrument(span.clone()).await;
        match &result {
            Ok(resp) => {
                telemetry::attribute(
                    &span,
                    "http.response.status_code",
                    i64::from(resp.status.as_u16()),
                );
                if !resp.status.is_success() {
                    telemetry::fail(&span, resp.status.to_string());
                }
            }
            Err(e) => {
                telemetry::attribute(&span, "error.type", e.class());
                telemetry::fail(&span, e.class());
            }
        }
        drop(span);
        if let Some(metrics) = &self.metrics {
            let outcome = match &result {
                Ok(resp) => status_class(resp.status),
                Err(e) => e.class(),
            };
            metrics.upstream_request(&upstream, outcome, started.elapsed());
        }
        let duration_ms = duration_ms(started.elapsed());
        match &result {
            Ok(resp) => tracing::trace!(
                method = %method,
                url = %shown,
                status = resp.status.as_u16(),
                duration_ms,
                body_bytes = resp.body.len(),
                "upstream request completed"
            ),
            Err(e) => tracing::trace!(
                method = %method,
                url = %shown,
                error_class = e.class(),
                error = %e,
                duration_ms,
                "upstream request failed"
            ),
        }
        result
    }

    async fn send_inner(
        &self,
        req: OutboundRequest,
        shown: &str,
    ) -> Result<OutboundResponse, HttpClientError> {
        if !matches!(req.url.scheme(), "http" | "https") {
            return Err(HttpClientError::InvalidRequest(format!(
                "{shown}: only http and https URLs are supported"
            )));
        }
        // Checked before connecting. Literal addresses and metadata host names are refused here;
        // names are resolved and every address checked by `GuardedResolver`, which is the resolver the
        // connection itself uses, so there is no gap between the check and the connect (no DNS
        // rebinding window). Redirect targets are checked by the redirect policy and the resolver too.
        // Through `outbound.proxy_url` the proxy resolves the names the gateway does not (only
        // literal addresses and metadata names are refused here): the proxy must refuse the
        // link-local and metadata destinations itself, as the README says.
        let (client, for_tenant) = match &self.tenant_client {
            Some(tenant) if req.for_tenant => (tenant, true),
            _ => (&self.client, false),
        };
        self.config
            .destination_rules(for_tenant)
            .check_url_host(&req.url)
            .map_err(HttpClientError::BlockedDestination)?;
        let method = req.method.clone();
        let timeout = req.timeout.unwrap_or(self.config.request_timeout);
        let limit = req
            .max_response_bytes
            .unwrap_or(self.config.max_response_bytes);
        let started = Instant::now();
        let classify = |e: reqwest::Error| classify(e, &method, shown, timeout);

        let mut headers = req.headers;
        trace_context::forward(&mut headers);
        let exchange = async {
            let mut builder = client
                .load()
                .request(req.method.clone(), req.url)
                .headers(headers)
                .timeout(timeout);
            if let Some(body) = req.body {
                builder = builder.body(body);
            }
            let mut response = builder.send().await.map_err(classify)?;
            let status = response.status();
            // Moved out rather than copied: the size bound and the body below do not read them.
            let headers = std::mem::take(response.headers_mut());
            let too_large = || HttpClientError::TooLarge {
                method: method.clone(),
                url: shown.to_owned(),
                status,
                limit,
            };
            if response.content_length().is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            // Chunks are appended only while the total stays within the bound; past it the
            // response is dropped, which closes the connection instead of draining it.
            let capacity = response
                .content_length()
                .unwrap_or(0)
                .min(limit)
                .min(64 * 1024);
            let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                let total = body.len() as u64 + chunk.len() as u64;
                if total > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(OutboundResponse {
                status,
                headers,
                body: Bytes::from(body),
                elapsed: started.elapsed(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout {
                method,
                url: shown.to_owned(),
                timeout,
            }),
        }
    }
}

/// A client with `config`'s bounds, redirect and destination rules, and TLS files read now.
fn build_client(
    config: &HttpClientConfig,
    rules: DestinationRules,
) -> Result<reqwest::Client, HttpClientError> {
    let allow_cross_origin = config.allow_cross_origin_redirects;
    let policy = redirect::Policy::custom(move |attempt| {
        // `previous` starts with the original URL, which is not a redirect.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RedirectRefused(format!(
                "too many redirects (more than {MAX_REDIRECTS})"
            )));
        }
        let next = attempt.url();
        // Literal addresses never reach the resolver, so they are checked here.
        if let Err(blocked) = rules.check_url_host(next) {
            return attempt.error(blocked);
        }
        if !allow_cross_origin
            && let Some(first) = attempt.previous().first()
            && first.origin() != next.origin()
        {
            let origin = next.origin().ascii_serialization();
            return attempt.error(RedirectRefused(format!(
                "redirect to another origin ({origin}) refused"
            )));
        }
        attempt.follow()
    });
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .pool_idle_timeout(config.pool_idle_timeout)
        .redirect(policy)
        .user_agent(concat!("aegis-seal-gateway/", env!("CARGO_PKG_VERSION")))
        .tls_backend_rustls()
        .no_proxy();
    if !rules.allow_link_local || rules.public_only {
        builder = builder.dns_resolver(GuardedResolver(rules));
    }
    if let Some(proxy) = &config.proxy {
        let bypass = reqwest::NoProxy::from_string(&proxy.no_proxy.join(","));
        let proxy = reqwest::Proxy::all(proxy.url.as_str())
            .map_err(|e| {
                HttpClientError::Setup(format!("outbound.proxy_url: {}", error_chain(&e)))
            })?
            .no_proxy(bypass);
        builder = builder.proxy(proxy);
    }
    config
        .tls
        .configure(builder, tls::OUTBOUND_SETTINGS)
        .map_err(HttpClientError::Setup)?
        .build()
        .map_err(|e| HttpClientError::Setup(error_chain(&e)))
}

/// The `upstream` metric label: `host:port`, never the path or query (they may carry identifiers).
fn upstream_label(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => "none".to_owned(),
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl DestinationRules {
    /// Why a URL's host is refused, if it is: a literal address refused by
    /// [`Self::check_address`], or a metadata host name. Other names are checked when resolved.
    fn check_url_host(self, url: &Url) -> Result<(), BlockedDestination> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_address(bare, ip);
        }
        self.check_host_name(host)
    }

    /// A metadata service's host name, refused before any lookup.
    fn check_host_name(self, host: &str) -> Result<(), BlockedDestination> {
        let name = host.trim_end_matches('.');
        if !self.allow_link_local && METADATA_HOSTS.iter().any(|m| name.eq_ignore_ascii_case(m)) {
            return Err(BlockedDestination {
                host: host.to_owned(),
                address: None,
                reason: "a cloud metadata service",
                rule: LINK_LOCAL_RULE,
            });
        }
        Ok(())
    }

    /// Whether `host` may be reached at `ip`: never a link-local or metadata address (unless
    /// `allow_link_local`), and only a public one when `public_only`.
    fn check_address(self, host: &str, ip: IpAddr) -> Result<(), BlockedDestination> {
        let blocked = |reason, rule| BlockedDestination {
            host: host.to_owned(),
            address: Some(ip),
            reason,
            rule,
        };
        if !self.allow_link_local
            && let Some(reason) = blocked_address(ip)
        {
            return Err(blocked(reason, LINK_LOCAL_RULE));
        }
        if self.public_only
            && let Some(reason) = non_public_address(ip)
        {
            return Err(blocked(reason, TENANT_PUBLIC_RULE));
        }
        Ok(())
    }
}

/// Why an address is not a public one, if it is not: what a tenant's destination must not be
/// under `tenant_upstreams_public_only`, since from the gateway it reaches the platform's own
/// network (services without authentication, the gateway's neighbours, the host itself).
pub fn non_public_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return non_public_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a unique local address")
            } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
                Some("a link-local or site-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some("a loopback address")
    } else if v4.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else if a == 0 {
        Some("an address of this network")
    } else if v4.is_broadcast() || v4.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

/// The IPv4 address an IPv6 one reaches, if any: the IPv4-mapped (`::ffff:a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) forms.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// Why an address is refused, if it is.
pub fn blocked_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return blocked_v4(v4);
            }
            let s = v6.segments();
            if v6 == AWS_METADATA_V6 {
                Some("a cloud metadata address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

fn blocked_v4(v4: Ipv4Addr) -> Option<&'static str> {
    if v4 == METADATA_V4 || v4 == ALIBABA_METADATA_V4 {
        Some("a cloud metadata address")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else {
        None
    }
}

/// Resolves with `tokio::net::lookup_host` and refuses the name when ANY of its addresses is blocked:
/// the connection is made only to addresses this resolver returned, so what was checked is what is
/// dialled. (A pre-flight lookup in `send` followed by reqwest's own lookup would leave a
/// time-of-check/time-of-use window in which a short-TTL record could change.)
#[derive(Debug, Clone, Copy)]
struct GuardedResolver(DestinationRules);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let rules = self.0;
        Box::pin(async move {
            rules.check_host_name(&host)?;
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                rules
                    .check_address(&host, addr.ip())
                    .map_err(|blocked| Box::new(blocked) as Box<dyn StdError + Send + Sync>)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn classify(err: reqwest::Error, method: &Method, url: &str, timeout: Duration) -> HttpClientError {
    if let Some(blocked) = find_source::<BlockedDestination>(&err) {
        return HttpClientError::BlockedDestination(blocked.clone());
    }
    if let Some(refused) = find_source::<RedirectRefused>(&err) {
        return HttpClientError::Transport {
            method: method.clone(),
            url: url.to_owned(),
            detail: refused.to_string(),
            // The request that was answered with the redirect was sent.
            unsent: false,
        };
    }
    if err.is_timeout() {
        return HttpClientError::Timeout {
            method: method.clone(),
            url: url.to_owned(),
            timeout,
        };
    }
    let unsent = err.is_connect();
    // reqwest's own text would repeat the URL, query included.
    let err = err.without_url();
    HttpClientError::Transport {
        method: method.clone(),
        url: url.to_owned(),
        detail: error_chain(&err),
        unsent,
    }
}

fn find_source<'e, T: StdError + 'static>(err: &'e (dyn StdError + 'static)) -> Option<&'e T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The error and its causes on one line, each message once.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// The URL as logs and error messages show it: no user info, no fragment, and the query replaced by
/// `?…` (query strings carry API keys).
pub fn redacted_url(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        shown.push_str(host);
    }
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_link_local_and_metadata_addresses() {
        for blocked in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(blocked_address(ip(blocked)).is_some(), "{blocked}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.1",
            "169.253.255.255",
            "169.255.0.0",
            "::1",
            "fec0::1",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert!(blocked_address(ip(allowed)).is_none(), "{allowed}");
        }
        assert_eq!(
            blocked_address(ip("169.254.169.254")),
            Some("a cloud metadata address")
        );
    }

    fn rules(allow_link_local: bool, public_only: bool) -> DestinationRules {
        DestinationRules {
            allow_link_local,
            public_only,
        }
    }

    #[test]
    fn checks_url_hosts_before_resolving() {
        let check = |u: &str| rules(false, false).check_url_host(&Url::parse(u).unwrap());
        assert!(check("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check("http://[fe80::1]:8080/").is_err());
        assert!(check("http://METADATA.google.internal./computeMetadata").is_err());
        // The WHATWG parser normalizes other spellings of the address first.
        assert!(check("http://2852039166/").is_err());
        assert!(check("http://0xa9.0xfe.0xa9.0xfe/").is_err());
        assert!(check("http://127.0.0.1:8080/").is_ok());
        assert!(check("https://api.example.com/").is_ok());
        let err = check("http://169.254.169.254/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is a cloud metadata address (link-local and cloud metadata \
             destinations are refused unless allow_link_local is set)"
        );
        let allowed = |u: &str| rules(true, false).check_url_host(&Url::parse(u).unwrap());
        assert!(allowed("http://169.254.169.254/").is_ok());
        assert!(allowed("http://metadata.google.internal/").is_ok());
    }

    #[test]
    fn a_tenants_destinations_are_public_addresses_only() {
        let check = |u: &str| rules(false, true).check_url_host(&Url::parse(u).unwrap());
        for url in [
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            // Other spellings of 127.0.0.1, normalized by the URL parser.
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            assert!(check(url).is_err(), "{url}");
        }
        for url in [
            "https://api.github.com/",
            "http://8.8.8.8/",
            "http://[2606:4700::1111]/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
        ] {
            assert!(check(url).is_ok(), "{url}");
        }
        assert_eq!(
            check("http://10.0.0.5:8200/").unwrap_err().to_string(),
            "10.0.0.5 is a private address (a tenant's upstream must be a public address: \
             outbound.tenant_upstreams_public_only is set)"
        );
        // Link-local stays refused by its own rule, and allow_link_local does not open it here.
        let allowed = |u: &str| rules(true, true).check_url_host(&Url::parse(u).unwrap());
        assert!(allowed("http://169.254.169.254/").is_err());
    }

    #[test]
    fn redacts_query_and_user_info() {
        let url = Url::parse("https://user:pw@api.example.com:8443/v1/x?api_key=secret#f").unwrap();
        assert_eq!(redacted_url(&url), "https://api.example.com:8443/v1/x?…");
        let url = Url::parse("http://[::1]/a%20b").unwrap();
        assert_eq!(redacted_url(&url), "http://[::1]/a%20b");
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_blocked_addresses() {
        let default = GuardedResolver(rules(false, false));
        let name: Name = "metadata.google.internal".parse().unwrap();
        let err = default.resolve(name).await.err().unwrap();
        assert!(err.downcast_ref::<BlockedDestination>().is_some());
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = default.resolve(name).await.unwrap().collect();
        assert!(!addrs.is_empty());

        // A name is checked by what it resolves to: `localhost` is no tenant's upstream.
        let public = GuardedResolver(rules(false, true));
        let name: Name = "localhost".parse().unwrap();
        let err = public.resolve(name).await.err().unwrap();
        let blocked = err.downcast_ref::<BlockedDestination>().unwrap();
        assert_eq!(blocked.reason, "a loopback address");
        assert_eq!(blocked.rule, TENANT_PUBLIC_RULE);
    }
}
