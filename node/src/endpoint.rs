//! The node's one QUIC endpoint: one UDP socket carrying gossip and tunnels,
//! told apart by ALPN. Outbound connections are pooled per (peer address, use)
//! and reused; unused ones are closed after a while; a broken one is replaced
//! on next use. Inbound connections are handed to the subsystem their ALPN names.
//!
//! The socket is either bound here (with 4 MiB socket buffers: the default ones
//! drop datagrams under load) or handed in by the caller — the simulator wraps the
//! real socket to inject partitions and loss underneath QUIC. Either way
//! quinn sends through [`udp::SplitSends`], which keeps every send within what
//! the kernel accepts.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncUdpSocket, Connection, Runtime, TokioRuntime, TransportConfig, VarInt};
use shoal_pki::CertIdentity;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::tls::{self, ALPN_GOSSIP, ALPN_TUNNEL, ANY_NODE, TlsState};

pub mod connections;
pub mod incoming;
pub mod udp;

pub use incoming::IncomingLimits;
use incoming::{IncomingGate, Verdict};

/// The place an accepted connection holds in the endpoint's caps, given back
/// when it is dropped (the connection closed, or its handshake failed).
struct OpenSlot {
    endpoint: Arc<MeshEndpoint>,
    remote: SocketAddr,
    handshaking: bool,
}

impl OpenSlot {
    /// The handshake finished: the place no longer counts as a handshake.
    fn established(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.endpoint.gate().established(self.remote);
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.endpoint.gate().closed(self.remote, self.handshaking);
    }
}

/// UDP socket buffer size asked for (send and receive).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// How long dialling a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an inbound handshake may take before it is dropped (its place in
/// `node.max_handshakes` freed): as long as this node gives its own dials.
pub const ACCEPT_HANDSHAKE_TIMEOUT: Duration = CONNECT_TIMEOUT;
/// QUIC keep-alive interval; with [`IDLE_TIMEOUT`] it bounds how long a dead
/// peer's connection lingers.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// QUIC idle timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest this node asks a peer to hold an acknowledgement (QUIC's ACK
/// frequency extension, which quinn implements on both sides: without it a
/// peer may wait its own `max_ack_delay`, 25 ms). A live peer's silence then
/// means something sooner: a hedge or a suspicion of a silent peer waits
/// 2 × (this + RTT) (`proxy::hedge::suspicion_silence`). Under load
/// acknowledgements ride on other packets, every second packet is
/// acknowledged anyway, and the delay changes nothing.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
/// A pooled tunnel connection unused for this long is closed.
pub const POOL_IDLE: Duration = Duration::from_secs(60);
/// A pooled gossip connection this node sent nothing on for this long is
/// closed. A neighbour on the overlay gets a probe or an exchange every few
/// seconds, so only connections to former neighbours, seeds and members
/// reached once (an indirect probe, a dead member's check) close: the
/// connections a node holds follow its overlay neighbours.
pub const GOSSIP_POOL_IDLE: Duration = Duration::from_secs(15);
/// A pooled connection whose peer certificate expires within this time is no
/// longer handed out: new streams get a fresh handshake (and the peer's renewed
/// certificate). Connections are closed outright when the certificate expires.
pub const RETIRE_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Use {
    /// Gossip (`shoal-gossip/2`).
    Gossip,
    /// Proxied traffic (`shoal-tunnel/2`).
    Tunnel,
}

impl Use {
    /// How long a pooled connection of this use may go unused before it is
    /// closed.
    pub fn pool_idle(self) -> Duration {
        match self {
            Use::Gossip => GOSSIP_POOL_IDLE,
            Use::Tunnel => POOL_IDLE,
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Use::Gossip => ALPN_GOSSIP,
            Use::Tunnel => ALPN_TUNNEL,
        }
    }
}

/// Where the endpoint's UDP socket comes from.
#[derive(Debug)]
pub enum SocketSource {
    /// Bind this address (port 0: any).
    Bind(SocketAddr),
    /// Use this socket (for fault injection).
    Custom(Arc<dyn AsyncUdpSocket>),
}

/// Why a connection could not be had.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// quinn refused to start the connection.
    #[error("cannot dial {addr}: {source}")]
    Start {
        /// The peer.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The handshake failed (peer down, certificate refused by either side).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectionError,
    },
    /// No answer within [`CONNECT_TIMEOUT`].
    #[error("no answer from {addr} within {CONNECT_TIMEOUT:?}; is the peer up and UDP reachable?")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
    },
    /// The endpoint is shutting down.
    #[error("the endpoint is closed")]
    Closed,
    /// The peer's certificate was revoked while the handshake ran.
    #[error("{addr} presented a certificate the revocation list revokes")]
    Revoked {
        /// The peer.
        addr: SocketAddr,
    },
    /// Another node than the one expected answered.
    #[error("{addr} is node {found:?}, not {expected:?}")]
    WrongNode {
        /// The address dialled.
        addr: SocketAddr,
        /// The node expected there.
        expected: String,
        /// The node that answered.
        found: String,
    },
    /// The node answered with a certificate that does not allow the service
    /// asked for (a certificate published in gossip is not the one it holds).
    #[error("{node} ({addr}) presented a certificate that does not allow service {service:?}")]
    ServiceNotAllowed {
        /// The address dialled.
        addr: SocketAddr,
        /// The node.
        node: String,
        /// The service.
        service: String,
    },
}

