//! The membership protocol on a simulated network: honest scenarios (joining,
//! health changes, deaths, partitions, restarts) and a hostile member holding a
//! valid certificate trying each attack of the gossip threat model
//! (docs/security.md). Everything runs on a simulated clock: no sockets, no
//! sleeping, the same result every run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::codec::encode;
use mesh_proto::gossip::{Health, NodeCertificate, NodeRecord, NodeState, RouteDocument};
use mesh_proto::membership::signing::{indirect_ack_payload, record_payload, suspicion_payload};
use mesh_proto::membership::sim::{Network, node_record, service_record};
use mesh_proto::membership::wire::{
    Body, Digest, IndirectAck, Items, NameRange, OriginSummary, PingReq, TimeIs,
};
use mesh_proto::membership::{
    Crypto, Destination, Event, GossipMessage, Limits, MemberView, Refusal, SignedRecord,
    Suspicion, Timing,
};
use mesh_proto::revocation::{REVOCATIONS_DOCUMENT, Revocation, RevocationList};
use mesh_proto::route::RouteSpec;

const INTERVAL: Duration = Duration::from_millis(100);

fn timing() -> Timing {
    Timing::from_interval(INTERVAL)
}

/// `n` nodes `n1`..`nN`, each hosting `web`, converged.
fn mesh(n: usize) -> Network {
    let mut net = Network::new(timing(), 42);
    for i in 1..=n {
        net.add(&format!("n{i}"), &["web"]);
    }
    assert!(
        net.run_until(Duration::from_secs(30), Network::converged),
        "the mesh did not converge"
    );
    net
}

fn service_health(net: &Network, observer: &str, node: &str, service: &str) -> Option<Health> {
    let n = net.node(observer)?;
    let view = n.membership.view(net.now(), net.wall_ms());
    let m = view.members.iter().find(|m| m.name == node)?;
    m.services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.health)
}

/// Whether every node sees `web` on `node` with `health`.
fn web_seen_everywhere(net: &Network, node: &str, health: Health) -> bool {
    net.names()
        .iter()
        .all(|o| service_health(net, o, node, "web") == Some(health))
}

fn refusals(net: &Network, node: &str, reason: Refusal) -> usize {
    net.node(node)
        .unwrap()
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Refused { reason: r, .. } if *r == reason))
        .count()
}

fn all_see(net: &Network, name: &str, health: &str) -> bool {
    net.names()
        .iter()
        .filter(|o| *o != name && net.node(o).unwrap().running)
        .all(|o| net.health_seen(o, name) == Some(health))
}

fn msg(net: &Network, body: Body) -> GossipMessage {
    GossipMessage {
        cluster: net.cluster().to_string(),
        sender_generation: 1,
        body,
    }
}

fn items(records: Vec<SignedRecord>, suspicions: Vec<Suspicion>) -> Body {
    Body::Items(Items {
        records,
        suspicions,
        documents: vec![],
    })
}

/// A record of `origin` signed with `signer`'s crypto (the signer's own key).
fn signed_by(net: &Network, signer: &str, mut r: SignedRecord) -> SignedRecord {
    let c = net.crypto_of(signer);
    r.signature = c.sign(&record_payload(net.cluster(), &r)).unwrap();
    r
}

fn addr(net: &Network, name: &str) -> SocketAddr {
    net.node(name).unwrap().addr
}

fn generation(net: &Network, name: &str) -> u64 {
    net.node(name).unwrap().membership.config().generation
}

/// How `observer` sees `name`, if it holds it.
fn member_view(net: &Network, observer: &str, name: &str) -> Option<MemberView> {
    let view = net
        .node(observer)?
        .membership
        .view(net.now(), net.wall_ms());
    view.members.into_iter().find(|m| m.name == name)
}

fn max_version(net: &Network, observer: &str, name: &str) -> u64 {
    member_view(net, observer, name).map_or(0, |m| m.version)
}

// ---------------------------------------------------------------------------
// Honest scenarios
// ---------------------------------------------------------------------------

#[test]
fn nodes_joining_through_one_seed_converge_on_members_and_services() {
    let net = mesh(8);
    for o in net.names() {
        for n in net.names() {
            assert_eq!(
                service_health(&net, &o, &n, "web"),
                Some(Health::Healthy),
                "{o} sees web on {n}"
            );
        }
    }
}

#[test]
fn the_nodes_of_a_network_hold_one_copy_of_each_record_and_origin_between_them() {
    let mut net = mesh(8);
    // Eight origins of three records each (certificate, node, `web`): 24
    // records and 8 origins, held by eight nodes each, not 192 and 64 copies.
    let once =
        |net: &Network| (net.distinct_records_held(), net.distinct_origins_held()) == (8 * 3, 8);
    assert!(
        net.run_until(Duration::from_secs(5), once),
        "{} records and {} origins held",
        net.distinct_records_held(),
        net.distinct_origins_held()
    );
    net.set_health("n3", "web", Health::Unhealthy);
    let flipped = |net: &Network| web_seen_everywhere(net, "n3", Health::Unhealthy);
    assert!(net.run_until(Duration::from_secs(5), flipped));
    // The old `web` record of n3, and n3 as it was, are gone once no node
    // holds them.
    assert_eq!(net.distinct_records_held(), 8 * 3);
    assert_eq!(net.distinct_origins_held(), 8);
}

#[test]
fn a_shared_origin_changes_only_for_the_nodes_that_take_the_change() {
    let mut net = mesh(8);
    let once = |net: &Network| net.distinct_origins_held() == 8;
    assert!(net.run_until(Duration::from_secs(5), once));
    // n8 holds the same n3 as everyone else, and is cut off before n3 changes.
    net.partition(&["n8"]);
    net.set_health("n3", "web", Health::Unhealthy);
    let others = |net: &Network| {
        (1..=7)
            .all(|i| service_health(net, &format!("n{i}"), "n3", "web") == Some(Health::Unhealthy))
    };
    assert!(net.run_until(Duration::from_secs(5), others));
    assert_eq!(
        service_health(&net, "n8", "n3", "web"),
        Some(Health::Healthy)
    );
    net.heal();
    let flipped = |net: &Network| {
        web_seen_everywhere(net, "n3", Health::Unhealthy)
            && (net.distinct_records_held(), net.distinct_origins_held()) == (8 * 3, 8)
    };
    assert!(net.run_until(Duration::from_secs(5), flipped));
}

#[test]
fn views_share_each_members_records_until_they_change() {
    let mut net = mesh(8);
    let view = |net: &Network| {
        net.node("n1")
            .unwrap()
            .membership
            .view(net.now(), net.wall_ms())
    };
    let before = view(&net);
    let again = view(&net);
    assert_eq!(before.members.len(), 8);
    for (a, b) in before.members.iter().zip(&again.members) {
        assert!(
            std::sync::Arc::ptr_eq(&a.records, &b.records),
            "{}: rebuilt though nothing changed",
            a.name
        );
    }
    net.set_health("n3", "web", Health::Unhealthy);
    let flipped = |net: &Network| service_health(net, "n1", "n3", "web") == Some(Health::Unhealthy);
    assert!(net.run_until(Duration::from_secs(5), flipped));
    let after = view(&net);
    for (a, b) in before.members.iter().zip(&after.members) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            std::sync::Arc::ptr_eq(&a.records, &b.records),
            a.name != "n3",
            "{}: only the member that changed is built again",
            a.name
        );
    }
}

#[test]
fn a_health_change_reaches_every_node() {
    let mut net = mesh(8);
    net.set_health("n3", "web", Health::Unhealthy);
    let everywhere = |net: &Network| web_seen_everywhere(net, "n3", Health::Unhealthy);
    assert!(net.run_until(Duration::from_secs(5), everywhere));
}

/// How long ago `observer` last heard from or of `name`, by its view.
fn last_heard_ms(net: &Network, observer: &str, name: &str) -> u64 {
    member_view(net, observer, name).unwrap().last_heard_ms
}

#[test]
fn a_member_is_heard_of_when_its_records_arrive_and_never_after_it_stopped() {
    let mut net = mesh(8);
    net.kill("n3");
    net.run_for(Duration::from_secs(1));
    // Messages already on the wire when it stopped land within a link's latency.
    let silent = last_heard_ms(&net, "n1", "n3");
    assert!(silent >= 900, "n3 last heard {silent} ms ago");
    net.set_health("n4", "web", Health::Unhealthy);
    let seen = |net: &Network| service_health(net, "n1", "n4", "web") == Some(Health::Unhealthy);
    assert!(net.run_until(Duration::from_secs(5), seen));
    let fresh = last_heard_ms(&net, "n1", "n4");
    assert!(
        fresh < 50,
        "n4 last heard {fresh} ms ago, as its new record arrived"
    );
    assert!(
        last_heard_ms(&net, "n1", "n3") > silent,
        "n3 was not heard of since"
    );
}

