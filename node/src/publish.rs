//! This node's own facts in gossip: its `node` record, its certificate, and one
//! `svc:<name>` record per local service. The only writer of these keys (the
//! `route:<name>` keys are [`crate::routes`]'); health checks and shutdown
//! change state through it.

use std::collections::BTreeMap;

use mesh_proto::codec::encode_text;
use mesh_proto::gossip::{
    CERT_KEY, Health, NODE_KEY, NodeCertificate, NodeRecord, NodeState, ServiceRecord, service_key,
};
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

    /// The key/values to start chitchat with: node record, certificate, services.
    pub async fn initial_values(&self, cert_der: &[u8]) -> Vec<(String, String)> {
        let state = self.state.lock().await;
        let mut out = Vec::new();
        push(&mut out, NODE_KEY.to_string(), &state.node);
        push(
            &mut out,
            CERT_KEY.to_string(),
            &NodeCertificate {
                der: cert_der.to_vec(),
            },
        );
        for s in state.services.values() {
            push(&mut out, service_key(&s.name), s);
        }
        out
    }

    /// Records a health change of a local service and publishes it.
    pub async fn set_health(&self, gossip: &Gossip, service: &str, health: Health) {
        let mut state = self.state.lock().await;
        let Some(record) = state.services.get_mut(service) else {
            return;
        };
        record.health = health;
        if let Ok(text) = encode_text(record) {
            gossip.set(&service_key(service), &text).await;
        }
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
        if let Ok(text) = encode_text(record) {
            gossip.set(&service_key(service), &text).await;
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
        if let Ok(text) = encode_text(&state.node) {
            gossip.set(NODE_KEY, &text).await;
        }
    }

    /// Publishes a new certificate (after a reload).
    pub async fn set_certificate(&self, gossip: &Gossip, cert_der: &[u8]) {
        let record = NodeCertificate {
            der: cert_der.to_vec(),
        };
        if let Ok(text) = encode_text(&record) {
            gossip.set(CERT_KEY, &text).await;
        }
    }

    /// Whether this node publishes `draining`.
    pub async fn is_draining(&self) -> bool {
        self.state.lock().await.node.state == NodeState::Draining
    }
}

fn push<F: mesh_proto::codec::Frame>(out: &mut Vec<(String, String)>, key: String, frame: &F) {
    match encode_text(frame) {
        Ok(text) => out.push((key, text)),
        Err(e) => tracing::error!(%key, error = %e, "cannot encode own record"),
    }
}
