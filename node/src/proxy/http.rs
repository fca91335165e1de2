//! HTTP listeners (`protocol = "http"`): HTTP/1.1 and HTTP/2 (prior knowledge, or
//! ALPN on a TLS ingress listener), served with hyper. Each request is matched
//! against the route table (signed route documents shared by gossip; see
//! docs/routing.md) or goes to the listener's default service; the destination
//! service is chosen (weighted split), then an endpoint (session cookie, header or
//! source-address hashing, otherwise the load-balancing policy), and the request
//! is sent to that endpoint's node on a QUIC stream of its own, as exchange parts
//! without waiting for the node to accept (`outbound_http`) — the serving node
//! relays it over a pooled keep-alive connection to its backend (see
//! `inbound_http`). Bodies stream both ways; only requests that may be retried
//! after they were sent keep a bounded replay buffer. Paths are normalised before
//! matching (`headers::routable_path`); client connections are bounded by
//! `header_timeout` until their first request and `idle_timeout` after.
//!
//! Retries: a try that could not reach an endpoint, or that its node answered
//! "not forwarded" (no backend saw it), is always retried elsewhere, up to the listener's `attempts` or the route's, whichever is
//! more. A try that was sent and failed (5xx, reset, per-try timeout) is retried
//! only if the route's retry policy says so for that method, the body fits the
//! replay buffer, and the listener's retry budget allows. `Upgrade` (WebSocket)
//! and `CONNECT` pass through: once the backend agrees, the two connections are
//! spliced.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_proto::retry::{RetryBudget, RetryBudgetConfig};
use mesh_proto::route::Rule;
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::RequestId;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::access_log::{self, Writer};
use super::backend_pool::{SendError, Sent};
use super::balance::{Balancer, InFlight};
use super::headers;
use super::ingress_tls::IngressCert;
use super::observed::Activity;
use super::upgrade::{Upgrade, splice_upgraded, switched};
use super::upstream::LocalUpstream;
use super::{CountGuard, ProxyContext};
use crate::config::{ListenerConfig, ListenerKind};
use crate::metrics::http::RequestCounts;
use crate::metrics::{ListenerLabels, ListenerReasonLabels};
use crate::routes::SharedRoutes;

mod forward;

pub use super::body::{Body, BoxError, MAX_HEADER_BYTES, REPLAY_LIMIT};
use super::body::{boxed, full};

/// One HTTP listener.
pub struct HttpListener {
    cfg: ListenerConfig,
    ctx: Arc<ProxyContext>,
    routes: SharedRoutes,
    balancers: Mutex<std::collections::HashMap<String, Arc<Balancer>>>,
    budget: Mutex<RetryBudget>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    log: Option<Writer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    random: Balancer,
    /// Its handles into the request metrics.
    counts: RequestCounts,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// One client connection, as its requests see it. Held by the connection and by
/// any tunnel a request of it upgraded to (WebSocket, `CONNECT`), so such a
/// tunnel keeps its slot in the listener's `max_connections` and in
/// `shoal_listener_active_connections` until it ends.
struct ClientConn {
    _slot: CountGuard,
    active: Gauge,
    activity: Arc<Activity>,
    /// Requests whose head has been read, so far.
    requests: AtomicUsize,
    /// Requests being handled now: from their head until their response body
    /// has ended (or was abandoned).
    in_flight: AtomicUsize,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// One request in flight on a client connection, until dropped.
struct Busy(Arc<ClientConn>);

impl Busy {
    fn new(conn: &Arc<ClientConn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request being handled, for its metrics and access-log line: answered with
/// [`Pending::answer`], or — if the client goes away first (an HTTP/2 stream
/// reset, a closed connection) — recorded when dropped, as status 499 (nginx's
/// "client closed request").
struct Pending<'a> {
    listener: &'a HttpListener,
    started: Instant,
    outcome: Outcome,
    answered: bool,
    /// What the access-log line needs, when the listener writes one.
    log: Option<LogStart>,
}

/// The request's side of an access-log line, taken at its arrival.
struct LogStart {
    arrived: time::OffsetDateTime,
    request_id: String,
    client: SocketAddr,
    version: Version,
    method: String,
    authority: String,
    path: String,
    request_bytes: Arc<AtomicU64>,
}

/// The status recorded for a request its client abandoned.
const CLIENT_CLOSED: u16 = 499;

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

impl Pending<'_> {
    /// Counts the request in the metrics.
    fn count(&self, status: StatusCode) {
        let l = self.listener;
        l.counts.count(
            &l.ctx.metrics.http,
            (&self.outcome.route, &self.outcome.service),
            headers::status_class(status),
            self.started.elapsed().as_secs_f64(),
        );
    }