#[test]
fn a_killed_node_is_dead_everywhere_then_forgotten() {
    let mut net = mesh(6);
    net.kill("n4");
    assert!(net.run_until(Duration::from_secs(10), |n| all_see(n, "n4", "dead")));
    // No false deaths meanwhile.
    for o in net.names() {
        for n in net.names() {
            if n != "n4" && o != "n4" {
                assert_eq!(net.health_seen(&o, &n), Some("alive"), "{o} on {n}");
            }
        }
    }
    let grace = timing().dead_grace;
    net.run_for(grace + Duration::from_secs(2));
    assert!(
        net.names()
            .iter()
            .filter(|o| *o != "n4")
            .all(|o| net.health_seen(o, "n4").is_none())
    );
}

#[test]
fn a_node_that_is_accused_trusts_itself_less_then_recovers() {
    let mut net = mesh(5);
    assert_eq!(net.node("n1").unwrap().membership.local_health(), 0);
    // n1 alone is cut off: the others accuse it; when the partition heals it
    // hears of the accusations and refutes them, each a sign that the trouble
    // was on its side.
    net.partition(&["n1"]);
    net.run_for(Duration::from_secs(3));
    net.heal();
    assert!(net.run_until(Duration::from_secs(30), |n| {
        n.node("n1").unwrap().membership.local_health() > 0
    }));
    assert!(net.run_until(Duration::from_secs(30), Network::converged));
    // Answered probes bring it back to 0.
    assert!(net.run_until(Duration::from_secs(30), |n| {
        n.node("n1").unwrap().membership.local_health() == 0
    }));
}

#[test]
fn a_node_cut_off_accuses_every_other_member_promptly() {
    // Unanswered probes alone do not make a node doubt itself: cut off, it
    // accuses every member, its probes overlapping (a new one each round,
    // three at once), so four unreachable neighbours take less than two probe
    // cycles (each 0.8 s here: a timeout, a retry, indirect probes).
    let mut net = mesh(5);
    net.partition(&["n1"]);
    let others = ["n2", "n3", "n4", "n5"];
    assert!(net.run_until(Duration::from_millis(1600), |n| {
        others
            .iter()
            .all(|o| n.health_seen("n1", o) != Some("alive"))
    }));
}

#[test]
fn accusations_past_the_budget_wait_for_it_rather_than_for_the_next_probe() {
    // Cut off from 19 members, n1 may accuse 8 at once and then one every 2 s.
    // An unreachable member leaves its neighbours and is not probed again
    // before `suspicion_ttl`, so the accusations the budget refused must be
    // queued and issued as it refills: every member is accused well before
    // the first of them could be probed again.
    let mut net = mesh(20);
    net.partition(&["n1"]);
    let others: Vec<String> = net.names().into_iter().filter(|n| n != "n1").collect();
    let accused_by_n1 = |n: &Network| -> usize {
        let events = &n.node("n1").unwrap().events;
        others
            .iter()
            .filter(|o| {
                events.iter().any(|(_, e)| {
                    matches!(e, Event::Accused { target, accuser } if target == *o && accuser == "n1")
                })
            })
            .count()
    };
    let ttl = timing().suspicion_ttl();
    let refill = Duration::from_secs(2) * (others.len() as u32 - 8);
    assert!(refill < ttl / 2, "the scenario must tell the two apart");
    let done = net.run_until(refill + ttl / 4, |n| accused_by_n1(n) == others.len());
    assert!(
        done,
        "n1 accused {} of {} members before its first unreachable one could be probed again",
        accused_by_n1(&net),
        others.len()
    );
}

#[test]
fn a_neighbour_that_fails_its_probe_is_replaced_before_its_suspicion_ends() {
    // n1's neighbour dies: once n1's probe of it has gone unanswered through
    // every stage, the next member on that ring takes its place within a
    // round, while the dead one is still only a suspect.
    let mut net = mesh(20);
    let gone = net.node_mut("n1").unwrap().membership.neighbour_names()[0].clone();
    net.kill(&gone);
    let accused_by_n1 = |n: &Network| {
        n.node("n1").unwrap().events.iter().any(|(_, e)| {
            matches!(e, Event::Accused { target, accuser } if *target == gone && accuser == "n1")
        })
    };
    assert!(net.run_until(Duration::from_secs(5), accused_by_n1));
    // Neighbours are computed again at most once a round.
    net.run_for(INTERVAL * 2);
    assert_eq!(net.health_seen("n1", &gone), Some("suspect"));
    let now = net.node_mut("n1").unwrap().membership.neighbour_names();
    assert!(!now.contains(&gone), "{gone} is still among {now:?}");
    assert!(!now.is_empty());
}

#[test]
fn a_cut_off_minority_finds_its_own_side_and_sees_the_rest_dead() {
    // A tenth of the mesh is cut off. Its members start with neighbours on the
    // far side; each unreachable one is replaced by the next on its ring, so
    // they find each other, flood their accusations among themselves and see
    // every member across the cut dead, as the majority sees them.
    let mut net = mesh(40);
    let side = ["n1", "n2", "n3", "n4"];
    net.partition(&side);
    let far: Vec<String> = net
        .names()
        .into_iter()
        .filter(|n| !side.contains(&n.as_str()))
        .collect();
    // Seeded, so the same every run: 17.8 s; 25.4 s when a failed neighbour
    // stays a neighbour until its suspicion ends (the minority then floods its
    // accusations across the cut, to nobody).
    assert!(
        net.run_until(Duration::from_secs(21), |n| {
            side.iter()
                .all(|s| far.iter().all(|f| n.health_seen(s, f) == Some("dead")))
                && far
                    .iter()
                    .all(|f| side.iter().all(|s| n.health_seen(f, s) == Some("dead")))
        }),
        "the sides do not see each other dead"
    );
    for s in side {
        let neighbours = net.node_mut(s).unwrap().membership.neighbour_names();
        assert!(
            neighbours.iter().all(|n| side.contains(&n.as_str())),
            "{s} still talks to {neighbours:?} across the cut"
        );
    }
}

/// A member of `net` that is not among `of`'s neighbours (nor `of` among its).
fn not_a_neighbour_of(net: &mut Network, of: &str) -> String {
    let near = net.node_mut(of).unwrap().membership.neighbour_names();
    net.names()
        .into_iter()
        .filter(|n| n != of && !near.contains(n))
        .find(|n| {
            let theirs = net.node_mut(n).unwrap().membership.neighbour_names();
            !theirs.iter().any(|t| t == of)
        })
        .expect("a mesh larger than one node's neighbours")
}

#[test]
fn a_node_paused_while_a_member_died_learns_the_death_when_it_resumes() {
    // A node is paused (a stopped process, a suspended VM) while a member that
    // is not its neighbour dies, and longer than an accusation lives. When it
    // resumes, every accusation of the dead member is too old for it to
    // accept, and it never probes that member itself; a neighbour holding the
    // member dead sees it held alive (their range hashes differ) and accuses it
    // again for it.
    let mut net = mesh(30);
    let victim = "n7";
    let sleeper = not_a_neighbour_of(&mut net, victim);
    net.kill(&sleeper);
    net.kill(victim);
    let others: Vec<String> = net
        .names()
        .into_iter()
        .filter(|n| *n != sleeper && n != victim)
        .collect();
    assert!(net.run_until(Duration::from_secs(10), |n| {
        others
            .iter()
            .all(|o| n.health_seen(o, victim) == Some("dead"))
    }));
    net.run_for(timing().suspicion_ttl() + Duration::from_secs(1));
    net.resume(&sleeper);
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.health_seen(&sleeper, victim)
            == Some("dead")),
        "{sleeper} still holds {victim} {:?}",
        net.health_seen(&sleeper, victim)
    );
    let reaccused = net
        .names()
        .iter()
        .flat_map(|o| net.node(o).unwrap().events.iter())
        .filter(|(_, e)| matches!(e, Event::Reaccused { target } if target == victim))
        .count();
    assert!(reaccused >= 1, "nobody accused {victim} again");
    // Nobody handed it an accusation it could only refuse as too old.
    assert_eq!(refusals(&net, &sleeper, Refusal::SuspicionTooOld), 0);
    // The sleeper is back in every view, and nobody else died.
    assert!(net.run_until(Duration::from_secs(10), |n| {
        others
            .iter()
            .all(|o| n.health_seen(o, &sleeper) == Some("alive"))
    }));
    assert_eq!(net.stats.deaths_of_running, 0);
}

