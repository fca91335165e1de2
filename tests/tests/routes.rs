//! Route documents end to end: real in-process nodes with real certificates over
//! loopback QUIC, documents signed with the `shoal_pki` library and applied
//! through the admin API (`POST /routes`), read back with `GET /routes` and the
//! node's route table. The `shoal route` CLI is tested in node/tests/cli.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use mesh_proto::codec::decode_text;
use mesh_proto::gossip::RouteDocument;
use mesh_proto::membership::wire::{Body, Items};
use mesh_proto::route::RouteSpec;
use rcgen::SigningKey as _;
use serde_json::Value;

use shoal_node::routes::{ApplyRequest, RejectedView, RouteView};
use shoal_pki::{CertificateAuthority, OperatorKey, SignedRoute, Validity};

use shoal_tests::cluster::Cluster;
use shoal_tests::rogue::Rogue;
use shoal_tests::{NodeSpec, TestNode, eventually};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An operator certificate of `ca` for `name`, ready to sign.
fn operator(ca: &CertificateAuthority, name: &str) -> OperatorKey {
    let cert = ca
        .issue_operator(name, Validity::days_from_now(10).unwrap())
        .unwrap();
    OperatorKey::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap()
}

/// Route `name` for any host, sending everything to `service`, issued at `issued_at_ms`.
fn route(name: &str, service: &str, issued_at_ms: u64) -> RouteSpec {
    let body = format!(
        r#"{{"name":"{name}","issued_at_ms":{issued_at_ms},"hosts":["{name}.example.org"],
            "rules":[{{"backends":[{{"service":"{service}"}}]}}]}}"#
    );
    RouteSpec::parse_body(body.as_bytes()).unwrap()
}

/// `POST path` with a JSON body; returns the status and the body as JSON (or a
/// JSON string holding the text).
async fn post(addr: SocketAddr, path: &str, body: Vec<u8>) -> (u16, Value) {
    let reply = shoal_tests::http_send(
        addr,
        shoal_tests::request("POST", &addr.to_string(), path)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    let value = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body));
    (reply.status, value)
}

/// Applies a signed route through `node`'s admin API.
async fn apply(node: &TestNode, signed: &SignedRoute) -> (u16, Value) {
    let body = serde_json::to_vec(&ApplyRequest::new(signed)).unwrap();
    post(node.admin(), "/routes", body).await
}

async fn routes(node: &TestNode) -> Vec<RouteView> {
    serde_json::from_value(node.admin_json("/routes").await).unwrap()
}

async fn rejected(node: &TestNode) -> Vec<RejectedView> {
    serde_json::from_value(node.admin_json("/routes/rejected").await).unwrap()
}

/// The document in force for `name` on `node`, per `GET /routes`.
async fn in_force(node: &TestNode, name: &str) -> Option<RouteView> {
    routes(node).await.into_iter().find(|r| r.name == name)
}

/// Waits until every node has `spec` in force (by `GET /routes` and by the route
/// table HTTP listeners read).
async fn wait_in_force(nodes: &[&TestNode], spec: &RouteSpec) {
    for n in nodes {
        eventually(
            &format!(
                "{} to have route {} issued at {} in force",
                n.spec.name, spec.name, spec.issued_at_ms
            ),
            || async {
                in_force(n, &spec.name)
                    .await
                    .is_some_and(|r| r.spec == *spec && !r.deleted)
            },
        )
        .await;
        assert_eq!(
            n.node.routes().get(&spec.name),
            Some(spec),
            "{}'s route table",
            n.spec.name
        );
    }
}

