//! Gossip messages over the node's QUIC endpoint (`shoal-gossip/2`): one message
//! per unidirectional stream, so gossip is encrypted, only mesh certificate
//! holders take part, and a message larger than a datagram arrives whole.
//!
//! Sending never waits on the network: each message is queued for a per-peer
//! task that dials (or reuses) the pooled connection — checking, for a member,
//! that the node answering is the one its signed record names — and writes the
//! stream. A full queue or a failed write drops the message (gossip tolerates
//! loss); a failed dial is reported so the membership protocol knows.
//!
//! Receiving: every gossip connection, dialled or accepted, is read; each message
//! (at most [`MAX_MESSAGE_BYTES`]) goes into the [`FairQueue`] under the node name
//! of the connection's certificate — the only identity a message has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_proto::membership::{Destination, Peer};
use tokio::sync::mpsc;

use super::fair_queue::FairQueue;
use crate::endpoint::{Inbound, MeshEndpoint, Use};
use crate::metrics::{Direction, Metrics};

/// Largest message accepted from a peer: the frame limit plus its header.
pub const MAX_MESSAGE_BYTES: usize =
    mesh_proto::membership::wire::MAX_MESSAGE_BODY + mesh_proto::codec::FRAME_HEADER_LEN;
/// Messages waiting for one peer before new ones are dropped.
const PEER_QUEUE: usize = 64;
/// A per-peer sender with nothing to send for this long stops.
const PEER_IDLE: Duration = Duration::from_secs(30);
/// After a failed dial, messages to that peer are dropped for this long.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest a single message write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages one inbound connection may have being read at once.
const READERS_PER_CONNECTION: usize = 16;

/// A received message: who sent it (certificate name and address) and its bytes.
pub type Received = (Peer, Vec<u8>);

/// A destination: its address and the node name expected there (none for a seed).
type PeerKey = (SocketAddr, Option<String>);

/// Where outbound messages go, keyed by address and expected node name.
#[derive(Debug)]
pub struct Outbound {
    endpoint: Arc<MeshEndpoint>,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<PeerKey, mpsc::Sender<Vec<u8>>>>,
    unreachable: mpsc::Sender<String>,
}

impl Outbound {
    /// Sends on `endpoint`; names of members that cannot be dialled go to
    /// `unreachable`.
    pub fn new(
        endpoint: Arc<MeshEndpoint>,
        metrics: Arc<Metrics>,
        unreachable: mpsc::Sender<String>,
    ) -> Arc<Self> {
        Arc::new(Outbound {
            endpoint,
            metrics,
            peers: Mutex::new(HashMap::new()),
            unreachable,
        })
    }

    /// Queues `bytes` for `to`.
    pub fn send(self: &Arc<Self>, to: &Destination, bytes: Vec<u8>) {
        let key = match to {
            Destination::Member(p) => (p.addr, Some(p.name.clone())),
            Destination::Seed(a) => (*a, None),
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = match peers.get(&key) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(self.clone().peer_task(key.clone(), rx));
                peers.insert(key, tx.clone());
                tx
            }
        };
        drop(peers);
        if tx.try_send(bytes).is_err() {
            self.metrics.gossip.drop("queue_full");
        }
    }

    async fn peer_task(self: Arc<Self>, key: PeerKey, mut rx: mpsc::Receiver<Vec<u8>>) {
        let (to, name) = key.clone();
        let mut backoff_until: Option<Instant> = None;
        let mut seed_failures = SeedFailures::default();
        while let Ok(Some(msg)) = tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            if backoff_until.is_some_and(|t| Instant::now() < t) {
                self.metrics.gossip.drop("peer_unreachable");
                continue;
            }
            let conn = match self
                .endpoint
                .connect(to, Use::Gossip, name.as_deref())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    backoff_until = Some(Instant::now() + DIAL_BACKOFF);
                    self.metrics.gossip.drop("peer_unreachable");
                    match &name {
                        Some(n) => {
                            let _ = self.unreachable.try_send(n.clone());
                            tracing::debug!(peer = %to, error = %e, "gossip peer unreachable");
                        }
                        None => seed_failures.failed(to, &e, Instant::now()),
                    }
                    continue;
                }
            };
            backoff_until = None;
            if name.is_none() {
                seed_failures.reached(to);
            }
            let len = msg.len();
            let write = async {
                let mut stream = conn.open_uni().await?;
                stream.write_all(&msg).await?;
                stream.finish()?;
                anyhow::Ok(())
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => self.metrics.gossip.count(Direction::Sent, len),
                Ok(Err(e)) => {
                    self.metrics.gossip.drop("send_failed");
                    tracing::debug!(peer = %to, error = %e, "gossip send failed");
                }
                Err(_) => self.metrics.gossip.drop("send_timeout"),
            }
        }
        rx.close();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&key).is_some_and(|tx| tx.is_closed()) {
            peers.remove(&key);
        }
    }
}

