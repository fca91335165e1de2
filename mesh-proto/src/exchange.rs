//! The parts of one HTTP exchange on a tunnel stream (`shoal-tunnel/2`), in the
//! spirit of HTTP/3's frames on a QUIC stream. The caller writes its
//! [`crate::tunnel::StreamHeader`] (protocol `http`) and, without waiting for
//! anything, the request:
//!
//! ```text
//! caller  → serving: StreamHeader · RequestHead [· Data* · (Trailers | End)] [· raw bytes]
//! serving → caller : NotForwarded
//!                  | ResponseHead [· Data* · (Trailers | End)]
//!                  | ResponseHead (101, or 2xx to CONNECT) · raw bytes
//! ```
//!
//! A head says whether a body follows it (`has_body`, like HTTP/2's
//! `END_STREAM` flag left clear): a request without one is known to be empty
//! from its head, so the backend is not sent a chunked empty body. The caller
//! ends its side of the stream after the request unless a protocol switch may
//! follow (then the raw bytes do); the serving node reads nothing past the
//! request.
//!
//! [`Part::NotForwarded`] (a [`StreamStatus`]) says the serving node did *not*
//! hand the request to a backend — it refused the stream, or no backend
//! connection could carry it — so the caller may send it elsewhere, whatever its
//! method. Any other end of the exchange (a reset stream, a response that never
//! comes) leaves it unknown whether the backend saw the request.
//!
//! Each part is a kind byte, then either a [`crate::codec`] frame (the heads,
//! trailers and refusal: versioned, size-limited and validated like every frame)
//! or, for body data, a big-endian `u32` length and that many raw bytes (at most
//! [`MAX_DATA_PART`]); [`Part::End`] is the kind byte alone. This module owns the
//! parts, their limits and the incremental [`decode_part`]; it does no I/O.

use bincode::de::{Decoder, read::Reader};
use bincode::enc::Encoder;
use bincode::{Decode, Encode};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

use crate::codec::{self, DecodeError, EncodeError, FieldError, Frame, InvalidFrame};
use crate::tunnel::StreamStatus;

/// Most bytes of body data in one [`Part::Data`]; longer chunks are sent as
/// several parts.
pub const MAX_DATA_PART: usize = 64 * 1024;

/// Length of a data part's header: the kind byte and the `u32` length.
pub const DATA_HEADER_LEN: usize = 5;

/// Most header (or trailer) fields in one head.
pub const MAX_FIELDS: usize = 512;

/// Most bytes of a request target (path and query, or `host:port` for `CONNECT`).
pub const MAX_TARGET_LEN: usize = 16 * 1024;

/// Most bytes of a method name.
pub const MAX_METHOD_LEN: usize = 32;

/// Body limit of a head frame: room for 64 KiB of header fields and their
/// per-field overhead.
const MAX_HEAD_BODY: usize = 80 * 1024;

mod kind {
    pub const REQUEST_HEAD: u8 = 1;
    pub const RESPONSE_HEAD: u8 = 2;
    pub const DATA: u8 = 3;
    pub const TRAILERS: u8 = 4;
    pub const END: u8 = 5;
    pub const NOT_FORWARDED: u8 = 6;
}

/// Header (or trailer) fields, as the `http` crate's map holds them: names
/// lowercase tokens, values visible bytes or tab. On the wire a list of
/// (name, value) pairs, each a length-prefixed byte string, at most
/// [`MAX_FIELDS`]; read straight into the map (no intermediate strings), and
/// anything the map would not hold (an uppercase or empty name, a control
/// character in a value) refuses the whole frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields(pub HeaderMap);

impl Fields {
    /// Empty fields.
    pub fn new() -> Self {
        Fields::default()
    }
}

impl From<HeaderMap> for Fields {
    fn from(map: HeaderMap) -> Self {
        Fields(map)
    }
}

impl Encode for Fields {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
        encode_fields(&self.0, e)
    }
}

/// The wire form of header fields: their count, then each name and value.
fn encode_fields<E: Encoder>(
    map: &HeaderMap,
    e: &mut E,
) -> Result<(), bincode::error::EncodeError> {
    (map.len() as u64).encode(e)?;
    for (name, value) in map {
        name.as_str().encode(e)?;
        value.as_bytes().encode(e)?;
    }
    Ok(())
}

impl<Ctx> Decode<Ctx> for Fields {
    fn decode<D: Decoder<Context = Ctx>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
        let count = u64::decode(d)?;
        if count > MAX_FIELDS as u64 {
            return Err(refused(FieldError::TooMany {
                field: "header fields",
                count: usize::try_from(count).unwrap_or(usize::MAX),
                max: MAX_FIELDS,
            }));
        }
        let mut map = HeaderMap::with_capacity(count as usize);
        for _ in 0..count {
            let name = with_bytes(d, |b| field_name(b).map_err(refused))?;
            let value = with_bytes(d, |b| {
                HeaderValue::from_bytes(b).map_err(|_| refused(bad_value(b)))
            })?;
            map.append(name, value);
        }
        Ok(Fields(map))
    }
}
bincode::impl_borrow_decode!(Fields);

