//! Forwarding one request, as named steps: the route's caller check, the
//! choice of service and endpoint (session, split, policy), the plan (time
//! budget, tries, the upstream head), then tries — each one an endpoint
//! picked, an upstream opened (hedged on a second endpoint if the first is
//! slow to accept), the request sent — until one is answered or the
//! retry rule says stop. Why a try failed is a [`TryFailure`]; whether it is
//! tried again is decided in one place, [`HttpListener::may_retry`], which
//! asks the route ([`Rule::may_retry`]), the listener's retry budget and the
//! time left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use mesh_proto::exchange::RequestHeadRef;
use mesh_proto::lb::{self, Policy};
use mesh_proto::route::{RetryOn, Rule, Session, is_idempotent};
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::RequestId;

use super::{
    Body, Exchange, HttpListener, Keep, Outcome, ReqBody, buffer_for_replay, exchange_local, full,
    hold,
};
use crate::config::ListenerKind;
use crate::metrics::HttpRetryLabels;
use crate::proxy::backend_pool::SendError;
use crate::proxy::balance::Balancer;
use crate::proxy::exchange::request_head;
use crate::proxy::headers::{self, Client, UpstreamHead};
use crate::proxy::hedge::{self, Heard, note_race};
use crate::proxy::outbound_http::{self, ExchangeError, Outgoing, Reply};
use crate::proxy::upgrade::Upgrade;
use crate::proxy::upstream::{self, HttpUpstream, LocalUpstream, OpenError, Target, Tunnel};

/// Why a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TryFailure {
    /// Nothing was sent (no tunnel stream, a refusal that another endpoint may
    /// not make, a pooled connection that had closed): always safe elsewhere.
    NotSent,
    /// The backend answered 5xx.
    ServerError,
    /// The stream or connection was reset before a response.
    Reset,
    /// No response within the per-try timeout.
    Timeout,
}

impl TryFailure {
    /// The `reason` label of `shoal_http_retries_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            TryFailure::NotSent => "connect_failure",
            TryFailure::ServerError => "5xx",
            TryFailure::Reset => "reset",
            TryFailure::Timeout => "timeout",
        }
    }

    /// Whether `rule` lets a request with `method` whose try number `tries`
    /// failed this way be tried again. A reset is retried if the policy lists
    /// `reset`; a per-try timeout if it lists `reset` or `5xx`
    /// (docs/routing.md).
    fn allowed_by(self, rule: &Rule, method: &str, tries: u32) -> bool {
        let on = |cause| rule.may_retry(method, cause, tries);
        match self {
            TryFailure::NotSent => on(RetryOn::ConnectFailure),
            TryFailure::ServerError => on(RetryOn::ServerError),
            TryFailure::Reset => on(RetryOn::Reset),
            TryFailure::Timeout => on(RetryOn::Reset) || on(RetryOn::ServerError),
        }
    }
}

/// What one try came to.
enum Tried {
    /// The endpoint answered (any status).
    Answered(Response<Body>, Option<(Upgrade, Keep)>),
    /// The try failed; the response is what the client gets if no try follows.
    Failed(TryFailure, Response<Body>),
    /// An answer no other endpoint would change (the caller is refused, the
    /// request cannot be tunnelled).
    Final(Response<Body>),
    /// The request body was streamed to an earlier try and is gone.
    NoBody,
}

/// Everything decided before the first try.
struct Forwarding<'r> {
    rule: Option<&'r Rule>,
    route: &'r str,
    service: String,
    balancer: Arc<Balancer>,
    policy: Policy,
    key: u64,
    session: Option<&'r Session>,
    /// The client's session named no usable endpoint: the answer pins a new one.
    repinned: bool,
    method: hyper::Method,
    /// The request's whole time budget.
    total: Duration,
    per_try: Duration,
    deadline: Instant,
    /// Tries that may be made when nothing was sent.
    connect_tries: u32,
    head: UpstreamHead,
}