/// An accepted, authenticated inbound connection.
#[derive(Debug)]
pub struct Inbound {
    /// The connection.
    pub conn: Connection,
    /// The peer's identity from its certificate.
    pub peer: CertIdentity,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<Connection>,
    /// The node name in the pooled connection's peer certificate.
    peer: Option<String>,
    /// The services that certificate allows its node to host.
    services: Arc<[String]>,
    last_used: Option<Instant>,
    /// When this node dialled the connection (`None` if it was accepted).
    dialled_at: Option<Instant>,
}

/// The node name and the services in a connection's peer certificate.
fn peer_of(conn: &Connection) -> (Option<String>, Arc<[String]>) {
    match tls::peer_identity(conn.peer_identity()) {
        Some(id) => (id.node, id.services.into()),
        None => (None, Arc::from(Vec::new())),
    }
}

/// Two nodes whose connections to each other were both established within this
/// long dialled each other at once (see `MeshEndpoint::adopt`).
const DIAL_RACE: Duration = Duration::from_secs(5);

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

impl Slot {
    /// The pooled connection and its peer's services, if it is open and (with
    /// `node`) to that node; marked used.
    fn usable(&mut self, node: Option<&str>) -> Option<(Connection, Arc<[String]>)> {
        let conn = self.conn.as_ref()?;
        let same_node = node.is_none_or(|n| self.peer.as_deref() == Some(n));
        if conn.close_reason().is_some() || !same_node {
            return None;
        }
        let found = (conn.clone(), self.services.clone());
        self.last_used = Some(Instant::now());
        Some(found)
    }
}

/// The QUIC endpoint and its outbound connection pool.
#[derive(Debug)]
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    tls: Arc<TlsState>,
    pool: Mutex<HashMap<(SocketAddr, Use), SlotRef>>,
    metrics: Arc<Metrics>,
    open_streams: AtomicUsize,
    tracked: Mutex<Vec<Tracked>>,
    /// Where gossip connections go: accepted ones, and the ones this endpoint
    /// dials (the peer sends its gossip back over them).
    gossip_inbound: mpsc::Sender<Inbound>,
    /// Where accepted tunnel connections go.
    tunnel_inbound: mpsc::Sender<Inbound>,
    /// Which connection attempts are taken (caps, Retry).
    incoming: Mutex<IncomingGate>,
}

/// How many connections of one use may wait to be taken from [`Accepted`].
pub const ACCEPT_QUEUE: usize = 64;

/// The connections a [`MeshEndpoint`] hands over, by use: made with the endpoint,
/// so that no connection can arrive before someone can take it.
#[derive(Debug)]
pub struct Accepted {
    /// Gossip connections, accepted or dialled: the gossip layer reads every
    /// stream the peer opens on them.
    pub gossip: mpsc::Receiver<Inbound>,
    /// Accepted tunnel connections.
    pub tunnel: mpsc::Receiver<Inbound>,
}

/// Raises the number of concurrent tunnel streams `conn`'s peer may open when
/// `open` of them are in use and the current `limit` is nearly reached, up to
/// `cap`; returns the new limit. quinn allocates per-stream state for the whole
/// limit, so growing on demand keeps idle connections small.
pub fn grow_stream_limit(conn: &Connection, open: u32, limit: u32, cap: u32) -> u32 {
    match next_stream_limit(open, limit, cap) {
        Some(next) => {
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(next));
            tracing::debug!(peer = %conn.remote_address(), open, limit = next, "raised the tunnel stream limit");
            next
        }
        None => limit,
    }
}

/// The stream limit [`grow_stream_limit`] moves to: double, once three
/// quarters of `limit` are open, never above `cap` (nor [`MAX_TUNNEL_STREAMS`]);
/// `None` to stay.
pub fn next_stream_limit(open: u32, limit: u32, cap: u32) -> Option<u32> {
    let cap = cap.min(MAX_TUNNEL_STREAMS);
    (open.saturating_mul(4) >= limit.saturating_mul(3) && limit < cap)
        .then(|| limit.saturating_mul(2).min(cap))
}

