//! The golden figures from a real registry's exposition, at chosen instants.

use super::*;
use crate::metrics::{
    HttpLabels, HttpRetryLabels, ListenerLabels, Metrics, ReasonLabels, ServiceLabels,
    ServiceReasonLabels,
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn listeners() -> BTreeMap<String, ListenerInfo> {
    BTreeMap::from([
        (
            "web".to_string(),
            ListenerInfo {
                protocol: "http",
                service: None,
                source_service: Some("shop".into()),
            },
        ),
        (
            "db".to_string(),
            ListenerInfo {
                protocol: "tcp",
                service: Some("pg".into()),
                source_service: None,
            },
        ),
    ])
}

fn http(m: &Metrics, service: &str, class: &'static str, n: u64, seconds: f64) {
    let labels = HttpLabels {
        listener: "web".into(),
        route: "-".into(),
        service: service.into(),
        class,
    };
    for _ in 0..n {
        m.http.requests.get_or_create(&labels).inc();
        m.http.duration.get_or_create(&labels).observe(seconds);
    }
}

/// `n` retries of `api` requests through `web`.
fn retries(m: &Metrics, n: u64) {
    let retry = HttpRetryLabels {
        listener: "web".into(),
        route: "-".into(),
        service: "api".into(),
        reason: "5xx",
    };
    m.http.retries.get_or_create(&retry).inc_by(n);
}

#[test]
fn rates_success_and_latency_come_from_the_window_of_the_exposition() {
    let m = Metrics::new();
    let history = History::new("n1", listeners());
    history.record(&m.encode(), secs(0));
    assert_eq!(history.view().window_s, 0.0, "one sample: no rate yet");

    // Before the window: slow requests that must not count.
    http(&m, "api", "2xx", 50, 2.0);
    history.record(&m.encode(), secs(2));
    // In the window (10 s): 90 fast successes, 10 failures, 4 retries.
    http(&m, "api", "2xx", 90, 0.0015);
    http(&m, "api", "5xx", 10, 0.0015);
    retries(&m, 4);
    history.record(&m.encode(), secs(12));

    let v = history.view();
    assert_eq!(v.window_s, 10.0);
    let api = v.edges.iter().find(|e| e.service == "api").unwrap();
    assert_eq!(api.caller, "n1/shop");
    assert_eq!(api.protocol, "http");
    assert_eq!(api.requests_per_s, 10.0);
    assert_eq!(api.success_rate, Some(0.9));
    assert_eq!(api.retries_per_s, 0.4);
    // 1.5 ms falls in the (0.8 ms, 1.6 ms] bucket: interpolated inside it.
    let p99 = api.p99_ms.unwrap();
    assert!(p99 > 0.8 && p99 <= 1.6, "{p99}");
    assert!(api.p50_ms.unwrap() <= p99);
    // Series: one point per interval, the slow interval included.
    assert_eq!(api.series.t_s, vec![-10.0, 0.0]);
    assert_eq!(api.series.requests_per_s, vec![25.0, 10.0]);
    assert!(api.series.p99_ms[0].unwrap() > 1000.0, "the slow interval");
    assert_eq!(v.services.len(), 1);
    assert_eq!(v.services[0].requests_per_s, 10.0);
}

#[test]
fn tcp_listeners_serving_side_and_refusals_have_their_own_figures() {
    let m = Metrics::new();
    let history = History::new("n1", listeners());
    let db = ListenerLabels {
        listener: "db".into(),
    };
    m.proxy.listener_active.get_or_create(&db).set(3);
    history.record(&m.encode(), secs(0));
    m.proxy.listener_connections.get_or_create(&db).inc_by(20);
    m.proxy
        .tunnel_setup_seconds
        .get_or_create(&db)
        .observe(0.0003);
    m.inbound
        .streams
        .get_or_create(&ServiceLabels {
            service: "pg".into(),
        })
        .inc_by(8);
    let full = ServiceReasonLabels {
        service: "pg".into(),
        reason: "overloaded",
    };
    m.inbound.refusals.get_or_create(&full).inc_by(2);
    m.tls
        .rejected_peers
        .get_or_create(&ReasonLabels { reason: "revoked" })
        .inc();
    history.record(&m.encode(), secs(2));

    let v = history.view();
    let pg = v.edges.iter().find(|e| e.service == "pg").unwrap();
    assert_eq!((pg.caller.as_str(), pg.listener.as_str()), ("n1", "db"));
    assert_eq!(
        (pg.protocol.as_str(), pg.requests_per_s, pg.active),
        ("tcp", 10.0, 3.0)
    );
    assert_eq!(pg.success_rate, Some(1.0));
    assert!(pg.p99_ms.unwrap() <= 0.4);
    assert_eq!(v.served[0].service, "pg");
    assert_eq!(
        (v.served[0].streams_per_s, v.served[0].refused_per_s),
        (4.0, 1.0)
    );
    let refused: Vec<(&str, &str, f64)> = v
        .refused
        .iter()
        .map(|r| (r.what.as_str(), r.reason.as_str(), r.total))
        .collect();
    assert!(
        refused.contains(&("inbound_streams", "overloaded", 2.0)),
        "{refused:?}"
    );
    assert!(
        refused.contains(&("peer_certificates", "revoked", 1.0)),
        "{refused:?}"
    );
}

#[test]
fn the_history_keeps_five_minutes_and_a_counter_reset_counts_from_zero() {
    let m = Metrics::new();
    let history = History::new("n1", listeners());
    for i in 0..(KEPT as u64 + 10) {
        history.record(&m.encode(), secs(2 * i));
    }
    assert_eq!(history.samples.lock().unwrap().len(), KEPT);
    let a = Counts {
        requests: 100.0,
        ..Counts::default()
    };
    let b = Counts {
        requests: 7.0,
        ..Counts::default()
    };
    assert_eq!(delta(&a, &b).requests, 7.0);
}

#[test]
fn quantiles_interpolate_within_buckets_like_histogram_quantile() {
    let buckets = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
    assert_eq!(quantile_ms(&buckets, 0.5), Some(1.0));
    assert_eq!(quantile_ms(&buckets, 0.75), Some(1.5));
    assert_eq!(
        quantile_ms(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.99),
        None
    );
    let overflow = [(0.001, 0.0), (f64::INFINITY, 5.0)];
    assert_eq!(
        quantile_ms(&overflow, 0.99),
        Some(1.0),
        "the highest finite bound"
    );
}

#[test]
fn a_real_exposition_reads_the_same_filtered_and_whole() {
    // A registry with every family a sample reads moving, and gossip families
    // it does not read.
    let m = Metrics::new();
    http(&m, "api", "5xx", 7, 0.002);
    retries(&m, 2);
    let db = ListenerLabels {
        listener: "db".into(),
    };
    m.proxy.listener_active.get_or_create(&db).set(3);
    m.proxy.listener_connections.get_or_create(&db).inc_by(20);
    m.proxy
        .tunnel_setup_seconds
        .get_or_create(&db)
        .observe(0.0003);
    let pg = ServiceLabels {
        service: "pg".into(),
    };
    m.inbound.streams.get_or_create(&pg).inc_by(8);
    let full = ServiceReasonLabels {
        service: "pg".into(),
        reason: "overloaded",
    };
    m.inbound.refusals.get_or_create(&full).inc_by(2);
    let revoked = ReasonLabels { reason: "revoked" };
    m.tls.rejected_peers.get_or_create(&revoked).inc();
    m.gossip.connections.set(5);
    let text = m.encode();
    let at = secs(2);
    let filtered = Sample::read(&text, at, &listeners());
    assert_eq!(filtered, Sample::from_lines(text.lines(), at, &listeners()));
    assert_eq!(filtered.gossip_connections, 5.0);
    assert_eq!(filtered.served["pg"].requests, 8.0);
    assert!(!filtered.edges.is_empty() && !filtered.refused.is_empty());
    // A fresh registry has few series of the families not read (a gossiping
    // node has many more: refusal reasons, message kinds); still, about half
    // its lines never reach the parser.
    let kept = text.lines().filter(|l| sample::is_read(l)).count();
    let all = text.lines().count();
    assert!(kept * 10 < all * 6, "the filter kept {kept} of {all} lines");
}
