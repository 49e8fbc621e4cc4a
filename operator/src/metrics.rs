//! The operator's Prometheus metrics: reconciles, their errors and durations, and leadership.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    watch_errors: AtomicU64,
    /// Cumulative counts per bucket, as Prometheus exposes them.
    buckets: [AtomicU64; BUCKETS.len()],
    duration_micros: AtomicU64,
    leader: AtomicBool,
}

impl Metrics {
    /// Records one reconcile.
    pub fn reconciled(&self, elapsed: Duration, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records a failed list or watch of a kind the controller follows.
    pub fn watch_failed(&self) {
        self.watch_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let count = self.reconciles();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP aegis_seal_operator_reconciles_total SealGateway reconciles run.\n\
             # TYPE aegis_seal_operator_reconciles_total counter\n\
             aegis_seal_operator_reconciles_total {count}\n\
             # HELP aegis_seal_operator_reconcile_errors_total SealGateway reconciles that failed.\n\
             # TYPE aegis_seal_operator_reconcile_errors_total counter\n\
             aegis_seal_operator_reconcile_errors_total {}\n\
             # HELP aegis_seal_operator_watch_errors_total Lists and watches of followed kinds that failed (one object the operator cannot read fails its whole list).\n\
             # TYPE aegis_seal_operator_watch_errors_total counter\n\
             aegis_seal_operator_watch_errors_total {}\n\
             # HELP aegis_seal_operator_reconcile_duration_seconds Time taken by one reconcile.\n\
             # TYPE aegis_seal_operator_reconcile_duration_seconds histogram",
            self.errors(),
            self.watch_errors()
        );
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "aegis_seal_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let sum = self.duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "aegis_seal_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             aegis_seal_operator_reconcile_duration_seconds_sum {sum}\n\
             aegis_seal_operator_reconcile_duration_seconds_count {count}\n\
             # HELP aegis_seal_operator_leader Whether this replica holds the leader Lease.\n\
             # TYPE aegis_seal_operator_leader gauge\n\
             aegis_seal_operator_leader {}",
            u8::from(self.is_leader())
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(30), true);
        m.reconciled(Duration::from_millis(700), false);
        m.watch_failed();
        m.set_leader(true);
        let text = m.render();
        for line in [
            "aegis_seal_operator_reconciles_total 2",
            "aegis_seal_operator_reconcile_errors_total 1",
            "aegis_seal_operator_watch_errors_total 1",
            "aegis_seal_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 0",
            "aegis_seal_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1",
            "aegis_seal_operator_reconcile_duration_seconds_bucket{le=\"1\"} 2",
            "aegis_seal_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "aegis_seal_operator_reconcile_duration_seconds_sum 0.73",
            "aegis_seal_operator_reconcile_duration_seconds_count 2",
            "aegis_seal_operator_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
