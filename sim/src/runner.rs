//! Runs a scenario: starts the mesh, executes the steps in order, measures how
//! the mesh reacts to each event (by polling every node's members and routing
//! table), drives traffic, checks expectations, and builds the report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{RwLock, watch};
use tokio::task::JoinHandle;

use crate::mesh::{Mesh, Mode};
use crate::report::{Expectation, Phase, QuietCost, Report, Timing};
use crate::scenario::{BackendKind, Condition, Scenario, Step};
use crate::traffic::{Generator, Record, Stats, Summary};

mod steps;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// In-process or child processes.
    pub mode: Mode,
    /// Show a live status line (on a terminal).
    pub live: bool,
    /// Without a live line (stderr is not a terminal), print each event and
    /// each consequence as a plain line on stderr.
    pub notes: bool,
}

type Shared = Arc<RwLock<Mesh>>;
type Timings = Arc<Mutex<Vec<Timing>>>;
type MostConnections = Arc<Mutex<(u64, String)>>;

/// Keeps `sample` in `most` if it has more connections.
fn keep_most(most: &MostConnections, sample: (u64, String)) {
    let mut most = most.lock().unwrap_or_else(|e| e.into_inner());
    if sample.0 > most.0 {
        *most = sample;
    }
}

/// The state of one run.
struct Run {
    mesh: Shared,
    epoch: Instant,
    stats: Arc<Stats>,
    timings: Timings,
    watchers: Vec<JoinHandle<()>>,
    targets: HashMap<String, watch::Sender<Vec<(String, SocketAddr)>>>,
    generators: HashMap<String, Generator>,
    kinds: HashMap<String, BackendKind>,
    faults: Vec<(Duration, Vec<String>)>,
    /// Where each phase of the run began (`steady` at the start), for the
    /// report's requests by phase.
    phase_marks: Vec<(Duration, String)>,
    expectations: Vec<Expectation>,
    errors: Vec<String>,
    poll: Duration,
    max_nodes: usize,
    false_deaths: u64,
    quiet: Option<QuietCost>,
    /// The most gossip connections one node held, and that node, as sampled by
    /// [`spawn_connection_sampler`].
    max_connections: MostConnections,
    bar: ProgressBar,
    /// Print notes as plain lines when there is no live line.
    notes: bool,
}

/// How often the runner polls every node: often in a small mesh, and in a
/// large one rarely enough that watching it costs little of the machine the
/// nodes share (1 ms per node: 1 s at 1,000).
fn poll_interval(nodes: usize) -> Duration {
    match nodes {
        0..=20 => Duration::from_millis(50),
        21..=200 => Duration::from_millis(200),
        n => Duration::from_millis(n as u64),
    }
}

fn since(epoch: Instant) -> f64 {
    epoch.elapsed().as_secs_f64()
}

/// Runs `scenario` and returns its report.
pub async fn run(scenario: &Scenario, options: RunOptions) -> Result<Report> {
    refuse_network_faults_in_processes(scenario, &options.mode)?;
    let mesh = Mesh::new(scenario.mesh.clone(), options.mode.clone(), scenario.seed)?;
    let mut run = Run::new(scenario, mesh, progress_bar(options.live), options.notes);
    let status = spawn_status(
        run.mesh.clone(),
        run.stats.clone(),
        run.epoch,
        run.bar.clone(),
    );
    let sampler = spawn_connection_sampler(run.mesh.clone(), run.max_connections.clone());
    run.start_nodes(scenario, &options.mode).await;
    if run.errors.is_empty() {
        for (i, step) in scenario.steps.iter().enumerate() {
            if let Err(e) = run.step(i, step).await {
                run.errors.push(format!("step[{i}]: {e:#}"));
                break;
            }
        }
    }
    let finished = run.epoch.elapsed();
    sampler.abort();
    let last = run.mesh.read().await.max_gossip_connections().await;
    keep_most(&run.max_connections, last);
    let report = run.finish(scenario, &options, finished).await;
    status.abort();
    Ok(report)
}

/// Partitions and packet loss act on the simulated network, which only the
/// in-process mode has.
fn refuse_network_faults_in_processes(scenario: &Scenario, mode: &Mode) -> Result<()> {
    if !matches!(mode, Mode::Processes { .. }) {
        return Ok(());
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        if matches!(
            step,
            Step::Partition { .. } | Step::Heal | Step::Loss { .. }
        ) {
            bail!(
                "step[{i}]: partitions and packet loss act on the simulated network, which only exists in in-process mode; run without --processes"
            );
        }
    }
    Ok(())
}

