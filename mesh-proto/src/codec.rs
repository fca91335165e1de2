//! The one framing codec for every frame Shoal puts on the wire or into gossip: a
//! version byte, a big-endian body length and a bincode body, with a hard size limit
//! per frame type that is checked before anything is allocated, and a validation
//! hook that runs before encoding and after decoding. This module owns that layout,
//! the [`Frame`] trait, the binary and text (base64) entry points and their errors.
//!
//! ```text
//! +-------------+--------------------------+------------------------------------+
//! | version: u8 | body length: u32 (BE)    | body: bincode 2, standard config   |
//! +-------------+--------------------------+------------------------------------+
//!  <------ FRAME_HEADER_LEN = 5 bytes ----> <---- at most F::MAX_BODY_LEN ----->
//! ```
//!
//! A reader that owns a byte stream reads [`FRAME_HEADER_LEN`] bytes, asks
//! [`frame_len`] for the total length (which refuses a wrong version or an oversize
//! length at once), reads exactly the rest and calls [`decode_exact`]. A reader that
//! works on a buffer calls [`decode`] and, on [`DecodeError::Incomplete`], reads more.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

use crate::names::NameError;

/// The frame layout version this build speaks. A frame with any other version byte is
/// refused with [`InvalidFrame::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of the frame header: the version byte and the 4-byte body length.
pub const FRAME_HEADER_LEN: usize = 5;

/// How many bytes of memory bincode may claim while decoding a body, per byte of
/// [`Frame::MAX_BODY_LEN`].
///
/// bincode counts what it is about to allocate, not wire bytes: every varint integer
/// counts as its in-memory width (a one-byte `u64` claims 8) and a `Vec<String>` of
/// `n` entries claims `24 × n` up front. A valid body therefore claims somewhat more
/// than its wire length; twice the wire limit covers every frame type here (the
/// round-trip tests encode each type at its maximum size). What the limit is for is
/// the opposite case: a 10-byte body whose length prefix announces a 4 GiB string is
/// refused before the string is allocated.
const BINCODE_BUDGET_PER_BODY_BYTE: usize = 2;

/// A message type carried in one frame.
///
/// Implemented by the frame types of this crate only (the trait is sealed): the wire
/// contract lives in one place, and adding a frame means adding it here, with a
/// limit, a validation rule, a round-trip test and a fuzz target.
pub trait Frame: sealed::Body + Sized {
    /// Human name of the frame type, used in error messages ("stream header").
    const NAME: &'static str;

    /// Largest body this frame type may have, in bytes. Checked from the header
    /// before the body is read, and again when encoding.
    const MAX_BODY_LEN: usize;

    /// Checks the rules the type system cannot express (names follow the naming
    /// rule, lists and strings stay within their limits). Runs before every encode
    /// and after every decode, so an invalid value never leaves or enters a node.
    fn validate(&self) -> Result<(), FieldError>;
}

pub(crate) mod sealed {
    /// The bincode half of [`super::Frame`], generated per type by `impl_frame_body!`
    /// so that each type's decoder carries its own memory limit as a constant.
    pub trait Body: Sized {
        /// Appends the bincode encoding of `self` to `out`.
        fn encode_body(&self, out: &mut Vec<u8>) -> Result<usize, bincode::error::EncodeError>;
        /// Decodes one value from the start of `body`; returns it and the bytes read.
        fn decode_body(body: &[u8]) -> Result<(Self, usize), bincode::error::DecodeError>;
    }
}

