//! A fault-injecting network for the in-process simulator.
//!
//! Every simulated node gets a real UDP socket on loopback, wrapped in a
//! [`FaultySocket`] that sits *under* its QUIC endpoint (quinn accepts any
//! [`AsyncUdpSocket`]). All sockets made by one [`Network`] share its rules:
//!
//! - **partitions** ([`Network::partition`], [`Network::heal`]): no datagram
//!   flows between the two sides, in either direction; several may coexist;
//! - **pause** ([`Network::pause`], [`Network::resume`]): the node at an address
//!   neither sends nor receives anything;
//! - **loss** ([`Network::set_loss`]): each datagram sent from or to an address
//!   is dropped with a probability, drawn from the network's seeded PRNG.
//!
//! Rules take effect at once and can change at any time from any thread.
//! Partitions and pauses are checked by the sending socket and again by the
//! receiving one, so they also stop datagrams that were already in flight or
//! waiting in a socket's receive queue when the rule came in. Gossip and
//! tunnels run over QUIC on these sockets, so they see the faults exactly as
//! they would see a real network's: silence, then timeouts and retransmissions.
//!
//! # How this differs from a real network
//!
//! - Faults are decided at the two endpoints, not on a link: a dropped datagram
//!   is never written to the kernel (send side) or is discarded before quinn sees
//!   it (receive side). Nothing else is simulated: loopback has no latency, no
//!   jitter, no reordering, no duplication, no bandwidth limit and a 64 KiB MTU.
//! - Loss is independent per datagram (Bernoulli), never bursty. A datagram
//!   batch sent with GSO or received with GRO is split and judged datagram by
//!   datagram. Each datagram is drawn for once, when it is sent (or, if its
//!   sender is not a socket of this network, when it is received), against the
//!   loss of both ends combined: between a node with loss `p` and one with
//!   loss `q` it is lost with probability `1 - (1 - p)(1 - q)`, so two nodes
//!   that both have loss `p` lose `1 - (1 - p)^2`, roughly `2p` for small `p`,
//!   of what they send each other.
//! - Partitions are symmetric and act on UDP only: TCP between applications,
//!   listeners and backends on loopback is untouched.
//! - Rules name sockets by the address (IP and port) they are bound to. Bind
//!   every socket to a specific IP (`127.0.0.1:0` is fine: each socket gets its
//!   own port), not to `0.0.0.0`, or the address a socket reports for itself
//!   will not be the one its peers see. IPv4-mapped IPv6 addresses are treated
//!   as the IPv4 address they carry.
//! - **Pause is not SIGSTOP.** A paused node's process keeps running: its timers
//!   fire, its QUIC connections time out, chitchat on it marks every peer as
//!   failed (it is a partition of one), its admin API and TCP listeners still
//!   answer, its health checks still reach its local backends. Datagrams sent to
//!   it while paused are dropped, not queued: after [`Network::resume`] it sees
//!   only new traffic. A SIGSTOPped process does nothing at all, and on SIGCONT
//!   it finds every timer expired at once and a socket buffer full of stale
//!   datagrams. Use the simulator's process mode for a real freeze.
//! - Rules outlive sockets: they are keyed by address, so a node restarted on
//!   the same address is still paused, lossy or partitioned — and so is any new
//!   socket that the kernel happens to give a port that a ruled-on socket had.
//!
//! The PRNG is seeded, so a given sequence of loss decisions is reproducible;
//! a whole run is not, since which datagram draws which number depends on
//! thread scheduling.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

/// How many times [`FaultySocket::poll_recv`] reads the inner socket in one
/// call when everything it reads is dropped, before it yields to the scheduler
/// (so a flood of dropped datagrams cannot monopolise a worker thread).
const MAX_EMPTY_ROUNDS: usize = 32;

/// splitmix64's increment.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Datagram counters of a [`Network`], over all its sockets since it was made.
///
/// `sent` counts every datagram a QUIC endpoint handed to a socket (dropped
/// ones too); `delivered` the datagrams handed up to a QUIC endpoint. Each
/// datagram is dropped at most once, so `sent - delivered - dropped()` is what
/// is in flight or was lost by the kernel (e.g. to a closed port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Datagrams handed to a socket for sending.
    pub sent: u64,
    /// Datagrams handed up to a QUIC endpoint.
    pub delivered: u64,
    /// Datagrams dropped because a partition separated the two ends.
    pub dropped_partition: u64,
    /// Datagrams dropped because one end was paused.
    pub dropped_paused: u64,
    /// Datagrams dropped by random loss.
    pub dropped_loss: u64,
}

