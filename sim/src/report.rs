//! What a run found: timings of what the mesh did after each event, request
//! counts and latencies, gossip cost, memory, and the scenario's expectations —
//! printed for people and written as JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::traffic::Summary;

/// One measured reaction of the mesh.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// What happened (`killed n1`, `partition n5`, ...).
    pub event: String,
    /// When, seconds since the start.
    pub at_s: f64,
    /// What was measured (`dropped by every node`, ...).
    pub what: String,
    /// How long after the event, seconds; `None` if it did not happen in time.
    pub after_s: Option<f64>,
}

/// One expectation and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    /// Which step.
    pub step: usize,
    /// What was expected.
    pub expected: String,
    /// What was found.
    pub found: String,
    /// Whether it held.
    pub passed: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `in-process` or `processes`.
    pub mode: String,
    /// Most nodes that existed at once.
    pub nodes: usize,
    /// Run time, seconds.
    pub duration_s: f64,
    /// Events, in order, with the measured reactions.
    pub timings: Vec<Timing>,
    /// Every request of the run.
    pub requests: Summary,
    /// The requests of each phase of the run: `steady` until the first step
    /// that changes the mesh, then one phase per such step (`after kill n1`,
    /// `partition n5`, `after heal`, ...), each holding the requests that
    /// started in it.
    pub phases: Vec<Phase>,
    /// The same, per service.
    pub by_service: std::collections::BTreeMap<String, Summary>,
    /// Gossip bytes sent per node per second, averaged over the run.
    pub gossip_bytes_per_node_per_s: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Datagrams dropped by the simulated network (in-process mode).
    pub datagrams_dropped: u64,
    /// False deaths seen during `steady` steps: times a running node saw another
    /// running node not alive.
    pub false_deaths: u64,
    /// What membership cost during `quiet` steps (the last one, if several).
    pub quiet: Option<QuietCost>,
    /// The most gossip connections one node held at once (sampled every 2 s
    /// over the whole run); with bounded views it stays at about the overlay's
    /// neighbour count whatever the size of the mesh.
    pub max_connections_per_node: u64,
    /// The node that held them (empty if none).
    pub max_connections_node: String,
    /// Measurement resolution, milliseconds (how often the nodes were polled).
    pub resolution_ms: u64,
    /// Expectations.
    pub expectations: Vec<Expectation>,
    /// Errors that stopped or disturbed the run.
    pub errors: Vec<String>,
}

/// The requests of one phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What began it (`steady` for the start).
    pub name: String,
    /// When it began, seconds since the start.
    pub from_s: f64,
    /// When it ended.
    pub to_s: f64,
    /// Its requests.
    pub requests: Summary,
    /// The same, per service.
    pub by_service: std::collections::BTreeMap<String, Summary>,
}

/// What a quiet mesh cost: gossip and CPU per node per second over a `quiet` step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuietCost {
    /// Running nodes.
    pub nodes: usize,
    /// Length of the step, seconds.
    pub seconds: f64,
    /// Gossip bytes sent per node per second.
    pub gossip_bytes_per_node_per_s: f64,
    /// CPU time (user + system) of the whole process per node per second, in
    /// milliseconds; `None` in processes mode.
    pub cpu_ms_per_node_per_s: Option<f64>,
    /// The most gossip connections one node held at the end of the step.
    pub max_connections_per_node: u64,
}