/// Implements the sealed bincode half of [`Frame`] for a frame type, with a bincode
/// memory limit derived from that type's [`Frame::MAX_BODY_LEN`]. (A generic function
/// cannot pass `F::MAX_BODY_LEN` as a const generic on stable Rust, hence one
/// invocation per type.)
macro_rules! impl_frame_body {
    ($ty:ty) => {
        impl $crate::codec::sealed::Body for $ty {
            fn encode_body(&self, out: &mut Vec<u8>) -> Result<usize, bincode::error::EncodeError> {
                bincode::encode_into_std_write(self, out, bincode::config::standard())
            }

            fn decode_body(body: &[u8]) -> Result<(Self, usize), bincode::error::DecodeError> {
                const LIMIT: usize =
                    $crate::codec::bincode_budget(<$ty as $crate::codec::Frame>::MAX_BODY_LEN);
                bincode::decode_from_slice(body, bincode::config::standard().with_limit::<LIMIT>())
            }
        }
    };
}
pub(crate) use impl_frame_body;

/// The bincode memory limit for a frame type with the given body limit.
pub(crate) const fn bincode_budget(max_body_len: usize) -> usize {
    max_body_len.saturating_mul(BINCODE_BUDGET_PER_BODY_BYTE)
}

/// A field that breaks a rule of its frame type. Returned by [`Frame::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// A name field does not follow the naming rule (see [`crate::names`]).
    #[error(transparent)]
    Name(#[from] NameError),
    /// A string or byte field is longer than its limit.
    #[error("{field} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A string field that must not be empty is empty.
    #[error("{field} is empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A list has more entries than its limit.
    #[error("{field} has {count} entries; the limit is {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// How many entries it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A number outside its allowed range.
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A character that the field does not allow.
    #[error("{field} contains {ch:?}; {allowed}")]
    BadChar {
        /// The field.
        field: &'static str,
        /// The first refused character.
        ch: char,
        /// What the field allows, as a sentence.
        allowed: &'static str,
    },
    /// An address peers cannot connect to (unspecified IP or port 0).
    #[error(
        "{field} {addr} cannot be dialled by peers; advertise a routable address and a real port"
    )]
    Undialable {
        /// The field.
        field: &'static str,
        /// The refused address.
        addr: std::net::SocketAddr,
    },
}

/// Why a value could not be encoded. Nothing is written to the output on error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The encoded body is larger than the frame type allows.
    #[error(
        "{frame} body is {len} bytes; the limit is {max}: shorten the lists or strings it carries"
    )]
    TooLarge {
        /// [`Frame::NAME`] of the frame type.
        frame: &'static str,
        /// Encoded body length in bytes.
        len: usize,
        /// [`Frame::MAX_BODY_LEN`].
        max: usize,
    },
    /// The value breaks a rule of its frame type ([`Frame::validate`]).
    #[error("refusing to send an invalid {frame}: {reason}")]
    Invalid {
        /// [`Frame::NAME`] of the frame type.
        frame: &'static str,
        /// The broken rule.
        #[source]
        reason: FieldError,
    },
    /// bincode refused the value. The frame types of this crate cannot cause this;
    /// the variant exists so that encoding reports instead of panicking.
    #[error("{frame} could not be encoded: {reason}")]
    Body {
        /// [`Frame::NAME`] of the frame type.
        frame: &'static str,
        /// bincode's message.
        reason: String,
    },
}

/// Why bytes could not be decoded into a frame.
///
/// [`DecodeError::Incomplete`] is the only error that more input can cure; every
/// other error is final for that input, and the connection or gossip value it came
/// from should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ends before the frame does; nothing wrong has been seen so far.
    #[error("incomplete frame: at least {needed} more bytes are needed")]
    Incomplete {
        /// How many more bytes are needed. Exact once the 5-byte header is in;
        /// before that, the bytes missing from the header (a lower bound).
        needed: usize,
    },
    /// The bytes are not a valid frame of the expected type.
    #[error(transparent)]
    Invalid(#[from] InvalidFrame),
}

