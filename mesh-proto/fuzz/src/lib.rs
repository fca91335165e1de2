//! The one check every frame fuzz target runs, for its own frame type: the binary
//! and text decoders must not panic on any input, and whatever they accept must be
//! valid and survive re-encoding unchanged. And [`apply`], the check of gossip
//! delta application.

use std::fmt::Debug;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use mesh_proto::codec::{Frame, decode, decode_exact, decode_text, encode, encode_text};

/// Feeds `data` to every decoder of `F` and checks what they accept.
pub fn check<F: Frame + PartialEq + Debug>(data: &[u8]) {
    if let Ok((value, used)) = decode::<F>(data) {
        assert!(used <= data.len());
        assert_eq!(value.validate(), Ok(()));
        let wire = encode(&value).expect("a decoded value encodes");
        assert_eq!(
            decode_exact::<F>(&wire).expect("re-encoded value decodes"),
            value
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_text::<F>(text);
    }
    // The same bytes as a gossip value, so the text path sees every binary input too.
    check_text::<F>(&base64::Engine::encode(&URL_SAFE_NO_PAD, data));
}

fn check_text<F: Frame + PartialEq + Debug>(text: &str) {
    if let Ok(value) = decode_text::<F>(text) {
        let again = encode_text(&value).expect("a decoded value encodes");
        assert_eq!(
            decode_text::<F>(&again).expect("re-encoded value decodes"),
            value
        );
    }
}

/// The mesh [`apply`] feeds: three honest nodes and `evil`, converged (built per
/// input: the simulator is deterministic and cheap at this size).
pub fn mesh() -> mesh_proto::membership::sim::Network {
    use std::time::Duration;
    let timing = mesh_proto::membership::Timing::from_interval(Duration::from_millis(100));
    let mut net = mesh_proto::membership::sim::Network::new(timing, 1);
    net.record_events = false;
    for n in ["n1", "n2", "n3", "evil"] {
        net.add(n, &["web"]);
    }
    assert!(net.run_until(Duration::from_secs(10), |n| n.converged()));
    net
}

/// What `observer` holds of `name` that only `name` could have signed.
fn signed_state(
    net: &mesh_proto::membership::sim::Network,
    observer: &str,
    name: &str,
) -> Option<(u64, u64, Option<mesh_proto::gossip::NodeRecord>, Vec<mesh_proto::gossip::ServiceRecord>)> {
    let view = net.node(observer)?.membership.view(net.now(), net.wall_ms());
    let m = view.members.into_iter().find(|m| m.name == name)?;
    Some((m.generation, m.version, m.node, m.services))
}

/// Decodes `data` as a gossip message and delivers it to `n1` from `evil`; then
/// checks that what `n1` holds of `n2` and `n3` is unchanged.
pub fn apply(data: &[u8]) {
    let Ok(msg) = decode_exact::<mesh_proto::membership::GossipMessage>(data) else {
        return;
    };
    let mut net = mesh();
    let before: Vec<_> = ["n2", "n3"].iter().map(|n| signed_state(&net, "n1", n)).collect();
    let evil = net.node("evil").expect("evil runs").addr;
    net.inject("evil", evil, "n1", &msg);
    let after: Vec<_> = ["n2", "n3"].iter().map(|n| signed_state(&net, "n1", n)).collect();
    assert_eq!(before, after, "a hostile message changed another node's signed state");
}

/// A realistic message for [`apply`]'s seed corpus: what `n1` holds of `n2`,
/// relayed by `evil`, with an accusation of `n2` signed by `evil` — valid
/// signatures the fuzzer can then mutate.
pub fn seed_message() -> mesh_proto::membership::GossipMessage {
    use mesh_proto::membership::Crypto as _;
    use mesh_proto::membership::signing::suspicion_payload;
    use mesh_proto::membership::wire::{Body, Items};
    let net = mesh();
    let n1 = &net.node("n1").expect("n1 runs").membership;
    let records = n1.signed_records("n2");
    let version = records.iter().map(|r| r.version).max().unwrap_or(0);
    let generation = records.first().map(|r| r.generation).unwrap_or(0);
    let evil = net.node("evil").expect("evil runs").membership.config().generation;
    let mut s = mesh_proto::membership::Suspicion {
        accuser: "evil".into(),
        accuser_generation: evil,
        target: "n2".into(),
        target_generation: generation,
        target_version: version,
        issued_at_ms: net.wall_ms(),
        signature: vec![],
    };
    s.signature = net
        .crypto_of("evil")
        .sign(&suspicion_payload(net.cluster(), &s))
        .unwrap_or_default();
    mesh_proto::membership::GossipMessage {
        cluster: net.cluster().into(),
        sender_generation: evil,
        body: Body::Items(Items {
            records,
            suspicions: vec![s],
            documents: vec![],
        }),
    }
}

/// Decodes `stream` as it would arrive in pieces of `step` bytes and checks
/// that every partial read agrees with decoding the whole of it (see the
/// `tunnel_stream` target).
pub fn check_incremental<F: Frame + PartialEq + Debug>(stream: &[u8], step: usize) {
    use mesh_proto::codec::DecodeError;
    assert!(step >= 1, "a step of 0 bytes would never reach the end");
    let whole = decode::<F>(stream);
    let mut len = 0;
    loop {
        len = (len + step).min(stream.len());
        match decode::<F>(&stream[..len]) {
            Err(DecodeError::Incomplete { needed }) => {
                assert!(needed >= 1, "incomplete asks for at least a byte");
                if len == stream.len() {
                    assert!(
                        matches!(whole, Err(DecodeError::Incomplete { .. })),
                        "the whole stream is incomplete too"
                    );
                    return;
                }
            }
            Err(DecodeError::Invalid(e)) => {
                assert!(
                    matches!(&whole, Err(DecodeError::Invalid(w)) if *w == e),
                    "bad bytes in a prefix are bad in the whole stream, for the same reason"
                );
                return;
            }
            Ok((value, used)) => {
                assert!(used <= len);
                let (all, all_used) = whole.expect("the whole stream decodes too");
                assert_eq!((value, used), (all, all_used));
                return;
            }
        }
    }
}

/// Reads `stream` as exchange parts ([`mesh_proto::exchange::decode_part`]),
/// `step` bytes at a time and all at once, and checks that both readings agree
/// and that every part survives re-encoding.
pub fn check_exchange(stream: &[u8], step: usize) {
    use mesh_proto::exchange::{Part, decode_part, encode_part};
    let read = |step: usize| {
        let mut buf = bytes::BytesMut::new();
        let mut parts = Vec::new();
        for piece in stream.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decode_part(&mut buf) {
                    Ok(Some(part)) => parts.push(part),
                    Ok(None) => break,
                    Err(e) => return (parts, Err(e)),
                }
            }
        }
        (parts, Ok(buf.len()))
    };
    let whole = read(stream.len());
    assert_eq!(read(step), whole, "pieces of {step} bytes read the same");
    for part in &whole.0 {
        let mut wire = bytes::BytesMut::new();
        encode_part(part, &mut wire).expect("a decoded part encodes");
        let again: Option<Part> = decode_part(&mut wire).expect("it decodes");
        assert_eq!(again.as_ref(), Some(part));
        assert!(wire.is_empty(), "nothing left over");
    }
}
