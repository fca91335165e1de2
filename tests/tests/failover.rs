//! Failover without a stall: a serving node that dies, is cut off or stops
//! answering costs callers a hedge, not a connect timeout. Each scenario makes
//! gossip slow to declare the node dead (a one-minute suspicion timeout), so
//! the dead node stays in every routing table for the whole test and only the
//! caller's own evidence — hedged opens, suspicion of the silent peer — keeps
//! requests flowing. Listeners get a connect timeout of a minute: a request
//! that waited for it would miss the tests' bounded waits.
//!
//! What is asserted is not timing but counts: every request succeeds, and the
//! opens that went to the dead node stay few (a suspicion lasts 1 s, doubling,
//! so a run of a few seconds hedges a handful of times at most).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal_tests::cluster::Cluster;
use shoal_tests::{Check, NodeSpec, TcpBackend, get};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const MINUTE: Duration = Duration::from_secs(60);
/// Requests (or connections) made while the node is down.
const REQUESTS: usize = 30;
/// The most opens that may go to the dead node over them.
const MOST_HEDGES: f64 = 6.0;

/// Gossip that takes a minute to declare a silent node dead, and a listener
/// that would wait a minute for a silent endpoint.
fn slow_to_notice(spec: NodeSpec) -> NodeSpec {
    spec.tweak(|raw| {
        raw.gossip.suspicion_timeout = Some(MINUTE);
        raw.gossip.suspicion_timeout_min = Some(MINUTE);
        for l in &mut raw.listeners {
            l.connect_timeout = Some(MINUTE);
        }
    })
}

/// Nodes `a` and `b` serving `echo` (each greets with its name), `c` calling
/// it through a TCP listener with `policy`; faults injectable with `faults`.
/// The backends are returned to be kept alive.
async fn echo_mesh(policy: &str, faults: Option<u64>) -> ([TcpBackend; 2], Cluster) {
    let apps = [
        TcpBackend::greeting("a\n").await,
        TcpBackend::greeting("b\n").await,
    ];
    let mut builder = Cluster::of([
        slow_to_notice(NodeSpec::new("a").service("echo", apps[0].addr(), Check::Tcp)),
        slow_to_notice(NodeSpec::new("b").service("echo", apps[1].addr(), Check::Tcp)),
        slow_to_notice(NodeSpec::new("c").listener("echo", "echo", policy)),
    ]);
    if let Some(seed) = faults {
        builder = builder.with_faults(seed);
    }
    let mesh = builder.start().await;
    mesh.wait_healthy("c", "echo", 2).await;
    (apps, mesh)
}

/// Reads the serving node's greeting through a TCP listener.
async fn greeting_through(addr: std::net::SocketAddr) -> String {
    let read = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.map(|_| buf)
    };
    match tokio::time::timeout(shoal_tests::EVENTUALLY, read).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf).trim().to_string(),
        other => panic!("no greeting through the listener: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_serving_node_costs_tcp_callers_a_hedge_not_a_connect_timeout() {
    let (_apps, mut mesh) = echo_mesh("round_robin", None).await;
    let listener = mesh.client("c", "echo");
    // Both serve while both live (round robin), which also pools c's
    // connections to both.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(greeting_through(listener).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    let _dead = mesh.kill("a").await;
    for i in 0..REQUESTS {
        assert_eq!(greeting_through(listener).await, "b", "connection {i}");
    }
    let c = &mesh["c"];
    assert_eq!(c.healthy_endpoints("echo"), 2, "gossip has not dropped a");
    // The killed node's connection closed with it: the opens that went there
    // failed at once (a retry) or were hedged, a few times in all, and c
    // suspects a from its own connection.
    let hedges = c
        .metric("shoal_hedged_attempts_total{listener=\"echo\"}")
        .await;
    let retries = c
        .metric("shoal_upstream_retries_total{listener=\"echo\"}")
        .await;
    assert!(
        (1.0..=MOST_HEDGES).contains(&(hedges + retries)),
        "{hedges} opens hedged, {retries} retried"
    );
    assert!(
        c.metric("shoal_peer_suspicions_total{node=\"a\"}").await >= 1.0,
        "c suspects a from its own connection"
    );
    mesh.stop().await;
}

