//! Services whose backends speak TLS (`tls = true`): real nodes, real
//! certificates of a CA of the backends' own (`shoal_tests::backend_tls`), and
//! backends that choose HTTP/2 or HTTP/1.1 by ALPN. The serving node verifies
//! the backend's certificate for the service's `tls_server_name`, health-checks
//! it over TLS, sends a WebSocket on a connection of its own in HTTP/1.1,
//! refuses a backend whose certificate names another host, and presents the
//! service's client certificate to a backend that requires one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use shoal_tests::backend_tls::BackendCa;
use shoal_tests::cluster::Cluster;
use shoal_tests::grpc::GrpcEcho;
use shoal_tests::web::WebApp;
use shoal_tests::{Check, NodeSpec, get};
use tokio::net::TcpStream;

/// `spec`'s service `service` speaks HTTP over TLS, trusting `ca`, with the
/// certificate name `server_name` (default: the address's IP).
fn over_tls(spec: NodeSpec, service: &str, ca: &Path, server_name: Option<&str>) -> NodeSpec {
    let ca = ca.to_path_buf();
    let server_name = server_name.map(str::to_string);
    let service = service.to_string();
    spec.tweak(move |raw| {
        let svc = raw
            .services
            .iter_mut()
            .find(|s| s.name.as_deref() == Some(service.as_str()))
            .unwrap();
        svc.protocol = Some("http".into());
        svc.tls = Some(true);
        svc.tls_ca = Some(ca.clone());
        svc.tls_server_name = server_name.clone();
    })
}

/// Node `a` (serving `services`) and `c`, with an HTTP listener for each of
/// them named after it; returned once `c` sees each one healthy.
async fn called_by_c(a: NodeSpec, services: [&str; 3]) -> Cluster {
    let c = services
        .iter()
        .fold(NodeSpec::new("c"), |c, s| c.http_listener(s, Some(s)));
    let mesh = Cluster::of([a, c]).start().await;
    for service in services {
        mesh.wait_healthy("c", service, 1).await;
    }
    mesh
}