/// The most tunnel streams one peer connection may have open, unless
/// configured (`node.max_streams_per_connection`): what one caller can hold of
/// the hosted services (the sum of their `max_connections_per_caller`), plus a
/// quarter and [`INITIAL_TUNNEL_STREAMS`] of headroom — so a caller that holds
/// its whole share still gets a stream on which to be told `overloaded` at
/// once (and tries elsewhere) rather than wait for stream credit; at most
/// [`MAX_TUNNEL_STREAMS`].
pub fn stream_cap(per_caller: impl IntoIterator<Item = u32>) -> u32 {
    let sum: u64 = per_caller.into_iter().map(u64::from).sum();
    let cap = sum + sum / 4 + u64::from(INITIAL_TUNNEL_STREAMS);
    u32::try_from(cap)
        .unwrap_or(u32::MAX)
        .min(MAX_TUNNEL_STREAMS)
}

/// A live connection and the certificate its peer authenticated with.
#[derive(Debug)]
struct Tracked {
    conn: Connection,
    peer_cert: rustls::pki_types::CertificateDer<'static>,
    peer_not_after: i64,
    /// The node name in the peer's certificate, read once (the gossip
    /// connection cap, checked every 2 s, needs it for every connection).
    peer_node: Option<String>,
    pooled_as: Option<(SocketAddr, Use)>,
    gossip: bool,
}

/// Gossip connections a node keeps open at most (beyond its overlay
/// neighbours'): the scaling target of issue 13 (see
/// [`MeshEndpoint::shed_gossip`]).
pub const GOSSIP_CONNECTION_CAP: usize = 16;

/// Which of `open` connections (when this node last used each, and whether it
/// must be kept) to close so that at most `cap` stay: the least recently used
/// ones not kept first (never used counts as oldest). Indices into `open`.
pub fn shed_order(open: &[(Option<Instant>, bool)], cap: usize) -> Vec<usize> {
    let excess = open.len().saturating_sub(cap);
    let mut candidates: Vec<usize> = (0..open.len()).filter(|&i| !open[i].1).collect();
    candidates.sort_by_key(|&i| open[i].0);
    candidates.truncate(excess);
    candidates
}

/// Bidirectional (tunnel) streams a peer may open at first on a connection this
/// node accepted. quinn allocates state for every stream the limit allows, up
/// front, so the limit starts small and grows with use (see
/// [`grow_stream_limit`]).
pub const INITIAL_TUNNEL_STREAMS: u32 = 256;
/// Bytes one stream may have in flight towards this node.
pub const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
/// Bytes all streams of one connection may have in flight towards this node.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// The most concurrent tunnel streams one peer may have open to this node.
pub const MAX_TUNNEL_STREAMS: u32 = 65_536;

/// The transport parameters of connections this node accepts (`accepting`) or
/// dials. Only the dialling side opens bidirectional streams (tunnels), so a
/// dialled connection allows none from its peer; gossip uses unidirectional
/// streams both ways.
pub fn transport_config(accepting: bool, use_: Option<Use>) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(if accepting {
        INITIAL_TUNNEL_STREAMS
    } else {
        0
    }));
    if use_ == Some(Use::Tunnel) {
        // On a tunnel connection this node dials, the peer never opens streams.
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        return finish_transport(t);
    }
    // Uni streams carry gossip only, one message each (at most 128 KiB), so this
    // bounds what one peer can make this node buffer.
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    finish_transport(t)
}

/// The largest UDP payload this node sends or accepts: what path MTU discovery
/// may grow a connection's packets to (quinn's default stops at 1,452, an
/// Ethernet frame). Jumbo-frame links (8,972 bytes of UDP payload) and loopback
/// carry more, and larger packets cut the per-packet work of a bulk transfer
/// (measured in docs/benchmarks.md: 1,452 → 6,500 bytes took a 1 GiB transfer
/// from 2.1 to 1.3 CPU seconds; 6,500 → 16,000 about 6 % less again). quinn
/// hands the socket up to ten packets per GSO send, more than one UDP send may
/// carry once packets pass 6,550 bytes: [`udp::SplitSends`] cuts such batches
/// into sends the kernel accepts.
pub const MAX_UDP_PAYLOAD: u16 = 16_000;

/// The endpoint's settings: [`MAX_UDP_PAYLOAD`] advertised to peers (it bounds
/// the packets they send here).
fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    if c.max_udp_payload_size(MAX_UDP_PAYLOAD).is_err() {
        tracing::warn!(
            MAX_UDP_PAYLOAD,
            "quinn refused the UDP payload size; keeping its default"
        );
    }
    c
}

/// Path MTU discovery up to [`MAX_UDP_PAYLOAD`]; a path that carries less (an
/// Ethernet link) settles at what it carries, its lost probes costing nothing.
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(MAX_UDP_PAYLOAD);
    m
}

fn finish_transport(mut t: TransportConfig) -> TransportConfig {
    // Bound what one connection can make this node buffer: per stream, and for
    // all of a connection's streams together.
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.mtu_discovery_config(Some(mtu_discovery()));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .unwrap_or(quinn::IdleTimeout::from(VarInt::from_u32(10_000))),
    ));
    t
}

