//! HTTP listeners through the mesh: real nodes with real certificates on
//! loopback, real HTTP/1.1, HTTP/2 and WebSocket clients, and application
//! backends (`shoal_tests::web::WebApp`) that say which of them answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use shoal_tests::cluster::Cluster;
use shoal_tests::web::WebApp;
use shoal_tests::{Check, NodeSpec, eventually, get, http_send, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node `a` hosting the service `web` with a [`WebApp`] backend `app-a`, and
/// a caller node `caller` (named `c`) that sees it healthy.
async fn web_mesh(caller: NodeSpec) -> (Cluster, WebApp) {
    let app = WebApp::start("app-a").await;
    let mesh = Cluster::of([
        NodeSpec::new("a").service("web", app.addr(), Check::Http),
        caller,
    ])
    .start()
    .await;
    mesh.wait_healthy("c", "web", 1).await;
    (mesh, app)
}

/// [`web_mesh`] with a caller `c` whose HTTP listeners are `web` (default
/// service `web`), `routes-only` (no default) and `ghost` (a service no node has).
async fn two_nodes() -> (Cluster, WebApp) {
    web_mesh(
        NodeSpec::new("c")
            .http_listener("web", Some("web"))
            .http_listener("routes-only", None)
            .http_listener("ghost", Some("ghost")),
    )
    .await
}

#[tokio::test]
async fn http1_requests_reach_the_default_service_with_a_request_id() {
    let (mesh, app) = two_nodes().await;
    let c = &mesh["c"];
    let listener = c.listener("web");

    let r = get(listener, "shop.example", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backend"), Some("app-a"));
    let echo = r.json();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["host"], "shop.example");
    let id = r.header("x-request-id").expect("a request id is returned");
    assert_eq!(id.len(), 32);
    assert_eq!(echo["headers"]["x-request-id"], id, "the id is forwarded");

    // A client's own request id is kept; hop-by-hop headers are not forwarded.
    let r = http_send(
        listener,
        request("GET", "shop.example", "/")
            .header("x-request-id", "client-id-7")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("x-end-to-end", "kept")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("client-id-7"));
    let echo = r.json();
    assert_eq!(echo["headers"]["x-request-id"], "client-id-7");
    assert_eq!(echo["headers"]["x-end-to-end"], "kept");
    assert!(echo["headers"].get("x-hop").is_none(), "{echo}");
    assert_eq!(app.requests(), 2);

    // Request metrics by route, service and status class.
    let m = c
        .metric(
            "shoal_http_requests_total{listener=\"web\",route=\"-\",service=\"web\",class=\"2xx\"}",
        )
        .await;
    assert_eq!(m, 2.0);
}

#[tokio::test]
async fn serving_nodes_reuse_keep_alive_connections_to_their_backend() {
    let (mut mesh, app) = two_nodes().await;
    let listener = mesh.client("c", "web");
    for i in 0..30 {
        let r = get(listener, "shop.example", &format!("/n/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(app.requests(), 30);
    // Each request crossed the mesh on its own stream, but the serving node
    // relayed them over pooled keep-alive connections to its backend.
    let metric = |connection: &str| {
        format!("shoal_inbound_http_requests_total{{service=\"web\",connection=\"{connection}\"}}")
    };
    let new = mesh["a"].metric(&metric("new")).await;
    let reused = mesh["a"].metric(&metric("reused")).await;
    assert_eq!(new + reused, 30.0);
    assert_eq!(
        new as usize,
        app.connections(),
        "new connections are counted"
    );
    assert!(
        app.connections() < 10,
        "30 sequential requests needed {} backend connections",
        app.connections()
    );

    // With `http_idle_timeout = "0s"` every request gets its own connection.
    let app0 = WebApp::start("app-0").await;
    mesh.add(
        NodeSpec::new("b")
            .service("solo", app0.addr(), Check::Http)
            .tweak(|raw| raw.services.last_mut().unwrap().http_idle_timeout = Some(Duration::ZERO)),
    )
    .await;
    mesh.add(NodeSpec::new("d").http_listener("solo", Some("solo")))
        .await;
    mesh.wait_healthy("d", "solo", 1).await;
    for i in 0..5 {
        let r = get(mesh.client("d", "solo"), "solo.example", &format!("/n/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(app0.connections(), 5);
    assert_eq!(
        mesh["b"]
            .metric("shoal_inbound_http_requests_total{service=\"solo\",connection=\"new\"}")
            .await,
        5.0
    );

    // A listener whose endpoint is on its own node reuses connections too.
    let app_l = WebApp::start("app-l").await;
    mesh.add(
        NodeSpec::new("e")
            .service("near", app_l.addr(), Check::Http)
            .http_listener("near", Some("near")),
    )
    .await;
    mesh.wait_healthy("e", "near", 1).await;
    for i in 0..20 {
        let r = get(mesh.client("e", "near"), "near.example", &format!("/n/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-backend"), Some("app-l"));
    }
    assert_eq!(app_l.requests(), 20);
    assert!(
        app_l.connections() < 10,
        "20 local requests needed {} backend connections",
        app_l.connections()
    );
}

#[tokio::test]
async fn http2_clients_are_served_through_the_mesh() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let mut sender = h2_client(c.listener("web")).await;
    // Several concurrent streams on one HTTP/2 connection.
    let mut replies = Vec::new();
    for i in 0..8 {
        let req = hyper::Request::get(format!("http://api.example/h2/{i}"))
            .body(Empty::new())
            .unwrap();
        replies.push(sender.send_request(req));
    }
    for (i, reply) in futures::future::join_all(replies)
        .await
        .into_iter()
        .enumerate()
    {
        let resp = reply.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["path"], format!("/h2/{i}"));
        assert_eq!(echo["headers"]["host"], "api.example", "{echo}");
    }
}

#[tokio::test]
async fn unmatched_requests_get_404_and_a_service_without_endpoints_503() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let r = get(c.listener("routes-only"), "nowhere.example", "/x").await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("no route matches nowhere.example/x"),
        "{}",
        r.body
    );
    assert!(r.header("x-request-id").is_some());

    let r = get(c.listener("ghost"), "g.example", "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("no endpoint of service \"ghost\" is available"),
        "{}",
        r.body
    );

    // Dot segments are refused before routing.
    let r = get(c.listener("web"), "shop.example", "/public/../admin").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn websocket_echo_through_the_mesh() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let stream = TcpStream::connect(c.listener("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.example/ws", stream)
        .await
        .expect("the WebSocket handshake goes through");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok()),
        Some("app-a")
    );
    shoal_tests::web::ws_round_trips(&mut ws, 20).await;
    let big = vec![7u8; 300_000];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone()))
        .await
        .unwrap();
    let echoed = ws.next().await.expect("an echo").unwrap();
    assert_eq!(echoed.into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// Reads what the server sends until it closes (bounded).
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_and_oversize_heads_get_4xx() {
    let (mesh, app) = two_nodes().await;
    let c = &mesh["c"];
    let listener = c.listener("web");

    let mut s = TcpStream::connect(listener).await.unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let mut s = TcpStream::connect(listener).await.unwrap();
    let huge = "a".repeat(100 * 1024);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    assert_eq!(app.requests(), 0, "nothing malformed reached the backend");
    let r = get(listener, "shop.example", "/after").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn slow_clients_are_cut_off_without_affecting_others() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let listener = c.listener("web");

    // Slowloris: a head that never completes, one byte at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(listener).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        let mut closed = 0;
        for _ in 0..100 {
            for s in &mut slow {
                if s.write_all(b"X").await.is_err() {
                    closed += 1;
                }
            }
            let mut all_closed = true;
            for s in &mut slow {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {}
                    _ => all_closed = false,
                }
            }
            if all_closed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = closed;
        false
    });

    // Meanwhile, other clients are served.
    for i in 0..20 {
        let r = get(listener, "shop.example", &format!("/ok/{i}")).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        trickle.await.unwrap(),
        "slow clients were not disconnected after the header timeout"
    );
    assert!(
        c.metric("shoal_http_requests_total").await >= 20.0,
        "the served requests were counted"
    );
}

