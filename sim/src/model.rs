//! `shoal-sim model`: the membership protocol of thousands of nodes — the
//! [`Membership`](mesh_proto::membership::Membership) state machine the node
//! runs, not a model of it — on mesh-proto's discrete-event network
//! ([`mesh_proto::membership::sim`]): a simulated clock, a fixed latency, seeded
//! loss, kills and partitions. The same seed gives the same run.
//!
//! A run is a script of phases, each measured:
//!
//! 1. **cold start**: the nodes start in waves of 50 every 250 ms, seeded with
//!    the first three; measured from the last wave. Or, with
//!    [`Start::Settled`], every node starts holding every other's records, as
//!    if gossip had spread them (the cold start of 10,000 nodes is 10⁸ records
//!    received and judged, more than this simulator does in minutes);
//! 2. **quiet**: nothing changes; gossip bytes per node per second;
//! 3. **join**: one more node joins; time until it holds the full membership and
//!    state (the same records as the others);
//! 4. **broadcast**: health flips on random nodes; for each, when every node holds
//!    it (p50 and p99 over every (change, node) pair);
//! 5. **kill**: random nodes stop dead; when every other node sees each dead;
//! 6. **partition**: a tenth of the nodes is cut off until both sides see the
//!    other dead, then healed; time until the mesh is whole again;
//! 7. **steady**: `--duration` of nothing but loss; a node declared dead while
//!    running is a false death (counted in every phase but the partition).
//!
//! Connections per node are the peers a node exchanged a message with in the
//! node's connection idle time, sampled after the cold start; the partition and
//! its heal, when the cut side talks to members it believed dead, are counted
//! apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mesh_proto::gossip::{Health, service_key};
use mesh_proto::membership::Timing;
use mesh_proto::membership::sim::Network;
use serde::Serialize;

/// The service every simulated node hosts.
const SERVICE: &str = "web";
/// Health flips in the broadcast phase.
const BROADCASTS: usize = 10;
/// Nodes killed in the kill phase.
const KILLS: usize = 3;
/// Simulated time a phase may take before the run gives up on it.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Most nodes a model may have: one less than a node's default member cap.
const MAX_NODES: usize = mesh_proto::membership::config::DEFAULT_MAX_MEMBERS - 1;
/// Nodes started together in the cold start, every [`START_SPACING`].
const START_BATCH: usize = 50;
/// See [`START_BATCH`].
const START_SPACING: Duration = Duration::from_millis(250);
/// How often a phase's condition is checked, in simulated time.
const POLL: Duration = Duration::from_millis(10);

/// How the mesh starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// From nothing: waves of nodes that learn each other by gossip (measured
    /// as the cold start).
    Waves,
    /// Settled: every node starts holding every other node's records, as
    /// gossip would have left them; no cold start is run or measured.
    Settled,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// How the mesh starts.
    pub start: Start,
    /// Nodes in the mesh (the joiner comes on top).
    pub nodes: usize,
    /// Probability that any one message is lost (0 to 1), for the whole run.
    pub loss: f64,
    /// Length of the steady phase.
    pub steady: Duration,
    /// Length of the quiet phase.
    pub quiet: Duration,
    /// One-way latency of every message.
    pub latency: Duration,
    /// Fraction of the nodes cut off in the partition phase (0: no partition).
    pub partition: f64,
    /// The seed of every random choice.
    pub seed: u64,
    /// Print each phase to stderr as it ends.
    pub progress: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            start: Start::Waves,
            nodes: 1000,
            loss: 0.0,
            steady: Duration::from_secs(60),
            quiet: Duration::from_secs(30),
            latency: Duration::from_millis(5),
            partition: 0.1,
            seed: 1,
            progress: false,
        }
    }
}

/// One target of the scaling work, and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured (a field of the report).
    pub field: &'static str,
    /// The most allowed.
    pub limit: f64,
    /// What the run measured.
    pub found: f64,
    /// `found <= limit`.
    pub met: bool,
}