#[test]
fn a_node_killed_in_a_small_mesh_dies_although_its_probers_keep_accusing_it() {
    // Three nodes at the default interval: two accusers, whose probes of the
    // dead node keep failing (every ~1.25 s), while the two-accuser timeout is
    // 2.8 s. Accusing again must not restart the timers.
    let mut net = Network::new(Timing::default(), 3);
    for n in ["n1", "n2", "n3"] {
        net.add(n, &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(10), Network::converged));
    net.kill("n2");
    assert!(
        net.run_until(Duration::from_secs(10), |n| all_see(n, "n2", "dead")),
        "n2 is still {:?} on n1",
        net.health_seen("n1", "n2")
    );
}

#[test]
fn honest_members_never_trip_the_anti_entropy_rate_limit() {
    // n2's seed is n1, also its only neighbour: a round that picks both (the
    // rare seed exchange) must not send n1 two range hashes, the second of
    // which n1 would refuse as `sync_rate_limited`.
    let mut net = mesh(2);
    net.run_for(Duration::from_secs(120));
    for n in ["n1", "n2"] {
        assert_eq!(refusals(&net, n, Refusal::SyncRateLimited), 0, "{n}");
    }
}

#[test]
fn a_node_tells_its_time_to_anyone_of_the_cluster_and_nothing_else_changes() {
    // `shoal check --pre` asks a seed for its clock in the name of a node that
    // is not running yet: the seed answers at the address it was asked from,
    // and neither learns of a member nor counts the question as a sign of life.
    let mut net = mesh(3);
    let members_before = net
        .node("n1")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms())
        .members
        .len();
    let (now, wall) = (net.now(), net.wall_ms());
    let asker: SocketAddr = "10.9.9.9:7100".parse().unwrap();
    let question = msg(&net, Body::Time(42));
    let n1 = &mut net.node_mut("n1").unwrap().membership;
    while n1.poll_transmit().is_some() {}
    let peer = mesh_proto::membership::Peer {
        name: "n9".into(),
        addr: asker,
    };
    n1.handle_message(peer, question, now, wall);
    let answers: Vec<_> = std::iter::from_fn(|| n1.poll_transmit()).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let answer = &answers[0];
    assert!(matches!(&answer.to, Destination::Member(p) if p.addr == asker && p.name == "n9"));
    assert_eq!(
        answer.message.body,
        Body::TimeIs(TimeIs {
            nonce: 42,
            wall_ms: wall
        })
    );
    let view = n1.view(now, wall);
    assert_eq!(view.members.len(), members_before);
    assert!(view.members.iter().all(|m| m.name != "n9"));
    // An answer nobody asked for changes nothing either.
    let stray = msg(
        &net,
        Body::TimeIs(TimeIs {
            nonce: 1,
            wall_ms: 0,
        }),
    );
    net.inject("n2", addr(&net, "n2"), "n1", &stray);
    assert_eq!(refusals(&net, "n1", Refusal::Malformed), 0);
}

#[test]
fn a_partitioned_node_is_dead_then_alive_again_after_the_heal() {
    let mut net = mesh(6);
    net.partition(&["n2"]);
    assert!(net.run_until(Duration::from_secs(10), |n| all_see(n, "n2", "dead")));
    net.heal();
    assert!(
        net.run_until(Duration::from_secs(20), Network::converged),
        "the mesh did not heal"
    );
    assert!(
        net.node("n2")
            .unwrap()
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::Refuted { .. }))
    );
}

#[test]
fn a_partition_longer_than_the_dead_grace_still_heals() {
    let mut t = timing();
    t.dead_grace = Duration::from_secs(5);
    let mut net = Network::new(t, 9);
    for n in ["n1", "n2", "n3", "n4"] {
        net.add(n, &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(10), Network::converged));
    net.partition(&["n1", "n2"]);
    // Long enough for each side to declare the other dead and forget it.
    net.run_for(Duration::from_secs(15));
    assert_eq!(net.health_seen("n3", "n1"), None, "forgotten");
    assert_eq!(net.health_seen("n1", "n3"), None, "forgotten");
    net.heal();
    // n3 and n4 still have n1 as a seed (the first nodes); their old records
    // are refused, but each side signs again when a peer's digest lacks it.
    assert!(
        net.run_until(Duration::from_secs(60), Network::converged),
        "the mesh did not heal"
    );
    let reannounced = |name: &str| {
        net.node(name)
            .unwrap()
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::Reannounced))
    };
    assert!(
        reannounced("n1") || reannounced("n2"),
        "side one signed again"
    );
    assert!(
        reannounced("n3") || reannounced("n4"),
        "side two signed again"
    );
}

#[test]
fn a_restarted_node_replaces_its_old_generation() {
    let mut net = mesh(5);
    let old = generation(&net, "n5");
    net.kill("n5");
    net.run_for(Duration::from_millis(300));
    net.add("n5", &["web"]);
    let new = generation(&net, "n5");
    assert!(new > old);
    let replaced = |net: &Network| {
        net.names().iter().all(|o| {
            let v = net
                .node(o)
                .unwrap()
                .membership
                .view(net.now(), net.wall_ms());
            v.members
                .iter()
                .any(|m| m.name == "n5" && m.generation == new && m.is_up())
        })
    };
    assert!(net.run_until(Duration::from_secs(10), replaced));
}

/// The members `observer`'s view holds up, counted from the view.
fn up_in_view(net: &Network, observer: &str) -> usize {
    let n = net.node(observer).unwrap();
    let view = n.membership.view(net.now(), net.wall_ms());
    view.members.iter().filter(|m| m.is_up()).count()
}

#[test]
fn members_up_are_those_held_less_the_dead_of_the_generation_held() {
    // `up_members` counts the dead instead of walking every member: it must
    // agree with the view, with a member dead, and once it restarted in a
    // new generation (whose record makes every node forget the old
    // generation's death).
    let mut net = mesh(6);
    let agree = |net: &Network| {
        net.names()
            .iter()
            .filter(|o| net.node(o).unwrap().running)
            .all(|o| net.node(o).unwrap().membership.up_members() == up_in_view(net, o))
    };
    assert!(agree(&net));
    assert_eq!(net.node("n1").unwrap().membership.up_members(), 6);
    net.kill("n6");
    assert!(net.run_until(Duration::from_secs(10), |n| all_see(n, "n6", "dead")));
    assert!(agree(&net));
    assert_eq!(net.node("n1").unwrap().membership.up_members(), 5);
    net.add("n6", &["web"]);
    assert!(net.run_until(Duration::from_secs(10), |n| {
        n.names()
            .iter()
            .all(|o| n.node(o).unwrap().membership.up_members() == 6)
    }));
    assert!(agree(&net));
}

/// Messages of `kind` ([`mesh_proto::membership::sim::kind_of`]) sent so far.
fn sent(net: &Network, kind: &str) -> u64 {
    net.stats.messages_by_kind.get(kind).copied().unwrap_or(0)
}

/// Flips `node`'s `web` to `health` and runs until every node sees it (or
/// fails the test): the pushes of records it took.
fn flip(net: &mut Network, node: &str, health: Health) -> u64 {
    let before = sent(net, "records");
    net.set_health(node, "web", health);
    let everywhere = |net: &Network| {
        net.names()
            .iter()
            .all(|o| service_health(net, o, node, "web") == Some(health))
    };
    assert!(
        net.run_until(Duration::from_secs(5), everywhere),
        "{node} {health:?}"
    );
    // Let late pushes and announcements land before counting.
    net.run_for(INTERVAL * 4);
    sent(net, "records") - before
}

#[test]
fn a_change_crosses_each_node_about_once_in_full_once_the_tree_settles() {
    // 40 nodes with up to 8 neighbours each: flooding would push a change
    // about 40 × 7 times. Along the push tree each node gets it in full about
    // once, and its other neighbours only announce it.
    let mut net = mesh(40);
    let n = net.names().len() as u64;
    for (i, node) in ["n3", "n9", "n17", "n25"].into_iter().enumerate() {
        let health = if i % 2 == 0 {
            Health::Unhealthy
        } else {
            Health::Healthy
        };
        flip(&mut net, node, health);
    }
    let announcements = sent(&net, "ihave");
    let pushes = flip(&mut net, "n30", Health::Unhealthy);
    assert!(pushes <= 2 * n, "{pushes} pushes for {n} nodes");
    assert!(sent(&net, "ihave") > announcements, "lazy links announce");
}

#[test]
fn a_change_whose_pushes_are_lost_is_grafted_from_an_announcer() {
    // Once the tree is settled, a third of all messages is lost: pushes along
    // the tree miss whole subtrees, whose nodes hear announcements from their
    // lazy neighbours, ask for the change (a graft) and put those links back.
    let mut net = mesh(40);
    for node in ["n3", "n9", "n17"] {
        flip(&mut net, node, Health::Unhealthy);
    }
    let grafts = sent(&net, "graft");
    net.set_loss(0.33);
    flip(&mut net, "n30", Health::Unhealthy);
    assert!(sent(&net, "graft") > grafts, "lost pushes are grafted");
}

