//! Wiring: builds a running node from a validated [`Config`] and returns a
//! handle with the addresses it actually bound (so tests and the simulator can
//! use port 0) and the ways to stop it. `shoal run` is a thin main around this.
//!
//! ```text
//!  UDP socket ─ MeshEndpoint ─┬─ shoal-gossip/1 ─ QuicTransport ─ chitchat ─┐
//!                             └─ shoal-tunnel/1 ─ (proxying)                │ live members
//!  health checks ─ Publisher ─────────────── own keys ──────────────────────┤
//!                                                    routing::run ◀─────────┘
//!                                                         │ ArcSwap<RoutingTable>
//!                                              admin API ◀┘
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use chitchat::ChitchatId;
use mesh_proto::gossip::{Health, NodeRecord, NodeState, ServiceRecord};
use mesh_proto::routing::RoutingTable;
use mesh_proto::tunnel::Protocol;
use quinn::AsyncUdpSocket;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, MemberView};
use crate::config::{Config, HealthKind};
use crate::endpoint::{self, MeshEndpoint, SocketSource};
use crate::gossip::{Gossip, GossipError, QuicTransport, transport};
use crate::metrics::Metrics;
use crate::proxy::backend_pool::BackendPool;
use crate::proxy::http::HttpListener;
use crate::proxy::ingress_tls::IngressCert;
use crate::proxy::{LocalService, ProxyContext, inbound, tcp};
use crate::publish::Publisher;
use crate::routes::{RouteStore, SharedRoutes};
use crate::routing::{self, SharedTable};
use crate::tls::{TlsError, TlsFiles, TlsState};

/// The software version published in the node record.
pub const VERSION: &str = concat!("shoal ", env!("CARGO_PKG_VERSION"));
/// File in the data directory holding the last known peers' addresses.
pub const MEMBERS_FILE: &str = "members.json";

