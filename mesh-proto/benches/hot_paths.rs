//! Micro-benchmarks of the per-connection and per-change work Shoal does without
//! I/O: the tunnel stream header codec, the routing-table rebuild, the
//! load-balancer pickers, and HTTP route lookup and merge. `cargo bench -p mesh-proto`; see docs/benchmarks.md.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_proto::codec::{decode_exact, encode};
use mesh_proto::gossip::RouteDocument;
use mesh_proto::gossip::{Health, NodeRecord, NodeState, ServiceRecord};
use mesh_proto::lb::{self, PickContext, Policy, Ring};
use mesh_proto::route::{self, RouteSpec, RouteTable};
use mesh_proto::routing::{Endpoint, MemberInput, build_table};
use mesh_proto::tunnel::{Protocol, RequestId, StreamHeader};

fn header() -> StreamHeader {
    StreamHeader {
        target_service: "payments-api".into(),
        source_service: Some("web-frontend".into()),
        protocol: Protocol::Tcp,
        request_id: RequestId(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        deadline_ms: Some(2_000),
    }
}

fn codec(c: &mut Criterion) {
    let h = header();
    let wire = encode(&h).unwrap();
    c.bench_function("stream_header/encode", |b| {
        b.iter(|| encode(black_box(&h)).unwrap())
    });
    c.bench_function("stream_header/decode", |b| {
        b.iter(|| decode_exact::<StreamHeader>(black_box(&wire)).unwrap())
    });
}

/// One member of the benchmark cluster: name, node record, services, allowed.
type Member = (String, Arc<NodeRecord>, Vec<ServiceRecord>, Vec<String>);

/// 100 nodes, each hosting 100 of 1,000 services: 1,000 services × 10 endpoints.
fn cluster() -> Vec<Member> {
    (0..100u32)
        .map(|n| {
            let name = format!("node-{n}");
            let addr: SocketAddr = format!("10.0.{}.{}:7100", n / 250, n % 250 + 1)
                .parse()
                .unwrap();
            let node = Arc::new(NodeRecord {
                name: name.clone(),
                zone: format!("zone-{}", n % 3),
                cluster: "bench".into(),
                quic_addr: addr,
                version: "shoal bench".into(),
                started_at_ms: 1,
                state: NodeState::Serving,
            });
            let services: Vec<ServiceRecord> = (0..100u32)
                .map(|k| ServiceRecord {
                    name: format!("svc-{}", (n * 10 + k * 10) % 1000 + n % 10),
                    protocol: Protocol::Tcp,
                    weight: 100,
                    health: Health::Healthy,
                    inflight: 0,
                    tags: vec![],
                })
                .collect();
            let allowed = services.iter().map(|s| s.name.clone()).collect();
            (name, node, services, allowed)
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let members = cluster();
    let (table, _) = build_table(inputs(&members));
    let endpoints: usize = table.services().map(|(_, e)| e.len()).sum();
    assert_eq!(endpoints, 10_000);
    assert_eq!(table.services().count(), 1_000);
    c.bench_function("routing/rebuild_1000_services_x_10_endpoints", |b| {
        b.iter(|| build_table(inputs(black_box(&members))))
    });
}

fn inputs(members: &[Member]) -> Vec<MemberInput<'_>> {
    members
        .iter()
        .map(|(name, node, services, allowed)| MemberInput {
            name,
            generation: 1,
            node: Some(node),
            services,
            allowed,
        })
        .collect()
}

fn endpoints() -> Vec<Endpoint> {
    (0..10u32)
        .map(|i| Endpoint {
            node: format!("node-{i}"),
            generation: 1,
            zone: format!("zone-{}", i % 2),
            addr: format!("10.0.0.{}:7100", i + 1).parse().unwrap(),
            protocol: Protocol::Tcp,
            health: Health::Healthy,
            weight: 100 + i * 10,
            inflight: 0,
            tags: vec![],
        })
        .collect()
}

fn pickers(c: &mut Criterion) {
    let eps = endpoints();
    let ring = Ring::build(&eps);
    let available = |_: &Endpoint| true;
    let inflight = |e: &Endpoint| e.weight % 7;
    let mut counter = 0u64;
    for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::RingHash] {
        c.bench_function(&format!("lb/pick_{}_of_10", policy.as_str()), |b| {
            b.iter(|| {
                counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let ctx = PickContext {
                    local_zone: Some("zone-0"),
                    min_zone_healthy: 1,
                    counter,
                    random: [counter, counter.rotate_left(17)],
                    key: counter,
                    available: &available,
                    inflight: &inflight,
                    ring: Some(&ring),
                };
                lb::pick(policy, black_box(&eps), &ctx)
            })
        });
    }
    c.bench_function("lb/ring_build_10_endpoints", |b| {
        b.iter(|| Ring::build(black_box(&eps)))
    });
}

/// 100 routes, one per host `app-<i>.example.org`, each with four rules (a header
/// match, two path prefixes, a catch-all), plus a `*.example.org` route.
fn route_specs() -> Vec<RouteSpec> {
    let mut specs: Vec<RouteSpec> = (0..100)
        .map(|i| {
            let body = format!(
                r#"{{"name":"app-{i}","issued_at_ms":1,"hosts":["app-{i}.example.org"],"rules":[
                    {{"match":{{"path_prefix":"/api","headers":{{"x-canary":"1"}}}},"backends":[{{"service":"canary"}}]}},
                    {{"match":{{"path_prefix":"/api/v2"}},"backends":[{{"service":"v2"}}]}},
                    {{"match":{{"path_prefix":"/api"}},"backends":[{{"service":"a","weight":90}},{{"service":"b","weight":10}}]}},
                    {{"backends":[{{"service":"web"}}]}}]}}"#
            );
            RouteSpec::parse_body(body.as_bytes()).unwrap()
        })
        .collect();
    specs.push(
        RouteSpec::parse_body(
            br#"{"name":"wild","issued_at_ms":1,"hosts":["*.example.org"],"rules":[{"backends":[{"service":"w"}]}]}"#,
        )
        .unwrap(),
    );
    specs
}

