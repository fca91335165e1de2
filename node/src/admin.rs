//! The admin API on its own listener (loopback by default): health, readiness,
//! members, services, effective config, Prometheus metrics and a small live
//! dashboard. One routing `match`; every handler reads shared state, none blocks
//! the data path.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200` once joined (or alone by config), not draining and with every task running, else `503` naming why |
//! | `GET /members` | JSON: every known member (its newest generation) with state (`alive`, `suspect`, `draining`, `left`, `dead`), accusers, address, zone, generation, time since last heard |
//! | `GET /services` | JSON: service → endpoints (node, zone, health, weight, ...) |
//! | `GET /certificate` | JSON: this node's certificate: node, services, expiry, days left, whether it expires within 7 days |
//! | `GET /config` | JSON: the effective configuration |
//! | `GET /routes` | JSON: the route documents in force (tombstones included) |
//! | `GET /routes/rejected` | JSON: the route documents refused, with the reason |
//! | `POST /routes` | apply a signed route document (see [`crate::routes::ApplyRequest`]) |
//! | `GET /revocations` | JSON: the revocation list in force |
//! | `POST /revocations` | apply a CA-signed revocation list file (`shoal revoke apply`) |
//! | `GET /connections` | JSON: every open QUIC connection ([`crate::endpoint::connections::ConnectionView`]): peer, use, direction, RTT, congestion window, packet size, packets sent and lost, MTU probes and black holes, UDP bytes |
//! | `GET /stats` | JSON: the golden metrics ([`crate::golden::GoldenView`]): per service and per edge requests per second, success rate, p50/p95/p99, connections, retries, ejections (last 10 s, and series over 5 min); served streams; refusals by reason; gossip connections |
//! | `POST /reload` | re-read the config file and apply what can change live ([`crate::reload`]): JSON report |
//! | `GET /metrics` | Prometheus text |
//! | `GET /` | an HTML page polling the certificate, members, services and routes |
//!
//! What it lets in (connections, timeouts, the `Host` header) is `guard`.

mod guard;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use mesh_proto::gossip::NodeState;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::gossip::Gossip;
use crate::metrics::{Metrics, ReasonLabels, StateLabels};
use crate::publish::Publisher;
use crate::revocations::RevocationStore;
use crate::routes::{ApplyRequest, MAX_APPLY_REQUEST_BYTES, RouteStore, SharedRoutes};
use crate::routing::SharedTable;
use crate::supervisor::TaskHealth;
use crate::tls::TlsState;

/// What the admin handlers read.
#[derive(Debug)]
pub struct AdminState {
    /// The effective config.
    pub config: Arc<Config>,
    /// Gossip, for members.
    pub gossip: Arc<Gossip>,
    /// The routing table.
    pub table: SharedTable,
    /// The merged route documents' table (HTTP routing).
    pub routes: SharedRoutes,
    /// The route documents: `GET`/`POST /routes`.
    pub route_store: Arc<RouteStore>,
    /// The revocation list: `GET`/`POST /revocations`.
    pub revocations: Arc<RevocationStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This node's records (for draining).
    pub publisher: Arc<Publisher>,
    /// Set once a peer was seen.
    pub joined: AtomicBool,
    /// Which supervised tasks are down.
    pub tasks: TaskHealth,
    /// This node's certificate (as reloaded).
    pub tls: Arc<TlsState>,
    /// The golden metrics' recent samples: `/stats`.
    pub golden: Arc<crate::golden::History>,
    /// Config reloads: `POST /reload`, and the config in force for `/config`.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The QUIC endpoint: `/connections`.
    pub endpoint: Arc<crate::endpoint::MeshEndpoint>,
}

/// This node's certificate in `/certificate`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CertificateView {
    /// The node name it names.
    pub node: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The services it allows this node to host.
    pub services: Vec<String>,
    /// When it expires (RFC 3339).
    pub not_after: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// Whether it expires within 7 days (`tls::EXPIRY_WARNING`).
    pub expires_soon: bool,
}