/// A self-signed certificate for `name`, written as PEM into `dir`.
fn write_ingress_cert(
    dir: &std::path::Path,
    name: &str,
) -> rustls::pki_types::CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join("ingress.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("ingress.key"), cert.signing_key.serialize_pem()).unwrap();
    cert.cert.der().clone()
}

/// Connects with TLS (trusting only `root`), offering h2 and http/1.1; returns the
/// negotiated ALPN and the server's certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    name: &str,
    root: &rustls::pki_types::CertificateDer<'static>,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Option<Vec<u8>>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let presented = session.peer_certificates().unwrap()[0].clone();
    (tls, alpn, presented)
}

#[tokio::test]
async fn ingress_serves_its_own_certificate_with_alpn_and_reloads_it() {
    let files = tempfile::tempdir().unwrap();
    let first = write_ingress_cert(files.path(), "shop.example");
    let dir = files.path().to_path_buf();
    let (mesh, _app) = web_mesh(
        NodeSpec::new("c")
            .http_listener("public", Some("web"))
            .tweak(move |raw| {
                let l = raw.listeners.last_mut().unwrap();
                l.kind = Some("ingress".into());
                l.tls = Some(shoal_node::config::RawListenerTls {
                    cert: Some(dir.join("ingress.crt")),
                    key: Some(dir.join("ingress.key")),
                });
            }),
    )
    .await;
    let c = &mesh["c"];
    let listener = c.listener("public");

    // HTTP/2 by ALPN over the listener's own certificate.
    let (tls, alpn, presented) = tls_connect(listener, "shop.example", &first).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(presented, first);
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            hyper::Request::get("https://shop.example/secure")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");

    // New files and a reload: new handshakes get the new certificate.
    let second = write_ingress_cert(files.path(), "shop.example");
    assert_ne!(first, second);
    c.node.reload_tls().await.unwrap();
    let (_tls, _, presented) = tls_connect(listener, "shop.example", &second).await;
    assert_eq!(presented, second);
}