impl Forwarding<'_> {
    /// The head as it crosses the tunnel (borrowed from `head`).
    fn wire(&self) -> RequestHeadRef<'_> {
        request_head(self.head.method(), self.head.uri(), self.head.headers())
    }
}

/// An opened upstream, or — for a request sent within its open (see
/// [`HttpListener::early`]) — the serving node's answer already.
enum Opened {
    Upstream(HttpUpstream),
    Replied(Result<Reply, ExchangeError>),
    /// The open (with its request) had no answer within the try's time.
    TimedOut,
}

/// The service and how its endpoint is chosen.
struct Choice {
    service: String,
    /// The endpoint the client's session cookie names, if still usable.
    pinned: Option<Endpoint>,
    /// The hash key when the session hashes (header or source address).
    key: Option<u64>,
}

impl HttpListener {
    pub(super) async fn forward(
        &self,
        mut ex: Exchange,
        route: Option<(&str, &Rule)>,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        let rule = route.map(|(_, r)| r);
        let route_name = route.map_or("-", |(n, _)| n);
        if let Some(refused) = self.refuse_caller(rule, route_name, &ex.request_id) {
            return refused;
        }
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_request(Instant::now());
        let choice = self.choose(rule, route_name, &ex);
        outcome.service = choice.service.clone();
        let mut pinned = choice.pinned.clone();
        let f = self.plan(&ex, rule, route_name, choice);
        if let Some(answer) = self.buffer_replayable(&mut ex, &f).await {
            return answer;
        }
        // A request without a body can be sent again as it is.
        if let ReqBody::Once(Some(body)) = &ex.body
            && hyper::body::Body::is_end_stream(body)
        {
            ex.body = ReqBody::Replay(Bytes::new());
        }
        self.tries(&mut ex, &f, &mut pinned, outcome).await
    }

    /// The 403 answer if the route's allow-list does not admit this
    /// listener's caller identity.
    fn refuse_caller(
        &self,
        rule: Option<&Rule>,
        route: &str,
        request_id: &str,
    ) -> Option<Response<Body>> {
        let caller = match self.cfg.kind {
            ListenerKind::Ingress => None,
            ListenerKind::Mesh => self.cfg.source_service.as_deref(),
        };
        match rule {
            Some(rule) if !rule.allows_caller(caller) => Some(self.error_response(
                StatusCode::FORBIDDEN,
                &format!(
                    "route {route} does not allow {}",
                    caller.map_or("callers without a service identity".to_string(), |c| {
                        format!("service {c}")
                    })
                ),
                request_id,
            )),
            _ => None,
        }
    }

    /// Session persistence, then the destination service: the service of the
    /// endpoint a session cookie pins, or the rule's split (by the session's
    /// hash key if it hashes), or the listener's default service.
    fn choose(&self, rule: Option<&Rule>, route: &str, ex: &Exchange) -> Choice {
        let mut pinned = None;
        let mut key = None;
        match rule.and_then(|r| r.session.as_ref()) {
            Some(Session::Cookie { name, .. }) => {
                if let (Some(rule), Some(token)) = (rule, headers::cookie(&ex.parts.headers, name))
                {
                    pinned = self.pinned(rule, route, token);
                }
            }
            Some(Session::Header { name }) => {
                key = Some(match ex.parts.headers.get(name.as_str()) {
                    Some(v) => lb::hash_key(v.as_bytes()),
                    None => lb::hash_ip(ex.peer.ip()),
                });
            }
            Some(Session::SourceIp) => key = Some(lb::hash_ip(ex.peer.ip())),
            None => {}
        }
        let service = match (&pinned, rule) {
            (Some((s, _)), _) => s.clone(),
            (None, Some(rule)) => rule
                .pick_backend(key.unwrap_or_else(|| self.random.random()))
                .map(|b| b.service.clone())
                .unwrap_or_default(),
            (None, None) => self.cfg.service().to_string(),
        };
        Choice {
            service,
            pinned: pinned.map(|(_, e)| e),
            key,
        }
    }

