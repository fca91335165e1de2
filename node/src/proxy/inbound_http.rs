//! The serving end of a tunnelled HTTP request: the request arrives as parts
//! ([`super::exchange`]) right after the stream header, and this node relays
//! it to its backend over a pooled keep-alive connection ([`BackendPool`])
//! instead of a fresh TCP connection per request. The caller's listener has
//! already routed the request and shaped its headers; this end forwards head
//! and body as they are, answers with the response's parts, and splices the
//! two sides when the backend switches protocols (WebSocket, `CONNECT`).
//!
//! What the caller learns is exact: [`Part::NotForwarded`] only when no
//! backend connection took the request (none could be made, or a pooled one
//! had closed and no new one could be made), so the caller may send it
//! elsewhere; once the request was handed to the backend, a failure resets
//! the stream ([`BACKEND_FAILED`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::Response;
use mesh_proto::exchange::{Part, RequestHead, encode_part};
use mesh_proto::tunnel::{StatusCode, StreamStatus};
use prometheus_client::metrics::counter::Counter;
use quinn::{SendStream, VarInt};
use tokio::time::Instant;

use super::backend_pool::{BackendPool, SendError, Sender, Sent};
use super::body::{Body, BoxError};
use super::exchange::{self, Observe, PartReader, PartsBody};
use super::headers;
use super::observed::Activity;
use super::upgrade::{Upgrade, splice_upgraded, switched};

/// The reset code of a request stream whose backend failed the request after
/// it was handed over (or did not answer in time).
pub const BACKEND_FAILED: VarInt = VarInt::from_u32(3);

/// Whether the request's backend connection came from the pool, and the
/// counters of `shoal_inbound_http_requests_total` to add the request to once
/// it is known which connection carried it (a pooled one the backend had
/// closed is replaced by a new one).
#[derive(Debug)]
pub struct Reuse {
    /// The connection given to [`serve`] came from the pool.
    pub reused: bool,
    /// `connection="new"`.
    pub new: Counter,
    /// `connection="reused"`.
    pub reused_count: Counter,
}

/// What relaying one tunnelled request needs besides its stream.
#[allow(missing_debug_implementations)]
pub struct Relay {
    /// The backend's pool: `sender` is returned to it once the exchange is done.
    pub pool: Arc<BackendPool>,
    /// A connection to the backend, taken from the pool or new.
    pub sender: Sender,
    /// Whether `sender` came from the pool, and the counters to add to.
    pub reuse: Reuse,
    /// How long connecting to the backend may take, if a new connection is needed.
    pub connect_timeout: Duration,
    /// Bytes read from the stream (`upstream`) and written to it (`downstream`).
    pub counters: (Counter, Counter),
    /// Held until the exchange ends — or, if it upgrades, until the upgraded
    /// tunnel does (the service's connection slot, the stream's metrics).
    pub keep: Arc<dyn Send + Sync>,
    /// Bounds the wait for the backend's response head: the caller's deadline
    /// (from the stream header), at most the service's `response_timeout`.
    pub deadline: Option<Instant>,
    /// How long the exchange, or the tunnel it upgrades to, may carry no byte
    /// (the service's `idle_timeout`).
    pub idle_timeout: Duration,
}

/// How a tunnelled exchange ended.
#[derive(Debug)]
pub enum Ended {
    /// The exchange finished (or was handed over to an upgraded tunnel).
    Done,
    /// Nothing was forwarded: the caller was told so (no backend connection).
    NotForwarded(String),
    /// No byte moved on the stream for the service's `idle_timeout` (a body
    /// that stalled either way; a backend that never answers a caller that set
    /// no deadline): the stream was dropped, giving back the service's slot.
    Idle,
    /// The exchange failed after the request was handed over; the stream was
    /// reset.
    Failed(String),
}

/// The stream of one exchange, past its request head.
#[allow(missing_debug_implementations)]
pub struct Stream {
    /// The request head.
    pub head: RequestHead,
    /// The rest of what the caller sends.
    pub reader: PartReader,
    /// Towards the caller.
    pub send: SendStream,
}