#[tokio::test]
async fn response_trailers_reach_an_http2_client() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let mut sender = h2_client(c.listener("web")).await;
    let resp = sender
        .send_request(
            hyper::Request::get("http://grpc.example/trailers")
                .header("te", "trailers")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "part one, part two");
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_with_what_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let target = path.to_string_lossy().to_string();
    let (mesh, _app) = web_mesh(
        NodeSpec::new("c")
            .http_listener("web", Some("web"))
            .tweak(move |raw| raw.listeners.last_mut().unwrap().access_log = Some(target.clone())),
    )
    .await;
    let c = &mesh["c"];
    let l = c.listener("web");

    // A streamed (chunked) download, an upload, and an error from the backend.
    let r = get(l, "shop.example", "/download/100000").await;
    assert_eq!(r.status, 200);
    let r = http_send(
        l,
        request("POST", "shop.example", "/upload")
            .body(Full::from(vec![7u8; 5000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.body, "5000");
    let r = get(l, "shop.example", "/status/503").await;
    assert_eq!(r.status, 503);

    let read = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
            .collect::<Vec<_>>()
    };
    eventually("three access-log lines are written", || async {
        read().len() == 3
    })
    .await;
    let lines = read();
    let (down, up, err) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(down["listener"], "web");
    assert_eq!(down["method"], "GET");
    assert_eq!(down["authority"], "shop.example");
    assert_eq!(down["path"], "/download/100000");
    assert_eq!(down["route"], "-");
    assert_eq!(down["service"], "web");
    assert_eq!(down["status"], 200);
    assert_eq!(down["upstream_node"], "a");
    assert_eq!(down["attempts"], 1);
    assert_eq!(down["request_bytes"], 0);
    assert_eq!(
        down["response_bytes"], 100_000,
        "bytes actually sent: {down}"
    );
    assert_eq!(down["complete"], true);
    assert_eq!(down["request_id"].as_str().unwrap().len(), 32);
    assert!(down["duration_ms"].as_f64().unwrap() >= down["head_ms"].as_f64().unwrap());
    assert!(down["time"].as_str().unwrap().ends_with('Z'), "{down}");
    assert_eq!(up["method"], "POST");
    assert_eq!(up["request_bytes"], 5000, "{up}");
    assert_eq!(up["response_bytes"], 4);
    assert_eq!(err["status"], 503);
    assert_eq!(err["complete"], true);

    // A client that goes away mid-download is logged with what it got.
    let mut raw = TcpStream::connect(l).await.unwrap();
    raw.write_all(b"GET /download/100000000 HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    let n = raw.read(&mut got).await.unwrap();
    assert!(n > 0);
    drop(raw);
    eventually("the cut-short download is logged", || async {
        read().len() == 4
    })
    .await;
    let cut = &read()[3];
    assert_eq!(cut["path"], "/download/100000000");
    assert_eq!(cut["complete"], false, "{cut}");
    assert!(
        cut["response_bytes"].as_u64().unwrap() < 100_000_000,
        "{cut}"
    );

    // An HTTP/2 client that cancels its request before the answer: logged as
    // 499 (client closed request) and counted.
    let mut h2 = h2_client(l).await;
    let req = hyper::Request::get("http://shop.example/slow/3000")
        .body(Empty::new())
        .unwrap();
    let pending = h2.send_request(req);
    let _ = tokio::time::timeout(Duration::from_millis(300), pending).await;
    eventually("the cancelled request is logged", || async {
        read().len() == 5
    })
    .await;
    let gone = &read()[4];
    assert_eq!(gone["path"], "/slow/3000");
    assert_eq!(gone["status"], 499, "{gone}");
    assert_eq!(gone["complete"], false);
    assert_eq!(
        c.metric(
            "shoal_http_requests_total{listener=\"web\",route=\"-\",service=\"web\",class=\"4xx\"}"
        )
        .await,
        1.0
    );
}

/// Waits (bounded) until the server closes `s`; panics if it does not.
async fn closed_by_server(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the server kept the connection open"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_idle_and_upgraded_connections_are_bounded() {
    let (mesh, _app) = web_mesh(NodeSpec::new("c").http_listener("web", Some("web")).tweak(
        |raw| {
            let l = raw.listeners.last_mut().unwrap();
            l.max_connections = Some(2);
            l.idle_timeout = Some(Duration::from_millis(500));
            // header_timeout is 1 s (the harness's HTTP listener default)
        },
    ))
    .await;
    let c = &mesh["c"];
    let l = c.listener("web");
    let failures = |reason: &str| {
        format!("shoal_listener_connection_failures_total{{listener=\"web\",reason=\"{reason}\"}}")
    };

    // A client that connects and sends nothing, and one that sends only the
    // HTTP/2 preface, are closed once header_timeout has passed without a request.
    let mut silent = TcpStream::connect(l).await.unwrap();
    let mut preface = TcpStream::connect(l).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut silent, "silent client").await;
    closed_by_server(&mut preface, "HTTP/2 preface only").await;
    assert_eq!(c.metric(&failures("header_timeout")).await, 2.0);

    // A keep-alive connection that served a request is closed once idle.
    let mut idle = TcpStream::connect(l).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = idle.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    closed_by_server(&mut idle, "idle keep-alive connection").await;

    // A WebSocket keeps its client connection's slot in max_connections (2 here)
    // while it is open, and is closed when idle.
    let ws_stream = TcpStream::connect(l).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.example/ws", ws_stream)
        .await
        .expect("the WebSocket handshake goes through");
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hi"
    );
    assert_eq!(
        c.metric("shoal_listener_active_connections{listener=\"web\"}")
            .await,
        1.0,
        "the upgraded connection still counts"
    );
    // The WebSocket goes quiet: it is closed after idle_timeout, and its slot
    // is free again.
    let ended = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("the idle WebSocket is closed");
    assert!(!matches!(
        ended,
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
    ));
    eventually("the WebSocket's slot is released", || async {
        c.metric("shoal_listener_active_connections{listener=\"web\"}")
            .await
            == 0.0
    })
    .await;
    let r = get(l, "shop.example", "/after").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn connect_tunnels_through_the_mesh() {
    let (mesh, _app) = two_nodes().await;
    let c = &mesh["c"];
    let mut s = TcpStream::connect(c.listener("web")).await.unwrap();
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n")
        .await
        .unwrap();
    // The response head, then the tunnel.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let want = b"db.internal:5432:ping";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("the echo through the tunnel")
        .unwrap();
    assert_eq!(&got, want);
}

/// A tunnelled HTTP exchange whose request body stalls holds the serving
/// node's slot only for the service's `idle_timeout`: the serving node drops
/// it, and the caller answers its client with an error instead of waiting for
/// its own (hour-long) timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_node_drops_an_http_exchange_idle_past_its_services_idle_timeout() {
    let app = WebApp::start("app-a").await;
    let hour = Duration::from_secs(3600);
    let mesh = Cluster::of([
        NodeSpec::new("a")
            .service("web", app.addr(), Check::Http)
            .tweak(|raw| {
                raw.services[0].idle_timeout = Some(Duration::from_millis(300));
                raw.services[0].response_timeout = Some(Duration::from_secs(2));
            }),
        NodeSpec::new("c")
            .http_listener("web", Some("web"))
            .tweak(move |raw| {
                raw.listeners[0].idle_timeout = Some(hour);
                raw.listeners[0].request_timeout = Some(hour);
            }),
    ])
    .start()
    .await;
    mesh.wait_healthy("c", "web", 1).await;
    let mut s = TcpStream::connect(mesh.client("c", "web")).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    // The body never comes: the client gets an error answer.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(shoal_tests::EVENTUALLY, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled exchange was ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 502"), "an error answer: {text}");
    let a = &mesh["a"];
    eventually("a frees the service's slot", || async {
        a.metric("shoal_inbound_active_streams{service=\"web\"}")
            .await
            == 0.0
    })
    .await;
    // A backend slow to answer (three idle timeouts) is not an idle stream: the
    // caller's deadline (its request_timeout, an hour) bounds that wait.
    let reply = get(mesh.client("c", "web"), "web", "/slow/900").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A backend that never answers holds the slot only for the service's
    // response_timeout (2 s), however long the caller's deadline (an hour).
    let reply = get(mesh.client("c", "web"), "web", "/slow/3600000").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    eventually("a frees the slot of the unanswered request", || async {
        a.metric("shoal_inbound_active_streams{service=\"web\"}")
            .await
            == 0.0
    })
    .await;
    mesh.stop().await;
}