    /// The plan of the tries: policy, time budget, how many tries, the head.
    fn plan<'r>(
        &self,
        ex: &Exchange,
        rule: Option<&'r Rule>,
        route: &'r str,
        choice: Choice,
    ) -> Forwarding<'r> {
        let total = rule
            .and_then(|r| r.timeout_ms)
            .map_or(self.cfg.request_timeout, Duration::from_millis);
        let per_try = rule
            .and_then(|r| r.per_try_timeout_ms)
            .map_or(total, Duration::from_millis)
            .min(total);
        let policy = if choice.key.is_some() {
            Policy::RingHash
        } else {
            rule.and_then(|r| r.lb).unwrap_or(self.cfg.lb)
        };
        let client = (self.cfg.kind == ListenerKind::Ingress).then_some(Client {
            addr: ex.peer,
            tls: self.tls.is_some(),
        });
        let head = UpstreamHead::new(
            &ex.parts,
            &headers::authority(&ex.parts),
            &ex.request_id,
            client,
            ex.upgrade,
            rule.map(|r| &r.request_headers),
        );
        let session = rule.and_then(|r| r.session.as_ref());
        Forwarding {
            rule,
            route,
            balancer: self.balancer(&choice.service),
            service: choice.service,
            policy,
            key: choice.key.unwrap_or_else(|| lb::hash_ip(ex.peer.ip())),
            session,
            repinned: session.is_some() && choice.pinned.is_none(),
            method: ex.parts.method.clone(),
            total,
            per_try,
            // The whole time budget starts now, and covers reading a
            // replayable body: a client trickling it cannot hold the request.
            deadline: Instant::now() + total,
            connect_tries: self.cfg.attempts.max(rule.map_or(1, Rule::max_attempts)),
            head,
        }
    }

    /// Reads the body whole (bounded) when a try after it was sent may be
    /// made: the route retries 5xx or resets for this method, and it is not an
    /// upgrade. Returns the answer if the body could not be read in time.
    async fn buffer_replayable(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
    ) -> Option<Response<Body>> {
        let replays = !ex.upgrade
            && f.rule.is_some_and(|r| {
                r.retry.as_ref().is_some_and(|p| {
                    p.attempts > 1
                        && (p.on.contains(&RetryOn::ServerError) || p.on.contains(&RetryOn::Reset))
                        && (p.all_methods || is_idempotent(f.method.as_str()))
                })
            });
        let ReqBody::Once(Some(body)) = &mut ex.body else {
            return None;
        };
        if !replays {
            return None;
        }
        let body = std::mem::replace(body, full(Bytes::new()));
        match tokio::time::timeout_at(f.deadline.into(), buffer_for_replay(body)).await {
            Ok(Ok(b)) => {
                ex.body = b;
                None
            }
            Ok(Err(e)) => Some(self.error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
                &ex.request_id,
            )),
            Err(_) => Some(self.error_response(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body did not arrive within {:?}", f.total),
                &ex.request_id,
            )),
        }
    }

    /// Tries until one is answered or the retry rule says stop.
    async fn tries(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
        pinned: &mut Option<Endpoint>,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        let mut tried: Vec<String> = Vec::new();
        let mut retrying: Option<TryFailure> = None;
        // The answer if no try is left: the last try's, or (none made) a 503
        // made only then.
        let mut last: Option<Response<Body>> = None;
        loop {
            let remaining = f.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let message = format!("no response within {:?}", f.total);
                return self.error_response(StatusCode::GATEWAY_TIMEOUT, &message, &ex.request_id);
            }
            let Some(endpoint) = self.next_endpoint(f, pinned, &tried) else {
                return self.last_or_unavailable(last, f, &ex.request_id);
            };
            if let Some(failure) = retrying.take() {
                self.count_retry(f, failure);
            }
            tried.push(endpoint.node.clone());
            let try_timeout = f.per_try.min(remaining);
            let try_time = (try_timeout, tokio::time::Instant::now() + try_timeout);
            let early = self.early(ex, f);
            // Only an open that carries its request can run this long.
            let (endpoint, opened) = tokio::time::timeout_at(
                try_time.1,
                self.open(
                    (ex.tunnel_id, early),
                    f,
                    endpoint.clone(),
                    try_timeout,
                    &mut tried,
                ),
            )
            .await
            .unwrap_or((endpoint, Ok(Opened::TimedOut)));
            let tries = u32::try_from(tried.len()).unwrap_or(u32::MAX);
            outcome.attempts = tries;
            outcome.node = endpoint.node.clone();
            outcome.addr = Some(endpoint.addr);
            let failure = match self
                .attempt(ex, f, &endpoint, opened, try_time, outcome)
                .await
            {
                Tried::Answered(response, upgrade) => {
                    let server_error = response.status().is_server_error();
                    if !(server_error
                        && self.may_retry(f, TryFailure::ServerError, tries, ex.body.replayable()))
                    {
                        return self.finish(ex, f, &endpoint, tries, response, upgrade);
                    }
                    last = Some(response);
                    TryFailure::ServerError
                }
                Tried::Final(answer) => return answer,
                Tried::NoBody => return self.last_or_unavailable(last, f, &ex.request_id),
                Tried::Failed(failure, response) => {
                    if !self.may_retry(f, failure, tries, ex.body.replayable()) {
                        return response;
                    }
                    last = Some(response);
                    failure
                }
            };
            retrying = Some(failure);
        }
    }

    /// The answer when no try is left: the last try's, or a 503 if none was
    /// made (made only then: most requests never need it).
    fn last_or_unavailable(
        &self,
        last: Option<Response<Body>>,
        f: &Forwarding<'_>,
        request_id: &str,
    ) -> Response<Body> {
        last.unwrap_or_else(|| {
            self.error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoint of service {:?} is available", f.service),
                request_id,
            )
        })
    }

    /// The next endpoint: the pinned one first; then one not tried yet while
    /// there is one; then tried ones again (a retry of a transient failure may
    /// succeed there).
    fn next_endpoint(
        &self,
        f: &Forwarding<'_>,
        pinned: &mut Option<Endpoint>,
        tried: &[String],
    ) -> Option<Endpoint> {
        if let Some(e) = pinned.take() {
            return Some(e);
        }
        let table = self.ctx.table.load();
        let endpoints = table.endpoints(&f.service);
        f.balancer
            .pick(endpoints, f.policy, tried, f.key)
            .or_else(|| f.balancer.pick(endpoints, f.policy, &[], f.key))
    }

    /// The one retry rule: a try where nothing was sent is tried again while
    /// the listener's or the route's attempts last; one that was sent, only if
    /// the body can be sent again, the route allows it for this failure and
    /// method, time is left, and the listener's retry budget has room.
    fn may_retry(
        &self,
        f: &Forwarding<'_>,
        failure: TryFailure,
        tries: u32,
        replayable: bool,
    ) -> bool {
        if failure == TryFailure::NotSent {
            return tries < f.connect_tries;
        }
        replayable
            && f.rule
                .is_some_and(|r| failure.allowed_by(r, f.method.as_str(), tries))
            && f.deadline > Instant::now()
            && self.may_spend_retry()
    }

    fn count_retry(&self, f: &Forwarding<'_>, failure: TryFailure) {
        self.ctx
            .metrics
            .http
            .retries
            .get_or_create(&HttpRetryLabels {
                listener: self.cfg.name.clone(),
                route: f.route.to_string(),
                service: f.service.clone(),
                reason: failure.label(),
            })
            .inc();
    }

    /// Counts an outcome of `node` for outlier detection.
    fn record(&self, f: &Forwarding<'_>, node: &str, ok: bool) {
        let table = self.ctx.table.load();
        f.balancer.record(table.endpoints(&f.service), node, ok);
    }

    /// The request to send within the open, when it may be sent twice (a
    /// hedge sends it to a second endpoint): an idempotent method, a body
    /// known whole, no protocol switch. The open then lasts until the serving
    /// node answers, so a node that went silent on an established connection
    /// is hedged like one that does not accept. Other requests are sent once
    /// their stream is open, and only the dial is hedged.
    fn early(&self, ex: &Exchange, f: &Forwarding<'_>) -> Option<Bytes> {
        match &ex.body {
            ReqBody::Replay(bytes) if !ex.upgrade && is_idempotent(f.method.as_str()) => {
                Some(bytes.clone())
            }
            _ => None,
        }
    }

    /// Reaches `endpoint` (the connect timeout bounds a blackholed node) within
    /// the try's time; if it is slow to accept, also another endpoint (a hedge,
    /// added to `tried`), and the first to accept serves the try. With an
    /// `early` body, each open also sends the request and waits for the answer.
    async fn open(
        &self,
        (tunnel_id, early): (RequestId, Option<Bytes>),
        f: &Forwarding<'_>,
        endpoint: Endpoint,
        try_timeout: Duration,
        tried: &mut Vec<String>,
    ) -> (Endpoint, Result<Opened, OpenError>) {
        let target = Target {
            service: &f.service,
            source_service: self.cfg.source_service.as_deref(),
            request_id: tunnel_id,
            deadline: Some(try_timeout),
        };
        let open_timeout = try_timeout.min(self.cfg.connect_timeout);
        let delay = hedge::delay(
            self.ctx.setup_times.p99(),
            self.cfg.hedge_min_delay,
            open_timeout,
        );
        let heard = [Heard::default(), Heard::default()];
        // Encoded once, for the first open and a hedge alike; a head the
        // format cannot carry is left to the try to report.
        let request = early
            .as_ref()
            .and_then(|body| outbound_http::encode_whole(f.wire(), body).ok());
        let request = request.as_ref();
        let first = std::pin::pin!(self.open_one(
            endpoint.clone(),
            target,
            (open_timeout, &heard[0]),
            request
        ));
        let labels = self.listener_labels();
        let hedge = async {
            if !hedge::due(&self.ctx, delay, &heard[0]).await {
                return None;
            }
            let second = self.hedge(f, tried)?;
            hedge::started(&self.ctx, &labels);
            Some(Box::pin(self.open_one(
                second,
                target,
                (open_timeout, &heard[1]),
                request,
            )))
        };
        let raced = hedge::race(first, hedge).await;
        note_race(&self.ctx, (&labels, &f.service), &raced, &heard, &endpoint);
        if let Some((e, failed)) = &raced.other_failed
            && failed.try_another()
        {
            self.record(f, &e.node, false);
        }
        match raced.result {
            Ok((e, up)) => (e, Ok(up)),
            Err((e, failed)) => (e, Err(failed)),
        }
    }

    /// Opens an upstream to `endpoint`, keeping the endpoint with the outcome;
    /// with a `request`, sends it on a tunnel and takes the answer (a "not
    /// forwarded" is then the open's failure, like a refused status).
    async fn open_one(
        &self,
        endpoint: Endpoint,
        target: Target<'_>,
        limits: (Duration, &Heard),
        request: Option<&Bytes>,
    ) -> Result<(Endpoint, Opened), (Endpoint, OpenError)> {
        let up = match upstream::open_http(&self.ctx, &endpoint, target, limits, request).await {
            Ok(up) => up,
            Err(e) => return Err((endpoint, e)),
        };
        let tunnel = match (up, request) {
            (HttpUpstream::Tunnel(tunnel), Some(_)) => tunnel,
            (up, _) => return Ok((endpoint, Opened::Upstream(up))),
        };
        let replied = outbound_http::answer(tunnel).await;
        if replied.is_ok() {
            self.ctx.suspects.answered(&endpoint.node);
        }
        match replied {
            Ok(Reply::NotForwarded(status, _)) => Err((
                endpoint.clone(),
                OpenError::refused_by(&endpoint.node, &status),
            )),
            replied => Ok((endpoint, Opened::Replied(replied))),
        }
    }

    /// The endpoint of a hedge, added to `tried`: only if hedging is on, the
    /// route keeps no session (a hedge would move it), a try is left, an
    /// endpoint not tried yet is, and the retry budget has room (spent).
    fn hedge(&self, f: &Forwarding<'_>, tried: &mut Vec<String>) -> Option<Endpoint> {
        if !self.cfg.hedge || f.session.is_some() || tried.len() as u32 >= f.connect_tries {
            return None;
        }
        let table = self.ctx.table.load();
        let second = f
            .balancer
            .pick(table.endpoints(&f.service), f.policy, tried, f.key)?;
        if !self.may_spend_retry() {
            return None;
        }
        tried.push(second.node.clone());
        Some(second)
    }

    /// One try on an opened upstream (or the failure to open one): send the
    /// request, wait for the response head within the try's time.
    async fn attempt(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        opened: Result<Opened, OpenError>,
        times: (Duration, tokio::time::Instant),
        outcome: &mut Outcome,
    ) -> Tried {
        let up = match opened {
            Ok(Opened::Replied(replied)) => return self.replied(ex, f, endpoint, replied),
            Ok(Opened::TimedOut) => {
                return self.timed_out(f, endpoint, times.0, &ex.request_id);
            }
            Ok(Opened::Upstream(up)) => up,
            Err(e) => return self.not_opened(ex, f, endpoint, e),
        };
        let upgrade = ex.upgrade.then_some(f.method == hyper::Method::CONNECT);
        let Some(body) = ex.body.take() else {
            return Tried::NoBody;
        };
        match up {
            HttpUpstream::Tunnel(tunnel) => {
                self.tunnelled(ex, f, endpoint, tunnel, (body, upgrade), times)
                    .await
            }
            HttpUpstream::Local(local) => {
                outcome.addr = self
                    .ctx
                    .services()
                    .get(&f.service)
                    .map(|s| s.config.address);
                self.local(&ex.request_id, f, endpoint, local, (body, upgrade), times)
                    .await
            }
        }
    }

    /// The try through a tunnel to the endpoint's node: the request in
    /// frames, the serving node's answer read back.
    async fn tunnelled(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        tunnel: Tunnel,
        (body, upgrade): (Body, Option<bool>),
        (try_timeout, try_deadline): (Duration, tokio::time::Instant),
    ) -> Tried {
        let outgoing = match std::mem::replace(&mut ex.body, ReqBody::Once(None)) {
            ReqBody::Replay(bytes) => {
                ex.body = ReqBody::Replay(bytes.clone());
                Outgoing::Whole(bytes)
            }
            ReqBody::Once(_) => Outgoing::Streamed(body),
        };
        let exchanged = outbound_http::exchange(tunnel, f.wire(), outgoing, upgrade);
        match tokio::time::timeout_at(try_deadline, exchanged).await {
            Ok(replied) => self.replied(ex, f, endpoint, replied),
            Err(_) => self.timed_out(f, endpoint, try_timeout, &ex.request_id),
        }
    }

    /// The try to the backend on this node, over a connection of its pool.
    async fn local(
        &self,
        rid: &str,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        local: LocalUpstream,
        (body, upgrade): (Body, Option<bool>),
        (try_timeout, try_deadline): (Duration, tokio::time::Instant),
    ) -> Tried {
        let request = f.head.request(body);
        let inflight = f.balancer.in_flight(&endpoint.node);
        let sent = tokio::time::timeout_at(
            try_deadline,
            exchange_local(local, request, upgrade, inflight),
        )
        .await;
        let node = &endpoint.node;
        match sent {
            Ok(Ok((response, upgrade))) => {
                self.record(f, node, !response.status().is_server_error());
                Tried::Answered(response, upgrade)
            }
            Ok(Err(e @ (SendError::Connect(_) | SendError::CertificateRefused(_)))) => {
                // A pooled local connection had closed and no new one could be
                // made, or the backend's TLS refused this node's certificate:
                // nothing was sent. (A streamed body is gone with the request,
                // so then the next try does not happen.)
                self.record(f, node, false);
                let message = format!("cannot reach service {} on {node}: {e}", f.service);
                let answer = self.error_response(StatusCode::SERVICE_UNAVAILABLE, &message, rid);
                Tried::Failed(TryFailure::NotSent, answer)
            }
            Ok(Err(e)) => {
                // A failure of the client's own request body (it went away
                // mid-upload) says nothing about the endpoint.
                if !e.is_user() {
                    self.record(f, node, false);
                }
                let answer =
                    self.error_response(StatusCode::BAD_GATEWAY, &format!("{node}: {e}"), rid);
                Tried::Failed(TryFailure::Reset, answer)
            }
            Err(_) => self.timed_out(f, endpoint, try_timeout, rid),
        }
    }

    /// A try with no response head within its time.
    fn timed_out(
        &self,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        try_timeout: Duration,
        rid: &str,
    ) -> Tried {
        self.record(f, &endpoint.node, false);
        let message = format!("{} did not answer within {try_timeout:?}", endpoint.node);
        let answer = self.error_response(StatusCode::GATEWAY_TIMEOUT, &message, rid);
        Tried::Failed(TryFailure::Timeout, answer)
    }

    /// What a tunnelled try came to: the response (holding the endpoint's
    /// in-flight count until its body ends), "not forwarded" (another
    /// endpoint may take it, with the body given back), or a failure after
    /// the request was sent.
    fn replied(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        replied: Result<Reply, ExchangeError>,
    ) -> Tried {
        let (node, rid) = (&endpoint.node, &ex.request_id);
        match replied {
            Ok(Reply::Response(response, upgrade)) => {
                self.ctx.suspects.answered(node);
                self.record(f, node, !response.status().is_server_error());
                let keep: Keep = Arc::new(f.balancer.in_flight(node));
                let upgrade = upgrade.map(|u| (u, keep.clone()));
                Tried::Answered(response.map(|b| hold(b, keep)), upgrade)
            }
            Ok(Reply::NotForwarded(status, body)) => {
                self.ctx.suspects.answered(node);
                if let Some(body) = body {
                    ex.body = ReqBody::Once(Some(body));
                }
                self.not_opened(ex, f, endpoint, OpenError::refused_by(node, &status))
            }
            Err(e @ ExchangeError::Head(_)) => {
                tracing::error!(listener = %self.cfg.name, service = %f.service, error = %e, "a request could not be tunnelled");
                let answer =
                    self.error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), rid);
                Tried::Final(answer)
            }
            Err(ExchangeError::Failed { client, text }) => {
                if !client {
                    self.record(f, node, false);
                }
                let answer =
                    self.error_response(StatusCode::BAD_GATEWAY, &format!("{node}: {text}"), rid);
                Tried::Failed(TryFailure::Reset, answer)
            }
        }
    }

    /// A try whose upstream could not be opened: refused for good (403), not
    /// sendable at all (500), or unreachable (503, and try elsewhere).
    fn not_opened(
        &self,
        ex: &Exchange,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        e: OpenError,
    ) -> Tried {
        let rid = &ex.request_id;
        match e {
            OpenError::Refused { text, .. } => {
                Tried::Final(self.error_response(StatusCode::FORBIDDEN, &text, rid))
            }
            e @ OpenError::Header(_) => {
                tracing::error!(listener = %self.cfg.name, service = %f.service, error = %e, "a request could not be tunnelled");
                Tried::Final(self.error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &e.to_string(),
                    rid,
                ))
            }
            e @ OpenError::Unreachable { .. } => {
                self.record(f, &endpoint.node, false);
                let message = format!(
                    "cannot reach service {} on {}: {e}",
                    f.service, endpoint.node
                );
                let answer = self.error_response(StatusCode::SERVICE_UNAVAILABLE, &message, rid);
                Tried::Failed(TryFailure::NotSent, answer)
            }
        }
    }

    /// The answer sent back: the session cookie when the request was (re)pinned
    /// or moved, and the upgrade spliced if both sides agreed.
    fn finish(
        &self,
        ex: &mut Exchange,
        f: &Forwarding<'_>,
        endpoint: &Endpoint,
        tries: u32,
        response: Response<Body>,
        upstream_upgrade: Option<(Upgrade, Keep)>,
    ) -> Response<Body> {
        let cookie = match f.session {
            Some(Session::Cookie { name, ttl_s }) if f.repinned || tries > 1 => Some((
                name.as_str(),
                headers::session_token(f.route, &f.service, &endpoint.node),
                *ttl_s,
            )),
            _ => None,
        };
        let upgrade = match (ex.client_upgrade.take(), upstream_upgrade) {
            (Some(client), Some((upstream, keep))) => {
                Some((client, upstream, (ex.conn.clone(), keep)))
            }
            _ => None,
        };
        self.respond(response, upgrade, f.rule, cookie)
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::route::{Retry, RetryOn, Rule};

    use super::TryFailure;

    /// A rule retrying on `on`, 3 attempts, idempotent methods only.
    fn rule(on: &[RetryOn]) -> Rule {
        let mut rule: Rule = serde_json::from_value(serde_json::json!({
            "backends": [{"service": "web"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        rule.retry = Some(Retry {
            on: on.to_vec(),
            attempts: 3,
            all_methods: false,
        });
        rule
    }

    #[test]
    fn each_failure_is_retried_only_on_what_the_route_lists() {
        let resets = rule(&[RetryOn::Reset]);
        let fives = rule(&[RetryOn::ServerError]);
        assert!(TryFailure::Reset.allowed_by(&resets, "GET", 1));
        assert!(!TryFailure::Reset.allowed_by(&fives, "GET", 1));
        assert!(TryFailure::ServerError.allowed_by(&fives, "GET", 1));
        assert!(!TryFailure::ServerError.allowed_by(&resets, "GET", 1));
        // A per-try timeout counts as either.
        assert!(TryFailure::Timeout.allowed_by(&resets, "GET", 1));
        assert!(TryFailure::Timeout.allowed_by(&fives, "GET", 1));
        assert!(!TryFailure::Timeout.allowed_by(&rule(&[RetryOn::ConnectFailure]), "GET", 1));
    }

    #[test]
    fn a_sent_request_is_retried_only_if_idempotent_and_tries_remain() {
        let resets = rule(&[RetryOn::Reset]);
        assert!(
            !TryFailure::Reset.allowed_by(&resets, "POST", 1),
            "POST was sent"
        );
        assert!(TryFailure::Reset.allowed_by(&resets, "PUT", 2));
        assert!(
            !TryFailure::Reset.allowed_by(&resets, "GET", 3),
            "three tries made"
        );
    }

    #[test]
    fn retry_reasons_are_the_metric_labels() {
        let labels = [
            TryFailure::NotSent,
            TryFailure::ServerError,
            TryFailure::Reset,
            TryFailure::Timeout,
        ]
        .map(TryFailure::label);
        assert_eq!(labels, ["connect_failure", "5xx", "reset", "timeout"]);
    }
}
