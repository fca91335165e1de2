//! TCP listeners: each accepted connection is sent to one endpoint of the
//! listener's service, picked by its load-balancing policy from the current
//! routing table. If reaching the endpoint fails before any payload moved (dial,
//! refusal, timeout, a status other than `ok`), another endpoint is tried, up to
//! `attempts`; endpoints that keep failing are ejected for a backing-off time.
//! An endpoint on this very node is reached directly, without a tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use mesh_proto::lb;
use mesh_proto::tunnel::{Protocol, RequestId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::balance::Balancer;
use super::splice::{self, Progress, Side};
use super::upstream::{self, AttemptError, Target, Upstream};
use super::{CountGuard, ProxyContext};
use crate::config::ListenerConfig;
use crate::metrics::{ListenerDirectionLabels, ListenerLabels, ListenerReasonLabels};

/// One listener's state.
#[derive(Debug)]
pub struct Listener {
    cfg: ListenerConfig,
    ctx: Arc<ProxyContext>,
    labels: ListenerLabels,
    active: Arc<AtomicUsize>,
    balancer: Balancer,
}

impl Listener {
    /// A listener for `cfg`.
    pub fn new(cfg: ListenerConfig, ctx: Arc<ProxyContext>) -> Arc<Self> {
        Arc::new(Listener {
            labels: ListenerLabels {
                listener: cfg.name.clone(),
            },
            balancer: Balancer::new(&cfg.name, cfg.service(), cfg.zone_aware, cfg.outlier),
            cfg,
            ctx,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Accepts connections until `stop` fires.
    pub async fn run(self: Arc<Self>, listener: Arc<TcpListener>, mut stop: watch::Receiver<bool>) {
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
            RequestId(((self.balancer.random() as u128) << 64) | self.balancer.random() as u128);
        let target = Target {
            service: self.cfg.service(),
            source_service: self.cfg.source_service.as_deref(),
            protocol: Protocol::Tcp,
            request_id,
            deadline: None,
        };
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = AttemptError::Retryable(
            "no_endpoint",
            format!("no endpoint of {} is available", self.cfg.service()),
        );
        let mut upstream = None;
        for attempt in 0..self.cfg.attempts {
            let Some(endpoint) = self.balancer.pick(&self.ctx, self.cfg.lb, &tried, key) else {
                break;
            };
            metrics.upstream_attempts.get_or_create(&self.labels).inc();
            if attempt > 0 {
                metrics.upstream_retries.get_or_create(&self.labels).inc();
            }
            tried.push(endpoint.node.clone());
            match upstream::open(&self.ctx, &endpoint, target, self.cfg.connect_timeout).await {
                Ok(u) => {
                    self.balancer.record(&self.ctx, &endpoint.node, true);
                    upstream = Some((endpoint, u));
                    break;
                }
                Err(e @ AttemptError::Retryable(..)) => {
                    tracing::debug!(listener = %self.cfg.name, node = %endpoint.node, why = %e.text(), "attempt failed; trying another endpoint");
                    self.balancer.record(&self.ctx, &endpoint.node, false);
                    last_error = e;
                }
                Err(e @ AttemptError::Final(..)) => {
                    last_error = e;
                    break;
                }
            }
        }
        let Some((endpoint, upstream)) = upstream else {
            self.fail(last_error.label());
            tracing::info!(listener = %self.cfg.name, client = %peer, reason = %last_error.text(), "connection failed");
            return;
        };
        metrics
            .tunnel_setup_seconds
            .get_or_create(&self.labels)
            .observe(started.elapsed().as_secs_f64());
        let active = metrics.listener_active.get_or_create(&self.labels).clone();
        active.inc();
        self.balancer.inflight_add(&endpoint.node, 1);
        // Counted as in-flight work: a draining node waits for it.
        let _in_flight = self.ctx.endpoint.stream_guard();
        let mut _local_slot = None;
        let other = match upstream {
            Upstream::Local(s, slot) => {
                _local_slot = Some(slot);
                Side::tcp(s)
            }
            Upstream::Tunnel(send, recv) => Side::quic(send, recv),
            // Only asked for with `Protocol::Http`, which TCP listeners never use.
            Upstream::LocalHttp(..) => {
                tracing::error!(listener = %self.cfg.name, "a TCP listener was given an HTTP upstream; connection dropped");
                self.balancer.inflight_add(&endpoint.node, -1);
                active.dec();
                return;
            }
        };
        let bytes = |direction| {
            metrics
                .listener_bytes
                .get_or_create(&ListenerDirectionLabels {
                    listener: self.cfg.name.clone(),
                    direction,
                })
                .clone()
        };
        let progress = Arc::new(Progress::counting(bytes("upstream"), bytes("downstream")));
        splice::splice(
            Side::tcp(client),
            other,
            self.cfg.idle_timeout,
            None,
            progress,
        )
        .await;
        self.balancer.inflight_add(&endpoint.node, -1);
        active.dec();
    }
}
