//! One HTTP exchange's parts ([`mesh_proto::exchange`]) over a QUIC stream pair,
//! for both ends of a tunnel: reading parts ([`PartReader`]), a body read from
//! parts as a hyper body ([`PartsBody`]), a hyper body written as parts
//! ([`write_body`]), the conversions between hyper's heads and the wire's, and
//! the raw byte stream an upgraded exchange (WebSocket, `CONNECT`) goes on as.
//! No HTTP/1.1 is parsed or written on the tunnel leg.

use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use mesh_proto::codec::EncodeError;
use mesh_proto::exchange::{
    self, Fields, Part, PartError, RequestHead, RequestHeadRef, ResponseHead, Trailers,
    encode_data, encode_part,
};
use quinn::{RecvStream, SendStream};
use tokio::io::AsyncReadExt;

use super::body::{Body, BoxError};

/// Called with the number of bytes each read or write moved (metrics, idle
/// timers).
pub type Observe = Arc<dyn Fn(usize) + Send + Sync>;

/// Reads parts from a stream, buffering at most one part (their limits bound
/// it).
pub struct PartReader {
    recv: RecvStream,
    buf: BytesMut,
    observe: Option<Observe>,
}

impl std::fmt::Debug for PartReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartReader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Why no part could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a part.
    #[error("{0}")]
    Part(#[from] PartError),
    /// The stream ended inside a part.
    #[error("the stream ended inside a part")]
    Truncated,
    /// The stream failed (reset by the peer, the connection lost).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Room made for the first read of a stream: a head and a small body fit; a
/// bigger part grows the buffer to [`READ_SIZE`] reads (allocating 32 KiB for
/// every request costs more than the request).
const FIRST_READ: usize = 2 * 1024;

/// The bytes read from the stream at a time once more than a small part is
/// arriving.
const READ_SIZE: usize = 32 * 1024;

impl PartReader {
    /// A reader of `recv`.
    pub fn new(recv: RecvStream) -> Self {
        PartReader {
            recv,
            buf: BytesMut::new(),
            observe: None,
        }
    }

    /// Calls `observe` with the size of every read.
    pub fn observed(mut self, observe: Observe) -> Self {
        self.observe = Some(observe);
        self
    }

    /// The next part; `None` when the stream ended cleanly between parts.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Part>, ReadError>> {
        loop {
            if let Some(part) = exchange::decode_part(&mut self.buf)? {
                return Poll::Ready(Ok(Some(part)));
            }
            let spare = self.buf.capacity() - self.buf.len();
            if self.buf.capacity() == 0 {
                self.buf.reserve(FIRST_READ);
            } else if spare < FIRST_READ {
                self.buf.reserve(READ_SIZE);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.recv),
                cx,
                &mut self.buf
            ))?;
            if n == 0 {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                });
            }
            if let Some(observe) = &self.observe {
                observe(n);
            }
        }
    }

    /// The next part; `None` when the stream ended cleanly between parts.
    pub async fn next(&mut self) -> Result<Option<Part>, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Stops the peer's sending (the rest of the exchange is not wanted).
    pub fn stop(&mut self, code: quinn::VarInt) {
        let _ = self.recv.stop(code);
    }

    /// The rest of the stream as raw bytes (after a protocol switch): what is
    /// buffered, then the stream.
    pub fn into_raw(self) -> RawRecv {
        Cursor::new(self.buf.freeze()).chain(self.recv)
    }
}

/// The receiving half of an upgraded exchange.
pub type RawRecv = tokio::io::Chain<Cursor<Bytes>, RecvStream>;

/// Both halves of an upgraded exchange.
pub type RawTunnel = tokio::io::Join<RawRecv, SendStream>;

/// A request or response body read from parts: data until trailers or the end
/// part.
pub struct PartsBody {
    reader: PartReader,
    done: bool,
    ended: Option<Box<dyn FnOnce() + Send>>,
    /// The body's length, when its head said (`content-length`), and how
    /// much of it has been read: a body read to its length is over without
    /// waiting for its end part (an HTTP/1.1 peer stops reading there).
    length: Option<u64>,
    read: u64,
}

impl std::fmt::Debug for PartsBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartsBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl PartsBody {
    /// The body that follows a head on `reader`.
    pub fn new(reader: PartReader) -> Self {
        PartsBody {
            reader,
            done: false,
            ended: None,
            length: None,
            read: 0,
        }
    }

    /// A body of `length` bytes (from its head's `content-length`), if known.
    pub fn with_length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }

    /// Calls `ended` once the body has ended (its last part read).
    pub fn on_end(mut self, ended: impl FnOnce() + Send + 'static) -> Self {
        self.ended = Some(Box::new(ended));
        self
    }

    fn end(&mut self) {
        self.done = true;
        if let Some(ended) = self.ended.take() {
            ended();
        }
    }
}

