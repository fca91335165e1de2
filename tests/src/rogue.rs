//! A rogue member: a host holding a valid node certificate of the mesh that
//! speaks the gossip protocol directly over QUIC (`shoal-gossip/2`), sending
//! whatever it likes — what an attacker who compromised one host can do. It signs
//! with its own key (the only one it has), dials with its own certificate through
//! the node's real endpoint code, and answers probes, so the mesh sees it as a
//! live member.
//!
//! ```ignore
//! let rogue = Rogue::join(&pki, "rogue", &["web"], &[&a, &b, &c]).await;
//! let forged = rogue.sign(rogue.record_for("b", gen_b, v + 1000, "svc:web", value));
//! rogue.send(&a, Body::Items(Items { records: vec![forged], ..Default::default() })).await;
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::codec::{decode_exact, encode};
use mesh_proto::gossip::{CERT_KEY, NODE_KEY, NodeCertificate, NodeRecord, NodeState};
use mesh_proto::membership::signing::{record_payload, suspicion_payload};
use mesh_proto::membership::wire::{Body, Items};
use mesh_proto::membership::{GossipMessage, SignedRecord, Suspicion};
use shoal_node::endpoint::{Accepted, MeshEndpoint, Use};
use shoal_node::tls::TlsState;

use crate::{Pki, TestNode};

/// The cluster test nodes run in.
pub const CLUSTER: &str = "test";

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A member with a valid certificate that sends what it wants.
pub struct Rogue {
    /// Its node name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Its endpoint's address.
    pub addr: SocketAddr,
    endpoint: Arc<MeshEndpoint>,
    tls: Arc<TlsState>,
    version: std::sync::atomic::AtomicU64,
}

impl Rogue {
    /// A rogue called `name` whose certificate allows `services`, answering
    /// probes; it has told no one about itself yet.
    pub fn new(pki: &Pki, name: &str, services: &[&str]) -> Rogue {
        let (endpoint, accepted, tls) = pki.endpoint_accepting(name, services);
        let addr = endpoint.local_addr().unwrap();
        let rogue = Rogue {
            name: name.to_string(),
            generation: wall_ms(),
            addr,
            endpoint,
            tls,
            version: std::sync::atomic::AtomicU64::new(0),
        };
        rogue.answer_probes(accepted);
        rogue
    }

    /// [`Rogue::new`], then it publishes its own (genuine) certificate and node
    /// record to `nodes`, and waits until they hold it as a member.
    pub async fn join(pki: &Pki, name: &str, services: &[&str], nodes: &[&TestNode]) -> Rogue {
        let rogue = Rogue::new(pki, name, services);
        let cert = rogue.own(
            CERT_KEY,
            encode(&NodeCertificate {
                der: rogue.tls.identity().cert_der.to_vec(),
            })
            .unwrap(),
        );
        let node = rogue.own(NODE_KEY, encode(&rogue.node_record()).unwrap());
        for n in nodes {
            rogue
                .send(
                    n,
                    Body::Items(Items {
                        records: vec![cert.clone(), node.clone()],
                        ..Items::default()
                    }),
                )
                .await;
        }
        for n in nodes {
            crate::eventually(&format!("{} holds {name}", n.spec.name), || async {
                n.node
                    .gossip()
                    .view()
                    .members
                    .iter()
                    .any(|m| m.name == name && m.node.is_some())
            })
            .await;
        }
        rogue
    }

    /// Its node record: its real address, serving.
    pub fn node_record(&self) -> NodeRecord {
        NodeRecord {
            name: self.name.clone(),
            zone: "zone-a".into(),
            cluster: CLUSTER.into(),
            quic_addr: self.addr,
            version: "rogue".into(),
            started_at_ms: self.generation,
            state: NodeState::Serving,
        }
    }

    /// One of its own records, with its next version, signed by it.
    pub fn own(&self, key: &str, value: Vec<u8>) -> SignedRecord {
        let version = self
            .version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.sign(SignedRecord {
            origin: self.name.clone(),
            generation: self.generation,
            version,
            signed_at_ms: wall_ms(),
            key: key.into(),
            value,
            signature: vec![],
        })
    }

