//! The balancer's rules on a paused clock: least request over the caller's own
//! in-flight guards, ring-hash stability, zone preference, weights, tried
//! endpoints, and outlier ejection with its return.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::gossip::Health;
use mesh_proto::lb::Policy;
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::Protocol;
use prometheus_client::metrics::family::Family;

use super::Balancer;
use crate::config::OutlierConfig;
use crate::metrics::EndpointLabels;

fn endpoint(node: &str, zone: &str, weight: u32) -> Endpoint {
    Endpoint {
        node: node.to_string(),
        generation: 1,
        zone: zone.to_string(),
        addr: SocketAddr::from(([127, 0, 0, 1], 7100)),
        protocol: Protocol::Tcp,
        health: Health::Healthy,
        weight,
        inflight: 0,
        tags: vec![],
    }
}

fn nodes(names: &[&str]) -> Vec<Endpoint> {
    names.iter().map(|n| endpoint(n, "zone-a", 100)).collect()
}

/// Two failures in a row eject for 10 s (20 s the second time, at most 60 s).
fn outlier() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 2,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
    }
}

fn balancer(
    zone: Option<&str>,
) -> (
    Balancer,
    Family<EndpointLabels, prometheus_client::metrics::counter::Counter>,
) {
    let ejections = Family::default();
    (
        Balancer::new("in", "web", zone, outlier(), ejections.clone()),
        ejections,
    )
}

/// `n` picks by `policy` with nothing tried; the node names picked.
fn picks(b: &Balancer, endpoints: &[Endpoint], policy: Policy, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| b.pick(endpoints, policy, &[], i as u64).unwrap().node)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn least_request_sends_new_streams_away_from_the_endpoint_holding_them() {
    let (b, _) = balancer(None);
    let eps = nodes(&["a", "b"]);
    let held: Vec<_> = (0..3).map(|_| b.in_flight("a")).collect();
    assert_eq!(b.in_flight_to("a"), 3);
    assert!(
        picks(&b, &eps, Policy::LeastRequest, 20)
            .iter()
            .all(|n| n == "b"),
        "a holds three streams, b none"
    );
    drop(held);
    assert_eq!(b.in_flight_to("a"), 0, "dropping the guards ends the count");
    let _on_b = b.in_flight("b");
    assert!(
        picks(&b, &eps, Policy::LeastRequest, 20)
            .iter()
            .all(|n| n == "a")
    );
}

