//! HTTP routing by route documents, end to end: documents signed with a real
//! operator key are applied through one node's admin API, spread by gossip, and
//! steer real requests on other nodes — path and header routing, weighted splits,
//! session persistence, retries, authorization.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body_util::Full;
use mesh_proto::route::RouteSpec;
use shoal_node::routes::ApplyRequest;
use shoal_pki::{OperatorKey, Validity};
use shoal_tests::cluster::Cluster;
use shoal_tests::web::WebApp;
use shoal_tests::{
    Check, NodeSpec, Pki, Reply, TcpBackend, TestNode, eventually, get, http_send, http_send_body,
    request,
};
use std::collections::HashMap;
use std::time::Duration;

fn operator(pki: &Pki) -> OperatorKey {
    let issued = pki
        .ca
        .issue_operator("alice", Validity::days_from_now(5).unwrap())
        .unwrap();
    OperatorKey::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Signs `spec` (with `issued_at_ms` now) and applies it through `node`'s admin
/// API, then waits until every node in `all` routes by it.
async fn apply(node: &TestNode, op: &OperatorKey, mut spec: serde_json::Value, all: &[&TestNode]) {
    spec["issued_at_ms"] = now_ms().into();
    let spec: RouteSpec = serde_json::from_value(spec).unwrap();
    let signed = op.sign_route(&spec).unwrap();
    let body = serde_json::to_vec(&ApplyRequest::new(&signed)).unwrap();
    let r = http_send(
        node.admin(),
        request("POST", "localhost", "/routes")
            .header("content-type", "application/json")
            .body(Full::from(body))
            .unwrap(),
    )
    .await;
    assert!(r.status < 300, "apply refused: {} {}", r.status, r.body);
    for n in all {
        eventually(
            &format!("{} routes by {}", n.spec.name, spec.name),
            || async {
                n.node
                    .routes()
                    .get(&spec.name)
                    .is_some_and(|s| s.issued_at_ms == spec.issued_at_ms)
            },
        )
        .await;
    }
}

/// A cluster of backend nodes, each service of each node backed by its own
/// [`WebApp`] (`service@node`), and a caller node `edge` (its own spec) that
/// sees every endpoint healthy. Derefs to the [`Cluster`].
struct Mesh {
    cluster: Cluster,
    _apps: Vec<WebApp>,
}

async fn mesh(hosts: &[(&str, &[&str])], edge: NodeSpec) -> Mesh {
    let mut specs = Vec::new();
    let mut apps = Vec::new();
    let mut expected: HashMap<String, usize> = HashMap::new();
    for (node, services) in hosts {
        let mut spec = NodeSpec::new(node);
        for svc in *services {
            let app = WebApp::start(&format!("{svc}@{node}")).await;
            spec = spec.service(svc, app.addr(), Check::Http);
            apps.push(app);
            *expected.entry(svc.to_string()).or_default() += 1;
        }
        specs.push(spec);
    }
    specs.push(edge);
    let cluster = Cluster::of(specs).start().await;
    for (svc, n) in &expected {
        cluster.wait_healthy("edge", svc, *n).await;
    }
    Mesh {
        cluster,
        _apps: apps,
    }
}

impl Mesh {
    fn all(&self) -> Vec<&TestNode> {
        self.cluster.nodes().collect()
    }
}

impl std::ops::Deref for Mesh {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

/// The last listener ejects no endpoint (1,000 failures in a row would be
/// needed), so a failing one stays in rotation.
fn never_ejected(raw: &mut shoal_node::config::RawConfig) {
    raw.listeners.last_mut().unwrap().outlier = Some(shoal_node::config::RawOutlier {
        consecutive_failures: Some(1000),
        ..Default::default()
    });
}

fn backend(r: &Reply) -> String {
    r.header("x-backend").unwrap_or("-").to_string()
}

#[tokio::test]
async fn path_and_header_rules_pick_the_service() {
    let m = mesh(
        &[("n1", &["web", "api"]), ("n2", &["canary"])],
        NodeSpec::new("edge").http_listener("web", None),
    )
    .await;
    let op = operator(&m.pki);
    apply(
        &m["n1"],
        &op,
        serde_json::json!({
            "name": "shop",
            "hosts": ["shop.example"],
            "rules": [
                {"match": {"path_prefix": "/api", "headers": {"x-canary": "1"}},
                 "backends": [{"service": "canary"}]},
                {"match": {"path_prefix": "/api"}, "backends": [{"service": "api"}],
                 "request_headers": {"add": {"x-via": "shoal"}},
                 "response_headers": {"add": {"x-route": "shop"}}},
                {"backends": [{"service": "web"}]}
            ]
        }),
        &m.all(),
    )
    .await;
    let l = m["edge"].listener("web");
    let r = get(l, "shop.example", "/api/items").await;
    assert_eq!(backend(&r), "api@n1");
    assert_eq!(r.json()["headers"]["x-via"], "shoal");
    assert_eq!(r.header("x-route"), Some("shop"));
    let r = get(l, "shop.example:8080", "/").await;
    assert_eq!(backend(&r), "web@n1");
    let r = get(l, "shop.example", "/apiary").await;
    assert_eq!(backend(&r), "web@n1", "prefixes match whole segments");
    // Other spellings of a path match the rule its normalised form matches, and
    // the backend gets the normalised path; ambiguous ones are refused.
    for spelling in ["/%61pi/items", "//api//items", "/api;v=1/items"] {
        let r = get(l, "shop.example", spelling).await;
        assert_eq!(backend(&r), "api@n1", "{spelling}");
    }
    let r = get(l, "shop.example", "/%61pi//items").await;
    assert_eq!(r.json()["path"], "/api/items");
    for ambiguous in ["/web/..%2Fapi", "/web/%2e%2e/api", "/web%5capi"] {
        let r = get(l, "shop.example", ambiguous).await;
        assert_eq!(r.status, 400, "{ambiguous}: {}", r.body);
    }
    let r = http_send(
        l,
        request("GET", "shop.example", "/api/x")
            .header("x-canary", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(backend(&r), "canary@n2");
    let r = get(l, "other.example", "/api").await;
    assert_eq!(r.status, 404, "{}", r.body);
    // Per-route metrics.
    assert!(
        m["edge"]
            .metric("shoal_http_requests_total{listener=\"web\",route=\"shop\",service=\"api\",class=\"2xx\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn weighted_split_holds_within_five_percent() {
    let m = mesh(
        &[("n1", &["v1"]), ("n2", &["v2"])],
        NodeSpec::new("edge").http_listener("web", None),
    )
    .await;
    let op = operator(&m.pki);
    apply(
        &m["n2"],
        &op,
        serde_json::json!({
            "name": "split",
            "rules": [{"backends": [{"service": "v1", "weight": 80}, {"service": "v2", "weight": 20}]}]
        }),
        &m.all(),
    )
    .await;
    let l = m["edge"].listener("web");
    let mut v2 = 0usize;
    let total = 2000usize;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        tasks.spawn(async move {
            let mut hits = 0usize;
            for i in 0..total / 8 {
                let r = get(l, "split.example", &format!("/{worker}/{i}")).await;
                assert_eq!(r.status, 200, "{}", r.body);
                if backend(&r) == "v2@n2" {
                    hits += 1;
                }
            }
            hits
        });
    }
    while let Some(h) = tasks.join_next().await {
        v2 += h.unwrap();
    }
    let share = v2 as f64 / total as f64;
    assert!(
        (0.15..=0.25).contains(&share),
        "v2 got {v2} of {total} requests ({:.1}%), expected 20% ± 5",
        share * 100.0
    );
}

#[tokio::test]
async fn a_route_applied_on_one_node_steers_requests_on_another() {
    let m = mesh(
        &[("n1", &["old", "new"])],
        NodeSpec::new("edge").http_listener("web", Some("old")),
    )
    .await;
    let op = operator(&m.pki);
    let l = m["edge"].listener("web");
    assert_eq!(backend(&get(l, "app.example", "/").await), "old@n1");
    apply(
        &m["n1"],
        &op,
        serde_json::json!({"name": "app", "hosts": ["app.example"],
                           "rules": [{"backends": [{"service": "new"}]}]}),
        &m.all(),
    )
    .await;
    assert_eq!(backend(&get(l, "app.example", "/").await), "new@n1");
    assert_eq!(
        backend(&get(l, "else.example", "/").await),
        "old@n1",
        "other hosts still go to the default service"
    );
}

#[tokio::test]
async fn cookie_sessions_stick_and_move_when_their_endpoint_dies() {
    let mut m = mesh(
        &[("n1", &["cart"]), ("n2", &["cart"]), ("n3", &["cart"])],
        NodeSpec::new("edge").http_listener("web", None),
    )
    .await;
    let op = operator(&m.pki);
    apply(
        &m["n1"],
        &op,
        serde_json::json!({"name": "cart", "rules": [{"backends": [{"service": "cart"}],
            "session": {"type": "cookie", "name": "sid", "ttl_s": 600}}]}),
        &m.all(),
    )
    .await;
    let l = m["edge"].listener("web");
    let first = get(l, "cart.example", "/").await;
    let set = first
        .header("set-cookie")
        .expect("the first response pins a session");
    assert!(
        set.starts_with("sid=") && set.contains("HttpOnly") && set.contains("Max-Age=600"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(
        !cookie.contains("n1") && !cookie.contains("127.0.0.1"),
        "opaque: {cookie}"
    );
    let pinned = backend(&first);
    for i in 0..100 {
        let r = http_send(
            l,
            request("GET", "cart.example", &format!("/item/{i}"))
                .header("cookie", format!("theme=dark; {cookie}"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(backend(&r), pinned, "request {i} left its session");
        assert!(
            r.header("set-cookie").is_none(),
            "no new cookie while pinned"
        );
    }

    // Kill the pinned endpoint's node: the next request succeeds elsewhere and
    // carries a new cookie.
    let node = pinned.split('@').nth(1).unwrap().to_string();
    m.kill(&node).await;
    let r = http_send(
        l,
        request("GET", "cart.example", "/after")
            .header("cookie", cookie.clone())
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let moved = backend(&r);
    assert_ne!(moved, pinned);
    let new_cookie = r.header("set-cookie").expect("re-pinned with a new cookie");
    assert_ne!(new_cookie.split(';').next().unwrap(), cookie);
    let again = http_send(
        l,
        request("GET", "cart.example", "/again")
            .header("cookie", new_cookie.split(';').next().unwrap())
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(backend(&again), moved);
}

#[tokio::test]
async fn header_hashing_keeps_sessions_and_moves_few_when_an_endpoint_goes() {
    let mut m = mesh(
        &[
            ("n1", &["s"]),
            ("n2", &["s"]),
            ("n3", &["s"]),
            ("n4", &["s"]),
        ],
        NodeSpec::new("edge").http_listener("web", None),
    )
    .await;
    let op = operator(&m.pki);
    apply(
        &m["n1"],
        &op,
        serde_json::json!({"name": "s", "rules": [{"backends": [{"service": "s"}],
            "session": {"type": "header", "name": "x-session-id"}}]}),
        &m.all(),
    )
    .await;
    let l = m["edge"].listener("web");
    let ask = |id: usize| async move {
        let r = http_send(
            l,
            request("GET", "s.example", "/")
                .header("x-session-id", format!("user-{id}"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        backend(&r)
    };
    let mut before = HashMap::new();
    for id in 0..200 {
        let b = ask(id).await;
        assert_eq!(ask(id).await, b, "session {id} is stable");
        before.insert(id, b);
    }
    let used: std::collections::HashSet<_> = before.values().collect();
    assert!(
        used.len() >= 3,
        "sessions spread over the endpoints: {used:?}"
    );

    // Remove n4 gracefully; only its sessions move.
    m.shut_down("n4").await;
    eventually("edge forgets n4", || async {
        m["edge"].healthy_endpoints("s") == 3
    })
    .await;
    let mut moved = 0;
    for id in 0..200 {
        let now = ask(id).await;
        if now != before[&id] {
            moved += 1;
            assert_eq!(before[&id], "s@n4", "session {id} moved without need");
        }
    }
    let on_n4 = before.values().filter(|b| *b == "s@n4").count();
    assert_eq!(moved, on_n4);
}

#[tokio::test]
async fn gets_are_retried_after_a_reset_posts_only_when_the_route_says_so() {
    // n1's backend resets every connection; n2's answers.
    let resetter = TcpBackend::resetter().await;
    let app = WebApp::start("ok@n2").await;
    let mesh = Cluster::of([
        NodeSpec::new("n1").service("flaky", resetter.addr(), Check::Tcp),
        NodeSpec::new("n2").service("flaky", app.addr(), Check::Http),
        NodeSpec::new("edge")
            .http_listener("web", None)
            // Keep the resetting endpoint in rotation for this test.
            .tweak(never_ejected),
    ])
    .start()
    .await;
    mesh.wait_healthy("edge", "flaky", 2).await;
    let op = operator(&mesh.pki);
    let (n1, n2, edge) = (&mesh["n1"], &mesh["n2"], &mesh["edge"]);
    let all = [n1, n2, edge];
    apply(
        n1,
        &op,
        serde_json::json!({"name": "flaky", "rules": [{"backends": [{"service": "flaky"}],
            "retry": {"on": ["reset", "5xx"], "attempts": 2}}]}),
        &all,
    )
    .await;
    let l = edge.listener("web");
    for i in 0..20 {
        let r = get(l, "f.example", &format!("/get/{i}")).await;
        assert_eq!(r.status, 200, "GET {i}: {}", r.body);
        assert_eq!(backend(&r), "ok@n2");
    }
    let retries = edge
        .metric("shoal_http_retries_total{listener=\"web\",route=\"flaky\",service=\"flaky\",reason=\"reset\"}")
        .await;
    assert!(
        retries >= 5.0,
        "round robin sent GETs to the resetter first: {retries}"
    );

    // POSTs are not retried after they were sent.
    let retry_metric =
        "shoal_http_retries_total{listener=\"web\",route=\"flaky\",service=\"flaky\"";
    let retries_before = edge.metric(retry_metric).await;
    let mut failed = 0;
    for i in 0..20 {
        let r = http_send(
            l,
            request("POST", "f.example", &format!("/post/{i}"))
                .body(Full::from("payload"))
                .unwrap(),
        )
        .await;
        if r.status == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    assert!(
        failed >= 5,
        "round robin sent POSTs to the resetter: {failed}"
    );
    assert_eq!(
        edge.metric(retry_metric).await,
        retries_before,
        "no POST was retried"
    );

    // Unless the route says all methods may be retried.
    apply(
        n2,
        &op,
        serde_json::json!({"name": "flaky", "rules": [{"backends": [{"service": "flaky"}],
            "retry": {"on": ["reset"], "attempts": 2, "all_methods": true}}]}),
        &all,
    )
    .await;
    for i in 0..20 {
        let r = http_send(
            l,
            request("POST", "f.example", &format!("/post-retried/{i}"))
                .body(Full::from("payload"))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.body);
    }

    // A route that lists only `5xx` does not retry resets, even of GETs.
    apply(
        n1,
        &op,
        serde_json::json!({"name": "flaky", "rules": [{"backends": [{"service": "flaky"}],
            "retry": {"on": ["5xx"], "attempts": 2}}]}),
        &all,
    )
    .await;
    let reset_retries = edge
        .metric("shoal_http_retries_total{listener=\"web\",route=\"flaky\",service=\"flaky\",reason=\"reset\"}")
        .await;
    let mut failed = 0;
    for i in 0..20 {
        let r = get(l, "f.example", &format!("/get-5xx-only/{i}")).await;
        if r.status == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    assert!(
        failed >= 5,
        "round robin sent GETs to the resetter: {failed}"
    );
    assert_eq!(
        edge.metric("shoal_http_retries_total{listener=\"web\",route=\"flaky\",service=\"flaky\",reason=\"reset\"}")
            .await,
        reset_retries,
        "resets are not retried when only 5xx is listed"
    );
}

/// A serving node that could not hand a request to its backend says so
/// ("not forwarded"), and the caller sends the request elsewhere whatever its
/// method — with its whole streamed body, which it kept while it was small.
/// (That a POST reset *after* it was forwarded is not retried is the test
/// above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_serving_node_did_not_forward_is_sent_elsewhere_with_its_body() {
    // n1's backend is gone, and its health check (every minute) has not
    // noticed: n1 still advertises the service.
    let mut gone = TcpBackend::start().await;
    let app = WebApp::start("ok@n2").await;
    let slow_checks = |raw: &mut shoal_node::config::RawConfig| {
        for s in &mut raw.services {
            let h = s.health.as_mut().unwrap();
            h.interval = Some(Duration::from_secs(60));
        }
    };
    let mesh = Cluster::of([
        NodeSpec::new("n1")
            .service("up", gone.addr(), Check::Tcp)
            .tweak(slow_checks),
        NodeSpec::new("n2")
            .service("up", app.addr(), Check::Http)
            .tweak(slow_checks),
        NodeSpec::new("edge")
            .http_listener("web", Some("up"))
            // Keep n1 in rotation: every request meets it first or second.
            .tweak(never_ejected),
    ])
    .start()
    .await;
    mesh.wait_healthy("edge", "up", 2).await;
    gone.stop().await;
    let (n1, edge) = (&mesh["n1"], &mesh["edge"]);
    let l = edge.listener("web");
    for i in 0..20 {
        // 5,000 bytes in chunks: a streamed body, not one kept for replays.
        let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0
            ..5)
            .map(|_| {
                Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                    b'x';
                    1000
                ])))
            })
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let r = http_send_body(l, request("POST", "up", "/upload").body(body).unwrap()).await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.body);
        assert_eq!(r.body, "5000", "POST {i}: the whole body arrived");
        assert_eq!(backend(&r), "ok@n2");
    }
    let not_forwarded = n1
        .metric("shoal_inbound_refusals_total{service=\"up\",reason=\"backend_refused\"}")
        .await;
    assert!(
        not_forwarded >= 5.0,
        "round robin sent POSTs to n1: {not_forwarded}"
    );
    let retried = edge
        .metric("shoal_http_retries_total{listener=\"web\",route=\"-\",service=\"up\",reason=\"connect_failure\"}")
        .await;
    assert_eq!(retried, not_forwarded, "each one sent elsewhere");
    mesh.stop().await;
}

#[tokio::test]
async fn routes_refuse_callers_outside_their_allow_list() {
    let app = WebApp::start("pay@n1").await;
    // `edge` acts for service `web` (its certificate names it); `other` for nobody.
    let web_app = WebApp::start("web@edge").await;
    let mesh = Cluster::of([
        NodeSpec::new("n1").service("payments", app.addr(), Check::Http),
        NodeSpec::new("edge")
            .service("web", web_app.addr(), Check::Http)
            .http_listener("as-web", None)
            .http_listener("anonymous", None)
            .tweak(|raw| {
                let n = raw.listeners.len();
                raw.listeners[n - 2].source_service = Some("web".into());
            }),
    ])
    .start()
    .await;
    mesh.wait_healthy("edge", "payments", 1).await;
    let op = operator(&mesh.pki);
    let (n1, edge) = (&mesh["n1"], &mesh["edge"]);
    apply(
        n1,
        &op,
        serde_json::json!({"name": "pay", "rules": [{"backends": [{"service": "payments"}],
            "allow_services": ["web"]}]}),
        &[n1, edge],
    )
    .await;
    let r = get(edge.listener("as-web"), "pay.example", "/charge").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(edge.listener("anonymous"), "pay.example", "/charge").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("route pay does not allow"), "{}", r.body);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn per_try_and_overall_timeouts_answer_504() {
    let m = mesh(
        &[("n1", &["slow"]), ("n2", &["slow"])],
        NodeSpec::new("edge").http_listener("web", None),
    )
    .await;
    let op = operator(&m.pki);
    apply(
        &m["n1"],
        &op,
        serde_json::json!({"name": "slow", "rules": [{"backends": [{"service": "slow"}],
            "timeout_ms": 1500, "per_try_timeout_ms": 300,
            "retry": {"on": ["5xx"], "attempts": 3}}]}),
        &m.all(),
    )
    .await;
    let l = m["edge"].listener("web");
    // Fast enough: one try.
    let r = get(l, "slow.example", "/slow/10").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Every try times out: three tries of 300 ms, then 504.
    let r = get(l, "slow.example", "/slow/5000").await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("did not answer within 300ms"), "{}", r.body);
    assert_eq!(r.header("x-shoal-error"), Some("1"));
    let timeouts = m["edge"]
        .metric("shoal_http_retries_total{listener=\"web\",route=\"slow\",service=\"slow\",reason=\"timeout\"}")
        .await;
    // The two tries after the first are retries, or (on a machine so busy
    // that a live peer's acknowledgement arrives late) one of them a hedge:
    // either way counted.
    let hedges = m["edge"]
        .metric("shoal_hedged_attempts_total{listener=\"web\"}")
        .await;
    assert_eq!(
        timeouts + hedges,
        2.0,
        "two tries after the first timed out: {timeouts} retries, {hedges} hedges"
    );
}

/// The section of docs/routing.md that opens with "## A first route".
fn first_route_section() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/routing.md"))
        .unwrap();
    let start = doc.find("## A first route").expect("the section");
    let end = doc[start..].find("\n## ").map_or(doc.len(), |e| start + e);
    doc[start..end].to_string()
}

/// docs/routing.md's first example, run as written on a mesh like the
/// quickstart's (`web` on two nodes, a caller with a TCP listener): the HTTP
/// listener its `printf` adds is taken by a config reload, its route document
/// is applied, and its requests behave as the page says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_example_of_the_routing_page_runs_on_the_quickstart_mesh() {
    let section = first_route_section();
    let printf = section
        .lines()
        .find(|l| l.starts_with("printf '"))
        .expect("the listener the page adds");
    let listener_toml = printf
        .trim_start_matches("printf '")
        .split('\'')
        .next()
        .unwrap()
        .replace("\\n", "\n");
    // The page's port, bound here as port 0 so no test depends on 9080 being free.
    assert!(
        listener_toml.contains("bind = \"127.0.0.1:9080\""),
        "{listener_toml}"
    );
    let listener_toml = listener_toml.replace("127.0.0.1:9080", "127.0.0.1:0");
    let route_toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the route document");

    let m = mesh(
        &[("node-1", &["web"]), ("node-2", &["web"])],
        NodeSpec::new("edge").listener("web", "web", "round_robin"),
    )
    .await;
    let edge = &m["edge"];
    let mut raw = edge.spec.raw_config(&edge.cert_dir, edge.data_dir.path());
    let added = shoal_node::config::RawConfig::from_toml(&listener_toml).unwrap();
    raw.listeners.extend(added.listeners);
    let config = shoal_node::config::Config::validate(raw, edge.data_dir.path()).unwrap();
    let report = edge.node.reload(config).await;
    assert_eq!(report.applied, ["listener http added"], "{report:?}");
    let http = report.listening["http"];

    let mut route: serde_json::Value = toml::from_str(route_toml).unwrap();
    shoal_node::routes::durations_as_written(&mut route).unwrap();
    apply(&m["node-1"], &operator(&m.pki), route, &m.all()).await;
    let first = get(http, "web.localhost", "/").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let cookie = first
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let r = http_send(
            http,
            request("GET", "web.localhost", "/")
                .header("cookie", &cookie)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(backend(&r), backend(&first), "the cookie keeps the session");
    }
    assert_eq!(get(http, "other.localhost", "/").await.status, 404);
    m.cluster.stop().await;
}
