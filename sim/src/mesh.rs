//! The simulated mesh: real Shoal nodes — in this process (sharing one
//! simulated network, see [`crate::faults`]) or as `shoal run` child processes —
//! with certificates from a throw-away CA, demo backends, and the faults a
//! scenario asks for. It also observes the nodes (members, routing tables,
//! metrics) the same way in both modes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_proto::membership::View;
use shoal_node::admin::{EndpointView, MemberView, member_state};
use shoal_node::config::{Config, RawConfig, RawHealth, RawListener, RawService, RawTls};
use shoal_node::gossip::crypto::SignatureChecks;
use shoal_node::{Node, StartOptions};
use shoal_pki::{CertificateAuthority, Validity};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::backends::Backend;
use crate::faults::Network;
use crate::scenario::{BackendKind, ListenerProtocol, MeshSpec, ServiceSpec};

/// How nodes run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// All nodes in this process, on one simulated network.
    InProcess,
    /// Each node a `shoal run` child process (this binary).
    Processes {
        /// The `shoal` binary.
        shoal: PathBuf,
    },
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running normally.
    Running,
    /// Frozen.
    Paused,
    /// Stopped abruptly.
    Killed,
    /// Stopped gracefully.
    Stopped,
}

enum Handle {
    InProcess(Box<Node>),
    Process(Child),
}