/// Reads one length-prefixed byte string and hands it to `f`: borrowed from
/// the frame when the reader can lend it, copied otherwise. Its bytes count
/// against the decoder's memory limit.
fn with_bytes<D: Decoder, T>(
    d: &mut D,
    f: impl FnOnce(&[u8]) -> Result<T, bincode::error::DecodeError>,
) -> Result<T, bincode::error::DecodeError> {
    let len = u64::decode(d)?;
    let len =
        usize::try_from(len).map_err(|_| bincode::error::DecodeError::OutsideUsizeRange(len))?;
    d.claim_bytes_read(len)?;
    if let Some(bytes) = d.reader().peek_read(len) {
        let out = f(bytes)?;
        d.reader().consume(len);
        return Ok(out);
    }
    let mut owned = vec![0u8; len];
    d.reader().read(&mut owned)?;
    f(&owned)
}

/// A field name as the wire must carry it: a lowercase RFC 9110 token.
fn field_name(b: &[u8]) -> Result<HeaderName, FieldError> {
    if b.is_empty() {
        return Err(FieldError::Empty {
            field: "header name",
        });
    }
    let bad = |ch: u8| FieldError::BadChar {
        field: "header name",
        ch: char::from(ch),
        allowed: "header names are lowercase letters, digits and !#$%&'*+-.^_`|~",
    };
    let first_bad = || {
        b.iter()
            .copied()
            .find(|&c| !valid_name_byte(c))
            .unwrap_or(b[0])
    };
    let name = HeaderName::from_bytes(b).map_err(|_| bad(first_bad()))?;
    // `from_bytes` lowercases what it takes: a name that comes out
    // different had uppercase letters, which the wire does not allow.
    if name.as_str().as_bytes() != b {
        return Err(bad(first_bad()));
    }
    Ok(name)
}

fn bad_value(b: &[u8]) -> FieldError {
    let ch = b
        .iter()
        .copied()
        .find(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
        .unwrap_or(0);
    FieldError::BadChar {
        field: "header value",
        ch: char::from(ch),
        allowed: "header values hold no control characters but tab",
    }
}

/// A field refusal as the decoder reports it (the frame is then malformed).
fn refused(e: FieldError) -> bincode::error::DecodeError {
    bincode::error::DecodeError::OtherString(e.to_string())
}

/// The routed request's head, sent right after the stream header.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RequestHead {
    /// The method (`GET`, `POST`, an extension method).
    pub method: String,
    /// Path and query (`/a?b`), `*`, or `host:port` for `CONNECT`.
    pub target: String,
    /// The header fields, hop-by-hop ones already removed by the caller (except
    /// `upgrade` and `connection: upgrade` on a protocol switch).
    pub fields: Fields,
    /// Body parts and their end follow the head.
    pub has_body: bool,
}

impl RequestHead {
    /// This head as a [`RequestHeadRef`].
    pub fn as_ref(&self) -> RequestHeadRef<'_> {
        RequestHeadRef {
            method: &self.method,
            target: &self.target,
            fields: &self.fields.0,
            has_body: self.has_body,
        }
    }
}

/// A request head borrowed from the caller's own request: encoded exactly as
/// the [`RequestHead`] of the same values (and checked by the same rules), so a
/// caller sends its request's fields without copying them into one.
#[derive(Debug, Clone, Copy)]
pub struct RequestHeadRef<'a> {
    /// The method.
    pub method: &'a str,
    /// Path and query, `*`, or `host:port` for `CONNECT`.
    pub target: &'a str,
    /// The header fields (see [`RequestHead::fields`]).
    pub fields: &'a HeaderMap,
    /// Body parts and their end follow the head.
    pub has_body: bool,
}

impl Encode for RequestHeadRef<'_> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
        // The field order of `RequestHead`'s derived encoding.
        self.method.encode(e)?;
        self.target.encode(e)?;
        encode_fields(self.fields, e)?;
        self.has_body.encode(e)
    }
}

impl RequestHeadRef<'_> {
    /// The rules of [`RequestHead`]'s fields.
    fn validate(&self) -> Result<(), FieldError> {
        validate_request(self.method, self.target, self.fields)
    }
}

/// The backend's response head.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResponseHead {
    /// The status code, 100 to 999.
    pub status: u16,
    /// The header fields.
    pub fields: Fields,
    /// Body parts and their end follow the head.
    pub has_body: bool,
}

/// Trailer fields; they end the body.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Trailers {
    /// The fields.
    pub fields: Fields,
}

