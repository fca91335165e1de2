//! Config reload on running nodes: listeners and services change in place —
//! what goes away is drained, not cut — allow-lists take effect at once, and
//! fields that need a restart are refused by name and left as they run.

#![allow(clippy::unwrap_used)]

use shoal_tests::cluster::Cluster;
use shoal_tests::{Check, NodeSpec, TcpBackend, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `msg` on `s` and reads the echo, within a bound.
async fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    let roundtrip = async {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf == msg)
    };
    matches!(
        tokio::time::timeout(shoal_tests::EVENTUALLY, roundtrip).await,
        Ok(Ok(true))
    )
}

/// A connection through `addr` that echoes.
async fn echoing(addr: std::net::SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(mut s) => echoes(&mut s, b"ping").await,
        Err(_) => false,
    }
}

/// Node a hosts `echo`; b calls it through TCP listener `old`.
async fn caller_and_server(echo: &TcpBackend) -> Cluster {
    let mesh = Cluster::of([
        NodeSpec::new("a").service("echo", echo.addr(), Check::Tcp),
        NodeSpec::new("b").listener("old", "echo", "round_robin"),
    ])
    .start()
    .await;
    mesh.wait_healthy("b", "echo", 1).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_listeners_draining_the_old_and_refuses_what_needs_a_restart() {
    let echo = TcpBackend::start().await;
    let mesh = caller_and_server(&echo).await;
    let b = &mesh["b"];
    let old = b.listener("old");
    let mut kept = TcpStream::connect(old).await.unwrap();
    assert!(echoes(&mut kept, b"before").await);

    let interval_before = b.admin_json("/config").await["gossip"]["interval"].clone();
    let mut new = b.node.config().clone();
    new.listeners[0].name = "new".into();
    new.gossip.interval *= 3;
    let report = b.node.reload(new).await;

    assert_eq!(
        report.applied,
        ["listener new added", "listener old removed"]
    );
    let refused: Vec<&str> = report.refused.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(refused, ["gossip.interval"]);
    assert!(report.refused[0].reason.contains("restart"));
    assert!(!report.listening.contains_key("old"));
    assert!(
        echoing(report.listening["new"]).await,
        "the new listener serves"
    );
    assert!(
        echoes(&mut kept, b"after").await,
        "a connection through the removed listener is drained, not cut"
    );
    assert!(
        TcpStream::connect(old).await.is_err(),
        "the removed listener no longer accepts"
    );
    // /config is the config in force: the new listener, the old interval.
    let config = b.admin_json("/config").await;
    assert_eq!(config["listeners"][0]["name"], "new");
    assert_eq!(config["gossip"]["interval"], interval_before);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_removed_by_reload_leaves_every_routing_table_and_an_allow_list_applies_at_once()
{
    let echo = TcpBackend::start().await;
    let mesh = caller_and_server(&echo).await;
    let (a, b) = (&mesh["a"], &mesh["b"]);
    let listener = b.listener("old");
    assert!(echoing(listener).await);
    let started = a.node.config().clone();

    // Only node c may call echo now: b is refused at once.
    let mut only_c = started.clone();
    only_c.services[0].allow_nodes = vec!["c".into()];
    let report = a.node.reload(only_c).await;
    assert_eq!(report.applied, ["service echo changed"]);
    assert!(!echoing(listener).await, "b is no longer allowed");
    eventually("the refusal to be counted", || async {
        a.metric("shoal_inbound_refusals_total{service=\"echo\",reason=\"unauthorized\"}")
            .await
            >= 1.0
    })
    .await;

    // Without the service, b's table drops a's endpoint.
    let mut without = started.clone();
    without.services.clear();
    let report = a.node.reload(without).await;
    assert_eq!(report.applied, ["service echo removed"]);
    eventually("b to drop a's withdrawn endpoint", || async {
        b.node.table().endpoints("echo").is_empty()
    })
    .await;

    // Back as it started: b calls it again.
    let report = a.node.reload(started).await;
    assert_eq!(report.applied, ["service echo added"]);
    mesh.wait_healthy("b", "echo", 1).await;
    eventually("b to reach echo again", || echoing(listener)).await;
    mesh.stop().await;
}
