//! Hand-written cases for every way a frame can be refused, for every frame type:
//! short input, oversize lengths, wrong versions, leftover bytes, garbage bodies,
//! invalid values on the wire and on the way out, and text-form failures.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use common::*;
use mesh_proto::codec::{
    DecodeError, EncodeError, FRAME_HEADER_LEN, FieldError, Frame, InvalidFrame, MalformedReason,
    PROTOCOL_VERSION, decode, decode_exact, decode_text, encode, encode_into, encode_text,
    frame_len, max_text_len,
};
use mesh_proto::gossip::{NodeCertificate, NodeRecord, RouteDocument, ServiceRecord};
use mesh_proto::names::NameError;
use mesh_proto::tunnel::{StatusCode, StreamHeader, StreamStatus};

/// Runs `$check::<T>(sample)` for every frame type with its sample value.
macro_rules! for_every_frame {
    ($check:ident) => {
        $check::<StreamHeader>(&sample_header());
        $check::<StreamStatus>(&sample_status());
        $check::<NodeRecord>(&sample_node());
        $check::<ServiceRecord>(&sample_service());
        $check::<RouteDocument>(&sample_route());
        $check::<NodeCertificate>(&sample_certificate());
    };
}

fn invalid(e: DecodeError) -> InvalidFrame {
    match e {
        DecodeError::Invalid(invalid) => invalid,
        DecodeError::Incomplete { needed } => panic!("expected invalid, got incomplete ({needed})"),
    }
}

fn assert_malformed_field<F: Frame + std::fmt::Debug>(bytes: &[u8]) -> FieldError {
    match invalid(decode::<F>(bytes).unwrap_err()) {
        InvalidFrame::Malformed {
            frame,
            reason: MalformedReason::Field(field),
        } => {
            assert_eq!(frame, F::NAME);
            field
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

fn assert_malformed_body<F: Frame + std::fmt::Debug>(bytes: &[u8]) -> String {
    match invalid(decode::<F>(bytes).unwrap_err()) {
        InvalidFrame::Malformed {
            frame,
            reason: MalformedReason::Body(reason),
        } => {
            assert_eq!(frame, F::NAME);
            reason
        }
        other => panic!("expected an undecodable body, got {other:?}"),
    }
}

#[test]
fn every_prefix_of_a_valid_frame_is_incomplete_with_the_exact_shortfall() {
    fn check<F: Frame + std::fmt::Debug>(value: &F) {
        let wire = encode(value).unwrap();
        for cut in 0..wire.len() {
            let prefix = &wire[..cut];
            let needed = if cut < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN - cut
            } else {
                wire.len() - cut
            };
            let expected = Err(DecodeError::Incomplete { needed });
            assert_eq!(
                decode::<F>(prefix).map(|_| ()),
                expected,
                "{} cut at {cut}",
                F::NAME
            );
            assert_eq!(decode_exact::<F>(prefix).map(|_| ()), expected);
            if cut >= FRAME_HEADER_LEN {
                assert_eq!(frame_len::<F>(prefix), Ok(wire.len()));
            } else {
                assert!(frame_len::<F>(prefix).unwrap_err().is_incomplete());
            }
        }
    }
    for_every_frame!(check);
}

#[test]
fn an_oversize_length_is_refused_from_the_header_alone() {
    fn check<F: Frame + std::fmt::Debug>(_: &F) {
        // u32::MAX announced with only the header present: refused, not "incomplete",
        // so nobody waits for (or allocates) 4 GiB.
        let header = [PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff];
        let expected = InvalidFrame::TooLarge {
            frame: F::NAME,
            len: u32::MAX as usize,
            max: F::MAX_BODY_LEN,
        };
        assert_eq!(frame_len::<F>(&header), Err(expected.clone().into()));
        assert_eq!(decode::<F>(&header).map(|_| ()), Err(expected.into()));

        // One byte over the limit is refused; exactly the limit waits for the body.
        let over = u32::try_from(F::MAX_BODY_LEN + 1).unwrap().to_be_bytes();
        let mut frame = vec![PROTOCOL_VERSION];
        frame.extend_from_slice(&over);
        assert!(matches!(
            invalid(decode::<F>(&frame).unwrap_err()),
            InvalidFrame::TooLarge { len, .. } if len == F::MAX_BODY_LEN + 1
        ));
        let at = u32::try_from(F::MAX_BODY_LEN).unwrap().to_be_bytes();
        frame[1..5].copy_from_slice(&at);
        assert_eq!(
            decode::<F>(&frame).map(|_| ()),
            Err(DecodeError::Incomplete {
                needed: F::MAX_BODY_LEN
            })
        );
    }
    for_every_frame!(check);
}

#[test]
fn a_wrong_version_is_refused_from_the_first_byte() {
    fn check<F: Frame + std::fmt::Debug>(value: &F) {
        let mut wire = encode(value).unwrap();
        for version in [0, 2, 7, 255] {
            wire[0] = version;
            let expected = DecodeError::from(InvalidFrame::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            });
            assert_eq!(decode::<F>(&wire).map(|_| ()), Err(expected.clone()));
            assert_eq!(decode::<F>(&wire[..1]).map(|_| ()), Err(expected.clone()));
            assert_eq!(
                decode_text::<F>(&encode_b64(&wire)).map(|_| ()),
                Err(expected)
            );
        }
    }
    for_every_frame!(check);
    let msg = invalid(decode::<StreamHeader>(&[7]).unwrap_err()).to_string();
    assert_eq!(
        msg,
        "peer speaks protocol version 7, this node speaks 1: upgrade the older node"
    );
}

#[test]
fn leftover_bytes_inside_the_body_are_trailing_bytes() {
    fn check<F: Frame + std::fmt::Debug>(value: &F) {
        let wire = encode(value).unwrap();
        let mut body = wire[FRAME_HEADER_LEN..].to_vec();
        body.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            decode::<F>(&with_header(&body)).map(|_| ()),
            Err(InvalidFrame::TrailingBytes {
                frame: F::NAME,
                extra: 3
            }
            .into())
        );
    }
    for_every_frame!(check);
}