/// Bytes sent per node per second by a quiet mesh of `n` nodes at the default
/// interval (250 ms), once every item has been pushed.
fn quiet_cost(n: usize) -> f64 {
    let mut net = Network::new(Timing::default(), 42);
    for i in 1..=n {
        net.add(&format!("n{i}"), &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(60), Network::converged));
    net.run_for(Duration::from_secs(10));
    let before = net.stats.bytes;
    net.run_for(Duration::from_secs(20));
    (net.stats.bytes - before) as f64 / n as f64 / 20.0
}

#[test]
fn a_quiet_mesh_costs_almost_nothing_whatever_its_size() {
    // A probe and its answer per round, and a range hash per second: a few
    // hundred bytes per node per second (chitchat needed ~20 KB/s at 100
    // nodes), the same at 10 and 60 nodes. Were items pushed again and again,
    // or digests sent in full, this would be kilobytes and grow with the mesh.
    let (small, large) = (quiet_cost(10), quiet_cost(60));
    assert!(small < 400.0, "{small} bytes/s per node at 10 nodes");
    assert!(large < 400.0, "{large} bytes/s per node at 60 nodes");
    assert!(large < small * 1.5, "{small} at 10 nodes, {large} at 60");
}

#[test]
fn gossip_connections_stay_bounded_whatever_the_mesh_size() {
    // Each node talks to its neighbours on 4 rings (at most 8): after the mesh
    // settles, no node exchanges messages with more, at 30 nodes as at 150.
    // Were peers picked at random, every node would talk to all of them.
    for n in [30, 150] {
        let mut net = Network::new(Timing::default(), 7);
        net.record_events = false;
        for i in 1..=n {
            net.add(&format!("n{i}"), &["web"]);
        }
        assert!(net.run_until(Duration::from_secs(60), Network::converged));
        net.run_for(Duration::from_secs(10));
        net.reset_connections();
        net.run_for(Duration::from_secs(60));
        let most = net.max_connections();
        // 8 neighbours, plus the seeds: about one exchange with a seed every
        // 16 s in the whole mesh, whatever its size (so a seed meets a peer or
        // two more in the 15 s an unused connection stays open).
        assert!(most <= 12, "{n} nodes: a node talked to {most} peers");
    }
}

#[test]
fn one_lost_ping_is_not_an_accusation() {
    // n2 is cut off for half a probe timeout: pings (or their answers) are
    // lost, but their retries, a probe timeout later, get through: nobody is
    // accused.
    let mut net = mesh(3);
    let before = accusations(&net);
    net.partition(&["n2"]);
    net.run_for(timing().probe_timeout / 2);
    net.heal();
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        accusations(&net),
        before,
        "a single loss became an accusation"
    );
    assert!(all_see(&net, "n2", "alive"));
}

#[test]
fn a_lost_ping_is_retried_twice_so_indirect_probes_stay_rare() {
    // At 10% loss a ping's round trip fails about 19% of the time. With one
    // ping at the retry, a probe went indirect after two failed round trips
    // (3.6% of probes, each asking three intermediaries: 0.11 `ping_req` per
    // probe); with two pings at the retry, after three (0.7%: 0.02 per probe).
    // Indirect probes are what widen a member's connections beyond its
    // neighbours, so they must stay that rare.
    let mut net = mesh(12);
    net.set_loss(0.10);
    net.run_for(Duration::from_secs(120));
    let count = |kind: &str| net.stats.messages_by_kind.get(kind).copied().unwrap_or(0);
    // Every probe sends one ping, and a retried one two more.
    let probes = count("ping") as f64 / (1.0 + 2.0 * 0.19);
    let per_probe = count("ping_req") as f64 / probes;
    assert!(probes > 2_000.0, "only {probes} probes");
    assert!(
        per_probe < 0.05,
        "{per_probe:.3} ping requests per probe ({} pings, {} ping requests)",
        count("ping"),
        count("ping_req")
    );
}

#[test]
fn a_member_accused_by_enough_others_is_not_accused_again() {
    // n12 is cut off: each of its observers' probes fails in turn. Once four
    // accusers agree (the shortest suspicion timeout), a fifth accusation would
    // change no timer and only spend its accuser's budget, which a node cut
    // off from most of the mesh needs for the members only it can accuse.
    let mut net = mesh(16);
    let observers = net
        .names()
        .into_iter()
        .filter(|n| {
            let node = net.node_mut(n).unwrap();
            node.membership
                .neighbour_names()
                .contains(&"n12".to_string())
        })
        .count();
    assert!(observers > 5, "n12 has only {observers} observers");
    net.partition(&["n12"]);
    assert!(net.run_until(Duration::from_secs(20), |net| all_see(net, "n12", "dead")));
    let accusers: std::collections::BTreeSet<String> = net
        .names()
        .iter()
        .flat_map(|n| net.node(n).unwrap().events.clone())
        .filter_map(|(_, e)| match e {
            Event::Accused { target, accuser } if target == "n12" => Some(accuser),
            _ => None,
        })
        .collect();
    let needed = timing().confirmations_for_min as usize + 1;
    assert!(
        accusers.len() <= needed,
        "{} of {observers} observers accused n12: {accusers:?}",
        accusers.len()
    );
}

#[test]
fn a_broken_path_between_two_neighbours_is_not_an_accusation() {
    // n1 and n2 cannot reach each other at all, while both reach everyone
    // else: their probes of each other fail twice, then other neighbours ping
    // for them and relay the target's signed answer. Nobody is accused.
    let mut net = mesh(6);
    let before = accusations(&net);
    net.cut_link("n1", "n2");
    net.run_for(Duration::from_secs(20));
    assert_eq!(
        accusations(&net),
        before,
        "a broken path became an accusation"
    );
    assert!(all_see(&net, "n1", "alive") && all_see(&net, "n2", "alive"));
    assert!(
        net.stats
            .bytes_by_kind
            .get("indirect_ack")
            .copied()
            .unwrap_or(0)
            > 0,
        "no indirect probe was answered"
    );
}

#[test]
fn a_dead_node_is_still_accused_after_its_indirect_probes_fail() {
    let mut net = mesh(5);
    net.kill("n5");
    let dead = net.run_until(Duration::from_secs(20), |net| all_see(net, "n5", "dead"));
    assert!(dead, "indirect probes kept a dead node alive");
    assert!(
        net.stats
            .bytes_by_kind
            .get("ping_req")
            .copied()
            .unwrap_or(0)
            > 0
    );
}

fn indirect_ack(net: &Network, signer: &str, target: &str, requester: &str) -> IndirectAck {
    let mut ack = IndirectAck {
        nonce: 7,
        requester: requester.into(),
        target: target.into(),
        signature: vec![],
    };
    let c = net.crypto_of(signer);
    ack.signature = c.sign(&indirect_ack_payload(net.cluster(), &ack)).unwrap();
    ack
}

#[test]
fn an_intermediary_cannot_answer_for_the_target() {
    // evil relays an "answer" of n2 it signed itself: refused as a bad
    // signature, and evil is quarantined. n2's own answer to a probe n1 never
    // made changes nothing and is no refusal.
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let forged = indirect_ack(&net, "evil", "n2", "n1");
    let m = msg(&net, Body::IndirectAck(forged));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::BadSignature), 1);
    let genuine = indirect_ack(&net, "n2", "n2", "n1");
    let m = msg(&net, Body::IndirectAck(genuine));
    net.inject("n3", addr(&net, "n3"), "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::BadSignature), 1);
}

#[test]
fn ping_requests_are_refused_for_unknown_members_and_beyond_the_caps() {
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let ask = |net: &mut Network, target: &str, nonce: u64| {
        let req = PingReq {
            nonce,
            target: target.into(),
        };
        let m = msg(net, Body::PingReq(req));
        net.inject("evil", from, "n1", &m);
    };
    let pings_before = net.stats.bytes_by_kind.get("indirect_ping").copied();
    ask(&mut net, "nobody", 1);
    ask(&mut net, "n1", 2);
    assert_eq!(refusals(&net, "n1", Refusal::IndirectProbeRefused), 2);
    assert_eq!(
        net.stats.bytes_by_kind.get("indirect_ping").copied(),
        pings_before,
        "n1 pinged on a refused request"
    );
    // Two pending relays per requester; the third waits for one to end.
    for nonce in 10..13 {
        ask(&mut net, "n2", nonce);
    }
    assert_eq!(refusals(&net, "n1", Refusal::IndirectProbeRefused), 3);
}

fn accusations(net: &Network) -> usize {
    net.names()
        .iter()
        .map(|n| {
            net.node(n)
                .unwrap()
                .events
                .iter()
                .filter(|(_, e)| matches!(e, Event::Accused { .. }))
                .count()
        })
        .sum()
}

