//! A mesh of test nodes built in one expression: [`Cluster::new`] (or
//! [`Cluster::of`] for named specs) returns a [`ClusterBuilder`]; its `start`
//! issues the certificates from one throw-away CA and starts the nodes, the
//! first one being every other's seed. The cluster then answers the questions
//! scenarios ask (`wait_converged`, `wait_healthy`, `client`) and makes the
//! faults they need (`kill`, `partition`, `heal`, `pause`), so a test reads as
//! the scenario it checks.
//!
//! ```ignore
//! let web = TcpBackend::start().await;
//! let mut mesh = Cluster::new(3)
//!     .with_service("n1", "web", web.addr(), Check::Tcp)
//!     .with_listener("n3", "web", "web", "round_robin")
//!     .start()
//!     .await;
//! mesh.wait_healthy("n3", "web", 1).await;
//! let addr = mesh.client("n3", "web");
//! mesh.kill("n1").await;
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_node::StartOptions;
use shoal_sim::faults::Network;

use crate::web::WebApp;
use crate::{Check, NodeSpec, Pki, TestNode, eventually};

/// What a cluster is to be: its nodes' specs, its CA, and whether its nodes'
/// packets go through a fault-injecting network.
pub struct ClusterBuilder {
    pki: Option<Pki>,
    specs: Vec<NodeSpec>,
    faults: Option<u64>,
}

/// What a stopped node ran from: its spec (seeds included) and files.
pub struct Stopped {
    /// Its spec (edit it to start it differently).
    pub spec: NodeSpec,
    /// Its certificate directory.
    pub cert_dir: std::path::PathBuf,
    /// Its data directory (kept while this lives).
    pub data_dir: Arc<tempfile::TempDir>,
}

/// Running test nodes of one mesh, in start order.
pub struct Cluster {
    /// The mesh CA (to issue more certificates, operators' included).
    pub pki: Pki,
    nodes: Vec<TestNode>,
    net: Option<Arc<Network>>,
}

impl Cluster {
    /// `n` nodes named `n1` … `nN`, with no services yet; `n1` is the seed.
    /// (A builder: `Cluster::new(3).with_service(..).start()` reads as the mesh.)
    #[allow(clippy::new_ret_no_self)]
    pub fn new(n: usize) -> ClusterBuilder {
        Cluster::of((1..=n).map(|i| NodeSpec::new(&format!("n{i}"))))
    }

    /// The usual HTTP mesh: nodes `a` and `b` serve `web` from the web apps
    /// `app-a` and `app-b` (returned, to be kept alive), and `c` calls it
    /// through an HTTP listener `web`; each spec goes through `tweak`.
    pub async fn web_pair(tweak: impl Fn(NodeSpec) -> NodeSpec) -> ([WebApp; 2], ClusterBuilder) {
        let apps = [WebApp::start("app-a").await, WebApp::start("app-b").await];
        let builder = Cluster::of([
            tweak(NodeSpec::new("a").service("web", apps[0].addr(), Check::Http)),
            tweak(NodeSpec::new("b").service("web", apps[1].addr(), Check::Http)),
            tweak(NodeSpec::new("c").http_listener("web", Some("web"))),
        ]);
        (apps, builder)
    }

    /// Nodes from `specs`; the first is every other's seed.
    pub fn of(specs: impl IntoIterator<Item = NodeSpec>) -> ClusterBuilder {
        ClusterBuilder {
            pki: None,
            specs: specs.into_iter().collect(),
            faults: None,
        }
    }
}

impl ClusterBuilder {
    /// Changes the spec of node `name`.
    pub fn with(mut self, name: &str, change: impl FnOnce(NodeSpec) -> NodeSpec) -> Self {
        let Some(i) = self.specs.iter().position(|s| s.name == name) else {
            panic!("the cluster has no node {name}");
        };
        let spec = self.specs.remove(i);
        self.specs.insert(i, change(spec));
        self
    }

    /// Node `node` hosts `service` with its backend at `addr`.
    pub fn with_service(self, node: &str, service: &str, addr: SocketAddr, check: Check) -> Self {
        self.with(node, |s| s.service(service, addr, check))
    }

    /// Node `node` has a TCP listener `name` for `service` balanced by `policy`.
    pub fn with_listener(self, node: &str, name: &str, service: &str, policy: &str) -> Self {
        self.with(node, |s| s.listener(name, service, policy))
    }

    /// Node `node` has an HTTP listener `name` (see [`NodeSpec::http_listener`]).
    pub fn with_http_listener(self, node: &str, name: &str, default: Option<&str>) -> Self {
        self.with(node, |s| s.http_listener(name, default))
    }

    /// Uses this CA instead of a fresh one for `mesh.test`.
    pub fn with_pki(mut self, pki: Pki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Sends every node's packets through one fault-injecting network (real
    /// sockets, seeded), so the cluster can `partition`, `heal` and `pause`.
    pub fn with_faults(mut self, seed: u64) -> Self {
        self.faults = Some(seed);
        self
    }

    /// Issues the certificates and starts the nodes, the first before the rest.
    pub async fn start(self) -> Cluster {
        let mut cluster = Cluster {
            pki: self.pki.unwrap_or_else(|| Pki::new("mesh.test")),
            nodes: Vec::with_capacity(self.specs.len()),
            net: self.faults.map(Network::new),
        };
        for spec in self.specs {
            let spec = match cluster.nodes.first() {
                Some(seed) => spec.seed(seed),
                None => spec,
            };
            let node = cluster.start_node(spec).await;
            cluster.nodes.push(node);
        }
        cluster
    }
}

impl Cluster {
    async fn start_node(&self, spec: NodeSpec) -> TestNode {
        let services: Vec<&str> = spec.cert_services.iter().map(String::as_str).collect();
        let cert_dir = spec
            .cert_dir
            .clone()
            .unwrap_or_else(|| self.pki.node_dir(&spec.name, &services));
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        TestNode::start_with_options(spec, cert_dir, data_dir, self.start_options()).await
    }