/// Serves the one HTTP exchange on a tunnel stream as `relay` says, until it
/// ends or nothing moves on the stream for `relay.idle_timeout` — except while
/// the backend's response head is awaited under the caller's deadline, which
/// then bounds the wait instead.
pub async fn serve(relay: Relay, stream: Stream) -> Ended {
    let activity = Arc::new(Activity::new());
    let waits = Waits::default();
    let (read, written) = relay.counters.clone();
    let seen = activity.clone();
    let on_read: Observe = Arc::new(move |n| {
        seen.touch();
        read.inc_by(n as u64);
    });
    let seen = activity.clone();
    let on_write: Observe = Arc::new(move |n| {
        seen.touch();
        written.inc_by(n as u64);
    });
    let idle = relay.idle_timeout;
    let Stream { head, reader, send } = stream;
    let reader = reader.observed(on_read);
    let relayed = relay_one(relay, head, reader, send, (&waits, on_write));
    tokio::pin!(relayed);
    loop {
        tokio::select! {
            ended = relayed.as_mut() => return ended,
            () = tokio::time::sleep_until(activity.last() + idle) => {
                if waits.backend_has_the_turn() {
                    activity.touch();
                } else if activity.last() + idle <= Instant::now() {
                    return Ended::Idle;
                }
            }
        }
    }
}

/// The request handed to the backend, its response sent back as parts.
async fn relay_one(
    relay: Relay,
    head: RequestHead,
    reader: PartReader,
    mut send: SendStream,
    (waits, on_write): (&Waits, Observe),
) -> Ended {
    let upgrade = is_upgrade(&head);
    let (body, raw): (Body, _) = match (head.has_body, upgrade) {
        (false, _) => {
            waits.body_done.store(true, Ordering::Relaxed);
            (exchange::empty(), Some(reader))
        }
        (true, Some(_)) => {
            // The stream goes raw after a switch: a body before it is not relayed.
            return fail(&mut send, "a protocol switch with a request body".into());
        }
        (true, None) => {
            let done = waits.body_done.clone();
            let length = exchange::content_length(&head.fields.0);
            let body = PartsBody::new(reader)
                .with_length(length)
                .on_end(move || done.store(true, Ordering::Relaxed));
            (body.boxed_unsync(), None)
        }
    };
    let request = match exchange::request_from_head(head, body) {
        Ok(r) => r,
        Err(e) => return fail(&mut send, format!("the request head: {e}")),
    };
    let Relay {
        pool,
        sender,
        reuse,
        connect_timeout,
        keep,
        deadline,
        idle_timeout,
        ..
    } = relay;
    let sending = std::pin::pin!(pool.send(Some(sender), request, connect_timeout));
    let sent = await_head(sending, deadline, waits).await;
    let Sent {
        sender,
        mut response,
        on_given,
    } = match sent {
        Ok(sent) => sent,
        Err(Failure::NotForwarded(text)) => return not_forwarded(&mut send, text).await,
        Err(Failure::Failed(text)) => return fail(&mut send, text),
    };
    reuse.count(on_given);
    let switch = switched(&response, upgrade);
    let has_body = !switch && !hyper::body::Body::is_end_stream(response.body());
    let response_head = Part::ResponseHead(exchange::response_head(&mut response, has_body));
    if has_body {
        // The head leaves with as much of the body as is ready.
        let mut out = BytesMut::new();
        if let Err(e) = encode_part(&response_head, &mut out) {
            return fail(&mut send, format!("the response head: {e}"));
        }
        let ended = send_body(&mut send, out, response, &on_write).await;
        // After the body: by then the connection is usually ready for the
        // next request, and goes back to the pool without a task of its own.
        pool.give_back(sender);
        return ended;
    }
    if let Err(e) = exchange::write_part(&mut send, &response_head).await {
        return fail(&mut send, format!("writing the response head: {e}"));
    }
    if let (true, Some(reader)) = (switch, raw) {
        let backend = Upgrade::Hyper(hyper::upgrade::on(&mut response));
        let caller = Upgrade::Tunnel(tokio::io::join(reader.into_raw(), send));
        splice_upgraded(caller, backend, "inbound", idle_timeout, keep);
        return Ended::Done;
    }
    pool.give_back(sender);
    let _ = send.finish();
    Ended::Done
}