#[test]
fn a_node_joining_a_large_mesh_pulls_the_whole_state_in_a_few_exchanges() {
    // 400 members' records are more than one anti-entropy answer's worth of
    // messages: the joiner gets them in bulk answers, and holds exactly what an
    // old member holds within a couple of seconds.
    let mut net = Network::new(Timing::default(), 3);
    net.record_events = false;
    for i in 1..=400 {
        net.add(&format!("n{i:03}"), &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(60), Network::converged));
    let seeds = vec![addr(&net, "n007"), addr(&net, "n211")];
    net.add_with_seeds("joiner", &["web"], seeds);
    let caught_up = net.run_until(Duration::from_secs(2), |net| {
        let j = net.node("joiner").unwrap().membership.state_summary();
        let old = net.node("n100").unwrap().membership.state_summary();
        j == old && j.0 == 401
    });
    assert!(caught_up, "the joiner did not catch up in 2 s");
}

#[test]
fn a_settled_network_starts_converged_and_has_nothing_to_reconcile() {
    let mut net = Network::new(Timing::default(), 5);
    for i in 1..=30 {
        net.add(&format!("n{i:02}"), &["web"]);
    }
    assert_eq!(net.settle(), 30 * 29, "each node takes every other");
    assert_eq!(net.settle(), 0, "origins held are left as they are");
    assert!(
        net.converged(),
        "every node sees every other before a message"
    );
    assert_eq!(net.stats.messages, 0);
    assert_eq!(net.distinct_origins_held(), 30, "one copy of each origin");
    let summary = net.node("n01").unwrap().membership.state_summary();
    for n in net.names() {
        assert_eq!(net.node(&n).unwrap().membership.state_summary(), summary);
    }
    // Each node pushes its own records once, as any node that starts does;
    // then nothing but probes and range hashes, which all match.
    let count =
        |net: &Network, kind: &str| net.stats.messages_by_kind.get(kind).copied().unwrap_or(0);
    net.run_for(Duration::from_secs(5));
    let records = count(&net, "records");
    net.run_for(Duration::from_secs(5));
    assert!(net.converged());
    assert!(count(&net, "sync_hash") > 0, "the nodes hash ranges");
    assert_eq!(count(&net, "sync"), 0, "no range hash differed");
    assert_eq!(count(&net, "records"), records, "no record to send");
    assert_eq!(count(&net, "suspicions"), 0);
}

#[test]
fn a_joiner_pulls_more_than_a_digest_holds_in_consecutive_rounds() {
    // 1,400 members with long names: more than two digests list (about 650
    // names each), so the joiner's own ranges multiply as it learns. It hashes
    // a range again while it differs, and exchanges every round until its walk
    // over the ranges ends. (Back to one exchange every `sync_every` rounds
    // once a range matched, it took longer and chose its neighbours in a
    // fraction of the mesh; a joiner of 10,000 members took 30 s.)
    let name = |i: usize| format!("a-member-of-a-large-mesh-with-a-long-name-{i:04}");
    let mut net = Network::new(Timing::default(), 9);
    net.record_events = false;
    for i in 0..1400 {
        net.add(&name(i), &["web"]);
    }
    net.settle();
    let seeds = vec![addr(&net, &name(7)), addr(&net, &name(911))];
    net.add_with_seeds("joiner", &["web"], seeds);
    let t0 = net.elapsed();
    let reference = name(100);
    let caught_up = net.run_until(Duration::from_secs(3), |net| {
        let j = net.node("joiner").unwrap().membership.state_summary();
        j == net.node(&reference).unwrap().membership.state_summary() && j.0 == 1401
    });
    assert!(caught_up, "the joiner did not catch up in 3 s");
    let took = net.elapsed() - t0;
    eprintln!("the joiner caught up in {took:?}");
    assert!(
        took <= Duration::from_millis(1000),
        "the joiner took {took:?} of simulated time for 1,400 members"
    );
    // It chose its neighbours once it held the membership, not in the first
    // fraction of it: they are the ones it keeps.
    net.run_for(Duration::from_secs(2));
    let first = net.node_mut("joiner").unwrap().membership.neighbour_names();
    assert!(!first.is_empty());
    // (A first choice made too early is replaced at the first refresh, 16
    // rounds after the joiner started.)
    net.run_for(Duration::from_secs(3));
    let later = net.node_mut("joiner").unwrap().membership.neighbour_names();
    assert_eq!(
        first, later,
        "the joiner replaced neighbours chosen too early"
    );
}

/// The range of each anti-entropy round the watched node started since the
/// last call's `seen` messages (a round may hash it to two peers: one entry).
fn hashed_ranges(net: &Network, seen: &mut usize) -> Vec<NameRange> {
    let sent = net.sent_by_watched();
    let mut rounds: Vec<(Duration, NameRange)> = Vec::new();
    for (at, body) in &sent[*seen..] {
        if let Body::SyncHash(h) = body
            && rounds.last().is_none_or(|(t, _)| t != at)
        {
            rounds.push((*at, h.range.clone()));
        }
    }
    *seen = sent.len();
    rounds.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn a_range_found_different_is_hashed_again_from_its_start_four_rounds_at_most() {
    // A settled mesh of 600 members with long names: a node's walk over them
    // takes several ranges. Each time a peer's digest says the range a node
    // hashed last differs, the node's next round hashes it again from the same
    // start (where a joiner's pull goes on, rather than in ranges it holds);
    // a range that differs in every round holds the walk up four rounds at
    // most. (The end-to-end effect shows only at 10,000 members: a joiner
    // took 30 s without it, 5 s with it.)
    let name = |i: usize| {
        format!(
            "{}n{i:04}",
            "a-member-of-a-large-mesh-with-long-names.".repeat(4)
        )
    };
    let mut net = Network::new(timing(), 11);
    net.record_events = false;
    for i in 0..600 {
        net.add(&name(i), &["web"]);
    }
    net.settle();
    let (node, peer) = (name(0), name(1));
    net.watch(&node);
    let mut seen = 0;
    // Unanswered (every hash matches), the walk moves on each time.
    net.run_for(Duration::from_secs(3));
    let walk = hashed_ranges(&net, &mut seen);
    assert!(walk.len() >= 4, "{walk:?}");
    assert!(
        walk.windows(2).all(|w| w[0].from != w[1].from),
        "a range was hashed twice in a row although it matched: {walk:?}"
    );
    // A peer's digest of the last range hashed, differing, after each round.
    let mut hashed = walk.last().cloned().unwrap();
    let mut rounds = vec![hashed.clone()];
    for _ in 0..6 {
        let differing = Digest {
            range: hashed.clone(),
            origins: vec![],
            suspicions: vec![],
            documents: vec![],
            reply: true,
        };
        let from = addr(&net, &peer);
        net.inject(&peer, from, &node, &msg(&net, Body::Sync(differing)));
        let started = net.run_until(Duration::from_secs(2), |net| {
            net.sent_by_watched()[seen..]
                .iter()
                .any(|(_, b)| matches!(b, Body::SyncHash(_)))
        });
        assert!(started, "no anti-entropy round within 2 s");
        net.run_for(Duration::from_millis(1));
        hashed = hashed_ranges(&net, &mut seen).remove(0);
        rounds.push(hashed.clone());
    }
    let starts: Vec<&str> = rounds.iter().map(|r| r.from.as_str()).collect();
    let first = starts[0];
    assert_eq!(
        &starts[..5],
        &[first; 5],
        "the range was not hashed again four times: {rounds:?}"
    );
    assert_ne!(
        starts[5], first,
        "a range differing every round held the walk up: {rounds:?}"
    );
}

// ---------------------------------------------------------------------------
// A hostile member with a valid certificate ("evil", one of the mesh)
// ---------------------------------------------------------------------------

fn with_evil() -> Network {
    let mut net = mesh(4);
    net.add("evil", &["web"]);
    assert!(net.run_until(Duration::from_secs(10), Network::converged));
    net
}

#[test]
fn a_forged_record_for_another_node_is_refused_and_its_sender_quarantined() {
    let mut net = with_evil();
    let target_version = max_version(&net, "n1", "n2");
    // n2's web endpoint, unhealthy, signed with evil's own key.
    let forged = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "n2".into(),
            generation: generation(&net, "n2"),
            version: target_version + 1000,
            signed_at_ms: net.wall_ms(),
            key: "svc:web".into(),
            value: service_record("web", Health::Unhealthy),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    for to in ["n1", "n2", "n3"] {
        let m = msg(&net, items(vec![forged.clone()], vec![]));
        net.inject("evil", from, to, &m);
    }
    assert_eq!(refusals(&net, "n1", Refusal::BadSignature), 1);
    assert_eq!(
        refusals(&net, "n2", Refusal::AboutSelf),
        1,
        "n2 never takes records about itself"
    );
    assert!(
        net.node("n1")
            .unwrap()
            .membership
            .is_quarantined("evil", net.now())
    );
    net.run_for(Duration::from_secs(3));
    for o in ["n1", "n2", "n3", "n4"] {
        assert_eq!(
            service_health(&net, o, "n2", "web"),
            Some(Health::Healthy),
            "{o}"
        );
    }
    // Gossip still works: a health change propagates.
    net.set_health("n4", "web", Health::Unhealthy);
    assert!(net.run_until(Duration::from_secs(5), |n| {
        ["n1", "n2", "n3"]
            .iter()
            .all(|o| service_health(n, o, "n4", "web") == Some(Health::Unhealthy))
    }));
}

#[test]
fn a_phantom_generation_cannot_be_started_without_the_victims_key() {
    let mut net = with_evil();
    let phantom = generation(&net, "n2") + 1;
    let ca = net.crypto_of("n2"); // only to copy n2's public certificate
    let n2_cert = ca.issue_node("n2", &["web"], u64::MAX);
    let cert = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "n2".into(),
            generation: phantom,
            version: 1,
            signed_at_ms: net.wall_ms(),
            key: "cert".into(),
            value: encode(&NodeCertificate { der: n2_cert }).unwrap(),
            signature: vec![],
        },
    );
    let node = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "n2".into(),
            generation: phantom,
            version: 2,
            signed_at_ms: net.wall_ms(),
            key: "node".into(),
            value: node_record("n2", "10.9.9.9:1".parse().unwrap(), phantom),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![cert, node], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::BadSignature), 1);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.health_seen("n1", "n2"), Some("alive"));
    let view = net
        .node("n1")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms());
    let n2 = view.members.iter().find(|m| m.name == "n2").unwrap();
    assert_eq!(n2.generation, generation(&net, "n2"));
    assert_eq!(n2.addr(), Some(addr(&net, "n2")));
}