impl Report {
    /// The requests-by-phase table: one row per phase and service.
    fn phases_text(&self, out: &mut String) {
        if self.phases.len() < 2 {
            return;
        }
        let _ = writeln!(out, "\nrequests by phase:");
        let _ = writeln!(
            out,
            "  {:<22} {:>13}  {:<8} {:>6} {:>7} {:>8} {:>8} {:>8}",
            "phase", "from", "service", "sent", "failed", "p50 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            for (service, r) in &p.by_service {
                let _ = writeln!(
                    out,
                    "  {:<22} {:>5.1}-{:>5.1} s  {:<8} {:>6} {:>7} {:>8.1} {:>8.1} {:>8.1}",
                    p.name,
                    p.from_s,
                    p.to_s,
                    service,
                    r.sent,
                    r.failed,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms
                );
            }
        }
    }

    /// Whether every expectation held and nothing went wrong.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.expectations.iter().all(|e| e.passed)
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Shoal simulation: {} ({}, {} nodes, {:.1} s)",
            self.scenario, self.mode, self.nodes, self.duration_s
        );
        self.timings_text(&mut out);
        self.requests_text(&mut out);
        self.phases_text(&mut out);
        self.mesh_text(&mut out);
        self.outcome_text(&mut out);
        out
    }

    /// What the mesh did, event by event.
    fn timings_text(&self, out: &mut String) {
        let _ = writeln!(out, "\nwhat the mesh did:");
        for t in &self.timings {
            let after = match t.after_s {
                Some(s) => format!("{s:.2} s"),
                None => "did not happen in time".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:>7.1} s  {:<28} {:<34} {}",
                t.at_s, t.event, t.what, after
            );
        }
    }

    /// The requests: counts, latency, who served them.
    fn requests_text(&self, out: &mut String) {
        let r = &self.requests;
        let _ = writeln!(
            out,
            "\nrequests: {} sent, {} ok, {} failed ({:.2}%)",
            r.sent,
            r.ok,
            r.failed,
            r.failed_percent()
        );
        for (why, n) in &r.failed_by_reason {
            let _ = writeln!(out, "  failed: {why}: {n}");
        }
        if r.ok > 0 {
            let _ = writeln!(
                out,
                "  latency of successful requests: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
            );
            let served: Vec<String> = r
                .served_by
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            let _ = writeln!(out, "  served by: {}", served.join(", "));
        }
        if self.by_service.len() > 1 {
            for (service, r) in &self.by_service {
                let _ = writeln!(
                    out,
                    "  {service}: {} sent, {} failed ({:.2}%), p50 {:.1} ms, p99 {:.1} ms",
                    r.sent,
                    r.failed,
                    r.failed_percent(),
                    r.p50_ms,
                    r.p99_ms
                );
            }
        }
        for (service, r) in &self.by_service {
            if r.served_service.keys().any(|s| s != service) {
                let total: u64 = r.served_service.values().sum();
                let split: Vec<String> = r
                    .served_service
                    .iter()
                    .map(|(s, n)| {
                        format!("{s} {n} ({:.1}%)", *n as f64 * 100.0 / total.max(1) as f64)
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  {service}: answered by service (a route's split): {}",
                    split.join(", ")
                );
            }
        }
    }

    /// Gossip cost, memory and false deaths.
    fn mesh_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\ngossip: {:.1} KB/s sent per node, at most {} gossip connections per node ({}); memory: {:.0} MiB resident; datagrams dropped by faults: {}",
            self.gossip_bytes_per_node_per_s / 1000.0,
            self.max_connections_per_node,
            if self.max_connections_node.is_empty() {
                "none"
            } else {
                &self.max_connections_node
            },
            self.rss_mib,
            self.datagrams_dropped
        );
        if let Some(q) = &self.quiet {
            let cpu = q
                .cpu_ms_per_node_per_s
                .map(|c| format!("{c:.2} ms CPU"))
                .unwrap_or_else(|| "CPU not measured".into());
            let _ = writeln!(
                out,
                "quiet mesh ({} nodes, {:.0} s): {:.2} KB/s gossip and {cpu} per node per second; at most {} gossip connections per node at its end",
                q.nodes,
                q.seconds,
                q.gossip_bytes_per_node_per_s / 1000.0,
                q.max_connections_per_node
            );
        }
        let _ = writeln!(
            out,
            "false deaths during steady periods: {}",
            self.false_deaths
        );
        let _ = writeln!(
            out,
            "(times are measured by polling every node every {} ms)",
            self.resolution_ms
        );
    }

    /// The expectations, errors and the verdict.
    fn outcome_text(&self, out: &mut String) {
        if !self.expectations.is_empty() {
            let passed = self.expectations.iter().filter(|e| e.passed).count();
            let _ = writeln!(
                out,
                "\nexpectations: {passed} of {} held",
                self.expectations.len()
            );
            for e in &self.expectations {
                let _ = writeln!(
                    out,
                    "  [{}] step {}: expected {}; found {}",
                    if e.passed { "ok" } else { "FAILED" },
                    e.step,
                    e.expected,
                    e.found
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        );
    }
}