/// Why the backend's response head did not come.
enum Failure {
    /// Nothing reached the backend.
    NotForwarded(String),
    /// The request was handed over, then failed.
    Failed(String),
}

/// Awaits the backend's response head, bounded by `deadline` (marked in
/// `waits` so the idle watchdog leaves the wait to it). `sending` is pinned by
/// the caller: held here by value, it would be stored twice in this future's
/// state (as the argument and inside the timeout).
async fn await_head(
    sending: std::pin::Pin<&mut impl std::future::Future<Output = Result<Sent, SendError>>>,
    deadline: Option<Instant>,
    waits: &Waits,
) -> Result<Sent, Failure> {
    let sent = match deadline {
        Some(d) => {
            waits.head.store(true, Ordering::Relaxed);
            let head = tokio::time::timeout_at(d, sending).await;
            waits.head.store(false, Ordering::Relaxed);
            head.map_err(|_| {
                Failure::Failed(
                    "no response head in time (the caller's deadline, or the service's response_timeout)"
                        .into(),
                )
            })?
        }
        None => sending.await,
    };
    sent.map_err(|e| match e {
        SendError::Connect(e) => Failure::NotForwarded(format!("backend refused: {e}")),
        e @ SendError::CertificateRefused(_) => Failure::NotForwarded(e.to_string()),
        e @ SendError::Http(_) => Failure::Failed(e.to_string()),
    })
}

/// Tells the caller nothing was forwarded, and stops its sending.
async fn not_forwarded(send: &mut SendStream, text: String) -> Ended {
    let status = StreamStatus::new(StatusCode::BackendRefused, text.clone());
    let _ = exchange::write_part(send, &Part::NotForwarded(status)).await;
    let _ = send.finish();
    Ended::NotForwarded(text)
}

/// Resets the stream: the exchange failed after the request was handed over.
fn fail(send: &mut SendStream, text: String) -> Ended {
    let _ = send.reset(BACKEND_FAILED);
    Ended::Failed(text)
}

/// Sends the response body as parts, then finishes the stream.
async fn send_body(
    send: &mut SendStream,
    head: BytesMut,
    response: Response<hyper::body::Incoming>,
    on_write: &Observe,
) -> Ended {
    let body = response
        .into_body()
        .map_err(|e| Box::new(e) as BoxError)
        .boxed_unsync();
    match exchange::write_body_after(send, head, body, Some(on_write), |_| {}).await {
        Ok(()) => {
            let _ = send.finish();
            Ended::Done
        }
        Err(e) => fail(send, e.to_string()),
    }
}

/// The switch a request asks for, as [`switched`] takes it.
fn is_upgrade(head: &RequestHead) -> Option<bool> {
    let connect = head.method == "CONNECT";
    let method = hyper::Method::from_bytes(head.method.as_bytes()).unwrap_or_default();
    headers::is_upgrade(&method, &head.fields.0).then_some(connect)
}

impl Reuse {
    fn count(self, on_given: bool) {
        if on_given && self.reused {
            self.reused_count.inc();
        } else {
            self.new.inc();
        }
    }
}

/// Whose turn it is on an exchange, for the idle watchdog.
#[derive(Debug, Clone, Default)]
struct Waits {
    /// The request body has ended (all of it read from the stream).
    body_done: Arc<AtomicBool>,
    /// The response head is awaited under the caller's deadline.
    head: Arc<AtomicBool>,
}

impl Waits {
    /// The request is sent whole and the backend's head is awaited: silence
    /// on the stream is the backend thinking, bounded by the caller's deadline.
    fn backend_has_the_turn(&self) -> bool {
        self.body_done.load(Ordering::Relaxed) && self.head.load(Ordering::Relaxed)
    }
}
