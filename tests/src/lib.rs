//! Test harness for Shoal's cross-crate integration tests: a throw-away mesh CA,
//! node configs on loopback with port 0, in-process nodes, a [`cluster::Cluster`]
//! builder that starts a mesh of them and makes its faults, tiny backends, an
//! HTTP client for the admin API, and [`eventually`], which polls a condition
//! with a bound instead of sleeping.
//!
//! ```ignore
//! let mesh = Cluster::new(2).start().await;
//! mesh.wait_converged().await;
//! eventually("n2 sees n1", || async { mesh["n2"].member_states().await.len() == 2 }).await;
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod backend_tls;
pub mod cluster;
pub mod grpc;
pub mod rogue;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use shoal_node::config::{Config, RawConfig, RawHealth, RawListener, RawService, RawTls};

use shoal_node::endpoint::{Accepted, MeshEndpoint, SocketSource};
use shoal_node::metrics::Metrics;
use shoal_node::tls::{TlsFiles, TlsState};
use shoal_node::{Node, StartOptions};
use shoal_pki::{CertificateAuthority, IssuedCert, Validity};
use tempfile::TempDir;

/// Gossip interval used by test nodes (faster than production, so tests are short).
pub const TEST_GOSSIP_INTERVAL: Duration = Duration::from_millis(100);
/// How long [`eventually`] waits by default.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Sends the nodes' logs to the test output when `SHOAL_TEST_LOG` is set (for
/// example `SHOAL_TEST_LOG=debug`); safe to call many times.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after
/// [`EVENTUALLY`].
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, EVENTUALLY, cond).await
}