    /// A node's socket: through the cluster's fault-injecting network if it has one.
    fn start_options(&self) -> StartOptions {
        StartOptions {
            socket: self.net.as_ref().map(|net| {
                net.socket("127.0.0.1:0".parse().unwrap())
                    .expect("a loopback socket for a node")
                    as Arc<dyn quinn::AsyncUdpSocket>
            }),
            ..StartOptions::default()
        }
    }

    /// Starts one more node, seeded by the first.
    pub async fn add(&mut self, spec: NodeSpec) -> &TestNode {
        let spec = match self.nodes.first() {
            Some(seed) => spec.seed(seed),
            None => spec,
        };
        let node = self.start_node(spec).await;
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    /// Node `name`.
    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("the cluster has no running node {name}"))
    }

    /// The running nodes, in start order.
    pub fn nodes(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter()
    }

    /// The names of the running nodes, in start order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.spec.name.clone()).collect()
    }

    /// Where a client connects to listener `listener` of node `node`.
    pub fn client(&self, node: &str, listener: &str) -> SocketAddr {
        self.node(node).listener(listener)
    }

    /// Waits until every running node lists every running node alive and has
    /// it in its routing table (the record may follow the membership by a beat).
    pub async fn wait_converged(&self) {
        let names = self.names();
        for n in &self.nodes {
            eventually(
                &format!("{} lists {names:?} alive and routes to them", n.spec.name),
                || async {
                    let states = n.member_states().await;
                    let table = n.node.table();
                    names.iter().all(|name| {
                        states
                            .iter()
                            .any(|(member, state)| member == name && state == "alive")
                            && table.node(name).is_some()
                    })
                },
            )
            .await;
        }
    }

    /// Waits until node `node` routes `service` to `healthy` healthy endpoints.
    pub async fn wait_healthy(&self, node: &str, service: &str, healthy: usize) {
        let n = self.node(node);
        eventually(
            &format!("{node} sees {healthy} healthy endpoint(s) of {service}"),
            || async { n.healthy_endpoints(service) == healthy },
        )
        .await;
    }

    fn take(&mut self, name: &str) -> TestNode {
        let Some(i) = self.nodes.iter().position(|n| n.spec.name == name) else {
            panic!("the cluster has no running node {name}");
        };
        self.nodes.remove(i)
    }

    /// Stops node `name` at once (no drain, nothing said to its peers) and
    /// returns what it ran from, to [`Cluster::start_again`] it.
    pub async fn kill(&mut self, name: &str) -> Stopped {
        let n = self.take(name);
        let stopped = Stopped {
            spec: n.spec.clone(),
            cert_dir: n.cert_dir.clone(),
            data_dir: n.data_dir.clone(),
        };
        n.node.kill().await;
        stopped
    }

    /// Stops node `name` gracefully: it drains, tells its peers, and leaves.
    pub async fn shut_down(&mut self, name: &str) {
        self.take(name).node.shutdown().await;
    }

    /// Tries to start a node [`Cluster::kill`] stopped; returns why it refused.
    pub async fn try_start_again(
        &mut self,
        stopped: &Stopped,
    ) -> Result<&TestNode, shoal_node::app::StartError> {
        let options = self.start_options();
        let node = TestNode::try_start_with_options(
            stopped.spec.clone(),
            stopped.cert_dir.clone(),
            stopped.data_dir.clone(),
            options,
        )
        .await?;
        self.nodes.push(node);
        Ok(self.nodes.last().unwrap())
    }

    /// Starts a stopped node again from its files (a new generation of it).
    pub async fn start_again(&mut self, stopped: Stopped) -> &TestNode {
        let options = self.start_options();
        let node =
            TestNode::start_with_options(stopped.spec, stopped.cert_dir, stopped.data_dir, options)
                .await;
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    fn net(&self) -> &Arc<Network> {
        self.net
            .as_ref()
            .expect("faults need a cluster built with `with_faults`")
    }

    fn addrs(&self, names: &[&str]) -> Vec<SocketAddr> {
        names
            .iter()
            .map(|n| self.node(n).node.bound().advertise)
            .collect()
    }

    /// Drops every packet between nodes `a` and nodes `b` until [`Cluster::heal`].
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        self.net().partition(&self.addrs(a), &self.addrs(b));
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.net().heal();
    }

    /// Node `name` stops sending and receiving (as if stopped with SIGSTOP)
    /// until [`Cluster::resume`].
    pub fn pause(&self, name: &str) {
        self.net().pause(self.addrs(&[name])[0]);
    }

    /// Node `name` sends and receives again.
    pub fn resume(&self, name: &str) {
        self.net().resume(self.addrs(&[name])[0]);
    }

    /// Stops every node.
    pub async fn stop(self) {
        for n in self.nodes {
            n.node.kill().await;
        }
    }
}

impl std::ops::Index<&str> for Cluster {
    type Output = TestNode;

    fn index(&self, name: &str) -> &TestNode {
        self.node(name)
    }
}