/// Three plain nodes, converged.
async fn three_nodes() -> Cluster {
    let mesh = Cluster::new(3).start().await;
    mesh.wait_converged().await;
    mesh
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A document applied through one node's admin API is in force on all three
/// (listed by `GET /routes`, in the route table, counted in the gauge); the same
/// document again is `unchanged`; one issued before the document in force is
/// refused with 409; bad requests get 400 and oversize ones 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_applied_on_one_node_is_in_force_on_every_node() {
    let mesh = three_nodes().await;
    let nodes: Vec<&TestNode> = mesh.nodes().collect();
    let alice = operator(&mesh.pki.ca, "alice");
    let v1 = route("shop", "web", now_ms());
    let signed = alice.sign_route(&v1).unwrap();

    let (status, answer) = apply(nodes[1], &signed).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["result"], "created");
    assert_eq!(answer["route"]["signer"], "alice");
    let id = answer["route"]["id"].as_str().unwrap().to_string();
    wait_in_force(&nodes, &v1).await;
    for n in &nodes {
        let r = in_force(n, "shop").await.unwrap();
        assert_eq!(r.signer, "alice");
        assert_eq!(r.issued_at_ms, v1.issued_at_ms);
        assert_eq!(r.id, id, "every node has the same document");
        eventually("the gauge counts one route", || async {
            n.metric("shoal_route_documents ").await == 1.0
        })
        .await;
    }

    // The same signed document again changes nothing.
    let (status, answer) = apply(nodes[0], &signed).await;
    assert_eq!(
        (status, &answer["result"]),
        (200, &Value::from("unchanged"))
    );
    assert_eq!(answer["route"]["id"], id.as_str());

    // A document issued before the one in force (an operator clock behind).
    let stale = route("shop", "web-old", v1.issued_at_ms - 60_000);
    let (status, answer) = apply(nodes[2], &alice.sign_route(&stale).unwrap()).await;
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("issued later") && error.contains("clock"),
        "the refusal says why and what to check: {error}"
    );

    // An update issued later replaces it everywhere.
    let v2 = route("shop", "web-v2", v1.issued_at_ms + 1);
    let (status, answer) = apply(nodes[2], &alice.sign_route(&v2).unwrap()).await;
    assert_eq!((status, &answer["result"]), (200, &Value::from("updated")));
    wait_in_force(&nodes, &v2).await;
    // The same route signed again later with the same certificate (a pipeline
    // re-applying everything) keeps the document in force; another operator's
    // signature (a renewed certificate, say) makes a new one.
    let resigned = route("shop", "web-v2", v2.issued_at_ms + 10);
    let (status, answer) = apply(nodes[0], &alice.sign_route(&resigned).unwrap()).await;
    assert_eq!(
        (status, &answer["result"]),
        (200, &Value::from("unchanged"))
    );
    assert_eq!(answer["route"]["issued_at_ms"], v2.issued_at_ms);
    let bob = operator(&mesh.pki.ca, "bob");
    let (status, answer) = apply(nodes[0], &bob.sign_route(&resigned).unwrap()).await;
    assert_eq!((status, &answer["result"]), (200, &Value::from("updated")));
    wait_in_force(&nodes, &resigned).await;

    // Malformed requests.
    let (status, answer) = post(nodes[0].admin(), "/routes", b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("signer_cert_der")
    );
    let mut bad_body = ApplyRequest::new(&signed);
    bad_body.body = "eyJub3QiOiAiYSByb3V0ZSJ9".into(); // {"not": "a route"}
    let (status, answer) = post(
        nodes[0].admin(),
        "/routes",
        serde_json::to_vec(&bad_body).unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid route"),
        "{answer}"
    );
    let (status, answer) = post(nodes[0].admin(), "/routes", vec![b' '; 70 * 1024]).await;
    assert_eq!(status, 413, "{answer}");

    mesh.stop().await;
}