/// One part of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The request head (caller to serving node, once, first).
    RequestHead(RequestHead),
    /// The response head (serving node to caller, once, first).
    ResponseHead(ResponseHead),
    /// Body bytes, 1 to [`MAX_DATA_PART`] of them.
    Data(Bytes),
    /// Trailer fields, ending the body.
    Trailers(Trailers),
    /// The body's end, without trailers.
    End,
    /// The serving node did not forward the request (serving node to caller,
    /// instead of a response head): it may be sent elsewhere.
    NotForwarded(StreamStatus),
}

impl Part {
    /// The name used in errors (`request head`, `data`).
    pub fn name(&self) -> &'static str {
        match self {
            Part::RequestHead(_) => RequestHead::NAME,
            Part::ResponseHead(_) => ResponseHead::NAME,
            Part::Data(_) => "data",
            Part::Trailers(_) => Trailers::NAME,
            Part::End => "end",
            Part::NotForwarded(_) => "not-forwarded",
        }
    }
}

fn valid_name_byte(b: u8) -> bool {
    // RFC 9110 `tchar`, lowercase letters only.
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The count limit; the map's own types hold every other rule.
fn validate_fields(fields: &HeaderMap) -> Result<(), FieldError> {
    if fields.len() > MAX_FIELDS {
        return Err(FieldError::TooMany {
            field: "header fields",
            count: fields.len(),
            max: MAX_FIELDS,
        });
    }
    Ok(())
}

impl Frame for RequestHead {
    const NAME: &'static str = "request head";
    const MAX_BODY_LEN: usize = MAX_HEAD_BODY;

    fn validate(&self) -> Result<(), FieldError> {
        validate_request(&self.method, &self.target, &self.fields.0)
    }
}

/// The rules of a request head: the method a token, the target visible
/// ASCII, both within their limits; the fields within their count.
fn validate_request(method: &str, target: &str, fields: &HeaderMap) -> Result<(), FieldError> {
    let too_long = |field, len, max| FieldError::TooLong { field, len, max };
    if method.is_empty() {
        return Err(FieldError::Empty { field: "method" });
    }
    if method.len() > MAX_METHOD_LEN {
        return Err(too_long("method", method.len(), MAX_METHOD_LEN));
    }
    if let Some(ch) = method
        .bytes()
        .find(|&b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    {
        return Err(FieldError::BadChar {
            field: "method",
            ch: char::from(ch),
            allowed: "a method is a token (letters, digits, !#$%&'*+-.^_`|~)",
        });
    }
    if target.is_empty() {
        return Err(FieldError::Empty {
            field: "request target",
        });
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(too_long("request target", target.len(), MAX_TARGET_LEN));
    }
    if let Some(ch) = target.bytes().find(|b| !b.is_ascii_graphic()) {
        return Err(FieldError::BadChar {
            field: "request target",
            ch: char::from(ch),
            allowed: "a request target is visible ASCII (percent-encode the rest)",
        });
    }
    validate_fields(fields)
}

codec::impl_frame_body!(RequestHead);

impl Frame for ResponseHead {
    const NAME: &'static str = "response head";
    const MAX_BODY_LEN: usize = MAX_HEAD_BODY;

    fn validate(&self) -> Result<(), FieldError> {
        if !(100..=999).contains(&self.status) {
            return Err(FieldError::OutOfRange {
                field: "status",
                value: u64::from(self.status),
                min: 100,
                max: 999,
            });
        }
        validate_fields(&self.fields.0)
    }
}
codec::impl_frame_body!(ResponseHead);

impl Frame for Trailers {
    const NAME: &'static str = "trailers";
    const MAX_BODY_LEN: usize = MAX_HEAD_BODY;

    fn validate(&self) -> Result<(), FieldError> {
        validate_fields(&self.fields.0)
    }
}
codec::impl_frame_body!(Trailers);

/// Why bytes are not a valid part. Final: the stream they came from is reset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PartError {
    /// The kind byte names no part.
    #[error(
        "unknown exchange part kind {0}: the peer does not speak shoal-tunnel/2 as this node does"
    )]
    UnknownKind(u8),
    /// A data part announces more than [`MAX_DATA_PART`] bytes, or none.
    #[error("a data part of {0} bytes; parts carry 1 to {MAX_DATA_PART} bytes")]
    DataLength(usize),
    /// A head, trailers or refusal frame is bad.
    #[error(transparent)]
    Frame(#[from] InvalidFrame),
}

