//! Property tests, per frame type: every valid value survives the binary and the
//! text form unchanged, `decode` reports exactly the bytes it used, and no input at
//! all makes a decoder panic.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use common::*;
use mesh_proto::codec::{
    DecodeError, FRAME_HEADER_LEN, Frame, decode, decode_exact, decode_text, encode, encode_into,
    encode_text, frame_len,
};
use mesh_proto::gossip::{NodeCertificate, NodeRecord, RouteDocument, ServiceRecord};
use mesh_proto::tunnel::{StreamHeader, StreamStatus};
use proptest::prelude::*;

/// The round-trip properties that hold for any valid value of any frame type.
fn check_round_trip<F: Frame + PartialEq + std::fmt::Debug>(value: &F, trailing: &[u8]) {
    let wire = encode(value).unwrap();
    assert!(wire.len() - FRAME_HEADER_LEN <= F::MAX_BODY_LEN);
    assert_eq!(
        frame_len::<F>(&wire[..FRAME_HEADER_LEN]).unwrap(),
        wire.len()
    );
    assert_eq!(&decode_exact::<F>(&wire).unwrap(), value);

    // Streaming: whatever follows the frame is left for the caller.
    let mut stream = wire.clone();
    stream.extend_from_slice(trailing);
    let (decoded, used) = decode::<F>(&stream).unwrap();
    assert_eq!(&decoded, value);
    assert_eq!(used, wire.len());

    // encode_into appends and reports the same bytes.
    let mut out = b"prefix".to_vec();
    assert_eq!(encode_into(value, &mut out).unwrap(), wire.len());
    assert_eq!(&out[6..], &wire[..]);

    let text = encode_text(value).unwrap();
    assert!(text.len() <= mesh_proto::codec::max_text_len::<F>());
    assert_eq!(&decode_text::<F>(&text).unwrap(), value);
}

/// What a decoder may return for hostile input: anything but a panic, and if it
/// accepts, the value must be valid and re-encode to something that decodes equal.
fn check_hostile<F: Frame + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    match decode::<F>(bytes) {
        Ok((value, used)) => {
            assert!(used <= bytes.len());
            assert_eq!(value.validate(), Ok(()));
            assert_eq!(decode_exact::<F>(&encode(&value).unwrap()).unwrap(), value);
        }
        Err(DecodeError::Incomplete { needed }) => assert!(needed > 0),
        Err(DecodeError::Invalid(_)) => {}
    }
    let _ = decode_exact::<F>(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = decode_text::<F>(text);
    }
    let text = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    if let Ok(value) = decode_text::<F>(&text) {
        assert_eq!(
            decode_text::<F>(&encode_text(&value).unwrap()).unwrap(),
            value
        );
    }
}

macro_rules! frame_properties {
    ($module:ident, $ty:ty, $strategy:expr) => {
        mod $module {
            use super::*;

            proptest! {
                #[test]
                fn round_trips(value in $strategy, trailing in proptest::collection::vec(any::<u8>(), 0..16)) {
                    check_round_trip::<$ty>(&value, &trailing);
                }

                #[test]
                fn decoders_never_panic(bytes in hostile_bytes($strategy.prop_map(|v| encode(&v).unwrap()))) {
                    check_hostile::<$ty>(&bytes);
                }

                #[test]
                fn text_decoder_never_panics(text in any::<String>()) {
                    let _ = decode_text::<$ty>(&text);
                }
            }
        }
    };
}

frame_properties!(stream_header, StreamHeader, stream_header());
frame_properties!(stream_status, StreamStatus, stream_status());
frame_properties!(node_record, NodeRecord, node_record());
frame_properties!(service_record, ServiceRecord, service_record());
frame_properties!(route_document, RouteDocument, route_document());
frame_properties!(node_certificate, NodeCertificate, node_certificate());

proptest! {
    /// Frames of different types written back to back come out in order.
    #[test]
    fn a_stream_of_frames_decodes_in_order(
        header in stream_header(),
        status in stream_status(),
        payload in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut wire = Vec::new();
        encode_into(&header, &mut wire).unwrap();
        encode_into(&status, &mut wire).unwrap();
        wire.extend_from_slice(&payload);
        let (h, a) = decode::<StreamHeader>(&wire).unwrap();
        let (s, b) = decode::<StreamStatus>(&wire[a..]).unwrap();
        prop_assert_eq!(h, header);
        prop_assert_eq!(s, status);
        prop_assert_eq!(&wire[a + b..], &payload[..]);
    }
}