impl hyper::body::Body for PartsBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let part = ready!(self.reader.poll_next(cx));
        Poll::Ready(match part {
            Ok(Some(Part::Data(data))) => {
                self.read += data.len() as u64;
                match self.length {
                    Some(length) if self.read > length => {
                        self.done = true;
                        Some(Err(
                            format!("a body longer than its length of {length}").into()
                        ))
                    }
                    Some(length) if self.read == length => {
                        self.end();
                        Some(Ok(Frame::data(data)))
                    }
                    _ => Some(Ok(Frame::data(data))),
                }
            }
            Ok(Some(Part::Trailers(t))) => {
                self.end();
                Some(Ok(Frame::trailers(t.fields.0)))
            }
            Ok(Some(Part::End)) => {
                self.end();
                None
            }
            Ok(Some(other)) => {
                self.done = true;
                Some(Err(format!("a {} part inside a body", other.name()).into()))
            }
            Ok(None) => {
                self.done = true;
                Some(Err("the tunnel stream ended before the body did".into()))
            }
            Err(e) => {
                self.done = true;
                Some(Err(Box::new(e)))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.length {
            Some(length) => hyper::body::SizeHint::with_exact(length.saturating_sub(self.read)),
            None => hyper::body::SizeHint::default(),
        }
    }
}

/// The `content-length` of `headers`, if valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    super::headers::content_length(headers)
}

/// How [`write_body`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The body being sent failed (its sender went away).
    #[error("the body failed: {0}")]
    Body(BoxError),
    /// The stream could not be written (the peer stopped it, the connection
    /// was lost).
    #[error("the tunnel stream failed: {0}")]
    Stream(#[from] quinn::WriteError),
    /// Trailers the wire format cannot carry.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// Writes `part` (not data) to `send`.
pub async fn write_part(send: &mut SendStream, part: &Part) -> Result<(), WriteError> {
    let mut out = BytesMut::new();
    encode_part(part, &mut out)?;
    send.write_all(&out).await?;
    Ok(())
}

/// Writes `data` as data parts, without copying it.
pub async fn write_data(
    send: &mut SendStream,
    data: Bytes,
    observe: Option<&Observe>,
) -> Result<(), WriteError> {
    for (header, bytes) in encode_data(data) {
        let n = header.len() + bytes.len();
        send.write_all_chunks(&mut [Bytes::copy_from_slice(&header), bytes])
            .await?;
        if let Some(observe) = observe {
            observe(n);
        }
    }
    Ok(())
}

/// Most bytes of ready body data copied to leave in one write with what
/// precedes them (the response head, earlier small frames, the end); larger
/// data is written as it is, without a copy.
const COALESCE: usize = 16 * 1024;

/// Writes `body` as parts: its data, then its trailers or the end part.
/// `tap` sees each data frame before it is written.
pub async fn write_body(
    send: &mut SendStream,
    body: Body,
    observe: Option<&Observe>,
    tap: impl FnMut(&Frame<Bytes>),
) -> Result<(), WriteError> {
    write_body_after(send, BytesMut::new(), body, observe, tap).await
}

/// [`write_body`] after the parts already encoded in `out`: what the body
/// has ready at once goes in the same write, so a small answer — head, data
/// and end — leaves in one write (and one packet) rather than three.
pub async fn write_body_after(
    send: &mut SendStream,
    mut out: BytesMut,
    mut body: Body,
    observe: Option<&Observe>,
    mut tap: impl FnMut(&Frame<Bytes>),
) -> Result<(), WriteError> {
    let mut out = Pending {
        out: &mut out,
        data: 0,
        observe,
    };
    loop {
        let frame = match futures::FutureExt::now_or_never(body.frame()) {
            Some(frame) => frame,
            None => {
                out.flush(send).await?;
                body.frame().await
            }
        };
        let frame = match frame {
            None => {
                encode_part(&Part::End, out.out)?;
                return out.flush(send).await;
            }
            Some(Err(e)) => {
                out.flush(send).await?;
                return Err(WriteError::Body(e));
            }
            Some(Ok(frame)) => frame,
        };
        tap(&frame);
        match frame.into_data() {
            Ok(data) if out.out.len() + data.len() <= COALESCE => out.data(data),
            Ok(data) => {
                out.flush(send).await?;
                write_data(send, data, observe).await?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let fields = Fields(trailers);
                    encode_part(&Part::Trailers(Trailers { fields }), out.out)?;
                    return out.flush(send).await;
                }
            }
        }
    }
}

