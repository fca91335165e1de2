//! The frames of a `shoal-tunnel/2` QUIC stream. Each proxied TCP connection or HTTP
//! request is one bidirectional stream: the caller opens it with a [`StreamHeader`].
//! For a TCP stream, the receiver checks authorization and its backend, answers
//! with a [`StreamStatus`], and only after an ok status does payload flow. An HTTP
//! request follows its header at once, as [`crate::exchange`] parts, and a
//! refusal comes back as a "not forwarded" part carrying a [`StreamStatus`]. This
//! module owns those two frames and the [`Protocol`] and [`RequestId`] they carry.

use std::fmt;

use bincode::{Decode, Encode};

use crate::codec::{FieldError, Frame, impl_frame_body};
use crate::names::validate_name;

/// The application protocol of a stream or a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Protocol {
    /// Opaque bytes: the stream carries one TCP connection.
    Tcp,
    /// The stream carries one HTTP request and its response.
    Http,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Http];

    /// The lowercase name used in config, logs and the admin API (`tcp`, `http`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// A string that names no [`Protocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a protocol; use \"tcp\" or \"http\"")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Parses the name [`Protocol::as_str`] gives.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProtocol(s.to_string()))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one proxied connection or request across every node it crosses.
/// Displayed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct RequestId(pub u128);

impl fmt::Display for RequestId {
    /// 32 lowercase hex digits (written digit by digit: this runs for every
    /// request, and the formatter's padded hex is several times slower).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = HEX[((self.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        // Only ASCII digits were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// The first frame on a tunnel stream, sent by the calling node.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StreamHeader {
    /// The service the stream is for; the receiver must host it.
    pub target_service: String,
    /// The calling service, when the caller is one. The receiver checks that the
    /// caller's certificate names it before trusting it for authorization.
    pub source_service: Option<String>,
    /// What the stream carries after the status frame.
    pub protocol: Protocol,
    /// Request id for logs and tracing.
    pub request_id: RequestId,
    /// Time budget left when the header was sent, in milliseconds. A duration, not
    /// a deadline on a clock: hosts' clocks differ, so the receiver adds it to its own
    /// `now` on arrival. `None` means no deadline.
    pub deadline_ms: Option<u32>,
}

impl Frame for StreamHeader {
    const NAME: &'static str = "stream header";
    const MAX_BODY_LEN: usize = 1024;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("target service", &self.target_service)?;
        if let Some(source) = &self.source_service {
            validate_name("source service", source)?;
        }
        Ok(())
    }
}
impl_frame_body!(StreamHeader);

/// The receiver's answer to a [`StreamHeader`], sent before any payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum StatusCode {
    /// Accepted: the backend is connected and payload may flow.
    Ok,
    /// This node does not host the target service (the caller's routing table is
    /// stale).
    UnknownService,
    /// The caller may not reach the target service, or claimed a source service
    /// its certificate does not name.
    Unauthorized,
    /// The local backend refused or did not accept the connection.
    BackendRefused,
    /// The node or the service is at its concurrency limit.
    Overloaded,
    /// The node is shutting down and takes no new streams.
    Draining,
}

impl StatusCode {
    /// `true` for [`StatusCode::Ok`].
    pub fn is_ok(self) -> bool {
        self == StatusCode::Ok
    }

    /// `true` when the caller should try another endpoint of the same service.
    ///
    /// Every refusal arrives before any payload byte reached a backend, so a retry
    /// is always safe; the question is only whether it can help. It can for every
    /// refusal that is about *this* endpoint (stale routing, a dead backend, load,
    /// a draining node). It cannot for [`StatusCode::Unauthorized`]: authorization
    /// depends on the caller's identity and on cluster-wide policy, so every other
    /// endpoint would refuse too, and retrying would only multiply refusals and
    /// hide the policy error from the caller.
    pub fn is_retryable_elsewhere(self) -> bool {
        !matches!(self, StatusCode::Ok | StatusCode::Unauthorized)
    }

    /// The kebab-case name used in logs and metrics (`unknown-service`).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Ok => "ok",
            StatusCode::UnknownService => "unknown-service",
            StatusCode::Unauthorized => "unauthorized",
            StatusCode::BackendRefused => "backend-refused",
            StatusCode::Overloaded => "overloaded",
            StatusCode::Draining => "draining",
        }
    }
}

