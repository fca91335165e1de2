//! Wiring: builds a running node from a validated [`Config`] and returns a
//! handle with the addresses it actually bound (so tests and the simulator can
//! use port 0) and the ways to stop it. `shoal run` is a thin main around this.
//!
//! ```text
//!  UDP socket ─ MeshEndpoint ─┬─ shoal-gossip/2 ─ fair queue ─ Gossip ───────┐
//!                             └─ shoal-tunnel/2 ─ (proxying)   (membership)  │ View
//!  health checks ─ Publisher ─────────── signed own records ────────────────┤
//!                                        routing::run, RouteStore::run ◀────┘
//!                                              │ ArcSwap<RoutingTable>, ArcSwap<RouteTable>
//!                                   admin API ◀┘
//! ```
//!
//! Every long-running task runs under the [`Supervisor`]: one that ends
//! unexpectedly is logged, counted and restarted, and `/readyz` says so.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_proto::gossip::{NodeRecord, NodeState, RouteDocument};
use mesh_proto::membership::{Config as MembershipConfig, Membership};
use mesh_proto::routing::RoutingTable;
use mesh_proto::tunnel::Protocol;
use quinn::AsyncUdpSocket;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState, MemberView};
use crate::config::{Config, HealthKind};
use crate::endpoint::{self, MeshEndpoint, SocketSource};
use crate::gossip::crypto::SignatureChecks;
use crate::gossip::{self, FairQueue, Gossip, NodeCrypto, Outbound, Wiring, transport};
use crate::metrics::Metrics;
use crate::proxy::http::HttpListener;
use crate::proxy::ingress_tls::IngressCert;
use crate::proxy::{LocalService, ProxyContext, inbound, tcp};
use crate::publish::Publisher;
use crate::reload::Reloader;
use crate::revocations::RevocationStore;
use crate::routes::{RouteStore, SharedRoutes};
use crate::routing::{self, SharedTable};
use crate::supervisor::Supervisor;
use crate::tls::{TlsError, TlsFiles, TlsState};

/// The software version published in the node record.
pub const VERSION: &str = concat!("shoal ", env!("CARGO_PKG_VERSION"));
/// File in the data directory holding the last known peers' addresses.
pub use crate::seeds::MEMBERS_FILE;

/// How to start a node beyond its config.
#[derive(Default)]
pub struct StartOptions {
    /// Use this UDP socket for the QUIC endpoint instead of binding `node.listen`
    /// (the simulator wraps sockets to inject faults).
    pub socket: Option<Arc<dyn AsyncUdpSocket>>,
    /// The file (and command-line flags) the config was read from: a reload
    /// (SIGHUP, `POST /reload`) reads it again. Without it, only
    /// [`Node::reload`] with a config in memory can change the config.
    pub config_file: Option<(PathBuf, crate::config::Overrides)>,
    /// Signature checks shared with the other nodes of this process (the
    /// simulator's): a signature one node found valid is not checked again by
    /// the others. See [`gossip::crypto::SignatureChecks`].
    pub signature_checks: Option<Arc<SignatureChecks>>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("custom_socket", &self.socket.is_some())
            .field("config_file", &self.config_file)
            .field("shared_signature_checks", &self.signature_checks.is_some())
            .finish()
    }
}

/// The addresses a node actually bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The QUIC endpoint's local address.
    pub quic: SocketAddr,
    /// The address published to peers.
    pub advertise: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Each listener's name and bound address, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
}

impl Bound {
    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }
}