#[test]
fn a_member_cannot_claim_another_name_with_its_own_certificate() {
    let mut net = with_evil();
    let evil = net.crypto_of("evil");
    let evil_cert = evil.issue_node("evil", &["web"], u64::MAX);
    let r = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "ghost".into(),
            generation: net.wall_ms(),
            version: 1,
            signed_at_ms: net.wall_ms(),
            key: "cert".into(),
            value: encode(&NodeCertificate { der: evil_cert }).unwrap(),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![r], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::CertificateMismatch), 1);
    assert_eq!(net.health_seen("n1", "ghost"), None, "no ghost ids");
}

#[test]
fn an_accusation_of_a_live_node_is_refuted_and_it_never_dies() {
    let mut net = with_evil();
    let from = addr(&net, "evil");
    for round in 0..3 {
        let s = accuse(&net, "evil", "n2", max_version(&net, "n1", "n2"));
        for to in ["n1", "n3", "n4"] {
            let m = msg(&net, items(vec![], vec![s.clone()]));
            net.inject("evil", from, to, &m);
        }
        // Never dead, whatever the accusation's timing.
        for _ in 0..40 {
            net.run_for(Duration::from_millis(100));
            for o in ["n1", "n3", "n4"] {
                assert_ne!(net.health_seen(o, "n2"), Some("dead"), "round {round}: {o}");
            }
        }
    }
    assert!(
        net.node("n2")
            .unwrap()
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::Refuted { accuser } if accuser == "evil"))
    );
}

fn accuse(net: &Network, accuser: &str, target: &str, version: u64) -> Suspicion {
    let mut s = Suspicion {
        accuser: accuser.into(),
        accuser_generation: generation(net, accuser),
        target: target.into(),
        target_generation: generation(net, target),
        target_version: version,
        issued_at_ms: net.wall_ms(),
        signature: vec![],
    };
    s.signature = net
        .crypto_of(accuser)
        .sign(&suspicion_payload(net.cluster(), &s))
        .unwrap();
    s
}

#[test]
fn an_accusation_naming_a_version_never_signed_is_refused() {
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let s = accuse(&net, "evil", "n2", u64::MAX);
    let m = msg(&net, items(vec![], vec![s]));
    net.inject("evil", from, "n1", &m);
    net.inject("evil", from, "n2", &m);
    assert_eq!(refusals(&net, "n1", Refusal::UnknownVersion), 1);
    assert_eq!(refusals(&net, "n2", Refusal::UnknownVersion), 1);
}

#[test]
fn an_accusation_in_another_members_name_is_refused() {
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let mut s = accuse(&net, "evil", "n2", max_version(&net, "n1", "n2"));
    s.accuser = "n3".into();
    s.accuser_generation = generation(&net, "n3");
    let m = msg(&net, items(vec![], vec![s]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::BadSignature), 1);
    assert_eq!(net.health_seen("n1", "n2"), Some("alive"));
}

#[test]
fn an_accuser_flooding_accusations_is_held_to_its_budget() {
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let mut sent = 0;
    for _ in 0..30 {
        for target in ["n1", "n2", "n3", "n4"] {
            if target == "n1" {
                continue;
            }
            let s = accuse(&net, "evil", target, max_version(&net, "n1", target));
            let m = msg(&net, items(vec![], vec![s]));
            net.inject("evil", from, "n1", &m);
            sent += 1;
        }
        net.run_for(Duration::from_millis(50));
    }
    assert!(refusals(&net, "n1", Refusal::AccuserRateLimited) > sent / 2);
    net.run_for(Duration::from_secs(5));
    assert!(net.converged(), "nobody died of it");
}

#[test]
fn a_dead_node_cannot_be_kept_alive_by_replaying_its_records() {
    let mut net = with_evil();
    // evil keeps a copy of n3's records while n3 lives (it is a member: it gets
    // them like everyone), then n3 dies.
    let evil_view = net
        .node("evil")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms());
    assert!(evil_view.members.iter().any(|m| m.name == "n3"));
    net.kill("n3");
    assert!(net.run_until(Duration::from_secs(10), |n| all_see(n, "n3", "dead")));
    // Replaying what n3 signed changes nothing: nothing newer than what everyone
    // holds, and evil cannot sign for n3.
    let forged = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "n3".into(),
            generation: generation(&net, "n3"),
            version: max_version(&net, "n1", "n3") + 1,
            signed_at_ms: net.wall_ms(),
            key: "node".into(),
            value: node_record("n3", addr(&net, "n3"), generation(&net, "n3")),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![forged], vec![]));
    net.inject("evil", from, "n1", &m);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.health_seen("n1", "n3"), Some("dead"));
}

/// Four nodes and evil, converged, with a clock skew allowance of 2 s.
fn with_evil_and_a_skew_of_two_seconds() -> Network {
    let mut t = timing();
    t.max_clock_skew = Duration::from_secs(2);
    let mut net = Network::new(t, 7);
    for n in ["n1", "n2", "n3", "n4", "evil"] {
        net.add(n, &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(10), Network::converged));
    net
}

/// `origin`'s healthy `web` record at `version`, signed at `signed_at_ms` with
/// its own key.
fn web_signed(net: &Network, origin: &str, version: u64, signed_at_ms: u64) -> SignedRecord {
    signed_by(
        net,
        origin,
        SignedRecord {
            origin: origin.into(),
            generation: generation(net, origin),
            version,
            signed_at_ms,
            key: "svc:web".into(),
            value: service_record("web", Health::Healthy),
            signature: vec![],
        },
    )
}

#[test]
fn a_withheld_old_record_does_not_refute_a_recent_accusation() {
    let mut net = with_evil_and_a_skew_of_two_seconds();
    // A record n3 genuinely signed ten seconds ago that evil kept to itself
    // (modelled by signing with n3's key, back-dated).
    let v = max_version(&net, "n1", "n3") + 1;
    net.kill("n3");
    assert!(net.run_until(Duration::from_secs(10), |n| all_see(n, "n3", "dead")));
    let old = web_signed(&net, "n3", v, net.wall_ms() - 10_000);
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![old], vec![]));
    net.inject("evil", from, "n1", &m);
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.health_seen("n1", "n3"),
        Some("dead"),
        "too old to refute"
    );
    // The control: a record n3 signs now (it came back) does refute.
    let fresh = web_signed(&net, "n3", v + 1, net.wall_ms());
    let m = msg(&net, items(vec![fresh], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(net.health_seen("n1", "n3"), Some("alive"));
}

#[test]
fn records_from_the_future_are_refused() {
    let mut net = with_evil();
    let far = net.wall_ms() + 365 * 24 * 3600 * 1000;
    let r = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "evil".into(),
            generation: far,
            version: 1,
            signed_at_ms: far,
            key: "cert".into(),
            value: encode(&NodeCertificate {
                der: net.crypto_of("evil").issue_node("evil", &[], u64::MAX),
            })
            .unwrap(),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![r], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::FromTheFuture), 1);
    // evil's real generation is untouched.
    let view = net
        .node("n1")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms());
    let evil = view.members.iter().find(|m| m.name == "evil").unwrap();
    assert_eq!(evil.generation, generation(&net, "evil"));
}