/// How to start a node beyond its config.
#[derive(Default)]
pub struct StartOptions {
    /// Use this UDP socket for the QUIC endpoint instead of binding `node.listen`
    /// (the simulator wraps sockets to inject faults).
    pub socket: Option<Arc<dyn AsyncUdpSocket>>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("custom_socket", &self.socket.is_some())
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
    /// chitchat did not start.
    #[error(transparent)]
    Gossip(#[from] GossipError),
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
    ingress: Vec<Arc<IngressCert>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Starts a node. Must run inside a tokio runtime.
    pub async fn start(config: Config, options: StartOptions) -> Result<Node, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let files = tls_files(&config);
        let tls = TlsState::load(&files, metrics.clone())?;
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

        let source = match options.socket {
            Some(s) => SocketSource::Custom(s),
            None => SocketSource::Bind(config.node.listen),
        };
        let endpoint =
            MeshEndpoint::new(source, tls.clone(), metrics.clone()).map_err(|cause| {
                StartError::Bind {
                    field: "node.listen".into(),
                    addr: config.node.listen,
                    cause,
                }
            })?;
        let quic = endpoint.local_addr().map_err(|cause| StartError::Bind {
            field: "node.listen".into(),
            addr: config.node.listen,
            cause,
        })?;
        let advertise = config.node.advertise_for(quic);
        let admin_listener = TcpListener::bind(config.node.admin)
            .await
            .map_err(|cause| StartError::Bind {
                field: "node.admin".into(),
                addr: config.node.admin,
                cause,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|cause| StartError::Bind {
                field: "node.admin".into(),
                addr: config.node.admin,
                cause,
            })?;

        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let cert = match &l.tls {
                Some(files) => {
                    Some(
                        IngressCert::load(i, files).map_err(|e| StartError::Listener {
                            field: format!("listener[{i}].tls"),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            };
            let socket = crate::proxy::listen(l.bind).map_err(|cause| StartError::Bind {
                field: format!("listener[{i}].bind"),
                addr: l.bind,
                cause,
            })?;
            let addr = socket.local_addr().map_err(|cause| StartError::Bind {
                field: format!("listener[{i}].bind"),
                addr: l.bind,
                cause,
            })?;
            listeners.push((i, l.clone(), socket, addr, cert));
        }

        let generation = unix_ms();
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
            .map(|s| ServiceRecord {
                name: s.name.clone(),
                protocol: s.protocol,
                weight: s.weight,
                health: if s.health.kind == HealthKind::None {
                    Health::Healthy
                } else {
                    Health::Unknown
                },
                inflight: 0,
                tags: s.tags.clone(),
            })
            .collect();
        let publisher = Arc::new(Publisher::new(node_record, services));
        let initial = publisher.initial_values(&identity.cert_der).await;

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let (gossip_conns_tx, gossip_conns_rx) = mpsc::channel(64);
        let (tunnel_conns_tx, tunnel_conns_rx) = mpsc::channel::<endpoint::Inbound>(64);
        // Before any task runs: gossip may dial a seed at once, and the
        // connection it opens must be read from its first reply on.
        endpoint.set_gossip_reader(gossip_conns_tx.clone());
        tasks.push(tokio::spawn(
            endpoint
                .clone()
                .accept_loop(gossip_conns_tx, tunnel_conns_tx),
        ));
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
        let proxy = Arc::new(ProxyContext {
            node_name: config.node.name.clone(),
            zone: config.node.zone.clone(),
            endpoint: endpoint.clone(),
            table: table.clone(),
            services: config
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        LocalService {
                            config: s.clone(),
                            active: Arc::new(AtomicUsize::new(0)),
                            pool: Arc::new(BackendPool::new(s.address, s.http_idle_timeout)),
                            counters: crate::metrics::ServiceCounters::new(&metrics, &s.name),
                        },
                    )
                })
                .collect(),
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
        });
        tasks.push(tokio::spawn(inbound::serve(tunnel_conns_rx, proxy.clone())));
        tasks.push(tokio::spawn(inbound::reap_pools(proxy.clone())));
        let (transport, to_chitchat) = QuicTransport::new(endpoint.clone(), metrics.clone());
        tasks.push(tokio::spawn(transport::serve_inbound(
            gossip_conns_rx,
            to_chitchat,
            metrics.clone(),
        )));

        let mut seeds = config.node.seeds.clone();
        for addr in read_members_file(&config.node.data_dir) {
            let s = addr.to_string();
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        seeds.retain(|s| s.parse::<SocketAddr>().ok() != Some(advertise));
        let self_id = ChitchatId::new(config.node.name.clone(), generation, advertise);
        let gossip = Arc::new(
            Gossip::start(
                self_id,
                &config.node.cluster,
                seeds,
                &config.gossip,
                initial,
                &transport,
            )
            .await?,
        );

        tasks.push(tokio::spawn(routing::run(
            gossip.clone(),
            tls.clone(),
            table.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )));
        for svc in config
            .services
            .iter()
            .filter(|s| s.health.kind != HealthKind::None)
        {
            tasks.push(tokio::spawn(crate::health::run(
                svc.clone(),
                gossip.clone(),
                publisher.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )));
        }
        // Route documents: the merged table HTTP listeners route by.
        let routes: SharedRoutes = Arc::default();
        // Stored documents are loaded, merged and published before any listener
        // starts, so a restarted node routes by them at once.
        let route_store = RouteStore::open(
            &config.node.data_dir,
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
        tasks.push(tokio::spawn(route_store.clone().run(stop_rx.clone())));
        let admin = Arc::new(AdminState {
            config: config.clone(),
            gossip: gossip.clone(),
            table: table.clone(),
            routes: routes.clone(),
            route_store,
            metrics: metrics.clone(),
            publisher: publisher.clone(),
            joined: AtomicBool::new(false),
        });
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            admin.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(housekeeping(
            endpoint.clone(),
            gossip.clone(),
            publisher.clone(),
            proxy.clone(),
            files,
            config.node.data_dir.clone(),
            stop_rx.clone(),
        )));

        let mut bound_listeners = Vec::new();
        let mut ingress = Vec::new();
        for (i, cfg, socket, addr, cert) in listeners {
            bound_listeners.push((cfg.name.clone(), addr));
            tracing::info!(
                listener = %cfg.name,
                bind = %addr,
                protocol = %cfg.protocol,
                service = %cfg.service.as_deref().unwrap_or("-"),
                "listening"
            );
            match cfg.protocol {
                Protocol::Tcp => {
                    let listener = tcp::Listener::new(cfg, proxy.clone());
                    tasks.push(tokio::spawn(listener.run(socket, stop_rx.clone())));
                }
                Protocol::Http => {
                    ingress.extend(cert.clone());
                    let listener = HttpListener::new(cfg, proxy.clone(), routes.clone(), cert)
                        .await
                        .map_err(|reason| StartError::Listener {
                            field: format!("listener[{i}]"),
                            reason,
                        })?;
                    tasks.push(tokio::spawn(listener.run(socket, stop_rx.clone())));
                }
            }
        }
        let bound = Bound {
            quic,
            advertise,
            admin: admin_addr,
            listeners: bound_listeners,
        };
        tracing::info!(
            node = %config.node.name,
            quic = %quic,
            advertise = %advertise,
            admin = %admin::describe(admin_addr),
            "node started"
        );
        Ok(Node {
            config,
            bound,
            endpoint,
            gossip,
            publisher,
            table,
            admin,
            metrics,
            proxy,
            routes,
            ingress,
            stop,
            tasks,
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

    /// The gossip layer: writes go to this node's own key space only.
    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Re-reads the TLS files (as on SIGHUP): new connections use the new
    /// certificate, established ones are kept; the new certificate is published.
    pub async fn reload_tls(&self) -> Result<(), TlsError> {
        for cert in &self.ingress {
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

    async fn stop_everything(self) {
        // Gossip first, while its transport still runs.
        self.gossip.stop().await;
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
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
    publisher.set_certificate(gossip, &identity.cert_der).await;
    tracing::info!(
        node = %identity.node_name,
        ca_changed = outcome.ca_changed,
        "reloaded TLS certificate, key and CA"
    );
    if outcome.cert_changed {
        endpoint.retire_pool();
    }
    if outcome.ca_changed {
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

/// Periodic chores: close idle pooled connections and recycle those whose
/// certificates expire, publish the local services' in-flight load, reload TLS
/// files when they change on disk, and persist the last known peers.
async fn housekeeping(
    endpoint: Arc<MeshEndpoint>,
    gossip: Arc<Gossip>,
    publisher: Arc<Publisher>,
    proxy: Arc<ProxyContext>,
    files: TlsFiles,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut saved: Vec<SocketAddr> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        endpoint.reap_idle(endpoint::POOL_IDLE);
        endpoint.recycle(false);
        for (name, local) in &proxy.services {
            let n = local.active.load(Ordering::Relaxed);
            publisher
                .set_inflight(&gossip, name, u32::try_from(n).unwrap_or(u32::MAX))
                .await;
        }

        if endpoint.tls().files_changed(&files)
            && let Err(e) = reload(&endpoint, &gossip, &publisher, &files).await
        {
            tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the current ones");
        }

        let me = gossip.self_id().gossip_advertise_addr;
        let mut peers: Vec<SocketAddr> = gossip
            .members(&[])
            .await
            .into_iter()
            .filter(|m| m.alive && m.addr != me)
            .map(|m| m.addr)
            .collect();
        peers.sort();
        peers.dedup();
        if !peers.is_empty() && peers != saved {
            write_members_file(&data_dir, &peers);
            saved = peers;
        }
    }
}

fn read_members_file(dir: &Path) -> Vec<SocketAddr> {
    std::fs::read(dir.join(MEMBERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<SocketAddr>>(&b).ok())
        .unwrap_or_default()
}

fn write_members_file(dir: &Path, peers: &[SocketAddr]) {
    let Ok(json) = serde_json::to_vec_pretty(peers) else {
        return;
    };
    if let Err(e) = shoal_pki::files::write_atomic(&dir.join(MEMBERS_FILE), &json, false) {
        tracing::warn!(error = %e, "cannot save the last known members");
    }
}