impl NetStats {
    /// All dropped datagrams, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_partition + self.dropped_paused + self.dropped_loss
    }
}

/// Which way a datagram goes, seen from the socket judging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The socket sends to the remote address.
    Out,
    /// The socket received from the remote address.
    In,
}

/// Why a datagram was dropped outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Partition,
    Paused,
}

/// What the rules say about datagrams between two addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    /// Everything passes.
    Open,
    /// Each datagram is lost with this probability (in `(0, 1]`).
    Lossy(f64),
    /// Nothing passes.
    Blocked(Block),
}

/// One partition: its two sides.
#[derive(Debug)]
struct Partition {
    a: HashSet<SocketAddr>,
    b: HashSet<SocketAddr>,
}

impl Partition {
    fn separates(&self, x: &SocketAddr, y: &SocketAddr) -> bool {
        (self.a.contains(x) && self.b.contains(y)) || (self.b.contains(x) && self.a.contains(y))
    }
}

#[derive(Debug, Default)]
struct Rules {
    partitions: Vec<Partition>,
    paused: HashSet<SocketAddr>,
    loss: HashMap<SocketAddr, f64>,
    /// Addresses of this network's live sockets (with a count, in case two
    /// overlap briefly across a restart). Loss is drawn once per datagram, by
    /// the sender if it is one of these, else by the receiver.
    sockets: HashMap<SocketAddr, usize>,
}

impl Rules {
    /// Whether any rule can drop anything.
    fn any(&self) -> bool {
        !self.partitions.is_empty() || !self.paused.is_empty() || !self.loss.is_empty()
    }

    /// The rules for a datagram between the socket at `local` and `remote`,
    /// going `dir`, as judged by that socket. Partitions and pauses are judged
    /// by both ends (the receiver's check catches datagrams already in flight
    /// or queued when the rule came in); loss only by the sending socket, or by
    /// the receiving one when the sender is not one of ours, so that each
    /// datagram is drawn for once.
    fn link(&self, local: &SocketAddr, remote: &SocketAddr, dir: Direction) -> Link {
        if self.paused.contains(local) || self.paused.contains(remote) {
            return Link::Blocked(Block::Paused);
        }
        if self.partitions.iter().any(|p| p.separates(local, remote)) {
            return Link::Blocked(Block::Partition);
        }
        if dir == Direction::In && self.sockets.contains_key(remote) {
            return Link::Open;
        }
        let p = self.loss.get(local).copied().unwrap_or(0.0);
        let q = self.loss.get(remote).copied().unwrap_or(0.0);
        let p = 1.0 - (1.0 - p) * (1.0 - q);
        if p > 0.0 { Link::Lossy(p) } else { Link::Open }
    }
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped_partition: AtomicU64,
    dropped_paused: AtomicU64,
    dropped_loss: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn blocked(&self, why: Block, n: u64) {
        match why {
            Block::Partition => Self::add(&self.dropped_partition, n),
            Block::Paused => Self::add(&self.dropped_paused, n),
        }
    }
}

/// The shared fault rules of a set of [`FaultySocket`]s, and their counters.
///
/// Made with [`Network::new`]; shared as `Arc<Network>`. Every method is cheap,
/// thread-safe and takes effect immediately.
pub struct Network {
    seed: u64,
    /// splitmix64 state.
    rng: AtomicU64,
    rules: RwLock<Rules>,
    /// `rules.any()`, readable without the lock: with no rules in force (the
    /// common case) a datagram costs two atomic operations.
    active: AtomicBool,
    counters: Counters,
}

