//! Services whose backends speak TLS (`tls = true`): real nodes, real
//! certificates of a CA of the backends' own (`shoal_tests::backend_tls`), and
//! backends that choose HTTP/2 or HTTP/1.1 by ALPN. The serving node verifies
//! the backend's certificate for the service's `tls_server_name`, health-checks
//! it over TLS, sends a WebSocket on a connection of its own in HTTP/1.1, and
//! refuses a backend whose certificate names another host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
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
    let mesh = Cluster::of([
        a,
        NodeSpec::new("c")
            .http_listener("old", Some("old"))
            .http_listener("bank", Some("bank"))
            .http_listener("vault", Some("vault")),
    ])
    .start()
    .await;
    for service in ["old", "bank", "vault"] {
        mesh.wait_healthy("c", service, 1).await;
    }

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
