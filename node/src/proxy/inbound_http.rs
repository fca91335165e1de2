//! The serving end of a tunnelled HTTP request: the stream (past its `ok`)
//! carries one HTTP/1.1 exchange, which this node relays to its backend over a
//! pooled keep-alive connection ([`BackendPool`]) instead of a fresh TCP
//! connection per request. The caller's listener has already routed the request
//! and shaped its headers; this end forwards head and body as they are, and
//! splices the two sides when the backend switches protocols (WebSocket).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use quinn::{RecvStream, SendStream};

use super::HEADER_TIMEOUT;
use super::backend_pool::{BackendPool, Sender, Sent};
use super::body::{Body, BoxError, MAX_HEADER_BYTES};
use super::headers;
use super::http::{splice_upgraded, switched};
use super::observed::{Activity, Dir, Observed};

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
    /// No byte moved on the stream for the service's `idle_timeout` (a body
    /// that stalled either way; a backend that never answers a caller that set
    /// no deadline): the stream was
    /// dropped, giving back the service's slot.
    Idle,
    /// hyper's error.
    Failed(hyper::Error),
}

/// Serves the one HTTP exchange on a tunnel stream as `relay` says, until it
/// ends or nothing moves on the stream for `relay.idle_timeout` — except while
/// the backend's response head is awaited under the caller's deadline, which
/// then bounds the wait instead.
pub async fn serve(relay: Relay, send: SendStream, recv: RecvStream) -> Ended {
    let Relay {
        pool,
        sender,
        reuse,
        connect_timeout,
        counters,
        keep,
        deadline,
        idle_timeout,
    } = relay;
    let (read, written) = counters;
    let activity = Arc::new(Activity::new());
    let seen = activity.clone();
    let io = Observed::new(tokio::io::join(recv, send), move |dir, n| {
        seen.touch();
        match dir {
            Dir::Read => read.inc_by(n as u64),
            Dir::Write => written.inc_by(n as u64),
        };
    });
    let sender = Arc::new(Mutex::new(Some((sender, reuse))));
    // A request sent whole and its response head awaited under the caller's
    // deadline: a slow head (a long poll) is the backend's to take, up to the
    // deadline the caller chose, not an idle stream (a request body that
    // stalls still is).
    let waits = Waits::default();
    let watched = waits.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let pool = pool.clone();
        let keep = keep.clone();
        let sender = sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let waits = watched.clone();
        async move {
            let req = waits.watch_body(req);
            let relayed = relay_one(pool, sender, req, (connect_timeout, idle_timeout), keep);
            match deadline {
                // The caller gives up at its deadline: stop waiting for the
                // response head then (the body, once it flows, is not cut).
                Some(d) => {
                    waits.head.store(true, Ordering::Relaxed);
                    let head = tokio::time::timeout_at(d, relayed).await;
                    waits.head.store(false, Ordering::Relaxed);
                    head.unwrap_or_else(|_| {
                        Err("no response head in time (the caller's deadline, or the service's response_timeout)".into())
                    })
                }
                None => relayed.await,
            }
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(serving);
    loop {
        tokio::select! {
            r = serving.as_mut() => return r.map_or_else(Ended::Failed, |()| Ended::Done),
            () = tokio::time::sleep_until(activity.last() + idle_timeout) => {
                if waits.backend_has_the_turn() {
                    activity.touch();
                } else if activity.last() + idle_timeout <= Instant::now() {
                    return Ended::Idle;
                }
            }
        }
    }
}

async fn relay_one(
    pool: Arc<BackendPool>,
    sender: Option<(Sender, Reuse)>,
    mut req: Request<Body>,
    (connect_timeout, idle_timeout): (Duration, Duration),
    keep: Arc<dyn Send + Sync>,
) -> Result<Response<Body>, String> {
    let upgrade = headers::is_upgrade(req.method(), req.headers())
        .then_some(req.method() == hyper::Method::CONNECT);
    let caller_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (sender, reuse) = match sender {
        Some((sender, reuse)) => (Some(sender), Some(reuse)),
        None => (None, None),
    };
    let sent = pool
        .send(sender, req, connect_timeout)
        .await
        .map_err(|e| e.to_string());
    if let (Ok(sent), Some(reuse)) = (&sent, reuse) {
        if sent.on_given && reuse.reused {
            reuse.reused_count.inc();
        } else {
            reuse.new.inc();
        }
    }
    // A backend that fails the request ends the stream without a response, as a
    // reset backend connection would: the caller's listener sees the failure as
    // such (its retry policy's `reset`, its outlier detection).
    let Sent {
        sender,
        mut response,
        ..
    } = sent?;
    if switched(&response, upgrade) {
        if let Some(caller) = caller_upgrade {
            splice_upgraded(
                caller,
                hyper::upgrade::on(&mut response),
                "inbound",
                idle_timeout,
                keep,
            );
        }
    } else {
        pool.give_back(sender);
    }
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
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

    /// `req` with a body that marks [`Waits::body_done`] when it ends.
    fn watch_body(&self, req: Request<Incoming>) -> Request<Body> {
        let done = self.body_done.clone();
        if hyper::body::Body::is_end_stream(req.body()) {
            done.store(true, Ordering::Relaxed);
        }
        req.map(|b| {
            MarksEnd {
                inner: b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                done,
            }
            .boxed_unsync()
        })
    }
}

/// A body that sets `done` once it has yielded its last frame.
struct MarksEnd {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl hyper::body::Body for MarksEnd {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