impl Network {
    /// A network with no faults, whose random loss is drawn from a PRNG seeded
    /// with `seed`.
    pub fn new(seed: u64) -> Arc<Network> {
        Arc::new(Network {
            seed,
            rng: AtomicU64::new(seed),
            rules: RwLock::new(Rules::default()),
            active: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    /// The seed this network was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Binds a UDP socket on `bind` (with the node's usual 4 MiB buffers; port
    /// 0 picks a free port) and wraps it so that this network's rules apply to
    /// it. Hand the result to the node as `StartOptions::socket`.
    ///
    /// Bind a specific address such as `127.0.0.3:0`, not `0.0.0.0` (see the
    /// module documentation). Must be called inside a tokio runtime; outside
    /// one it returns an error.
    pub fn socket(self: &Arc<Self>, bind: SocketAddr) -> io::Result<Arc<FaultySocket>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "a fault-injecting socket must be made inside a tokio runtime",
            ));
        }
        let socket = shoal_node::endpoint::bind_udp(bind)?;
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        self.wrap(inner)
    }

    /// Wraps an existing quinn socket so that this network's rules apply to it.
    /// Rules name it by its `local_addr()`.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn AsyncUdpSocket>) -> io::Result<Arc<FaultySocket>> {
        let local = canonical(inner.local_addr()?);
        *self.write().sockets.entry(local).or_insert(0) += 1;
        Ok(Arc::new(FaultySocket {
            net: self.clone(),
            inner,
            local,
        }))
    }

    /// Cuts every address in `a` off from every address in `b`, both ways.
    /// Adds to the partitions already in force; [`Network::heal`] removes them
    /// all. Addresses not (yet) bound are fine: the rule applies when they are.
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr]) {
        let a: HashSet<SocketAddr> = a.iter().copied().map(canonical).collect();
        let b: HashSet<SocketAddr> = b.iter().copied().map(canonical).collect();
        if a.is_empty() || b.is_empty() {
            return;
        }
        self.update(|rules| rules.partitions.push(Partition { a, b }));
    }

    /// Removes every partition (pauses and loss stay).
    pub fn heal(&self) {
        self.update(|rules| rules.partitions.clear());
    }

    /// Freezes the node at `addr` as far as the network can tell: nothing it
    /// sends goes out and nothing sent to it arrives, including datagrams
    /// already waiting in its socket. The node itself keeps running; see the
    /// module documentation for how that differs from SIGSTOP.
    pub fn pause(&self, addr: SocketAddr) {
        self.update(|rules| {
            rules.paused.insert(canonical(addr));
        });
    }

    /// Undoes [`Network::pause`]. Datagrams dropped meanwhile stay lost.
    pub fn resume(&self, addr: SocketAddr) {
        self.update(|rules| {
            rules.paused.remove(&canonical(addr));
        });
    }

    /// Whether the node at `addr` is paused.
    pub fn is_paused(&self, addr: SocketAddr) -> bool {
        self.read().paused.contains(&canonical(addr))
    }

    /// Drops each datagram sent from or to `addr` with `probability`
    /// (clamped to `[0, 1]`; 0 or NaN removes the rule). Replaces the previous
    /// probability for that address.
    pub fn set_loss(&self, addr: SocketAddr, probability: f64) {
        let addr = canonical(addr);
        self.update(|rules| {
            if probability > 0.0 {
                rules.loss.insert(addr, probability.min(1.0));
            } else {
                rules.loss.remove(&addr);
            }
        });
    }

    /// The counters so far (each read atomically, not all at one instant).
    pub fn stats(&self) -> NetStats {
        let c = &self.counters;
        NetStats {
            sent: c.sent.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped_partition: c.dropped_partition.load(Ordering::Relaxed),
            dropped_paused: c.dropped_paused.load(Ordering::Relaxed),
            dropped_loss: c.dropped_loss.load(Ordering::Relaxed),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Rules> {
        self.rules.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rules> {
        self.rules.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Rules)) {
        let mut rules = self.write();
        change(&mut rules);
        self.active.store(rules.any(), Ordering::SeqCst);
    }

    fn unregister(&self, local: &SocketAddr) {
        let mut rules = self.write();
        if let Some(n) = rules.sockets.get_mut(local) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rules.sockets.remove(local);
            }
        }
    }

    /// The rules for a datagram between the socket at `local` and `remote`.
    /// No allocation.
    fn link(&self, local: &SocketAddr, remote: &SocketAddr, dir: Direction) -> Link {
        if !self.active.load(Ordering::SeqCst) {
            return Link::Open;
        }
        self.read().link(local, remote, dir)
    }

    /// A uniform draw in `[0, 1)` (splitmix64).
    fn chance(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Whether a datagram with loss probability `p` is lost.
    fn lose(&self, p: f64) -> bool {
        p >= 1.0 || (p > 0.0 && self.chance() < p)
    }

    /// Judges what `local` received from `meta.addr` into `buf`: `None` if all
    /// of it is dropped, else the new length (GRO segments lost are cut out,
    /// the survivors moved up; all but the last keep `meta.stride` bytes).
    fn filter_incoming(
        &self,
        local: &SocketAddr,
        meta: &RecvMeta,
        buf: &mut [u8],
    ) -> Option<usize> {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride };
        let segments = segment_count(len, stride);
        match self.link(local, &canonical(meta.addr), Direction::In) {
            Link::Open => {
                Counters::add(&self.counters.delivered, segments);
                Some(len)
            }
            Link::Blocked(why) => {
                self.counters.blocked(why, segments);
                None
            }
            Link::Lossy(p) if segments <= 1 => {
                if self.lose(p) {
                    Counters::add(&self.counters.dropped_loss, 1);
                    None
                } else {
                    Counters::add(&self.counters.delivered, 1);
                    Some(len)
                }
            }
            Link::Lossy(p) => {
                let (mut start, mut kept_bytes, mut kept, mut lost) = (0, 0, 0, 0);
                while start < len {
                    let end = start.saturating_add(stride).min(len);
                    if self.lose(p) {
                        lost += 1;
                    } else {
                        if kept_bytes != start {
                            buf.copy_within(start..end, kept_bytes);
                        }
                        kept_bytes += end - start;
                        kept += 1;
                    }
                    start = end;
                }
                Counters::add(&self.counters.dropped_loss, lost);
                Counters::add(&self.counters.delivered, kept);
                (kept_bytes > 0).then_some(kept_bytes)
            }
        }
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = self.read();
        f.debug_struct("Network")
            .field("seed", &self.seed)
            .field("partitions", &rules.partitions)
            .field("paused", &rules.paused)
            .field("loss", &rules.loss)
            .field("sockets", &rules.sockets.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A UDP socket under a QUIC endpoint that drops datagrams according to its
/// [`Network`]'s rules and otherwise behaves exactly like the socket it wraps.
/// Made by [`Network::socket`].
pub struct FaultySocket {
    net: Arc<Network>,
    inner: Arc<dyn AsyncUdpSocket>,
    /// The bound address, as the rules name it.
    local: SocketAddr,
}

impl FaultySocket {
    /// The address this socket is bound to (as rules name it).
    pub fn addr(&self) -> SocketAddr {
        self.local
    }

    /// The network whose rules apply to this socket.
    pub fn network(&self) -> &Arc<Network> {
        &self.net
    }

    /// Sends the datagrams of `transmit` one by one, each subject to loss `p`.
    fn send_lossy(&self, transmit: &Transmit, p: f64) -> io::Result<()> {
        let counters = &self.net.counters;
        let size = match transmit.segment_size {
            Some(size) if size > 0 && size < transmit.contents.len() => size,
            _ => {
                if self.net.lose(p) {
                    Counters::add(&counters.sent, 1);
                    Counters::add(&counters.dropped_loss, 1);
                } else {
                    self.inner.try_send(transmit)?;
                    Counters::add(&counters.sent, 1);
                }
                return Ok(());
            }
        };
        // A GSO batch: split it so that loss is per datagram, not per batch.
        let (mut datagrams, mut lost, mut sent_any) = (0, 0, false);
        for datagram in transmit.contents.chunks(size) {
            datagrams += 1;
            if self.net.lose(p) {
                lost += 1;
                continue;
            }
            let one = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: datagram,
                segment_size: None,
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&one) {
                Ok(()) => sent_any = true,
                // Nothing went out (e.g. `WouldBlock`): quinn retries the whole
                // batch later, with fresh loss draws; nothing is counted.
                Err(e) if !sent_any => return Err(e),
                // Part of the batch went out, so quinn must not resend it: the
                // rest is lost, as to a full socket buffer.
                Err(_) => {}
            }
        }
        Counters::add(&counters.sent, datagrams);
        Counters::add(&counters.dropped_loss, lost);
        Ok(())
    }
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("local", &self.local)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Drop for FaultySocket {
    fn drop(&mut self) {
        self.net.unregister(&self.local);
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let counters = &self.net.counters;
        let segments = match transmit.segment_size {
            Some(size) => segment_count(transmit.contents.len(), size),
            None => 1,
        };
        match self.net.link(
            &self.local,
            &canonical(transmit.destination),
            Direction::Out,
        ) {
            Link::Open => {
                self.inner.try_send(transmit)?;
                Counters::add(&counters.sent, segments);
                Ok(())
            }
            Link::Blocked(why) => {
                Counters::add(&counters.sent, segments);
                counters.blocked(why, segments);
                Ok(())
            }
            Link::Lossy(p) => self.send_lossy(transmit, p),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_EMPTY_ROUNDS {
            let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let received = received.min(bufs.len()).min(meta.len());
            // Keep the survivors, moved to the front in order. Swapping the
            // buffer slices (not their bytes) keeps bufs[k] paired with meta[k].
            let mut kept = 0;
            for i in 0..received {
                let Some(len) = self
                    .net
                    .filter_incoming(&self.local, &meta[i], &mut bufs[i])
                else {
                    continue;
                };
                meta[i].len = len;
                if kept != i {
                    bufs.swap(kept, i);
                    meta.swap(kept, i);
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // All dropped: read again, so that we either return something or
            // return Pending with the inner socket holding our waker.
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// How many datagrams `len` bytes cut into `size`-byte segments make (at least one).
fn segment_count(len: usize, size: usize) -> u64 {
    if size == 0 || len <= size {
        1
    } else {
        len.div_ceil(size) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::poll_fn;
    use std::time::Duration;

    use quinn::rustls::pki_types::PrivatePkcs8KeyDer;
    use quinn::{EndpointConfig, TransportConfig};

    const WAIT: Duration = Duration::from_secs(5);

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn transmit(to: SocketAddr, data: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        }
    }

    async fn send_transmit(from: &FaultySocket, t: &Transmit<'_>) {
        loop {
            match from.try_send(t) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    async fn send(from: &FaultySocket, to: SocketAddr, data: &[u8]) {
        send_transmit(from, &transmit(to, data)).await;
    }

    /// One `poll_recv` batch (GRO units split into datagrams), within [`WAIT`].
    async fn recv(on: &FaultySocket) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut storage = vec![vec![0u8; 65536]; 4];
        let read = poll_fn(|cx| {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut meta = [RecvMeta::default(); 4];
            let n = ready!(on.poll_recv(cx, &mut bufs, &mut meta)).unwrap();
            assert!(n > 0, "poll_recv returned 0 datagrams");
            let mut out = Vec::new();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = if m.stride == 0 {
                    m.len.max(1)
                } else {
                    m.stride
                };
                for datagram in buf[..m.len].chunks(stride) {
                    out.push((m.addr, datagram.to_vec()));
                }
            }
            Poll::Ready(out)
        });
        tokio::time::timeout(WAIT, read)
            .await
            .expect("nothing received")
    }

    /// Polls `on` once, without waiting: how many entries it returned, if any.
    fn poll_now(on: &FaultySocket) -> Option<usize> {
        let mut storage = vec![vec![0u8; 65536]; 4];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 4];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match on.poll_recv(&mut cx, &mut bufs, &mut meta) {
            Poll::Ready(n) => Some(n.unwrap()),
            Poll::Pending => None,
        }
    }

    /// The next datagram's payload (the first of a batch).
    async fn recv_first(on: &FaultySocket) -> Vec<u8> {
        recv(on).await.swap_remove(0).1
    }

    #[tokio::test]
    async fn delivers_normally() {
        let net = Network::new(1);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        send(&a, b.addr(), b"hello").await;
        let got = recv(&b).await;
        assert_eq!(got, vec![(a.addr(), b"hello".to_vec())]);
        send(&b, a.addr(), b"back").await;
        assert_eq!(recv_first(&a).await, b"back");
        let stats = net.stats();
        assert_eq!(stats.sent, 2);
        assert_eq!(stats.delivered, 2);
        assert_eq!(stats.dropped(), 0);
    }

    #[tokio::test]
    async fn partition_blocks_both_ways_until_healed() {
        let net = Network::new(1);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        let c = net.socket(loopback()).unwrap();
        net.partition(&[a.addr()], &[b.addr()]);
        for _ in 0..10 {
            send(&a, b.addr(), b"old").await;
            send(&b, a.addr(), b"old").await;
        }
        // A third node still reaches both sides.
        send(&c, b.addr(), b"from c").await;
        assert_eq!(recv_first(&b).await, b"from c");
        send(&c, a.addr(), b"from c").await;
        assert_eq!(recv_first(&a).await, b"from c");
        assert_eq!(net.stats().dropped_partition, 20);

        net.heal();
        send(&a, b.addr(), b"marker").await;
        assert_eq!(recv_first(&b).await, b"marker");
        send(&b, a.addr(), b"marker").await;
        assert_eq!(recv_first(&a).await, b"marker");
        let stats = net.stats();
        assert_eq!(stats.sent, 24);
        assert_eq!(stats.delivered, 4);
        assert_eq!(stats.dropped_partition, 20);
        assert_eq!(stats.dropped(), 20);
    }

    #[tokio::test]
    async fn partitions_coexist_and_heal_removes_all() {
        let net = Network::new(1);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        let c = net.socket(loopback()).unwrap();
        net.partition(&[a.addr()], &[b.addr()]);
        net.partition(&[c.addr()], &[a.addr(), b.addr()]);
        send(&a, b.addr(), b"x").await;
        send(&c, a.addr(), b"x").await;
        send(&b, c.addr(), b"x").await;
        assert_eq!(net.stats().dropped_partition, 3);
        net.heal();
        send(&c, a.addr(), b"marker").await;
        assert_eq!(recv_first(&a).await, b"marker");
    }

    /// Datagrams already in a socket's queue are judged when read, and the
    /// survivors of a batch come out in order.
    #[tokio::test]
    async fn receive_side_drops_queued_datagrams_and_compacts() {
        let net = Network::new(1);
        let b = net.socket(loopback()).unwrap();
        // Plain sockets, outside the network: only b's checks apply.
        let bad = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let good = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        net.partition(&[bad.local_addr().unwrap()], &[b.addr()]);
        for i in 0..6u8 {
            bad.send_to(&[b'x', i], b.addr()).await.unwrap();
            good.send_to(&[b'g', i], b.addr()).await.unwrap();
        }
        good.send_to(b"end", b.addr()).await.unwrap();
        let mut got = Vec::new();
        while got
            .last()
            .map(|(_, d): &(SocketAddr, Vec<u8>)| d.as_slice())
            != Some(b"end")
        {
            got.extend(recv(&b).await);
        }
        let good_addr = good.local_addr().unwrap();
        assert!(got.iter().all(|(from, _)| *from == good_addr), "{got:?}");
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        let mut want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'g', i]).collect();
        want.push(b"end".to_vec());
        assert_eq!(payloads, want);
        let stats = net.stats();
        assert_eq!(stats.dropped_partition, 6);
        assert_eq!(stats.delivered, 7);
    }

    #[tokio::test]
    async fn pause_blocks_both_ways_and_resume_restores() {
        let net = Network::new(1);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        // Something already queued for `a` when it is paused is lost when read.
        send(&b, a.addr(), b"queued").await;
        net.pause(a.addr());
        assert!(net.is_paused(a.addr()));
        let deadline = tokio::time::Instant::now() + WAIT;
        while net.stats().dropped_paused < 1 {
            assert_eq!(poll_now(&a), None, "a paused socket received something");
            assert!(
                tokio::time::Instant::now() < deadline,
                "queued datagram never read"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send(&a, b.addr(), b"out").await;
        send(&b, a.addr(), b"in").await;
        assert_eq!(net.stats().dropped_paused, 3);

        net.resume(a.addr());
        assert!(!net.is_paused(a.addr()));
        send(&b, a.addr(), b"marker").await;
        assert_eq!(recv_first(&a).await, b"marker");
        send(&a, b.addr(), b"marker").await;
        assert_eq!(recv_first(&b).await, b"marker");
        let stats = net.stats();
        assert_eq!(stats.dropped_paused, 3, "{stats:?}");
        assert_eq!(stats.delivered, 2);
        assert_eq!(stats.sent, 5);
    }

    #[tokio::test]
    async fn total_loss_drops_everything_until_cleared() {
        let net = Network::new(1);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        net.set_loss(a.addr(), 1.0);
        for _ in 0..50 {
            send(&a, b.addr(), b"lost").await;
            send(&b, a.addr(), b"lost").await;
        }
        net.set_loss(a.addr(), 0.0);
        send(&a, b.addr(), b"marker").await;
        assert_eq!(recv_first(&b).await, b"marker");
        send(&b, a.addr(), b"marker").await;
        assert_eq!(recv_first(&a).await, b"marker");
        let stats = net.stats();
        assert_eq!(stats.dropped_loss, 100);
        assert_eq!(stats.delivered, 2);
    }

    #[tokio::test]
    async fn half_loss_drops_about_half() {
        let net = Network::new(42);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        net.set_loss(a.addr(), 0.5);
        for i in 0..2000u16 {
            send(&a, b.addr(), &i.to_be_bytes()).await;
        }
        let stats = net.stats();
        assert_eq!(stats.sent, 2000);
        assert!(
            (700..=1300).contains(&stats.dropped_loss),
            "dropped {} of 2000",
            stats.dropped_loss
        );
    }

    /// Loss on the receiving end, with the sender outside the network.
    #[tokio::test]
    async fn receiver_loss_applies_on_receive() {
        let net = Network::new(7);
        let b = net.socket(loopback()).unwrap();
        let sender = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        net.set_loss(b.addr(), 0.5);
        let mut received = 0u64;
        for round in 0..10u8 {
            for i in 0..20u8 {
                sender.send_to(&[round, i], b.addr()).await.unwrap();
            }
            // Drain until all 20 are accounted for.
            let accounted = |s: NetStats| s.delivered + s.dropped_loss;
            while accounted(net.stats()) < 20 * (u64::from(round) + 1) {
                received += recv(&b).await.len() as u64;
            }
        }
        let stats = net.stats();
        assert_eq!(received, stats.delivered);
        assert_eq!(stats.delivered + stats.dropped_loss, 200);
        assert!((60..=140).contains(&stats.dropped_loss), "{stats:?}");
    }

    /// A GSO batch is judged datagram by datagram, whichever end draws.
    #[tokio::test]
    async fn loss_applies_per_datagram_within_batches() {
        let net = Network::new(3);
        let a = net.socket(loopback()).unwrap();
        let b = net.socket(loopback()).unwrap();
        if a.max_transmit_segments() < 10 {
            eprintln!("no GSO here; skipping");
            return;
        }
        net.set_loss(a.addr(), 0.5);
        let contents: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
        let batch = Transmit {
            segment_size: Some(100),
            ..transmit(b.addr(), &contents)
        };
        send_transmit(&a, &batch).await;
        let first = net.stats();
        assert_eq!(first.sent, 10);
        let survivors = 10 - first.dropped_loss;
        let mut got = Vec::new();
        while net.stats().delivered < survivors {
            got.extend(recv(&b).await.into_iter().map(|(_, d)| d));
        }
        assert_eq!(got.len() as u64, survivors);

        // Now loss on the receiving side only: the batch goes out whole.
        net.set_loss(a.addr(), 0.0);
        net.set_loss(b.addr(), 0.5);
        send_transmit(&a, &batch).await;
        let accounted = |s: NetStats| s.delivered + s.dropped_loss;
        while accounted(net.stats()) < 20 {
            got.extend(recv(&b).await.into_iter().map(|(_, d)| d));
        }
        let stats = net.stats();
        assert_eq!(stats.sent, 20);
        assert_eq!(got.len() as u64, stats.delivered);
        assert!(stats.dropped_loss > first.dropped_loss);
        // Every datagram arrives whole, and each batch's survivors in order.
        for d in &got {
            assert_eq!(d.len(), 100);
            assert!(d.iter().all(|&x| x == d[0]));
        }
        let (one, two) = got.split_at(survivors as usize);
        assert!(one.windows(2).all(|w| w[0][0] < w[1][0]));
        assert!(two.windows(2).all(|w| w[0][0] < w[1][0]));
    }

    /// A GRO unit (several datagrams from one sender in one buffer) loses
    /// datagrams one by one; the survivors stay in order and `stride`-aligned.
    #[test]
    fn gro_units_lose_datagrams_individually() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let meta = RecvMeta {
            addr: remote,
            len: 250,
            stride: 100,
            ..RecvMeta::default()
        };
        let mut partial = 0;
        for seed in 0..64 {
            let net = Network::new(seed);
            net.set_loss(remote, 0.5);
            let mut buf: Vec<u8> = [[0u8; 100].as_slice(), &[1; 100], &[2; 50]].concat();
            buf.resize(400, 9);
            let kept = net.filter_incoming(&local, &meta, &mut buf);
            let stats = net.stats();
            assert_eq!(stats.delivered + stats.dropped_loss, 3);
            let Some(len) = kept else {
                assert_eq!(stats.delivered, 0);
                continue;
            };
            let datagrams: Vec<&[u8]> = buf[..len].chunks(100).collect();
            assert_eq!(datagrams.len() as u64, stats.delivered);
            assert!(datagrams.windows(2).all(|w| w[0][0] < w[1][0]));
            for d in &datagrams {
                assert!(d.iter().all(|&x| x == d[0]));
                assert_eq!(d.len(), if d[0] == 2 { 50 } else { 100 });
            }
            partial += usize::from(datagrams.len() < 3);
        }
        assert!(partial > 0);
        let net = Network::new(0);
        net.set_loss(remote, 1.0);
        assert_eq!(net.filter_incoming(&local, &meta, &mut [0u8; 250]), None);
        assert_eq!(net.stats().dropped_loss, 3);
    }

    #[test]
    fn prng_is_deterministic_per_seed() {
        let draws = |seed| {
            let net = Network::new(seed);
            (0..1000).map(|_| net.lose(0.3)).collect::<Vec<bool>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
        let lost = draws(5).iter().filter(|&&l| l).count();
        assert!((200..=400).contains(&lost), "{lost}");
    }

    #[test]
    fn socket_outside_a_runtime_is_an_error() {
        let net = Network::new(1);
        assert!(net.socket(loopback()).is_err());
    }

    #[test]
    fn loss_of_both_ends_compounds() {
        let mut rules = Rules::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        rules.loss.insert(a, 0.5);
        rules.loss.insert(b, 0.5);
        // The sender draws once for both ends' loss...
        assert_eq!(rules.link(&a, &b, Direction::Out), Link::Lossy(0.75));
        // ...and so does the receiver when the sender is not one of ours,
        assert_eq!(rules.link(&a, &b, Direction::In), Link::Lossy(0.75));
        // but not when it is (it drew already).
        rules.sockets.insert(b, 1);
        assert_eq!(rules.link(&a, &b, Direction::In), Link::Open);
        assert_eq!(rules.link(&b, &a, Direction::Out), Link::Lossy(0.75));
        rules.paused.insert(b);
        assert_eq!(
            rules.link(&a, &b, Direction::In),
            Link::Blocked(Block::Paused)
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:1".parse().unwrap();
        assert_eq!(canonical(mapped), b);
    }

    async fn echo(
        client: &quinn::Endpoint,
        server: SocketAddr,
        msg: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let conn = client.connect(server, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(msg).await?;
        send.finish()?;
        let reply = recv.read_to_end(1024).await?;
        conn.close(0u32.into(), b"done");
        Ok(reply)
    }

    #[tokio::test]
    async fn quic_fails_across_a_partition_and_recovers_after_heal() {
        let net = Network::new(9);
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
        let mut transport = TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(1).try_into().unwrap()));
        let transport = Arc::new(transport);

        let mut server_config =
            quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key.into()).unwrap();
        server_config.transport_config(transport.clone());
        let server_socket = net.socket(loopback()).unwrap();
        let server_addr = server_socket.addr();
        let server = quinn::Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            Some(server_config),
            server_socket,
            Arc::new(TokioRuntime),
        )
        .unwrap();
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = serving.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await?;
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let data = recv.read_to_end(1024).await?;
                        send.write_all(&data).await?;
                        send.finish()?;
                    }
                    anyhow::Ok(())
                });
            }
        });

        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let mut client_config =
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        client_config.transport_config(transport);
        let client_socket = net.socket(loopback()).unwrap();
        let client_addr = client_socket.addr();
        let mut client = quinn::Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            None,
            client_socket,
            Arc::new(TokioRuntime),
        )
        .unwrap();
        client.set_default_client_config(client_config);

        let reply = tokio::time::timeout(WAIT, echo(&client, server_addr, b"before"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, b"before");

        net.partition(&[client_addr], &[server_addr]);
        // The handshake gives up after max(idle timeout, 3 PTO), about 3 s:
        // either that error or our own timeout will do.
        let cut =
            tokio::time::timeout(Duration::from_secs(3), echo(&client, server_addr, b"cut")).await;
        assert!(
            !matches!(cut, Ok(Ok(_))),
            "got through a partition: {cut:?}"
        );
        assert!(net.stats().dropped_partition > 0);

        net.heal();
        let reply = tokio::time::timeout(WAIT, echo(&client, server_addr, b"after"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, b"after");
        server.close(0u32.into(), b"done");
    }
}