/// What a run measured. The first ten fields are the contract of
/// docs/simulator.md.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Nodes in the mesh (before the joiner).
    pub nodes: usize,
    /// Seconds until a node joining the settled mesh holds the full membership
    /// and state.
    pub join_converged_s: f64,
    /// Median seconds for a health change to reach a node.
    pub broadcast_p50_s: f64,
    /// 99th percentile of the same.
    pub broadcast_p99_s: f64,
    /// 99th percentile, over killed nodes and observers, of the seconds until the
    /// observer sees the killed node dead.
    pub dead_detected_p99_s: f64,
    /// Running nodes declared dead by some node (outside the partition).
    pub false_deaths: u64,
    /// Gossip bytes sent per node per second in the quiet phase (anti-entropy
    /// and probes included).
    pub bytes_per_node_per_s: f64,
    /// The same, by message kind (`ping`, `ack`, `sync_hash`, `sync`, `records`,
    /// `suspicions`, `documents`).
    pub quiet_bytes_by_kind: BTreeMap<String, f64>,
    /// Most peers any node exchanged messages with within the connection idle
    /// time, after the cold start.
    pub max_connections_per_node: usize,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
    /// Peak resident memory of the process, MiB.
    pub rss_mib: f64,
    /// How the mesh started (`waves` or `settled`).
    pub start: Start,
    /// Seconds for every node started together to see every other (null when
    /// the mesh started settled).
    pub cold_start_s: f64,
    /// Most peers any node exchanged messages with around the partition and its
    /// heal (not counted in `max_connections_per_node`).
    pub max_connections_partition: usize,
    /// Seconds until both sides of the partition saw the other side dead.
    pub partition_detected_s: f64,
    /// Seconds until every node of the larger side saw every node cut off dead.
    pub partition_rest_sees_cut_s: f64,
    /// Seconds until every node cut off saw every node of the larger side dead.
    pub partition_cut_sees_rest_s: f64,
    /// Seconds after the heal until every node saw every other alive again.
    pub healed_s: f64,
    /// Message loss of the run.
    pub loss: f64,
    /// The seed.
    pub seed: u64,
    /// Simulated seconds in all.
    pub simulated_s: f64,
    /// Messages sent in all.
    pub messages: u64,
    /// The targets for this size (docs/simulator.md), and whether each was met.
    pub targets: Vec<Target>,
}

impl ModelReport {
    /// Whether every target was met.
    pub fn passed(&self) -> bool {
        self.targets.iter().all(|t| t.met)
    }

    /// The report as text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "membership model: {} nodes, {:.1}% loss, seed {}, {:.0} s simulated in {:.1} s wall, {:.0} MiB\n",
            self.nodes,
            self.loss * 100.0,
            self.seed,
            self.simulated_s,
            self.wall_s,
            self.rss_mib
        );
        for (what, v) in self.figures() {
            s.push_str(&format!("  {what:<44} {v}\n"));
        }
        s.push_str("targets:\n");
        for t in &self.targets {
            s.push_str(&format!(
                "  [{}] {} ≤ {}: found {}\n",
                if t.met { "ok" } else { "MISSED" },
                t.field,
                t.limit,
                t.found
            ));
        }
        s.push('\n');
        s
    }

    /// Each figure of the run as (what, value) for the text report.
    fn figures(&self) -> [(&'static str, String); 9] {
        [
            (
                "cold start: every node sees every other",
                match self.start {
                    Start::Waves => secs(self.cold_start_s),
                    Start::Settled => "not run (the mesh started settled)".into(),
                },
            ),
            (
                "a joining node holds the full state",
                secs(self.join_converged_s),
            ),
            (
                "a change reaches a node, p50 / p99",
                format!(
                    "{} / {}",
                    secs(self.broadcast_p50_s),
                    secs(self.broadcast_p99_s)
                ),
            ),
            (
                "a killed node is dead in every view, p99",
                secs(self.dead_detected_p99_s),
            ),
            (
                "partition: both sides see the other dead",
                if self.partition_detected_s.is_nan() {
                    secs(self.partition_detected_s)
                } else {
                    format!(
                        "{} (the rest {}, the cut-off side {})",
                        secs(self.partition_detected_s),
                        secs(self.partition_rest_sees_cut_s),
                        secs(self.partition_cut_sees_rest_s)
                    )
                },
            ),
            ("healed: the mesh whole again", secs(self.healed_s)),
            ("false deaths", self.false_deaths.to_string()),
            (
                "quiet mesh: bytes sent per node per second",
                format!("{:.0} B/s", self.bytes_per_node_per_s),
            ),
            (
                "gossip connections per node, most",
                if self.partition_detected_s.is_nan() {
                    self.max_connections_per_node.to_string()
                } else {
                    format!(
                        "{} ({} around the partition)",
                        self.max_connections_per_node, self.max_connections_partition
                    )
                },
            ),
        ]
    }
}