/// Parts encoded but not written yet, and how many of their bytes are body
/// data (observed once written).
struct Pending<'a> {
    out: &'a mut BytesMut,
    data: usize,
    observe: Option<&'a Observe>,
}

impl Pending<'_> {
    fn data(&mut self, data: Bytes) {
        for (header, bytes) in encode_data(data) {
            self.out.extend_from_slice(&header);
            self.out.extend_from_slice(&bytes);
            self.data += header.len() + bytes.len();
        }
    }

    async fn flush(&mut self, send: &mut SendStream) -> Result<(), WriteError> {
        if self.out.is_empty() {
            return Ok(());
        }
        send.write_all(self.out).await?;
        self.out.clear();
        if let (Some(observe), n @ 1..) = (self.observe, self.data) {
            observe(n);
        }
        self.data = 0;
        Ok(())
    }
}

/// The wire head of a request about to be tunnelled (`has_body` is set when
/// it is sent), borrowed from the request: nothing is copied until it is
/// encoded. (A `CONNECT` without an authority, which hyper does not let
/// through, would get an empty target, which the encoder refuses.)
pub fn request_head<'a>(
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> RequestHeadRef<'a> {
    let target = if method == Method::CONNECT {
        uri.authority().map_or("", |a| a.as_str())
    } else {
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    };
    RequestHeadRef {
        method: method.as_str(),
        target,
        fields: headers,
        has_body: false,
    }
}

/// The request a wire head describes, as HTTP/1.1 for the backend, with `body`.
pub fn request_from_head<B>(head: RequestHead, body: B) -> Result<Request<B>, BoxError> {
    let method = Method::from_bytes(head.method.as_bytes())?;
    let uri: Uri = head.target.parse()?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = head.fields.0;
    Ok(request)
}

/// The wire head of a backend's response; its headers are taken from it
/// (only its status, body and upgrade are of use after).
pub fn response_head<B>(response: &mut Response<B>, has_body: bool) -> ResponseHead {
    ResponseHead {
        status: response.status().as_u16(),
        fields: Fields(std::mem::take(response.headers_mut())),
        has_body,
    }
}

/// The response a wire head describes, with `body`.
pub fn response_from_head<B>(head: ResponseHead, body: B) -> Result<Response<B>, BoxError> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(head.status)?;
    *response.headers_mut() = head.fields.0;
    Ok(response)
}

/// A body of nothing.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `head` encoded as a part, and decoded as the serving node does.
    fn across(head: RequestHeadRef<'_>) -> RequestHead {
        let mut wire = BytesMut::new();
        mesh_proto::exchange::encode_request_head(&head, &mut wire).unwrap();
        match mesh_proto::exchange::decode_part(&mut wire) {
            Ok(Some(Part::RequestHead(h))) => h,
            other => panic!("not a request head: {other:?}"),
        }
    }

    #[test]
    fn heads_cross_the_wire_unchanged() {
        let request = Request::builder()
            .method("PATCH")
            .uri("/orders/7?x=1")
            .header("content-type", "application/json")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap();
        let head = across(request_head(
            request.method(),
            request.uri(),
            request.headers(),
        ));
        assert_eq!(head.method, "PATCH");
        assert_eq!(head.target, "/orders/7?x=1");
        let back = request_from_head(head, ()).unwrap();
        assert_eq!(back.method(), request.method());
        assert_eq!(back.uri(), request.uri());
        assert_eq!(back.headers(), request.headers());
        assert_eq!(back.version(), Version::HTTP_11);

        let connect = Request::builder()
            .method("CONNECT")
            .uri("db.internal:5432")
            .body(())
            .unwrap();
        let connect_head = across(request_head(
            connect.method(),
            connect.uri(),
            connect.headers(),
        ));
        assert_eq!(connect_head.target, "db.internal:5432");
        let back = request_from_head(connect_head, ()).unwrap();
        assert_eq!(back.uri().authority().unwrap().as_str(), "db.internal:5432");

        let response = || {
            Response::builder()
                .status(418)
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .body(())
                .unwrap()
        };
        let back = response_from_head(response_head(&mut response(), false), ()).unwrap();
        assert_eq!(back.status(), 418);
        assert_eq!(back.headers(), response().headers());
    }

    #[test]
    fn a_target_hyper_refuses_is_an_error_not_a_panic() {
        let head = RequestHead {
            method: "GET".into(),
            target: "http://[bad".into(),
            fields: Fields::new(),
            has_body: false,
        };
        assert!(request_from_head(head, ()).is_err());
    }
}
