//! Keeps this node's routing table current: whenever the membership view
//! changes, rebuild the table (`mesh_proto::routing::build_table`, a pure
//! function) from the members that are up and swap it in atomically. Readers
//! (proxies, the admin API) load the current table without locks.
//!
//! Every record in the view was verified by the membership protocol against its
//! origin's certificate; which services a node may host comes from that
//! certificate (none once it expired). If every peer disappears at once, the
//! peers' last known entries are kept: an isolated node keeps serving what it
//! knew rather than nothing, while its own entries (health, draining, services)
//! stay current.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_proto::membership::View;
use mesh_proto::routing::{Ignored, MemberInput, RoutingTable, build_table};
use tokio::sync::watch;

use crate::gossip::Gossip;
use crate::metrics::Metrics;

/// The shared, atomically swapped routing table.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// The table the members that are up in `view` give, and what was left out.
pub fn table_of(view: &View) -> (RoutingTable, Vec<Ignored>) {
    build_table(
        view.members
            .iter()
            .filter(|m| m.is_up())
            .map(|m| MemberInput {
                name: &m.name,
                generation: m.generation,
                node: m.node.as_ref(),
                services: &m.services,
                allowed: &m.allowed_services,
            }),
    )
}

/// Rebuilds the table on every change of the view until `stop` fires.
pub async fn run(
    gossip: Arc<Gossip>,
    table: SharedTable,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let self_name = gossip.name().to_string();
    let mut views = gossip.watch();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    let mut isolated = false;
    loop {
        let view = views.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let (next, ignored) = table_of(&view);
        gossip.note_view_read(started.elapsed());
        report(&ignored, &mut reported, &metrics);
        let alone = next.nodes().all(|n| n.record.name == self_name);
        let last = table.load_full();
        let had_peers = last.nodes().any(|n| n.record.name != self_name);
        let next = if alone && had_peers {
            if !isolated {
                tracing::warn!("lost every peer; keeping their last known state until they return");
                isolated = true;
            }
            // Keep the peers as last seen, but this node's own entries current.
            last.with_node_from(&next, &self_name)
        } else {
            if isolated {
                tracing::info!("peers are back; routing from gossip again");
                isolated = false;
            }
            next
        };
        table.store(Arc::new(next));
        metrics.routing.rebuilds.inc();
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Logs and counts each service claim a certificate does not allow, once while
/// it lasts.
fn report(ignored: &[Ignored], reported: &mut HashSet<(String, String)>, metrics: &Metrics) {
    let mut current = HashSet::new();
    for item in ignored {
        match item {
            Ignored::NotInCertificate { node, service } => {
                let key = (node.clone(), service.clone());
                if reported.insert(key.clone()) {
                    metrics.routing.ignored_service_claims.inc();
                    tracing::warn!(
                        %node, %service,
                        "ignoring a service claim the node's certificate does not allow"
                    );
                }
                current.insert(key);
            }
            other => tracing::debug!(?other, "left a member out of the routing table"),
        }
    }
    // Forget claims that went away, so a returning one is reported again.
    reported.retain(|k| current.contains(k));
}