fn secs(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.2} s")
    } else if s.is_nan() {
        "not run".into()
    } else {
        "never".into()
    }
}

/// The targets of the scaling issue for `nodes`: the N = 1,000 column up to
/// 1,000 nodes, the N = 10,000 column above.
pub fn targets_for(nodes: usize) -> [(&'static str, f64); 6] {
    let small = nodes <= 1000;
    [
        ("max_connections_per_node", 16.0),
        ("bytes_per_node_per_s", 2000.0),
        ("broadcast_p99_s", if small { 1.5 } else { 2.5 }),
        ("join_converged_s", if small { 5.0 } else { 15.0 }),
        ("dead_detected_p99_s", if small { 5.0 } else { 6.0 }),
        ("false_deaths", 0.0),
    ]
}

struct Model {
    net: Network,
    opts: ModelOptions,
    wall: Instant,
    rng: u64,
}

/// Runs the model.
pub fn run(opts: ModelOptions) -> Result<ModelReport> {
    if !(20..=MAX_NODES).contains(&opts.nodes) {
        bail!(
            "--nodes: the model runs 20 to {MAX_NODES} nodes (the members a node admits by default), got {}",
            opts.nodes
        );
    }
    if !(0.0..=0.5).contains(&opts.partition) {
        bail!(
            "--partition: give a fraction of the nodes from 0 to 0.5, got {}",
            opts.partition
        );
    }
    if !(0.0..0.5).contains(&opts.loss) {
        bail!(
            "--loss: give a probability from 0 to 0.5, got {}",
            opts.loss
        );
    }
    let mut net = Network::new(Timing::default(), opts.seed);
    net.set_latency(opts.latency);
    net.set_loss(opts.loss);
    net.record_events = false;
    let mut m = Model {
        net,
        wall: Instant::now(),
        rng: opts.seed ^ 0x6d6f_6465_6c00,
        opts,
    };
    let report = m.execute();
    // The run is over and the process ends soon after: freeing every simulated
    // node's state one allocation at a time took 4.6 s of a 1,000-node run.
    std::mem::forget(m);
    report
}

impl Model {
    fn execute(&mut self) -> Result<ModelReport> {
        let cold_start_s = self.cold_start();
        // Nodes in their first rounds keep their first neighbours; connections
        // are counted once every node has its settled ones.
        self.net.run_for(Duration::from_secs(10));
        self.net.reset_connections();
        let mut max_conn = 0;
        let (bytes_per_node_per_s, quiet_bytes_by_kind) = self.quiet(&mut max_conn);
        let join_converged_s = self.join();
        let (broadcast_p50_s, broadcast_p99_s) = self.broadcasts();
        max_conn = max_conn.max(self.net.max_connections());
        let dead_detected_p99_s = self.kills();
        max_conn = max_conn.max(self.net.max_connections());
        let deaths_before = self.net.stats.deaths_of_running;
        let partition = self.partition();
        let partition_deaths = self.net.stats.deaths_of_running - deaths_before;
        let max_connections_partition = self.net.max_connections();
        // The steady phase counts connections afresh: a partition and its heal
        // make every node of the cut side talk to members it believed dead.
        self.net.reset_connections();
        self.steady(&mut max_conn);
        let false_deaths = self.net.stats.deaths_of_running - partition_deaths;
        let mut report = ModelReport {
            nodes: self.opts.nodes,
            join_converged_s,
            broadcast_p50_s,
            broadcast_p99_s,
            dead_detected_p99_s,
            false_deaths,
            bytes_per_node_per_s,
            quiet_bytes_by_kind,
            max_connections_per_node: max_conn,
            max_connections_partition,
            wall_s: self.wall.elapsed().as_secs_f64(),
            rss_mib: peak_rss_mib(),
            start: self.opts.start,
            cold_start_s,
            partition_detected_s: partition.detected_s,
            partition_rest_sees_cut_s: partition.rest_sees_cut_s,
            partition_cut_sees_rest_s: partition.cut_sees_rest_s,
            healed_s: partition.healed_s,
            loss: self.opts.loss,
            seed: self.opts.seed,
            simulated_s: self.net.elapsed().as_secs_f64(),
            messages: self.net.stats.messages,
            targets: Vec::new(),
        };
        report.targets = evaluate(&report);
        Ok(report)
    }

    fn progress(&self, what: &str) {
        if self.opts.progress {
            eprintln!(
                "model: {:>7.1} s simulated, {:>6.1} s wall: {what}",
                self.net.elapsed().as_secs_f64(),
                self.wall.elapsed().as_secs_f64()
            );
        }
    }

    fn random(&mut self, below: usize) -> usize {
        let r = mesh_proto::membership::state::splitmix64(&mut self.rng);
        (r % below.max(1) as u64) as usize
    }

    /// A random running node other than those in `not`.
    fn pick_running(&mut self, not: &[String]) -> Option<String> {
        let running: Vec<String> = self
            .net
            .names()
            .into_iter()
            .filter(|n| self.net.node(n).is_some_and(|x| x.running) && !not.contains(n))
            .collect();
        if running.is_empty() {
            return None;
        }
        let i = self.random(running.len());
        running.get(i).cloned()
    }

    fn running(&self) -> Vec<String> {
        self.net
            .names()
            .into_iter()
            .filter(|n| self.net.node(n).is_some_and(|x| x.running))
            .collect()
    }

    fn cold_start(&mut self) -> f64 {
        match self.opts.start {
            Start::Waves => self.start_in_waves(),
            Start::Settled => self.start_settled(),
        }
    }

    /// Every node added at once, then given every other's records.
    fn start_settled(&mut self) -> f64 {
        let n = self.opts.nodes;
        for i in 0..n {
            self.net.add(&format!("n{i:05}"), &[SERVICE]);
        }
        let taken = self.net.settle();
        self.progress(&format!(
            "settled start: {n} nodes, {taken} members held between them"
        ));
        f64::NAN
    }

    fn start_in_waves(&mut self) -> f64 {
        let n = self.opts.nodes;
        // A fleet comes up in waves (a rollout), not all in one millisecond
        // on three seeds: START_BATCH nodes every START_SPACING.
        for i in 0..n {
            self.net.add(&format!("n{i:05}"), &[SERVICE]);
            if (i + 1) % START_BATCH == 0 {
                self.net.run_for(START_SPACING);
            }
        }
        let t0 = self.net.elapsed();
        let mut pending: BTreeSet<String> = self.net.names().into_iter().collect();
        let mut last_report = Instant::now();
        while !pending.is_empty() && self.net.elapsed() - t0 < PHASE_LIMIT * 2 {
            self.net.run_for(Duration::from_millis(250));
            let net = &self.net;
            pending.retain(|name| net.node(name).is_none_or(|x| x.membership.up_members() < n));
            if self.opts.progress && last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                self.progress(&format!(
                    "cold start: {} of {n} nodes see all",
                    n - pending.len()
                ));
            }
        }
        let t = if pending.is_empty() {
            (self.net.elapsed() - t0).as_secs_f64()
        } else {
            f64::INFINITY
        };
        self.progress(&format!("cold start: {}", secs(t)));
        t
    }

    /// Bytes per node per second in the quiet phase, in all and by message kind.
    fn quiet(&mut self, max_conn: &mut usize) -> (f64, BTreeMap<String, f64>) {
        let b0 = self.net.stats.bytes;
        let kinds0 = self.net.stats.bytes_by_kind.clone();
        let end = self.net.elapsed() + self.opts.quiet;
        while self.net.elapsed() < end {
            self.net
                .run_for(Duration::from_secs(5).min(end - self.net.elapsed()));
            *max_conn = (*max_conn).max(self.net.max_connections());
        }
        let bytes = (self.net.stats.bytes - b0) as f64;
        let scale = self.opts.nodes as f64 * self.opts.quiet.as_secs_f64().max(1e-9);
        let per = bytes / scale;
        let by_kind = self
            .net
            .stats
            .bytes_by_kind
            .iter()
            .map(|(k, b)| {
                let before = kinds0.get(k).copied().unwrap_or(0);
                (k.to_string(), ((b - before) as f64 / scale).round())
            })
            .collect();
        self.progress(&format!(
            "quiet: {per:.0} B/s per node ({by_kind:?}), {} connections at most",
            *max_conn
        ));
        (per, by_kind)
    }

    fn join(&mut self) -> f64 {
        let mut seeds = Vec::new();
        for _ in 0..3 {
            if let Some(addr) = self
                .pick_running(&[])
                .and_then(|n| self.net.node(&n).map(|x| x.addr))
            {
                seeds.push(addr);
            }
        }
        let t0 = self.net.elapsed();
        self.net.add_with_seeds("joiner", &[SERVICE], seeds);
        let reference = self.pick_running(&["joiner".to_string()]);
        let ok = self.net.run_until(PHASE_LIMIT, |net| {
            let (Some(j), Some(r)) = (
                net.node("joiner"),
                reference.as_ref().and_then(|r| net.node(r)),
            ) else {
                return false;
            };
            j.membership.state_summary() == r.membership.state_summary()
        });
        let t = if ok {
            (self.net.elapsed() - t0).as_secs_f64()
        } else {
            f64::INFINITY
        };
        let conns = self.net.max_connections();
        self.progress(&format!(
            "join: the joiner holds the full state after {}; {conns} connections at most",
            secs(t)
        ));
        t
    }

    fn broadcasts(&mut self) -> (f64, f64) {
        let mut delays: Vec<f64> = Vec::new();
        let key = service_key(SERVICE);
        for b in 0..BROADCASTS {
            let Some(origin) = self.pick_running(&[]) else {
                break;
            };
            let health = if b % 2 == 0 {
                Health::Unhealthy
            } else {
                Health::Healthy
            };
            self.net.set_health(&origin, SERVICE, health);
            let Some(version) = self
                .net
                .node(&origin)
                .and_then(|x| x.membership.record_version(&origin, &key))
            else {
                continue;
            };
            let mut waiting: BTreeSet<String> = self.running().into_iter().collect();
            waiting.remove(&origin);
            let t0 = self.net.elapsed();
            while !waiting.is_empty() && self.net.elapsed() - t0 < PHASE_LIMIT {
                self.net.run_for(POLL);
                let at = (self.net.elapsed() - t0).as_secs_f64();
                let net = &self.net;
                waiting.retain(|n| {
                    let has = net.node(n).is_some_and(|x| {
                        x.membership
                            .record_version(&origin, &key)
                            .is_some_and(|v| v >= version)
                    });
                    if has {
                        delays.push(at);
                    }
                    !has
                });
            }
            delays.extend(waiting.iter().map(|_| f64::INFINITY));
            self.net.run_for(Duration::from_millis(500));
        }
        let (p50, p99) = (percentile(&mut delays, 0.50), percentile(&mut delays, 0.99));
        self.progress(&format!("broadcast: p50 {}, p99 {}", secs(p50), secs(p99)));
        (p50, p99)
    }

    fn kills(&mut self) -> f64 {
        let mut delays: Vec<f64> = Vec::new();
        for _ in 0..KILLS {
            let Some(victim) = self.pick_running(&["joiner".to_string()]) else {
                break;
            };
            self.net.kill(&victim);
            let mut waiting: BTreeSet<String> = self.running().into_iter().collect();
            let t0 = self.net.elapsed();
            while !waiting.is_empty() && self.net.elapsed() - t0 < PHASE_LIMIT {
                self.net.run_for(POLL * 5);
                let at = (self.net.elapsed() - t0).as_secs_f64();
                let net = &self.net;
                waiting.retain(|n| {
                    let seen = net.health_seen(n, &victim);
                    let dead = seen.is_none() || seen == Some("dead");
                    if dead {
                        delays.push(at);
                    }
                    !dead
                });
            }
            delays.extend(waiting.iter().map(|_| f64::INFINITY));
        }
        let p99 = percentile(&mut delays, 0.99);
        let conns = self.net.max_connections();
        self.progress(&format!(
            "kill: dead in every view, p99 {}; {conns} connections at most",
            secs(p99)
        ));
        p99
    }

    /// Simulated seconds until `cond` holds (infinite if not within
    /// [`PHASE_LIMIT`]).
    fn seconds_until(&mut self, cond: impl FnMut(&Network) -> bool) -> f64 {
        let t0 = self.net.elapsed();
        if self.net.run_until(PHASE_LIMIT, cond) {
            (self.net.elapsed() - t0).as_secs_f64()
        } else {
            f64::INFINITY
        }
    }

    fn partition(&mut self) -> PartitionTimes {
        if self.opts.partition <= 0.0 {
            return PartitionTimes::default();
        }
        let running = self.running();
        let cut = ((running.len() as f64 * self.opts.partition) as usize).max(1);
        let mut side: Vec<String> = Vec::new();
        while side.len() < cut {
            if let Some(n) = self.pick_running(&side) {
                side.push(n);
            }
        }
        let refs: Vec<&str> = side.iter().map(String::as_str).collect();
        self.net.partition(&refs);
        let cut = self.watch_partition(&running, &side);
        self.net.heal();
        let total = running.len();
        let healed_s = self.seconds_until(|net| {
            running.iter().all(|n| {
                net.node(n)
                    .is_some_and(|x| x.membership.up_members() == total)
            })
        });
        self.progress(&format!(
            "partition of {}: the rest saw it dead after {}, it saw the rest dead after {}; \
             whole again {} after the heal",
            side.len(),
            secs(cut.rest_sees_cut_s),
            secs(cut.cut_sees_rest_s),
            secs(healed_s)
        ));
        PartitionTimes { healed_s, ..cut }
    }

    /// Runs the partition of `side` from `running` until each side sees the
    /// other dead (or [`PHASE_LIMIT`]), timing each side, with progress.
    ///
    /// Counting a node's members up walks its whole view, so each poll checks
    /// only the nodes whose view was not complete yet, and all of them again
    /// when a side seems done (a view may change back).
    fn watch_partition(&mut self, running: &[String], side: &[String]) -> PartitionTimes {
        let cut_off: BTreeSet<&str> = side.iter().map(String::as_str).collect();
        let (inside, outside) = (side.len(), running.len() - side.len());
        let complete = |net: &Network, n: &str| {
            let want = if cut_off.contains(n) { inside } else { outside };
            net.node(n)
                .is_some_and(|x| x.membership.up_members() == want)
        };
        let t0 = self.net.elapsed();
        let (mut rest_sees_cut_s, mut cut_sees_rest_s) = (f64::INFINITY, f64::INFINITY);
        let mut pending: Vec<&str> = running.iter().map(String::as_str).collect();
        let mut last_report = Instant::now();
        while self.net.elapsed() - t0 < PHASE_LIMIT {
            pending.retain(|n| !complete(&self.net, n));
            let mut cut_pending = pending.iter().filter(|n| cut_off.contains(**n)).count();
            let mut rest_pending = pending.len() - cut_pending;
            let newly_done = (rest_pending == 0 && rest_sees_cut_s.is_infinite())
                || (cut_pending == 0 && cut_sees_rest_s.is_infinite());
            if newly_done {
                pending = running.iter().map(String::as_str).collect();
                pending.retain(|n| !complete(&self.net, n));
                cut_pending = pending.iter().filter(|n| cut_off.contains(**n)).count();
                rest_pending = pending.len() - cut_pending;
            }
            let at = (self.net.elapsed() - t0).as_secs_f64();
            if rest_pending == 0 && rest_sees_cut_s.is_infinite() {
                rest_sees_cut_s = at;
            }
            if cut_pending == 0 && cut_sees_rest_s.is_infinite() {
                cut_sees_rest_s = at;
            }
            if rest_sees_cut_s.is_finite() && cut_sees_rest_s.is_finite() {
                break;
            }
            if self.opts.progress && last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                self.progress(&format!(
                    "partition: {} of {outside} see the cut-off side dead, \
                     {} of {inside} on it see the rest dead",
                    outside - rest_pending,
                    inside - cut_pending
                ));
            }
            self.net.run_for(POLL * 5);
        }
        PartitionTimes {
            detected_s: rest_sees_cut_s.max(cut_sees_rest_s),
            rest_sees_cut_s,
            cut_sees_rest_s,
            healed_s: f64::NAN,
        }
    }

    fn steady(&mut self, max_conn: &mut usize) {
        let end = self.net.elapsed() + self.opts.steady;
        let mut last_report = Instant::now();
        while self.net.elapsed() < end {
            self.net
                .run_for(Duration::from_secs(10).min(end - self.net.elapsed()));
            *max_conn = (*max_conn).max(self.net.max_connections());
            if self.opts.progress && last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                self.progress("steady");
            }
        }
        self.progress(&format!(
            "steady: {} false deaths in all; {} connections at most",
            self.net.stats.deaths_of_running, *max_conn
        ));
    }
}