#[test]
fn decode_exact_refuses_bytes_after_the_frame_that_decode_leaves() {
    fn check<F: Frame + std::fmt::Debug + PartialEq>(value: &F) {
        let mut wire = encode(value).unwrap();
        let len = wire.len();
        wire.push(0);
        assert_eq!(decode::<F>(&wire).unwrap(), (encode_round(value), len));
        assert_eq!(
            decode_exact::<F>(&wire).map(|_| ()),
            Err(InvalidFrame::TrailingBytes {
                frame: F::NAME,
                extra: 1
            }
            .into())
        );
    }
    for_every_frame!(check);
}

fn encode_round<F: Frame>(value: &F) -> F {
    decode_exact(&encode(value).unwrap()).unwrap()
}

fn encode_b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

#[test]
fn a_garbage_body_is_malformed() {
    fn check<F: Frame + std::fmt::Debug>(_: &F) {
        // 0xff is no valid start for any body (bad varint tag / enum index / string).
        assert_malformed_body::<F>(&with_header(&[0xff; 40]));
        // A body cut short inside the value: the frame is complete, so it is
        // malformed, not incomplete.
        assert_malformed_body::<F>(&with_header(&[]));
    }
    for_every_frame!(check);

    // Valid bytes of one frame type are garbage for another.
    let status = encode(&sample_status()).unwrap();
    assert!(
        invalid(decode::<NodeRecord>(&status).unwrap_err())
            .to_string()
            .contains("node record")
    );
}

#[test]
fn a_length_prefix_claiming_gigabytes_is_refused_without_allocating() {
    // StreamStatus body: code 0 (ok), then a reason whose varint length prefix
    // (253 = u64 follows) claims 2^40 bytes. bincode's per-type memory limit refuses
    // it before allocating the string.
    let mut body = vec![0, 253];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let reason = assert_malformed_body::<StreamStatus>(&with_header(&body));
    assert!(reason.to_lowercase().contains("limit"), "{reason}");

    // Same for the route document's byte vectors.
    let mut body = vec![1, b'r', 253];
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_malformed_body::<RouteDocument>(&with_header(&body));
}