/// One node of the simulated mesh.
pub struct SimNode {
    /// Name (`n1`, `n2`, ...).
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Life state.
    pub state: NodeState,
    /// Services it hosts.
    pub services: Vec<String>,
    /// Its QUIC address (kept across restarts).
    pub quic: Option<SocketAddr>,
    /// Its admin address.
    pub admin: Option<SocketAddr>,
    /// Listener address per service.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// How many times it was started.
    pub starts: u32,
    handle: Option<Handle>,
    cert_dir: PathBuf,
    data_dir: PathBuf,
    /// Per listener (named after its service): load-balancing policy and protocol.
    listener_lb: BTreeMap<String, (String, ListenerProtocol)>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("name", &self.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The whole simulated mesh.
pub struct Mesh {
    mode: Mode,
    network: Option<Arc<Network>>,
    dir: TempDir,
    ca: CertificateAuthority,
    /// The operator key route documents are signed with (issued by `ca`).
    operator: shoal_pki::OperatorKey,
    spec: MeshSpec,
    order: Vec<String>,
    nodes: BTreeMap<String, SimNode>,
    backends: BTreeMap<(String, String), Backend>,
    seeds: Vec<SocketAddr>,
    /// Signatures found valid by one in-process node, not checked again by the
    /// others: each real node has its own cores, these share two.
    signature_checks: Arc<SignatureChecks>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("mode", &self.mode)
            .field("nodes", &self.order)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// A mesh with no nodes yet: a temporary directory and a CA.
    pub fn new(spec: MeshSpec, mode: Mode, seed: u64) -> Result<Mesh> {
        let dir = tempfile::Builder::new().prefix("shoal-sim-").tempdir()?;
        let ca = CertificateAuthority::create("sim.shoal", Validity::days_from_now(2)?)?;
        let network = matches!(mode, Mode::InProcess).then(|| Network::new(seed));
        let issued = ca.issue_operator("sim-operator", Validity::days_from_now(1)?)?;
        let operator = shoal_pki::OperatorKey::from_pem(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )?;
        Ok(Mesh {
            mode,
            network,
            signature_checks: Arc::default(),
            dir,
            ca,
            operator,
            spec,
            order: Vec::new(),
            nodes: BTreeMap::new(),
            backends: BTreeMap::new(),
            seeds: Vec::new(),
        })
    }

    /// The simulated network (in-process mode).
    pub fn network(&self) -> Option<&Arc<Network>> {
        self.network.as_ref()
    }

    /// Node names in creation order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&SimNode> {
        self.nodes.get(name)
    }

    /// Nodes currently running (not paused, killed or stopped).
    pub fn running(&self) -> Vec<&SimNode> {
        self.order
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .filter(|n| n.state == NodeState::Running)
            .collect()
    }

    /// Adds and starts node `name`.
    pub async fn add(&mut self, name: &str) -> Result<()> {
        let index = self.order.len();
        let zone = self.spec.zones[index % self.spec.zones.len()].clone();
        let hosts = |on: &[String]| on.iter().any(|o| o == "all" || o == name);
        let services: Vec<(String, BackendKind)> = self
            .spec
            .services
            .iter()
            .filter(|s| hosts(&s.on))
            .map(|s| (s.name.clone(), s.kind))
            .collect();
        let listener_lb: BTreeMap<String, (String, ListenerProtocol)> = self
            .spec
            .listeners
            .iter()
            .filter(|l| hosts(&l.on))
            .map(|l| (l.service.clone(), (l.lb.clone(), l.protocol)))
            .collect();
        let names: Vec<String> = services.iter().map(|(s, _)| s.clone()).collect();
        let cert = self
            .ca
            .issue_node(name, &names, Validity::days_from_now(1)?)?;
        let cert_dir = self.dir.path().join(name).join("tls");
        cert.save(&cert_dir, true)?;
        let data_dir = self.dir.path().join(name).join("data");
        for (service, kind) in &services {
            // An HTTP backend answers `<node> <service>`: the report can then
            // tell which service a route sent a request to.
            let ident = match kind {
                crate::scenario::BackendKind::Http => format!("{name} {service}"),
                crate::scenario::BackendKind::Echo => name.to_string(),
            };
            let b = Backend::start(*kind, &ident).await?;
            self.backends.insert((service.clone(), name.to_string()), b);
        }
        self.order.push(name.to_string());
        self.nodes.insert(
            name.to_string(),
            SimNode {
                name: name.to_string(),
                zone,
                state: NodeState::Stopped,
                services: names,
                quic: None,
                admin: None,
                listeners: BTreeMap::new(),
                starts: 0,
                handle: None,
                cert_dir,
                data_dir,
                listener_lb,
            },
        );
        self.start(name).await?;
        if index < self.spec.seeds.max(1)
            && let Some(q) = self.nodes.get(name).and_then(|n| n.quic)
        {
            self.seeds.push(q);
        }
        Ok(())
    }

    fn raw_config(&self, node: &SimNode) -> RawConfig {
        let mut raw = RawConfig::default();
        raw.node.name = Some(node.name.clone());
        raw.node.cluster = Some("sim".into());
        raw.node.zone = Some(node.zone.clone());
        // Every start binds fresh ports: a killed in-process node's old address
        // stays a black hole (as a crashed host would be), and the restarted node
        // finds its peers through its seeds and its data directory.
        raw.node.listen = Some("127.0.0.1:0".into());
        raw.node.admin = Some("127.0.0.1:0".into());
        raw.node.data_dir = Some(node.data_dir.clone());
        let mut seeds: Vec<String> = self
            .seeds
            .iter()
            .filter(|s| Some(**s) != node.quic)
            .map(|s| s.to_string())
            .collect();
        if seeds.is_empty() {
            // The seed itself restarting: any running node will do.
            seeds = self
                .running()
                .iter()
                .filter(|n| n.name != node.name)
                .filter_map(|n| n.quic)
                .take(3)
                .map(|a| a.to_string())
                .collect();
        }
        raw.node.seeds = seeds;
        raw.node.ready_alone = Some(true);
        raw.node.drain_timeout = Some(Duration::from_secs(2));
        raw.tls = Some(RawTls {
            cert: Some(node.cert_dir.join("node.crt")),
            key: Some(node.cert_dir.join("node.key")),
            ca: Some(node.cert_dir.join("ca.crt")),
        });
        raw.gossip.interval = Some(self.spec.gossip_interval);
        let interval = self.spec.health_interval;
        raw.services = node
            .services
            .iter()
            .filter_map(|s| {
                let b = self.backends.get(&(s.clone(), node.name.clone()))?;
                let http = b_kind(&self.spec, s) == BackendKind::Http;
                let max_connections = service_spec(&self.spec, s).and_then(|s| s.max_connections);
                Some(RawService {
                    max_connections,
                    max_connections_per_caller: max_connections,
                    name: Some(s.clone()),
                    address: Some(b.addr().to_string()),
                    protocol: Some(if http { "http" } else { "tcp" }.into()),
                    health: Some(RawHealth {
                        kind: Some(if http { "http" } else { "tcp" }.into()),
                        interval: Some(interval),
                        timeout: Some(interval.min(Duration::from_secs(1))),
                        healthy_threshold: Some(1),
                        unhealthy_threshold: Some(2),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .collect();
        raw.listeners = node
            .listener_lb
            .iter()
            .map(|(service, (lb, protocol))| RawListener {
                name: Some(service.clone()),
                bind: Some("127.0.0.1:0".into()),
                service: Some(service.clone()),
                lb: Some(lb.clone()),
                protocol: Some(protocol.as_str().into()),
                connect_timeout: Some(Duration::from_secs(1)),
                attempts: Some(3),
                ..Default::default()
            })
            .collect();
        raw
    }

    /// Starts (or restarts) a node that is not running.
    pub async fn start(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        if node.handle.is_some() {
            bail!("{name} is already running");
        }
        let raw = self.raw_config(node);
        let (handle, quic, admin, listeners) = match &self.mode {
            Mode::InProcess => {
                let config = Config::validate(raw, self.dir.path())
                    .map_err(|e| anyhow!("config of {name}:\n{e}"))?;
                let network = self
                    .network
                    .as_ref()
                    .ok_or_else(|| anyhow!("in-process mode without a network"))?;
                let socket = network.socket(config.node.listen)?;
                // A rule left on this address by a node killed earlier must not
                // follow the port to a new socket.
                network.resume(socket.addr());
                let started = Node::start(
                    config,
                    StartOptions {
                        socket: Some(socket),
                        signature_checks: Some(self.signature_checks.clone()),
                        ..StartOptions::default()
                    },
                )
                .await
                .with_context(|| format!("starting {name}"))?;
                let bound = started.bound().clone();
                let listeners = bound
                    .listeners
                    .iter()
                    .map(|(n, a)| (n.clone(), *a))
                    .collect();
                (
                    Handle::InProcess(Box::new(started)),
                    bound.quic,
                    bound.admin,
                    listeners,
                )
            }
            Mode::Processes { shoal } => {
                let file = self.dir.path().join(name).join("node.toml");
                std::fs::write(&file, raw.to_toml()?)?;
                spawn_process(shoal, &file, name).await?
            }
        };
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        node.handle = Some(handle);
        let old = node.quic.replace(quic);
        if let Some(old) = old
            && let Some(seed) = self.seeds.iter_mut().find(|s| **s == old)
        {
            *seed = quic;
        }
        node.admin = Some(admin);
        node.listeners = listeners;
        node.state = NodeState::Running;
        node.starts += 1;
        Ok(())
    }

    /// Stops a node abruptly.
    pub async fn kill(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        if node.state == NodeState::Paused {
            self.resume(name).await?;
        }
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        match node.handle.take() {
            Some(Handle::InProcess(n)) => {
                // A crashed host answers nothing: its address goes silent first.
                if let (Some(net), Some(addr)) = (&self.network, node.quic) {
                    net.pause(addr);
                }
                n.kill().await
            }
            Some(Handle::Process(mut c)) => {
                let _ = c.kill().await;
            }
            None => bail!("{name} is not running"),
        }
        node.state = NodeState::Killed;
        Ok(())
    }

    /// Stops a node gracefully.
    pub async fn stop(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        match node.handle.take() {
            Some(Handle::InProcess(n)) => n.shutdown().await,
            Some(Handle::Process(mut c)) => {
                signal(&c, "TERM").await?;
                let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
                let _ = c.kill().await;
            }
            None => bail!("{name} is not running"),
        }
        node.state = NodeState::Stopped;
        Ok(())
    }

    /// Freezes a node.
    pub async fn pause(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        match (&node.handle, &self.network) {
            (Some(Handle::InProcess(_)), Some(net)) => {
                let addr = node.quic.ok_or_else(|| anyhow!("{name} has no address"))?;
                net.pause(addr);
            }
            (Some(Handle::Process(c)), _) => signal(c, "STOP").await?,
            _ => bail!("{name} is not running"),
        }
        node.state = NodeState::Paused;
        Ok(())
    }

    /// Unfreezes a node.
    pub async fn resume(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| anyhow!("no node {name}"))?;
        match (&node.handle, &self.network) {
            (Some(Handle::InProcess(_)), Some(net)) => {
                let addr = node.quic.ok_or_else(|| anyhow!("{name} has no address"))?;
                net.resume(addr);
            }
            (Some(Handle::Process(c)), _) => signal(c, "CONT").await?,
            _ => bail!("{name} is not running"),
        }
        node.state = NodeState::Running;
        Ok(())
    }

    /// Cuts `side` off from every other node.
    pub fn partition(&self, side: &[String]) -> Result<()> {
        let net = self
            .network
            .as_ref()
            .ok_or_else(|| anyhow!("partitions need in-process mode"))?;
        let a: Vec<SocketAddr> = side
            .iter()
            .filter_map(|n| self.nodes.get(n)?.quic)
            .collect();
        let b: Vec<SocketAddr> = self
            .nodes
            .values()
            .filter(|n| !side.contains(&n.name))
            .filter_map(|n| n.quic)
            .collect();
        net.partition(&a, &b);
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<()> {
        self.network
            .as_ref()
            .ok_or_else(|| anyhow!("partitions need in-process mode"))?
            .heal();
        Ok(())
    }

    /// Sets packet loss on a node's links.
    pub fn loss(&self, name: &str, percent: f64) -> Result<()> {
        let net = self
            .network
            .as_ref()
            .ok_or_else(|| anyhow!("loss needs in-process mode"))?;
        let addr = self
            .nodes
            .get(name)
            .and_then(|n| n.quic)
            .ok_or_else(|| anyhow!("{name} has no address"))?;
        net.set_loss(addr, percent / 100.0);
        Ok(())
    }

    /// Makes a backend fail or recover.
    pub async fn set_health(&mut self, service: &str, node: &str, healthy: bool) -> Result<()> {
        let b = self
            .backends
            .get_mut(&(service.to_string(), node.to_string()))
            .ok_or_else(|| anyhow!("{node} does not host {service}"))?;
        b.set_healthy(healthy).await?;
        Ok(())
    }

    /// Listener addresses of `service` on running nodes: (node, address).
    pub fn listeners(&self, service: &str) -> Vec<(String, SocketAddr)> {
        self.running()
            .into_iter()
            .filter_map(|n| Some((n.name.clone(), *n.listeners.get(service)?)))
            .collect()
    }

    /// Nodes hosting `service` (whatever their state).
    pub fn hosts(&self, service: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|n| {
                self.nodes
                    .get(*n)
                    .is_some_and(|x| x.services.iter().any(|s| s == service))
            })
            .cloned()
            .collect()
    }

    /// What `name` reports at `/members`.
    pub async fn members(&self, name: &str) -> Option<Vec<MemberView>> {
        let node = self.nodes.get(name)?;
        match node.handle.as_ref()? {
            Handle::InProcess(n) => Some(n.members().await),
            Handle::Process(_) => get_json(node.admin?, "/members").await.ok(),
        }
    }

    /// What `name` sees of the membership. In process this is the view the
    /// node last published (shared, nothing copied), so polling a large mesh
    /// often stays cheap; in processes mode it is `/members`.
    pub async fn seen(&self, name: &str) -> Option<Seen> {
        let node = self.nodes.get(name)?;
        match node.handle.as_ref()? {
            Handle::InProcess(n) => Some(Seen::View(n.gossip().view())),
            Handle::Process(_) => {
                let mut members: Vec<MemberView> = get_json(node.admin?, "/members").await.ok()?;
                members.sort_by(|a, b| a.name.cmp(&b.name));
                Some(Seen::Members(members))
            }
        }
    }

    /// What `name` reports at `/services`.
    pub async fn services(&self, name: &str) -> Option<BTreeMap<String, Vec<EndpointView>>> {
        let node = self.nodes.get(name)?;
        match node.handle.as_ref()? {
            Handle::InProcess(n) => Some(shoal_node::admin::services_view(&n.table())),
            Handle::Process(_) => get_json(node.admin?, "/services").await.ok(),
        }
    }

    /// Gossip bytes sent by every node so far.
    pub async fn gossip_bytes_sent(&self) -> u64 {
        let mut total = 0;
        for node in self.nodes.values() {
            match &node.handle {
                Some(Handle::InProcess(n)) => {
                    total += n.metrics().gossip.sent_bytes();
                }
                Some(Handle::Process(_)) => {
                    if let Some(admin) = node.admin
                        && let Ok(text) = get_text(admin, "/metrics").await
                    {
                        total +=
                            metric_value(&text, "shoal_gossip_bytes_total{direction=\"sent\"}")
                                .unwrap_or(0);
                    }
                }
                None => {}
            }
        }
        total
    }

    /// The most gossip connections any running node holds now, and that node
    /// (`shoal_gossip_connections`, which each node recounts every 2 s).
    pub async fn max_gossip_connections(&self) -> (u64, String) {
        let mut most = (0, String::new());
        for node in self.nodes.values() {
            let open = match &node.handle {
                Some(Handle::InProcess(n)) => n.metrics().gossip.connections_open(),
                Some(Handle::Process(_)) => match node.admin {
                    Some(admin) => get_text(admin, "/metrics")
                        .await
                        .ok()
                        .and_then(|text| metric_value(&text, "shoal_gossip_connections"))
                        .unwrap_or(0),
                    None => 0,
                },
                None => 0,
            };
            if open > most.0 {
                most = (open, node.name.clone());
            }
        }
        most
    }

    /// Resident memory of the nodes: this process in-process mode, the children's
    /// sum otherwise.
    pub fn rss_bytes(&self) -> u64 {
        match self.mode {
            Mode::InProcess => rss_of("self"),
            Mode::Processes { .. } => self
                .nodes
                .values()
                .filter_map(|n| match &n.handle {
                    Some(Handle::Process(c)) => c.id(),
                    _ => None,
                })
                .map(|pid| rss_of(&pid.to_string()))
                .sum(),
        }
    }

    /// Resident memory of one node's process (processes mode), bytes.
    pub fn node_rss(&self, name: &str) -> Option<u64> {
        match &self.nodes.get(name)?.handle {
            Some(Handle::Process(c)) => Some(rss_of(&c.id()?.to_string())),
            _ => None,
        }
    }

    /// Stops everything.
    pub async fn shutdown(&mut self) {
        let mut stops = Vec::new();
        for node in self.nodes.values_mut() {
            match node.handle.take() {
                Some(Handle::InProcess(n)) => {
                    stops.push(tokio::spawn(async move { n.kill().await }))
                }
                Some(Handle::Process(mut c)) => stops.push(tokio::spawn(async move {
                    let _ = c.kill().await;
                })),
                None => {}
            }
        }
        for s in stops {
            let _ = s.await;
        }
        for b in self.backends.values_mut() {
            b.stop();
        }
    }

    /// The scratch directory (certificates, configs, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn service_spec<'a>(spec: &'a MeshSpec, service: &str) -> Option<&'a ServiceSpec> {
    spec.services.iter().find(|s| s.name == service)
}

fn b_kind(spec: &MeshSpec, service: &str) -> BackendKind {
    service_spec(spec, service).map_or(BackendKind::Echo, |s| s.kind)
}

fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn signal(child: &Child, sig: &str) -> Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the process has exited"))?;
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

type Spawned = (Handle, SocketAddr, SocketAddr, BTreeMap<String, SocketAddr>);

async fn spawn_process(shoal: &Path, config: &Path, name: &str) -> Result<Spawned> {
    let mut child = Command::new(shoal)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("SHOAL_SIM_NODE_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} for {name}", shoal.display()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr from {name}"))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut listeners = BTreeMap::new();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &v["fields"];
            match fields["message"].as_str() {
                Some("listening") => {
                    if let (Some(l), Some(b)) =
                        (fields["listener"].as_str(), fields["bind"].as_str())
                    {
                        listeners.insert(l.to_string(), b.parse()?);
                    }
                }
                Some("node started") => {
                    let quic: SocketAddr = fields["quic"]
                        .as_str()
                        .ok_or_else(|| anyhow!("no quic field"))?
                        .parse()?;
                    let admin: SocketAddr = fields["admin"]
                        .as_str()
                        .and_then(|a| a.strip_prefix("http://"))
                        .and_then(|a| a.strip_suffix('/'))
                        .ok_or_else(|| anyhow!("no admin field"))?
                        .parse()?;
                    return Ok::<_, anyhow::Error>((quic, admin));
                }
                _ => {}
            }
        }
        bail!("{name} exited before it started (see its config in the scratch directory)")
    };
    let (quic, admin) = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| anyhow!("{name} did not start within 30 s"))??;
    // Keep draining the log so the child never blocks on a full pipe; with
    // SHOAL_SIM_NODE_LOGS set, pass it on, prefixed with the node's name.
    let echo = std::env::var_os("SHOAL_SIM_NODE_LOGS").is_some();
    let prefix = name.to_string();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("{prefix}: {line}");
            }
        }
    });
    Ok((Handle::Process(child), quic, admin, listeners))
}