/// The live progress line, or a hidden one.
fn progress_bar(live: bool) -> ProgressBar {
    if !live {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// Prints `what` at the current run time: above the live line, or (no live
/// line, `notes` on) as a plain line on stderr, so a log or CI shows progress.
fn say_note(bar: &ProgressBar, notes: bool, epoch: Instant, what: &str) {
    let line = format!("[{:>7.1}s] {what}", since(epoch));
    if !bar.is_hidden() {
        bar.println(line);
    } else if notes {
        eprintln!("{line}");
    }
}

/// The topology in words: which nodes host each service and which call it.
fn topology(scenario: &Scenario) -> Vec<String> {
    let mut out = Vec::new();
    for s in &scenario.mesh.services {
        let kind = match s.kind {
            BackendKind::Echo => "TCP echo",
            BackendKind::Http => "HTTP",
        };
        out.push(format!(
            "{} ({kind}) is hosted on {}",
            s.name,
            s.on.join(", ")
        ));
    }
    for l in &scenario.mesh.listeners {
        out.push(format!(
            "{} is called through {} listeners on {} ({}); the report counts every request",
            l.service,
            l.protocol.as_str(),
            l.on.join(", "),
            l.lb
        ));
    }
    out
}

impl Run {
    /// A run of `scenario` on `mesh`, nothing started yet.
    fn new(scenario: &Scenario, mesh: Mesh, bar: ProgressBar, notes: bool) -> Run {
        let mut targets = HashMap::new();
        for l in &scenario.mesh.listeners {
            let (tx, _) = watch::channel(Vec::new());
            targets.entry(l.service.clone()).or_insert(tx);
        }
        Run {
            mesh: Arc::new(RwLock::new(mesh)),
            epoch: Instant::now(),
            stats: Arc::new(Stats::default()),
            timings: Arc::default(),
            watchers: Vec::new(),
            targets,
            generators: HashMap::new(),
            kinds: scenario
                .mesh
                .services
                .iter()
                .map(|s| (s.name.clone(), s.kind))
                .collect(),
            faults: Vec::new(),
            phase_marks: vec![(Duration::ZERO, "steady".to_string())],
            expectations: Vec::new(),
            errors: Vec::new(),
            poll: poll_interval(scenario.most_nodes()),
            max_nodes: 0,
            false_deaths: 0,
            quiet: None,
            max_connections: Arc::default(),
            bar,
            notes,
        }
    }

    /// Starts the scenario's initial nodes and notes how long they took.
    async fn start_nodes(&mut self, scenario: &Scenario, mode: &Mode) {
        self.note(&format!(
            "starting {} nodes ({})",
            scenario.mesh.nodes,
            match mode {
                Mode::InProcess => "in-process",
                Mode::Processes { .. } => "processes",
            }
        ));
        for line in topology(scenario) {
            self.note(&line);
        }
        let start = self.epoch.elapsed();
        for name in scenario.initial_nodes() {
            if let Err(e) = self.mesh.write().await.add(&name).await {
                self.errors.push(format!("starting {name}: {e:#}"));
            }
        }
        self.max_nodes = scenario.mesh.nodes;
        self.refresh_targets().await;
        self.timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Timing {
                event: format!("started {} nodes", scenario.mesh.nodes),
                at_s: start.as_secs_f64(),
                what: "all running".into(),
                after_s: Some((self.epoch.elapsed() - start).as_secs_f64()),
            });
    }

    fn note(&self, what: &str) {
        say_note(&self.bar, self.notes, self.epoch, what);
    }

    async fn refresh_targets(&self) {
        let mesh = self.mesh.read().await;
        for (service, tx) in &self.targets {
            tx.send_replace(mesh.listeners(service));
        }
    }

    /// Starts a watcher that measures how long until `cond` holds.
    fn watch<F, Fut>(&mut self, event: String, what: &str, bound: Duration, cond: F)
    where
        F: Fn(Shared) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let at = self.epoch.elapsed();
        let index = {
            let mut t = self.timings.lock().unwrap_or_else(|e| e.into_inner());
            t.push(Timing {
                event,
                at_s: at.as_secs_f64(),
                what: what.to_string(),
                after_s: None,
            });
            t.len() - 1
        };
        let mesh = self.mesh.clone();
        let timings = self.timings.clone();
        let poll = self.poll;
        let epoch = self.epoch;
        let (bar, notes) = (self.bar.clone(), self.notes);
        self.watchers.push(tokio::spawn(async move {
            let deadline = Instant::now() + bound;
            while Instant::now() < deadline {
                if cond(mesh.clone()).await {
                    let after = epoch.elapsed().saturating_sub(at);
                    if let Some(t) = timings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(index)
                    {
                        t.after_s = Some(after.as_secs_f64());
                        let consequence = format!(
                            "  -> {}: {} after {:.2} s",
                            t.event,
                            t.what,
                            after.as_secs_f64()
                        );
                        say_note(&bar, notes, epoch, &consequence);
                    }
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        }));
    }

    /// Records now as the time of the watched `event`, if not recorded yet.
    fn settle(&self, event: &str) {
        let now = self.epoch.elapsed().as_secs_f64();
        let said = {
            let mut t = self.timings.lock().unwrap_or_else(|e| e.into_inner());
            t.iter_mut()
                .rev()
                .find(|t| t.event == event && t.after_s.is_none())
                .map(|t| {
                    let after = (now - t.at_s).max(0.0);
                    t.after_s = Some(after);
                    format!("  -> {}: {} after {after:.2} s", t.event, t.what)
                })
        };
        if let Some(line) = said {
            self.note(&line);
        }
    }

    async fn wait_until(&mut self, cond: Condition, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let healthy = cond == Condition::Healthy;
        while start.elapsed() < timeout {
            if converged(&*self.mesh.read().await, healthy).await {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(self.poll).await;
        }
        let why = divergence(&*self.mesh.read().await, healthy)
            .await
            .unwrap_or_else(|| "(it just did)".into());
        bail!(
            "the mesh did not become {} within {:?}: {why}",
            if healthy { "healthy" } else { "converged" },
            timeout
        )
    }

    /// Polls every running node for `duration` and counts each time a running
    /// node starts being seen not alive by another running node.
    async fn watch_steady(&self, duration: Duration) -> u64 {
        let end = Instant::now() + duration;
        let mut down: BTreeSet<(String, String)> = BTreeSet::new();
        let mut events = 0;
        while Instant::now() < end {
            let mesh = self.mesh.read().await;
            let running: BTreeSet<String> = mesh.running().iter().map(|n| n.name.clone()).collect();
            let mut now_down = BTreeSet::new();
            for observer in &running {
                let Some(seen) = mesh.seen(observer).await else {
                    continue;
                };
                for observed in seen.not_alive(running.iter().map(String::as_str)) {
                    now_down.insert((observer.clone(), observed.to_string()));
                }
            }
            drop(mesh);
            events += now_down.difference(&down).count() as u64;
            down = now_down;
            tokio::time::sleep(self.poll).await;
        }
        events
    }

    async fn finish(
        mut self,
        scenario: &Scenario,
        options: &RunOptions,
        finished: Duration,
    ) -> Report {
        self.wind_down().await;
        let records = self.stats.records();
        let timings = self.timings_with_traffic(&records, finished).await;
        let (most_connections, most_connected) = self
            .max_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mesh = self.mesh.read().await;
        let gossip = mesh.gossip_bytes_sent().await as f64;
        let node_seconds = (self.max_nodes.max(1) as f64) * finished.as_secs_f64().max(0.001);
        let report = Report {
            scenario: scenario.name.clone(),
            mode: match options.mode {
                Mode::InProcess => "in-process".into(),
                Mode::Processes { .. } => "processes".into(),
            },
            nodes: self.max_nodes,
            duration_s: finished.as_secs_f64(),
            timings,
            requests: Summary::of(records.iter()),
            phases: phases(&records, &self.phase_marks, finished),
            by_service: by_service(&records),
            gossip_bytes_per_node_per_s: gossip / node_seconds,
            rss_mib: mesh.rss_bytes() as f64 / (1024.0 * 1024.0),
            datagrams_dropped: mesh.network().map(|n| n.stats().dropped()).unwrap_or(0),
            resolution_ms: self.poll.as_millis() as u64,
            false_deaths: self.false_deaths,
            quiet: self.quiet.take(),
            max_connections_per_node: most_connections,
            max_connections_node: most_connected,
            expectations: std::mem::take(&mut self.expectations),
            errors: std::mem::take(&mut self.errors),
        };
        drop(mesh);
        self.bar.finish_and_clear();
        self.mesh.write().await.shutdown().await;
        report
    }

    /// Stops the traffic, lets requests in flight finish (each is bounded by
    /// its own timeout) and pending watchers a moment, then stops them.
    async fn wind_down(&mut self) {
        for (_, g) in self.generators.drain() {
            g.stop();
        }
        let mut last = usize::MAX;
        for _ in 0..60 {
            let n = self.stats.records().len();
            if n == last {
                break;
            }
            last = n;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in &self.watchers {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !w.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            w.abort();
        }
    }

    /// The timings noted during the run, with when traffic moved away from
    /// each fault and back, in order.
    async fn timings_with_traffic(&self, records: &[Record], finished: Duration) -> Vec<Timing> {
        let mut timings = self
            .timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        timings.extend(traffic_moved(
            records,
            &self.faults,
            &self.mesh.read().await.hosts_map(),
            finished,
        ));
        timings.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        timings
    }
}

/// The requests' summary per service.
fn by_service(records: &[Record]) -> BTreeMap<String, Summary> {
    let services: BTreeSet<&str> = records.iter().map(|r| r.service.as_str()).collect();
    services
        .into_iter()
        .map(|svc| {
            (
                svc.to_string(),
                Summary::of(records.iter().filter(|r| r.service == svc)),
            )
        })
        .collect()
}

/// The requests of each phase, per service; phases without requests are left
/// out. A request counts in the phase in which it *ended* (its outcome
/// known): one in flight when a fault began — a TCP connection whose serving
/// node is killed mid-exchange — is counted after the fault, whose doing its
/// outcome is, not in the quiet phase before it.
fn phases(records: &[Record], marks: &[(Duration, String)], end: Duration) -> Vec<Phase> {
    let mut out = Vec::new();
    for (i, (from, name)) in marks.iter().enumerate() {
        let to = marks.get(i + 1).map_or(end, |m| m.0);
        let ended = |r: &&Record| {
            let at = r.at + r.latency;
            at >= *from && (at < to || i + 1 == marks.len())
        };
        let inside: Vec<&Record> = records.iter().filter(ended).collect();
        if inside.is_empty() {
            continue;
        }
        let services: std::collections::BTreeSet<&str> =
            inside.iter().map(|r| r.service.as_str()).collect();
        out.push(Phase {
            name: name.clone(),
            from_s: from.as_secs_f64(),
            to_s: to.as_secs_f64(),
            requests: Summary::of(inside.iter().copied()),
            by_service: services
                .into_iter()
                .map(|svc| {
                    let of = inside.iter().copied().filter(|r| r.service == svc);
                    (svc.to_string(), Summary::of(of))
                })
                .collect(),
        });
    }
    out
}

/// For each fault that took nodes hosting a service away: how long until requests
/// to it stopped failing or stalling (slower than 10× the median of the 10 s
/// before the fault, and at least 100 ms) — counting requests that started and
/// ended before the next fault.
fn traffic_moved(
    records: &[Record],
    faults: &[(Duration, Vec<String>)],
    hosts: &HashMap<String, BTreeSet<String>>,
    end: Duration,
) -> Vec<Timing> {
    let mut out = Vec::new();
    for (i, (at, nodes)) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map(|f| f.0).unwrap_or(end);
        let services: BTreeSet<&String> = hosts
            .iter()
            .filter(|(_, h)| nodes.iter().any(|n| h.contains(n)))
            .map(|(s, _)| s)
            .collect();
        for service in services {
            let of_service = |r: &&Record| r.service == *service;
            let before = Summary::of(
                records
                    .iter()
                    .filter(of_service)
                    .filter(|r| r.at < *at && r.at + Duration::from_secs(10) >= *at),
            );
            let after: Vec<&Record> = records
                .iter()
                .filter(of_service)
                .filter(|r| r.at >= *at && r.at < until)
                .collect();
            if after.is_empty() {
                continue;
            }
            let slow = Duration::from_secs_f64((before.p50_ms * 10.0 / 1000.0).max(0.1));
            // A bad request still running when the next fault began cannot be
            // told apart from one that fault caused: it is left out.
            let last_bad = after
                .iter()
                .filter(|r| r.failure.is_some() || r.latency > slow)
                .filter(|r| r.at + r.latency <= until)
                .map(|r| r.at + r.latency)
                .max();
            out.push(Timing {
                event: format!("{} gone ({service})", nodes.join(",")),
                at_s: at.as_secs_f64(),
                what: "requests clean again".into(),
                after_s: Some(
                    last_bad
                        .map(|t| t.saturating_sub(*at).as_secs_f64())
                        .unwrap_or(0.0),
                ),
            });
        }
    }
    out
}

/// Every running node sees exactly the running nodes alive, and exactly the
/// endpoints hosted on running nodes (all healthy, with `healthy`).
pub async fn converged(mesh: &Mesh, healthy: bool) -> bool {
    divergence(mesh, healthy).await.is_none()
}

/// Why the mesh is not [`converged`]: the first node found that sees it
/// otherwise, and what it sees; `None` once converged.
async fn divergence(mesh: &Mesh, healthy: bool) -> Option<String> {
    let running: BTreeSet<String> = mesh.running().iter().map(|n| n.name.clone()).collect();
    for name in &running {
        let Some(seen) = mesh.seen(name).await else {
            return Some(format!("{name} does not answer"));
        };
        if !seen.alive_members().eq(running.iter().map(String::as_str)) {
            let alive: BTreeSet<&str> = seen.alive_members().collect();
            let missing: Vec<String> = running
                .iter()
                .filter(|r| !alive.contains(r.as_str()))
                .take(5)
                .map(|r| format!("{r} ({})", seen.state(r).unwrap_or("unknown")))
                .collect();
            let extra: Vec<&str> = alive
                .iter()
                .filter(|a| !running.contains(**a))
                .take(5)
                .copied()
                .collect();
            return Some(format!(
                "{name} sees {} of {} running nodes alive; not alive: {}; alive but not running: {}",
                alive.len() - extra.len(),
                running.len(),
                missing.join(", "),
                extra.join(", ")
            ));
        }
        let Some(services) = mesh.services(name).await else {
            return Some(format!("{name} does not answer"));
        };
        for (service, hosts) in mesh.hosts_map() {
            let want: BTreeSet<&String> = hosts.iter().filter(|h| running.contains(*h)).collect();
            let eps = services.get(&service).map(Vec::as_slice).unwrap_or(&[]);
            let have: BTreeSet<&String> = eps.iter().map(|e| &e.node).collect();
            if have != want {
                return Some(format!("{name} routes {service} to {have:?}, not {want:?}"));
            }
            if healthy && let Some(e) = eps.iter().find(|e| e.health != "healthy") {
                return Some(format!("{name} sees {service} on {} {}", e.node, e.health));
            }
        }
    }
    None
}

/// No running node sees `node` alive or routes to it.
async fn gone_everywhere(mesh: &Mesh, node: &str) -> bool {
    for n in mesh.running() {
        if n.name == node {
            continue;
        }
        let (Some(seen), Some(services)) = (mesh.seen(&n.name).await, mesh.services(&n.name).await)
        else {
            return false;
        };
        if seen.alive(node) {
            return false;
        }
        if services.values().flatten().any(|e| e.node == node) {
            return false;
        }
    }
    true
}

/// Every running node sees every one of `nodes` alive.
async fn alive_everywhere(mesh: &Mesh, nodes: &[String]) -> bool {
    let mut sorted: Vec<&str> = nodes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    for n in mesh.running() {
        let Some(seen) = mesh.seen(&n.name).await else {
            return false;
        };
        if !seen.not_alive(sorted.iter().copied()).is_empty() {
            return false;
        }
    }
    true
}

/// Each side of a partition sees every running node of the other side dead.
async fn partition_seen(mesh: &Mesh, side: &[String]) -> bool {
    let running: Vec<String> = mesh.running().iter().map(|n| n.name.clone()).collect();
    for n in &running {
        let inside = side.contains(n);
        let Some(seen) = mesh.seen(n).await else {
            return false;
        };
        let others_alive = seen
            .alive_members()
            .any(|m| running.iter().any(|r| r == m) && side.iter().any(|s| s == m) != inside);
        if others_alive {
            return false;
        }
    }
    true
}

/// The endpoint of `service` on `node` has `state` in the routing table of its
/// own node (`own`) or of every running node.
async fn health_seen(mesh: &Mesh, service: &str, node: &str, state: &str, own: bool) -> bool {
    let names: Vec<String> = if own {
        vec![node.to_string()]
    } else {
        mesh.running().iter().map(|n| n.name.clone()).collect()
    };
    for n in names {
        let Some(services) = mesh.services(&n).await else {
            return false;
        };
        let ok = services
            .get(service)
            .is_some_and(|eps| eps.iter().any(|e| e.node == node && e.health == state));
        if !ok {
            return false;
        }
    }
    true
}

/// How often [`spawn_connection_sampler`] looks at every node's gossip
/// connections (the nodes recount them every few seconds themselves).
const CONNECTION_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples the gossip connections of every running node for the whole run and
/// keeps the most any one node held.
fn spawn_connection_sampler(mesh: Shared, most: MostConnections) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CONNECTION_SAMPLE_EVERY).await;
            let now = mesh.read().await.max_gossip_connections().await;
            keep_most(&most, now);
        }
    })
}

