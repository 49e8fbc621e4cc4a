//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when an endpoint is configured.
//!
//! The spans are ordinary `tracing` spans with the target [`TARGET`]. Two layers may see them:
//!
//! - the fmt layer (the log lines, filtered by `RUST_LOG`) never does, unless `RUST_LOG` names
//!   [`TARGET`] itself: fmt prints the enclosing spans before every message, and the runbook's log
//!   lines are asserted verbatim;
//! - the OpenTelemetry layer, present only when an endpoint is configured, sees nothing else.
//!
//! With no endpoint the subscriber is built exactly as before plus one `RUST_LOG` directive that
//! turns [`TARGET`] off, so every span callsite is `Interest::never`: creating one costs a cached
//! atomic load and yields `Span::none()`, and there is no exporter, batch thread or HTTP client.
//!
//! The configuration is the standard OpenTelemetry environment (docs/observability.md, "Traces").

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::instrument::WithSubscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::infrastructure::http_client::{OutboundTls, RenewingClient, TlsFileNames};

/// The trace exporter's TLS files, by their variables' names.
const OTLP_FILES: TlsFileNames = TlsFileNames {
    ca: "OTEL_EXPORTER_OTLP_CERTIFICATE",
    certificate: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    key: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
};

/// The target of every span exported as a trace. Not a module path on purpose: `RUST_LOG`
/// directives such as `aegis_seal_gateway=debug` or `trace` must not bring spans into log lines.
pub const TARGET: &str = "aegis_seal_otel";
/// `service.name` when `OTEL_SERVICE_NAME` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "aegis-seal-gateway";
/// Where this module's own log lines go.
pub const LOG_TARGET: &str = "aegis_seal_gateway::infrastructure::telemetry";
/// Default OTLP export timeout (the specification's 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector response read (an `ExportTraceServiceResponse` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Set once the OpenTelemetry layer is installed; read by outbound requests to choose between
/// sending the gateway's own span context and forwarding the caller's.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the environment asks for, when tracing is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The URL spans are POSTed to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended.
    pub endpoint: String,
    pub service_name: String,
    pub timeout: Duration,
    /// `OTEL_TRACES_SAMPLER` (and its argument) as the SDK will read it, for the start line.
    pub sampler: String,
    /// A collector's CA certificates (`OTEL_EXPORTER_OTLP_CERTIFICATE`) and the client
    /// certificate it wants (`..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`), beside the system's
    /// trust store; read at start, and again before an export when they changed.
    pub tls: OutboundTls,
}

impl TraceSettings {
    /// `Ok(None)` when tracing is off: no endpoint, `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. Unusable values are errors that stop the start, as an
    /// unparseable `METRICS_PORT` does: a silently ignored setting is worse than none.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "Invalid OTEL_TRACES_EXPORTER={other}: only otlp and none are supported"
                ));
            }
        }
        let (name, endpoint) = if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v)
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let joined = format!("{}/v1/traces", base.trim_end_matches('/'));
            ("OTEL_EXPORTER_OTLP_ENDPOINT", joined)
        } else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(&endpoint).map_err(|e| format!("Invalid {name}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("Invalid {name}: an http or https URL is needed"));
        }
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = var(protocol)
                && v != "http/protobuf"
            {
                return Err(format!(
                    "Invalid {protocol}={v}: the gateway exports traces over http/protobuf only"
                ));
            }
        }
        let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_TIMEOUT").map(|v| ("OTEL_EXPORTER_OTLP_TIMEOUT", v))
            }) {
            None => DEFAULT_TIMEOUT,
            Some((name, v)) => Duration::from_millis(
                v.parse()
                    .map_err(|e| format!("Invalid {name}={v} (milliseconds): {e}"))?,
            ),
        };
        // The signal-specific variable first, then the general one, as the specification orders them.
        let file = |what: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{what}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{what}")))
                .map(PathBuf::from)
        };
        let client_identity = match (file("CLIENT_CERTIFICATE"), file("CLIENT_KEY")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => {
                return Err(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY must be set together"
                        .into(),
                );
            }
        };
        let tls = OutboundTls {
            ca_file: file("CERTIFICATE"),
            client_identity,
        };
        let sampler = match (var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG")) {
            (None, _) => "parentbased_always_on".to_owned(),
            (Some(s), None) => s,
            (Some(s), Some(arg)) => format!("{s}({arg})"),
        };
        Ok(Some(Self {
            endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            timeout,
            sampler,
            tls,
        }))
    }
}

