//! TCP through the mesh: listeners, tunnels, load balancing, retries, ejection,
//! authorization, and the inbound side's handling of bad headers — real nodes,
//! real certificates, loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::codec::encode;
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use sha2::{Digest, Sha256};
use shoal_node::endpoint::{MAX_UDP_PAYLOAD, MeshEndpoint, Use};
use shoal_tests::cluster::Cluster;
use shoal_tests::{Check, EVENTUALLY, NodeSpec, Pki, TcpBackend, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Sends `data` through `addr` and returns what came back before EOF; writes and
/// reads concurrently (an echo exerts backpressure) and half-closes after writing.
async fn echo_roundtrip(addr: SocketAddr, data: Arc<Vec<u8>>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    out
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// n1 and n2 host `echo`; n3 has a listener `echo` for it with `policy`, and
/// sees both endpoints healthy.
async fn echo_mesh(b1: &TcpBackend, b2: &TcpBackend, policy: &str) -> Cluster {
    let mesh = Cluster::new(3)
        .with_service("n1", "echo", b1.addr(), Check::Tcp)
        .with_service("n2", "echo", b2.addr(), Check::Tcp)
        .with_listener("n3", "echo", "echo", policy)
        .start()
        .await;
    mesh.wait_healthy("n3", "echo", 2).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_the_mesh_intact_in_both_directions() {
    let (b1, b2) = (TcpBackend::start().await, TcpBackend::start().await);
    let mesh = echo_mesh(&b1, &b2, "round_robin").await;
    let (n1, n2, n3) = (&mesh["n1"], &mesh["n2"], &mesh["n3"]);
    let addr = mesh.client("n3", "echo");

    // 64 MiB of pseudo-random bytes come back identical
    let data = Arc::new(pseudo_random(64 << 20, 7));
    let want = Sha256::digest(&*data);
    let got = echo_roundtrip(addr, data.clone()).await;
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), want);

    // half-close: the client shuts its write side and still reads the answer
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello, half-closed world").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"hello, half-closed world");

    // 200 concurrent connections all complete, spread over both endpoints
    // (counted by the serving nodes: the backends also see health checks)
    let streams = "shoal_inbound_streams_total{service=\"echo\"}";
    let before = (n1.metric(streams).await, n2.metric(streams).await);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let data = Arc::new(pseudo_random(4096, i + 1));
            let got = echo_roundtrip(addr, data.clone()).await;
            got == *data
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a concurrent connection lost bytes");
    }
    let spread = (
        n1.metric(streams).await - before.0,
        n2.metric(streams).await - before.1,
    );
    // A connection whose open was hedged (a setup slow and seemingly silent
    // on this busy machine) opened one more stream, dropped by the caller.
    let hedges = n3
        .metric("shoal_hedged_attempts_total{listener=\"echo\"}")
        .await;
    assert!(
        (200.0..=200.0 + hedges).contains(&(spread.0 + spread.1)),
        "{spread:?} streams for 200 connections and {hedges} hedges"
    );
    assert!(
        spread.0 >= 50.0 && spread.1 >= 50.0,
        "round robin spreads: {spread:?}"
    );

    assert_eq!(
        n3.metric("shoal_listener_connection_failures_total").await,
        0.0
    );
    assert!(
        n3.metric("shoal_listener_bytes_total{listener=\"echo\",direction=\"upstream\"}")
            .await
            >= (64 << 20) as f64
    );
    assert!(
        n1.metric("shoal_inbound_streams_total{service=\"echo\"}")
            .await
            > 0.0
    );
    assert!(n3.metric("shoal_tunnel_setup_seconds_count").await >= 202.0);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_grows_its_packets_past_ten_per_send_and_keeps_them() {
    let backend = TcpBackend::start().await;
    let mesh = Cluster::new(2)
        .with_service("n1", "echo", backend.addr(), Check::Tcp)
        .with_listener("n2", "echo", "echo", "round_robin")
        .start()
        .await;
    mesh.wait_healthy("n2", "echo", 1).await;

    // 32 MiB each way: enough full GSO sends of the largest packets that a
    // send the kernel refuses (ten packets over 65,507 bytes, which
    // `SplitSends` cuts apart) would be lost again and again, read as an MTU
    // black hole and undo the discovery.
    let data = Arc::new(pseudo_random(32 << 20, 11));
    let got = echo_roundtrip(mesh.client("n2", "echo"), data.clone()).await;
    assert_eq!(Sha256::digest(&got), Sha256::digest(&*data));

    let n2 = &mesh["n2"];
    eventually(
        "n2's tunnel to n1 carries packets larger than a tenth of one UDP send",
        || async { n2.tunnel("n1", true).await.is_some_and(|c| c.mtu > 6_550) },
    )
    .await;
    let tunnel = n2.tunnel("n1", true).await.unwrap();
    assert!(tunnel.mtu <= MAX_UDP_PAYLOAD, "{tunnel:?}");
    assert_eq!(tunnel.black_holes_detected, 0, "{tunnel:?}");
    assert!(tunnel.bytes_sent >= 32 << 20, "{tunnel:?}");
    assert!(tunnel.rtt_us > 0 && tunnel.cwnd > 0, "{tunnel:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_endpoint_is_reached_without_a_tunnel() {
    let b = TcpBackend::start().await;
    let mesh = Cluster::new(1)
        .with_service("n1", "echo", b.addr(), Check::Tcp)
        .with_listener("n1", "echo", "echo", "round_robin")
        .start()
        .await;
    mesh.wait_healthy("n1", "echo", 1).await;
    let got = echo_roundtrip(mesh.client("n1", "echo"), Arc::new(b"local".to_vec())).await;
    assert_eq!(got, b"local");
    assert_eq!(
        mesh["n1"].metric("shoal_inbound_streams_total").await,
        0.0,
        "no tunnel stream was used"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_costs_retries_not_failures() {
    let (b1, b2) = (TcpBackend::start().await, TcpBackend::start().await);
    let mut mesh = echo_mesh(&b1, &b2, "round_robin").await;
    let addr = mesh.client("n3", "echo");
    // make sure n3 holds a live connection to n1 before it dies
    for _ in 0..4 {
        assert_eq!(
            echo_roundtrip(addr, Arc::new(b"warm".to_vec())).await,
            b"warm"
        );
    }
    mesh.kill("n1").await;
    let n3 = &mesh["n3"];
    // connections made right away still succeed: attempts on n1 fail and are retried
    for i in 0..10u64 {
        let data = Arc::new(pseudo_random(1000, i + 100));
        assert_eq!(
            echo_roundtrip(addr, data.clone()).await,
            *data,
            "connection {i}"
        );
    }
    eventually("gossip removes n1 from n3's table", || async {
        n3.node.table().node("n1").is_none()
    })
    .await;
    for i in 0..10u64 {
        let data = Arc::new(pseudo_random(1000, i + 200));
        assert_eq!(echo_roundtrip(addr, data.clone()).await, *data);
    }
    assert_eq!(
        n3.metric("shoal_listener_connection_failures_total").await,
        0.0
    );
    assert!(n3.metric("shoal_upstream_retries_total").await >= 1.0);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_ejected_before_its_health_check_notices() {
    let (mut b1, b2) = (TcpBackend::start().await, TcpBackend::start().await);
    // health checks every minute: only passive detection can act within the test
    let slow_checks = |raw: &mut shoal_node::config::RawConfig| {
        for s in &mut raw.services {
            let h = s.health.as_mut().unwrap();
            h.interval = Some(Duration::from_secs(60));
            h.timeout = Some(Duration::from_secs(1));
        }
    };
    let mesh = Cluster::of([
        NodeSpec::new("n1")
            .service("echo", b1.addr(), Check::Tcp)
            .tweak(slow_checks),
        NodeSpec::new("n2")
            .service("echo", b2.addr(), Check::Tcp)
            .tweak(slow_checks),
        NodeSpec::new("n3")
            .listener("echo", "echo", "round_robin")
            .tweak(|raw| {
                raw.listeners[0].outlier = Some(shoal_node::config::RawOutlier {
                    base_ejection: Some(Duration::from_secs(2)),
                    ..Default::default()
                });
            }),
    ])
    .start()
    .await;
    mesh.wait_healthy("n3", "echo", 2).await;
    let n3 = &mesh["n3"];
    b1.stop().await;
    let addr = n3.listener("echo");
    for i in 0..12u64 {
        let data = Arc::new(pseudo_random(512, i + 1));
        assert_eq!(
            echo_roundtrip(addr, data.clone()).await,
            *data,
            "connection {i}"
        );
    }
    assert!(
        n3.metric("shoal_outlier_ejections_total{listener=\"echo\",node=\"n1\"}")
            .await
            >= 1.0,
        "n1 was ejected"
    );
    assert_eq!(
        n3.endpoint_health("echo", "n1").await.as_deref(),
        Some("healthy"),
        "the health checker has not noticed yet"
    );
    assert_eq!(
        n3.metric("shoal_listener_connection_failures_total").await,
        0.0
    );
    // after ejection, n1 is skipped: the last connections all went to n2
    let before = b2.accepted();
    for i in 0..5u64 {
        let data = Arc::new(pseudo_random(64, i + 50));
        assert_eq!(echo_roundtrip(addr, data.clone()).await, *data);
    }
    assert_eq!(b2.accepted() - before, 5);

    // The backend comes back: once its ejection (2 s here) has run out, n1 is
    // tried again, succeeds, and is back in rotation.
    b1.restart().await;
    let before = b1.accepted();
    eventually("n1 is back in rotation after its ejection", || async {
        let data = Arc::new(pseudo_random(64, 99));
        assert_eq!(echo_roundtrip(addr, data.clone()).await, *data);
        b1.accepted() > before
    })
    .await;
    assert_eq!(
        n3.metric("shoal_listener_connection_failures_total").await,
        0.0,
        "no client connection failed through ejection and recovery"
    );
    mesh.stop().await;
}

async fn whoami(addr: SocketAddr, from: std::net::Ipv4Addr) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_a_client_on_one_endpoint() {
    let backends = [
        TcpBackend::greeting("n1").await,
        TcpBackend::greeting("n2").await,
        TcpBackend::greeting("n3").await,
    ];
    let hosts = ["n1", "n2", "n3"];
    let specs = hosts
        .iter()
        .zip(&backends)
        .map(|(name, b)| NodeSpec::new(name).service("who", b.addr(), Check::Tcp));
    let mut mesh = Cluster::of(specs).start().await;
    mesh.add(NodeSpec::new("caller").listener("who", "who", "ring_hash"))
        .await;
    mesh.wait_healthy("caller", "who", 3).await;
    let addr = mesh.client("caller", "who");
    let client = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let first = whoami(addr, client).await;
    for _ in 0..100 {
        assert_eq!(
            whoami(addr, client).await,
            first,
            "the same client address sticks"
        );
    }
    // different clients spread
    let mut seen = std::collections::BTreeSet::new();
    for last in 2..40u8 {
        seen.insert(whoami(addr, std::net::Ipv4Addr::new(127, 0, 0, last)).await);
    }
    assert!(seen.len() >= 2, "clients spread over endpoints: {seen:?}");

    // remove an endpoint the client does not use (n1, the seed, stays: the
    // caller's gossip goes through it)
    let gone_name = hosts[1..]
        .iter()
        .find(|n| **n != first)
        .unwrap()
        .to_string();
    mesh.kill(&gone_name).await;
    let caller = &mesh["caller"];
    eventually("the caller drops the unrelated endpoint", || async {
        caller
            .node
            .table()
            .endpoints("who")
            .iter()
            .all(|e| e.node != gone_name)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            whoami(addr, client).await,
            first,
            "an unrelated removal does not move the client"
        );
    }
    mesh.stop().await;
}

/// A tunnel client with a node certificate of `pki`, as a misbehaving or
/// unauthorized peer would be.
async fn raw_tunnel_client(pki: &Pki, name: &str, services: &[&str]) -> Arc<MeshEndpoint> {
    pki.endpoint(name, services).0
}

async fn ask(conn: &quinn::Connection, header: &StreamHeader) -> StreamStatus {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(header).unwrap()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match mesh_proto::codec::decode::<StreamStatus>(&buf) {
            Ok((status, _)) => return status,
            Err(e) if e.is_incomplete() => {}
            Err(e) => panic!("bad status frame: {e}"),
        }
        let n = recv
            .read(&mut chunk)
            .await
            .unwrap()
            .expect("stream ended before a status");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(target: &str, source: Option<&str>) -> StreamHeader {
    StreamHeader {
        target_service: target.into(),
        source_service: source.map(Into::into),
        protocol: Protocol::Tcp,
        request_id: RequestId(1),
        deadline_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiving_node_answers_each_refusal_with_its_status() {
    let b = TcpBackend::start().await;
    let mut dead = TcpBackend::start().await;
    dead.stop().await;
    let mesh = Cluster::of([NodeSpec::new("n1")
        .service("secret", b.addr(), Check::Tcp)
        .service("open", b.addr(), Check::Tcp)
        .service("down", dead.addr(), Check::Tcp)
        .tweak(|raw| {
            raw.services[0].allow_nodes = vec!["friend".into()];
            raw.services[0].allow_services = vec!["billing".into()];
        })])
    .start()
    .await;
    let n1 = &mesh["n1"];
    let addr = n1.node.bound().quic;
    let stranger = raw_tunnel_client(&mesh.pki, "stranger", &["web"]).await;
    let conn = stranger
        .connect(addr, Use::Tunnel, Some("n1"))
        .await
        .unwrap();
    assert_eq!(
        ask(&conn, &header("nope", None)).await.code,
        StatusCode::UnknownService
    );
    assert_eq!(
        ask(&conn, &header("secret", None)).await.code,
        StatusCode::Unauthorized
    );
    assert_eq!(
        ask(&conn, &header("secret", Some("web"))).await.code,
        StatusCode::Unauthorized
    );
    let lie = ask(&conn, &header("open", Some("billing"))).await;
    assert_eq!(
        lie.code,
        StatusCode::Unauthorized,
        "a source service not in the certificate"
    );
    assert!(lie.reason.contains("billing"), "{}", lie.reason);
    assert_eq!(
        ask(&conn, &header("open", Some("web"))).await.code,
        StatusCode::Ok
    );

    let friend = raw_tunnel_client(&mesh.pki, "friend", &[]).await;
    let conn2 = friend.connect(addr, Use::Tunnel, Some("n1")).await.unwrap();
    assert_eq!(
        ask(&conn2, &header("secret", None)).await.code,
        StatusCode::Ok,
        "allowed by node"
    );
    let billing = raw_tunnel_client(&mesh.pki, "biller", &["billing"]).await;
    let conn3 = billing
        .connect(addr, Use::Tunnel, Some("n1"))
        .await
        .unwrap();
    assert_eq!(
        ask(&conn3, &header("secret", Some("billing"))).await.code,
        StatusCode::Ok,
        "allowed by service"
    );

    // a backend that is down
    let refused = ask(&conn, &header("down", None)).await;
    assert_eq!(refused.code, StatusCode::BackendRefused);
    assert!(
        refused.reason.contains(&dead.addr().to_string()),
        "{}",
        refused.reason
    );

    assert_eq!(
        n1.metric("shoal_inbound_refusals_total{service=\"secret\",reason=\"unauthorized\"}")
            .await,
        2.0
    );
    assert_eq!(
        n1.metric("shoal_inbound_refusals_total{service=\"open\",reason=\"unauthorized\"}")
            .await,
        1.0
    );
    assert_eq!(
        n1.metric("shoal_inbound_refusals_total{service=\"down\",reason=\"backend_refused\"}")
            .await,
        1.0
    );
    assert!(
        n1.metric("shoal_inbound_refusals_total{service=\"-\",reason=\"unknown_service\"}")
            .await
            >= 1.0
    );

    // draining: everything is refused with `draining`
    n1.node.drain().await;
    assert_eq!(
        ask(&conn2, &header("secret", None)).await.code,
        StatusCode::Draining
    );
    for e in [stranger, friend, billing] {
        e.close();
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_headers_are_reset_without_harming_other_streams() {
    let b = TcpBackend::start().await;
    let mesh = Cluster::of([NodeSpec::new("n1").service("echo", b.addr(), Check::Tcp)])
        .start()
        .await;
    let n1 = &mesh["n1"];
    let client = raw_tunnel_client(&mesh.pki, "client", &[]).await;
    let conn = client
        .connect(n1.node.bound().quic, Use::Tunnel, Some("n1"))
        .await
        .unwrap();

    // a good stream, opened first and kept open across the bad ones
    let (mut good_send, mut good_recv) = conn.open_bi().await.unwrap();
    good_send
        .write_all(&encode(&header("echo", None)).unwrap())
        .await
        .unwrap();

    let good_header = encode(&header("echo", None)).unwrap();
    let mut wrong_version = good_header.clone();
    wrong_version[0] = 9;
    let mut oversize = vec![1u8];
    oversize.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let mut bad_body = good_header.clone();
    for b in &mut bad_body[5..] {
        *b = 0xff;
    }
    for bad in [b"garbage!".to_vec(), wrong_version, oversize, bad_body] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        let _ = send.finish();
        let mut buf = [0u8; 64];
        let outcome = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf))
            .await
            .expect("the node answers a bad header promptly");
        assert!(
            matches!(outcome, Err(quinn::ReadError::Reset(_))),
            "a bad header resets the stream: {outcome:?}"
        );
    }
    // the good stream still works, on the same connection
    let mut status = [0u8; 64];
    let n = good_recv.read(&mut status).await.unwrap().unwrap();
    let (s, used) = mesh_proto::codec::decode::<StreamStatus>(&status[..n]).unwrap();
    assert_eq!(s.code, StatusCode::Ok);
    assert_eq!(used, n);
    good_send.write_all(b"still here").await.unwrap();
    good_send.finish().unwrap();
    let echoed = good_recv.read_to_end(1024).await.unwrap();
    assert_eq!(echoed, b"still here");
    assert!(
        n1.metric("shoal_inbound_refusals_total{service=\"-\",reason=\"bad_header\"}")
            .await
            >= 3.0
    );
    assert_eq!(conn.close_reason(), None, "the connection survived");
    client.close();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_limits_idle_timeout_resets_and_refusals() {
    let echo = TcpBackend::start().await;
    let reset = TcpBackend::resetter().await;
    let mesh = Cluster::of([
        NodeSpec::new("n1")
            .service("echo", echo.addr(), Check::Tcp)
            .service("reset", reset.addr(), Check::Tcp)
            .service("private", echo.addr(), Check::Tcp)
            .tweak(|raw| raw.services[2].allow_nodes = vec!["someone-else".into()]),
        NodeSpec::new("n2")
            .listener("echo", "echo", "least_request")
            .listener("reset", "reset", "round_robin")
            .listener("private", "private", "round_robin")
            .tweak(|raw| {
                raw.listeners[0].max_connections = Some(2);
                raw.listeners[0].idle_timeout = Some(Duration::from_millis(300));
            }),
    ])
    .start()
    .await;
    for service in ["echo", "reset", "private"] {
        mesh.wait_healthy("n2", service, 1).await;
    }
    let n2 = &mesh["n2"];

    // max_connections: the third concurrent connection is closed at once
    let addr = n2.listener("echo");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = third.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "refused beyond max_connections");
    assert_eq!(
        n2.metric(
            "shoal_listener_connection_failures_total{listener=\"echo\",reason=\"max_connections\"}"
        )
        .await,
        1.0
    );

    // idle_timeout: held connections are closed once idle, freeing the slots
    for mut s in held {
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "closed when idle: {closed:?}"
        );
    }
    assert_eq!(
        echo_roundtrip(addr, Arc::new(b"again".to_vec())).await,
        b"again"
    );

    // a backend's reset reaches the client as a reset, not a clean end
    let mut s = TcpStream::connect(n2.listener("reset")).await.unwrap();
    s.write_all(b"please reset").await.unwrap();
    let mut sink = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink))
        .await
        .expect("the reset arrives");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "reset propagated"
    );

    // a caller not on the allow-list: the client connection is closed, not retried
    let mut s = TcpStream::connect(n2.listener("private")).await.unwrap();
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(
        n2.metric(
            "shoal_listener_connection_failures_total{listener=\"private\",reason=\"unauthorized\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        n2.metric("shoal_upstream_retries_total{listener=\"private\"}")
            .await,
        0.0
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tunnels_grow_the_stream_limit() {
    let b = TcpBackend::start().await;
    let mesh = Cluster::of([
        NodeSpec::new("n1").service("echo", b.addr(), Check::Tcp),
        NodeSpec::new("n2").listener("echo", "echo", "round_robin"),
    ])
    .start()
    .await;
    mesh.wait_healthy("n2", "echo", 1).await;
    let (n1, n2) = (&mesh["n1"], &mesh["n2"]);
    let addr = n2.listener("echo");
    // more connections held open at once than the initial per-connection stream
    // limit (256): the serving node must raise it as they arrive; and a burst of
    // 700 connects must not overflow an accept queue (each overflow costs a 1 s
    // SYN retransmission, past the listener's 1 s connect timeout)
    let total: u32 = std::env::var("N700")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(700);
    let mut tasks = Vec::new();
    for i in 0..total {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&i.to_le_bytes()).await.unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
                .await
                .unwrap_or_else(|_| panic!("connection {i} got no echo"))
                .unwrap();
            assert_eq!(back, i.to_le_bytes());
            s
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(
        n1.metric("shoal_inbound_active_streams{service=\"echo\"}")
            .await,
        total as f64
    );
    drop(held);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_named_like_numbers_are_reachable() {
    // "web.10" follows the naming rule but is not a valid TLS server name (its last
    // label is numeric): tunnels must not depend on it.
    let b = TcpBackend::start().await;
    let mesh = Cluster::of([
        NodeSpec::new("web.10").service("echo", b.addr(), Check::Tcp),
        NodeSpec::new("0").listener("echo", "echo", "round_robin"),
    ])
    .start()
    .await;
    mesh.wait_healthy("0", "echo", 1).await;
    let n2 = &mesh["0"];
    let got = echo_roundtrip(n2.listener("echo"), Arc::new(b"numeric".to_vec())).await;
    assert_eq!(got, b"numeric");
    mesh.stop().await;
}

/// A backend whose connections the test drives by hand: each accepted
/// connection is handed over on the channel.
async fn manual_backend() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let listener = shoal_node::proxy::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

async fn next_conn(conns: &mut tokio::sync::mpsc::Receiver<TcpStream>) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), conns.recv())
        .await
        .expect("the backend gets a connection")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_resets_and_backpressure_cross_the_tunnel() {
    let (backend, mut conns) = manual_backend().await;
    let mesh = Cluster::of([
        NodeSpec::new("n1")
            .service("raw", backend, Check::Tcp)
            .tweak(|raw| {
                // One check at start, then none during the test: every later
                // connection the backend sees is a proxied one.
                let h = raw.services[0].health.as_mut().unwrap();
                h.interval = Some(Duration::from_secs(300));
                h.timeout = Some(Duration::from_secs(1));
            }),
        NodeSpec::new("n2").listener("raw", "raw", "round_robin"),
    ])
    .start()
    .await;
    mesh.wait_healthy("n2", "raw", 1).await;
    let n2 = &mesh["n2"];
    while conns.try_recv().is_ok() {}
    let addr = n2.listener("raw");

    // The backend speaks first and closes its side: the client reads the banner
    // and then an end, and can still send; the backend hears it.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut server = next_conn(&mut conns).await;
    server.write_all(b"banner").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"banner");
    client.write_all(b"still talking").await.unwrap();
    client.shutdown().await.unwrap();
    let mut heard = Vec::new();
    server.read_to_end(&mut heard).await.unwrap();
    assert_eq!(heard, b"still talking");

    // A client that resets: the backend sees a reset, not a clean end.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let mut server = next_conn(&mut conns).await;
    let mut one = [0u8; 1];
    server.read_exact(&mut one).await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut rest))
        .await
        .expect("the reset arrives");
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the client's reset reaches the backend"
    );

    // Backpressure: while the backend does not read, the client is soon held
    // back — the nodes do not buffer without bound — and once it reads, every
    // byte arrives.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut server = next_conn(&mut conns).await;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0usize;
    // Stop once a write makes no progress for a while: the pipe is full.
    while let Ok(n) = tokio::time::timeout(Duration::from_millis(500), client.write(&chunk)).await {
        sent += n.unwrap();
        assert!(
            sent < 256 << 20,
            "{sent} bytes accepted for a backend that does not read"
        );
    }
    assert!(sent > 0);
    client.shutdown().await.unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("the backend keeps receiving")
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0x5a));
        received += n;
    }
    assert_eq!(received, sent, "every byte written arrives, once");
    eprintln!("backpressure held the client at {sent} bytes in flight");
    mesh.stop().await;
}

