//! The one check every fuzz target runs, for its own frame type: the binary and
//! text decoders must not panic on any input, and whatever they accept must be
//! valid and survive re-encoding unchanged.

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