#[test]
fn invalid_names_inside_well_formed_frames_are_malformed() {
    for bad in ["Orders", "", "a_b", "-a", "a..b"] {
        let mut header = sample_header();
        header.target_service = bad.into();
        let field = assert_malformed_field::<StreamHeader>(&unchecked_frame(&header));
        assert!(matches!(field, FieldError::Name(_)), "{bad:?}: {field:?}");

        let mut header = sample_header();
        header.source_service = Some(bad.into());
        assert_malformed_field::<StreamHeader>(&unchecked_frame(&header));

        let mut node = sample_node();
        node.zone = bad.into();
        assert_malformed_field::<NodeRecord>(&unchecked_frame(&node));

        let mut service = sample_service();
        service.tags.push(bad.into());
        assert_malformed_field::<ServiceRecord>(&unchecked_frame(&service));

        let mut route = sample_route();
        route.name = bad.into();
        assert_malformed_field::<RouteDocument>(&unchecked_frame(&route));
    }
    let mut header = sample_header();
    header.target_service = "Orders".into();
    let msg = invalid(decode::<StreamHeader>(&unchecked_frame(&header)).unwrap_err()).to_string();
    assert!(
        msg.contains("stream header") && msg.contains("target service"),
        "{msg}"
    );

    let mut node = sample_node();
    node.name = String::new();
    assert_eq!(
        assert_malformed_field::<NodeRecord>(&unchecked_frame(&node)),
        FieldError::Name(NameError::Empty { what: "node name" })
    );
}

#[test]
fn unknown_enum_discriminants_are_malformed() {
    // StreamStatus body starts with the status code: six variants, 0..=5.
    let mut wire = encode(&StreamStatus::new(StatusCode::Draining, "bye")).unwrap();
    assert_eq!(wire[FRAME_HEADER_LEN], 5);
    wire[FRAME_HEADER_LEN] = 6;
    let reason = assert_malformed_body::<StreamStatus>(&wire);
    assert!(
        reason.contains("variant") || reason.contains("Variant"),
        "{reason}"
    );

    // ServiceRecord: name "orders" (length 6 + 6 bytes), then the protocol (2 variants).
    let mut wire = encode(&sample_service()).unwrap();
    let protocol_at = FRAME_HEADER_LEN + 1 + 6;
    assert_eq!(wire[protocol_at], 0);
    wire[protocol_at] = 2;
    assert_malformed_body::<ServiceRecord>(&wire);

    // An Option tag other than 0 or 1 (StreamHeader's source service).
    let mut wire = encode(&sample_header()).unwrap();
    let option_at = FRAME_HEADER_LEN + 1 + "orders".len();
    assert_eq!(wire[option_at], 1);
    wire[option_at] = 2;
    assert_malformed_body::<StreamHeader>(&wire);
}