impl Mesh {
    /// Signs `spec` with the mesh's operator key, applies it through the first
    /// running node's admin API, and waits until every running node has it in
    /// force (bounded).
    pub async fn apply_route(&self, spec: &mesh_proto::route::RouteSpec) -> Result<()> {
        let signed = self.operator.sign_route(spec)?;
        let body = serde_json::to_vec(&shoal_node::routes::ApplyRequest::new(&signed))?;
        let admins: Vec<SocketAddr> = self
            .order
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .filter(|n| n.state == NodeState::Running)
            .filter_map(|n| n.admin)
            .collect();
        let first = *admins
            .first()
            .ok_or_else(|| anyhow!("no running node to apply the route through"))?;
        let answer = post_text(first, "/routes", body).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for admin in admins {
            loop {
                let routes: Vec<serde_json::Value> =
                    get_json(admin, "/routes").await.unwrap_or_default();
                let in_force = routes.iter().any(|r| {
                    r["name"] == spec.name.as_str() && r["issued_at_ms"] == spec.issued_at_ms
                });
                if in_force {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "route {} not in force at {admin} within 20 s (apply answered: {answer})",
                        spec.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

/// POSTs `body` (JSON) to `path` of an admin API; the answer's body, or an
/// error naming the status.
async fn post_text(addr: SocketAddr, path: &str, body: Vec<u8>) -> Result<String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let status = resp.status();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    if !status.is_success() {
        bail!("POST {path} answered {status}: {text}");
    }
    Ok(text)
}

async fn get_text(addr: SocketAddr, path: &str) -> Result<String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> Result<T> {
    Ok(serde_json::from_str(&get_text(addr, path).await?)?)
}

/// What one node sees of the membership (see [`Mesh::seen`]): every member it
/// holds, by name, with its state as the admin API names it (`alive`,
/// `suspect`, `draining`, `dead`).
#[derive(Debug)]
pub enum Seen {
    /// An in-process node's published view.
    View(Arc<View>),
    /// A child process's `/members`, sorted by name.
    Members(Vec<MemberView>),
}

impl Seen {
    /// The state of `member`, if held.
    pub fn state(&self, member: &str) -> Option<&str> {
        match self {
            Seen::View(v) => v
                .members
                .binary_search_by(|m| m.name.as_str().cmp(member))
                .ok()
                .map(|i| member_state(&v.members[i])),
            Seen::Members(ms) => ms
                .binary_search_by(|m| m.name.as_str().cmp(member))
                .ok()
                .map(|i| ms[i].state.as_str()),
        }
    }

    /// Whether `member` is held and alive.
    pub fn alive(&self, member: &str) -> bool {
        self.state(member) == Some("alive")
    }

    /// Those of `names` (in name order, as a `BTreeSet` gives them) that this
    /// node does not hold alive. One walk over both lists: a watcher of a large
    /// mesh asks this of every node for every node, and a search per name (a
    /// cache miss at each step through a view of large entries) took most of
    /// the CPU of 450 in-process nodes' steady period.
    pub fn not_alive<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut alive = self.alive_members().peekable();
        let mut out = Vec::new();
        for name in names {
            while alive.next_if(|a| *a < name).is_some() {}
            if alive.next_if(|a| *a == name).is_none() {
                out.push(name);
            }
        }
        out
    }

    /// The members held alive, by name.
    pub fn alive_members(&self) -> Box<dyn Iterator<Item = &str> + Send + '_> {
        match self {
            Seen::View(v) => Box::new(
                v.members
                    .iter()
                    .filter(|m| member_state(m) == "alive")
                    .map(|m| m.name.as_str()),
            ),
            Seen::Members(ms) => Box::new(
                ms.iter()
                    .filter(|m| m.state == "alive")
                    .map(|m| m.name.as_str()),
            ),
        }
    }
}

/// The value of the sample `series` (name and labels, as printed) in a Prometheus
/// text exposition, as a whole number.
fn metric_value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn member(name: &str, state: &str) -> MemberView {
        MemberView {
            name: name.into(),
            state: state.into(),
            accused_by: vec![],
            address: String::new(),
            zone: String::new(),
            generation: 1,
            last_heard_ms: None,
            version: String::new(),
            is_self: false,
        }
    }

    #[test]
    fn not_alive_names_exactly_those_not_held_alive_in_one_walk() {
        let seen = Seen::Members(vec![
            member("n1", "alive"),
            member("n10", "suspect"),
            member("n2", "alive"),
            member("n4", "dead"),
            member("n5", "alive"),
        ]);
        let asked: BTreeSet<&str> = ["n1", "n10", "n2", "n3", "n4", "n5", "n6"].into();
        assert_eq!(
            seen.not_alive(asked.iter().copied()),
            vec!["n10", "n3", "n4", "n6"]
        );
        for name in &asked {
            assert_eq!(
                seen.not_alive([*name]).is_empty(),
                seen.alive(name),
                "{name}"
            );
        }
        assert!(seen.not_alive([]).is_empty());
    }
}
