//! The figures of a run, printed one `key=value` per line on stdout: what `bench/scale` and the
//! smoke test read. Times are in seconds (`_s`) or milliseconds (`_ms`), rates per second.

use std::time::Duration;

/// Latencies of one kind of request, sampled through a phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latencies {
    samples: Vec<Duration>,
    pub errors: u64,
}

impl Latencies {
    pub fn record(&mut self, took: Duration) {
        self.samples.push(took);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The nearest-rank `q` quantile (0 < q ≤ 1), zero with no samples.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted
            .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub nodes: u64,
    pub services: u64,
    pub replicas: u64,
    /// From start to every simulated agent registered.
    pub registered: Duration,
    /// The deploy request itself, until the server answered.
    pub deploy_call: Duration,
    /// Tasks whose node heard of them, and the time from the deploy request to the last of
    /// them (every task, or as many as there were when the patience ran out).
    pub placed_tasks: u64,
    pub placed: Duration,
    /// Tasks reported running and ready, acknowledged, and the time to the last of them.
    pub running_tasks: u64,
    pub running: Duration,
    /// Running and ready tasks of the current version, as `GET /v1/services` counts them.
    pub confirmed_running: u64,
    pub confirmed_ready: u64,
    /// Whether the steady phase ran: only once every task was reported running.
    pub steady_ran: bool,
    /// Agents whose last report of the steady phase got through within the patience.
    pub settled_nodes: u64,
    /// From the start of the steady phase to the last of its reports acknowledged.
    pub steady: Duration,
    /// Task status changes acknowledged (so committed and applied) in the steady phase.
    pub steady_changes: u64,
    pub steady_reports: u64,
    /// Raft entries applied in the steady phase (the server's applied index moved by this).
    pub steady_entries: u64,
    /// Tasks whose readiness on the server matched what their node last had acknowledged, and
    /// those that did not (or were missing).
    pub verified: u64,
    pub mismatched: u64,
    /// `GET /v1/tasks?service=…` during the steady phase.
    pub ps: Latencies,
    pub ps_service: String,
    /// Agents that joined with a node certificate (none against a plain server).
    pub joined: u64,
    pub failed_joins: u64,
    pub failed_registers: u64,
    pub failed_reports: u64,
    pub failed_heartbeats: u64,
    pub failed_watches: u64,
}

impl Figures {
    pub fn tasks(&self) -> u64 {
        self.services * self.replicas
    }

    /// The figures as `key=value` lines, in a fixed order.
    pub fn lines(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        let s = |d: Duration| format!("{:.3}", d.as_secs_f64());
        let pairs: Vec<(&str, String)> = vec![
            ("nodes", self.nodes.to_string()),
            ("services", self.services.to_string()),
            ("replicas", self.replicas.to_string()),
            ("tasks", self.tasks().to_string()),
            ("registered_s", s(self.registered)),
            ("joined_nodes", self.joined.to_string()),
            ("deploy_call_s", s(self.deploy_call)),
            ("placed_tasks", self.placed_tasks.to_string()),
            ("placed_s", s(self.placed)),
            ("placements_per_s", rate(self.placed_tasks, self.placed)),
            ("running_tasks", self.running_tasks.to_string()),
            ("running_s", s(self.running)),
            ("confirmed_running", self.confirmed_running.to_string()),
            ("confirmed_ready", self.confirmed_ready.to_string()),
            ("steady_ran", u8::from(self.steady_ran).to_string()),
            ("settled_nodes", self.settled_nodes.to_string()),
            ("steady_s", s(self.steady)),
            ("steady_changes", self.steady_changes.to_string()),
            ("changes_per_s", rate(self.steady_changes, self.steady)),
            ("steady_reports", self.steady_reports.to_string()),
            ("steady_entries", self.steady_entries.to_string()),
            ("verified_tasks", self.verified.to_string()),
            ("mismatched_tasks", self.mismatched.to_string()),
            ("ps_service", self.ps_service.clone()),
            ("ps_samples", self.ps.len().to_string()),
            ("ps_errors", self.ps.errors.to_string()),
            ("ps_p50_ms", ms(self.ps.quantile(0.50))),
            ("ps_p99_ms", ms(self.ps.quantile(0.99))),
            ("ps_max_ms", ms(self.ps.quantile(1.0))),
            ("failed_joins", self.failed_joins.to_string()),
            ("failed_registers", self.failed_registers.to_string()),
            ("failed_reports", self.failed_reports.to_string()),
            ("failed_heartbeats", self.failed_heartbeats.to_string()),
            ("failed_watches", self.failed_watches.to_string()),
        ];
        pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// `count` per second over `over`; zero over no time.
fn rate(count: u64, over: Duration) -> String {
    let secs = over.as_secs_f64();
    let per = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    format!("{per:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_are_nearest_rank_and_zero_without_samples() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile(0.99), Duration::ZERO);
        for n in (1..=100).rev() {
            l.record(ms(n));
        }
        assert_eq!(l.quantile(0.50), ms(50));
        assert_eq!(l.quantile(0.99), ms(99));
        assert_eq!(l.quantile(1.0), ms(100));
        l.record(ms(1000));
        assert_eq!(l.quantile(0.99), ms(100), "101 samples: rank 100");
    }

    #[test]
    fn figures_print_as_key_value_lines_with_rates_from_counts_and_times() {
        let mut ps = Latencies::default();
        ps.record(ms(4));
        let f = Figures {
            services: 10,
            replicas: 10,
            placed_tasks: 100,
            placed: ms(500),
            steady: Duration::from_secs(2),
            steady_changes: 3_001,
            ps,
            ..Figures::default()
        };
        let lines = f.lines();
        for want in [
            "tasks=100",
            "placed_s=0.500",
            "placements_per_s=200.0",
            "changes_per_s=1500.5",
            "ps_p99_ms=4.00",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} in {lines:#?}");
        }
        assert!(lines.iter().all(|l| l.split_once('=').is_some()));
        assert_eq!(rate(5, Duration::ZERO), "0.0");
    }
}