/// One member in `/members`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// `alive`, `suspect` (accused, not yet declared dead by this node),
    /// `draining`, `left` (gone after draining) or `dead` (gone without a word).
    pub state: String,
    /// The members accusing it of not answering, if any.
    #[serde(default)]
    pub accused_by: Vec<String>,
    /// QUIC address.
    pub address: String,
    /// Zone (empty if its record is unknown).
    pub zone: String,
    /// Generation (start time in ms).
    pub generation: u64,
    /// Milliseconds since this node last heard from it or of it (a message, an
    /// answer to a probe, a newer signed record); `null` if never.
    pub last_heard_ms: Option<u64>,
    /// Software version.
    pub version: String,
    /// Whether this is the answering node.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// One endpoint in `/services`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EndpointView {
    /// Hosting node.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// Its QUIC address.
    pub address: String,
    /// `tcp` or `http`.
    pub protocol: String,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    /// Weight.
    pub weight: u32,
    /// Published in-flight load.
    pub inflight: u32,
    /// Tags.
    pub tags: Vec<String>,
}

/// A member's state as the admin API names it: `alive`, `suspect`, `draining`
/// (alive, but its signed node record says it is leaving), `left` (gone after
/// draining: a clean stop) or `dead` (gone without a word: a crash, a kill, a
/// cut).
pub fn member_state(m: &mesh_proto::membership::MemberView) -> &'static str {
    let draining = m
        .node
        .as_ref()
        .is_some_and(|n| n.state == NodeState::Draining);
    match m.health {
        "dead" if draining => "left",
        "dead" => "dead",
        _ if draining => "draining",
        h => h,
    }
}

/// The states of [`member_state`], for the `shoal_gossip_members` gauge.
pub const MEMBER_STATES: [&str; 5] = ["alive", "suspect", "draining", "left", "dead"];