/// The installed trace pipeline; [`Telemetry::shutdown`] flushes it.
#[must_use = "shut it down to flush the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the batch thread. Blocks until the collector
    /// answered or the export timed out: call it outside async code, with the runtime the
    /// exporter was given still alive (its requests run there).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(target: LOG_TARGET, "trace export shutdown failed: {e}");
        }
    }
}

/// The `RUST_LOG` filter of the log lines: the environment's (or `info`), with [`TARGET`] turned
/// off unless `RUST_LOG` names it.
pub fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if rust_log.is_some_and(|v| v.contains(TARGET)) {
        filter
    } else {
        filter.add_directive(
            format!("{TARGET}=off")
                .parse()
                .expect("a static directive parses"),
        )
    }
}

/// The filter of the OpenTelemetry layer: the gateway's spans and nothing else (no log events,
/// no spans of dependencies).
fn span_filter() -> Targets {
    Targets::new().with_target(TARGET, LevelFilter::INFO)
}

/// Installs the global subscriber: the log lines as before and, when the environment configures
/// an endpoint, the OpenTelemetry layer with a batch exporter whose requests run on `runtime`.
/// On a configuration error the log lines are installed all the same (to report it) and the error
/// returned.
pub fn init(
    env: &dyn Fn(&str) -> Option<String>,
    runtime: tokio::runtime::Handle,
) -> Result<Telemetry, String> {
    let rust_log = env("RUST_LOG");
    let filter = log_filter(rust_log.as_deref());
    let ansi = colour(env);
    let settings = match TraceSettings::from_env(env) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            // The subscriber the gateway always had, plus the directive that hides TARGET.
            logs_only(filter, std::io::stdout, ansi).init();
            return Ok(Telemetry { provider: None });
        }
        Err(e) => {
            logs_only(filter, std::io::stdout, ansi).init();
            return Err(e);
        }
    };
    let provider = match provider(&settings, runtime) {
        Ok(provider) => provider,
        Err(e) => {
            logs_only(filter, std::io::stdout, ansi).init();
            return Err(e);
        }
    };
    with_traces(
        filter,
        std::io::stdout,
        ansi,
        provider.tracer(DEFAULT_SERVICE_NAME),
    )
    .init();
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(
        target: LOG_TARGET,
        service_name = %settings.service_name,
        sampler = %settings.sampler,
        "exporting OpenTelemetry traces over OTLP/HTTP to {}",
        shown_endpoint(&settings.endpoint)
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The log lines alone, as the gateway always logged: fmt with `filter` as a global filter.
fn logs_only<W>(filter: EnvFilter, writer: W, ansi: bool) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .finish()
}

/// Colour codes only on a terminal whose user did not set `NO_COLOR`. Anywhere else (a pod's log,
/// journald, a pipe) a line must be the bytes the runbook quotes (`ERROR sqlx::pool: ...`), or
/// its `grep`s and log queries miss it.
fn colour(env: &dyn Fn(&str) -> Option<String>) -> bool {
    std::io::stdout().is_terminal() && env("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The log lines and the OpenTelemetry layer, each with a per-layer filter: the fmt layer keeps
/// `filter` (which hides [`TARGET`]), the OpenTelemetry layer sees only [`TARGET`], and neither
/// sees what the other selects, in its span context either.
fn with_traces<W>(
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Each attribute the spans carry is set on purpose; these would be noise.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_level(false);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_filter(filter),
        )
        .with(otel.with_filter(span_filter()))
}

fn provider(
    settings: &TraceSettings,
    runtime: tokio::runtime::Handle,
) -> Result<SdkTracerProvider, String> {
    let client = RenewingClient::new(&settings.tls, || {
        export_client(&settings.tls, settings.timeout)
    })?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient {
            client,
            tls: settings.tls.clone(),
            timeout: settings.timeout,
            runtime,
            failing: Arc::new(AtomicBool::new(false)),
        })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // The sampler is the SDK's default, read from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
    // (parent-based always-on when unset); the batch processor reads OTEL_BSP_*.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The endpoint as the start line shows it: no user info, no query.
fn shown_endpoint(endpoint: &str) -> String {
    reqwest::Url::parse(endpoint)
        .map(|u| crate::infrastructure::http_client::redacted_url(&u))
        .unwrap_or_else(|_| "<unparseable>".into())
}

/// The exporter's reqwest client, with the TLS files read now.
fn export_client(tls: &OutboundTls, timeout: Duration) -> Result<reqwest::Client, String> {
    tls.configure(reqwest::Client::builder().timeout(timeout), OTLP_FILES)
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))
}