impl StatusCode {
    /// The snake_case name used as a Prometheus label value (`unknown_service`).
    pub fn metric_label(self) -> &'static str {
        match self {
            StatusCode::Ok => "ok",
            StatusCode::UnknownService => "unknown_service",
            StatusCode::Unauthorized => "unauthorized",
            StatusCode::BackendRefused => "backend_refused",
            StatusCode::Overloaded => "overloaded",
            StatusCode::Draining => "draining",
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The second frame on a tunnel stream, sent by the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StreamStatus {
    /// The outcome.
    pub code: StatusCode,
    /// Human detail for the caller's logs, at most [`StreamStatus::MAX_REASON_LEN`]
    /// bytes; empty when there is nothing to add.
    pub reason: String,
}

impl StreamStatus {
    /// Longest accepted reason, in bytes.
    pub const MAX_REASON_LEN: usize = 256;

    /// A status with `reason` cut to [`Self::MAX_REASON_LEN`] bytes at a character
    /// boundary, so it always encodes.
    pub fn new(code: StatusCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > Self::MAX_REASON_LEN {
            let mut cut = Self::MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        StreamStatus { code, reason }
    }

    /// The accepting status, with no reason.
    pub fn ok() -> Self {
        StreamStatus::new(StatusCode::Ok, String::new())
    }
}

impl Frame for StreamStatus {
    const NAME: &'static str = "stream status";
    const MAX_BODY_LEN: usize = 512;

    fn validate(&self) -> Result<(), FieldError> {
        if self.reason.len() > Self::MAX_REASON_LEN {
            return Err(FieldError::TooLong {
                field: "status reason",
                len: self.reason.len(),
                max: Self::MAX_REASON_LEN,
            });
        }
        Ok(())
    }
}
impl_frame_body!(StreamStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_from_the_names_they_print() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        let err = "HTTP".parse::<Protocol>().err();
        assert_eq!(err, Some(UnknownProtocol("HTTP".into())));
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("\"HTTP\" is not a protocol; use \"tcp\" or \"http\"")
        );
    }

    #[test]
    fn request_id_is_32_lowercase_hex_digits() {
        assert_eq!(RequestId(0).to_string(), "0".repeat(32));
        assert_eq!(
            RequestId(0xABCDEF).to_string(),
            "00000000000000000000000000abcdef"
        );
        assert_eq!(RequestId(u128::MAX).to_string(), "f".repeat(32));
        let id = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(RequestId(id).to_string(), format!("{id:032x}"));
    }

    #[test]
    fn status_codes_display_as_kebab_case() {
        assert_eq!(StatusCode::UnknownService.to_string(), "unknown-service");
        assert_eq!(StatusCode::BackendRefused.to_string(), "backend-refused");
        assert_eq!(StatusCode::Ok.to_string(), "ok");
        assert_eq!(Protocol::Http.to_string(), "http");
    }

    #[test]
    fn only_unauthorized_and_ok_are_not_retried_elsewhere() {
        use StatusCode::*;
        for code in [UnknownService, BackendRefused, Overloaded, Draining] {
            assert!(code.is_retryable_elsewhere(), "{code}");
            assert!(!code.is_ok());
        }
        assert!(!Unauthorized.is_retryable_elsewhere());
        assert!(!Ok.is_retryable_elsewhere());
        assert!(Ok.is_ok());
    }

    #[test]
    fn new_status_cuts_the_reason_at_a_char_boundary() {
        // 'é' is two bytes: 200 of them are 400 bytes, cut to 256 exactly.
        let status = StreamStatus::new(StatusCode::BackendRefused, "é".repeat(200));
        assert_eq!(status.reason.len(), 256);
        assert!(status.validate().is_ok());
        // '€' is three bytes: the cut falls inside one, so it backs off to 255.
        let status = StreamStatus::new(StatusCode::BackendRefused, "€".repeat(100));
        assert_eq!(status.reason.len(), 255);
        assert_eq!(StreamStatus::new(StatusCode::Ok, "short").reason, "short");
    }
}
