//! chitchat's `Transport` over the node's QUIC endpoint (`shoal-gossip/1`): one
//! chitchat message per unidirectional QUIC stream, so gossip is encrypted, only
//! mesh certificate holders take part, and messages larger than a datagram arrive
//! whole.
//!
//! chitchat awaits `Socket::send` inside its gossip loop, so sending must never
//! wait on the network: each message is queued for a per-peer task that dials (or
//! reuses) the pooled connection and writes the stream. A full queue, an
//! unreachable peer or a failed write drops the message — gossip tolerates loss,
//! and a dead peer must not stall gossip with the living.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use tokio::sync::mpsc;

use crate::endpoint::{Inbound, MeshEndpoint, Use};
use crate::metrics::{Direction, Metrics};

/// Largest chitchat message accepted from a peer (chitchat itself never builds
/// one above 64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Messages waiting for one peer before new ones are dropped.
const PEER_QUEUE: usize = 32;
/// Messages received and not yet taken by chitchat before new ones are dropped.
const INBOUND_QUEUE: usize = 256;
/// A per-peer sender with nothing to send for this long stops.
const PEER_IDLE: Duration = Duration::from_secs(30);
/// After a failed dial, messages to that peer are dropped for this long.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest a single message write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A received message and the address of the peer that sent it.
pub type Received = (SocketAddr, Vec<u8>);

/// The transport handed to `chitchat::spawn_chitchat`.
pub struct QuicTransport {
    outbound: Arc<Outbound>,
    inbound: Mutex<Option<mpsc::Receiver<Received>>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport").finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport on `endpoint`. Inbound gossip connections must be fed with
    /// [`serve_inbound`], using the returned sender.
    pub fn new(
        endpoint: Arc<MeshEndpoint>,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Sender<Received>) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let transport = QuicTransport {
            outbound: Arc::new(Outbound {
                endpoint,
                metrics,
                peers: Mutex::new(HashMap::new()),
            }),
            inbound: Mutex::new(Some(rx)),
        };
        (transport, tx)
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let rx = self
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow!("the QUIC gossip transport can be opened once"))?;
        Ok(Box::new(QuicSocket {
            outbound: self.outbound.clone(),
            inbound: rx,
        }))
    }
}

struct QuicSocket {
    outbound: Arc<Outbound>,
    inbound: mpsc::Receiver<Received>,
}

#[async_trait]
impl Socket for QuicSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outbound.endpoint.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let bytes = envelope.encode_to_vec();
        let num_bytes_sent = bytes.len();
        self.outbound.enqueue(to, bytes);
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (from_addr, bytes) = self
                .inbound
                .recv()
                .await
                .ok_or_else(|| anyhow!("gossip transport closed"))?;
            match ChitchatEnvelope::decode_from_slice(&bytes) {
                Ok(envelope) => {
                    self.outbound
                        .metrics
                        .gossip(Direction::Received, bytes.len());
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: bytes.len(),
                    });
                }
                Err(e) => {
                    self.outbound.metrics.gossip_drop("malformed");
                    tracing::debug!(%from_addr, error = %e, "dropped a malformed gossip message");
                }
            }
        }
    }
}

struct Outbound {
    endpoint: Arc<MeshEndpoint>,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
}

impl Outbound {
    fn enqueue(self: &Arc<Self>, to: SocketAddr, bytes: Vec<u8>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = match peers.get(&to) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(self.clone().peer_task(to, rx));
                peers.insert(to, tx.clone());
                tx
            }
        };
        drop(peers);
        if tx.try_send(bytes).is_err() {
            self.metrics.gossip_drop("queue_full");
        }
    }

    async fn peer_task(self: Arc<Self>, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut backoff_until: Option<Instant> = None;
        while let Ok(Some(msg)) = tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            if backoff_until.is_some_and(|t| Instant::now() < t) {
                self.metrics.gossip_drop("peer_unreachable");
                continue;
            }
            let conn = match self.endpoint.connect(to, Use::Gossip, None).await {
                Ok(c) => c,
                Err(e) => {
                    backoff_until = Some(Instant::now() + DIAL_BACKOFF);
                    self.metrics.gossip_drop("peer_unreachable");
                    tracing::debug!(peer = %to, error = %e, "gossip peer unreachable");
                    continue;
                }
            };
            backoff_until = None;
            let len = msg.len();
            let write = async {
                let mut stream = conn.open_uni().await?;
                stream.write_all(&msg).await?;
                stream.finish()?;
                anyhow::Ok(())
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => self.metrics.gossip(Direction::Sent, len),
                Ok(Err(e)) => {
                    self.metrics.gossip_drop("send_failed");
                    tracing::debug!(peer = %to, error = %e, "gossip send failed");
                }
                Err(_) => self.metrics.gossip_drop("send_timeout"),
            }
        }
        rx.close();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&to).is_some_and(|tx| tx.is_closed()) {
            peers.remove(&to);
        }
    }
}

/// Reads gossip messages from inbound `shoal-gossip/1` connections and hands
/// them, with the sender's address, to the transport. Runs until `conns` closes.
pub async fn serve_inbound(
    mut conns: mpsc::Receiver<Inbound>,
    to_chitchat: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
) {
    while let Some(inbound) = conns.recv().await {
        let to_chitchat = to_chitchat.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let conn = inbound.conn;
            let from = conn.remote_address();
            while let Ok(mut stream) = conn.accept_uni().await {
                let to_chitchat = to_chitchat.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    match stream.read_to_end(MAX_MESSAGE_BYTES).await {
                        Ok(bytes) => {
                            if to_chitchat.try_send((from, bytes)).is_err() {
                                metrics.gossip_drop("inbound_queue_full");
                            }
                        }
                        Err(quinn::ReadToEndError::TooLong) => {
                            metrics.gossip_drop("too_large");
                            let _ = stream.stop(quinn::VarInt::from_u32(1));
                        }
                        Err(_) => metrics.gossip_drop("stream_error"),
                    }
                });
            }
        });
    }
}
