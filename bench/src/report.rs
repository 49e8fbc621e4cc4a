//! The table: one row per workload, then the ratios and targets.

use std::fmt::Write as _;

use crate::load::{Outcome, Pace};

pub struct Row {
    pub workload: &'static str,
    pub database: &'static str,
    pub pace: Pace,
    pub expected: u16,
    pub outcome: Outcome,
    /// What the gateway used over the run; `None` for the direct reference.
    pub gateway: Option<Usage>,
    /// Whether each request costs the envelope's crypto, so the ceiling applies.
    pub verifies: bool,
}

/// What the gateway process used over one workload.
#[derive(Clone, Copy)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    /// Read- and write-family syscalls (`/proc/<pid>/io`; see `Gateway::rw_syscalls`).
    pub rw_syscalls: u64,
}

impl Row {
    /// How many responses had another status than the expected one.
    pub fn unexpected(&self) -> u64 {
        self.outcome
            .statuses
            .iter()
            .filter(|(status, _)| **status != self.expected)
            .map(|(_, n)| n)
            .sum()
    }

    /// The gateway's CPU per request over the run, in µs.
    pub fn cpu_micros_per_request(&self) -> Option<f64> {
        self.gateway.map(|g| self.per_request(g.cpu_seconds * 1e6))
    }

    fn per_request(&self, total: f64) -> f64 {
        total / self.outcome.requests().max(1) as f64
    }

    /// Responses other than the expected status, as `status×count`.
    fn errors(&self) -> String {
        let errors: Vec<String> = self
            .outcome
            .statuses
            .iter()
            .filter(|(status, _)| **status != self.expected)
            .map(|(status, n)| match status {
                0 => format!("io×{n}"),
                s => format!("{s}×{n}"),
            })
            .collect();
        if errors.is_empty() {
            "-".into()
        } else {
            errors.join(" ")
        }
    }
}

pub fn table(rows: &[Row], ceiling_per_second: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | db | pace | requests | expected | errors | req/s | x ceiling | p50 ms | p90 ms | p99 ms | max ms | gw CPU s | gw CPU µs/req | gw r/w syscalls/req | gw peak RSS MiB |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(16));
    for row in rows {
        let o = &row.outcome;
        // At a fixed rate, throughput is the rate: only a closed loop measures capacity.
        let ratio = if row.verifies && matches!(row.pace, Pace::Concurrency(_)) {
            format!("{:.2}", o.throughput() / ceiling_per_second)
        } else {
            "-".into()
        };
        let (cpu, per_request, syscalls, rss) = match row.gateway {
            Some(g) => (
                format!("{:.2}", g.cpu_seconds),
                format!("{:.0}", row.per_request(g.cpu_seconds * 1e6)),
                format!("{:.1}", row.per_request(g.rw_syscalls as f64)),
                format!("{:.1}", g.peak_rss_mib),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
            row.workload,
            row.database,
            row.pace,
            o.requests(),
            row.expected,
            row.errors(),
            o.throughput(),
            ratio,
            o.ms(0.5),
            o.ms(0.9),
            o.ms(0.99),
            o.max_ms(),
            cpu,
            per_request,
            syscalls,
            rss,
        );
    }
    out
}