#[tokio::test(start_paused = true)]
async fn an_in_flight_guard_ends_its_count_however_its_task_ends() {
    let (b, _) = balancer(None);
    let b = std::sync::Arc::new(b);
    let guard = b.in_flight("a");
    let task = tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    assert_eq!(b.in_flight_to("a"), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(
        b.in_flight_to("a"),
        0,
        "an aborted stream is no longer in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn ring_hash_keeps_a_key_on_its_endpoint_and_moves_few_when_one_is_added() {
    let (b, _) = balancer(None);
    let three = nodes(&["a", "b", "c"]);
    let keys: Vec<u64> = (0..1000u64)
        .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let before: Vec<String> = keys
        .iter()
        .map(|&k| b.pick(&three, Policy::RingHash, &[], k).unwrap().node)
        .collect();
    let again: Vec<String> = keys
        .iter()
        .map(|&k| b.pick(&three, Policy::RingHash, &[], k).unwrap().node)
        .collect();
    assert_eq!(
        before, again,
        "the same key always lands on the same endpoint"
    );
    let four = nodes(&["a", "b", "c", "d"]);
    let after: Vec<String> = keys
        .iter()
        .map(|&k| b.pick(&four, Policy::RingHash, &[], k).unwrap().node)
        .collect();
    let moved: Vec<_> = before.iter().zip(&after).filter(|(x, y)| x != y).collect();
    assert!(
        moved.iter().all(|(_, to)| to.as_str() == "d"),
        "keys only move to the new endpoint"
    );
    assert!(
        (100..=450).contains(&moved.len()),
        "about a quarter of the keys move, not most: {}",
        moved.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_zone_aware_caller_stays_in_its_zone_until_the_zone_has_nothing_usable() {
    let (b, _) = balancer(Some("zone-b"));
    let mut eps = vec![
        endpoint("a1", "zone-a", 100),
        endpoint("a2", "zone-a", 100),
        endpoint("b1", "zone-b", 100),
    ];
    assert!(
        picks(&b, &eps, Policy::RoundRobin, 12)
            .iter()
            .all(|n| n == "b1")
    );
    eps[2].health = Health::Unhealthy;
    let spread = picks(&b, &eps, Policy::RoundRobin, 12);
    assert!(spread.iter().all(|n| n.starts_with('a')), "{spread:?}");
    assert!(spread.contains(&"a1".into()) && spread.contains(&"a2".into()));
    let (unaware, _) = balancer(None);
    eps[2].health = Health::Healthy;
    let all = picks(&unaware, &eps, Policy::RoundRobin, 12);
    assert_eq!(all.iter().filter(|n| *n == "b1").count(), 4, "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn round_robin_follows_the_weights() {
    let (b, _) = balancer(None);
    let eps = vec![
        endpoint("heavy", "zone-a", 300),
        endpoint("light", "zone-a", 100),
    ];
    let got = picks(&b, &eps, Policy::RoundRobin, 400);
    let heavy = got.iter().filter(|n| *n == "heavy").count();
    assert_eq!((heavy, got.len() - heavy), (300, 100));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_never_goes_twice_to_an_endpoint_it_tried() {
    let (b, _) = balancer(None);
    let eps = nodes(&["a", "b", "c"]);
    let tried = vec!["a".to_string(), "c".to_string()];
    for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::RingHash] {
        for key in 0..20 {
            assert_eq!(b.pick(&eps, policy, &tried, key).unwrap().node, "b");
        }
    }
    let all: Vec<String> = eps.iter().map(|e| e.node.clone()).collect();
    assert_eq!(b.pick(&eps, Policy::RoundRobin, &all, 0), None);
}

#[tokio::test(start_paused = true)]
async fn failures_in_a_row_eject_an_endpoint_until_its_ejection_ends() {
    let (b, ejections) = balancer(None);
    let eps = nodes(&["a", "b"]);
    b.record(&eps, "a", false);
    assert!(b.usable(&eps, "a").is_some(), "one failure is not enough");
    b.record(&eps, "a", false);
    assert!(b.usable(&eps, "a").is_none(), "two in a row eject");
    let counted = ejections
        .get_or_create(&EndpointLabels {
            listener: "in".into(),
            node: "a".into(),
        })
        .get();
    assert_eq!(counted, 1, "the ejection is counted by listener and node");
    assert!(
        picks(&b, &eps, Policy::RoundRobin, 10)
            .iter()
            .all(|n| n == "b")
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(b.usable(&eps, "a").is_none(), "still ejected at 9 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        b.usable(&eps, "a").is_some(),
        "back after the base ejection"
    );
    assert!(picks(&b, &eps, Policy::RoundRobin, 10).contains(&"a".to_string()));
}

#[tokio::test(start_paused = true)]
async fn when_every_untried_endpoint_is_ejected_they_are_tried_anyway() {
    let (b, _) = balancer(None);
    let eps = nodes(&["a", "b"]);
    for node in ["a", "b"] {
        b.record(&eps, node, false);
        b.record(&eps, node, false);
    }
    assert!(b.usable(&eps, "a").is_none() && b.usable(&eps, "b").is_none());
    let tried = vec!["a".to_string()];
    assert_eq!(
        b.pick(&eps, Policy::RoundRobin, &tried, 0).map(|e| e.node),
        Some("b".to_string()),
        "an ejection is a guess; a refusal would be certain"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_endpoint_is_not_usable_and_an_unknown_node_is_not_an_endpoint() {
    let (b, _) = balancer(None);
    let mut eps = nodes(&["a"]);
    eps[0].health = Health::Unhealthy;
    assert!(b.usable(&eps, "a").is_none());
    assert!(b.usable(&eps, "ghost").is_none());
    assert_eq!(b.pick(&[], Policy::RoundRobin, &[], 0), None);
}

#[tokio::test(start_paused = true)]
async fn a_peer_the_node_suspects_is_avoided_by_every_balancer_while_others_are_there() {
    let suspects = std::sync::Arc::new(crate::proxy::suspects::Suspects::new(Family::default()));
    let (b, _) = balancer(None);
    let b = b.with_suspects(suspects.clone());
    let (other, _) = balancer(None);
    let other = other.with_suspects(suspects.clone());
    let eps = nodes(&["a", "b", "c"]);
    suspects.no_answer("a", "connect_failed");
    for balancer in [&b, &other] {
        assert!(
            picks(balancer, &eps, Policy::RoundRobin, 12)
                .iter()
                .all(|n| n != "a"),
            "a suspicion on the node counts for every listener"
        );
        assert!(
            balancer.usable(&eps, "a").is_none(),
            "nor is a session pinned to it"
        );
    }
    // With nothing else left, the suspect is still tried.
    let tried = ["b".to_string(), "c".to_string()];
    assert_eq!(
        b.pick(&eps, Policy::RoundRobin, &tried, 0).unwrap().node,
        "a"
    );
    // The suspicion lapses.
    tokio::time::advance(crate::proxy::suspects::FIRST_SUSPICION).await;
    assert!(
        picks(&b, &eps, Policy::RoundRobin, 12)
            .iter()
            .any(|n| n == "a")
    );
}