/// [`eventually`] with an explicit bound.
pub async fn eventually_within<F, Fut>(what: &str, bound: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > bound {
            panic!("timed out after {bound:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throw-away mesh CA in a temporary directory.
pub struct Pki {
    /// The CA.
    pub ca: CertificateAuthority,
    /// Where certificates are written.
    pub dir: TempDir,
}

impl Pki {
    /// A new CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Pki {
        Pki {
            ca: CertificateAuthority::create(trust_domain, Validity::days_from_now(30).unwrap())
                .unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues a node certificate and writes node.crt, node.key and ca.crt into a
    /// fresh directory; returns it.
    pub fn node_dir(&self, node: &str, services: &[&str]) -> PathBuf {
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        let cert = self
            .ca
            .issue_node(node, &services, Validity::days_from_now(10).unwrap())
            .unwrap();
        self.write(node, &cert)
    }

    /// A QUIC endpoint of the mesh on a free loopback port, with a fresh node
    /// certificate for `node` allowing `services`, and its TLS state: what a
    /// peer that is not a full node (a probe) dials with. It accepts nothing.
    pub fn endpoint(
        &self,
        node: &str,
        services: &[&str],
    ) -> (
        Arc<shoal_node::endpoint::MeshEndpoint>,
        Arc<shoal_node::tls::TlsState>,
    ) {
        // What it would hand over is dropped, so a gossip connection it dials
        // is not waiting to be read.
        let (endpoint, _, tls) = self.endpoint_accepting(node, services);
        (endpoint, tls)
    }

    /// [`Pki::endpoint`], with where the connections it accepts (and the
    /// gossip connections it dials) are handed over once its accept loop runs:
    /// what a rogue member that answers probes needs.
    pub fn endpoint_accepting(
        &self,
        node: &str,
        services: &[&str],
    ) -> (Arc<MeshEndpoint>, Accepted, Arc<TlsState>) {
        let (endpoint, accepted, tls, _) = self.endpoint_parts(node, services);
        (endpoint, accepted, tls)
    }

    /// [`Pki::endpoint`] for a client that only dials, with the metrics it
    /// counts its refusals in.
    pub fn client_endpoint(&self, node: &str) -> (Arc<MeshEndpoint>, Arc<Metrics>) {
        let (endpoint, _, _, metrics) = self.endpoint_parts(node, &[]);
        (endpoint, metrics)
    }

    #[allow(clippy::type_complexity)]
    fn endpoint_parts(
        &self,
        node: &str,
        services: &[&str],
    ) -> (Arc<MeshEndpoint>, Accepted, Arc<TlsState>, Arc<Metrics>) {
        let dir = self.node_dir(node, services);
        let metrics = Arc::new(Metrics::new());
        let tls = TlsState::load(
            &TlsFiles {
                cert: dir.join("node.crt"),
                key: dir.join("node.key"),
                ca: dir.join("ca.crt"),
            },
            metrics.clone(),
        )
        .unwrap();
        let (endpoint, accepted) = MeshEndpoint::new(
            SocketSource::Bind("127.0.0.1:0".parse().unwrap()),
            tls.clone(),
            metrics.clone(),
        )
        .unwrap();
        (endpoint, accepted, tls, metrics)
    }

    /// Writes an issued certificate into `<dir>/<label>-<n>/` and returns that directory.
    pub fn write(&self, label: &str, cert: &IssuedCert) -> PathBuf {
        let mut n = 0;
        let dir = loop {
            let d = self.dir.path().join(format!("{label}-{n}"));
            if !d.exists() {
                break d;
            }
            n += 1;
        };
        cert.save(&dir, false).unwrap();
        dir
    }
}

/// A backend kind for a test service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// TCP connect check.
    Tcp,
    /// HTTP GET check.
    Http,
}

/// A change to a node's raw config, applied last.
pub type Tweak = Arc<dyn Fn(&mut RawConfig) + Send + Sync>;

/// What a test node should look like.
#[derive(Clone)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Services the certificate allows.
    pub cert_services: Vec<String>,
    /// Local services: name, backend address, check.
    pub services: Vec<(String, SocketAddr, Check)>,
    /// Seeds.
    pub seeds: Vec<String>,
    /// Zone.
    pub zone: String,
    /// Use this certificate directory instead of issuing one.
    pub cert_dir: Option<PathBuf>,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// Listeners: name, service, policy.
    pub listeners: Vec<(String, String, String)>,
    /// Changes applied to the raw config after everything else.
    pub tweaks: Vec<Tweak>,
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeSpec {
    /// A node with no services and no seeds.
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            cert_services: vec![],
            services: vec![],
            seeds: vec![],
            zone: "zone-a".into(),
            cert_dir: None,
            drain_timeout: Duration::from_secs(5),
            listeners: vec![],
            tweaks: vec![],
        }
    }

    /// A TCP listener called `name` (on 127.0.0.1, port 0) for `service`, with
    /// load-balancing `policy`, a 1 s connect timeout and 3 attempts.
    pub fn listener(mut self, name: &str, service: &str, policy: &str) -> NodeSpec {
        self.listeners
            .push((name.to_string(), service.to_string(), policy.to_string()));
        self
    }

    /// An HTTP listener called `name` (on 127.0.0.1, port 0), routing by route
    /// documents and sending requests no route matches to `default_service`
    /// (404 without one); 1 s connect timeout, 3 attempts, 1 s header timeout.
    pub fn http_listener(self, name: &str, default_service: Option<&str>) -> NodeSpec {
        let name = name.to_string();
        let service = default_service.map(str::to_string);
        self.tweak(move |raw| {
            raw.listeners.push(RawListener {
                name: Some(name.clone()),
                bind: Some("127.0.0.1:0".into()),
                service: service.clone(),
                protocol: Some("http".into()),
                connect_timeout: Some(Duration::from_secs(1)),
                header_timeout: Some(Duration::from_secs(1)),
                attempts: Some(3),
                ..Default::default()
            });
        })
    }

    /// Applies `f` to the raw config last.
    pub fn tweak(mut self, f: impl Fn(&mut RawConfig) + Send + Sync + 'static) -> NodeSpec {
        self.tweaks.push(Arc::new(f));
        self
    }

    /// Hosts `service` with its backend at `addr`, checked by `check`.
    pub fn service(mut self, service: &str, addr: SocketAddr, check: Check) -> NodeSpec {
        self.cert_services.push(service.to_string());
        self.services.push((service.to_string(), addr, check));
        self
    }

    /// Gossips with `seed` first.
    pub fn seed(mut self, seed: &TestNode) -> NodeSpec {
        self.seeds.push(seed.node.bound().advertise.to_string());
        self
    }

    /// Uses an existing certificate directory.
    pub fn cert_dir(mut self, dir: PathBuf) -> NodeSpec {
        self.cert_dir = Some(dir);
        self
    }

    /// The raw config for this spec, with TLS files in `cert_dir`.
    pub fn raw_config(&self, cert_dir: &Path, data_dir: &Path) -> RawConfig {
        let mut raw = RawConfig::default();
        raw.node.name = Some(self.name.clone());
        raw.node.cluster = Some("test".into());
        raw.node.zone = Some(self.zone.clone());
        raw.node.listen = Some("127.0.0.1:0".into());
        raw.node.admin = Some("127.0.0.1:0".into());
        raw.node.data_dir = Some(data_dir.to_path_buf());
        raw.node.seeds = self.seeds.clone();
        raw.node.drain_timeout = Some(self.drain_timeout);
        raw.tls = Some(RawTls {
            cert: Some(cert_dir.join("node.crt")),
            key: Some(cert_dir.join("node.key")),
            ca: Some(cert_dir.join("ca.crt")),
        });
        raw.gossip.interval = Some(TEST_GOSSIP_INTERVAL);
        raw.services = self
            .services
            .iter()
            .map(|(name, addr, check)| RawService {
                name: Some(name.clone()),
                address: Some(addr.to_string()),
                protocol: Some(if *check == Check::Http { "http" } else { "tcp" }.into()),
                health: Some(RawHealth {
                    kind: Some(if *check == Check::Http { "http" } else { "tcp" }.into()),
                    path: (*check == Check::Http).then(|| "/healthz".into()),
                    interval: Some(Duration::from_millis(100)),
                    timeout: Some(Duration::from_millis(100)),
                    healthy_threshold: Some(1),
                    unhealthy_threshold: Some(2),
                }),
                ..Default::default()
            })
            .collect();
        raw.listeners = self
            .listeners
            .iter()
            .map(|(name, service, policy)| RawListener {
                name: Some(name.clone()),
                bind: Some("127.0.0.1:0".into()),
                service: Some(service.clone()),
                lb: Some(policy.clone()),
                connect_timeout: Some(Duration::from_secs(1)),
                attempts: Some(3),
                ..Default::default()
            })
            .collect();
        for t in &self.tweaks {
            t(&mut raw);
        }
        raw
    }
}

/// A node running in this process, with its files.
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// Its spec.
    pub spec: NodeSpec,
    /// Its certificate directory.
    pub cert_dir: PathBuf,
    /// Its data directory.
    pub data_dir: Arc<TempDir>,
}