fn routes(c: &mut Criterion) {
    let specs = route_specs();
    let table = RouteTable::new(specs.clone());
    let header = |name: &str| (name == "x-user").then_some("bob");
    c.bench_function("route/lookup_exact_host_of_101_routes", |b| {
        b.iter(|| {
            let m = table.route(
                black_box("App-57.example.org:443"),
                black_box("/api/orders/123?x=1"),
                "GET",
                header,
            );
            m.unwrap().rule.pick_backend(black_box(0x1234_5678))
        })
    });
    c.bench_function("route/lookup_wildcard_of_101_routes", |b| {
        b.iter(|| {
            table.route(
                black_box("other.example.org"),
                black_box("/"),
                "GET",
                header,
            )
        })
    });
    c.bench_function("route/parse_body_4_rules", |b| {
        let body = specs[0].to_body();
        b.iter(|| RouteSpec::parse_body(black_box(&body)).unwrap())
    });
    // What every node does on a gossip change: 10 nodes each publish the same 101
    // winners, so 1,010 documents, 101 distinct.
    let docs: Vec<RouteDocument> = specs
        .iter()
        .map(|s| RouteDocument {
            name: s.name.clone(),
            body: s.to_body(),
            signature: vec![0x30; 70],
            signer_cert_der: vec![0x30; 300],
        })
        .collect();
    let published: Vec<&RouteDocument> = (0..10).flat_map(|_| docs.iter()).collect();
    c.bench_function("route/merge_1010_documents_101_routes", |b| {
        b.iter(|| route::merge(black_box(published.iter().copied()), |_| true))
    });
}

criterion_group!(benches, codec, routing, pickers, routes);
criterion_main!(benches);
