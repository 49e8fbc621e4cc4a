//! `aegis_seal_sessions_active` when the recount fails: the WARN line operators alert on, and the
//! gauge keeping its last value rather than dropping to 0 (which would read as "no agents"). On
//! both backends, with the database made to fail by closing its pool.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_seal_gateway::infrastructure::metrics::Metrics;
use aegis_seal_gateway::infrastructure::persistence::Database;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// `(level, target, message)` of every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Level, String, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_owned(), message.0));
    }
}

fn gauge(metrics: &Metrics) -> Option<f64> {
    metrics.encode(false).lines().find_map(|line| {
        let value = line.strip_prefix("aegis_seal_sessions_active ")?;
        Some(value.parse().unwrap())
    })
}

/// Polls `done` every 20 ms for at most 10 s.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// A current-thread runtime: the spawned recounts run on this thread, under its subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_recount_logs_a_warning_and_keeps_the_last_value() {
    let capture = Capture::default();
    let _logs =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let signer = support::Signer::from_vectors();
    for (backend, url, _dir) in support::both_backends().await {
        capture.0.lock().unwrap().clear();
        let db = Database::connect(&url).await.unwrap();
        db.upsert_session(&signer.session_record(chrono::Utc::now()))
            .await
            .unwrap();
        let metrics = Metrics::new();

        // The first recount runs at once.
        let counting = tokio::spawn(metrics.clone().refresh_sessions_active(db.clone()));
        wait_for(&format!("{backend}: the gauge at 1"), || {
            gauge(&metrics) == Some(1.0)
        })
        .await;
        counting.abort();

        // The database goes away; a recount (the first of this task, so no 15 s wait) fails.
        db.close().await;
        let failing = tokio::spawn(metrics.clone().refresh_sessions_active(db.clone()));
        let warned = || {
            capture
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|(level, target, message)| {
                    *level == Level::WARN
                        && target == "aegis_seal_gateway::infrastructure::metrics"
                        && message.starts_with("active session gauge refresh failed: ")
                })
        };
        wait_for(&format!("{backend}: the refresh warning"), warned).await;
        failing.abort();
        assert_eq!(
            gauge(&metrics),
            Some(1.0),
            "{backend}: the last value is kept"
        );
    }
}
