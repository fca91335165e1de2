//! Valid sample values and proptest strategies for every frame type, shared by the
//! integration tests.
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses some helpers; failed unwraps are failed tests

use std::net::{IpAddr, SocketAddr};

use mesh_proto::codec::{FRAME_HEADER_LEN, PROTOCOL_VERSION};
use mesh_proto::gossip::{
    Health, NodeCertificate, NodeRecord, NodeState, RouteDocument, ServiceRecord,
};
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use proptest::collection::vec;
use proptest::prelude::*;

/// Valid names: one to three dot-separated labels.
pub fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,2}"
}

pub fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Http)]
}

pub fn stream_header() -> impl Strategy<Value = StreamHeader> {
    (
        name(),
        proptest::option::of(name()),
        protocol(),
        any::<u128>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(target_service, source_service, protocol, id, deadline_ms)| StreamHeader {
                target_service,
                source_service,
                protocol,
                request_id: RequestId(id),
                deadline_ms,
            },
        )
}

pub fn status_code() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        Just(StatusCode::Ok),
        Just(StatusCode::UnknownService),
        Just(StatusCode::Unauthorized),
        Just(StatusCode::BackendRefused),
        Just(StatusCode::Overloaded),
        Just(StatusCode::Draining),
    ]
}

pub fn stream_status() -> impl Strategy<Value = StreamStatus> {
    // Any string: `new` cuts it to the limit.
    (status_code(), any::<String>()).prop_map(|(code, reason)| StreamStatus::new(code, reason))
}

pub fn node_certificate() -> impl Strategy<Value = NodeCertificate> {
    proptest::collection::vec(any::<u8>(), 1..=NodeCertificate::MAX_DER_LEN)
        .prop_map(|der| NodeCertificate { der })
}

#[allow(dead_code)]
pub fn sample_certificate() -> NodeCertificate {
    NodeCertificate {
        der: vec![0x30, 0x82, 0x01, 0x00],
    }
}

pub fn node_record() -> impl Strategy<Value = NodeRecord> {
    (
        (name(), name(), name()),
        any::<IpAddr>().prop_filter("dialable", |ip| !ip.is_unspecified()),
        1..=u16::MAX,
        "[ -~]{1,64}",
        any::<u64>(),
        prop_oneof![Just(NodeState::Serving), Just(NodeState::Draining)],
    )
        .prop_map(
            |((name, zone, cluster), ip, port, version, started_at_ms, state)| NodeRecord {
                name,
                zone,
                cluster,
                quic_addr: SocketAddr::new(ip, port),
                version,
                started_at_ms,
                state,
            },
        )
}

pub fn service_record() -> impl Strategy<Value = ServiceRecord> {
    (
        name(),
        protocol(),
        ServiceRecord::MIN_WEIGHT..=ServiceRecord::MAX_WEIGHT,
        prop_oneof![
            Just(Health::Healthy),
            Just(Health::Unhealthy),
            Just(Health::Unknown)
        ],
        any::<u32>(),
        vec(name(), 0..=ServiceRecord::MAX_TAGS),
    )
        .prop_map(
            |(name, protocol, weight, health, inflight, tags)| ServiceRecord {
                name,
                protocol,
                weight,
                health,
                inflight,
                tags,
            },
        )
}

pub fn route_document() -> impl Strategy<Value = RouteDocument> {
    (
        name(),
        vec(any::<u8>(), 0..=4096),
        vec(any::<u8>(), 0..=RouteDocument::MAX_SIGNATURE_LEN),
        vec(any::<u8>(), 0..=1024),
    )
        .prop_map(|(name, body, signature, signer_cert_der)| RouteDocument {
            name,
            body,
            signature,
            signer_cert_der,
        })
}

/// Byte strings worth throwing at a decoder: arbitrary bytes, a correct header in
/// front of arbitrary bytes, and a valid frame with some bytes overwritten and its
/// end cut at a random place.
pub fn hostile_bytes(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(any::<u8>(), 0..600).prop_map(|body| with_header(&body)),
        (
            valid,
            vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(mut frame, edits, cut)| {
                for (at, byte) in edits {
                    let i = at.index(frame.len());
                    frame[i] = byte;
                }
                frame.truncate(cut.index(frame.len() + 1));
                frame
            }),
    ]
}

/// `body` behind a correct version byte and length field.
pub fn with_header(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![PROTOCOL_VERSION];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(body);
    assert_eq!(frame.len(), FRAME_HEADER_LEN + body.len());
    frame
}

/// A frame around the bincode encoding of `value`, skipping validation: how a buggy
/// or hostile peer would send an invalid value.
pub fn unchecked_frame<T: bincode::Encode>(value: &T) -> Vec<u8> {
    with_header(&bincode::encode_to_vec(value, bincode::config::standard()).unwrap())
}

pub fn sample_header() -> StreamHeader {
    StreamHeader {
        target_service: "orders".into(),
        source_service: Some("web.frontend".into()),
        protocol: Protocol::Http,
        request_id: RequestId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        deadline_ms: Some(2_500),
    }
}

pub fn sample_status() -> StreamStatus {
    StreamStatus::new(
        StatusCode::BackendRefused,
        "connect to 127.0.0.1:8080: refused",
    )
}

pub fn sample_node() -> NodeRecord {
    NodeRecord {
        name: "node-1".into(),
        zone: "eu-west-1a".into(),
        cluster: "prod".into(),
        quic_addr: "10.0.0.1:4433".parse().unwrap(),
        version: "shoal 0.1.0".into(),
        started_at_ms: 1_700_000_000_000,
        state: NodeState::Serving,
    }
}

pub fn sample_service() -> ServiceRecord {
    ServiceRecord {
        name: "orders".into(),
        protocol: Protocol::Tcp,
        weight: 100,
        health: Health::Healthy,
        inflight: 3,
        tags: vec!["canary".into(), "v2".into()],
    }
}

pub fn sample_route() -> RouteDocument {
    RouteDocument {
        name: "orders-split".into(),
        body: b"split: 90/10".to_vec(),
        signature: vec![0x30; 70],
        signer_cert_der: vec![0x30; 500],
    }
}

/// A label of `len` characters, for names near the length limits.
pub fn long_name(len: usize) -> String {
    let labels: Vec<String> = (0..len.div_ceil(64))
        .map(|i| {
            let label_len = (len - i * 64).min(63);
            "a".repeat(label_len)
        })
        .collect();
    let name = labels.join(".");
    assert_eq!(name.len(), len);
    assert!(mesh_proto::names::is_valid_name(&name));
    name
}