/// The exporter's HTTP client: the workspace's reqwest on the gateway's own runtime. The batch
/// processor exports from a thread of its own (outside any runtime), so each request is spawned
/// onto `runtime` and awaited there through its join handle.
///
/// Before each export the TLS files are looked at (a few `stat`s, at most one export per
/// batch), and a renewed certificate is read then. The collector's CA or the client
/// certificate can so be renewed in place, as the outbound client's are, without a restart.
#[derive(Debug, Clone)]
struct ExportClient {
    client: RenewingClient,
    tls: OutboundTls,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// Set after a failed export, so a collector that is down logs one line, not one per batch.
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        match self
            .client
            .renew_if_changed(&self.tls, || export_client(&self.tls, self.timeout))
        {
            None => {}
            Some(Ok(())) => tracing::info!(
                target: LOG_TARGET,
                "trace exporter TLS files changed; new connections use the new certificates"
            ),
            Some(Err(e)) => tracing::warn!(
                target: LOG_TARGET,
                error = %e,
                "trace exporter TLS files changed but are unusable; the previous certificates stay in use"
            ),
        }
        let client = reqwest::Client::clone(&self.client.load());
        // Silenced: the exporter's own connections are neither log lines nor spans (reqwest and
        // hyper log through `tracing` and `log`; a span per export would feed back into exports).
        let exchange =
            send(client, request).with_subscriber(tracing::subscriber::NoSubscriber::new());
        let result = match self.runtime.spawn(exchange).await {
            Ok(result) => result,
            Err(e) => Err(format!("OTLP export task failed: {e}").into()),
        };
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        let was_failing = self.failing.swap(!ok, Ordering::Relaxed);
        match (&result, was_failing) {
            (Ok(r), false) if !ok => tracing::warn!(
                target: LOG_TARGET,
                status = r.status().as_u16(),
                "trace export refused by the collector: {}; further failures are not logged until an export succeeds",
                r.status()
            ),
            (Err(e), false) => tracing::warn!(
                target: LOG_TARGET,
                "trace export failed: {e}; further failures are not logged until an export succeeds"
            ),
            (_, true) if ok => tracing::info!(target: LOG_TARGET, "trace export recovered"),
            _ => {}
        }
        result
    }
}

async fn send(
    client: reqwest::Client,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url())?;
    let mut builder = Response::builder().status(response.status());
    if let Some(headers) = builder.headers_mut() {
        *headers = response.headers().clone();
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url())? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Box::new(opentelemetry_http::ResponseBodyTooLarge::new()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(builder.body(Bytes::from(body))?)
}

