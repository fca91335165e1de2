//! Proxying: local listeners send each accepted TCP connection through the mesh
//! to a healthy endpoint of their service; the endpoint's node checks the caller
//! and hands the stream to its local backend.
//!
//! ```text
//! client ─TCP─▶ listener (tcp.rs) ─ pick endpoint (mesh_proto::lb) ─┬─ same node: TCP to the backend
//!                                                                    └─ QUIC stream: StreamHeader ▶
//!                            inbound.rs ◀──────────────────────────────┘  ◀ StreamStatus, then bytes
//!                              └─ checks (service, caller, allow-list, limits) ─TCP─▶ backend
//!
//! client ─HTTP─▶ listener (http.rs, http/forward.rs) ─ route, pick ─┬─ same node: pooled backend connection
//!        outbound_http.rs: StreamHeader ▶ RequestHead ▶ body ▶ end ─┘
//!                            inbound.rs ─ checks ─ inbound_http.rs ─HTTP/1.1 (backend_pool.rs)─▶ backend
//!        ◀ ResponseHead, body, end  |  ◀ NotForwarded (retry elsewhere)   (exchange.rs: the parts)
//! ```
//!
//! Both ends move bytes with [`splice`], which keeps half-close, resets and
//! backpressure. A failure before any payload was sent (dial, refusal, status other
//! than `ok`) is retried on another endpoint; the caller's outlier detection ejects
//! endpoints that keep failing. An open slow to be accepted is hedged on a second
//! endpoint ([`hedge`]), and a peer whose connection fails or goes silent is
//! avoided by the whole node at once ([`suspects`]).

pub mod access_log;
pub mod admission;
pub mod backend_pool;
pub mod backend_tls;
pub mod balance;
pub mod body;
pub mod exchange;
pub mod headers;
pub mod hedge;
pub mod http;
pub mod inbound;
pub mod inbound_http;
pub mod ingress_tls;
pub mod observed;
pub mod outbound_http;
pub mod splice;
pub mod suspects;
pub mod tcp;
pub mod upgrade;
pub mod upstream;

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::config::ServiceConfig;
use crate::endpoint::MeshEndpoint;
use crate::metrics::Metrics;
use crate::routing::SharedTable;

/// Accept-queue length of listener sockets. The common default (128) overflows
/// under bursts of new connections, and an overflow costs the client a SYN
/// retransmission — a full second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`] (the kernel caps it at
/// `net.core.somaxconn`).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Longest time a peer may take to send a complete stream header.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A local service as the proxies see it: its config and how many tunnelled
/// connections it has open.
#[derive(Debug)]
pub struct LocalService {
    /// Its configuration.
    pub config: ServiceConfig,
    /// Connections open to its backend through the mesh (and from local listeners).
    pub active: Arc<AtomicUsize>,
    /// Of those, how many each calling node holds.
    pub callers: admission::CallerCounts,
    /// Idle keep-alive connections to its backend, for tunnelled HTTP requests.
    pub pool: Arc<backend_pool::BackendPool>,
    /// Its serving-side metric handles.
    pub counters: crate::metrics::ServiceCounters,
}

impl LocalService {
    /// The same service under its new `config` (a reload): its connections,
    /// callers and counters carry over; its idle backend connections too,
    /// unless the backend's address changed.
    pub fn reconfigured(&self, config: ServiceConfig) -> Self {
        let same_backend = config.address == self.config.address
            && config.http2 == self.config.http2
            && config.tls == self.config.tls;
        let pool = if same_backend {
            self.pool.clone()
        } else {
            Arc::new(backend_pool::BackendPool::for_service(&config))
        };
        LocalService {
            active: self.active.clone(),
            callers: self.callers.clone(),
            pool,
            counters: self.counters.clone(),
            config,
        }
    }

    /// The service `config` describes, with no connection open yet.
    pub fn new(config: ServiceConfig, metrics: &Metrics) -> Self {
        LocalService {
            active: Arc::new(AtomicUsize::new(0)),
            callers: Arc::default(),
            pool: Arc::new(backend_pool::BackendPool::for_service(&config)),
            counters: crate::metrics::ServiceCounters::new(metrics, &config.name),
            config,
        }
    }
}

/// What the proxies share with the rest of the node.
#[derive(Debug)]
pub struct ProxyContext {
    /// This node's name.
    pub node_name: String,
    /// This node's zone.
    pub zone: String,
    /// The QUIC endpoint.
    pub endpoint: Arc<MeshEndpoint>,
    /// The routing table.
    pub table: SharedTable,
    /// Local services by name; swapped whole by a config reload.
    pub services: ArcSwap<HashMap<String, LocalService>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set when the node drains: inbound streams are refused with `draining`.
    pub draining: AtomicBool,
    /// The most tunnel streams one peer connection may have open.
    pub max_streams_per_connection: u32,
    /// Peers this node suspects from its own connections.
    pub suspects: Arc<suspects::Suspects>,
    /// Recent tunnel setups, for the hedge delay.
    pub setup_times: hedge::SetupTimes,
}

impl ProxyContext {
    /// The local services in force now.
    pub fn services(&self) -> Arc<HashMap<String, LocalService>> {
        self.services.load_full()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Decrements a counter when dropped.
#[derive(Debug)]
pub struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    /// Increments `counter` unless it is already at `max`.
    pub fn try_acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| CountGuard(counter.clone()))
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP service `name` with a backend at 127.0.0.1:5432 that is never
/// checked, its allow-lists and connection limit as given (for unit tests).
#[cfg(test)]
pub(crate) fn test_service(
    name: &str,
    allow_nodes: &[&str],
    allow_services: &[&str],
    max_connections: u32,
) -> LocalService {
    use std::time::Duration;

    use crate::config::{HealthConfig, HealthKind, ServiceConfig};
    let config = ServiceConfig {
        name: name.into(),
        address: std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
        protocol: mesh_proto::tunnel::Protocol::Tcp,
        weight: 1,
        tags: Vec::new(),
        health: HealthConfig {
            kind: HealthKind::None,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        },
        allow_nodes: allow_nodes.iter().map(|s| s.to_string()).collect(),
        allow_services: allow_services.iter().map(|s| s.to_string()).collect(),
        max_connections,
        max_connections_per_caller: max_connections,
        connect_timeout: Duration::from_secs(1),
        http_idle_timeout: Duration::ZERO,
        http2: false,
        tls: None,
        idle_timeout: Duration::from_secs(600),
        response_timeout: Duration::from_secs(60),
    };
    LocalService::new(config, &Metrics::new())
}
