//! Membership, health and the routing table across real in-process nodes with
//! real certificates over loopback QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_proto::codec::encode;
use mesh_proto::gossip::{Health, ServiceRecord, service_key};
use mesh_proto::membership::wire::{Body, Items};
use mesh_proto::tunnel::Protocol;
use shoal_tests::cluster::Cluster;
use shoal_tests::rogue::Rogue;
use shoal_tests::{Check, HttpBackend, NodeSpec, Pki, TcpBackend, TestNode, eventually};

/// Three nodes, one seed, converged: n1 hosts `web` (TCP), n2 hosts `api`
/// (HTTP), n3 nothing.
async fn three_nodes(web: &TcpBackend, api: &HttpBackend) -> Cluster {
    let mesh = Cluster::new(3)
        .with_service("n1", "web", web.addr(), Check::Tcp)
        .with_service("n2", "api", api.addr(), Check::Http)
        .start()
        .await;
    mesh.wait_converged().await;
    mesh
}

/// Whether `n` sees `web` on n1 and `api` on n2 in `health`.
async fn sees_both(n: &TestNode, health: &str) -> bool {
    n.endpoint_health("web", "n1").await.as_deref() == Some(health)
        && n.endpoint_health("api", "n2").await.as_deref() == Some(health)
}

/// Whether `n` lists `member` in `state`.
async fn lists(n: &TestNode, member: &str, state: &str) -> bool {
    n.member_states()
        .await
        .contains(&(member.to_string(), state.to_string()))
}