/// `a` counted a refusal by the backend of `service`.
async fn assert_backend_refused(mesh: &Cluster, service: &str) {
    let refused = mesh["a"]
        .metric(&format!(
            "shoal_inbound_refusals_total{{service=\"{service}\",reason=\"backend_refused\"}}"
        ))
        .await;
    assert!(
        refused >= 1.0,
        "{service}: the refusal is counted: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_backend_is_verified_health_checked_and_chooses_http2_by_alpn() {
    let ca = BackendCa::new();
    let app = WebApp::start_tls(
        "secure",
        ca.server_config(&["127.0.0.1"], &[b"h2", b"http/1.1"]),
    )
    .await;
    let a = NodeSpec::new("a")
        .service("web", app.addr(), Check::Http)
        .http_listener("local", Some("web"));
    let mesh = Cluster::of([
        over_tls(a, "web", &ca.ca_file(), None),
        NodeSpec::new("c").http_listener("web", Some("web")),
    ])
    .start()
    .await;
    // Healthy only if the HTTP health check got through TLS.
    mesh.wait_healthy("c", "web", 1).await;

    for (via, listener) in [
        ("mesh", mesh["c"].listener("web")),
        ("local", mesh["a"].listener("local")),
    ] {
        for _ in 0..3 {
            let r = get(listener, "shop.example", "/hello").await;
            assert_eq!(r.status, 200, "{via}: {}", r.body);
            let echo = r.json();
            assert_eq!(echo["backend"], "secure");
            assert_eq!(echo["version"], "HTTP/2.0", "{via}: ALPN chose h2");
            assert_eq!(echo["path"], "/hello");
        }
    }
    assert_eq!(
        app.connections(),
        1,
        "one shared HTTP/2 connection carried every request"
    );

    // A WebSocket cannot ride HTTP/2 as the mesh relays it: it gets an
    // HTTP/1.1 connection of its own, over TLS too.
    let stream = TcpStream::connect(mesh["c"].listener("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.example/ws", stream)
        .await
        .expect("the WebSocket handshake goes through");
    assert_eq!(resp.status(), 101);
    shoal_tests::web::ws_round_trips(&mut ws, 5).await;
    ws.close(None).await.unwrap();
    assert_eq!(
        app.connections(),
        2,
        "the WebSocket had a connection of its own"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_tls_backend_is_reached_and_one_with_a_wrong_name_or_ca_is_refused() {
    let ca = BackendCa::new();
    let plain_old =
        WebApp::start_tls("old", ca.server_config(&["old.internal"], &[b"http/1.1"])).await;
    let impostor = WebApp::start_tls(
        "impostor",
        ca.server_config(&["impostor.internal"], &[b"h2", b"http/1.1"]),
    )
    .await;
    let a = over_tls(
        NodeSpec::new("a").service("old", plain_old.addr(), Check::Tcp),
        "old",
        &ca.ca_file(),
        Some("old.internal"),
    );
    let a = over_tls(
        a.service("bank", impostor.addr(), Check::Tcp),
        "bank",
        &ca.ca_file(),
        Some("bank.internal"),
    );
    let other_ca = BackendCa::new();
    let forger = WebApp::start_tls(
        "forger",
        other_ca.server_config(&["vault.internal"], &[b"http/1.1"]),
    )
    .await;
    let a = over_tls(
        a.service("vault", forger.addr(), Check::Tcp),
        "vault",
        &ca.ca_file(),
        Some("vault.internal"),
    );
    let mesh = called_by_c(a, ["old", "bank", "vault"]).await;

    for _ in 0..3 {
        let r = get(mesh["c"].listener("old"), "old.example", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()["version"],
            "HTTP/1.1",
            "the backend offered only HTTP/1.1"
        );
    }
    assert_eq!(plain_old.connections(), 1, "keep-alive over TLS");

    // bank: its TCP port answers, but its certificate is not bank.internal's;
    // vault: the right name, but signed by a CA the service does not trust.
    for (service, app) in [("bank", &impostor), ("vault", &forger)] {
        let r = get(mesh["c"].listener(service), "x.example", "/").await;
        assert_eq!(r.status, 503, "{service}: {}", r.body);
        assert_eq!(app.requests(), 0, "{service}: nothing was sent to it");
        assert_backend_refused(&mesh, service).await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reaches_a_tls_backend_that_speaks_only_http2() {
    let ca = BackendCa::new();
    let backend = GrpcEcho::start_tls(ca.server_config(&["grpc.internal"], &[b"h2"])).await;
    let a = over_tls(
        NodeSpec::new("a").service("grpc", backend.addr(), Check::Http),
        "grpc",
        &ca.ca_file(),
        Some("grpc.internal"),
    );
    let mesh = Cluster::of([a, NodeSpec::new("c").http_listener("grpc", Some("grpc"))])
        .start()
        .await;
    // Healthy only if the HTTP health check spoke HTTP/2 over TLS.
    mesh.wait_healthy("c", "grpc", 1).await;
    let mut sender =
        shoal_tests::grpc::h2_client::<http_body_util::Full<Bytes>>(mesh["c"].listener("grpc"))
            .await;
    let message = shoal_tests::grpc::message("hello");
    let req = hyper::Request::post("http://grpc.example/echo.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(message.clone()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), message);
    assert!(
        backend.connections() >= 1,
        "the pooled connection spoke HTTP/2 over TLS"
    );
    mesh.stop().await;
}

/// `spec`'s service `service` presents the client certificate in `cert` and
/// `key` to its backend.
fn with_client_cert(spec: NodeSpec, service: &str, (cert, key): (PathBuf, PathBuf)) -> NodeSpec {
    let service = service.to_string();
    spec.tweak(move |raw| {
        let svc = raw
            .services
            .iter_mut()
            .find(|s| s.name.as_deref() == Some(service.as_str()))
            .unwrap();
        svc.tls_cert = Some(cert.clone());
        svc.tls_key = Some(key.clone());
    })
}

/// Mutual TLS to the backend: one backend that requires a client certificate
/// of its CA serves three services of node `a`. `paid` presents one of that
/// CA (its health check too: it is checked over HTTP); `anon` presents none
/// and `stray` one of another CA: the backend refuses both, the caller is
/// told why, and no request of theirs reaches it; a reload that gives `anon`
/// a certificate of the right CA takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_requires_a_client_certificate_gets_the_services_own() {
    let ca = BackendCa::new();
    let strict = WebApp::start_tls(
        "strict",
        ca.server_config_for_clients(&["strict.internal"], &[b"h2", b"http/1.1"]),
    )
    .await;
    let tls = |spec: NodeSpec, service: &str| {
        over_tls(spec, service, &ca.ca_file(), Some("strict.internal"))
    };
    let a = NodeSpec::new("a")
        .service("paid", strict.addr(), Check::Http)
        .service("anon", strict.addr(), Check::Tcp)
        .service("stray", strict.addr(), Check::Tcp);
    let a = tls(tls(tls(a, "paid"), "anon"), "stray");
    let a = with_client_cert(a, "paid", ca.client_identity("node-a"));
    let other_ca = BackendCa::new();
    let a = with_client_cert(a, "stray", other_ca.client_identity("node-a"));
    // `paid` is healthy only if its HTTP health check presented the certificate.
    let mesh = called_by_c(a, ["paid", "anon", "stray"]).await;
    for _ in 0..3 {
        let r = get(mesh["c"].listener("paid"), "paid.example", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["backend"], "strict");
    }
    let served = strict.requests();
    assert!(served >= 3, "{served}");

    // Refused in the handshake's last step, which TLS 1.3 leaves until after
    // the client has finished its side: the serving node reads the alert as
    // the first answer to its request, knows nothing was forwarded, and says
    // so (a caller could retry elsewhere, even a POST).
    for service in ["anon", "stray"] {
        let r = get(mesh["c"].listener(service), "x.example", "/").await;
        assert_eq!(r.status, 503, "{service}: {}", r.body);
        assert!(
            r.body
                .contains("refused this node's TLS client certificate"),
            "{service}: {}",
            r.body
        );
        assert_backend_refused(&mesh, service).await;
    }
    assert_eq!(
        strict.requests(),
        served,
        "nothing of anon or stray reached it"
    );

    // A reload that gives `anon` a certificate of the backend's CA applies.
    let a = &mesh["a"];
    let mut raw = a.spec.raw_config(&a.cert_dir, a.data_dir.path());
    let (cert, key) = ca.client_identity("node-a-anon");
    let anon = raw
        .services
        .iter_mut()
        .find(|s| s.name.as_deref() == Some("anon"))
        .unwrap();
    (anon.tls_cert, anon.tls_key) = (Some(cert), Some(key));
    let config = shoal_node::config::Config::validate(raw, a.data_dir.path()).unwrap();
    let report = a.node.reload(config).await;
    assert_eq!(report.applied, ["service anon changed"], "{report:?}");
    let r = get(mesh["c"].listener("anon"), "anon.example", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    mesh.stop().await;
}