/// Makes the caller's W3C `traceparent` (and `tracestate`), if valid, the parent of `span`. Call
/// it before `span` is entered.
pub fn set_remote_parent(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Writes the current span's context into `headers` as `traceparent`/`tracestate`, so the
/// upstream's spans are children of the gateway's. `false` when tracing is off or no span of
/// the gateway is current: the caller then forwards the caller's context instead.
pub fn inject_current(headers: &mut HeaderMap) -> bool {
    if !enabled() {
        return false;
    }
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    true
}

/// Sets an attribute on an exported span (nothing when the span is disabled).
pub fn attribute(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// Marks an exported span as failed. `description` must hold no secret: it is exported as is.
pub fn fail(span: &Span, description: impl Into<std::borrow::Cow<'static, str>>) {
    if !span.is_disabled() {
        span.set_status(Status::error(description));
    }
}

/// A pipeline stage's span, not entered (so it may live across awaits): it starts when made and
/// ends when dropped. A stage dropped without [`Stage::done`] ended by a refusal or an error
/// (an early return) and is marked failed.
pub struct Stage {
    span: Span,
    done: bool,
}

impl Stage {
    pub fn new(span: Span) -> Self {
        Self { span, done: false }
    }

    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.done {
            fail(&self.span, "refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::callsite::{Callsite, Identifier};
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;
    use tracing::subscriber::{Interest, Subscriber};
    use tracing::{Level, Metadata};

    use super::*;

    /// A callsite of a span with the gateway's span target, to ask a subscriber for its interest
    /// directly (the span macros cache it out of reach).
    struct SpanCallsite;
    static SPAN_CALLSITE: SpanCallsite = SpanCallsite;
    static SPAN_META: Metadata<'static> = Metadata::new(
        "seal.invoke",
        TARGET,
        Level::INFO,
        None,
        None,
        None,
        FieldSet::new(&[], Identifier(&SPAN_CALLSITE)),
        Kind::SPAN,
    );
    impl Callsite for SpanCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &SPAN_META
        }
    }

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Self;
        fn make_writer(&'w self) -> Self {
            self.clone()
        }
    }
    impl Buffer {
        /// The lines without their timestamps, which differ from run to run.
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_owned())
                .collect()
        }
    }

    /// What the pipeline's code does: a span of the gateway's target around log lines.
    fn emit() {
        let span = tracing::info_span!(target: TARGET, "seal.invoke", seal.tool_name = "t");
        let _entered = span.enter();
        tracing::info!(target: "aegis_seal_gateway::application::invocation", execution_id = "e-1", "tool call authorized");
        tracing::warn!("envelope rejected: replay detected: jti already seen");
    }

    #[test]
    fn without_an_endpoint_span_callsites_are_never_enabled() {
        // `trace` and `aegis_seal_gateway=trace` enable everything else; the spans stay off.
        for rust_log in [
            None,
            Some("info"),
            Some("trace"),
            Some("aegis_seal_gateway=trace"),
        ] {
            let subscriber = logs_only(log_filter(rust_log), Buffer::default(), false);
            assert!(
                subscriber.register_callsite(&SPAN_META).is_never(),
                "RUST_LOG={rust_log:?}"
            );
        }
        // Named explicitly, they are logged as fmt would log any span.
        let subscriber = logs_only(
            log_filter(Some("info,aegis_seal_otel=info")),
            Buffer::default(),
            false,
        );
        assert!(!subscriber.register_callsite(&SPAN_META).is_never());
    }

    #[test]
    fn exported_spans_stay_out_of_the_log_lines() {
        let plain = Buffer::default();
        tracing::subscriber::with_default(
            logs_only(log_filter(Some("trace")), plain.clone(), false),
            emit,
        );
        let traced = Buffer::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = with_traces(
            log_filter(Some("trace")),
            traced.clone(),
            false,
            provider.tracer("test"),
        );
        let mut context_valid = false;
        tracing::subscriber::with_default(subscriber, || {
            emit();
            let span = tracing::info_span!(target: TARGET, "seal.dispatch");
            context_valid = span.context().span().span_context().is_valid();
        });
        // The OpenTelemetry layer saw the span (it has a context to propagate)...
        assert!(context_valid);
        // ...and the log lines are those of the gateway without traces, with no span prefix.
        assert_eq!(plain.lines().len(), 2);
        assert!(
            !plain.lines()[0].contains("seal.invoke"),
            "{:?}",
            plain.lines()
        );
        assert_eq!(traced.lines(), plain.lines());
    }

    #[test]
    fn settings_come_from_the_standard_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(TraceSettings::from_env(&env(&[])), Ok(None));
        let s = TraceSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        assert_eq!(s.service_name, DEFAULT_SERVICE_NAME);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.sampler, "parentbased_always_on");
        // The per-signal endpoint is used as given, and wins.
        let s = TraceSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:443/custom"),
            ("OTEL_SERVICE_NAME", "gw-eu"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "https://t:443/custom");
        assert_eq!(s.service_name, "gw-eu");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.sampler, "parentbased_traceidratio(0.1)");
        assert_eq!(s.tls, OutboundTls::default());
        // The collector's CA and client certificate, the per-signal variables first.
        let s = TraceSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.crt"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/etc/otel/traces-ca.crt",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/tls.crt"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/otel/tls.key"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            s.tls,
            OutboundTls {
                ca_file: Some("/etc/otel/traces-ca.crt".into()),
                client_identity: Some(("/etc/otel/tls.crt".into(), "/etc/otel/tls.key".into())),
            }
        );
        for off in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
        ] {
            let off: &'static [(&'static str, &'static str)] = off;
            assert_eq!(TraceSettings::from_env(&env(off)), Ok(None));
        }
        for bad in [
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/tls.crt"),
            ],
        ] {
            let bad: &'static [(&'static str, &'static str)] = bad;
            assert!(TraceSettings::from_env(&env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_start_line_shows_no_credentials_of_the_endpoint() {
        assert_eq!(
            shown_endpoint("https://user:secret@c.example:4318/v1/traces?key=k"),
            "https://c.example:4318/v1/traces?…"
        );
    }
}