impl DecodeError {
    /// `true` when more input may complete the frame, `false` when the input is bad.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

/// A frame that can never decode, whatever follows it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidFrame {
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error(
        "peer speaks protocol version {got}, this node speaks {supported}: upgrade the older node"
    )]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
        /// The version this node speaks ([`PROTOCOL_VERSION`]).
        supported: u8,
    },
    /// The announced length is over the frame type's limit (checked before any
    /// allocation), or a text-form value is longer than the limit allows.
    #[error(
        "{frame} of {len} bytes is over the limit of {max}: the sender is not a compatible Shoal node or runs a newer version"
    )]
    TooLarge {
        /// [`Frame::NAME`] of the expected frame type.
        frame: &'static str,
        /// The announced (or text) length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The body does not decode as the expected frame type, or decodes into a value
    /// that breaks its rules.
    #[error("malformed {frame}: {reason}")]
    Malformed {
        /// [`Frame::NAME`] of the expected frame type.
        frame: &'static str,
        /// What is wrong.
        #[source]
        reason: MalformedReason,
    },
    /// Bytes left over: inside the body after the value, or after the frame where
    /// exactly one frame was expected.
    #[error(
        "{frame} is followed by {extra} unexpected bytes: the sender does not frame messages as this node does (check both run the same Shoal version)"
    )]
    TrailingBytes {
        /// [`Frame::NAME`] of the expected frame type.
        frame: &'static str,
        /// How many bytes are left over.
        extra: usize,
    },
}

/// What is wrong with a [`InvalidFrame::Malformed`] frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MalformedReason {
    /// bincode could not decode the body (bad tag, bad UTF-8, body too short for
    /// the value, memory limit exceeded, ...).
    #[error("body does not decode: {0}")]
    Body(String),
    /// The body decoded into a value that breaks a rule of its type.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A text-form value is not URL-safe unpadded base64.
    #[error("text form is not unpadded base64url: {0}")]
    Base64(String),
    /// A text-form value holds only part of a frame (gossip values are always
    /// complete, so this is not [`DecodeError::Incomplete`]).
    #[error("text form is cut short: {needed} more bytes were expected")]
    Truncated {
        /// How many more bytes the frame needed.
        needed: usize,
    },
}

impl InvalidFrame {
    fn malformed<F: Frame>(reason: impl Into<MalformedReason>) -> Self {
        InvalidFrame::Malformed {
            frame: F::NAME,
            reason: reason.into(),
        }
    }
}

/// Encodes `frame` into a new buffer: header and body.
pub fn encode<F: Frame>(frame: &F) -> Result<Vec<u8>, EncodeError> {
    // Most frames fit: growing from empty would reallocate five times.
    let mut out = Vec::with_capacity(512);
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `frame` (header and body) to `out` and returns how many
/// bytes were appended. On error `out` is left as it was.
pub fn encode_into<F: Frame>(frame: &F, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    frame.validate().map_err(|reason| EncodeError::Invalid {
        frame: F::NAME,
        reason,
    })?;
    encode_body_into((F::NAME, F::MAX_BODY_LEN), out, |out| {
        frame.encode_body(out)
    })
}

/// Appends a frame (header and the body `body` writes) of the type named
/// `name` whose bodies are at most `max_body_len` bytes, its values already
/// validated; returns how many bytes were appended. On error `out` is left as
/// it was. (Also for a borrowed view of a frame type, encoded as that type.)
pub(crate) fn encode_body_into(
    (name, max_body_len): (&'static str, usize),
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<usize, bincode::error::EncodeError>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&[0; 4]);
    let body_len = match body(out) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(EncodeError::Body {
                frame: name,
                reason: e.to_string(),
            });
        }
    };
    let len_field = match u32::try_from(body_len) {
        Ok(n) if body_len <= max_body_len => n,
        _ => {
            out.truncate(start);
            return Err(EncodeError::TooLarge {
                frame: name,
                len: body_len,
                max: max_body_len,
            });
        }
    };
    out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len_field.to_be_bytes());
    Ok(FRAME_HEADER_LEN + body_len)
}

