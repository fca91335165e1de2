//! TCP listeners: each accepted connection is sent to one endpoint of the
//! listener's service, picked by its load-balancing policy from the current
//! routing table. If reaching the endpoint fails before any payload moved (dial,
//! refusal, timeout, a status other than `ok`), another endpoint is tried, up to
//! `attempts`; endpoints that keep failing are ejected for a backing-off time.
//! An endpoint on this very node is reached directly, without a tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_proto::codec::{FRAME_HEADER_LEN, decode_exact, encode, frame_len};
use mesh_proto::lb::{self, PickContext, Policy, Ring};
use mesh_proto::outlier::{OutlierConfig as Detector, OutlierSet};
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use quinn::{RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::splice::{self, Progress, Side};
use super::{CountGuard, ProxyContext};
use crate::config::ListenerConfig;
use crate::endpoint::Use;
use crate::metrics::{
    EndpointLabels, ListenerDirectionLabels, ListenerLabels, ListenerReasonLabels,
};

/// One listener's state.
#[derive(Debug)]
pub struct Listener {
    cfg: ListenerConfig,
    ctx: Arc<ProxyContext>,
    labels: ListenerLabels,
    active: Arc<AtomicUsize>,
    counter: AtomicU64,
    rng: AtomicU64,
    outliers: Mutex<OutlierSet<String>>,
    ring: Mutex<Option<Arc<Ring>>>,
    inflight: Mutex<HashMap<String, u32>>,
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// The endpoint could not be reached or refused; try another.
    Retryable(&'static str, String),
    /// Trying elsewhere would not help (the caller is not authorized).
    Final(&'static str, String),
}

enum Upstream {
    /// The backend on this node, and its connection slot.
    Local(TcpStream, CountGuard),
    Tunnel(SendStream, RecvStream),
}

impl Listener {
    /// A listener for `cfg`.
    pub fn new(cfg: ListenerConfig, ctx: Arc<ProxyContext>) -> Arc<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        let detector = Detector {
            consecutive_failures: cfg.outlier.consecutive_failures,
            base_ejection: cfg.outlier.base_ejection,
            max_ejection: cfg.outlier.max_ejection,
        };
        Arc::new(Listener {
            labels: ListenerLabels {
                listener: cfg.name.clone(),
            },
            cfg,
            ctx,
            active: Arc::new(AtomicUsize::new(0)),
            counter: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
            outliers: Mutex::new(OutlierSet::new(detector)),
            ring: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Accepts connections until `stop` fires.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (client, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = %self.cfg.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let me = self.clone();
            tokio::spawn(async move { me.handle(client, peer).await });
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: cheap, good enough to pick endpoints.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fail(&self, reason: &'static str) {
        self.ctx
            .metrics
            .listener_failures
            .get_or_create(&ListenerReasonLabels {
                listener: self.cfg.name.clone(),
                reason,
            })
            .inc();
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let metrics = &self.ctx.metrics;
        metrics
            .listener_connections
            .get_or_create(&self.labels)
            .inc();
        let Some(_slot) = CountGuard::try_acquire(&self.active, self.cfg.max_connections as usize)
        else {
            self.fail("max_connections");
            return;
        };
        let _ = client.set_nodelay(true);
        let started = Instant::now();
        let key = lb::hash_ip(peer.ip());
        let request_id =
            RequestId(((self.next_random() as u128) << 64) | self.next_random() as u128);
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = (
            "no_endpoint",
            format!("no endpoint of {} is available", self.cfg.service),
        );
        let mut upstream = None;
        for attempt in 0..self.cfg.attempts {
            let Some(endpoint) = self.pick(&tried, key) else {
                break;
            };
            metrics.upstream_attempts.get_or_create(&self.labels).inc();
            if attempt > 0 {
                metrics.upstream_retries.get_or_create(&self.labels).inc();
            }
            tried.push(endpoint.node.clone());
            match self.attempt(&endpoint, request_id).await {
                Ok(u) => {
                    self.record(&endpoint.node, true);
                    upstream = Some((endpoint, u));
                    break;
                }
                Err(AttemptError::Retryable(label, why)) => {
                    tracing::debug!(listener = %self.cfg.name, node = %endpoint.node, %why, "attempt failed; trying another endpoint");
                    self.record(&endpoint.node, false);
                    last_error = (label, why);
                }
                Err(AttemptError::Final(label, why)) => {
                    last_error = (label, why);
                    break;
                }
            }
        }
        let Some((endpoint, upstream)) = upstream else {
            self.fail(last_error.0);
            tracing::info!(listener = %self.cfg.name, client = %peer, reason = %last_error.1, "connection failed");
            return;
        };
        metrics
            .tunnel_setup_seconds
            .get_or_create(&self.labels)
            .observe(started.elapsed().as_secs_f64());
        let active = metrics.listener_active.get_or_create(&self.labels).clone();
        active.inc();
        self.inflight_add(&endpoint.node, 1);
        // Counted as in-flight work: a draining node waits for it.
        let _in_flight = self.ctx.endpoint.stream_guard();
        let mut _local_slot = None;
        let other = match upstream {
            Upstream::Local(s, slot) => {
                _local_slot = Some(slot);
                Side::tcp(s)
            }
            Upstream::Tunnel(send, recv) => Side::quic(send, recv),
        };
        let progress = Arc::new(Progress::default());
        let totals =
            splice::splice(Side::tcp(client), other, self.cfg.idle_timeout, progress).await;
        self.inflight_add(&endpoint.node, -1);
        active.dec();
        for (direction, bytes) in [("upstream", totals.a_to_b), ("downstream", totals.b_to_a)] {
            metrics
                .listener_bytes
                .get_or_create(&ListenerDirectionLabels {
                    listener: self.cfg.name.clone(),
                    direction,
                })
                .inc_by(bytes);
        }
    }

    fn inflight_add(&self, node: &str, delta: i32) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(node.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            map.remove(node);
        }
    }

    fn record(&self, node: &str, ok: bool) {
        let mut outliers = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        if outliers.record(node, ok, Instant::now()).is_some() {
            tracing::info!(listener = %self.cfg.name, %node, "ejected a failing endpoint");
            self.ctx
                .metrics
                .outlier_ejections
                .get_or_create(&EndpointLabels {
                    listener: self.cfg.name.clone(),
                    node: node.to_string(),
                })
                .inc();
        }
    }

    /// Picks an endpoint not tried yet and not ejected.
    fn pick(&self, tried: &[String], key: u64) -> Option<Endpoint> {
        let table = self.ctx.table.load();
        let endpoints = table.endpoints(&self.cfg.service);
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let outliers = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let ring = if self.cfg.lb == Policy::RingHash {
            let mut cached = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            match cached.as_ref() {
                Some(r) if r.matches(endpoints) => Some(r.clone()),
                _ => {
                    let r = Arc::new(Ring::build(endpoints));
                    *cached = Some(r.clone());
                    Some(r)
                }
            }
        } else {
            None
        };
        let available =
            |e: &Endpoint| !tried.contains(&e.node) && !outliers.is_ejected(&e.node, now);
        let load = |e: &Endpoint| inflight.get(&e.node).copied().unwrap_or(0);
        let mut ctx = PickContext {
            local_zone: if self.cfg.zone_aware {
                Some(self.ctx.zone.as_str())
            } else {
                None
            },
            min_zone_healthy: 1,
            counter: self.counter.fetch_add(1, Ordering::Relaxed),
            random: [self.next_random(), self.next_random()],
            key,
            available: &available,
            inflight: &load,
            ring: ring.as_deref(),
        };
        if let Some(e) = lb::pick(self.cfg.lb, endpoints, &ctx) {
            return Some(e.clone());
        }
        // Every untried endpoint is ejected: rather than refuse the client, try them
        // anyway (an ejection is a guess; a refusal is certain).
        let untried = |e: &Endpoint| !tried.contains(&e.node);
        ctx.available = &untried;
        lb::pick(self.cfg.lb, endpoints, &ctx).cloned()
    }

    async fn attempt(
        &self,
        endpoint: &Endpoint,
        request_id: RequestId,
    ) -> Result<Upstream, AttemptError> {
        let timeout = self.cfg.connect_timeout;
        if endpoint.node == self.ctx.node_name {
            let Some(local) = self.ctx.services.get(&self.cfg.service) else {
                return Err(AttemptError::Retryable(
                    "unknown_service",
                    "this node does not host the service".into(),
                ));
            };
            // The same checks the inbound side makes, for a caller on this node.
            if !local
                .config
                .allows(&self.ctx.node_name, self.cfg.source_service.as_deref())
            {
                return Err(AttemptError::Final(
                    "unauthorized",
                    format!("this node is not on the allow-list of {}", self.cfg.service),
                ));
            }
            let max = local.config.max_connections as usize;
            let Some(slot) = CountGuard::try_acquire(&local.active, max) else {
                return Err(AttemptError::Retryable(
                    "overloaded",
                    format!("{} is at its limit of {max} connections", self.cfg.service),
                ));
            };
            let timeout = timeout.min(local.config.connect_timeout);
            return match tokio::time::timeout(timeout, TcpStream::connect(local.config.address))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Upstream::Local(s, slot))
                }
                Ok(Err(e)) => Err(AttemptError::Retryable(
                    "backend_refused",
                    format!("local backend {}: {e}", local.config.address),
                )),
                Err(_) => Err(AttemptError::Retryable(
                    "timeout",
                    format!(
                        "local backend {} did not accept in time",
                        local.config.address
                    ),
                )),
            };
        }
        let header = StreamHeader {
            target_service: self.cfg.service.clone(),
            source_service: self.cfg.source_service.clone(),
            protocol: Protocol::Tcp,
            request_id,
            deadline_ms: Some(timeout.as_millis().min(u32::MAX as u128) as u32),
        };
        let work = async {
            let conn = self
                .ctx
                .endpoint
                .connect(endpoint.addr, Use::Tunnel, Some(&endpoint.node))
                .await
                .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
            let frame =
                encode(&header).map_err(|e| AttemptError::Final("bad_header", e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
            let status = read_status(&mut recv).await?;
            if status.code.is_ok() {
                Ok(Upstream::Tunnel(send, recv))
            } else {
                let label = status_label(status.code);
                let why = format!(
                    "{} answered {}: {}",
                    endpoint.node, status.code, status.reason
                );
                if status.code.is_retryable_elsewhere() {
                    Err(AttemptError::Retryable(label, why))
                } else {
                    Err(AttemptError::Final(label, why))
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::Retryable(
                "timeout",
                format!("{} did not answer within {timeout:?}", endpoint.node),
            )),
        }
    }
}

fn status_label(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Ok => "ok",
        StatusCode::UnknownService => "unknown_service",
        StatusCode::Unauthorized => "unauthorized",
        StatusCode::BackendRefused => "backend_refused",
        StatusCode::Overloaded => "overloaded",
        StatusCode::Draining => "draining",
    }
}

async fn read_status(recv: &mut RecvStream) -> Result<StreamStatus, AttemptError> {
    let broken = |e: &dyn std::fmt::Display| {
        AttemptError::Retryable("connect_failed", format!("reading the status: {e}"))
    };
    let mut buf = vec![0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut buf).await.map_err(|e| broken(&e))?;
    let total = frame_len::<StreamStatus>(&buf).map_err(|e| broken(&e))?;
    buf.resize(total, 0);
    recv.read_exact(&mut buf[FRAME_HEADER_LEN..])
        .await
        .map_err(|e| broken(&e))?;
    decode_exact::<StreamStatus>(&buf).map_err(|e| broken(&e))
}