/// Reads gossip messages from every gossip connection handed over on `conns`
/// into `queue`, until `conns` closes (a restarted run takes over the receiver).
pub async fn serve_inbound(
    conns: Arc<tokio::sync::Mutex<mpsc::Receiver<Inbound>>>,
    queue: Arc<FairQueue<Received>>,
    metrics: Arc<Metrics>,
) {
    let mut conns = conns.lock().await;
    while let Some(inbound) = conns.recv().await {
        let Some(name) = inbound.peer.node.clone() else {
            continue;
        };
        tokio::spawn(read_connection(
            inbound.conn,
            name,
            queue.clone(),
            metrics.clone(),
        ));
    }
}

async fn read_connection(
    conn: quinn::Connection,
    name: String,
    queue: Arc<FairQueue<Received>>,
    metrics: Arc<Metrics>,
) {
    let peer = Peer {
        name,
        addr: conn.remote_address(),
    };
    let readers = Arc::new(tokio::sync::Semaphore::new(READERS_PER_CONNECTION));
    while let Ok(mut stream) = conn.accept_uni().await {
        let Ok(permit) = readers.clone().acquire_owned().await else {
            return;
        };
        let (queue, metrics, peer) = (queue.clone(), metrics.clone(), peer.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match stream.read_to_end(MAX_MESSAGE_BYTES).await {
                Ok(bytes) => {
                    let len = bytes.len();
                    metrics.gossip.count(Direction::Received, len);
                    if let Err(full) = queue.push(&peer.name.clone(), (peer, bytes), len) {
                        metrics.gossip.drop(full.as_str());
                    }
                }
                Err(quinn::ReadToEndError::TooLong) => {
                    metrics.gossip.drop("too_large");
                    let _ = stream.stop(quinn::VarInt::from_u32(1));
                }
                Err(_) => metrics.gossip.drop("stream_error"),
            }
        });
    }
}

/// How often a seed that keeps failing is logged again.
const SEED_LOG_EVERY: Duration = Duration::from_secs(30);

/// Failed dials of one seed, logged at the first and then at most every
/// [`SEED_LOG_EVERY`], so an operator sees why a node does not join without a
/// line per retry.
#[derive(Debug, Default)]
struct SeedFailures {
    count: u64,
    logged_at: Option<Instant>,
}

impl SeedFailures {
    fn failed(&mut self, seed: std::net::SocketAddr, error: &dyn std::fmt::Display, now: Instant) {
        self.count += 1;
        if self
            .logged_at
            .is_some_and(|t| now.saturating_duration_since(t) < SEED_LOG_EVERY)
        {
            return;
        }
        self.logged_at = Some(now);
        tracing::warn!(
            %seed,
            %error,
            failures = self.count,
            "cannot join through a seed; check its address and port (the QUIC port, not the admin API), that a node runs there, and that it has a certificate of this mesh's CA"
        );
    }

    fn reached(&mut self, seed: std::net::SocketAddr) {
        if self.count > 0 {
            tracing::info!(%seed, failures = self.count, "reached a seed that had failed");
        }
        *self = SeedFailures::default();
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    #[test]
    fn a_seed_that_keeps_failing_is_logged_once_per_interval_and_forgotten_once_reached() {
        let seed: std::net::SocketAddr = "10.0.0.1:7100".parse().unwrap();
        let mut f = SeedFailures::default();
        let t = Instant::now();
        f.failed(seed, &"timed out", t);
        assert_eq!(f.logged_at, Some(t), "the first failure is logged");
        f.failed(seed, &"timed out", t + Duration::from_secs(1));
        assert_eq!(f.logged_at, Some(t), "a retry a second later is not");
        f.failed(seed, &"timed out", t + SEED_LOG_EVERY);
        assert_eq!(f.logged_at, Some(t + SEED_LOG_EVERY));
        assert_eq!(f.count, 3);
        f.reached(seed);
        assert_eq!((f.count, f.logged_at), (0, None));
    }
}