/// Appends the encoding of `part` to `out`. Data longer than
/// [`MAX_DATA_PART`] is refused (split it first: [`encode_data`] does).
pub fn encode_part(part: &Part, out: &mut BytesMut) -> Result<(), EncodeError> {
    fn frame(
        out: &mut BytesMut,
        kind: u8,
        encoded: Result<Vec<u8>, EncodeError>,
    ) -> Result<(), EncodeError> {
        let encoded = encoded?;
        out.reserve(1 + encoded.len());
        out.put_u8(kind);
        out.extend_from_slice(&encoded);
        Ok(())
    }
    match part {
        Part::RequestHead(h) => encode_request_head(&h.as_ref(), out),
        Part::ResponseHead(h) => frame(out, kind::RESPONSE_HEAD, codec::encode(h)),
        Part::Trailers(t) => frame(out, kind::TRAILERS, codec::encode(t)),
        Part::NotForwarded(s) => frame(out, kind::NOT_FORWARDED, codec::encode(s)),
        Part::End => {
            out.put_u8(kind::END);
            Ok(())
        }
        Part::Data(data) => {
            if data.is_empty() || data.len() > MAX_DATA_PART {
                return Err(EncodeError::TooLarge {
                    frame: "data part",
                    len: data.len(),
                    max: MAX_DATA_PART,
                });
            }
            out.extend_from_slice(&data_header(data.len()));
            out.extend_from_slice(data);
            Ok(())
        }
    }
}

/// Appends the request-head part `head` describes to `out`: the same bytes
/// as [`encode_part`] of the [`RequestHead`] of the same values.
pub fn encode_request_head(
    head: &RequestHeadRef<'_>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    head.validate().map_err(|reason| EncodeError::Invalid {
        frame: RequestHead::NAME,
        reason,
    })?;
    let mut encoded = Vec::with_capacity(256);
    codec::encode_body_into(
        (RequestHead::NAME, RequestHead::MAX_BODY_LEN),
        &mut encoded,
        |buf| bincode::encode_into_std_write(head, buf, bincode::config::standard()),
    )?;
    out.reserve(1 + encoded.len());
    out.put_u8(kind::REQUEST_HEAD);
    out.extend_from_slice(&encoded);
    Ok(())
}

/// The header of a data part of `len` bytes (1 to [`MAX_DATA_PART`]), for a
/// writer that sends the bytes themselves without copying them.
pub fn data_header(len: usize) -> [u8; DATA_HEADER_LEN] {
    debug_assert!((1..=MAX_DATA_PART).contains(&len));
    let [a, b, c, d] = (len as u32).to_be_bytes();
    [kind::DATA, a, b, c, d]
}

/// Splits `data` into data parts of at most [`MAX_DATA_PART`] bytes: the
/// header of each and its bytes (slices of `data`, not copies). Empty data
/// gives no part.
pub fn encode_data(mut data: Bytes) -> impl Iterator<Item = ([u8; DATA_HEADER_LEN], Bytes)> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let chunk = data.split_to(data.len().min(MAX_DATA_PART));
        Some((data_header(chunk.len()), chunk))
    })
}

/// Decodes the part at the start of `buf`, removing its bytes, or returns
/// `None` (nothing removed) when `buf` does not hold a whole part yet. Nothing
/// larger than a part's limit is ever asked for, so a reader that reads until
/// this answers buffers at most one part.
pub fn decode_part(buf: &mut BytesMut) -> Result<Option<Part>, PartError> {
    let Some(&k) = buf.first() else {
        return Ok(None);
    };
    let rest = &buf[1..];
    let (part, used) = match k {
        kind::END => (Part::End, 0),
        kind::DATA => {
            let Some(len) = rest.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len == 0 || len > MAX_DATA_PART {
                return Err(PartError::DataLength(len));
            }
            if rest.len() < 4 + len {
                return Ok(None);
            }
            buf.advance(DATA_HEADER_LEN);
            return Ok(Some(Part::Data(buf.split_to(len).freeze())));
        }
        kind::REQUEST_HEAD => match frame::<RequestHead>(rest)? {
            Some((h, used)) => (Part::RequestHead(h), used),
            None => return Ok(None),
        },
        kind::RESPONSE_HEAD => match frame::<ResponseHead>(rest)? {
            Some((h, used)) => (Part::ResponseHead(h), used),
            None => return Ok(None),
        },
        kind::TRAILERS => match frame::<Trailers>(rest)? {
            Some((t, used)) => (Part::Trailers(t), used),
            None => return Ok(None),
        },
        kind::NOT_FORWARDED => match frame::<StreamStatus>(rest)? {
            Some((s, used)) => (Part::NotForwarded(s), used),
            None => return Ok(None),
        },
        other => return Err(PartError::UnknownKind(other)),
    };
    buf.advance(1 + used);
    Ok(Some(part))
}

fn frame<F: Frame>(buf: &[u8]) -> Result<Option<(F, usize)>, PartError> {
    match codec::decode::<F>(buf) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(DecodeError::Incomplete { .. }) => Ok(None),
        Err(DecodeError::Invalid(e)) => Err(PartError::Frame(e)),
    }
}

#[cfg(test)]
mod tests;