/// Documents signed by a node certificate, with a tampered body, or by an
/// operator of another CA are refused by the admin API with a reason — and,
/// sent straight into gossip by a member, refused by every node, listed in
/// `GET /routes/rejected` with the member that sent them and counted by reason,
/// never applied or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_documents_are_rejected_everywhere() {
    let mesh = three_nodes().await;
    let nodes: Vec<&TestNode> = mesh.nodes().collect();
    let now = now_ms();

    // Signed with a node's key and certificate.
    let rogue = mesh
        .pki
        .ca
        .issue_node("rogue", &[], Validity::days_from_now(10).unwrap())
        .unwrap();
    let rogue_key = rcgen::KeyPair::from_pem(&rogue.key_pem).unwrap();
    let by_node = {
        let spec = route("by-node", "web", now);
        let body = spec.to_body();
        SignedRoute {
            name: spec.name.clone(),
            signature: rogue_key.sign(&body).unwrap(),
            body,
            signer_cert_der: rogue.cert_der.to_vec(),
        }
    };
    // Signed by an operator, then changed (still a valid route).
    let alice = operator(&mesh.pki.ca, "alice");
    let mut tampered = alice.sign_route(&route("tampered", "web", now)).unwrap();
    let text = String::from_utf8(tampered.body.clone()).unwrap();
    tampered.body = text.replace("\"web\"", "\"evil\"").into_bytes();
    assert!(RouteSpec::parse_body(&tampered.body).is_ok());
    // Signed by an operator of another mesh CA (same trust domain name).
    let other_ca =
        CertificateAuthority::create("mesh.test", Validity::days_from_now(30).unwrap()).unwrap();
    let foreign = operator(&other_ca, "mallory")
        .sign_route(&route("foreign", "web", now))
        .unwrap();

    let cases = [
        (&by_node, "not_an_operator", "not an operator certificate"),
        (
            &tampered,
            "bad_signature",
            "does not match the document body",
        ),
        (&foreign, "other_ca", "not issued by this mesh's CA"),
    ];
    for (signed, _, words) in &cases {
        let (status, answer) = apply(nodes[0], signed).await;
        assert_eq!(status, 400, "{}: {answer}", signed.name);
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(words), "{}: {error}", signed.name);
    }

    // A member sends them anyway, to every node.
    let member = Rogue::join(&mesh.pki, "member", &[], &nodes).await;
    for n in &nodes {
        let docs = cases
            .iter()
            .map(|(signed, _, _)| signed.document())
            .collect();
        member
            .send(
                n,
                Body::Items(Items {
                    documents: docs,
                    ..Items::default()
                }),
            )
            .await;
    }
    let expected = [
        ("by-node", "not_an_operator"),
        ("tampered", "bad_signature"),
        ("foreign", "other_ca"),
    ];
    for n in &nodes {
        eventually(
            &format!("{} to list every forged document as rejected", n.spec.name),
            || async {
                let rejected = rejected(n).await;
                expected.iter().all(|(name, reason)| {
                    rejected.iter().any(|r| {
                        r.name == *name && r.reason == *reason && r.published_by == ["member"]
                    })
                })
            },
        )
        .await;
        let listed = routes(n).await;
        assert!(
            listed.is_empty(),
            "{}: nothing applied: {listed:?}",
            n.spec.name
        );
        assert!(n.node.routes().is_empty(), "{}", n.spec.name);
        for (_, reason) in &expected {
            let counted = n
                .metric(&format!(
                    "shoal_route_documents_rejected_total{{reason=\"{reason}\"}}"
                ))
                .await;
            assert_eq!(counted, 1.0, "{}: {reason} counted once", n.spec.name);
        }
        let data = n.data_dir.path().join("routes");
        let stored: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert!(
            stored.is_empty(),
            "{}: nothing stored: {stored:?}",
            n.spec.name
        );
    }
    let tampered_view = rejected(nodes[2])
        .await
        .into_iter()
        .find(|r| r.name == "tampered")
        .unwrap();
    assert!(
        tampered_view
            .signer
            .as_deref()
            .is_some_and(|s| s.contains("operator/alice")),
        "the view names the signer: {tampered_view:?}"
    );

    mesh.stop().await;
}