    /// The access-log line as far as it is known now.
    fn line(&self, start: &LogStart, status: u16) -> access_log::Line {
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        access_log::Line {
            time: shoal_pki::inspect::rfc3339(start.arrived),
            listener: self.listener.cfg.name.clone(),
            request_id: start.request_id.clone(),
            client: start.client.to_string(),
            protocol: version_str(start.version),
            method: start.method.clone(),
            authority: start.authority.clone(),
            path: start.path.clone(),
            route: dash(&self.outcome.route),
            service: dash(&self.outcome.service),
            status,
            upstream_node: dash(&self.outcome.node),
            upstream_addr: self
                .outcome
                .addr
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            attempts: self.outcome.attempts,
            request_bytes: start.request_bytes.load(Ordering::Relaxed),
            response_bytes: 0,
            complete: false,
            head_ms: elapsed_ms,
            duration_ms: elapsed_ms,
        }
    }

    /// Records the response and returns it, its body holding `keep` until it ends
    /// (and completing the access-log line then).
    fn answer(
        mut self,
        response: Response<Body>,
        keep: impl Send + Unpin + 'static,
    ) -> Response<Body> {
        self.answered = true;
        self.count(response.status());
        let logged = match (&self.listener.log, &self.log) {
            (Some(writer), Some(start)) => Some(access_log::LoggedBody::new(
                writer.clone(),
                self.line(start, response.status().as_u16()),
                self.started,
                start.request_bytes.clone(),
                self.listener.ctx.metrics.clone(),
            )),
            _ => None,
        };
        response.map(move |body| {
            let body = match logged {
                Some(logged) => logged.wrap(body),
                None => body,
            };
            Holding {
                inner: body,
                _keep: keep,
            }
            .boxed_unsync()
        })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.count(StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST));
        if let (Some(writer), Some(start)) = (&self.listener.log, &self.log)
            && !writer.log(&self.line(start, CLIENT_CLOSED))
        {
            self.listener.count_failure("access_log_full");
        }
    }
}

/// A body that holds `K` until it is dropped.
struct Holding<K> {
    inner: Body,
    _keep: K,
}

impl<K: Unpin> hyper::body::Body for Holding<K> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long an idle client connection may take to close gracefully.
const GRACE: Duration = Duration::from_secs(5);

/// What the access log and the metrics need to know about one request.
#[derive(Debug, Default)]
struct Outcome {
    route: String,
    service: String,
    node: String,
    /// Formatted only for the access log.
    addr: Option<SocketAddr>,
    attempts: u32,
}

/// The request's body for the tries: kept whole for replays, or streamed once.
enum ReqBody {
    Replay(Bytes),
    Once(Option<Body>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Replay(b) => Some(full(b.clone())),
            ReqBody::Once(b) => b.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Replay(_))
    }
}

/// One request on its way: everything the tries share.
struct Exchange {
    conn: Arc<ClientConn>,
    parts: Parts,
    body: ReqBody,
    client_upgrade: Option<OnUpgrade>,
    peer: SocketAddr,
    request_id: String,
    tunnel_id: RequestId,
    upgrade: bool,
}

