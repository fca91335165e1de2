//! The gossip threat model (docs/security.md), tried for real: a rogue member
//! holding a valid node certificate speaks the gossip protocol directly over QUIC
//! to a real three-node mesh and tries each attack. Every test checks that the
//! attack fails, that the honest mesh is unaffected (members, service health and
//! routes as before) and that gossip still works afterwards (a new node joins, a
//! health change propagates).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_proto::codec::encode;
use mesh_proto::gossip::{Health, NodeRecord, NodeState, RouteDocument, ServiceRecord};
use mesh_proto::membership::SignedRecord;
use mesh_proto::membership::wire::{Announced, Body, Digest, Items, NameRange, OriginSummary};
use mesh_proto::route::RouteSpec;
use mesh_proto::tunnel::Protocol;
use rcgen::SigningKey as _;
use shoal_pki::{OperatorKey, Validity};
use shoal_tests::cluster::Cluster;
use shoal_tests::rogue::Rogue;
use shoal_tests::{Check, NodeSpec, Pki, TcpBackend, TestNode, eventually};
use time::OffsetDateTime;

/// a (no services), b and c hosting `echo`, converged, and the echo backends.
struct Mesh {
    cluster: Cluster,
    backends: [TcpBackend; 2],
}

impl Mesh {
    async fn start() -> Mesh {
        Self::start_with(|spec| spec).await
    }

    async fn start_with(tweak: impl Fn(NodeSpec) -> NodeSpec) -> Mesh {
        let backends = [TcpBackend::start().await, TcpBackend::start().await];
        let cluster = Cluster::of([
            tweak(NodeSpec::new("a")),
            tweak(NodeSpec::new("b").service("echo", backends[0].addr(), Check::Tcp)),
            tweak(NodeSpec::new("c").service("echo", backends[1].addr(), Check::Tcp)),
        ])
        .start()
        .await;
        let mesh = Mesh { cluster, backends };
        for n in mesh.nodes() {
            eventually(&format!("{} sees the mesh", n.spec.name), || async {
                n.member_states()
                    .await
                    .iter()
                    .filter(|(_, s)| s == "alive")
                    .count()
                    == 3
                    && n.endpoint_health("echo", "b").await.as_deref() == Some("healthy")
                    && n.endpoint_health("echo", "c").await.as_deref() == Some("healthy")
            })
            .await;
        }
        mesh
    }

    fn node(&self, name: &str) -> &TestNode {
        self.cluster.node(name)
    }

    /// The honest nodes a, b and c.
    fn nodes(&self) -> impl Iterator<Item = &TestNode> {
        self.cluster.nodes()
    }

    fn refs(&self) -> Vec<&TestNode> {
        self.nodes().collect()
    }

    fn pki(&self) -> &Pki {
        &self.cluster.pki
    }

    /// A rogue member known to every node.
    async fn rogue(&self, name: &str, services: &[&str]) -> Rogue {
        let rogue = Rogue::join(self.pki(), name, services, &self.refs()).await;
        for n in self.nodes() {
            eventually(&format!("{} knows {name}", n.spec.name), || async {
                n.member_states()
                    .await
                    .iter()
                    .any(|(m, s)| m == name && s == "alive")
            })
            .await;
        }
        rogue
    }

    /// Members (but `except`), echo endpoints and routes as each node reports them.
    async fn snapshot(&self, except: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for n in self.nodes() {
            let members: Vec<(String, String)> = n
                .member_states()
                .await
                .into_iter()
                .filter(|(m, _)| m != except)
                .collect();
            let mut echo = n.admin_json("/services").await["echo"].clone();
            if let Some(eps) = echo.as_array_mut() {
                for e in eps {
                    e["inflight"] = 0.into();
                }
            }
            let routes = n.admin_json("/routes").await;
            out.push(serde_json::json!({"members": members, "echo": echo, "routes": routes}));
        }
        out
    }

