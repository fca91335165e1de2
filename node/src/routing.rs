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
                allowed: m.allowed_services(),
            }),
    )
}

/// Whether `a` and `b` give the same table: the same members, each with the
/// same records (shared, so compared by pointer), up or not, and with a
/// certificate valid or not alike. Most view changes in a large mesh are
/// liveness details (an accusation, a refutation) that leave the table as it is.
pub fn same_table_inputs(a: &View, b: &View) -> bool {
    a.members.len() == b.members.len()
        && a.members.iter().zip(&b.members).all(|(x, y)| {
            Arc::ptr_eq(&x.records, &y.records)
                && x.is_up() == y.is_up()
                && x.cert_valid == y.cert_valid
        })
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

/// Rebuilds the table on every change of the view that can change it, until
/// `stop` fires.
pub async fn run(
    gossip: Arc<Gossip>,
    table: SharedTable,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder {
        self_name: gossip.name().to_string(),
        reported: HashSet::new(),
        reach: Reach::Peers,
    };
    let mut views = gossip.watch();
    let mut last: Option<Arc<View>> = None;
    loop {
        let view = views.borrow_and_update().clone();
        let started = std::time::Instant::now();
        if last.as_ref().is_some_and(|l| same_table_inputs(l, &view)) {
            metrics.routing.rebuilds_skipped.inc();
        } else {
            builder.rebuild(&view, &table, &metrics);
            metrics.routing.rebuilds.inc();
        }
        gossip.note_view_read(started.elapsed());
        last = Some(view);
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// What [`run`] keeps between rebuilds.
struct Builder {
    self_name: String,
    /// Service claims reported (see [`report`]).
    reported: HashSet<(String, String)>,
    reach: Reach,
}

impl Builder {
    /// Builds the table `view` gives and swaps it in.
    fn rebuild(&mut self, view: &View, table: &SharedTable, metrics: &Metrics) {
        let (built, ignored) = table_of(view);
        report(&ignored, &mut self.reported, metrics);
        let (next, now) = next_table(&table.load_full(), built, &self.self_name);
        match (self.reach, now) {
            (Reach::Peers, Reach::Isolated) => {
                tracing::warn!("lost every peer; keeping their last known state until they return");
            }
            (Reach::Isolated, Reach::Peers) => {
                tracing::info!("peers are back; routing from gossip again");
            }
            _ => {}
        }
        self.reach = now;
        table.store(Arc::new(next));
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
    use std::sync::Arc;

    use mesh_proto::gossip::{Health, NodeRecord, NodeState, ServiceRecord};
    use mesh_proto::routing::{Ignored, MemberInput, RoutingTable, build_table};
    use mesh_proto::tunnel::Protocol;

    use mesh_proto::membership::{MemberRecords, MemberView, View};

    use super::{Reach, next_table, report, same_table_inputs, table_of};
    use crate::metrics::Metrics;

    /// A member `name` hosting `web` with `health`.
    struct Member {
        name: String,
        record: Arc<NodeRecord>,
        services: Vec<ServiceRecord>,
        allowed: Vec<String>,
    }

    fn member(name: &str, health: Health) -> Member {
        Member {
            name: name.into(),
            record: Arc::new(NodeRecord {
                name: name.into(),
                zone: "zone-a".into(),
                cluster: "test".into(),
                quic_addr: "127.0.0.1:7100".parse().unwrap_or_else(|e| panic!("{e}")),
                version: "0.1.0".into(),
                started_at_ms: 1,
                state: NodeState::Serving,
            }),
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

    fn view_of(members: &[(&Arc<MemberRecords>, &'static str)]) -> View {
        View {
            members: members
                .iter()
                .map(|(records, health)| MemberView {
                    records: Arc::clone(records),
                    is_self: false,
                    health,
                    accusers: Vec::new(),
                    cert_valid: true,
                    last_heard_ms: 0,
                })
                .collect(),
            ..View::default()
        }
    }

    fn records_of(m: &Member) -> Arc<MemberRecords> {
        Arc::new(MemberRecords {
            name: m.name.clone(),
            generation: 1,
            node: Some(m.record.clone()),
            services: m.services.clone(),
            cert_services: m.allowed.clone(),
            cert_not_after_ms: u64::MAX,
            version: 3,
        })
    }

    #[test]
    fn a_view_that_changes_only_in_liveness_details_gives_the_same_table() {
        let (a, b) = (
            records_of(&member("a", Health::Healthy)),
            records_of(&member("b", Health::Healthy)),
        );
        let before = view_of(&[(&a, "alive"), (&b, "alive")]);
        let mut accused = view_of(&[(&a, "alive"), (&b, "suspect")]);
        accused.members[1].accusers = vec!["a".into()];
        accused.members[1].last_heard_ms = 4_000;
        assert!(
            same_table_inputs(&before, &accused),
            "b is accused, still up"
        );
        assert_eq!(table_of(&before).0, table_of(&accused).0);

        let dead = view_of(&[(&a, "alive"), (&b, "dead")]);
        assert!(!same_table_inputs(&before, &dead), "b is down");
        let mut expired = view_of(&[(&a, "alive"), (&b, "alive")]);
        expired.members[1].cert_valid = false;
        assert!(
            !same_table_inputs(&before, &expired),
            "b's certificate expired"
        );
        // New records of b (its `web` turned unhealthy): a change.
        let rebuilt = records_of(&member("b", Health::Unhealthy));
        let changed = view_of(&[(&a, "alive"), (&rebuilt, "alive")]);
        assert!(!same_table_inputs(&before, &changed), "b's records changed");
        assert_ne!(table_of(&before).0, table_of(&changed).0);
        let joined = view_of(&[(&a, "alive")]);
        assert!(!same_table_inputs(&joined, &before), "b joined");
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