impl HttpListener {
    /// A listener for `cfg`, reading routes from `routes`, serving TLS with `cert`
    /// if it is an ingress listener with `[listener.tls]`.
    pub async fn new(
        cfg: ListenerConfig,
        ctx: Arc<ProxyContext>,
        routes: SharedRoutes,
        cert: Option<Arc<IngressCert>>,
    ) -> Result<Arc<Self>, String> {
        let log = match &cfg.access_log {
            None => None,
            Some(target) => Some(
                Writer::start(target)
                    .await
                    .map_err(|e| format!("access_log: {e}"))?,
            ),
        };
        let tls = match cert {
            Some(c) => Some(c.acceptor().map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Arc::new(HttpListener {
            counts: RequestCounts::new(&cfg.name),
            budget: Mutex::new(RetryBudget::new(RetryBudgetConfig::default())),
            balancers: Mutex::new(std::collections::HashMap::new()),
            active: Arc::default(),
            random: Balancer::new(
                &cfg.name,
                "-",
                None,
                cfg.outlier,
                ctx.metrics.proxy.outlier_ejections.clone(),
            ),
            log,
            tls,
            cfg,
            ctx,
            routes,
        }))
    }

    fn balancer(&self, service: &str) -> Arc<Balancer> {
        let mut map = self.balancers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(
                    Balancer::new(
                        &self.cfg.name,
                        service,
                        self.cfg.zone_aware.then_some(self.ctx.zone.as_str()),
                        self.cfg.outlier,
                        self.ctx.metrics.proxy.outlier_ejections.clone(),
                    )
                    .with_suspects(self.ctx.suspects.clone()),
                )
            })
            .clone()
    }

    /// Accepts connections until `stop` fires.
    pub async fn run(self: Arc<Self>, listener: Arc<TcpListener>, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, typically: back off briefly.
                        tracing::warn!(listener = %self.cfg.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            self.ctx
                .metrics
                .proxy
                .listener_connections
                .get_or_create(&self.listener_labels())
                .inc();
            let Some(slot) =
                CountGuard::try_acquire(&self.active, self.cfg.max_connections as usize)
            else {
                self.count_failure("max_connections");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let active = me
                    .ctx
                    .metrics
                    .proxy
                    .listener_active
                    .get_or_create(&me.listener_labels())
                    .clone();
                active.inc();
                let conn = Arc::new(ClientConn {
                    _slot: slot,
                    active,
                    activity: Arc::new(Activity::new()),
                    requests: AtomicUsize::new(0),
                    in_flight: AtomicUsize::new(0),
                });
                match me.tls.clone() {
                    Some(acceptor) => {
                        match tokio::time::timeout(me.cfg.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => me.clone().serve(tls, peer, conn).await,
                            Ok(Err(e)) => {
                                me.count_failure("tls_handshake");
                                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                me.count_failure("tls_handshake");
                                tracing::debug!(client = %peer, "TLS handshake timed out");
                            }
                        }
                    }
                    None => me.clone().serve(stream, peer, conn).await,
                }
            });
        }
    }

    fn listener_labels(&self) -> ListenerLabels {
        ListenerLabels {
            listener: self.cfg.name.clone(),
        }
    }

    fn count_failure(&self, reason: &'static str) {
        self.ctx
            .metrics
            .proxy
            .listener_failures
            .get_or_create(&ListenerReasonLabels {
                listener: self.cfg.name.clone(),
                reason,
            })
            .inc();
    }

    /// Serves one client connection. Besides hyper's own limits, a watchdog
    /// closes it when no complete request head has arrived within
    /// `header_timeout` of its start (a silent client, or an HTTP/2 preface and
    /// nothing more), and closes it gracefully once no request is in flight and
    /// no byte has moved for `idle_timeout`.
    async fn serve<I>(self: Arc<Self>, io: I, peer: SocketAddr, conn: Arc<ClientConn>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(conn.activity.watch(io));
        let me = self.clone();
        let for_requests = conn.clone();
        let service = hyper::service::service_fn(move |req| {
            let me = me.clone();
            let conn = for_requests.clone();
            // Boxed: the request's future is kilobytes, and hyper would move
            // it by value into its dispatcher.
            let handling = Box::pin(me.handle(req, peer, conn));
            async move { Ok::<_, Infallible>(handling.await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.cfg.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(256);
        let serving = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(serving);
        // While requests are in flight, the idle check is put off by a whole
        // idle_timeout at a time (never a deadline in the past).
        let mut not_before = tokio::time::Instant::now();
        loop {
            let first = conn.requests.load(Ordering::Relaxed) == 0;
            let deadline = if first {
                conn.activity.born() + self.cfg.header_timeout
            } else {
                (conn.activity.last() + self.cfg.idle_timeout).max(not_before)
            };
            tokio::select! {
                r = serving.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(listener = %self.cfg.name, client = %peer, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if first {
                        if conn.requests.load(Ordering::Relaxed) == 0 {
                            self.count_failure("header_timeout");
                            tracing::debug!(listener = %self.cfg.name, client = %peer, "no request within header_timeout; closed");
                            return;
                        }
                    } else if conn.in_flight.load(Ordering::Relaxed) > 0 {
                        not_before = tokio::time::Instant::now() + self.cfg.idle_timeout;
                    } else if conn.activity.last() + self.cfg.idle_timeout
                        <= tokio::time::Instant::now()
                    {
                        tracing::debug!(listener = %self.cfg.name, client = %peer, "idle client connection closed");
                        serving.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(GRACE, serving.as_mut()).await;
                        return;
                    }
                }
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        conn: Arc<ClientConn>,
    ) -> Response<Body> {
        let started = Instant::now();
        conn.requests.fetch_add(1, Ordering::Relaxed);
        let busy = Busy::new(&conn);
        // Counted until the response body ends: a graceful stop waits for it.
        let in_flight = self.ctx.endpoint.stream_guard();
        let (request_id, tunnel_id) = headers::request_id(req.headers(), || self.random.random());
        let upgrade = headers::is_upgrade(req.method(), req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Request body bytes, counted as the body is read (for the access log).
        let request_bytes = Arc::new(AtomicU64::new(0));
        let body = if self.log.is_some() {
            access_log::count_body(boxed(body), request_bytes.clone())
        } else {
            boxed(body)
        };
        let mut pending = self.pending(started, &parts, peer, &request_id, request_bytes);
        let mut response = match normalise_path(&mut parts) {
            Err(why) => self.error_response(StatusCode::BAD_REQUEST, why, &request_id),
            Ok(path) => {
                let exchange = Exchange {
                    conn: conn.clone(),
                    parts,
                    body: ReqBody::Once(Some(body)),
                    client_upgrade,
                    peer,
                    request_id: request_id.clone(),
                    tunnel_id,
                    upgrade,
                };
                self.dispatch(exchange, &path, &mut pending.outcome).await
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(headers::X_REQUEST_ID, v);
        }
        // Both stay until the response body has ended.
        pending.answer(response, (in_flight, busy))
    }

    /// The request's record for its metrics and access-log line.
    fn pending(
        &self,
        started: Instant,
        parts: &Parts,
        peer: SocketAddr,
        request_id: &str,
        request_bytes: Arc<AtomicU64>,
    ) -> Pending<'_> {
        Pending {
            listener: self,
            started,
            outcome: Outcome::default(),
            answered: false,
            log: self.log.as_ref().map(|_| LogStart {
                arrived: time::OffsetDateTime::now_utc(),
                request_id: request_id.to_string(),
                client: peer,
                version: parts.version,
                method: parts.method.as_str().to_string(),
                authority: headers::authority(parts),
                path: parts.uri.path().to_string(),
                request_bytes,
            }),
        }
    }

    /// Sends the request by the route that matches it (`path` is the
    /// normalised one rules match), or to the listener's default service.
    async fn dispatch(&self, ex: Exchange, path: &str, outcome: &mut Outcome) -> Response<Body> {
        let authority = headers::authority(&ex.parts);
        let matched = {
            let routes = self.routes.load();
            routes
                .route(&authority, path, ex.parts.method.as_str(), |name| {
                    ex.parts.headers.get(name).and_then(|v| v.to_str().ok())
                })
                .map(|m| (m.route.name.clone(), m.rule.clone()))
        };
        match matched {
            Some((route, rule)) => {
                outcome.route = route.clone();
                self.forward(ex, Some((&route, &rule)), outcome).await
            }
            None if self.cfg.service.is_some() => self.forward(ex, None, outcome).await,
            None => {
                let message = format!("no route matches {authority}{path}");
                self.error_response(StatusCode::NOT_FOUND, &message, &ex.request_id)
            }
        }
    }

    /// A response made by the proxy itself. Ingress listeners face users, so
    /// their 403 and 5xx answers do not name nodes, addresses or routes: the body
    /// says only the status and the request id, and the detail goes to the log.
    fn error_response(
        &self,
        status: StatusCode,
        message: &str,
        request_id: &str,
    ) -> Response<Body> {
        if self.cfg.kind == ListenerKind::Ingress
            && (status.is_server_error() || status == StatusCode::FORBIDDEN)
        {
            tracing::debug!(listener = %self.cfg.name, %request_id, status = status.as_u16(), %message, "answered by the proxy");
            plain_error(status, "see the proxy's log", request_id)
        } else {
            plain_error(status, message, request_id)
        }
    }

    fn may_spend_retry(&self) -> bool {
        let ok = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_retry(Instant::now());
        if !ok {
            self.ctx
                .metrics
                .http
                .retry_budget_exhausted
                .get_or_create(&self.listener_labels())
                .inc();
        }
        ok
    }

    /// The endpoint a session cookie names, if it is still usable: searched among
    /// every destination of the rule, so the session also keeps its side of a
    /// traffic split.
    fn pinned(&self, rule: &Rule, route: &str, token: &str) -> Option<(String, Endpoint)> {
        let table = self.ctx.table.load();
        for backend in &rule.backends {
            for e in table.endpoints(&backend.service) {
                if headers::session_token(route, &backend.service, &e.node) == token {
                    return self
                        .balancer(&backend.service)
                        .usable(table.endpoints(&backend.service), &e.node)
                        .map(|e| (backend.service.clone(), e));
                }
            }
        }
        None
    }

    /// The response head sent back: hop-by-hop headers removed, the route's
    /// response header operations, the session cookie; a protocol switch or
    /// `CONNECT` is spliced once both sides have upgraded.
    fn respond(
        &self,
        mut response: Response<Body>,
        upgrade: Option<(OnUpgrade, Upgrade, impl Send + 'static)>,
        rule: Option<&Rule>,
        cookie: Option<(&str, String, Option<u64>)>,
    ) -> Response<Body> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(response.headers_mut(), switching);
        if let Some(rule) = rule {
            headers::apply_ops(response.headers_mut(), &rule.response_headers);
        }
        if let Some((name, token, ttl)) = cookie
            && let Ok(v) =
                HeaderValue::from_str(&headers::set_cookie(name, &token, ttl, self.tls.is_some()))
        {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        if let Some((client, upstream, keep)) = upgrade {
            splice_upgraded(
                Upgrade::Hyper(client),
                upstream,
                &self.cfg.name,
                self.cfg.idle_timeout,
                keep,
            );
        }
        response
    }
}

/// Normalises the request's path for the backend (it gets the path the rules
/// matched) and returns the path rules match, or why the path is refused.
fn normalise_path(parts: &mut Parts) -> Result<String, &'static str> {
    let routable = headers::routable_path(parts)?;
    if !routable.path.is_empty() && routable.path != "*" && routable.path != parts.uri.path() {
        parts.uri = with_path(&parts.uri, &routable.path).ok_or("the path cannot be normalised")?;
    }
    Ok(routable.match_path)
}

/// `uri` with its path replaced by `path` (the query kept).
fn with_path(uri: &hyper::Uri, path: &str) -> Option<hyper::Uri> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    hyper::Uri::from_parts(parts).ok()
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// What an upstream connection holds (its backend slot, its in-flight count):
/// kept by the connection's task, and by the tunnel if the exchange upgrades.
type Keep = Arc<dyn Send + Sync>;

/// Sends one request to the local backend over its pooled connection as
/// HTTP/1.1; returns the response head (its body streams on, holding what the
/// upstream holds until it ends) and, for an upgrade, the backend side of the
/// switched connection with what it holds.
async fn exchange_local(
    local: LocalUpstream,
    request: Request<Body>,
    upgrade: Option<bool>,
    inflight: InFlight,
) -> Result<(Response<Body>, Option<(Upgrade, Keep)>), SendError> {
    let LocalUpstream {
        sender,
        pool,
        connect_timeout,
        slot,
    } = local;
    let Sent {
        sender,
        mut response,
        ..
    } = pool.send(Some(sender), request, connect_timeout).await?;
    let keep: Keep = Arc::new((slot, inflight));
    let upgraded = switched(&response, upgrade).then(|| {
        (
            Upgrade::Hyper(hyper::upgrade::on(&mut response)),
            keep.clone(),
        )
    });
    if upgraded.is_none() {
        pool.give_back(sender);
    }
    let response = response.map(|b| hold(boxed(b), keep));
    Ok((response, upgraded))
}

/// `body`, holding `keep` until it ends.
fn hold(body: Body, keep: impl Send + Unpin + 'static) -> Body {
    Holding {
        inner: body,
        _keep: keep,
    }
    .boxed_unsync()
}

/// Reads up to [`REPLAY_LIMIT`] bytes of `body`. If it ends within the limit (and
/// has no trailers), it is kept for replays; otherwise what was read is sent
/// first and the rest streams after it, without replays.
async fn buffer_for_replay(mut body: Body) -> Result<ReqBody, BoxError> {
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut size = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                let trailers = !frame.is_data();
                size += frame.data_ref().map_or(0, Bytes::len);
                frames.push(frame);
                if size > REPLAY_LIMIT || trailers {
                    let head = futures::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
                    let rest = http_body_util::BodyStream::new(body);
                    let stream = futures::StreamExt::chain(head, rest);
                    return Ok(ReqBody::Once(Some(
                        http_body_util::StreamBody::new(stream).boxed_unsync(),
                    )));
                }
            }
        }
    }
    let mut all = BytesMut::with_capacity(size);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            all.extend_from_slice(&data);
        }
    }
    Ok(ReqBody::Replay(all.freeze()))
}

/// A response made by the proxy itself: the status and one line saying why, with
/// the request id to find it in the logs.
fn plain_error(status: StatusCode, message: &str, request_id: &str) -> Response<Body> {
    let body = format!(
        "{} {}: {message} (request id {request_id})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-shoal-error", HeaderValue::from_static("1"));
    r
}