    /// A record claiming to be `origin`'s, signed with the rogue's key.
    pub fn record_for(
        &self,
        origin: &str,
        generation: u64,
        version: u64,
        key: &str,
        value: Vec<u8>,
    ) -> SignedRecord {
        self.sign(SignedRecord {
            origin: origin.into(),
            generation,
            version,
            signed_at_ms: wall_ms(),
            key: key.into(),
            value,
            signature: vec![],
        })
    }

    /// `r` signed with the rogue's key.
    pub fn sign(&self, mut r: SignedRecord) -> SignedRecord {
        r.signature = self.tls.sign(&record_payload(CLUSTER, &r)).unwrap();
        r
    }

    /// An accusation of `target` (generation, version) by the rogue, signed.
    pub fn accuse(&self, target: &str, generation: u64, version: u64) -> Suspicion {
        let mut s = Suspicion {
            accuser: self.name.clone(),
            accuser_generation: self.generation,
            target: target.into(),
            target_generation: generation,
            target_version: version,
            issued_at_ms: wall_ms(),
            signature: vec![],
        };
        s.signature = self.tls.sign(&suspicion_payload(CLUSTER, &s)).unwrap();
        s
    }

    /// Sends one message to `to`.
    pub async fn send(&self, to: &TestNode, body: Body) {
        let msg = GossipMessage {
            cluster: CLUSTER.into(),
            sender_generation: self.generation,
            body,
        };
        self.send_bytes(to, &encode(&msg).unwrap()).await;
    }

    /// Sends raw bytes as one gossip message to `to`.
    ///
    /// A pooled connection may close under the rogue (of two connections the
    /// rogue and a node dialled each other at once, only one stays): the send
    /// is tried again on a fresh one, as often as a node's gossip would.
    pub async fn send_bytes(&self, to: &TestNode, bytes: &[u8]) {
        let mut last_error = None;
        for _ in 0..3 {
            match self.try_send_bytes(to, bytes).await {
                Ok(()) => return,
                Err(e) => last_error = Some(e),
            }
        }
        panic!(
            "the rogue could not send to {}: {}",
            to.spec.name,
            last_error.unwrap_or_default()
        );
    }

    async fn try_send_bytes(&self, to: &TestNode, bytes: &[u8]) -> Result<(), String> {
        let conn = self
            .endpoint
            .connect(to.node.bound().quic, Use::Gossip, Some(to.node.name()))
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let mut stream = conn.open_uni().await.map_err(|e| format!("open: {e}"))?;
        stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.finish().map_err(|e| format!("finish: {e}"))?;
        let _ = stream.stopped().await;
        Ok(())
    }

    /// Answers every ping sent to it, so the mesh sees it alive.
    fn answer_probes(&self, accepted: Accepted) {
        let Accepted {
            gossip: mut gossip_rx,
            ..
        } = accepted;
        tokio::spawn(self.endpoint.clone().accept_loop());
        let generation = self.generation;
        tokio::spawn(async move {
            while let Some(inbound) = gossip_rx.recv().await {
                let conn = inbound.conn;
                tokio::spawn(async move {
                    while let Ok(mut stream) = conn.accept_uni().await {
                        let Ok(bytes) = stream.read_to_end(256 * 1024).await else {
                            continue;
                        };
                        let Ok(msg) = decode_exact::<GossipMessage>(&bytes) else {
                            continue;
                        };
                        if let Body::Ping(nonce) = msg.body {
                            let ack = GossipMessage {
                                cluster: CLUSTER.into(),
                                sender_generation: generation,
                                body: Body::Ack(nonce),
                            };
                            if let Ok(mut s) = conn.open_uni().await {
                                let _ = s.write_all(&encode(&ack).unwrap()).await;
                                let _ = s.finish();
                            }
                        }
                    }
                });
            }
        });
    }
}