/// Binds a UDP socket with enlarged buffers (best effort: the kernel may cap them).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES).ok();
    socket.set_send_buffer_size(SOCKET_BUFFER_BYTES).ok();
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl MeshEndpoint {
    /// Creates the endpoint. Must run inside a tokio runtime.
    /// An endpoint on `source`, and where the connections it accepts (and the
    /// gossip connections it dials) are handed over: nothing is accepted until
    /// [`MeshEndpoint::accept_loop`] runs.
    pub fn new(
        source: SocketSource,
        tls: Arc<TlsState>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Arc<Self>, Accepted)> {
        let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime);
        let socket = match source {
            SocketSource::Bind(addr) => runtime.wrap_udp_socket(bind_udp(addr)?)?,
            SocketSource::Custom(s) => s,
        };
        let socket: Arc<dyn AsyncUdpSocket> = udp::SplitSends::new(socket);
        let server_config = server_config(&tls, Arc::new(transport_config(true, None)))?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server_config),
            socket,
            runtime,
        )?;
        for reason in incoming::REFUSAL_REASONS
            .into_iter()
            .chain([incoming::HANDSHAKE_TIMEOUT])
        {
            let _ = metrics
                .tls
                .incoming_refused
                .get_or_create(&crate::metrics::ReasonLabels { reason });
        }
        let (gossip_inbound, gossip) = mpsc::channel(ACCEPT_QUEUE);
        let (tunnel_inbound, tunnel) = mpsc::channel(ACCEPT_QUEUE);
        let me = Arc::new(MeshEndpoint {
            endpoint,
            tls,
            pool: Mutex::new(HashMap::new()),
            metrics,
            open_streams: AtomicUsize::new(0),
            tracked: Mutex::new(Vec::new()),
            gossip_inbound,
            tunnel_inbound,
            incoming: Mutex::new(IncomingGate::new(IncomingLimits::DEFAULT)),
        });
        Ok((me, Accepted { gossip, tunnel }))
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The TLS state (for reloads and identity).
    pub fn tls(&self) -> &Arc<TlsState> {
        &self.tls
    }

    /// A connection to `addr` for `use_`, from the pool or newly dialled. With
    /// `node`, the peer must present that node's certificate; without, any mesh
    /// node will do.
    pub async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        use_: Use,
        node: Option<&str>,
    ) -> Result<Connection, ConnectError> {
        self.pooled(addr, use_, node).await.map(|(conn, _)| conn)
    }

    /// A tunnel connection to `node` at `addr` for a stream to `service`: the
    /// certificate the node presented in the handshake must allow the service,
    /// so a certificate republished in gossip cannot keep a service its node's
    /// current one dropped. A refusal is counted
    /// (`shoal_rejected_peers_total{reason="service_not_allowed"}`); the
    /// connection stays for the services it does allow.
    pub async fn connect_for_service(
        self: &Arc<Self>,
        addr: SocketAddr,
        node: &str,
        service: &str,
    ) -> Result<Connection, ConnectError> {
        let (conn, services) = self.pooled(addr, Use::Tunnel, Some(node)).await?;
        if services.iter().any(|s| s == service) {
            return Ok(conn);
        }
        self.metrics
            .tls
            .reject(tls::Rejection::ServiceNotAllowed.as_str());
        Err(ConnectError::ServiceNotAllowed {
            addr,
            node: node.to_string(),
            service: service.to_string(),
        })
    }

    /// The pooled connection for (`addr`, `use_`), dialled if there is none (or
    /// it is to another node than `node`), and the services its peer's
    /// certificate allows. The dial runs in a task of its own: a caller that
    /// gives up (a hedge won, a deadline passed) does not cancel it, so a slow
    /// handshake still completes for the next caller and a dead peer's dial
    /// still ends in its error for whoever waits on it.
    async fn pooled(
        self: &Arc<Self>,
        addr: SocketAddr,
        use_: Use,
        node: Option<&str>,
    ) -> Result<(Connection, Arc<[String]>), ConnectError> {
        let slot = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry((addr, use_)).or_default().clone()
        };
        // The usual case, a live connection to the right node and nobody
        // dialling, needs no task.
        if let Ok(mut held) = slot.try_lock()
            && let Some(found) = held.usable(node)
        {
            return Ok(found);
        }
        let this = self.clone();
        let node = node.map(str::to_string);
        tokio::spawn(async move { this.fill(slot, addr, use_, node.as_deref()).await })
            .await
            .unwrap_or(Err(ConnectError::Closed))
    }

    /// [`Self::pooled`]'s work, holding the slot.
    async fn fill(
        &self,
        slot: SlotRef,
        addr: SocketAddr,
        use_: Use,
        node: Option<&str>,
    ) -> Result<(Connection, Arc<[String]>), ConnectError> {
        let mut slot = slot.lock().await;
        if let Some(found) = slot.usable(node) {
            return Ok(found);
        }
        let conn = self.dial(addr, use_, ANY_NODE).await?;
        let (peer, services) = peer_of(&conn);
        if let Some(expected) = node
            && peer.as_deref() != Some(expected)
        {
            // Another node answers at this address (it moved, or someone lies
            // about it in gossip): refuse it.
            conn.close(VarInt::from_u32(5), b"wrong node");
            self.metrics.tls.reject(tls::Rejection::WrongNode.as_str());
            return Err(ConnectError::WrongNode {
                addr,
                expected: expected.to_string(),
                found: peer.unwrap_or_default(),
            });
        }
        slot.peer = peer;
        slot.services = services.clone();
        slot.conn = Some(conn.clone());
        slot.last_used = Some(Instant::now());
        slot.dialled_at = slot.last_used;
        Ok((conn, services))
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        use_: Use,
        server_name: &str,
    ) -> Result<Connection, ConnectError> {
        let mut config = self.client_config(use_).map_err(|_| ConnectError::Closed)?;
        config.transport_config(Arc::new(transport_config(false, Some(use_))));
        let connecting = self
            .endpoint
            .connect_with(config, addr, server_name)
            .map_err(|source| ConnectError::Start { addr, source })?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(ConnectError::Timeout { addr }),
            Ok(Err(source)) => return Err(ConnectError::Handshake { addr, source }),
            Ok(Ok(conn)) => conn,
        };
        self.metrics.tls.connections_opened.inc();
        if !self.track(&conn, Some((addr, use_)), use_ == Use::Gossip) {
            return Err(ConnectError::Revoked { addr });
        }
        if use_ == Use::Gossip
            && let Some(peer) = tls::peer_identity(conn.peer_identity())
        {
            // The peer may send its own gossip back over this connection (it
            // adopts it for that): it must be read, or the peer's replies are
            // lost for as long as the connection lives. So the reader is never
            // skipped — waiting for room if the channel is full.
            let _ = self
                .gossip_inbound
                .send(Inbound {
                    conn: conn.clone(),
                    peer,
                })
                .await;
        }
        tracing::debug!(%addr, ?use_, "connected to peer");
        Ok(conn)
    }

    fn client_config(&self, use_: Use) -> Result<quinn::ClientConfig, rustls::Error> {
        let rustls_cfg = self.tls.client_config(use_.alpn())?;
        let quic = QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }

    /// Tracks a new connection for [`MeshEndpoint::recycle`].
    ///
    /// Returns `false`, having closed the connection, if the peer certificate
    /// is revoked by now: a list put in force while the handshake ran (after
    /// it was verified, before this) is checked here, under the lock
    /// [`MeshEndpoint::recycle`] takes after every new list, so no connection
    /// escapes both checks.
    fn track(&self, conn: &Connection, pooled_as: Option<(SocketAddr, Use)>, gossip: bool) -> bool {
        let Some(peer_cert) = tls::peer_cert(conn.peer_identity()) else {
            return true;
        };
        let peer_not_after = x509_parser::parse_x509_certificate(&peer_cert)
            .map(|(_, x)| x.validity().not_after.timestamp())
            .unwrap_or(i64::MAX);
        let peer_node = tls::peer_identity(conn.peer_identity()).and_then(|p| p.node);
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if self.tls.revocation_of(&peer_cert).is_some() {
            tracing::info!(peer = %conn.remote_address(), "closing a connection whose peer certificate was revoked during the handshake");
            conn.close(VarInt::from_u32(4), b"peer_revoked");
            self.metrics
                .tls
                .connections_recycled
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "peer_revoked",
                })
                .inc();
            return false;
        }
        tracked.retain(|t| t.conn.close_reason().is_none());
        tracked.push(Tracked {
            conn: conn.clone(),
            peer_cert,
            peer_not_after,
            peer_node,
            pooled_as,
            gossip,
        });
        true
    }

    /// Enforces certificate validity on live connections (QUIC cannot
    /// re-authenticate a connection): closes every connection whose peer
    /// certificate has expired, or — with `reverify`, after the CA or the
    /// revocation list changed — no longer verifies (or is revoked); and stops handing out pooled connections whose peer
    /// certificate expires soon. Returns how many connections were closed.
    pub fn recycle(&self, reverify: bool) -> usize {
        let now = rustls::pki_types::UnixTime::now();
        let now_secs = now.as_secs() as i64;
        let mut closed = 0;
        let mut retire = Vec::new();
        {
            let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            tracked.retain(|t| {
                if t.conn.close_reason().is_some() {
                    return false;
                }
                let reason = if now_secs >= t.peer_not_after {
                    Some("peer_cert_expired")
                } else if reverify {
                    match self.tls.verify_peer(
                        &t.peer_cert,
                        &[],
                        now,
                        webpki::KeyUsage::client_auth(),
                    ) {
                        Ok(_) => None,
                        Err(crate::tls::Rejection::Revoked) => Some("peer_revoked"),
                        Err(_) => Some("peer_no_longer_trusted"),
                    }
                } else {
                    None
                };
                if let Some(reason) = reason {
                    tracing::info!(peer = %t.conn.remote_address(), reason, "closing a connection whose peer certificate is no longer valid");
                    t.conn.close(VarInt::from_u32(4), reason.as_bytes());
                    self.metrics
                        .tls.connections_recycled
                        .get_or_create(&crate::metrics::ReasonLabels { reason })
                        .inc();
                    closed += 1;
                    return false;
                }
                if let Some(key) = t.pooled_as
                    && t.peer_not_after - now_secs < RETIRE_BEFORE_EXPIRY.as_secs() as i64
                {
                    retire.push((key, t.conn.stable_id()));
                }
                true
            });
        }
        for (key, id) in retire {
            let slot = {
                let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.get(&key).cloned()
            };
            if let Some(slot) = slot
                && let Ok(mut slot) = slot.try_lock()
                && slot.conn.as_ref().is_some_and(|c| c.stable_id() == id)
            {
                slot.conn = None;
                self.metrics
                    .tls
                    .connections_recycled
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: "peer_cert_expiring",
                    })
                    .inc();
            }
        }
        closed
    }

    /// Stops handing out every pooled connection (after this node's own
    /// certificate changed): new streams get fresh handshakes with the new
    /// certificate; streams already open finish on the old connections.
    pub fn retire_pool(&self) {
        let slots: Vec<SlotRef> = {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.values().cloned().collect()
        };
        for slot in slots {
            if let Ok(mut slot) = slot.try_lock()
                && slot.conn.take().is_some()
            {
                self.metrics
                    .tls
                    .connections_recycled
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: "own_cert_changed",
                    })
                    .inc();
            }
        }
    }

    /// Puts an accepted connection in the pool for outbound use, unless the pool
    /// already holds a live one for that peer. If that one was dialled within
    /// [`DIAL_RACE`] (both nodes dialled each other at once), keeps the one the
    /// node with the smaller name dialled and closes the other.
    async fn adopt(self: Arc<Self>, addr: SocketAddr, use_: Use, conn: Connection) {
        let slot = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry((addr, use_)).or_default().clone()
        };
        // Waits for a dial of this peer in progress: its connection and this one
        // must not both stay open.
        let mut slot = slot.lock().await;
        let (peer, services) = peer_of(&conn);
        let held = slot.conn.clone().filter(|c| c.close_reason().is_none());
        let Some(mine) = held else {
            slot.peer = peer;
            slot.services = services;
            slot.conn = Some(conn);
            slot.last_used = Some(Instant::now());
            slot.dialled_at = None;
            return;
        };
        let race = slot.dialled_at.is_some_and(|t| t.elapsed() < DIAL_RACE);
        if mine.stable_id() == conn.stable_id() || !race {
            // An older connection of this node's stays in the pool; the peer's
            // new one (after it renewed its certificate, say) stays open for
            // the peer's use and closes once unused.
            return;
        }
        // Both nodes dialled each other at once: one connection per pair is
        // kept, the one the node with the smaller name dialled. Both sides
        // decide alike, so both close the same one.
        let me = self.tls.identity().node_name.clone();
        if peer.as_deref().is_some_and(|p| p < me.as_str()) {
            slot.peer = peer;
            slot.services = services;
            slot.conn = Some(conn);
            slot.last_used = Some(Instant::now());
            slot.dialled_at = None;
            mine.close(VarInt::from_u32(0), b"duplicate");
        } else {
            conn.close(VarInt::from_u32(0), b"duplicate");
        }
    }

    /// Open QUIC connections carrying gossip, dialled or accepted.
    pub fn gossip_connections(&self) -> usize {
        let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        tracked
            .iter()
            .filter(|t| t.gossip && t.conn.close_reason().is_none())
            .count()
    }

    /// Closes gossip connections beyond `cap`, those this node used least
    /// recently first, never one to a peer named in `keep` (its overlay
    /// neighbours): a seed that every joining node dials, or a node many
    /// others probe, keeps at most `cap` open rather than one per peer for the
    /// pool's idle time. Returns how many were closed (each counted in
    /// `shoal_gossip_connections_shed_total`); a peer that needs one again
    /// dials it again.
    pub fn shed_gossip(&self, keep: &HashSet<String>, cap: usize) -> usize {
        // When this node last used each pooled gossip connection, by id.
        let mut used: HashMap<usize, (SocketAddr, Option<Instant>)> = HashMap::new();
        let slots: Vec<((SocketAddr, Use), SlotRef)> = {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter()
                .filter(|(k, _)| k.1 == Use::Gossip)
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        };
        for (key, slot) in &slots {
            if let Ok(slot) = slot.try_lock()
                && let Some(conn) = &slot.conn
            {
                used.insert(conn.stable_id(), (key.0, slot.last_used));
            }
        }
        // Every open gossip connection, pooled or not (an accepted one the
        // pool did not adopt counts too): never used by this node is oldest.
        let open: Vec<(Connection, Option<Instant>, bool)> = {
            let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            tracked
                .iter()
                .filter(|t| t.gossip && t.conn.close_reason().is_none())
                .map(|t| {
                    let kept = t.peer_node.as_deref().is_some_and(|p| keep.contains(p));
                    let last = used.get(&t.conn.stable_id()).and_then(|u| u.1);
                    (t.conn.clone(), last, kept)
                })
                .collect()
        };
        let order: Vec<(Option<Instant>, bool)> = open.iter().map(|o| (o.1, o.2)).collect();
        let shed = shed_order(&order, cap);
        for &i in &shed {
            let conn = &open[i].0;
            conn.close(VarInt::from_u32(0), b"over the gossip connection cap");
            if let Some((addr, _)) = used.get(&conn.stable_id()) {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.remove(&(*addr, Use::Gossip));
            }
            self.metrics.gossip.connections_shed.inc();
        }
        if !shed.is_empty() {
            let open = i64::try_from(self.gossip_connections()).unwrap_or(i64::MAX);
            self.metrics.gossip.connections.set(open);
        }
        shed.len()
    }

    /// Closes pooled connections unused for their use's [`Use::pool_idle`]
    /// (run periodically), and updates `shoal_gossip_connections`.
    pub fn reap_idle(&self) {
        let slots: Vec<((SocketAddr, Use), SlotRef)> = {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let now = Instant::now();
        for (key, slot) in slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let idle = key.1.pool_idle();
            let stale = slot.last_used.is_none_or(|t| now.duration_since(t) >= idle);
            let dead = slot
                .conn
                .as_ref()
                .is_none_or(|c| c.close_reason().is_some());
            if stale || dead {
                if let Some(conn) = slot.conn.take() {
                    conn.close(VarInt::from_u32(0), b"idle");
                }
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.remove(&key);
            }
        }
        let open = i64::try_from(self.gossip_connections()).unwrap_or(i64::MAX);
        self.metrics.gossip.connections.set(open);
    }

    /// Sets the caps on inbound connections and the handshake rate above
    /// which Retry is required (see [`incoming`]); connections already open
    /// count against the new caps.
    pub fn limit_incoming(&self, limits: IncomingLimits) {
        self.gate().set_limits(limits);
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, IncomingGate> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judges a connection attempt (see [`incoming`]): retries or refuses it
    /// (counted), or returns the place it holds while it is open.
    fn admit(self: &Arc<Self>, incoming: quinn::Incoming) -> Option<(quinn::Incoming, OpenSlot)> {
        let remote = incoming.remote_address();
        let verdict =
            self.gate()
                .judge(remote, incoming.remote_address_validated(), Instant::now());
        match verdict {
            Verdict::Accept => Some((
                incoming,
                OpenSlot {
                    endpoint: self.clone(),
                    remote,
                    handshaking: true,
                },
            )),
            Verdict::Retry => {
                self.metrics.tls.quic_retries.inc();
                if incoming.may_retry() {
                    let _ = incoming.retry();
                } else {
                    incoming.ignore();
                }
                None
            }
            Verdict::Refuse(reason) => {
                self.metrics.tls.incoming_refused(reason);
                tracing::debug!(%remote, reason, "refused an inbound QUIC connection");
                incoming.refuse();
                None
            }
        }
    }

    /// Accepts inbound connections until the endpoint closes, within the caps
    /// of [`incoming`], handing each authenticated one over to [`Accepted`] by
    /// its use. Handshake failures (refused certificates among them) are logged
    /// and counted by the verifier.
    pub async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let Some((incoming, slot)) = self.admit(incoming) else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let mut slot = slot;
                let remote = incoming.remote_address();
                let handshake =
                    tokio::time::timeout(ACCEPT_HANDSHAKE_TIMEOUT, incoming.into_future());
                let conn = match handshake.await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "inbound QUIC handshake failed");
                        return;
                    }
                    Err(_) => {
                        // Dropping the handshake closes the connection.
                        me.metrics.tls.incoming_refused(incoming::HANDSHAKE_TIMEOUT);
                        tracing::info!(%remote, timeout = ?ACCEPT_HANDSHAKE_TIMEOUT, "inbound QUIC handshake timed out");
                        return;
                    }
                };
                slot.established();
                // The place is held until the connection closes.
                tokio::spawn({
                    let conn = conn.clone();
                    async move {
                        conn.closed().await;
                        drop(slot);
                    }
                });
                let alpn = conn
                    .handshake_data()
                    .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|h| h.protocol);
                let Some(peer) = tls::peer_identity(conn.peer_identity()) else {
                    conn.close(VarInt::from_u32(1), b"no identity");
                    return;
                };
                me.metrics.tls.connections_accepted.inc();
                if !me.track(&conn, None, alpn.as_deref() == Some(ALPN_GOSSIP)) {
                    return;
                }
                let target = match alpn.as_deref() {
                    Some(a) if a == ALPN_GOSSIP => {
                        // One connection per pair of nodes: gossip to this peer
                        // reuses the connection it opened.
                        tokio::spawn(me.clone().adopt(
                            conn.remote_address(),
                            Use::Gossip,
                            conn.clone(),
                        ));
                        refuse_streams(&conn, false);
                        &me.gossip_inbound
                    }
                    Some(a) if a == ALPN_TUNNEL => {
                        refuse_streams(&conn, true);
                        &me.tunnel_inbound
                    }
                    _ => {
                        conn.close(VarInt::from_u32(2), b"unknown alpn");
                        return;
                    }
                };
                if target.send(Inbound { conn, peer }).await.is_err() {
                    tracing::debug!(%remote, "inbound connection arrived during shutdown");
                }
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
    }

    /// Waits until every connection is closed (after [`MeshEndpoint::close`]).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Counts a stream opened (for drain accounting); the guard counts it closed.
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Every open connection with its path figures (`GET /connections`), by
    /// peer, then use.
    pub fn connections(&self) -> Vec<connections::ConnectionView> {
        let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = tracked.iter().filter_map(connections::view).collect();
        drop(tracked);
        out.sort_by(|a, b| (&a.peer, &a.use_, &a.addr).cmp(&(&b.peer, &b.use_, &b.addr)));
        out
    }

    /// Streams currently open through [`MeshEndpoint::stream_guard`].
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }
}

