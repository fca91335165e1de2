use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::tunnel::StatusCode;

fn fields(pairs: &[(&'static str, &[u8])]) -> Fields {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_bytes(value).unwrap());
    }
    Fields(map)
}

/// A head as a hostile peer may write it: any bytes for names and values
/// (the same layout on the wire as [`RequestHead`]).
#[derive(Debug, Clone, bincode::Encode)]
struct RawHead {
    method: String,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    has_body: bool,
}

impl RawHead {
    fn from(h: &RequestHead) -> RawHead {
        RawHead {
            method: h.method.clone(),
            target: h.target.clone(),
            fields: h
                .fields
                .0
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            has_body: h.has_body,
        }
    }

    fn with(mut self, name: &str, value: &[u8]) -> RawHead {
        self.fields.push((name.into(), value.to_vec()));
        self
    }

    /// Its request-head part, written without any check.
    fn wire(&self) -> BytesMut {
        let body = bincode::encode_to_vec(self, bincode::config::standard()).unwrap();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[1, crate::codec::PROTOCOL_VERSION]);
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(&body);
        wire
    }
}

fn get() -> RequestHead {
    RequestHead {
        method: "GET".into(),
        target: "/orders/7?full=1".into(),
        fields: fields(&[("host", b"web"), ("x-request-id", b"abc")]),
        has_body: false,
    }
}

fn encoded(parts: &[Part]) -> BytesMut {
    let mut out = BytesMut::new();
    for p in parts {
        encode_part(p, &mut out).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
    out
}

/// Decodes every part of `wire`, feeding it `step` bytes at a time.
fn decode_all(wire: &[u8], step: usize) -> Result<Vec<Part>, PartError> {
    let mut buf = BytesMut::new();
    let mut parts = Vec::new();
    for chunk in wire.chunks(step) {
        buf.extend_from_slice(chunk);
        while let Some(p) = decode_part(&mut buf)? {
            parts.push(p);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(parts)
}

fn an_exchange() -> Vec<Part> {
    vec![
        Part::RequestHead(get()),
        Part::Data(Bytes::from_static(b"hello")),
        Part::Data(Bytes::from(vec![7u8; MAX_DATA_PART])),
        Part::Trailers(Trailers {
            fields: fields(&[("grpc-status", b"0")]),
        }),
        Part::ResponseHead(ResponseHead {
            status: 200,
            fields: fields(&[("content-type", b"text/plain; charset=\xff")]),
            has_body: true,
        }),
        Part::End,
        Part::NotForwarded(StreamStatus::new(StatusCode::BackendRefused, "no backend")),
    ]
}

#[test]
fn every_part_survives_the_wire_whatever_the_read_sizes() {
    let parts = an_exchange();
    let wire = encoded(&parts);
    for step in [1, 2, 5, 7, 1000, wire.len()] {
        assert_eq!(decode_all(&wire, step).unwrap(), parts, "step {step}");
    }
}

#[test]
fn an_incomplete_part_takes_no_bytes() {
    let wire = encoded(&[Part::RequestHead(get())]);
    for len in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..len]);
        assert_eq!(decode_part(&mut buf), Ok(None), "{len} bytes");
        assert_eq!(buf.len(), len, "nothing consumed");
    }
}

#[test]
fn data_is_split_into_parts_of_at_most_the_limit_without_copying() {
    let data = Bytes::from(vec![1u8; 2 * MAX_DATA_PART + 10]);
    let parts: Vec<_> = encode_data(data.clone()).collect();
    let lens: Vec<usize> = parts.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(lens, [MAX_DATA_PART, MAX_DATA_PART, 10]);
    assert_eq!(parts[0].1.as_ptr(), data.as_ptr(), "a slice, not a copy");
    assert_eq!(encode_data(Bytes::new()).count(), 0);
    let mut wire = BytesMut::new();
    for (header, bytes) in parts {
        wire.extend_from_slice(&header);
        wire.extend_from_slice(&bytes);
    }
    let back = decode_all(&wire, 4096).unwrap();
    assert_eq!(back.len(), 3);
}

#[test]
fn bad_kinds_and_data_lengths_are_refused_from_their_header() {
    let mut buf = BytesMut::from(&[9u8][..]);
    assert_eq!(decode_part(&mut buf), Err(PartError::UnknownKind(9)));
    // An oversize data part is refused before its bytes arrive.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 1][..]);
    assert_eq!(
        decode_part(&mut buf),
        Err(PartError::DataLength(MAX_DATA_PART + 1))
    );
    let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 0][..]);
    assert_eq!(decode_part(&mut buf), Err(PartError::DataLength(0)));
    // So is a head announcing more than its limit.
    let mut buf = BytesMut::from(&[1u8, 1, 0, 2, 0, 0][..]);
    assert!(matches!(
        decode_part(&mut buf),
        Err(PartError::Frame(InvalidFrame::TooLarge { .. }))
    ));
    let err = encode_part(&Part::Data(Bytes::new()), &mut BytesMut::new());
    assert!(err.is_err(), "no empty data part is sent");
}

