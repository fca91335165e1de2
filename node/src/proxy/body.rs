//! The body type every HTTP part of the proxy passes on (listeners, the
//! serving side, backend pools, the access log), its error type, and the HTTP
//! size limits they share.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// Largest request head (request line and headers) accepted; larger heads are
/// answered `431`.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Request bodies up to this size are kept to be sent again on a retry; larger
/// ones stream and are not retried once sent.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of requests sent upstream and responses sent back.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body read from a hyper connection, as a [`Body`].
pub fn boxed(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A body of `bytes`, whole.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `prefix`, then the rest of `rest`: a body taken apart (to look at or keep
/// its start) put back together.
pub fn prepend(prefix: Bytes, rest: Body) -> Body {
    let head = futures::stream::iter(
        (!prefix.is_empty()).then(|| Ok::<_, BoxError>(hyper::body::Frame::data(prefix))),
    );
    let stream = futures::StreamExt::chain(head, http_body_util::BodyStream::new(rest));
    http_body_util::StreamBody::new(stream).boxed_unsync()
}