/// A node cut off before the caller ever opened a tunnel to it: the first
/// open to it waits on a dial nobody answers, not on a connection's silence.
/// The hedge serves the request and the unanswered dial makes the peer
/// suspect; the dial itself runs on in the endpoint's own task (not cancelled
/// with the losing open) and its timeout keeps the suspicion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_cut_off_before_any_tunnel_to_it_costs_a_hedge_per_suspicion() {
    let (_apps, mesh) = echo_mesh("round_robin", Some(11)).await;
    let listener = mesh.client("c", "echo");
    mesh.partition(&["a"], &["c"]);
    for i in 0..REQUESTS {
        assert_eq!(greeting_through(listener).await, "b", "connection {i}");
    }
    let c = &mesh["c"];
    assert_eq!(c.healthy_endpoints("echo"), 2, "gossip has not dropped a");
    let hedges = c
        .metric("shoal_hedged_attempts_total{listener=\"echo\"}")
        .await;
    let retries = c
        .metric("shoal_upstream_retries_total{listener=\"echo\"}")
        .await;
    let suspicions = c.metric("shoal_peer_suspicions_total{node=\"a\"}").await;
    assert!(
        (1.0..=MOST_HEDGES).contains(&hedges),
        "{hedges} opens hedged, {retries} retried, {suspicions} suspicions"
    );
    assert!(suspicions >= 1.0, "c suspects a from its unanswered dial");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_serving_node_costs_http_callers_a_hedge_not_a_connect_timeout() {
    let (_apps, mesh) = Cluster::web_pair(slow_to_notice).await;
    let mesh = mesh.with_faults(7).start().await;
    mesh.wait_healthy("c", "web", 2).await;
    let listener = mesh.client("c", "web");
    for _ in 0..4 {
        assert_eq!(get(listener, "web", "/").await.status, 200);
    }

    // c can no longer reach a (nft-style: every packet dropped, both ways).
    mesh.partition(&["a"], &["c"]);
    for i in 0..REQUESTS {
        let reply = get(listener, "web", &format!("/n/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        assert_eq!(reply.header("x-backend"), Some("app-b"), "request {i}");
    }
    let c = &mesh["c"];
    let hedges = c
        .metric("shoal_hedged_attempts_total{listener=\"web\"}")
        .await;
    assert!(
        (1.0..=MOST_HEDGES).contains(&hedges),
        "{hedges} opens hedged"
    );
    assert!(c.metric("shoal_peer_suspicions_total{node=\"a\"}").await >= 1.0);

    // Healed, a serves again once its suspicion lapses.
    mesh.heal();
    shoal_tests::eventually("a serves again", || async {
        get(listener, "web", "/").await.header("x-backend") == Some("app-a")
    })
    .await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_serving_node_costs_callers_a_hedge_and_is_used_again_when_it_resumes() {
    // Round robin, so a connection meets the paused node whatever the timing.
    // With least requests, a warm-up connection to a whose end had not reached
    // c when a paused (a lost packet a can no longer resend) stays in flight,
    // so every later pick is b and nothing is hedged: a run of `.ci/run` saw
    // no hedge at all.
    let (_apps, mesh) = echo_mesh("round_robin", Some(9)).await;
    let listener = mesh.client("c", "echo");
    for _ in 0..4 {
        greeting_through(listener).await;
    }
    mesh.pause("a");
    for i in 0..REQUESTS {
        assert_eq!(greeting_through(listener).await, "b", "connection {i}");
    }
    let c = &mesh["c"];
    let hedges = c
        .metric("shoal_hedged_attempts_total{listener=\"echo\"}")
        .await;
    assert!(
        (1.0..=MOST_HEDGES).contains(&hedges),
        "{hedges} opens hedged"
    );
    mesh.resume("a");
    shoal_tests::eventually("a serves again", || async {
        greeting_through(listener).await == "a"
    })
    .await;
    mesh.stop().await;
}

/// The other side of hedging: a serving node that is alive but slow to
/// answer is not hedged. Its peer may hold its acknowledgement of a request
/// for QUIC's `max_ack_delay` (25 ms, the default hedge delay too), so its
/// connection can look silent at the hedge delay; a hedge then would send
/// every slow request twice. Requests here take 150 ms at the backend: each
/// is acknowledged long before it is answered.
///
/// A hedge still follows a real silence of 2 × (acknowledgement delay + RTT),
/// about 10 ms here, and a loaded two-core machine running the other tests
/// can deschedule a node that long: `.ci/run` once saw one hedge in 12. So a
/// couple are allowed in 24; the fault this guards against hedged about every
/// other request (24 binomial draws at one half give two or fewer once in
/// 50,000 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_serving_node_slow_to_answer_is_not_hedged() {
    const SLOW_REQUESTS: usize = 24;
    const MOST_STALLS: f64 = 2.0;
    let (_apps, mesh) = Cluster::web_pair(|s| s).await;
    let mesh = mesh.start().await;
    mesh.wait_healthy("c", "web", 2).await;
    let listener = mesh.client("c", "web");
    for i in 0..SLOW_REQUESTS {
        let reply = get(listener, "web", "/slow/150").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    let hedges = mesh["c"]
        .metric("shoal_hedged_attempts_total{listener=\"web\"}")
        .await;
    assert!(
        hedges <= MOST_STALLS,
        "{hedges} of {SLOW_REQUESTS} slow requests sent twice"
    );
    mesh.stop().await;
}
