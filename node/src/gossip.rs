//! Gossip membership: chitchat running over the QUIC endpoint, this node's own
//! records in it, and snapshots of the cluster for the routing table and the
//! admin API.
//!
//! Tuning (see docs/config.md, "gossip"): the chitchat generation id is the start
//! time in milliseconds, so a restarted node is a new generation of the same node;
//! the failure detector's `initial_interval` is the gossip interval (chitchat's 5 s
//! default makes a node that just joined take ~40 s to be declared dead); dead
//! nodes are forgotten after minutes, not chitchat's 24 h, so dead generations do
//! not pile up in every digest; and the compressed digest format (V1) is used.

pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, ProtocolVersion, spawn_chitchat};
use thiserror::Error;
use tokio::sync::{Mutex, watch};

pub use transport::QuicTransport;

use crate::config::GossipConfig;

/// chitchat refused to start.
#[derive(Debug, Error)]
#[error("gossip failed to start: {0}")]
pub struct GossipError(String);

/// A member as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberSnapshot {
    /// The node name.
    pub name: String,
    /// Its generation (start time, ms).
    pub generation: u64,
    /// Its gossip (QUIC) address.
    pub addr: SocketAddr,
    /// Whether the failure detector thinks it alive.
    pub alive: bool,
    /// Its heartbeat counter.
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last advanced, as seen here.
    pub heartbeat_age_ms: u64,
    /// The values of the keys asked for.
    #[serde(skip)]
    pub values: Vec<(String, String)>,
}

/// The running gossip layer of one node.
pub struct Gossip {
    handle: ChitchatHandle,
    self_id: ChitchatId,
    heartbeats: Mutex<HashMap<ChitchatId, (u64, Instant)>>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("self", &self.self_id)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Starts chitchat as `self_id` in `cluster`, with `seeds` and this node's
    /// initial key/values.
    pub async fn start(
        self_id: ChitchatId,
        cluster: &str,
        seeds: Vec<String>,
        params: &GossipConfig,
        initial: Vec<(String, String)>,
        transport: &QuicTransport,
    ) -> Result<Self, GossipError> {
        let config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: cluster.to_string(),
            gossip_interval: params.interval,
            listen_addr: self_id.gossip_advertise_addr,
            seed_nodes: seeds,
            failure_detector_config: params.failure_detector_config(),
            marked_for_deletion_grace_period: params.deletion_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(config, initial, transport)
            .await
            .map_err(|e| GossipError(format!("{e:#}")))?;
        Ok(Gossip {
            handle,
            self_id,
            heartbeats: Mutex::new(HashMap::new()),
        })
    }

    /// This node's chitchat id.
    pub fn self_id(&self) -> &ChitchatId {
        &self.self_id
    }

    /// Sets one of this node's own keys.
    pub async fn set(&self, key: &str, value: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// Deletes one of this node's own keys.
    pub async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().delete(key))
            .await;
    }

    /// Watches the live members' states; changes whenever the live set or any live
    /// member's values change.
    pub async fn live_watcher(&self) -> watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>> {
        self.handle.with_chitchat(|c| c.live_nodes_watcher()).await
    }

    /// Every known member (live and dead), with heartbeat ages and the values of
    /// `keys`.
    pub async fn members(&self, keys: &[&str]) -> Vec<MemberSnapshot> {
        type Raw = (ChitchatId, bool, u64, Vec<(String, String)>);
        let raw: Vec<Raw> = self
            .handle
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .map(|(id, state)| {
                        let values = keys
                            .iter()
                            .filter_map(|k| Some((k.to_string(), state.get(k)?.to_string())))
                            .collect();
                        (
                            id.clone(),
                            live.contains(id),
                            u64::from(state.heartbeat()),
                            values,
                        )
                    })
                    .collect()
            })
            .await;
        let now = Instant::now();
        let mut seen = self.heartbeats.lock().await;
        let mut out = Vec::with_capacity(raw.len());
        for (id, alive, heartbeat, values) in raw {
            let entry = seen.entry(id.clone()).or_insert((heartbeat, now));
            if entry.0 != heartbeat {
                *entry = (heartbeat, now);
            }
            let age = if id == self.self_id {
                0
            } else {
                now.duration_since(entry.1).as_millis() as u64
            };
            out.push(MemberSnapshot {
                name: id.node_id.to_string(),
                generation: id.generation_id,
                addr: id.gossip_advertise_addr,
                alive,
                heartbeat,
                heartbeat_age_ms: age,
                values,
            });
        }
        let known: std::collections::HashSet<(String, u64)> =
            out.iter().map(|m| (m.name.clone(), m.generation)).collect();
        seen.retain(|id, _| known.contains(&(id.node_id.to_string(), id.generation_id)));
        out
    }

    /// Stops gossiping and waits (briefly) for chitchat's loop to end.
    pub async fn stop(&self) {
        if self.handle.initiate_shutdown().is_ok() {
            let done = self.handle.termination_watcher();
            if let Ok(Err(e)) = tokio::time::timeout(std::time::Duration::from_secs(1), done).await
            {
                tracing::debug!(error = %e, "gossip stopped with an error");
            }
        }
    }
}