/// Reads the header at the start of `buf` and returns the total length of the frame
/// (header included), so a stream reader can read exactly the rest.
///
/// Refuses a wrong version as soon as the first byte is in, and a length over
/// `F::MAX_BODY_LEN` as soon as the header is in, before anything is allocated.
pub fn frame_len<F: Frame>(buf: &[u8]) -> Result<usize, DecodeError> {
    let Some(&version) = buf.first() else {
        return Err(DecodeError::Incomplete {
            needed: FRAME_HEADER_LEN,
        });
    };
    if version != PROTOCOL_VERSION {
        return Err(InvalidFrame::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        }
        .into());
    }
    let Some(len_bytes) = buf.get(1..FRAME_HEADER_LEN) else {
        return Err(DecodeError::Incomplete {
            needed: FRAME_HEADER_LEN - buf.len(),
        });
    };
    let mut be = [0; 4];
    be.copy_from_slice(len_bytes);
    let len = usize::try_from(u32::from_be_bytes(be)).unwrap_or(usize::MAX);
    if len > F::MAX_BODY_LEN {
        return Err(InvalidFrame::TooLarge {
            frame: F::NAME,
            len,
            max: F::MAX_BODY_LEN,
        }
        .into());
    }
    Ok(FRAME_HEADER_LEN + len)
}

/// Decodes one frame from the start of `buf`; returns it and the number of bytes it
/// took. Bytes after the frame are left for the caller (the next frame, or payload).
pub fn decode<F: Frame>(buf: &[u8]) -> Result<(F, usize), DecodeError> {
    let total = frame_len::<F>(buf)?;
    let Some(body) = buf.get(FRAME_HEADER_LEN..total) else {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    };
    let (value, read) = F::decode_body(body)
        .map_err(|e| InvalidFrame::malformed::<F>(MalformedReason::Body(e.to_string())))?;
    if read != body.len() {
        return Err(InvalidFrame::TrailingBytes {
            frame: F::NAME,
            extra: body.len().saturating_sub(read),
        }
        .into());
    }
    value.validate().map_err(InvalidFrame::malformed::<F>)?;
    Ok((value, total))
}

/// Decodes `buf` as exactly one frame: any byte after it is
/// [`InvalidFrame::TrailingBytes`].
pub fn decode_exact<F: Frame>(buf: &[u8]) -> Result<F, DecodeError> {
    let (value, used) = decode::<F>(buf)?;
    if used != buf.len() {
        return Err(InvalidFrame::TrailingBytes {
            frame: F::NAME,
            extra: buf.len() - used,
        }
        .into());
    }
    Ok(value)
}

/// Longest text form of a frame type: unpadded base64 of a maximum-size frame.
pub const fn max_text_len<F: Frame>() -> usize {
    let bytes = FRAME_HEADER_LEN.saturating_add(F::MAX_BODY_LEN);
    bytes.saturating_mul(4).saturating_add(2) / 3
}

/// Encodes `frame` as text for a gossip value: the whole frame in URL-safe base64
/// without padding.
pub fn encode_text<F: Frame>(frame: &F) -> Result<String, EncodeError> {
    Ok(URL_SAFE_NO_PAD.encode(encode(frame)?))
}

/// Decodes a gossip value written by [`encode_text`]. The length is checked against
/// [`max_text_len`] before the base64 is decoded. A value that holds only part of a
/// frame is malformed, never [`DecodeError::Incomplete`].
pub fn decode_text<F: Frame>(text: &str) -> Result<F, DecodeError> {
    let max = max_text_len::<F>();
    if text.len() > max {
        return Err(InvalidFrame::TooLarge {
            frame: F::NAME,
            len: text.len(),
            max,
        }
        .into());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| InvalidFrame::malformed::<F>(MalformedReason::Base64(e.to_string())))?;
    decode_exact(&bytes).map_err(|e| match e {
        DecodeError::Incomplete { needed } => {
            InvalidFrame::malformed::<F>(MalformedReason::Truncated { needed }).into()
        }
        invalid => invalid,
    })
}
