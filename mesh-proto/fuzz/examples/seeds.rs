//! Writes one valid frame per fuzz target into `corpus/<target>/seed`, so a run
//! starts from frames the decoders accept instead of having to discover the layout
//! (three valid names in a row, say) by mutation. Run from `fuzz/`:
//! `cargo run --example seeds`.

use std::fs;

use mesh_proto::codec::{Frame, decode_text, encode};
use mesh_proto::exchange::{Fields, Part, RequestHead, encode_part};
use mesh_proto::gossip::{
    Health, LegacyRouteDocument, NodeCertificate, NodeRecord, NodeState, RouteDocument,
    ServiceRecord,
};
use mesh_proto::route::RouteSpec;
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};

fn write<F: Frame>(target: &str, value: &F) -> Result<(), Box<dyn std::error::Error>> {
    let dir = format!("corpus/{target}");
    fs::create_dir_all(&dir)?;
    fs::write(format!("{dir}/seed"), encode(value)?)?;
    println!("wrote {dir}/seed");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    write(
        "stream_header",
        &StreamHeader {
            target_service: "orders".into(),
            source_service: Some("web.frontend".into()),
            protocol: Protocol::Http,
            request_id: RequestId(0x0123_4567_89ab_cdef),
            deadline_ms: Some(2_500),
        },
    )?;
    write(
        "stream_status",
        &StreamStatus::new(StatusCode::BackendRefused, "connection refused"),
    )?;
    write(
        "node_record",
        &NodeRecord {
            name: "node-1".into(),
            zone: "eu-west-1a".into(),
            cluster: "prod".into(),
            quic_addr: "10.0.0.1:4433".parse()?,
            version: "shoal 0.1.0".into(),
            started_at_ms: 1_700_000_000_000,
            state: NodeState::Serving,
        },
    )?;
    write(
        "node_certificate",
        &NodeCertificate {
            der: vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x01, 0x01],
        },
    )?;
    write(
        "service_record",
        &ServiceRecord {
            name: "orders".into(),
            protocol: Protocol::Tcp,
            weight: 100,
            health: Health::Healthy,
            inflight: 3,
            tags: vec!["canary".into(), "v2".into()],
        },
    )?;
    write(
        "route_document",
        &RouteDocument {
            name: "orders-split".into(),
            body: route_spec().to_body(),
            signature: vec![0x30; 70],
            signer_cert_der: vec![0x30; 300],
        },
    )?;
    // The v1 layout cannot be built outside mesh-proto, only decoded: a document a
    // v1 node stored (route "shop", a tombstone, stamped by node "n1").
    write(
        "legacy_route_document",
        &decode_text::<LegacyRouteDocument>(
            "AQAAAHAEc2hvcP17qNp2mwEAAAMCbjFUeyJuYW1lIjoic2hvcCIsImlzc3VlZF9hdF9tcyI6MTc2NzIyNTYwMDAwMCwiZGVsZXRlZCI6dHJ1ZSwiaG9zdHMiOlsiKiJdLCJydWxlcyI6W119BDBFAQIDMIID",
        )?,
    )?;
    let gossip = mesh_proto_fuzz::seed_message();
    write("gossip_message", &gossip)?;
    write("gossip_apply", &gossip)?;
    fs::create_dir_all("corpus/route_body")?;
    fs::write("corpus/route_body/seed", route_spec().to_body())?;
    println!("wrote corpus/route_body/seed");
    fs::create_dir_all("corpus/revocation_list")?;
    fs::write("corpus/revocation_list/seed", REVOCATION_LIST)?;
    println!("wrote corpus/revocation_list/seed");
    write_exchange_seed()?;
    Ok(())
}

/// A revocation list with both kinds of entry.
const REVOCATION_LIST: &[u8] = br#"{"revocation_list":{"trust_domain":"prod.example","version":3,"issued_at_ms":1700000000000,"entries":[{"serial":"5a1f","node":"web-7","not_after_ms":1800000000000,"reason":"key_compromise","revoked_at_ms":1700000000000},{"node":"db-2","issued_before_ms":1700000000000,"reason":"decommissioned","revoked_at_ms":1700000000000}]}}"#;

/// A route body using most of the schema.
fn route_spec() -> RouteSpec {
    let body = br#"{
      "name": "orders-split",
      "issued_at_ms": 1700000000000,
      "hosts": ["orders.example.org", "*.orders.example.org"],
      "rules": [
        {
          "match": { "path_prefix": "/api", "headers": { "x-canary": "1" }, "methods": ["GET"] },
          "backends": [{ "service": "orders-v2" }],
          "session": { "type": "header", "name": "x-session-id" }
        },
        {
          "backends": [{ "service": "orders", "weight": 90 }, { "service": "orders-v2", "weight": 10 }],
          "lb": "least_request",
          "timeout_ms": 5000,
          "per_try_timeout_ms": 1500,
          "retry": { "on": ["connect_failure", "5xx", "reset"], "attempts": 3 },
          "request_headers": { "add": { "x-via": "shoal" }, "remove": ["x-debug"] },
          "response_headers": { "remove": ["server"] },
          "session": { "type": "cookie", "ttl_s": 3600 },
          "allow_services": ["web"]
        }
      ]
    }"#;
    RouteSpec::parse_body(body).expect("the seed route is valid")
}

/// The `exchange_parts` seed: a step byte (the piece size), then a request's
/// parts.
fn write_exchange_seed() -> Result<(), Box<dyn std::error::Error>> {
    let mut parts = bytes::BytesMut::from(&[7u8][..]);
    for part in [
        Part::RequestHead(RequestHead {
            method: "POST".into(),
            target: "/orders?full=1".into(),
            fields: Fields(
                [(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                )]
                .into_iter()
                .collect(),
            ),
            has_body: true,
        }),
        Part::Data(bytes::Bytes::from_static(b"{\"id\":7}")),
        Part::End,
    ] {
        encode_part(&part, &mut parts)?;
    }
    fs::create_dir_all("corpus/exchange_parts")?;
    fs::write("corpus/exchange_parts/seed", &parts)?;
    println!("wrote corpus/exchange_parts/seed");
    Ok(())
}