/// How long the partition phase took to be seen, side by side (NaN when not
/// run; infinite when not within [`PHASE_LIMIT`]).
#[derive(Debug, Clone, Copy)]
struct PartitionTimes {
    detected_s: f64,
    rest_sees_cut_s: f64,
    cut_sees_rest_s: f64,
    healed_s: f64,
}

impl Default for PartitionTimes {
    fn default() -> PartitionTimes {
        PartitionTimes {
            detected_s: f64::NAN,
            rest_sees_cut_s: f64::NAN,
            cut_sees_rest_s: f64::NAN,
            healed_s: f64::NAN,
        }
    }
}

/// The `q` quantile of `values` (infinite if any value never arrived and falls
/// in it; NaN if there are none).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

fn evaluate(r: &ModelReport) -> Vec<Target> {
    targets_for(r.nodes)
        .into_iter()
        .map(|(field, limit)| {
            let found = match field {
                "max_connections_per_node" => r.max_connections_per_node as f64,
                "bytes_per_node_per_s" => r.bytes_per_node_per_s,
                "broadcast_p99_s" => r.broadcast_p99_s,
                "join_converged_s" => r.join_converged_s,
                "dead_detected_p99_s" => r.dead_detected_p99_s,
                _ => r.false_deaths as f64,
            };
            Target {
                field,
                limit,
                found,
                met: found <= limit,
            }
        })
        .collect()
}