impl TestNode {
    /// Issues a certificate (unless the spec brings one) and starts the node.
    pub async fn start(pki: &Pki, spec: NodeSpec) -> TestNode {
        let services: Vec<&str> = spec.cert_services.iter().map(String::as_str).collect();
        let cert_dir = spec
            .cert_dir
            .clone()
            .unwrap_or_else(|| pki.node_dir(&spec.name, &services));
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_with(spec, cert_dir, data_dir).await
    }

    /// Starts a node from existing files (to restart one).
    pub async fn start_with(spec: NodeSpec, cert_dir: PathBuf, data_dir: Arc<TempDir>) -> TestNode {
        Self::start_with_options(spec, cert_dir, data_dir, StartOptions::default()).await
    }

    /// Starts a node from existing files with start options (for example a
    /// fault-injecting socket from `shoal_sim::faults::Network`).
    pub async fn start_with_options(
        spec: NodeSpec,
        cert_dir: PathBuf,
        data_dir: Arc<TempDir>,
        options: StartOptions,
    ) -> TestNode {
        let name = spec.name.clone();
        TestNode::try_start_with_options(spec, cert_dir, data_dir, options)
            .await
            .unwrap_or_else(|e| panic!("node {name} did not start: {e}"))
    }

    /// [`TestNode::start_with_options`], returning why the node refused to
    /// start.
    pub async fn try_start_with_options(
        spec: NodeSpec,
        cert_dir: PathBuf,
        data_dir: Arc<TempDir>,
        options: StartOptions,
    ) -> Result<TestNode, shoal_node::app::StartError> {
        init_logs();
        let raw = spec.raw_config(&cert_dir, data_dir.path());
        let config = Config::validate(raw, data_dir.path())
            .unwrap_or_else(|e| panic!("test config for {} is invalid:\n{e}", spec.name));
        let node = Node::start(config, options).await?;
        Ok(TestNode {
            node,
            spec,
            cert_dir,
            data_dir,
        })
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.node
            .bound()
            .listener(name)
            .unwrap_or_else(|| panic!("{} has no listener {name}", self.spec.name))
    }

    /// Number of healthy endpoints of `service` in this node's routing table.
    pub fn healthy_endpoints(&self, service: &str) -> usize {
        self.node
            .table()
            .endpoints(service)
            .iter()
            .filter(|e| e.health == mesh_proto::gossip::Health::Healthy)
            .count()
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.node.bound().admin
    }