/// v1 is in force everywhere; a partition separates n1 from n2 and n3; each side
/// applies an update (n3's issued later); when the partition heals every node
/// converges on n3's update — the later-issued one — and stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_issued_version_wins_after_a_partition_heals() {
    let mesh = Cluster::new(3).with_faults(11).start().await;
    mesh.wait_converged().await;
    let (n1, n2, n3) = (&mesh["n1"], &mesh["n2"], &mesh["n3"]);
    let all = [n1, n2, n3];
    let alice = operator(&mesh.pki.ca, "alice");
    let v1 = route("shop", "web-v1", now_ms());
    let (status, answer) = apply(n1, &alice.sign_route(&v1).unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    wait_in_force(&all, &v1).await;

    mesh.partition(&["n1"], &["n2", "n3"]);
    let v2 = route("shop", "web-v2", v1.issued_at_ms + 1_000);
    let v3 = route("shop", "web-v3", v1.issued_at_ms + 2_000);
    let (status, answer) = apply(n1, &alice.sign_route(&v2).unwrap()).await;
    assert_eq!(status, 200, "n1 applies v2 on its side: {answer}");
    let (status, answer) = apply(n3, &alice.sign_route(&v3).unwrap()).await;
    assert_eq!(status, 200, "n3 applies v3 on its side: {answer}");
    wait_in_force(&[n2, n3], &v3).await;
    assert_eq!(
        in_force(n1, "shop").await.unwrap().spec,
        v2,
        "n1 is cut off and keeps its own update"
    );

    mesh.heal();
    wait_in_force(&all, &v3).await;
    for n in all {
        let file = n.data_dir.path().join("routes/shop.route");
        let stored: RouteDocument =
            decode_text(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
        assert_eq!(
            RouteSpec::parse_document(&stored).unwrap(),
            v3,
            "{} stored the winner",
            n.spec.name
        );
    }
    mesh.stop().await;
}

/// A node restarted alone (no peer reachable) routes by the documents in its data
/// directory from the first moment, skipping files it cannot read; restarted
/// later next to a peer that moved on, a node adopts the newer version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_survive_a_restart_and_a_returning_node_catches_up() {
    let mut mesh = Cluster::new(2).start().await;
    mesh.wait_converged().await;
    let alice = operator(&mesh.pki.ca, "alice");
    let v1 = route("shop", "web-v1", now_ms());
    let (status, answer) = apply(&mesh["n1"], &alice.sign_route(&v1).unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    wait_in_force(&mesh.nodes().collect::<Vec<_>>(), &v1).await;
    let n2_files = mesh["n2"].data_dir.path().join("routes");
    eventually("n2 to store the document it adopted", || async {
        n2_files.join("shop.route").exists()
    })
    .await;

    // Both stop; n2 comes back alone, with junk next to its documents.
    let mut n1 = mesh.kill("n1").await;
    let mut n2 = mesh.kill("n2").await;
    std::fs::write(n2_files.join("junk.route"), "not a document").unwrap();
    std::fs::write(n2_files.join(".shop.route.tmp-1-2"), "half written").unwrap();
    n2.spec.seeds.clear();
    let n2 = mesh.start_again(n2).await;
    assert_eq!(
        n2.node.routes().get("shop"),
        Some(&v1),
        "the stored document is in force as soon as the node has started"
    );
    assert_eq!(in_force(n2, "shop").await.unwrap().spec, v1);
    assert!(
        !n2_files.join(".shop.route.tmp-1-2").exists(),
        "leftovers of an interrupted write are removed"
    );

    // While n1 is away, the route changes (on n2).
    let v2 = route("shop", "web-v2", v1.issued_at_ms + 1);
    let (status, answer) = apply(n2, &alice.sign_route(&v2).unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    // n1 returns with v1 on disk and adopts v2 (it is seeded with n2, which
    // restarted on a new port).
    n1.spec = NodeSpec::new("n1").seed(n2);
    mesh.start_again(n1).await;
    wait_in_force(&mesh.nodes().collect::<Vec<_>>(), &v2).await;
    let stored: RouteDocument = decode_text(
        std::fs::read_to_string(mesh["n1"].data_dir.path().join("routes/shop.route"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(RouteSpec::parse_document(&stored).unwrap(), v2);
    mesh.stop().await;
}

/// Deleting is applying a signed tombstone: the route leaves every node's table,
/// `GET /routes` shows it deleted, an older version cannot bring it back, a
/// second delete or a delete of an unknown route is refused (404), and a new
/// version issued later re-creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_propagates_and_stays() {
    let mesh = three_nodes().await;
    let nodes: Vec<&TestNode> = mesh.nodes().collect();
    let all = nodes.clone();
    let alice = operator(&mesh.pki.ca, "alice");
    let bob = operator(&mesh.pki.ca, "bob");
    let v1 = route("shop", "web", now_ms());
    let (status, answer) = apply(nodes[0], &alice.sign_route(&v1).unwrap()).await;
    assert_eq!(status, 201, "{answer}");
    wait_in_force(&all, &v1).await;

    let tombstone = RouteSpec::tombstone("shop", v1.issued_at_ms + 1);
    let (status, answer) = apply(nodes[2], &bob.sign_route(&tombstone).unwrap()).await;
    assert_eq!((status, &answer["result"]), (200, &Value::from("deleted")));
    for n in &all {
        eventually(&format!("{} to see shop deleted", n.spec.name), || async {
            in_force(n, "shop")
                .await
                .is_some_and(|r| r.deleted && r.signer == "bob")
        })
        .await;
        assert!(n.node.routes().get("shop").is_none());
        eventually("the gauge to drop to 0", || async {
            n.metric("shoal_route_documents ").await == 0.0
        })
        .await;
    }

    let (status, answer) = apply(nodes[1], &alice.sign_route(&v1).unwrap()).await;
    assert_eq!(status, 409, "the old version stays deleted: {answer}");
    let again = RouteSpec::tombstone("shop", v1.issued_at_ms + 2);
    let (status, answer) = apply(nodes[1], &bob.sign_route(&again).unwrap()).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("already deleted")
    );
    let unknown = RouteSpec::tombstone("nowhere", now_ms());
    let (status, answer) = apply(nodes[1], &bob.sign_route(&unknown).unwrap()).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("does not exist"));

    let v2 = route("shop", "web-v2", v1.issued_at_ms + 3);
    let (status, answer) = apply(nodes[1], &alice.sign_route(&v2).unwrap()).await;
    assert_eq!((status, &answer["result"]), (201, &Value::from("created")));
    wait_in_force(&all, &v2).await;

    mesh.stop().await;
}