/// Peak resident memory of this process (VmHWM), MiB; 0 where unknown.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        let mut w = vec![1.0, f64::INFINITY];
        assert!(percentile(&mut w, 0.99).is_infinite());
    }

    #[test]
    fn a_small_mesh_meets_the_targets_and_the_same_seed_gives_the_same_run() {
        let opts = ModelOptions {
            nodes: 40,
            steady: Duration::from_secs(20),
            quiet: Duration::from_secs(10),
            loss: 0.01,
            ..ModelOptions::default()
        };
        let a = run(opts.clone()).unwrap();
        assert!(a.passed(), "{}", a.to_text());
        // The partition phase is timed side by side; both sides see it.
        let (rest, cut) = (a.partition_rest_sees_cut_s, a.partition_cut_sees_rest_s);
        assert!(rest.is_finite() && cut.is_finite(), "{}", a.to_text());
        assert_eq!(a.partition_detected_s, rest.max(cut));
        assert!(a.to_text().contains("(the rest "), "{}", a.to_text());
        let b = run(opts).unwrap();
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.broadcast_p99_s, b.broadcast_p99_s);
        assert_eq!(a.dead_detected_p99_s, b.dead_detected_p99_s);
    }

    #[test]
    fn a_settled_start_skips_the_cold_start_and_meets_the_targets() {
        let opts = ModelOptions {
            start: Start::Settled,
            nodes: 40,
            steady: Duration::from_secs(10),
            quiet: Duration::from_secs(10),
            loss: 0.01,
            ..ModelOptions::default()
        };
        let r = run(opts).unwrap();
        assert!(r.passed(), "{}", r.to_text());
        assert_eq!(r.start, Start::Settled);
        assert!(r.cold_start_s.is_nan(), "no cold start is run");
        assert!(r.join_converged_s.is_finite());
        assert!(r.to_text().contains("not run (the mesh started settled)"));
    }
}