impl AdminState {
    /// Counts one refused admin connection or request.
    fn refused(&self, reason: &'static str) {
        self.metrics
            .admin_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The `/members` answer, sorted by name.
    pub async fn members(&self) -> Vec<MemberView> {
        let view = self.gossip.current_view();
        // A restarted node's earlier generations are not listed: the newest
        // replaced them (an alert on dead members must not fire on restarts).
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for m in &view.members {
            let g = newest.entry(m.name.as_str()).or_default();
            *g = (*g).max(m.generation);
        }
        let out: Vec<MemberView> = view
            .members
            .iter()
            .filter(|m| newest.get(m.name.as_str()) == Some(&m.generation))
            .map(|m| MemberView {
                name: m.name.clone(),
                state: member_state(m).to_string(),
                accused_by: m.accusers.clone(),
                address: m.addr().map(|a| a.to_string()).unwrap_or_default(),
                zone: m.node.as_ref().map(|n| n.zone.clone()).unwrap_or_default(),
                generation: m.generation,
                last_heard_ms: (m.last_heard_ms != u64::MAX).then_some(m.last_heard_ms),
                version: m
                    .node
                    .as_ref()
                    .map(|n| n.version.clone())
                    .unwrap_or_default(),
                is_self: m.is_self,
            })
            .collect();
        for state in MEMBER_STATES {
            let n = out.iter().filter(|m| m.state == state).count();
            self.metrics
                .gossip
                .members
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        out
    }

    /// The `/certificate` answer.
    pub fn certificate(&self) -> CertificateView {
        let id = self.tls.identity();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let not_after = time::OffsetDateTime::from_unix_timestamp(id.not_after_unix)
            .map(shoal_pki::inspect::rfc3339)
            .unwrap_or_default();
        CertificateView {
            node: id.node_name.clone(),
            trust_domain: id.trust_domain.clone(),
            services: id.services.clone(),
            not_after,
            days_left: id.seconds_left(now).div_euclid(86_400),
            expires_soon: id.expires_soon(now),
        }
    }

    /// The `/services` answer.
    pub fn services(&self) -> std::collections::BTreeMap<String, Vec<EndpointView>> {
        services_view(&self.table.load())
    }

    /// Why `/readyz` answers 503, or `None` when it answers 200.
    pub async fn not_ready(&self) -> Option<String> {
        if self.publisher.is_draining().await {
            return Some("draining".into());
        }
        let down = self.tasks.down();
        if !down.is_empty() {
            return Some(format!("restarting: {}", down.join(", ")));
        }
        if !self.joined.load(Ordering::Relaxed) {
            let me = self.gossip.name();
            if self.table.load().nodes().any(|n| n.record.name != me) {
                self.joined.store(true, Ordering::Relaxed);
            }
        }
        if self.config.node.ready_alone || self.joined.load(Ordering::Relaxed) {
            None
        } else {
            Some("no peer seen yet".into())
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        self.not_ready().await.is_none()
    }
}

/// The `/services` view of a routing table: service → endpoints.
pub fn services_view(
    table: &mesh_proto::routing::RoutingTable,
) -> std::collections::BTreeMap<String, Vec<EndpointView>> {
    table
        .services()
        .map(|(name, eps)| {
            let eps = eps
                .iter()
                .map(|e| EndpointView {
                    node: e.node.clone(),
                    zone: e.zone.clone(),
                    address: e.addr.to_string(),
                    protocol: e.protocol.as_str().to_string(),
                    health: e.health.as_str().to_string(),
                    weight: e.weight,
                    inflight: e.inflight,
                    tags: e.tags.clone(),
                })
                .collect();
            (name.to_string(), eps)
        })
        .collect()
}

/// Serves the admin API on `listener` until `stop` fires, within the limits
/// of `guard`.
pub async fn serve(
    listener: Arc<TcpListener>,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    let node = &state.config.node;
    let permits = Arc::new(tokio::sync::Semaphore::new(
        node.admin_max_connections as usize,
    ));
    // Connections being told 503: a few at a time, each for a moment.
    let refusals = Arc::new(tokio::sync::Semaphore::new(guard::MAX_REFUSING));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(node.admin_header_timeout);
    let hostname: Arc<Option<String>> = Arc::new(guard::this_hostname());
    for reason in guard::REASONS {
        let _ = state
            .metrics
            .admin_refused
            .get_or_create(&ReasonLabels { reason });
    }
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, typically: back off rather than spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.refused("too_many_connections");
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    guard::tell_over_capacity(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let (state, http, hostname) = (state.clone(), http.clone(), hostname.clone());
        tokio::spawn(async move {
            serve_connection(stream, &state, &http, hostname).await;
            drop(permit);
        });
    }
}

/// Serves one admin connection. When hyper closes it for
/// `admin_header_timeout`, the close is a refusal (`header_timeout`) if part of
/// a request had arrived (a slow head) or no request ever did; a keep-alive
/// connection that sat idle after its requests is closed without counting.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: &Arc<AdminState>,
    http: &hyper::server::conn::http1::Builder,
    hostname: Arc<Option<String>>,
) {
    let read = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let io = crate::proxy::observed::Observed::new(stream, {
        let read = read.clone();
        move |dir, n| {
            if dir == crate::proxy::observed::Dir::Read {
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    let svc = hyper::service::service_fn({
        let (state, read, answered) = (state.clone(), read.clone(), answered.clone());
        move |req| {
            let (state, read, answered) = (state.clone(), read.clone(), answered.clone());
            let hostname = hostname.clone();
            async move {
                let response = route(&state, req, hostname.as_deref()).await;
                // Everything read so far belonged to this request.
                answered.store(read.load(Ordering::Relaxed), Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        }
    });
    let served = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
    if let Err(e) = served
        && e.is_timeout()
    {
        let (read, answered) = (
            read.load(Ordering::Relaxed),
            answered.load(Ordering::Relaxed),
        );
        // Part of a head arrived, or nothing ever did.
        if read > answered || answered == 0 {
            state.refused("header_timeout");
        } else {
            tracing::debug!("idle admin API connection closed");
        }
    }
}

async fn route(
    state: &AdminState,
    req: Request<Incoming>,
    hostname: Option<&str>,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !guard::host_allowed(host, state.config.node.admin, hostname) {
        state.refused("bad_host");
        return text(
            StatusCode::FORBIDDEN,
            &format!(
                "Host {:?} does not name this node's admin API: use localhost, a loopback address or {} (the admin API refuses other names, against DNS rebinding)\n",
                host.unwrap_or(""),
                state.config.node.admin.ip()
            ),
        );
    }
    if req.method() == Method::POST {
        match req.uri().path() {
            "/routes" => return apply_route(state, req).await,
            "/revocations" => return apply_revocations(state, req).await,
            "/reload" => return reload(state).await,
            _ => {}
        }
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET (and POST /routes, POST /revocations)\n",
        );
    }
    match req.uri().path() {
        "/revocations" => json(&state.revocations.view()),
        "/routes" => json(&state.route_store.routes().await),
        "/routes/rejected" => json(&state.route_store.rejected().await),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.not_ready().await {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/members" => json(&state.members().await),
        "/services" => json(&state.services()),
        "/certificate" => json(&state.certificate()),
        "/stats" => json(&state.golden.view()),
        "/connections" => json(&state.endpoint.connections()),
        "/config" => json(&*state.reloader.config().await),
        "/metrics" => {
            state.members().await; // refresh the member gauges
            let mut r = text(StatusCode::OK, &state.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/" => {
            let mut r = text(StatusCode::OK, DASHBOARD);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Reads a request body of at most `max` bytes within
/// `node.admin_header_timeout`, or answers why not.
async fn read_body(
    state: &AdminState,
    req: Request<Incoming>,
    max: usize,
    what: &str,
) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        error_json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than {max} bytes; {what}"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let limit = state.config.node.admin_header_timeout;
    let read = http_body_util::Limited::new(req.into_body(), max).collect();
    let Ok(read) = tokio::time::timeout(limit, read).await else {
        state.refused("body_timeout");
        return Err(error_json(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {limit:?}"),
        ));
    };
    match read {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error_json(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}

/// `POST /revocations`: a revocation list file as `shoal-pki revoke` writes
/// it. Answers 200 with a [`crate::revocations::ApplyResponse`], or an error
/// status with `{"error": "..."}`.
async fn apply_revocations(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match read_body(
        state,
        req,
        crate::revocations::MAX_APPLY_REQUEST_BYTES,
        "a revocation list file is smaller",
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    match state.revocations.apply(&body).await {
        Ok(applied) => json(&applied),
        Err(e) => error_json(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            &e.to_string(),
        ),
    }
}

/// `POST /routes`: a JSON [`ApplyRequest`] of at most
/// [`MAX_APPLY_REQUEST_BYTES`]. Answers 201 (created) or 200 with an
/// [`crate::routes::ApplyResponse`], or an error status with `{"error": "..."}`.
async fn apply_route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match read_body(
        state,
        req,
        MAX_APPLY_REQUEST_BYTES,
        "a route document is at most 32 KiB",
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = crate::routes::ApplyError::Request(e.to_string());
            return error_json(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    match state.route_store.apply(&request).await {
        Ok(applied) => {
            let mut r = json(&applied);
            if applied.result == crate::routes::ApplyResult::Created {
                *r.status_mut() = StatusCode::CREATED;
            }
            r
        }
        Err(e) => error_json(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            &e.to_string(),
        ),
    }
}

/// An error answer: `{"error": "one line"}`.
/// `POST /reload`: the config file read again and applied; `200` with the
/// report (what was applied, fields refused by name), `400` if the file does
/// not validate (nothing changed), `409` if the node has no file.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    match state.reloader.reload_file().await {
        Ok(report) => json(&report),
        Err(e @ crate::reload::ReloadError::NoFile) => {
            error_json(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, "config reload refused");
            error_json(StatusCode::BAD_REQUEST, &e.to_string())
        }
    }
}

fn error_json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = json(&serde_json::json!({ "error": message }));
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// The admin address actually bound, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// The page at `/`: plain HTML and script, no external assets (it works
/// offline); tested in headless Chromium (`tests/tests/dashboard.rs`).
const DASHBOARD: &str = include_str!("admin/dashboard.html");