/// Stops every stream of the kind a connection's use never reads (gossip uses
/// unidirectional streams, tunnels bidirectional ones), so that a peer cannot make
/// this node buffer data nobody will read.
fn refuse_streams(conn: &Connection, uni: bool) {
    let conn = conn.clone();
    tokio::spawn(async move {
        if uni {
            while let Ok(mut s) = conn.accept_uni().await {
                let _ = s.stop(VarInt::from_u32(6));
            }
        } else {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let _ = recv.stop(VarInt::from_u32(6));
                let _ = send.reset(VarInt::from_u32(6));
            }
        }
    });
}

/// Marks one stream in flight until dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<MeshEndpoint>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn server_config(
    tls: &Arc<TlsState>,
    transport: Arc<TransportConfig>,
) -> std::io::Result<quinn::ServerConfig> {
    let rustls_cfg = tls
        .server_config()
        .map_err(|e| std::io::Error::other(format!("TLS server config: {e}")))?;
    let quic = QuicServerConfig::try_from(rustls_cfg)
        .map_err(|e| std::io::Error::other(format!("QUIC server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::{
        INITIAL_TUNNEL_STREAMS, MAX_TUNNEL_STREAMS, next_stream_limit, shed_order, stream_cap,
    };
    use std::time::{Duration, Instant};

    #[test]
    fn gossip_connections_over_the_cap_are_shed_least_recently_used_first_never_a_neighbour() {
        let t0 = Instant::now();
        let at = |s: u64| Some(t0 + Duration::from_secs(s));
        let open = [
            (at(5), false), // 0
            (at(1), true),  // 1: oldest, but a neighbour's
            (at(2), false), // 2
            (None, false),  // 3: never used by this node: oldest of all
            (at(9), false), // 4
        ];
        assert_eq!(shed_order(&open, 5), Vec::<usize>::new(), "at the cap");
        assert_eq!(shed_order(&open, 3), vec![3, 2]);
        assert_eq!(shed_order(&open, 0), vec![3, 2, 0, 4], "neighbours stay");
    }

    #[test]
    fn the_stream_limit_doubles_when_three_quarters_are_open_up_to_the_cap() {
        assert_eq!(
            next_stream_limit(191, 256, 1000),
            None,
            "not yet three quarters"
        );
        assert_eq!(next_stream_limit(192, 256, 1000), Some(512));
        assert_eq!(
            next_stream_limit(384, 512, 1000),
            Some(1000),
            "stops at the cap"
        );
        assert_eq!(next_stream_limit(1000, 1000, 1000), None, "never beyond");
        assert_eq!(
            next_stream_limit(u32::MAX, MAX_TUNNEL_STREAMS, u32::MAX),
            None,
            "nor beyond the protocol's cap"
        );
    }

    #[test]
    fn the_cap_is_what_one_caller_can_hold_of_the_hosted_services_with_headroom() {
        // 7,800 a caller can hold, a quarter more and 256 to refuse the rest.
        assert_eq!(stream_cap([7_500, 300]), 7_800 + 1_950 + 256);
        assert_eq!(
            stream_cap([]),
            INITIAL_TUNNEL_STREAMS,
            "never below the start"
        );
        assert_eq!(stream_cap([10]), 10 + 2 + INITIAL_TUNNEL_STREAMS);
        assert_eq!(stream_cap([1_000_000, 1_000_000]), MAX_TUNNEL_STREAMS);
    }
}