fn spawn_status(
    mesh: Shared,
    stats: Arc<Stats>,
    epoch: Instant,
    bar: ProgressBar,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if bar.is_hidden() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = epoch.elapsed();
            let recent = stats.summary(now.saturating_sub(Duration::from_secs(2)), now);
            let (running, alive) = {
                let m = mesh.read().await;
                let running = m.running();
                let first = running.first().map(|n| n.name.clone());
                let alive = match first {
                    Some(f) => m
                        .seen(&f)
                        .await
                        .map(|seen| seen.alive_members().count())
                        .unwrap_or(0),
                    None => 0,
                };
                (running.len(), alive)
            };
            bar.set_message(format!(
                "t={:>5.1}s  nodes running {running}, alive as seen by the first: {alive}  |  last 2 s: {:.0} ok/s, {:.0} failed/s, p50 {:.1} ms, p99 {:.1} ms",
                now.as_secs_f64(),
                recent.ok as f64 / 2.0,
                recent.failed as f64 / 2.0,
                recent.p50_ms,
                recent.p99_ms,
            ));
        }
    })
}

impl Mesh {
    /// Service → the nodes hosting it.
    pub fn hosts_map(&self) -> HashMap<String, BTreeSet<String>> {
        let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
        for name in self.names() {
            if let Some(n) = self.node(name) {
                for s in &n.services {
                    out.entry(s.clone()).or_default().insert(name.clone());
                }
            }
        }
        out
    }
}