/// A tunnelled HTTP request as a hostile caller might send it, right after a
/// valid stream header: each bad one resets its own stream and is counted;
/// nothing reaches the backend, and a good request on the same connection is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_parts_are_reset_without_harming_other_requests() {
    use mesh_proto::codec::{PROTOCOL_VERSION, encode};
    use mesh_proto::exchange::{Part, RequestHead, decode_part, encode_part};
    use mesh_proto::tunnel::{Protocol, RequestId, StreamHeader};
    use shoal_node::endpoint::Use;

    let app = WebApp::start("app-a").await;
    let mesh = Cluster::of([NodeSpec::new("a").service("web", app.addr(), Check::Http)])
        .start()
        .await;
    let a = &mesh["a"];
    let client = mesh.pki.endpoint("stranger", &[]).0;
    let conn = client
        .connect(a.node.bound().quic, Use::Tunnel, Some("a"))
        .await
        .unwrap();
    let header = encode(&StreamHeader {
        target_service: "web".into(),
        source_service: None,
        protocol: Protocol::Http,
        request_id: RequestId(9),
        deadline_ms: Some(5_000),
    })
    .unwrap();
    // A head whose header value smuggles a second line, encoded by hand
    // (an honest node refuses to encode it): "GET", "/", [("x", "a\r\nb")], no body.
    let mut smuggled = vec![1u8, PROTOCOL_VERSION, 0, 0, 0, 15];
    smuggled.extend_from_slice(&[3, b'G', b'E', b'T', 1, b'/', 1, 1, b'x']);
    smuggled.extend_from_slice(&[4, b'a', b'\r', b'\n', b'b', 0]);
    let mut data_first = bytes::BytesMut::new();
    encode_part(&Part::Data(Bytes::from_static(b"hi")), &mut data_first).unwrap();
    let bad: [&[u8]; 3] = [b"\x09garbage", &data_first, &smuggled];
    for part in bad {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&header).await.unwrap();
        send.write_all(part).await.unwrap();
        let _ = send.finish();
        let mut buf = [0u8; 64];
        let outcome = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf))
            .await
            .expect("the node answers a bad request promptly");
        assert!(
            matches!(outcome, Err(quinn::ReadError::Reset(_))),
            "a bad request resets its stream: {outcome:?}"
        );
    }
    let refused = a
        .metric("shoal_inbound_refusals_total{service=\"web\",reason=\"bad_request_head\"}")
        .await;
    assert_eq!(refused, 3.0);

    // A good request on the same connection.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut out = bytes::BytesMut::from(&header[..]);
    let head = RequestHead {
        method: "GET".into(),
        target: "/hello".into(),
        fields: mesh_proto::exchange::Fields(
            [(
                hyper::header::HOST,
                hyper::header::HeaderValue::from_static("web"),
            )]
            .into_iter()
            .collect(),
        ),
        has_body: false,
    };
    encode_part(&Part::RequestHead(head), &mut out).unwrap();
    send.write_all(&out).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(64 * 1024).await.unwrap();
    let mut answer = bytes::BytesMut::from(&answer[..]);
    match decode_part(&mut answer).unwrap() {
        Some(Part::ResponseHead(h)) => assert_eq!(h.status, 200),
        other => panic!("a response head, not {other:?}"),
    }
    assert_eq!(conn.close_reason(), None, "the connection survived");
    client.close();
    mesh.stop().await;
}