/// Why a node did not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate names another node than the config.
    #[error("tls.cert: the certificate is for node {cert:?} but node.name is {config:?}")]
    NameMismatch {
        /// The certificate's node name.
        cert: String,
        /// The configured name.
        config: String,
    },
    /// A socket could not be bound.
    #[error("{field}: cannot bind {addr}: {cause}; is another process using it?")]
    Bind {
        /// The config field of the address.
        field: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("node.data_dir: cannot create {path}: {cause}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A listener cannot start (its TLS files, its access log).
    #[error("{field}: {reason}")]
    Listener {
        /// The config field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The revocation list this node holds revokes its own certificate.
    #[error(
        "tls.cert: this node's certificate is revoked ({what}, reason {reason:?}) by the mesh's revocation list (stored in {list}); give the node a new certificate (`shoal-pki issue --renew`)"
    )]
    Revoked {
        /// What the entry revokes.
        what: String,
        /// Why.
        reason: String,
        /// The stored list.
        list: String,
    },
    /// This node's own records could not be published (its certificate or key
    /// is unusable for signing).
    #[error("tls.cert: cannot publish this node's records: {0}")]
    Gossip(#[from] mesh_proto::membership::PublishError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    config: Arc<Config>,
    bound: Bound,
    endpoint: Arc<MeshEndpoint>,
    gossip: Arc<Gossip>,
    publisher: Arc<Publisher>,
    table: SharedTable,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
    proxy: Arc<ProxyContext>,
    routes: SharedRoutes,
    reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    supervisor: Arc<Supervisor>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Refuses to start a node whose own certificate the stored revocation list
/// names.
fn refuse_if_revoked(config: &Config, tls: &TlsState) -> Result<(), StartError> {
    let Some(entry) = tls.revocation_of(&tls.identity().cert_der) else {
        return Ok(());
    };
    Err(StartError::Revoked {
        what: entry.describe(),
        reason: entry.reason,
        list: config
            .node
            .data_dir
            .join(crate::revocations::REVOCATIONS_FILE)
            .display()
            .to_string(),
    })
}

/// The golden-signal history and the task that samples it every second.
fn start_golden(
    config: &Config,
    metrics: &Arc<Metrics>,
    supervisor: &Supervisor,
    stop: &watch::Receiver<bool>,
) -> Arc<crate::golden::History> {
    let golden = Arc::new(crate::golden::History::new(
        &config.node.name,
        crate::golden::listeners_of(config),
    ));
    supervisor.spawn("golden", {
        let (history, metrics, stop) = (golden.clone(), metrics.clone(), stop.clone());
        move || crate::golden::sample_every(history.clone(), metrics.clone(), stop.clone())
    });
    golden
}

impl Node {
    /// Starts a node. Must run inside a tokio runtime.
    pub async fn start(config: Config, options: StartOptions) -> Result<Node, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let files = tls_files(&config);
        let tls = load_identity(&config, &files, &metrics)?;
        // The stored revocation list is in force before any handshake.
        let stored_revocations = crate::revocations::load_stored(
            &config.node.data_dir,
            &tls,
            &metrics,
            config.gossip.max_clock_skew,
        );
        refuse_if_revoked(&config, &tls)?;
        let config_file = options.config_file.clone();
        let crypto = gossip_crypto(&tls, options.signature_checks.clone());
        let sockets = bind(&config, options, &tls, &metrics).await?;
        let (stop, stop_rx) = watch::channel(false);
        let supervisor = Arc::new(Supervisor::new(metrics.clone(), stop_rx.clone()));
        let net = (sockets.endpoint.clone(), sockets.advertise);
        let accepted = sockets.accepted;
        let core = start_core(&config, &tls, &metrics, net, accepted, crypto, &supervisor).await?;
        let revocations = start_revocations(
            (&config, stored_revocations),
            &tls,
            &core,
            &metrics,
            &supervisor,
        )
        .await;
        let (routes, route_store) =
            start_routes(&config, &tls, &core.gossip, &metrics, &supervisor).await?;
        let golden = start_golden(&config, &metrics, &supervisor, &stop_rx);
        let parts = core.reload_parts(&metrics, &routes, &tls, &supervisor, &golden);
        let reloader = Arc::new(Reloader::new(parts, config.clone(), config_file));
        let admin = Arc::new(AdminState {
            config: config.clone(),
            gossip: core.gossip.clone(),
            table: core.table.clone(),
            routes: routes.clone(),
            route_store,
            revocations,
            metrics: metrics.clone(),
            publisher: core.publisher.clone(),
            joined: AtomicBool::new(false),
            tasks: supervisor.health(),
            tls: tls.clone(),
            golden,
            reloader: reloader.clone(),
            endpoint: core.endpoint.clone(),
        });
        supervisor.spawn("admin", {
            let (listener, admin, stop) = (sockets.admin.clone(), admin.clone(), stop_rx.clone());
            move || admin::serve(listener.clone(), admin.clone(), stop.clone())
        });
        spawn_housekeeping(&supervisor, core.chores(files, &config), &stop_rx);
        let listeners = start_listeners(sockets.listeners, &reloader).await?;
        let bound = Bound {
            quic: sockets.quic,
            advertise: sockets.advertise,
            admin: sockets.admin_addr,
            listeners,
        };
        bound.log_started(&config.node.name);
        Ok(Node {
            config,
            bound,
            endpoint: core.endpoint,
            gossip: core.gossip,
            publisher: core.publisher,
            table: core.table,
            admin,
            metrics,
            proxy: core.proxy,
            routes,
            reloader,
            stop,
            supervisor,
        })
    }

    /// The addresses bound.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.config.node.name
    }

    /// The effective config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The current HTTP route table (merged route documents).
    pub fn routes(&self) -> Arc<mesh_proto::route::table::RouteTable> {
        self.routes.load_full()
    }

    /// The members as `/members` reports them.
    pub async fn members(&self) -> Vec<MemberView> {
        self.admin.members().await
    }

    /// The gossip layer: this node publishes only its own records through it.
    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies `new` as far as it can change while the node runs: services
    /// and listeners are added, changed or removed; other fields that differ
    /// are named in the report (they need a restart). See [`crate::reload`].
    pub async fn reload(&self, new: Config) -> crate::reload::Report {
        self.reloader.reload(new).await
    }

    /// Reads the config file the node was started from again and applies it
    /// (what SIGHUP and `shoal reload` do after the TLS files).
    pub async fn reload_config_file(
        &self,
    ) -> Result<crate::reload::Report, crate::reload::ReloadError> {
        self.reloader.reload_file().await
    }

    /// Every listener running now and its bound address (after reloads).
    pub fn listening(&self) -> std::collections::BTreeMap<String, SocketAddr> {
        self.reloader.listening()
    }

    /// Re-reads the TLS files (as on SIGHUP): new connections use the new
    /// certificate, established ones are kept; the new certificate is published.
    pub async fn reload_tls(&self) -> Result<(), TlsError> {
        for cert in &self.reloader.ingress_certs() {
            match cert.reload() {
                Ok(()) => tracing::info!("reloaded an ingress certificate"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload an ingress certificate; keeping the current one")
                }
            }
        }
        reload(
            &self.endpoint,
            &self.gossip,
            &self.publisher,
            &tls_files(&self.config),
        )
        .await
    }

    /// Publishes `draining`: peers stop choosing this node for new work. The node
    /// keeps serving what it has; [`Node::shutdown`] finishes the job.
    pub async fn drain(&self) {
        self.proxy.draining.store(true, Ordering::Relaxed);
        if !self.publisher.is_draining().await {
            tracing::info!(node = %self.config.node.name, "draining");
            self.publisher.set_draining(&self.gossip).await;
        }
    }

    /// Graceful stop: drain, give peers a few gossip rounds to see it, wait for
    /// in-flight streams up to `node.drain_timeout`, then leave.
    pub async fn shutdown(self) {
        self.drain().await;
        let timeout = self.config.node.drain_timeout;
        let announce = (self.config.gossip.interval * 4).min(timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::sleep(announce).await;
        while self.endpoint.open_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.endpoint.open_streams();
        if left > 0 {
            tracing::warn!(
                streams = left,
                "drain timeout reached with streams still open"
            );
        }
        self.stop_everything().await;
        tracing::info!("node stopped");
    }

    /// Abrupt stop, as a crash would: no draining, no goodbye.
    pub async fn kill(self) {
        self.stop_everything().await;
    }

    /// The supervisor of this node's tasks (to see which are down, or to
    /// abort one as a crash would, in tests).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    async fn stop_everything(self) {
        let _ = self.stop.send(true);
        self.supervisor.shutdown().await;
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// What [`bind`] bound.
struct Sockets {
    endpoint: Arc<MeshEndpoint>,
    accepted: endpoint::Accepted,
    quic: SocketAddr,
    advertise: SocketAddr,
    admin: Arc<TcpListener>,
    admin_addr: SocketAddr,
    listeners: Vec<BoundListener>,
}

/// A listener's index, config, socket, bound address and ingress certificate.
type BoundListener = (
    usize,
    crate::config::ListenerConfig,
    TcpListener,
    SocketAddr,
    Option<Arc<IngressCert>>,
);

impl Bound {
    /// The "node started" log line, with the addresses actually bound.
    fn log_started(&self, node: &str) {
        tracing::info!(
            %node,
            quic = %self.quic,
            advertise = %self.advertise,
            admin = %admin::describe(self.admin),
            "node started"
        );
    }
}

/// What the rest of the node is built on: the endpoint accepting, gossip
/// running with this node's records published, the routing table kept
/// current, and the proxy context serving tunnels.
struct Core {
    endpoint: Arc<MeshEndpoint>,
    gossip: Arc<Gossip>,
    publisher: Arc<Publisher>,
    table: SharedTable,
    proxy: Arc<ProxyContext>,
}

impl Core {
    /// What a config reload changes: these parts and the others named.
    fn reload_parts(
        &self,
        metrics: &Arc<Metrics>,
        routes: &SharedRoutes,
        tls: &Arc<TlsState>,
        supervisor: &Arc<Supervisor>,
        golden: &Arc<crate::golden::History>,
    ) -> crate::reload::Parts {
        crate::reload::Parts {
            proxy: self.proxy.clone(),
            gossip: self.gossip.clone(),
            publisher: self.publisher.clone(),
            metrics: metrics.clone(),
            routes: routes.clone(),
            tls: tls.clone(),
            supervisor: supervisor.clone(),
            golden: golden.clone(),
        }
    }

    /// The housekeeping chores over these parts.
    fn chores(&self, files: TlsFiles, config: &Config) -> Chores {
        Chores {
            endpoint: self.endpoint.clone(),
            gossip: self.gossip.clone(),
            publisher: self.publisher.clone(),
            proxy: self.proxy.clone(),
            files,
            data_dir: config.node.data_dir.clone(),
        }
    }
}

/// The gossip's cryptography over `tls`, sharing signature checks with the
/// other nodes of this process if `checks` is given.
fn gossip_crypto(tls: &Arc<TlsState>, checks: Option<Arc<SignatureChecks>>) -> NodeCrypto {
    match checks {
        Some(checks) => NodeCrypto::sharing(tls.clone(), checks),
        None => NodeCrypto::new(tls.clone()),
    }
}

/// Starts the [`Core`]: the accept loop, gossip (publishing this node's
/// records), the serving side, the routing table and the health checks, on
/// `endpoint` (advertised as `advertise`) and the connections it hands over,
/// gossip checking signatures with `crypto`.
async fn start_core(
    config: &Arc<Config>,
    tls: &Arc<TlsState>,
    metrics: &Arc<Metrics>,
    (endpoint, advertise): (Arc<MeshEndpoint>, SocketAddr),
    accepted: endpoint::Accepted,
    crypto: NodeCrypto,
    supervisor: &Supervisor,
) -> Result<Core, StartError> {
    let generation = unix_ms();
    let publisher = Arc::new(publisher_for(config, advertise, generation));
    let endpoint::Accepted {
        gossip: gossip_conns,
        tunnel: tunnel_conns,
    } = accepted;
    supervisor.spawn("accept", {
        let endpoint = endpoint.clone();
        move || endpoint.clone().accept_loop()
    });
    let gossip = start_gossip(
        config,
        crypto,
        metrics,
        &endpoint,
        advertise,
        generation,
        gossip_conns,
        supervisor,
    )
    .await;
    publisher
        .publish_all(&gossip, &tls.identity().cert_der)
        .await?;
    supervisor.spawn("gossip", {
        let (gossip, stop) = (gossip.clone(), supervisor.stop_signal());
        move || gossip.clone().run(stop.clone())
    });
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let proxy = proxy_context(config, &endpoint, &table, metrics);
    let stop = supervisor.stop_signal();
    spawn_data_plane(supervisor, &proxy, tunnel_conns, &gossip, &table, &stop);
    spawn_health_checks(config, (&gossip, &publisher, metrics), supervisor);
    supervisor.spawn("seeds", {
        let (config, gossip, table) = (config.clone(), gossip.clone(), table.clone());
        move || {
            crate::seeds::run(
                config.clone(),
                advertise,
                gossip.clone(),
                table.clone(),
                stop.clone(),
            )
        }
    });
    Ok(Core {
        endpoint,
        gossip,
        publisher,
        table,
        proxy,
    })
}

/// This node's TLS identity from its files: a certificate for the configured
/// node name (checked again here: the files may have changed since the config
/// was validated), and the data directory it will write to.
fn load_identity(
    config: &Config,
    files: &TlsFiles,
    metrics: &Arc<Metrics>,
) -> Result<Arc<TlsState>, StartError> {
    let tls = TlsState::load(files, metrics.clone())?;
    tls.require_services(config.services.iter().map(|s| s.name.clone()).collect());
    let identity = tls.identity();
    if identity.node_name != config.node.name {
        return Err(StartError::NameMismatch {
            cert: identity.node_name.clone(),
            config: config.node.name.clone(),
        });
    }
    std::fs::create_dir_all(&config.node.data_dir).map_err(|cause| StartError::DataDir {
        path: config.node.data_dir.clone(),
        cause,
    })?;
    Ok(tls)
}

/// The serving side (tunnels accepted, the backends' connection pools) and the
/// routing table's builder.
fn spawn_data_plane(
    supervisor: &Supervisor,
    proxy: &Arc<ProxyContext>,
    tunnel_conns: mpsc::Receiver<endpoint::Inbound>,
    gossip: &Arc<Gossip>,
    table: &SharedTable,
    stop: &watch::Receiver<bool>,
) {
    let tunnel_conns = Arc::new(tokio::sync::Mutex::new(tunnel_conns));
    supervisor.spawn("tunnel-inbound", {
        let proxy = proxy.clone();
        move || inbound::serve(tunnel_conns.clone(), proxy.clone())
    });
    supervisor.spawn("backend-pools", {
        let proxy = proxy.clone();
        move || inbound::reap_pools(proxy.clone())
    });
    supervisor.spawn("routing", {
        let (gossip, table, metrics, stop) = (
            gossip.clone(),
            table.clone(),
            proxy.metrics.clone(),
            stop.clone(),
        );
        move || routing::run(gossip.clone(), table.clone(), metrics.clone(), stop.clone())
    });
}

/// Route documents: the table HTTP listeners route by. Stored documents are put
/// in force here, before any listener starts, so a restarted node routes by
/// them at once; then the store follows gossip.
async fn start_routes(
    config: &Config,
    tls: &Arc<TlsState>,
    gossip: &Arc<Gossip>,
    metrics: &Arc<Metrics>,
    supervisor: &Supervisor,
) -> Result<(SharedRoutes, Arc<RouteStore>), StartError> {
    let routes: SharedRoutes = Arc::default();
    let store = RouteStore::open(
        &config.node.data_dir,
        config.gossip.max_clock_skew,
        tls.clone(),
        gossip.clone(),
        metrics.clone(),
        routes.clone(),
    )
    .await
    .map_err(|cause| StartError::DataDir {
        path: config.node.data_dir.join(crate::routes::ROUTES_DIR),
        cause,
    })?;
    supervisor.spawn("routes", {
        let store = store.clone();
        let stop = supervisor.stop_signal();
        move || store.clone().run(stop.clone())
    });
    Ok((routes, store))
}

/// The revocation list: the stored one (in force since before the endpoint
/// bound) joins gossip; then the store follows gossip and enforces each new list.
async fn start_revocations(
    (config, stored): (&Config, Option<RouteDocument>),
    tls: &Arc<TlsState>,
    core: &Core,
    metrics: &Arc<Metrics>,
    supervisor: &Supervisor,
) -> Arc<RevocationStore> {
    let store = RevocationStore::open(
        &config.node.data_dir,
        stored,
        tls.clone(),
        core.gossip.clone(),
        core.endpoint.clone(),
        metrics.clone(),
    )
    .await;
    supervisor.spawn("revocations", {
        let store = store.clone();
        let stop = supervisor.stop_signal();
        move || store.clone().run(stop.clone())
    });
    store
}

/// The periodic chores (reload, members file, gauges).
fn spawn_housekeeping(supervisor: &Supervisor, chores: Chores, stop: &watch::Receiver<bool>) {
    let chores = Arc::new(chores);
    let stop = stop.clone();
    supervisor.spawn("housekeeping", move || {
        housekeeping(chores.clone(), stop.clone())
    });
}

/// Binds the QUIC endpoint, the admin API and every listener (ports may be 0).
async fn bind(
    config: &Config,
    options: StartOptions,
    tls: &Arc<TlsState>,
    metrics: &Arc<Metrics>,
) -> Result<Sockets, StartError> {
    let bind_err = |field: &str, addr: SocketAddr| {
        let field = field.to_string();
        move |cause| StartError::Bind { field, addr, cause }
    };
    let source = match options.socket {
        Some(s) => SocketSource::Custom(s),
        None => SocketSource::Bind(config.node.listen),
    };
    let listen = config.node.listen;
    let (endpoint, accepted) = MeshEndpoint::new(source, tls.clone(), metrics.clone())
        .map_err(bind_err("node.listen", listen))?;
    endpoint.limit_incoming(config.node.incoming.limits());
    let quic = endpoint
        .local_addr()
        .map_err(bind_err("node.listen", listen))?;
    let admin = TcpListener::bind(config.node.admin)
        .await
        .map_err(bind_err("node.admin", config.node.admin))?;
    let admin_addr = admin
        .local_addr()
        .map_err(bind_err("node.admin", config.node.admin))?;
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let cert = match &l.tls {
            Some(files) => Some(
                IngressCert::load(i, files).map_err(|e| StartError::Listener {
                    field: format!("listener[{i}].tls"),
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let field = format!("listener[{i}].bind");
        let socket = crate::proxy::listen(l.bind).map_err(bind_err(&field, l.bind))?;
        let addr = socket.local_addr().map_err(bind_err(&field, l.bind))?;
        listeners.push((i, l.clone(), socket, addr, cert));
    }
    Ok(Sockets {
        endpoint,
        accepted,
        quic,
        advertise: config.node.advertise_for(quic),
        admin: Arc::new(admin),
        admin_addr,
        listeners,
    })
}

/// The publisher of this node's records as the config describes them.
fn publisher_for(config: &Config, advertise: SocketAddr, generation: u64) -> Publisher {
    let node_record = NodeRecord {
        name: config.node.name.clone(),
        zone: config.node.zone.clone(),
        cluster: config.node.cluster.clone(),
        quic_addr: advertise,
        version: VERSION.to_string(),
        started_at_ms: generation,
        state: NodeState::Serving,
    };
    let services = config
        .services
        .iter()
        .map(crate::reload::service_record)
        .collect();
    Publisher::new(node_record, services)
}

/// The membership state machine and its driver, with the tasks that read
/// gossip connections (started here, under `supervisor`).
#[allow(clippy::too_many_arguments)]
async fn start_gossip(
    config: &Config,
    crypto: NodeCrypto,
    metrics: &Arc<Metrics>,
    endpoint: &Arc<MeshEndpoint>,
    advertise: SocketAddr,
    generation: u64,
    conns: mpsc::Receiver<endpoint::Inbound>,
    supervisor: &Supervisor,
) -> Arc<Gossip> {
    let membership = Membership::new(
        MembershipConfig {
            cluster: config.node.cluster.clone(),
            name: config.node.name.clone(),
            generation,
            timing: config.gossip.timing(),
            limits: config.gossip.limits(),
        },
        crypto,
        crate::seeds::initial(config, advertise).await,
        generation ^ u64::from(advertise.port()),
        std::time::Instant::now(),
    );
    let inbound = Arc::new(FairQueue::new(
        gossip::PEER_INBOUND_QUEUE,
        gossip::INBOUND_QUEUE_BYTES,
    ));
    let (unreachable_tx, unreachable) = mpsc::channel(256);
    let outbound = Outbound::new(endpoint.clone(), metrics.clone(), unreachable_tx);
    let conns = Arc::new(tokio::sync::Mutex::new(conns));
    supervisor.spawn("gossip-inbound", {
        let (queue, metrics) = (inbound.clone(), metrics.clone());
        move || transport::serve_inbound(conns.clone(), queue.clone(), metrics.clone())
    });
    Gossip::new(
        membership,
        advertise,
        Wiring {
            inbound,
            outbound,
            unreachable,
        },
        metrics.clone(),
    )
}

/// The proxy's shared context: the local services and their pools.
fn proxy_context(
    config: &Config,
    endpoint: &Arc<MeshEndpoint>,
    table: &SharedTable,
    metrics: &Arc<Metrics>,
) -> Arc<ProxyContext> {
    Arc::new(ProxyContext {
        node_name: config.node.name.clone(),
        zone: config.node.zone.clone(),
        endpoint: endpoint.clone(),
        table: table.clone(),
        services: ArcSwap::from_pointee(
            config
                .services
                .iter()
                .map(|s| (s.name.clone(), LocalService::new(s.clone(), metrics)))
                .collect(),
        ),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        max_streams_per_connection: config.node.max_streams_per_connection.unwrap_or_else(|| {
            crate::endpoint::stream_cap(
                config.services.iter().map(|s| s.max_connections_per_caller),
            )
        }),
        suspects: Arc::new(crate::proxy::suspects::Suspects::new(
            metrics.proxy.peer_suspicions.clone(),
        )),
        setup_times: Default::default(),
    })
}

/// One health-check task per checked service.
fn spawn_health_checks(
    config: &Config,
    (gossip, publisher, metrics): (&Arc<Gossip>, &Arc<Publisher>, &Arc<Metrics>),
    supervisor: &Supervisor,
) {
    for svc in &config.services {
        spawn_health_check(supervisor, svc, (gossip, publisher, metrics));
    }
}

/// The health-check task of `svc` (`health:NAME`), if it is checked.
pub(crate) fn spawn_health_check(
    supervisor: &Supervisor,
    svc: &crate::config::ServiceConfig,
    (gossip, publisher, metrics): (&Arc<Gossip>, &Arc<Publisher>, &Arc<Metrics>),
) {
    if svc.health.kind == HealthKind::None {
        return;
    }
    let (svc, gossip, publisher, metrics, stop) = (
        svc.clone(),
        gossip.clone(),
        publisher.clone(),
        metrics.clone(),
        supervisor.stop_signal(),
    );
    supervisor.spawn(crate::reload::health_task(&svc.name), move || {
        crate::health::run(
            svc.clone(),
            gossip.clone(),
            publisher.clone(),
            metrics.clone(),
            stop.clone(),
        )
    });
}

/// Starts every listener bound at start; returns their bound addresses.
async fn start_listeners(
    listeners: Vec<BoundListener>,
    reloader: &Reloader,
) -> Result<Vec<(String, SocketAddr)>, StartError> {
    let mut bound = Vec::new();
    for (i, cfg, socket, addr, cert) in listeners {
        bound.push((cfg.name.clone(), addr));
        let name = cfg.name.clone();
        spawn_listener(reloader.parts(), cfg, socket, addr, cert.clone())
            .await
            .map_err(|reason| StartError::Listener {
                field: format!("listener[{i}]"),
                reason,
            })?;
        reloader.started(&name, addr, cert);
    }
    Ok(bound)
}

/// Starts listener `cfg` on `socket` (bound to `addr`) as the supervised
/// task `listener:NAME`.
pub(crate) async fn spawn_listener(
    parts: &crate::reload::Parts,
    cfg: crate::config::ListenerConfig,
    socket: TcpListener,
    addr: SocketAddr,
    cert: Option<Arc<IngressCert>>,
) -> Result<(), String> {
    tracing::info!(
        listener = %cfg.name,
        bind = %addr,
        protocol = %cfg.protocol,
        service = %cfg.service.as_deref().unwrap_or("-"),
        "listening"
    );
    let socket = Arc::new(socket);
    let task = crate::reload::listener_task(&cfg.name);
    let stop = parts.supervisor.stop_signal();
    match cfg.protocol {
        Protocol::Tcp => {
            let listener = tcp::Listener::new(cfg, parts.proxy.clone());
            parts.supervisor.spawn(task, move || {
                listener.clone().run(socket.clone(), stop.clone())
            });
        }
        Protocol::Http => {
            let listener =
                HttpListener::new(cfg, parts.proxy.clone(), parts.routes.clone(), cert).await?;
            parts.supervisor.spawn(task, move || {
                listener.clone().run(socket.clone(), stop.clone())
            });
        }
    }
    Ok(())
}

fn tls_files(config: &Config) -> TlsFiles {
    TlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        ca: config.tls.ca.clone(),
    }
}

async fn reload(
    endpoint: &MeshEndpoint,
    gossip: &Gossip,
    publisher: &Publisher,
    files: &TlsFiles,
) -> Result<(), TlsError> {
    let outcome = endpoint.tls().reload(files)?;
    let identity = endpoint.tls().identity();
    if let Err(e) = publisher.set_certificate(gossip, &identity.cert_der).await {
        tracing::error!(error = %e, "cannot publish the reloaded certificate");
    }
    tracing::info!(
        node = %identity.node_name,
        ca_changed = outcome.ca_changed,
        "reloaded TLS certificate, key and CA"
    );
    if outcome.cert_changed {
        endpoint.retire_pool();
    }
    if outcome.ca_changed {
        gossip.recheck_trust();
        let closed = endpoint.recycle(true);
        if closed > 0 {
            tracing::warn!(
                closed,
                "closed connections of peers the new CA does not trust"
            );
        }
    }
    Ok(())
}

/// How often a certificate about to expire is logged.
const EXPIRY_LOG_EVERY: Duration = Duration::from_secs(3600);

/// Logs, at most every [`EXPIRY_LOG_EVERY`], that this node's certificate
/// expires within `tls::EXPIRY_WARNING` (or has expired); keeps the gauge.
fn warn_of_expiry(tls: &TlsState, warned: &mut Option<(tokio::time::Instant, bool)>) {
    let now = unix_ms() / 1000;
    let Some(left) = tls.check_expiry(i64::try_from(now).unwrap_or(i64::MAX)) else {
        *warned = None;
        return;
    };
    // Logged every hour, and at once when the certificate has just expired.
    let expired = left <= 0;
    if warned.is_some_and(|(t, was)| was == expired && t.elapsed() < EXPIRY_LOG_EVERY) {
        return;
    }
    *warned = Some((tokio::time::Instant::now(), expired));
    let node = tls.identity().node_name.clone();
    if expired {
        tracing::error!(%node, "this node's certificate has expired: peers refuse it; renew it (shoal-pki issue --renew) and reload");
    } else {
        let days = left / 86_400;
        let hours = (left % 86_400) / 3600;
        tracing::warn!(%node, days, hours, "this node's certificate expires soon; renew it (shoal-pki issue --renew) before then");
    }
}

/// What the periodic chores work on.
struct Chores {
    endpoint: Arc<MeshEndpoint>,
    gossip: Arc<Gossip>,
    publisher: Arc<Publisher>,
    proxy: Arc<ProxyContext>,
    files: TlsFiles,
    data_dir: PathBuf,
}

/// Periodic chores: close idle pooled connections (and gossip connections
/// beyond the cap) and recycle those whose
/// certificates expire, publish the local services' in-flight load, reload TLS
/// files when they change on disk, and persist the last known peers.
async fn housekeeping(chores: Arc<Chores>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut saved: Vec<SocketAddr> = crate::seeds::read_members_file(&chores.data_dir);
    let mut expiry_warned: Option<(tokio::time::Instant, bool)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Chores {
            endpoint,
            gossip,
            publisher,
            proxy,
            files,
            data_dir,
        } = &*chores;
        endpoint.reap_idle();
        endpoint.shed_gossip(
            &gossip.neighbour_names(),
            crate::endpoint::GOSSIP_CONNECTION_CAP,
        );
        endpoint.recycle(false);
        for (name, local) in proxy.services().iter() {
            let n = local.active.load(Ordering::Relaxed);
            publisher
                .set_inflight(gossip, name, u32::try_from(n).unwrap_or(u32::MAX))
                .await;
        }
        warn_of_expiry(endpoint.tls(), &mut expiry_warned);
        if endpoint.tls().files_changed(files)
            && let Err(e) = reload(endpoint, gossip, publisher, files).await
        {
            tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the current ones");
        }
        let up: BTreeSet<SocketAddr> = gossip
            .view()
            .members
            .iter()
            .filter(|m| m.is_up() && !m.is_self)
            .filter_map(|m| m.addr())
            .collect();
        if let Some(next) = crate::seeds::peers_to_save(gossip.advertise(), &saved, &up) {
            crate::seeds::write_members_file(data_dir, &next);
            saved = next;
        }
    }
}