/// The encoded record of a healthy TCP service `name`.
fn healthy_tcp_service(name: &str) -> Vec<u8> {
    encode(&ServiceRecord {
        name: name.into(),
        protocol: Protocol::Tcp,
        weight: 100,
        health: Health::Healthy,
        inflight: 0,
        tags: vec![],
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_one_seed_converge_on_members_and_services() {
    let web = TcpBackend::start().await;
    let api = HttpBackend::start().await;
    let mesh = three_nodes(&web, &api).await;
    for n in mesh.nodes() {
        eventually(&format!("{} sees web and api healthy", n.spec.name), || {
            sees_both(n, "healthy")
        })
        .await;
        // the routing table itself, not only the admin view
        let table = n.node.table();
        assert_eq!(table.endpoints("web").len(), 1);
        assert_eq!(table.endpoints("web")[0].zone, "zone-a");
        assert_eq!(table.endpoints("api")[0].protocol, Protocol::Http);
        assert_eq!(
            table.endpoints("web")[0].addr,
            mesh["n1"].node.bound().advertise,
            "endpoints carry the hosting node's QUIC address"
        );
        // readiness: joined
        let (status, _) = shoal_tests::http_get(n.admin(), "/readyz").await;
        assert_eq!(status, 200);
    }
    // /members carries the documented fields
    let members = mesh["n3"].admin_json("/members").await;
    let n1 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n1")
        .unwrap();
    assert_eq!(n1["zone"], "zone-a");
    assert_eq!(n1["address"], mesh["n1"].node.bound().advertise.to_string());
    assert!(n1["generation"].as_u64().unwrap() > 0);
    assert!(n1["last_heard_ms"].is_u64(), "{n1}");
    assert_eq!(n1["accused_by"], serde_json::json!([]));
    // metrics count gossip and rebuilds
    let n2 = &mesh["n2"];
    assert!(
        n2.metric("shoal_gossip_messages_total{direction=\"received\"}")
            .await
            > 0.0
    );
    assert!(n2.metric("shoal_routing_table_rebuilds_total").await > 0.0);
    assert!(mesh["n1"].metric("shoal_health_checks_total").await > 0.0);
    assert_eq!(n2.metric("shoal_members{state=\"alive\"}").await, 3.0);
    // /config is JSON with the effective values
    let config = mesh["n1"].admin_json("/config").await;
    assert_eq!(config["node"]["name"], "n1");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_turns_unhealthy_everywhere_and_back() {
    let mut web = TcpBackend::start().await;
    let api = HttpBackend::start().await;
    let mesh = three_nodes(&web, &api).await;
    for n in mesh.nodes() {
        eventually("web healthy", || sees_both(n, "healthy")).await;
    }
    // TCP backend stops listening; HTTP backend starts answering 500
    web.stop().await;
    api.set_healthy(false);
    for n in mesh.nodes() {
        eventually(&format!("{} sees both unhealthy", n.spec.name), || {
            sees_both(n, "unhealthy")
        })
        .await;
    }
    assert_eq!(
        mesh["n3"].node.table().endpoints("web")[0].health,
        Health::Unhealthy,
        "unhealthy endpoints stay in the table, marked"
    );
    web.restart().await;
    api.set_healthy(true);
    for n in mesh.nodes() {
        eventually(&format!("{} sees both healthy again", n.spec.name), || {
            sees_both(n, "healthy")
        })
        .await;
    }
    assert!(
        mesh["n1"]
            .metric("shoal_health_checks_total{service=\"web\",result=\"failure\"}")
            .await
            > 0.0
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_hard_disappears_from_every_routing_table() {
    let web = TcpBackend::start().await;
    let api = HttpBackend::start().await;
    let mut mesh = three_nodes(&web, &api).await;
    for n in ["n1", "n3"] {
        mesh.wait_healthy(n, "api", 1).await;
    }
    mesh.kill("n2").await;
    for n in mesh.nodes() {
        eventually(&format!("{} drops n2", n.spec.name), || async {
            n.node.table().endpoints("api").is_empty()
                && n.node.table().node("n2").is_none()
                && lists(n, "n2", "dead").await
        })
        .await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_gracefully_is_draining_first_then_gone() {
    let web = TcpBackend::start().await;
    let api = HttpBackend::start().await;
    let mut mesh = three_nodes(&web, &api).await;
    mesh.wait_healthy("n1", "api", 1).await;
    mesh["n2"].node.drain().await;
    // n2 itself stops being ready
    let (status, _) = shoal_tests::http_get(mesh["n2"].admin(), "/readyz").await;
    assert_eq!(status, 503);
    let others = ["n1", "n3"];
    for n in others.map(|n| &mesh[n]) {
        eventually(&format!("{} sees n2 draining", n.spec.name), || async {
            lists(n, "n2", "draining").await && n.node.table().endpoints("api").is_empty()
        })
        .await;
    }
    mesh.shut_down("n2").await;
    // A clean stop reads as `left`, not `dead` (a crash).
    for n in mesh.nodes() {
        eventually(&format!("{} sees n2 gone", n.spec.name), || async {
            lists(n, "n2", "left").await && n.node.table().node("n2").is_none()
        })
        .await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_the_same_node_with_a_new_generation() {
    let mut mesh = Cluster::new(2).start().await;
    mesh.wait_converged().await;
    let first_gen = mesh["n1"].node.table().node("n2").unwrap().generation;
    let n2 = mesh.kill("n2").await;
    mesh.start_again(n2).await;
    let n1 = &mesh["n1"];
    eventually("n1 sees the new generation of n2 alive", || async {
        n1.node
            .table()
            .node("n2")
            .is_some_and(|e| e.generation > first_gen)
    })
    .await;
    let members = n1.admin_json("/members").await;
    let alive_n2: Vec<u64> = members
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "n2" && m["state"] == "alive")
        .map(|m| m["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(alive_n2.len(), 1, "exactly one live generation: {members}");
    assert!(alive_n2[0] > first_gen);
    mesh.stop().await;
}

/// A member (with a valid certificate allowing `web` only) also claims
/// `payments`, signing the record itself: every node refuses it, counts it, and
/// routes `payments` nowhere; the allowed service still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_claim_outside_the_certificate_is_refused_and_counted() {
    let web = TcpBackend::start().await;
    let mesh = Cluster::new(1)
        .with_service("n1", "web", web.addr(), Check::Tcp)
        .start()
        .await;
    let n1 = &mesh["n1"];
    let member = Rogue::join(&mesh.pki, "n2", &["web"], &[n1]).await;
    let claim = member.own(&service_key("payments"), healthy_tcp_service("payments"));
    member
        .send(
            n1,
            Body::Items(Items {
                records: vec![claim],
                ..Items::default()
            }),
        )
        .await;
    eventually("n1 counts the refused claim", || async {
        n1.metric("shoal_gossip_rejected_total{reason=\"service_not_in_certificate\"}")
            .await
            >= 1.0
    })
    .await;
    let table = n1.node.table();
    assert!(table.endpoints("payments").is_empty());
    assert_eq!(
        table.endpoints("web").len(),
        1,
        "the allowed service still counts"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_peer_unless_alone_by_config() {
    let pki = Pki::new("mesh.test");
    let first = TestNode::start(&pki, NodeSpec::new("first")).await;
    let (status, _) = shoal_tests::http_get(first.admin(), "/readyz").await;
    assert_eq!(status, 200, "a node without seeds is ready alone");
    // a node whose only seed does not answer is not ready
    let mut spec = NodeSpec::new("lonely");
    spec.seeds.push("127.0.0.1:9".into());
    let lonely = TestNode::start(&pki, spec).await;
    let (status, _) = shoal_tests::http_get(lonely.admin(), "/readyz").await;
    assert_eq!(status, 503);
    let (status, body) = shoal_tests::http_get(lonely.admin(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    first.node.kill().await;
    lonely.node.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_keeps_its_last_table_and_peers_rejoin_from_the_data_dir() {
    let web = TcpBackend::start().await;
    let mut mesh = Cluster::new(2)
        .with_service("n2", "web", web.addr(), Check::Tcp)
        .start()
        .await;
    mesh.wait_converged().await;
    mesh.wait_healthy("n1", "web", 1).await;
    // both remember the other in their data directory
    let n1_addr = mesh["n1"].node.bound().advertise.to_string();
    let n2_members = mesh["n2"].data_dir.path().join("members.json");
    eventually("n2 saved n1 as a known member", || async {
        std::fs::read_to_string(&n2_members).is_ok_and(|s| s.contains(&n1_addr))
    })
    .await;

    let mut n2 = mesh.kill("n2").await;
    let n1 = &mesh["n1"];
    eventually("n1 sees n2 dead", || lists(n1, "n2", "dead")).await;
    // alone, n1 keeps serving with what it knew
    assert_eq!(n1.node.table().endpoints("web").len(), 1, "last table kept");

    // n2 comes back with no seeds at all: its data directory knows n1
    n2.spec.seeds.clear();
    let n2_addr = mesh.start_again(n2).await.node.bound().advertise;
    let n1 = &mesh["n1"];
    eventually("n2 rejoined n1 from its saved members", || async {
        let mut alive: Vec<String> = n1
            .member_states()
            .await
            .into_iter()
            .filter(|(_, s)| s == "alive")
            .map(|(n, _)| n)
            .collect();
        alive.dedup();
        alive == ["n1", "n2"]
            && n1.node.table().endpoints("web").first().map(|e| e.addr) == Some(n2_addr)
    })
    .await;
    mesh.stop().await;
}

/// A member publishes n1's (public) certificate as its own and claims `pay`:
/// the certificate names another node (refused), and without a certificate of
/// its own allowing `pay` the claim is refused too. Only n1 hosts `pay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_another_nodes_certificate_grants_nothing() {
    use mesh_proto::gossip::{CERT_KEY, NodeCertificate};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pay = TcpBackend::start().await;
    let mesh = Cluster::of([
        NodeSpec::new("n1").service("pay", pay.addr(), Check::Tcp),
        NodeSpec::new("n3"),
    ])
    .start()
    .await;
    mesh.wait_converged().await;
    mesh.wait_healthy("n3", "pay", 1).await;
    let (n1, n3) = (&mesh["n1"], &mesh["n3"]);
    let member = Rogue::join(&mesh.pki, "n2", &[], &[n1, n3]).await;
    let n1_cert = std::fs::read(n1.cert_dir.join("node.crt")).unwrap();
    let der = CertificateDer::from_pem_slice(&n1_cert).unwrap();
    let mut stolen = member.own(
        CERT_KEY,
        encode(&NodeCertificate { der: der.to_vec() }).unwrap(),
    );
    stolen.generation += 1; // a new generation needs a certificate record
    let stolen = member.sign(stolen);
    let claim = member.own(&service_key("pay"), healthy_tcp_service("pay"));
    member
        .send(
            n3,
            Body::Items(Items {
                records: vec![stolen, claim],
                ..Items::default()
            }),
        )
        .await;
    eventually("n3 refuses both", || async {
        n3.metric("shoal_gossip_rejected_total{reason=\"certificate_mismatch\"}")
            .await
            >= 1.0
            && n3
                .metric("shoal_gossip_rejected_total{reason=\"service_not_in_certificate\"}")
                .await
                >= 1.0
    })
    .await;
    let eps: Vec<String> = n3
        .node
        .table()
        .endpoints("pay")
        .iter()
        .map(|e| e.node.clone())
        .collect();
    assert_eq!(eps, ["n1"], "only n1 may host pay");
    mesh.stop().await;
}

/// One connection per pair of nodes: the peer answers gossip over the connection
/// this node dialled, so that connection must be read from the start. (A node
/// that dialled a seed before its reader was registered never read the seed's
/// replies: the other node saw it alive, it never saw the other. The endpoint
/// now hands its connections over through the `Accepted` it is made with, so no
/// connection can come before its reader.)
#[tokio::test]
async fn the_peer_answers_over_the_gossip_connection_this_node_dialled() {
    use shoal_node::endpoint::Use;
    use std::time::Duration;
    let pki = Pki::new("mesh.test");
    let (a, a_accepted, _) = pki.endpoint_accepting("a", &[]);
    let (b, b_accepted, _) = pki.endpoint_accepting("b", &[]);
    let mut reader = a_accepted.gossip;
    let mut b_gossip = b_accepted.gossip;
    tokio::spawn(b.clone().accept_loop());
    let b_addr = b.local_addr().unwrap();

    let conn = a.connect(b_addr, Use::Gossip, Some("b")).await.unwrap();
    // a's reader gets the connection it dialled ...
    let registered = tokio::time::timeout(Duration::from_secs(10), reader.recv())
        .await
        .expect("the dialled connection is handed to the reader")
        .unwrap();
    assert_eq!(registered.conn.stable_id(), conn.stable_id());
    assert_eq!(registered.peer.node.as_deref(), Some("b"));
    // ... and what b sends back over it arrives.
    conn.open_uni()
        .await
        .unwrap()
        .write_all(b"syn")
        .await
        .unwrap();
    let at_b = tokio::time::timeout(Duration::from_secs(10), b_gossip.recv())
        .await
        .unwrap()
        .unwrap();
    let mut reply = at_b.conn.open_uni().await.unwrap();
    reply.write_all(b"synack").await.unwrap();
    reply.finish().unwrap();
    let mut stream = tokio::time::timeout(Duration::from_secs(10), registered.conn.accept_uni())
        .await
        .expect("b's reply arrives on a's connection")
        .unwrap();
    let got = stream.read_to_end(64).await.unwrap();
    assert_eq!(got, b"synack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_keeps_gossip_connections_to_its_neighbours_only() {
    // 20 real nodes joining through one seed: at first every node talks to the
    // seed, which then holds a connection to each (19), more than the cap (16):
    // it sheds the ones it used least recently, never a neighbour's. Once the
    // overlay has settled, each node keeps about one connection per neighbour
    // (at most 8, a few more while views differ) and the seed's others close
    // when unused (15 s). All pairs would be 19.
    let mesh = Cluster::of((0..20).map(|i| NodeSpec::new(&format!("n{i:02}"))))
        .start()
        .await;
    mesh.wait_converged().await;
    let counts = || async {
        let mut counts = vec![];
        for n in mesh.nodes() {
            counts.push(n.metric("shoal_gossip_connections").await);
        }
        counts
    };
    // The gauge is refreshed every 2 s by the node's housekeeping.
    shoal_tests::eventually("every node has counted its gossip connections", || async {
        counts().await.iter().all(|c| *c >= 1.0)
    })
    .await;
    shoal_tests::eventually_within(
        "every node holds at most 14 gossip connections",
        std::time::Duration::from_secs(60),
        || async { counts().await.iter().all(|c| *c <= 14.0) },
    )
    .await;
    // And it stays so while gossip goes on (all pairs would climb back to 19).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let now = counts().await;
    assert!(now.iter().all(|c| (1.0..=14.0).contains(c)), "{now:?}");
    // Not vacuous: the seed did connect with every other node.
    let seed = &mesh["n00"];
    let seed_connections = seed.metric("shoal_quic_connections_accepted").await
        + seed.metric("shoal_quic_connections_opened").await;
    assert!(seed_connections >= 19.0, "the seed met {seed_connections}");
    // It held more than the cap while the others joined, and shed the excess;
    // the peers whose connections it closed dial again when they need one, so
    // the mesh stays whole.
    let shed = seed.metric("shoal_gossip_connections_shed_total").await;
    assert!(shed >= 1.0, "the seed shed {shed} connections");
    mesh.wait_converged().await;
    // Each node saves 16 of its 19 peers for its next start, not all of them,
    // and nodes pick different ones.
    let advertised: Vec<String> = mesh
        .nodes()
        .map(|n| n.node.bound().advertise.to_string())
        .collect();
    let saved = |name: &str| -> Vec<String> {
        let path = mesh[name].data_dir.path().join("members.json");
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    shoal_tests::eventually("every node saved 16 peers", || async {
        mesh.nodes().all(|n| saved(&n.spec.name).len() == 16)
    })
    .await;
    for n in mesh.nodes() {
        let own = n.node.bound().advertise.to_string();
        let list = saved(&n.spec.name);
        assert!(
            list.iter().all(|a| advertised.contains(a) && *a != own),
            "{}: {list:?}",
            n.spec.name
        );
    }
    assert_ne!(saved("n01"), saved("n02"), "each node its own order");
    mesh.stop().await;
}

/// A seed given by name: `localhost:PORT` resolves to every address of
/// `localhost`, and a node whose seed is not up yet joins it once it is (it
/// keeps asking the resolved addresses, and resolves the name again every few
/// seconds while it has no live peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_named_by_a_dns_name_is_joined_once_it_is_up() {
    let pki = Pki::new("mesh.test");
    // A free UDP port for the seed, which starts after the node that names it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = NodeSpec::new("joiner");
    spec.seeds.push(format!("localhost:{port}"));
    let joiner = TestNode::start(&pki, spec).await;
    let (status, _) = shoal_tests::http_get(joiner.admin(), "/readyz").await;
    assert_eq!(status, 503, "nobody to join yet");
    let seed = TestNode::start(
        &pki,
        NodeSpec::new("seed").tweak(move |raw| raw.node.listen = Some(format!("127.0.0.1:{port}"))),
    )
    .await;
    eventually(
        "the joiner joins the seed named by localhost, and is ready",
        || async {
            lists(&joiner, "seed", "alive").await
                && lists(&seed, "joiner", "alive").await
                && shoal_tests::http_get(joiner.admin(), "/readyz").await.0 == 200
        },
    )
    .await;
    joiner.node.kill().await;
    seed.node.kill().await;
}