/// gRPC through the mesh: an HTTP/2 client calls the HTTP listener, the
/// request crosses the tunnel as parts, and the serving node speaks HTTP/2 to
/// a backend that speaks nothing else (`http2 = true`). A unary call and a
/// bidirectional stream — each message echoed before the next is sent, so
/// both bodies stream at once — end with the backend's trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_reach_an_http2_backend() {
    use shoal_tests::grpc::GrpcEcho;
    let backend = GrpcEcho::start().await;
    let mesh = Cluster::of([
        NodeSpec::new("a")
            .service("grpc", backend.addr(), Check::Tcp)
            .tweak(|raw| {
                raw.services[0].protocol = Some("http".into());
                raw.services[0].http2 = Some(true);
            }),
        NodeSpec::new("c").http_listener("grpc", Some("grpc")),
    ])
    .start()
    .await;
    mesh.wait_healthy("c", "grpc", 1).await;
    type Chunks = futures::channel::mpsc::UnboundedReceiver<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >;
    let mut sender = shoal_tests::grpc::h2_client::<http_body_util::StreamBody<Chunks>>(
        mesh["c"].listener("grpc"),
    )
    .await;
    let call = |path: &str, body| {
        hyper::Request::post(format!("http://grpc.example{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::StreamBody::new(body))
            .unwrap()
    };
    let message = shoal_tests::grpc::message;

    // Unary: one message, answered whole, then the trailers.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Ok(hyper::body::Frame::data(message("hello"))))
        .unwrap();
    drop(tx);
    let resp = sender
        .send_request(call("/echo.Echo/Unary", rx))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), message("hello"));

    // Streaming: each message comes back before the next one is sent.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Ok(hyper::body::Frame::data(message("one"))))
        .unwrap();
    let resp = sender
        .send_request(call("/echo.Echo/Stream", rx))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the answer begins before the request ends"
    );
    let mut body = resp.into_body();
    let mut next_data = async || loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the echo arrives")
            .expect("the body goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return data;
        }
    };
    assert_eq!(next_data().await, message("one"));
    tx.unbounded_send(Ok(hyper::body::Frame::data(message("two"))))
        .unwrap();
    assert_eq!(next_data().await, message("two"));
    drop(tx);
    let rest = body.collect().await.unwrap();
    let trailers = rest.trailers().cloned().expect("trailers end the stream");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-frames"], "2");
    assert!(
        backend.connections() >= 1,
        "the backend was spoken to in HTTP/2"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn whole_requests_end_their_streams_so_nothing_is_stopped_or_reset() {
    let (mesh, app) = two_nodes().await;
    let listener = mesh["c"].listener("web");

    // GETs (sent with the stream's header, hedge-able) and POSTs with small
    // bodies (sent once the stream is open), each answered in full.
    for i in 0..20 {
        let r = get(listener, "shop.example", &format!("/get/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let post = request("POST", "shop.example", "/upload")
            .body(Full::new(Bytes::from(vec![b'x'; 100 + i])))
            .unwrap();
        let r = http_send(listener, post).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, (100 + i).to_string());
    }
    assert_eq!(app.requests(), 40);

    // The caller ended each stream with its request, so the serving node had
    // no unread rest to refuse (STOP_SENDING) and the caller nothing to
    // abandon in answer (RESET_STREAM): one packet each way per exchange.
    let caller = mesh["c"].tunnel("a", true).await.expect("c dialled a");
    let serving = mesh["a"].tunnel("c", false).await.expect("a accepted c");
    for (who, c) in [("caller", &caller), ("serving node", &serving)] {
        assert_eq!(c.stop_sending_sent, 0, "{who}: {c:?}");
        assert_eq!(c.stop_sending_received, 0, "{who}: {c:?}");
        assert_eq!(c.reset_stream_sent, 0, "{who}: {c:?}");
        assert_eq!(c.reset_stream_received, 0, "{who}: {c:?}");
    }
    mesh.stop().await;
}
