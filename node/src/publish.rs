//! This node's own facts in gossip: its `node` record, its certificate, and one
//! `svc:<name>` record per local service — each signed with this node's key by
//! the membership protocol. The only writer of these keys; health checks,
//! certificate reloads and shutdown change state through it.

use std::collections::BTreeMap;

use mesh_proto::codec::encode;
use mesh_proto::gossip::{Health, NODE_KEY, NodeRecord, NodeState, ServiceRecord, service_key};
use tokio::sync::Mutex;

use crate::gossip::Gossip;

/// The records this node publishes, and the code that writes them.
#[derive(Debug)]
pub struct Publisher {
    state: Mutex<Local>,
}

#[derive(Debug, Clone)]
struct Local {
    node: NodeRecord,
    services: BTreeMap<String, ServiceRecord>,
}

impl Publisher {
    /// Starts from the initial records.
    pub fn new(node: NodeRecord, services: Vec<ServiceRecord>) -> Self {
        Publisher {
            state: Mutex::new(Local {
                node,
                services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            }),
        }
    }

    /// Publishes the certificate and every record: what a node does at start.
    pub async fn publish_all(
        &self,
        gossip: &Gossip,
        cert_der: &[u8],
    ) -> Result<(), mesh_proto::membership::PublishError> {
        let state = self.state.lock().await;
        gossip.publish_certificate(cert_der)?;
        gossip.publish(NODE_KEY, frame(&state.node))?;
        for s in state.services.values() {
            gossip.publish(&service_key(&s.name), frame(s))?;
        }
        Ok(())
    }

    /// Records a health change of a local service and publishes it.
    pub async fn set_health(&self, gossip: &Gossip, service: &str, health: Health) {
        let mut state = self.state.lock().await;
        let Some(record) = state.services.get_mut(service) else {
            return;
        };
        record.health = health;
        publish(gossip, &service_key(service), &*record);
    }

    /// Publishes a local service's in-flight load if it changed.
    pub async fn set_inflight(&self, gossip: &Gossip, service: &str, inflight: u32) {
        let mut state = self.state.lock().await;
        let Some(record) = state.services.get_mut(service) else {
            return;
        };
        if record.inflight == inflight {
            return;
        }
        record.inflight = inflight;
        publish(gossip, &service_key(service), &*record);
    }

    /// Publishes a local service's record, new or changed (a config reload).
    pub async fn put_service(&self, gossip: &Gossip, record: ServiceRecord) {
        let mut state = self.state.lock().await;
        publish(gossip, &service_key(&record.name), &record);
        state.services.insert(record.name.clone(), record);
    }

    /// Withdraws a local service (a config reload removed it): its record is
    /// published once more with weight 0 and unhealthy — which every node
    /// reads as "not offered" ([`mesh_proto::routing`] skips weight 0) — and
    /// no longer updated.
    pub async fn withdraw_service(&self, gossip: &Gossip, service: &str) {
        let mut state = self.state.lock().await;
        if let Some(mut record) = state.services.remove(service) {
            record.weight = ServiceRecord::WITHDRAWN;
            record.health = Health::Unhealthy;
            record.inflight = 0;
            publish(gossip, &service_key(service), &record);
        }
    }

    /// The current health of a local service.
    pub async fn health(&self, service: &str) -> Option<Health> {
        self.state
            .lock()
            .await
            .services
            .get(service)
            .map(|s| s.health)
    }

    /// Publishes `draining`: peers stop choosing this node for new streams.
    pub async fn set_draining(&self, gossip: &Gossip) {
        let mut state = self.state.lock().await;
        state.node.state = NodeState::Draining;
        publish(gossip, NODE_KEY, &state.node);
    }

    /// Publishes a new certificate (after a reload); every record is signed
    /// again with the new key.
    pub async fn set_certificate(
        &self,
        gossip: &Gossip,
        cert_der: &[u8],
    ) -> Result<(), mesh_proto::membership::PublishError> {
        let _state = self.state.lock().await;
        gossip.publish_certificate(cert_der)
    }

    /// Whether this node publishes `draining`.
    pub async fn is_draining(&self) -> bool {
        self.state.lock().await.node.state == NodeState::Draining
    }
}

fn frame<F: mesh_proto::codec::Frame>(record: &F) -> Vec<u8> {
    // This node's own records are built from validated config: they always encode.
    encode(record).unwrap_or_default()
}

fn publish<F: mesh_proto::codec::Frame>(gossip: &Gossip, key: &str, record: &F) {
    if let Err(e) = gossip.publish(key, frame(record)) {
        tracing::error!(%key, error = %e, "cannot publish this node's record");
    }
}