#[test]
fn a_member_may_only_lie_about_itself_within_its_certificate() {
    let mut net = with_evil();
    // evil publishes a service its certificate does not allow.
    let evil_gen = generation(&net, "evil");
    let v = max_version(&net, "n1", "evil") + 1;
    let r = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "evil".into(),
            generation: evil_gen,
            version: v,
            signed_at_ms: net.wall_ms(),
            key: "svc:payments".into(),
            value: service_record("payments", Health::Healthy),
            signature: vec![],
        },
    );
    let from = addr(&net, "evil");
    let m = msg(&net, items(vec![r], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::ServiceNotInCertificate), 1);
    // A node record naming another node is refused too.
    let lie = signed_by(
        &net,
        "evil",
        SignedRecord {
            origin: "evil".into(),
            generation: evil_gen,
            version: v + 1,
            signed_at_ms: net.wall_ms(),
            key: "node".into(),
            value: encode(&NodeRecord {
                name: "n2".into(),
                zone: "zone-a".into(),
                cluster: "sim".into(),
                quic_addr: addr(&net, "n2"),
                version: "x".into(),
                started_at_ms: evil_gen,
                state: NodeState::Serving,
            })
            .unwrap(),
            signature: vec![],
        },
    );
    let m = msg(&net, items(vec![lie], vec![]));
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::InvalidValue), 1);
}

#[test]
fn garbage_and_other_clusters_change_nothing() {
    let mut net = with_evil();
    let before = net
        .node("n1")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms());
    let from = addr(&net, "evil");
    let mut other = msg(&net, Body::Ping(1));
    other.cluster = "elsewhere".into();
    net.inject("evil", from, "n1", &other);
    assert_eq!(refusals(&net, "n1", Refusal::WrongCluster), 1);
    assert!(
        net.node("n1").unwrap().events.iter().any(|(_, e)| matches!(
            e,
            Event::OtherCluster { sender, cluster } if sender == "evil" && cluster == "elsewhere"
        )),
        "the other cluster is named, for the operator"
    );
    let after = net
        .node("n1")
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms());
    assert_eq!(before.members, after.members);
}

#[test]
fn anti_entropy_requests_from_one_peer_are_answered_at_most_twice_per_half_round() {
    use mesh_proto::membership::wire::{NameRange, RangeHash};
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let hash = Body::SyncHash(RangeHash {
        range: NameRange::all(),
        count: 0,
        origins: 1,
        suspicions: 0,
        documents: 0,
    });
    let sent = net.stats.messages;
    for _ in 0..50 {
        let m = msg(&net, hash.clone());
        net.inject("evil", from, "n1", &m);
    }
    // Two digests answered; 48 refused, each counted, none costing a digest.
    assert_eq!(refusals(&net, "n1", Refusal::SyncRateLimited), 48);
    assert_eq!(net.stats.messages - sent, 2);
    // Spaced by more than half a round, requests are answered again (evil's own,
    // honest, exchanges with n1 may take one of the slots).
    for _ in 0..3 {
        net.run_for(Duration::from_millis(60));
        let m = msg(&net, hash.clone());
        net.inject("evil", from, "n1", &m);
    }
    assert!(refusals(&net, "n1", Refusal::SyncRateLimited) <= 49);
}

/// A digest of the whole name range holding `origins` and no accusation,
/// answering nothing asked (`reply: false`).
fn unasked_digest(origins: Vec<OriginSummary>) -> Body {
    Body::Sync(Digest {
        range: NameRange::all(),
        origins,
        suspicions: vec![],
        documents: vec![],
        reply: false,
    })
}

#[test]
fn digests_that_answer_nothing_asked_are_answered_at_most_four_times_per_half_round() {
    // A digest asking for nothing back is how a peer answers this node's own,
    // yet anyone can send one unasked, and each costs an answer (up to 256 KB
    // of records, and possibly re-accusations). Answers to this node's digests
    // arrive a round trip after its questions, so two windows' worth (four) are
    // let through per half round.
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let digest = unasked_digest(vec![]);
    let sent = net.stats.messages;
    for _ in 0..20 {
        let m = msg(&net, digest.clone());
        net.inject("evil", from, "n1", &m);
    }
    assert_eq!(refusals(&net, "n1", Refusal::SyncRateLimited), 16);
    assert!(
        net.stats.messages - sent <= 4 * 2,
        "only four digests were answered"
    );
    // Honest exchanges never hit the limit (see
    // `honest_members_never_trip_the_anti_entropy_rate_limit`).
    net.run_for(Duration::from_secs(10));
    assert!(net.converged());
    assert_eq!(refusals(&net, "n1", Refusal::SyncRateLimited), 16);
}

#[test]
fn a_reaccusation_this_node_cannot_hold_still_costs_it_a_token() {
    // n1 may hold two open accusations. Cut off, it is handed evil's
    // accusations of n2 and n3 (its table is now full), holds them dead, and
    // waits until those accusations are too old to hand on. evil then sends
    // unasked digests holding n2 and n3 alive: for each, n1 would accuse them
    // again, but can hold no accusation of its own. Each such signature must
    // still cost n1 a token, or a peer's digests make it sign without limit.
    let mut net = Network::new(timing(), 42);
    net.set_limits(Limits {
        max_suspicions: 2,
        ..Limits::default()
    });
    for n in ["n1", "n2", "n3", "n4", "evil"] {
        net.add(n, &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(30), Network::converged));
    net.partition(&["n1"]);
    let from = addr(&net, "evil");
    let accused = ["n2", "n3"];
    let accusations = accused
        .iter()
        .map(|t| accuse(&net, "evil", t, max_version(&net, "n1", t)))
        .collect();
    net.inject("evil", from, "n1", &msg(&net, items(vec![], accusations)));
    net.run_for(timing().suspicion_ttl() + Duration::from_secs(1));
    for t in accused {
        assert_eq!(net.health_seen("n1", t), Some("dead"));
    }
    assert_eq!(net.health_seen("n1", "evil"), Some("alive"));
    let origins = accused
        .iter()
        .map(|t| OriginSummary {
            name: t.to_string(),
            generation: generation(&net, t),
            max_version: max_version(&net, "n1", t),
            fingerprint: 0,
        })
        .collect();
    let digest = unasked_digest(origins);
    let crypto = net.node("n1").unwrap().membership.crypto().clone();
    let signed = crypto.accusations_signed();
    for _ in 0..4 {
        let m = msg(&net, digest.clone());
        net.inject("evil", from, "n1", &m);
    }
    // Four digests answered (none refused by the rate limit, so without the
    // charge n1 would sign two for each, eight), two accusations asked by
    // each: a full budget of 8 tokens, half kept for n1's own probes, pays
    // for four signatures, none of them held.
    assert_eq!(refusals(&net, "n1", Refusal::SyncRateLimited), 0);
    assert_eq!(crypto.accusations_signed() - signed, 4);
    let n1 = net.node("n1").unwrap();
    let reaccused = n1
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Reaccused { .. }));
    assert!(!reaccused, "none of them was held");
    assert_eq!(net.health_seen("n1", "n2"), Some("dead"));
}

#[test]
fn a_later_copy_of_an_accusation_does_not_outlast_the_refutation_of_the_first() {
    // evil accuses n2; n2 refutes; before the refutation reaches n1, evil hands
    // n1 the same accusation issued later, dated as far ahead as the clock skew
    // allows. The later copy replaces the one n1 holds (a refresh: its timer
    // keeps running from the first), but what refutes it is still the first
    // copy's date, so n2's refutation clears it. Were the bar the later date,
    // n2 would have to refute again before a timer that started with the first
    // copy ran out, and would not even learn it had to (a refresh is not relayed).
    let mut net = with_evil_and_a_skew_of_two_seconds();
    // n1 hears only what the test hands it.
    net.partition(&["n1"]);
    let from = addr(&net, "evil");
    let v = max_version(&net, "n1", "n2");
    let first = accuse(&net, "evil", "n2", v);
    net.inject("evil", from, "n1", &msg(&net, items(vec![], vec![first])));
    assert_eq!(net.health_seen("n1", "n2"), Some("suspect"));
    let refutation = web_signed(&net, "n2", v + 1, net.wall_ms());
    net.run_for(Duration::from_millis(10));
    let mut later = accuse(&net, "evil", "n2", v);
    later.issued_at_ms = net.wall_ms() + 2_000;
    later.signature = net
        .crypto_of("evil")
        .sign(&suspicion_payload(net.cluster(), &later))
        .unwrap();
    net.inject("evil", from, "n1", &msg(&net, items(vec![], vec![later])));
    assert_eq!(net.health_seen("n1", "n2"), Some("suspect"));
    net.inject(
        "evil",
        from,
        "n1",
        &msg(&net, items(vec![refutation], vec![])),
    );
    assert_eq!(
        net.health_seen("n1", "n2"),
        Some("alive"),
        "the refutation of the first copy clears the later one"
    );
}