#[test]
fn heads_that_would_smuggle_a_request_are_refused_both_ways() {
    let raw = RawHead::from(&get());
    // Fields the map cannot even hold: refused on arrival.
    let mut bad = vec![
        raw.clone().with("x", b"a\r\nx-injected: 1"),
        raw.clone().with("Host", b"upper"),
        raw.clone().with("", b"empty"),
        raw.clone().with("a b", b"space"),
    ];
    let mut many = raw.clone();
    many.fields = vec![("a".into(), b"1".to_vec()); MAX_FIELDS + 1];
    bad.push(many);
    // Method and target: refused when sent, and on arrival.
    let mut heads = Vec::new();
    let mut h = get();
    h.method = "GET /x HTTP/1.1\r\n".into();
    heads.push(h);
    let mut h = get();
    h.target = "/a b".into();
    heads.push(h);
    let mut h = get();
    h.target = String::new();
    heads.push(h);
    let mut h = get();
    for i in 0..=MAX_FIELDS {
        h.fields.0.append(
            HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
    }
    heads.push(h);
    for h in heads {
        assert!(h.validate().is_err(), "{h:?}");
        let refused = encode_part(&Part::RequestHead(h.clone()), &mut BytesMut::new());
        assert!(refused.is_err(), "not sent: {h:?}");
        bad.push(RawHead::from(&h));
    }
    for raw in bad {
        assert!(
            matches!(decode_part(&mut raw.wire()), Err(PartError::Frame(_))),
            "refused: {raw:?}"
        );
    }
    // The raw form of a good head is the head's own encoding.
    let good = get();
    assert_eq!(
        decode_part(&mut RawHead::from(&good).wire()),
        Ok(Some(Part::RequestHead(good)))
    );
    let status = ResponseHead {
        status: 1000,
        fields: Fields::new(),
        has_body: false,
    };
    assert!(status.validate().is_err());
}

#[test]
fn a_head_of_64_kib_of_fields_fits() {
    let mut map = HeaderMap::new();
    for i in 0..MAX_FIELDS {
        map.append(
            HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
            HeaderValue::from_bytes(&[b'v'; 120]).unwrap(),
        );
    }
    let fields = Fields(map);
    let h = RequestHead {
        method: "POST".into(),
        target: format!("/{}", "p".repeat(MAX_TARGET_LEN - 1)),
        fields,
        has_body: true,
    };
    let wire = encoded(&[Part::RequestHead(h.clone())]);
    assert_eq!(decode_all(&wire, 999).unwrap(), [Part::RequestHead(h)]);
}

fn arb_fields() -> impl Strategy<Value = Fields> + Clone {
    proptest::collection::vec(
        (
            "[a-z0-9-]{1,12}",
            proptest::collection::vec(0x20u8..0x7f, 0..40),
        ),
        0..6,
    )
    .prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        Fields(map)
    })
}

fn arb_part() -> impl Strategy<Value = Part> {
    let fields = arb_fields();
    prop_oneof![
        (
            "[A-Z]{1,8}",
            "/[a-z0-9/?=&]{0,30}",
            fields.clone(),
            any::<bool>()
        )
            .prop_map(|(method, target, fields, has_body)| {
                Part::RequestHead(RequestHead {
                    method,
                    target,
                    fields,
                    has_body,
                })
            }),
        (100u16..1000, fields.clone(), any::<bool>()).prop_map(|(status, fields, has_body)| {
            Part::ResponseHead(ResponseHead {
                status,
                fields,
                has_body,
            })
        }),
        proptest::collection::vec(any::<u8>(), 1..3000).prop_map(|d| Part::Data(Bytes::from(d))),
        fields.prop_map(|fields| Part::Trailers(Trailers { fields })),
        Just(Part::End),
        "[a-z ]{0,40}".prop_map(|r| Part::NotForwarded(StreamStatus::new(StatusCode::Draining, r))),
    ]
}

proptest! {
    #[test]
    fn any_sequence_of_parts_decodes_to_itself_in_any_pieces(
        parts in proptest::collection::vec(arb_part(), 0..12),
        step in 1usize..200,
    ) {
        let wire = encoded(&parts);
        prop_assert_eq!(decode_all(&wire, step).unwrap(), parts);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_are_final(
        wire in proptest::collection::vec(any::<u8>(), 0..300),
        step in 1usize..50,
    ) {
        let whole = decode_all_lenient(&wire, wire.len().max(1));
        let pieces = decode_all_lenient(&wire, step);
        prop_assert_eq!(whole, pieces);
    }
}

/// What reading `wire` in pieces of `step` comes to: the parts decoded, and
/// the error that ended it, if any.
fn decode_all_lenient(wire: &[u8], step: usize) -> (Vec<Part>, Option<PartError>) {
    let mut buf = BytesMut::new();
    let mut parts = Vec::new();
    for chunk in wire.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decode_part(&mut buf) {
                Ok(Some(p)) => parts.push(p),
                Ok(None) => break,
                Err(e) => return (parts, Some(e)),
            }
        }
    }
    (parts, None)
}

#[test]
fn a_borrowed_request_head_is_the_same_part_as_the_owned_one() {
    let mut head = get();
    head.fields
        .0
        .append("accept", HeaderValue::from_static("*/*"));
    head.fields
        .0
        .append("accept", HeaderValue::from_static("text/html"));
    head.has_body = true;
    let mut out = BytesMut::new();
    encode_request_head(&head.as_ref(), &mut out).unwrap();
    // The layout written field by field with no shared code.
    assert_eq!(out, RawHead::from(&head).wire());
    assert_eq!(
        decode_all(&out, 3).unwrap(),
        vec![Part::RequestHead(head.clone())]
    );

    // The owned head's rules hold for the borrowed one: nothing is written.
    let mut out = BytesMut::new();
    let bad = RequestHeadRef {
        method: "GET /",
        ..head.as_ref()
    };
    let err = encode_request_head(&bad, &mut out).unwrap_err();
    assert!(err.to_string().contains("method"), "{err}");
    assert!(out.is_empty());
}