    /// The signed state of `origin` as `observer` holds it.
    fn records(&self, observer: &str, origin: &str) -> Vec<SignedRecord> {
        self.node(observer).node.gossip().signed_records(origin)
    }

    fn generation(&self, name: &str) -> u64 {
        self.node(name).node.gossip().generation()
    }

    fn max_version(&self, observer: &str, origin: &str) -> u64 {
        self.records(observer, origin)
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0)
    }

    /// The honest mesh is as it was, and gossip still works: a new node joins
    /// and a health change reaches every node.
    async fn assert_unaffected_and_working(&mut self, before: &[serde_json::Value], rogue: &str) {
        // Settled (a node loaded by the attack may have been accused, and
        // refuted, a moment ago), the honest mesh is as it was.
        let settled = tokio::time::timeout(shoal_tests::EVENTUALLY, async {
            loop {
                if self.snapshot(rogue).await == before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if settled.is_err() {
            assert_eq!(
                self.snapshot(rogue).await,
                before,
                "the honest mesh changed"
            );
        }
        self.cluster.add(NodeSpec::new("d")).await;
        for n in self.nodes() {
            eventually(&format!("{} sees d join", n.spec.name), || async {
                let states = n.member_states().await;
                ["a", "b", "c", "d"]
                    .iter()
                    .all(|m| states.iter().any(|(x, s)| x == m && s == "alive"))
            })
            .await;
        }
        self.backends[0].stop().await;
        for n in self.nodes() {
            eventually(
                &format!("{} sees echo on b unhealthy", n.spec.name),
                || async { n.endpoint_health("echo", "b").await.as_deref() == Some("unhealthy") },
            )
            .await;
        }
        self.backends[0].restart().await;
        for n in self.nodes() {
            eventually(
                &format!("{} sees echo on b healthy again", n.spec.name),
                || async { n.endpoint_health("echo", "b").await.as_deref() == Some("healthy") },
            )
            .await;
        }
        self.cluster.kill("d").await;
    }

    async fn rejected(&self, node: &str, reason: &str) -> f64 {
        self.node(node)
            .metric(&format!(
                "shoal_gossip_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await
    }

    async fn stop(self) {
        self.cluster.stop().await;
    }
}

fn service_record(name: &str, health: Health, weight: u32, tags: &[&str]) -> Vec<u8> {
    encode(&ServiceRecord {
        name: name.into(),
        protocol: Protocol::Tcp,
        weight,
        health,
        inflight: 0,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })
    .unwrap()
}

fn echo_record(health: Health, weight: u32, tags: &[&str]) -> Vec<u8> {
    service_record("echo", health, weight, tags)
}

/// The encoded node record of `name` (generation `generation`) at `addr`.
fn node_record(name: &str, addr: std::net::SocketAddr, generation: u64) -> Vec<u8> {
    encode(&NodeRecord {
        name: name.into(),
        zone: "zone-a".into(),
        cluster: "test".into(),
        quic_addr: addr,
        version: "forged".into(),
        started_at_ms: generation,
        state: NodeState::Serving,
    })
    .unwrap()
}

fn items(records: Vec<SignedRecord>) -> Body {
    Body::Items(Items {
        records,
        ..Items::default()
    })
}

/// The threat model's first row: a member rewrites another member's service
/// record (unhealthy, weight 7, a made-up tag, version + 1000). Every node
/// refuses it — the victim too, which never takes records about itself — and
/// the sender is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_for_another_node_is_refused_everywhere_including_by_that_node() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &["echo"]).await;
    let before = mesh.snapshot("rogue").await;
    let forged = rogue.record_for(
        "b",
        mesh.generation("b"),
        mesh.max_version("a", "b") + 1000,
        "svc:echo",
        echo_record(Health::Unhealthy, 7, &["made-up"]),
    );
    for n in mesh.nodes() {
        rogue.send(n, items(vec![forged.clone()])).await;
    }
    for (node, reason) in [
        ("a", "bad_signature"),
        ("c", "bad_signature"),
        ("b", "about_self"),
    ] {
        eventually(
            &format!("{node} refuses the forgery ({reason})"),
            || async { mesh.rejected(node, reason).await >= 1.0 },
        )
        .await;
    }
    assert!(
        mesh.node("a")
            .metric("shoal_gossip_quarantines_total")
            .await
            >= 1.0
    );
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// chitchat let any member gossip a heartbeat of 2^62 for a node, which then
/// looked dead everywhere. Here liveness comes from signed accusations that the
/// accused refutes: accusing b over and over, longer than the suspicion timeout,
/// never makes b dead anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_a_live_node_look_dead() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let before = mesh.snapshot("rogue").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let s = rogue.accuse("b", mesh.generation("b"), mesh.max_version("a", "b"));
        for n in [mesh.node("a"), mesh.node("c")] {
            rogue
                .send(
                    n,
                    Body::Items(Items {
                        suspicions: vec![s.clone()],
                        ..Items::default()
                    }),
                )
                .await;
            let states = n.member_states().await;
            assert!(
                !states.iter().any(|(m, s)| m == "b" && s == "dead"),
                "{} lists b dead: {states:?}",
                n.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        mesh.node("b")
            .metric("shoal_gossip_refutations_total")
            .await
            >= 1.0
    );
    eventually("b is alive and unaccused everywhere", || async {
        mesh.snapshot("rogue").await == before
    })
    .await;
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// chitchat panicked on a `SetMaxVersion` after key/values and on versions
/// near `u64::MAX`, and its gossip loop never ran again. Here every malformed,
/// oversized, contradictory or out-of-range input is refused and counted, and
/// gossip goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_messages_cannot_stop_a_nodes_gossip() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &["echo"]).await;
    let before = mesh.snapshot("rogue").await;
    let a = mesh.node("a");
    let (gen_b, gen_c) = (mesh.generation("b"), mesh.generation("c"));
    let mut future = rogue.own("svc:echo", echo_record(Health::Healthy, 1, &[]));
    future.signed_at_ms = u64::MAX;
    let future = rogue.sign(future);
    // Its own records first (a member may send its own junk: refused, not
    // quarantined), then records about others that it cannot sign (which get it
    // quarantined, so they come last).
    let crafted = vec![
        rogue.own("svc:echo", vec![0xde, 0xad]),
        future,
        rogue.record_for("a", u64::MAX, u64::MAX, "node", vec![]),
        rogue.record_for("c", u64::MAX, 1, "cert", vec![1, 2, 3]),
        rogue.record_for("c", gen_c, u64::MAX - 1, "node", vec![0xff; 64]),
        rogue.record_for(
            "b",
            gen_b,
            u64::MAX,
            "svc:echo",
            echo_record(Health::Healthy, 1, &[]),
        ),
    ];
    rogue.send(a, items(crafted)).await;
    // Not a frame; a frame announcing 4 GiB; a truncated frame; another cluster.
    rogue.send_bytes(a, b"\x00garbage").await;
    rogue.send_bytes(a, &[1, 0xff, 0xff, 0xff, 0xff, 0]).await;
    let mut frame = encode(&mesh_proto::membership::GossipMessage {
        cluster: "test".into(),
        sender_generation: 1,
        body: Body::Ping(7),
    })
    .unwrap();
    frame.truncate(frame.len() - 2);
    rogue.send_bytes(a, &frame).await;
    let mut other = mesh_proto::membership::GossipMessage {
        cluster: "elsewhere".into(),
        sender_generation: 1,
        body: Body::Ping(1),
    };
    rogue.send_bytes(a, &encode(&other).unwrap()).await;
    other.cluster = "test".into();
    // A digest claiming the highest versions of everyone: at most, a never
    // gets answers it would not need.
    other.body = Body::Sync(Digest {
        range: NameRange::all(),
        origins: ["a", "b", "c"]
            .iter()
            .map(|n| OriginSummary {
                name: n.to_string(),
                generation: u64::MAX,
                max_version: u64::MAX,
                fingerprint: 0,
            })
            .collect(),
        suspicions: vec![],
        documents: vec![],
        reply: true,
    });
    rogue.send_bytes(a, &encode(&other).unwrap()).await;
    for reason in [
        "malformed",
        "wrong_cluster",
        "invalid_value",
        "from_the_future",
        "about_self",
        "bad_signature",
    ] {
        eventually(&format!("a counts {reason}"), || async {
            mesh.rejected("a", reason).await >= 1.0
        })
        .await;
    }
    assert_eq!(a.node.supervisor().down(), Vec::<String>::new());
    assert!(
        a.metric("shoal_task_restarts_total").await == 0.0,
        "no task died"
    );
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// chitchat stored `max_version = u64::MAX` for b and handed it to b, whose next
/// write wrapped and panicked: b's health checks stopped for good. Versions are
/// signed here, so nobody but b can raise b's; b's changes keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_near_the_maximum_cannot_freeze_a_node() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let before = mesh.snapshot("rogue").await;
    let frozen = rogue.record_for(
        "b",
        mesh.generation("b"),
        u64::MAX,
        "node",
        node_record(
            "b",
            mesh.node("b").node.bound().advertise,
            mesh.generation("b"),
        ),
    );
    for n in mesh.nodes() {
        rogue.send(n, items(vec![frozen.clone()])).await;
    }
    eventually("a refuses it", || async {
        mesh.rejected("a", "bad_signature").await >= 1.0
    })
    .await;
    assert!(mesh.max_version("a", "b") < u64::MAX / 2);
    assert!(mesh.max_version("b", "b") < u64::MAX / 2);
    // b's health changes still reach everyone (the working check flips them).
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// The phantom generation: records for b's name with a newer generation, b's
/// own certificate copied from gossip and an address of the attacker's choosing.
/// Starting a generation takes b's key: refused, and b keeps its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phantom_generation_cannot_shadow_a_node() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let before = mesh.snapshot("rogue").await;
    let b_cert = mesh
        .records("a", "b")
        .into_iter()
        .find(|r| r.key == "cert")
        .unwrap();
    let phantom = mesh.generation("b") + 1;
    let mut cert = b_cert.clone();
    cert.generation = phantom;
    cert.version = 1;
    let cert = rogue.sign(cert);
    let node = rogue.record_for(
        "b",
        phantom,
        2,
        "node",
        node_record("b", rogue.addr, phantom),
    );
    for _ in 0..5 {
        for n in [mesh.node("a"), mesh.node("c")] {
            rogue.send(n, items(vec![cert.clone(), node.clone()])).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("a and c refuse the phantom", || async {
        mesh.rejected("a", "bad_signature").await >= 1.0
            && mesh.rejected("c", "bad_signature").await >= 1.0
    })
    .await;
    for n in ["a", "c"] {
        let held = mesh.records(n, "b");
        assert!(held.iter().all(|r| r.generation == mesh.generation("b")));
    }
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// No member without a certificate of its own name: records of an unknown
/// name are refused, and so is the rogue's own certificate under another name
/// (or another node's certificate under the rogue's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_members_need_a_certificate_of_their_own_name() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let before = mesh.snapshot("rogue").await;
    let a = mesh.node("a");
    let now = rogue.generation + 1;
    let ghost_node = rogue.record_for("ghost", now, 2, "node", vec![1]);
    let own_cert = mesh
        .records("a", "rogue")
        .into_iter()
        .find(|r| r.key == "cert")
        .unwrap();
    let mut ghost_cert = own_cert.clone();
    ghost_cert.origin = "ghost".into();
    ghost_cert.generation = now;
    let ghost_cert = rogue.sign(ghost_cert);
    let b_cert = mesh
        .records("a", "b")
        .into_iter()
        .find(|r| r.key == "cert")
        .unwrap();
    let mut stolen = b_cert.clone();
    stolen.origin = "rogue".into();
    stolen.generation = rogue.generation + 5;
    let stolen = rogue.sign(stolen);
    rogue
        .send(a, items(vec![ghost_node, ghost_cert, stolen]))
        .await;
    for reason in ["unknown_origin", "certificate_mismatch"] {
        eventually(&format!("a refuses the ghost ({reason})"), || async {
            mesh.rejected("a", reason).await >= 1.0
        })
        .await;
    }
    assert!(!a.member_states().await.iter().any(|(m, _)| m == "ghost"));
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// A member may lie only about itself, within its certificate: a service its
/// certificate does not allow is refused at the door and never routed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_claim_a_service_its_certificate_does_not_allow() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &["other"]).await;
    let before = mesh.snapshot("rogue").await;
    let claim = rogue.own("svc:echo", echo_record(Health::Healthy, 10_000, &[]));
    for n in mesh.nodes() {
        rogue.send(n, items(vec![claim.clone()])).await;
    }
    for n in ["a", "b", "c"] {
        eventually(&format!("{n} refuses the claim"), || async {
            mesh.rejected(n, "service_not_in_certificate").await >= 1.0
        })
        .await;
        assert!(
            mesh.node(n)
                .node
                .table()
                .endpoints("echo")
                .iter()
                .all(|e| e.node != "rogue")
        );
    }
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// Caps refuse new state and never evict what is held: with one service per
/// member allowed, the rogue's second service is refused, everyone else's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_new_state_without_evicting_what_is_held() {
    let mut mesh =
        Mesh::start_with(|spec| spec.tweak(|raw| raw.gossip.max_services_per_member = Some(1)))
            .await;
    let rogue = mesh.rogue("rogue", &["s1", "s2"]).await;
    let before = mesh.snapshot("rogue").await;
    let s1 = rogue.own("svc:s1", service_record("s1", Health::Healthy, 1, &[]));
    let s2 = rogue.own("svc:s2", service_record("s2", Health::Healthy, 1, &[]));
    rogue.send(mesh.node("a"), items(vec![s1, s2])).await;
    eventually("a refuses the second service", || async {
        mesh.rejected("a", "key_limit").await >= 1.0
    })
    .await;
    let keys: Vec<String> = mesh
        .records("a", "rogue")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(keys.contains(&"svc:s1".to_string()), "{keys:?}");
    assert!(!keys.contains(&"svc:s2".to_string()), "{keys:?}");
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// One peer cannot starve the others: a flood of messages fills only its own
/// queue (counted), while a health change of an honest node still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_member_cannot_starve_the_others() {
    let mut mesh = Mesh::start().await;
    let rogue = std::sync::Arc::new(mesh.rogue("rogue", &[]).await);
    let before = mesh.snapshot("rogue").await;
    let digest = Body::Sync(Digest {
        range: NameRange::all(),
        origins: vec![],
        suspicions: vec![],
        documents: vec![],
        reply: true,
    });
    // Flood a while c's backend fails: a must still hear of it. The flood
    // goes on until both are seen (the rogue's queue overflowed, and a learnt
    // of c), however fast this machine floods or a drains.
    mesh.backends[1].stop().await;
    let a = mesh.node("a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut overflowed, mut heard) = (false, false);
    while !(overflowed && heard) && tokio::time::Instant::now() < deadline {
        let sends = (0..32).map(|_| rogue.send(a, digest.clone()));
        futures::future::join_all(sends).await;
        overflowed = a
            .metric("shoal_gossip_dropped_total{reason=\"peer_queue_full\"}")
            .await
            >= 1.0;
        heard = heard || a.endpoint_health("echo", "c").await.as_deref() == Some("unhealthy");
    }
    assert!(overflowed, "the flood filled the rogue's own queue");
    assert!(heard, "a saw echo on c unhealthy during the flood");
    mesh.backends[1].restart().await;
    let a = mesh.node("a");
    eventually("echo on c healthy again", || async {
        a.endpoint_health("echo", "c").await.as_deref() == Some("healthy")
    })
    .await;
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

/// The push tree's messages from a hostile member: grafts asking a node again
/// and again for everyone's records are answered twice per half round and
/// the rest refused and counted; prunes and announcements of members that do
/// not exist change nothing but what the node sends to the rogue itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_tree_messages_cannot_amplify_or_reshape_gossip() {
    let mut mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let before = mesh.snapshot("rogue").await;
    let wanted = |origin: &str| Announced {
        origin: origin.into(),
        generation: 0,
        version: 0,
    };
    let graft = Body::Graft(vec![wanted("b"), wanted("c"), wanted("ghost")]);
    let a = mesh.node("a");
    rogue.send(a, Body::Prune).await;
    rogue
        .send(a, Body::IHave(vec![wanted("ghost"), wanted("b")]))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mesh.rejected("a", "graft_rate_limited").await < 1.0
        && tokio::time::Instant::now() < deadline
    {
        let sends = (0..8).map(|_| rogue.send(a, graft.clone()));
        futures::future::join_all(sends).await;
    }
    assert!(
        mesh.rejected("a", "graft_rate_limited").await >= 1.0,
        "grafts beyond two per half round are refused and counted"
    );
    mesh.assert_unaffected_and_working(&before, "rogue").await;
    mesh.stop().await;
}

fn operator(pki: &Pki, name: &str, validity: Validity) -> OperatorKey {
    let cert = pki.ca.issue_operator(name, validity).unwrap();
    OperatorKey::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

fn route(name: &str, service: &str, issued_at_ms: u64) -> RouteSpec {
    RouteSpec::parse_body(
        format!(
            r#"{{"name":"{name}","issued_at_ms":{issued_at_ms},"rules":[{{"backends":[{{"service":"{service}"}}],"allow_services":["web"]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn now_ms() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

async fn route_ids(n: &TestNode) -> Vec<(String, u64, bool)> {
    let routes = n.admin_json("/routes").await;
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["issued_at_ms"].as_u64().unwrap(),
                r["signer_expired"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn documents(docs: Vec<RouteDocument>) -> Body {
    Body::Items(Items {
        documents: docs,
        ..Items::default()
    })
}

/// Route documents travel as the operator signed them. A document issued in
/// the future (to pin a route) is refused on every path; an older one replayed
/// later never wins; one signed with a node key is refused; and one whose
/// signer has expired stays in force — it fails closed — and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_documents_cannot_be_pinned_rolled_back_or_forged() {
    let mesh = Mesh::start().await;
    let rogue = mesh.rogue("rogue", &[]).await;
    let alice = operator(mesh.pki(), "alice", Validity::days_from_now(10).unwrap());
    let a = mesh.node("a");
    let now = now_ms();
    let v1 = alice
        .sign_route(&route("shop", "echo", now - 10_000))
        .unwrap()
        .document();
    let v2 = alice
        .sign_route(&route("shop", "echo", now - 5_000))
        .unwrap()
        .document();
    rogue.send(a, documents(vec![v2.clone()])).await;
    for n in mesh.nodes() {
        eventually(&format!("{} holds v2", n.spec.name), || async {
            route_ids(n).await == [("shop".to_string(), now - 5_000, false)]
        })
        .await;
    }
    // Rollback: v1 (validly signed, older) loses everywhere.
    for n in mesh.nodes() {
        rogue.send(n, documents(vec![v1.clone()])).await;
    }
    // Pinning: issued ten days ahead.
    let pinned = alice
        .sign_route(&route("shop", "echo", now + 10 * 24 * 3600 * 1000))
        .unwrap()
        .document();
    rogue.send(a, documents(vec![pinned])).await;
    eventually("a refuses the pinned document", || async {
        mesh.rejected("a", "from_the_future").await >= 1.0
    })
    .await;
    // A node key is not an operator's.
    let rogue_cert = mesh
        .pki()
        .ca
        .issue_node("rogue2", &[], Validity::days_from_now(1).unwrap())
        .unwrap();
    let node_key = rcgen::KeyPair::from_pem(&rogue_cert.key_pem).unwrap();
    let body = route("shop", "echo", now).to_body();
    let by_node = RouteDocument {
        name: "shop".into(),
        signature: node_key.sign(&body).unwrap(),
        body,
        signer_cert_der: rogue_cert.cert_der.to_vec(),
    };
    rogue.send(a, documents(vec![by_node])).await;
    eventually("a refuses the node-signed document", || async {
        a.metric("shoal_route_documents_rejected_total{reason=\"not_an_operator\"}")
            .await
            >= 1.0
    })
    .await;
    // Expired signer: signed while bob's certificate was valid, relayed after.
    let t = OffsetDateTime::now_utc();
    let bob = operator(
        mesh.pki(),
        "bob",
        Validity::between(
            t - time::Duration::minutes(3),
            t - time::Duration::seconds(1),
        )
        .unwrap(),
    );
    let issued = now - 60_000;
    let expired = bob
        .sign_route(&route("legacy", "echo", issued))
        .unwrap()
        .document();
    rogue.send(a, documents(vec![expired])).await;
    for n in mesh.nodes() {
        eventually(
            &format!("{} holds shop v2 and legacy, expired", n.spec.name),
            || async {
                route_ids(n).await
                    == [
                        ("legacy".to_string(), issued, true),
                        ("shop".to_string(), now - 5_000, false),
                    ]
            },
        )
        .await;
        eventually(
            &format!("{} counts the expired document", n.spec.name),
            || async { n.metric("shoal_route_documents_expired").await == 1.0 },
        )
        .await;
    }
    // Its allow-list still denies: the route stays in the table HTTP uses.
    assert!(a.node.routes().get("legacy").is_some());
    mesh.stop().await;
}

/// The durable high-water mark: a node restarted with v2 on disk never takes
/// v1 back, even with no peer holding v2 any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_never_takes_back_an_older_route_document() {
    let mut mesh = Cluster::of([NodeSpec::new("a")]).start().await;
    let alice = operator(&mesh.pki, "alice", Validity::days_from_now(10).unwrap());
    let a = &mesh["a"];
    let now = now_ms();
    let v1 = alice
        .sign_route(&route("shop", "echo", now - 10_000))
        .unwrap()
        .document();
    let v2 = alice
        .sign_route(&route("shop", "echo", now - 5_000))
        .unwrap()
        .document();
    let rogue = Rogue::join(&mesh.pki, "rogue", &[], &[a]).await;
    rogue.send(a, documents(vec![v2])).await;
    eventually("a holds v2", || async {
        route_ids(a).await == [("shop".to_string(), now - 5_000, false)]
    })
    .await;
    let stopped = mesh.kill("a").await;
    mesh.start_again(stopped).await;
    let a = &mesh["a"];
    assert_eq!(
        route_ids(a).await,
        [("shop".to_string(), now - 5_000, false)]
    );
    let rogue = Rogue::join(&mesh.pki, "rogue2", &[], &[a]).await;
    rogue.send(a, documents(vec![v1])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        route_ids(a).await,
        [("shop".to_string(), now - 5_000, false)]
    );
    mesh.stop().await;
}

/// Every long-running task is supervised: the gossip loop, aborted as a crash
/// would, is restarted and counted, `/readyz` says not ready meanwhile, and the
/// node keeps its state and gossips on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_gossip_task_is_restarted_and_counted() {
    let mut mesh = Mesh::start().await;
    let before = mesh.snapshot("").await;
    let a = mesh.node("a");
    assert!(a.node.supervisor().abort("gossip"));
    eventually("the restart is counted", || async {
        a.metric("shoal_task_restarts_total{task=\"gossip\"}").await == 1.0
    })
    .await;
    eventually("a is ready again", || async {
        shoal_tests::http_get(a.admin(), "/readyz").await.0 == 200
    })
    .await;
    mesh.assert_unaffected_and_working(&before, "").await;
    mesh.stop().await;
}