#[test]
fn grafts_are_answered_with_held_records_only_and_at_most_twice_per_half_round() {
    use mesh_proto::membership::wire::Announced;
    let mut net = with_evil();
    let from = addr(&net, "evil");
    let want = |origin: &str, generation: u64| Announced {
        origin: origin.into(),
        generation,
        version: 0,
    };
    // A graft naming members n1 holds and one it never heard of.
    let graft = Body::Graft(vec![
        want("n2", generation(&net, "n2")),
        want("n3", generation(&net, "n3")),
        want("ghost", 1),
    ]);
    let (messages, record_msgs) = (net.stats.messages, sent(&net, "records"));
    for _ in 0..20 {
        let m = msg(&net, graft.clone());
        net.inject("evil", from, "n1", &m);
    }
    // Two answered (each one message of n2's and n3's records), 18 refused and
    // counted; nothing about the unknown member.
    assert_eq!(refusals(&net, "n1", Refusal::GraftRateLimited), 18);
    assert_eq!(net.stats.messages - messages, 2);
    assert_eq!(sent(&net, "records") - record_msgs, 2);
    // Announcements of what n1 lacks make it wait, then graft from the
    // announcer; announcements of what it holds change nothing.
    let grafts = sent(&net, "graft");
    let ihave = Body::IHave(vec![
        Announced {
            origin: "n2".into(),
            generation: generation(&net, "n2"),
            version: 1,
        },
        want("ghost", 1),
    ]);
    let m = msg(&net, ihave);
    net.inject("evil", from, "n1", &m);
    net.run_for(INTERVAL);
    assert_eq!(
        sent(&net, "graft") - grafts,
        1,
        "one graft, for the ghost only"
    );
}

#[test]
fn route_documents_are_taken_only_as_an_operator_signed_them() {
    let mut net = with_evil();
    let ca = net.crypto_of("op");
    let now = net.wall_ms();
    let spec = RouteSpec::tombstone("shop", now);
    let body = spec.to_body();
    let good = RouteDocument {
        name: "shop".into(),
        signature: ca.sign_as_operator("alice", &body),
        signer_cert_der: ca.issue_operator("alice", now - 1000, now + 3_600_000),
        body,
    };
    let from = addr(&net, "evil");
    // A body from the future by more than the skew.
    let future = RouteSpec::tombstone("shop", now + 10 * 24 * 3600 * 1000).to_body();
    let pinned = RouteDocument {
        name: "shop".into(),
        signature: ca.sign_as_operator("alice", &future),
        signer_cert_der: good.signer_cert_der.clone(),
        body: future,
    };
    let m = msg(
        &net,
        Body::Items(Items {
            documents: vec![pinned],
            ..Items::default()
        }),
    );
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::FromTheFuture), 1);
    // A body signed by evil's node key, not an operator's.
    let mut forged = good.clone();
    forged.signature = net.crypto_of("evil").sign(&forged.body).unwrap();
    let m = msg(
        &net,
        Body::Items(Items {
            documents: vec![forged],
            ..Items::default()
        }),
    );
    net.inject("evil", from, "n1", &m);
    assert_eq!(refusals(&net, "n1", Refusal::DocumentSignature), 1);
    // The genuine one spreads.
    let m = msg(
        &net,
        Body::Items(Items {
            documents: vec![good],
            ..Items::default()
        }),
    );
    net.inject("evil", from, "n1", &m);
    assert!(net.run_until(Duration::from_secs(5), |n| {
        n.names().iter().all(|o| {
            n.node(o)
                .unwrap()
                .membership
                .view(n.now(), n.wall_ms())
                .documents
                .iter()
                .any(|d| d.document.name == "shop")
        })
    }));
}

/// A revocation list document signed with `ca`'s CA key.
fn revocation_document(
    ca: &mesh_proto::membership::toy::ToyCrypto,
    list: &RevocationList,
    not_after_ms: u64,
) -> RouteDocument {
    let body = list.to_body();
    RouteDocument {
        name: REVOCATIONS_DOCUMENT.into(),
        signature: ca.sign_as_ca(&body),
        signer_cert_der: ca.ca_certificate(not_after_ms),
        body,
    }
}

fn revocations_held(net: &Network, node: &str) -> Option<u64> {
    net.node(node)
        .unwrap()
        .membership
        .view(net.now(), net.wall_ms())
        .revocations
        .map(|r| r.list.version)
}

#[test]
fn a_revocation_list_is_taken_only_as_the_ca_signed_it_and_the_highest_version_wins() {
    let mut net = with_evil();
    let ca = net.crypto_of("op");
    let now = net.wall_ms();
    let list = |version| RevocationList {
        trust_domain: "shoal.test".into(),
        version,
        issued_at_ms: now,
        entries: vec![Revocation::of_node("evil", now, "key_compromise", now)],
    };
    let from = addr(&net, "evil");
    let send = |net: &mut Network, doc: RouteDocument| {
        let m = msg(
            net,
            Body::Items(Items {
                documents: vec![doc],
                ..Items::default()
            }),
        );
        net.inject("evil", from, "n1", &m);
    };
    // Signed by an operator, not the CA: operators cannot revoke.
    let mut by_operator = revocation_document(&ca, &list(2), now + 3_600_000);
    by_operator.signer_cert_der = ca.issue_operator("alice", now - 1000, now + 3_600_000);
    by_operator.signature = ca.sign_as_operator("alice", &by_operator.body);
    send(&mut net, by_operator);
    assert_eq!(refusals(&net, "n1", Refusal::DocumentSignature), 1);
    // A body changed after the CA signed it.
    let mut tampered = revocation_document(&ca, &list(2), now + 3_600_000);
    tampered.body = list(3).to_body();
    send(&mut net, tampered);
    assert_eq!(refusals(&net, "n1", Refusal::DocumentSignature), 2);
    assert_eq!(revocations_held(&net, "n1"), None);

    // The genuine version 2 spreads to every node.
    send(
        &mut net,
        revocation_document(&ca, &list(2), now + 3_600_000),
    );
    assert!(net.run_until(Duration::from_secs(5), |n| {
        n.names().iter().all(|o| revocations_held(n, o) == Some(2))
    }));
    // An older version replayed changes nothing; a newer one replaces it everywhere.
    send(
        &mut net,
        revocation_document(&ca, &list(1), now + 3_600_000),
    );
    assert_eq!(revocations_held(&net, "n1"), Some(2));
    send(
        &mut net,
        revocation_document(&ca, &list(5), now + 3_600_000),
    );
    assert!(net.run_until(Duration::from_secs(5), |n| {
        n.names().iter().all(|o| revocations_held(n, o) == Some(5))
    }));
    // Two copies of one list (another CA certificate, so another document)
    // reach two nodes at once: one copy wins, and every node ends up holding
    // that very document (their digests agree, nothing is re-sent forever).
    send(
        &mut net,
        revocation_document(&ca, &list(6), now + 3_600_000),
    );
    let other_copy = revocation_document(&ca, &list(6), now + 7_200_000);
    let m = msg(
        &net,
        Body::Items(Items {
            documents: vec![other_copy],
            ..Items::default()
        }),
    );
    net.inject("evil", from, "n2", &m);
    let held_id = |n: &Network, o: &str| {
        n.node(o)
            .unwrap()
            .membership
            .view(n.now(), n.wall_ms())
            .revocations
            .map(|r| r.id)
    };
    assert_ne!(held_id(&net, "n1"), held_id(&net, "n2"));
    assert!(net.run_until(Duration::from_secs(5), |n| {
        let ids: std::collections::HashSet<_> = n.names().iter().map(|o| held_id(n, o)).collect();
        ids.len() == 1 && revocations_held(n, "n1") == Some(6)
    }));
    // A node holding the list still sends digests (anti-entropy) that decode.
    use mesh_proto::membership::wire::{Digest, DocumentSummary, NameRange};
    let digest = msg(
        &net,
        Body::Sync(Digest {
            range: NameRange::all(),
            origins: vec![],
            suspicions: vec![],
            documents: vec![DocumentSummary {
                name: REVOCATIONS_DOCUMENT.into(),
                id: [7; 16],
            }],
            reply: true,
        }),
    );
    let wire = encode(&digest).expect("a digest naming the revocation list encodes");
    assert_eq!(
        mesh_proto::codec::decode_exact::<mesh_proto::membership::GossipMessage>(&wire).unwrap(),
        digest
    );
    // Route documents are unaffected.
    assert!(
        net.node("n2")
            .unwrap()
            .membership
            .view(net.now(), net.wall_ms())
            .documents
            .is_empty()
    );
}