    /// `GET path` on the admin API, parsed as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.admin(), path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The tunnel (not gossip) connection between this node and `peer` from
    /// its `/connections`: the one it dialled, or with `dialled = false` the
    /// one it accepted.
    pub async fn tunnel(
        &self,
        peer: &str,
        dialled: bool,
    ) -> Option<shoal_node::endpoint::connections::ConnectionView> {
        let all: Vec<shoal_node::endpoint::connections::ConnectionView> =
            serde_json::from_value(self.admin_json("/connections").await).unwrap();
        all.into_iter()
            .find(|c| c.use_ == "tunnel" && c.dialled == dialled && c.peer.as_deref() == Some(peer))
    }

    /// `(name, state)` of every member in `/members`, sorted.
    pub async fn member_states(&self) -> Vec<(String, String)> {
        let members = self.admin_json("/members").await;
        let mut out: Vec<(String, String)> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The health of `service` on `node` as `/services` reports it.
    pub async fn endpoint_health(&self, service: &str, node: &str) -> Option<String> {
        let services = self.admin_json("/services").await;
        services[service].as_array()?.iter().find_map(|e| {
            (e["node"] == node).then(|| e["health"].as_str().unwrap_or_default().to_string())
        })
    }

    /// The value of a metric line starting with `prefix` in `/metrics` (0 if absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http_get(self.admin(), "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body, as text.
    pub body: String,
}

impl Reply {
    /// A header's value, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `req` over a new HTTP/1.1 connection to `addr`; returns the response,
/// read whole.
pub async fn http_send(addr: SocketAddr, req: hyper::Request<Full<Bytes>>) -> Reply {
    http_send_body(addr, req).await
}

/// [`http_send`] with any body (a stream of chunks, say).
pub async fn http_send_body<B>(addr: SocketAddr, req: hyper::Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", req.method(), req.uri());
    tokio::time::timeout(3 * EVENTUALLY, send_once(addr, req))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} through {addr}: no answer within {:?}",
                3 * EVENTUALLY
            )
        })
}

async fn send_once<B>(addr: SocketAddr, req: hyper::Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, B>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A request builder for `http://host{path}` with method `method`.
pub fn request(method: &str, host: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
}

/// `GET path` with `Host: host` over a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    http_send(
        addr,
        request("GET", host, path).body(Full::default()).unwrap(),
    )
    .await
}

/// `GET path` over HTTP/1.1; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A TCP backend that echoes (or, with a greeting, first writes the greeting);
/// counts its connections; can be stopped and restarted on its port.
pub struct TcpBackend {
    addr: SocketAddr,
    greeting: Option<String>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// While stopped: the port, bound but not listening (connects are
    /// refused), so that no other socket of the test process — an outgoing
    /// connection's ephemeral port included — takes it before `restart`.
    held: Option<tokio::net::TcpSocket>,
}

impl TcpBackend {
    /// An echo backend on a free loopback port.
    pub async fn start() -> TcpBackend {
        Self::start_inner(None).await
    }

    /// A backend that reads one chunk, then resets the connection (RST).
    pub async fn resetter() -> TcpBackend {
        Self::start_inner(Some("\u{0}RESET".to_string())).await
    }

    /// A backend that writes `greeting` at once, then echoes.
    pub async fn greeting(greeting: &str) -> TcpBackend {
        Self::start_inner(Some(greeting.to_string())).await
    }

    async fn start_inner(greeting: Option<String>) -> TcpBackend {
        let listener = shoal_node::proxy::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut b = TcpBackend {
            addr,
            greeting,
            accepted: Arc::default(),
            task: None,
            held: None,
        };
        b.serve(listener);
        b
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let greeting = self.greeting.clone();
        let accepted = self.accepted.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if greeting.as_deref() == Some("\u{0}RESET") {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        let _ = s.set_zero_linger();
                        return;
                    }
                    if let Some(g) = greeting
                        && s.write_all(g.as_bytes()).await.is_err()
                    {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        }));
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening (connects are refused) but keeps the port.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket
                .bind(self.addr)
                .expect("the stopped backend's port is still free");
            self.held = Some(socket);
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = match self.held.take() {
            Some(socket) => socket.listen(shoal_node::proxy::LISTEN_BACKLOG).unwrap(),
            None => shoal_node::proxy::listen(self.addr).unwrap(),
        };
        self.serve(listener);
    }
}

/// An HTTP backend answering `GET /healthz` with 200 or 500 as told.
pub struct HttpBackend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    /// Starts on a free loopback port, healthy.
    pub async fn start() -> HttpBackend {
        let listener = shoal_node::proxy::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let ok = flag.load(Ordering::Relaxed);
                        async move {
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(b"hi")));
                            if !ok {
                                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        HttpBackend {
            addr,
            healthy,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `/healthz` answer 200 (`true`) or 500.
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
