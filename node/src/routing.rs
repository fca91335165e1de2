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

/// Whether this node routes by gossip or, having lost every peer at once, by
/// the peers' last known state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reach {
    /// Peers are in the table from gossip (or there never were any).
    #[default]
    Peers,
    /// Every peer vanished at once: their last known entries are kept.
    Isolated,
}

/// The table to route by: `next` (built from gossip), unless it has no peer
/// left while `last` had some — then `last` with only this node's own entries
/// taken from `next`, so an isolated node keeps serving what it knew.
pub fn next_table(
    last: &RoutingTable,
    next: RoutingTable,
    self_name: &str,
) -> (RoutingTable, Reach) {
    let alone = next.nodes().all(|n| n.record.name == self_name);
    let had_peers = last.nodes().any(|n| n.record.name != self_name);
    if alone && had_peers {
        (last.with_node_from(&next, self_name), Reach::Isolated)
    } else {
        (next, Reach::Peers)
    }
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
    let mut reach = Reach::Peers;
    loop {
        let view = views.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let (built, ignored) = table_of(&view);
        gossip.note_view_read(started.elapsed());
        report(&ignored, &mut reported, &metrics);
        let (next, now) = next_table(&table.load_full(), built, &self_name);
        match (reach, now) {
            (Reach::Peers, Reach::Isolated) => {
                tracing::warn!("lost every peer; keeping their last known state until they return");
            }
            (Reach::Isolated, Reach::Peers) => {
                tracing::info!("peers are back; routing from gossip again");
            }
            _ => {}
        }
        reach = now;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use mesh_proto::gossip::{Health, NodeRecord, NodeState, ServiceRecord};
    use mesh_proto::routing::{Ignored, MemberInput, RoutingTable, build_table};
    use mesh_proto::tunnel::Protocol;

    use super::{Reach, next_table, report};
    use crate::metrics::Metrics;

    /// A member `name` hosting `web` with `health`.
    struct Member {
        name: String,
        record: NodeRecord,
        services: Vec<ServiceRecord>,
        allowed: Vec<String>,
    }

    fn member(name: &str, health: Health) -> Member {
        Member {
            name: name.into(),
            record: NodeRecord {
                name: name.into(),
                zone: "zone-a".into(),
                cluster: "test".into(),
                quic_addr: "127.0.0.1:7100".parse().unwrap_or_else(|e| panic!("{e}")),
                version: "0.1.0".into(),
                started_at_ms: 1,
                state: NodeState::Serving,
            },
            services: vec![ServiceRecord {
                name: "web".into(),
                protocol: Protocol::Tcp,
                weight: 100,
                health,
                inflight: 0,
                tags: vec![],
            }],
            allowed: vec!["web".into()],
        }
    }

    fn table(members: &[Member]) -> RoutingTable {
        build_table(members.iter().map(|m| MemberInput {
            name: &m.name,
            generation: 1,
            node: Some(&m.record),
            services: &m.services,
            allowed: &m.allowed,
        }))
        .0
    }

    fn web(t: &RoutingTable) -> Vec<(String, Health)> {
        t.endpoints("web")
            .iter()
            .map(|e| (e.node.clone(), e.health))
            .collect()
    }

    #[test]
    fn with_peers_the_table_is_what_gossip_says() {
        let last = table(&[member("me", Health::Healthy), member("b", Health::Healthy)]);
        let next = table(&[member("me", Health::Healthy), member("c", Health::Healthy)]);
        let (t, reach) = next_table(&last, next.clone(), "me");
        assert_eq!(reach, Reach::Peers);
        assert_eq!(t, next, "b left and c came: nothing is kept");
    }

    #[test]
    fn a_node_that_loses_every_peer_keeps_them_but_its_own_entries_stay_current() {
        let last = table(&[member("me", Health::Healthy), member("b", Health::Healthy)]);
        let alone = table(&[member("me", Health::Unhealthy)]);
        let (t, reach) = next_table(&last, alone, "me");
        assert_eq!(reach, Reach::Isolated);
        assert_eq!(
            web(&t),
            [
                ("b".to_string(), Health::Healthy),
                ("me".to_string(), Health::Unhealthy)
            ],
            "b as last seen; this node's own health as it is now"
        );
        // Peers back: gossip again.
        let back = table(&[member("me", Health::Healthy), member("c", Health::Healthy)]);
        let (t, reach) = next_table(&t, back.clone(), "me");
        assert_eq!((t, reach), (back, Reach::Peers));
    }

    #[test]
    fn a_node_that_never_had_peers_is_not_isolated() {
        let alone = table(&[member("me", Health::Healthy)]);
        let (t, reach) = next_table(&RoutingTable::default(), alone.clone(), "me");
        assert_eq!((t, reach), (alone, Reach::Peers));
    }

    #[test]
    fn a_claim_outside_the_certificate_is_counted_once_while_it_lasts() {
        let metrics = Metrics::new();
        let mut reported = HashSet::new();
        let claim = Ignored::NotInCertificate {
            node: "b".into(),
            service: "pay".into(),
        };
        let count = || metrics.routing.ignored_service_claims.get();
        report(std::slice::from_ref(&claim), &mut reported, &metrics);
        report(std::slice::from_ref(&claim), &mut reported, &metrics);
        assert_eq!(count(), 1, "one claim, however many rebuilds see it");
        report(&[], &mut reported, &metrics);
        report(std::slice::from_ref(&claim), &mut reported, &metrics);
        assert_eq!(count(), 2, "it went away and came back");
    }
}