#[test]
fn invalid_values_are_not_encoded() {
    fn refused<F: Frame>(value: &F) -> FieldError {
        let mut out = b"keep".to_vec();
        let err = encode_into(value, &mut out).unwrap_err();
        assert_eq!(out, b"keep", "nothing is written on error");
        assert_eq!(encode_text(value).unwrap_err(), err);
        match err {
            EncodeError::Invalid { frame, reason } => {
                assert_eq!(frame, F::NAME);
                reason
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    let mut header = sample_header();
    header.target_service = "Orders".into();
    assert!(matches!(
        refused(&header),
        FieldError::Name(NameError::BadChar { ch: 'O', .. })
    ));
    header.target_service = String::new();
    assert!(matches!(
        refused(&header),
        FieldError::Name(NameError::Empty { .. })
    ));

    let status = StreamStatus {
        code: StatusCode::Overloaded,
        reason: "x".repeat(StreamStatus::MAX_REASON_LEN + 1),
    };
    assert_eq!(
        refused(&status),
        FieldError::TooLong {
            field: "status reason",
            len: 257,
            max: 256
        }
    );
    // ... and a peer that sends one anyway is refused too.
    assert!(matches!(
        assert_malformed_field::<StreamStatus>(&unchecked_frame(&status)),
        FieldError::TooLong { len: 257, .. }
    ));
    let at_limit = StreamStatus {
        code: StatusCode::Overloaded,
        reason: "x".repeat(StreamStatus::MAX_REASON_LEN),
    };
    assert_eq!(encode_round(&at_limit), at_limit);

    let mut node = sample_node();
    node.version = "x".repeat(NodeRecord::MAX_VERSION_LEN + 1);
    assert!(matches!(
        refused(&node),
        FieldError::TooLong {
            len: 65,
            max: 64,
            ..
        }
    ));
    node.version = "shoal\n0.1".into();
    assert!(matches!(
        refused(&node),
        FieldError::BadChar { ch: '\n', .. }
    ));
    node.version = String::new();
    assert!(matches!(refused(&node), FieldError::Empty { .. }));
    let mut node = sample_node();
    node.quic_addr = "0.0.0.0:4433".parse().unwrap();
    assert!(matches!(refused(&node), FieldError::Undialable { .. }));
    node.quic_addr = "[::1]:0".parse().unwrap();
    assert!(matches!(refused(&node), FieldError::Undialable { .. }));

    let mut service = sample_service();
    service.tags = (0..=ServiceRecord::MAX_TAGS)
        .map(|i| format!("t{i}"))
        .collect();
    assert_eq!(
        refused(&service),
        FieldError::TooMany {
            field: "service tags",
            count: 17,
            max: 16
        }
    );
    assert!(matches!(
        assert_malformed_field::<ServiceRecord>(&unchecked_frame(&service)),
        FieldError::TooMany { count: 17, .. }
    ));
    service.tags.pop();
    assert_eq!(encode_round(&service), service);
    for weight in [ServiceRecord::MAX_WEIGHT + 1, u32::MAX] {
        let mut service = sample_service();
        service.weight = weight;
        assert!(matches!(refused(&service), FieldError::OutOfRange { .. }));
        assert!(matches!(
            assert_malformed_field::<ServiceRecord>(&unchecked_frame(&service)),
            FieldError::OutOfRange { .. }
        ));
    }
    // Weight 0 is a withdrawn service: a valid record.
    let mut withdrawn = sample_service();
    withdrawn.weight = ServiceRecord::WITHDRAWN;
    assert_eq!(encode_round(&withdrawn), withdrawn);

    let mut route = sample_route();
    route.signature = vec![0; RouteDocument::MAX_SIGNATURE_LEN + 1];
    assert!(matches!(
        refused(&route),
        FieldError::TooLong {
            field: "route signature",
            ..
        }
    ));
    let mut route = sample_route();
    route.body = vec![0; RouteDocument::MAX_DOCUMENT_LEN + 1];
    assert!(matches!(
        refused(&route),
        FieldError::TooLong {
            field: "route body",
            ..
        }
    ));
    let mut route = sample_route();
    route.name = "Routes".into();
    assert!(matches!(refused(&route), FieldError::Name(_)));
}

#[test]
fn a_valid_value_over_the_frame_limit_is_too_large_to_encode() {
    // 16 tags of 200 bytes are each valid, but together exceed 2 KiB.
    let mut service = sample_service();
    service.tags = (0..16).map(|i| tag(i, 200)).collect();
    let mut out = b"keep".to_vec();
    let err = encode_into(&service, &mut out).unwrap_err();
    assert_eq!(out, b"keep");
    assert!(matches!(
        err,
        EncodeError::TooLarge { frame: "service record", len, max: 2048 } if len > 2048
    ));
    assert!(err.to_string().contains("service record"), "{err}");
}

#[test]
fn values_at_the_size_limits_round_trip() {
    // These exercise bincode's memory limit, which counts more than wire bytes: a
    // valid frame close to its body limit must still decode.
    let mut header = sample_header();
    header.target_service = long_name(253);
    header.source_service = Some(long_name(253));
    header.deadline_ms = Some(u32::MAX);
    check_near_limit(&header, 500);

    check_near_limit(&StreamStatus::new(StatusCode::Ok, "é".repeat(200)), 250);

    let mut node = sample_node();
    node.name = long_name(253);
    node.zone = long_name(253);
    node.cluster = long_name(253);
    node.version = "~".repeat(64);
    node.quic_addr = "[2001:db8::1]:65535".parse().unwrap();
    node.started_at_ms = u64::MAX;
    check_near_limit(&node, 800);

    // Fill a service record to within a few bytes of 2048.
    let mut service = sample_service();
    service.name = long_name(253);
    service.inflight = u32::MAX;
    service.weight = ServiceRecord::MAX_WEIGHT;
    service.tags = (0..16).map(|i| tag(i, 110)).collect();
    check_near_limit(&service, 2040);

    let route = RouteDocument {
        name: long_name(253),
        body: vec![0xab; RouteDocument::MAX_DOCUMENT_LEN],
        signature: vec![0xcd; RouteDocument::MAX_SIGNATURE_LEN],
        signer_cert_der: vec![0xef; RouteDocument::MAX_SIGNER_CERT_LEN],
    };
    check_near_limit(&route, 29_000);
}

/// A distinct valid tag of exactly `len` bytes.
fn tag(i: usize, len: usize) -> String {
    format!("t{i:02}.{}", long_name(len - 4))
}

fn check_near_limit<F: Frame + PartialEq + std::fmt::Debug>(value: &F, at_least: usize) {
    let wire = encode(value).unwrap();
    let body = wire.len() - FRAME_HEADER_LEN;
    assert!(
        body >= at_least && body <= F::MAX_BODY_LEN,
        "{}: body {body}",
        F::NAME
    );
    assert_eq!(&decode_exact::<F>(&wire).unwrap(), value);
    assert_eq!(
        &decode_text::<F>(&encode_text(value).unwrap()).unwrap(),
        value
    );
}

#[test]
fn text_form_failures() {
    fn check<F: Frame + std::fmt::Debug>(value: &F) {
        // Too long: refused on length, before the base64 is even looked at.
        let max = max_text_len::<F>();
        let long = "!".repeat(max + 1);
        assert_eq!(
            decode_text::<F>(&long).map(|_| ()),
            Err(InvalidFrame::TooLarge {
                frame: F::NAME,
                len: max + 1,
                max
            }
            .into())
        );
        // Not base64url: padding, the standard alphabet, spaces.
        for bad in ["AQ==", "a+b/", "AQAA AA", "é"] {
            assert!(
                matches!(
                    invalid(decode_text::<F>(bad).unwrap_err()),
                    InvalidFrame::Malformed {
                        reason: MalformedReason::Base64(_),
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        // A cut-off value is malformed, not incomplete: gossip values are whole.
        let wire = encode(value).unwrap();
        let cut = encode_b64(&wire[..wire.len() - 1]);
        assert_eq!(
            decode_text::<F>(&cut).map(|_| ()),
            Err(InvalidFrame::Malformed {
                frame: F::NAME,
                reason: MalformedReason::Truncated { needed: 1 }
            }
            .into())
        );
        assert!(!decode_text::<F>("").unwrap_err().is_incomplete());
        // Trailing bytes after the frame.
        let mut extra = wire.clone();
        extra.push(0);
        assert_eq!(
            decode_text::<F>(&encode_b64(&extra)).map(|_| ()),
            Err(InvalidFrame::TrailingBytes {
                frame: F::NAME,
                extra: 1
            }
            .into())
        );
    }
    for_every_frame!(check);
}

#[test]
fn error_messages_say_what_to_check() {
    let too_large = invalid(frame_len::<NodeRecord>(&[1, 0, 1, 0, 0]).unwrap_err());
    assert_eq!(
        too_large.to_string(),
        "node record of 65536 bytes is over the limit of 1024: the sender is not a compatible Shoal node or runs a newer version"
    );
    let incomplete = decode::<NodeRecord>(&[1]).unwrap_err();
    assert!(incomplete.is_incomplete());
    assert_eq!(
        incomplete.to_string(),
        "incomplete frame: at least 4 more bytes are needed"
    );
}