/// User + system CPU time of this process so far, in milliseconds (Linux).
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Some((utime + stime) * 1000.0 / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at_ms: u64, took_ms: u64, failure: Option<&'static str>) -> Record {
        Record {
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(took_ms),
            service: "echo".into(),
            via: "n3".into(),
            served_by: failure.is_none().then(|| "n1".to_string()),
            served_service: None,
            failure,
        }
    }

    #[test]
    fn a_request_in_flight_when_a_fault_begins_counts_after_the_fault() {
        let marks = [
            (Duration::ZERO, "steady".to_string()),
            (Duration::from_secs(6), "after kill n1".to_string()),
        ];
        let records = [
            request(1_000, 1, None),
            // Started just before the kill, timed out 5 s later.
            request(5_999, 5_000, Some("timeout")),
            request(7_000, 1, None),
            // Ends after the last mark: still the last phase.
            request(11_000, 20_000, None),
        ];
        let p = phases(&records, &marks, Duration::from_secs(12));
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].requests.sent, p[0].requests.failed), (1, 0));
        assert_eq!((p[1].requests.sent, p[1].requests.failed), (3, 1));
    }

    #[test]
    fn the_demo_says_who_hosts_and_who_calls_each_service() {
        let text = include_str!("../scenarios/demo.toml");
        let demo = Scenario::parse(text, "demo.toml").unwrap();
        assert_eq!(
            topology(&demo),
            [
                "echo (TCP echo) is hosted on n1, n2, n5",
                "web (HTTP) is hosted on n1, n2, n5",
                "web-canary (HTTP) is hosted on n2, n5",
                "echo is called through tcp listeners on n3, n4 (round_robin); the report counts every request",
                "web is called through http listeners on n3, n4 (least_request); the report counts every request",
            ]
        );
    }
}