/// One calling node cannot take every connection slot of a service: beyond its
/// share (`max_connections_per_caller`) it is refused `overloaded`, while
/// another caller still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_slot_of_a_service() {
    let echo = TcpBackend::start().await;
    let mesh = Cluster::new(3)
        .with("n1", |s| {
            s.service("echo", echo.addr(), Check::Tcp).tweak(|raw| {
                raw.services[0].max_connections = Some(3);
                raw.services[0].max_connections_per_caller = Some(2);
            })
        })
        .with_listener("n2", "echo", "echo", "round_robin")
        .with_listener("n3", "echo", "echo", "round_robin")
        .start()
        .await;
    for caller in ["n2", "n3"] {
        mesh.wait_healthy(caller, "echo", 1).await;
    }
    // n2 takes its share: two connections, held open.
    let from_n2 = mesh.client("n2", "echo");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(from_n2).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        held.push(s);
    }
    // A third from n2 is refused: its client's connection is closed.
    let mut third = TcpStream::connect(from_n2).await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(third.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(
        mesh["n2"]
            .metric(
                "shoal_listener_connection_failures_total{listener=\"echo\",reason=\"overloaded\"}"
            )
            .await,
        1.0
    );
    // The slot kept for others lets n3 in.
    let got = echo_roundtrip(mesh.client("n3", "echo"), Arc::new(b"fair".to_vec())).await;
    assert_eq!(got, b"fair");
    assert!(
        mesh["n1"]
            .metric("shoal_inbound_refusals_total{service=\"echo\",reason=\"overloaded\"}")
            .await
            >= 1.0
    );
    drop(held);
    mesh.stop().await;
}

/// The serving node closes a tunnelled connection idle for its service's
/// `idle_timeout`, however long the calling listener would keep it, and frees
/// the service's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_node_closes_tunnels_idle_past_its_services_idle_timeout() {
    let echo = TcpBackend::start().await;
    let mesh = Cluster::of([
        NodeSpec::new("n1")
            .service("echo", echo.addr(), Check::Tcp)
            .tweak(|raw| raw.services[0].idle_timeout = Some(Duration::from_millis(300))),
        NodeSpec::new("n2")
            .listener("echo", "echo", "round_robin")
            .tweak(|raw| raw.listeners[0].idle_timeout = Some(Duration::from_secs(3600))),
    ])
    .start()
    .await;
    mesh.wait_healthy("n2", "echo", 1).await;
    let mut s = TcpStream::connect(mesh.client("n2", "echo")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let closed = tokio::time::timeout(EVENTUALLY, s.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the serving node once idle: {closed:?}"
    );
    let n1 = &mesh["n1"];
    eventually("n1 frees the service's slot", || async {
        n1.metric("shoal_inbound_active_streams{service=\"echo\"}")
            .await
            == 0.0
    })
    .await;
    mesh.stop().await;
}
