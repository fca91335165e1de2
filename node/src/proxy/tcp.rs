//! TCP listeners: each accepted connection is sent to one endpoint of the
//! listener's service, picked by its load-balancing policy from the current
//! routing table. If reaching the endpoint fails before any payload moved (dial,
//! refusal, timeout, a status other than `ok`), another endpoint is tried, up to
//! `attempts`; endpoints that keep failing are ejected for a backing-off time.
//! An open not accepted within the hedge delay is raced against one on another
//! endpoint ([`hedge`]).
//! An endpoint on this very node is reached directly, without a tunnel.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_proto::lb;
use mesh_proto::retry::{RetryBudget, RetryBudgetConfig};
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::RequestId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::balance::Balancer;
use super::hedge::{self, Heard, note_race};
use super::splice::{self, Progress, Side};
use super::upstream::{self, OpenError, Target, TcpUpstream};
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
    /// Bounds hedges (like the HTTP listener's retries).
    budget: Mutex<RetryBudget>,
}

impl Listener {
    /// A listener for `cfg`.
    pub fn new(cfg: ListenerConfig, ctx: Arc<ProxyContext>) -> Arc<Self> {
        Arc::new(Listener {
            labels: ListenerLabels {
                listener: cfg.name.clone(),
            },
            balancer: Balancer::new(
                &cfg.name,
                cfg.service(),
                cfg.zone_aware.then_some(ctx.zone.as_str()),
                cfg.outlier,
                ctx.metrics.proxy.outlier_ejections.clone(),
            )
            .with_suspects(ctx.suspects.clone()),
            cfg,
            ctx,
            active: Arc::new(AtomicUsize::new(0)),
            budget: Mutex::new(RetryBudget::new(RetryBudgetConfig::default())),
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
            .proxy
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
            .proxy
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
        let (endpoint, upstream) = match self.connect(peer).await {
            Ok(found) => found,
            Err(e) => {
                self.fail(e.label());
                tracing::info!(listener = %self.cfg.name, client = %peer, reason = %e, "connection failed");
                return;
            }
        };
        metrics
            .proxy
            .tunnel_setup_seconds
            .get_or_create(&self.labels)
            .observe(started.elapsed().as_secs_f64());
        let active = metrics
            .proxy
            .listener_active
            .get_or_create(&self.labels)
            .clone();
        active.inc();
        let _in_flight_to_endpoint = self.balancer.in_flight(&endpoint.node);
        // Counted as in-flight work: a draining node waits for it.
        let _in_flight = self.ctx.endpoint.stream_guard();
        let (other, _local_slot) = match upstream {
            TcpUpstream::Local(s, slot) => (Side::tcp(s), Some(slot)),
            TcpUpstream::Tunnel(t) => (Side::quic(t.send, t.recv), None),
        };
        tracing::debug!(listener = %self.cfg.name, client = %peer, node = %endpoint.node, setup = ?started.elapsed(), "connected");
        let totals = splice::splice(
            Side::tcp(client),
            other,
            self.cfg.idle_timeout,
            None,
            self.progress(),
        )
        .await;
        active.dec();
        tracing::debug!(listener = %self.cfg.name, client = %peer, node = %endpoint.node, upstream = totals.a_to_b, downstream = totals.b_to_a, aborted = totals.aborted, took = ?started.elapsed(), "connection ended");
    }

    /// An endpoint of the service and a stream to it: up to `attempts` picks,
    /// each to an endpoint not tried yet, until one opens or refuses the caller.
    /// An open slow to be accepted is hedged on another endpoint (that counts
    /// as one of the attempts, and spends the retry budget).
    async fn connect(&self, peer: SocketAddr) -> Result<(Endpoint, TcpUpstream), OpenError> {
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_request(Instant::now());
        let key = lb::hash_ip(peer.ip());
        let request_id =
            RequestId(((self.balancer.random() as u128) << 64) | self.balancer.random() as u128);
        let target = Target {
            service: self.cfg.service(),
            source_service: self.cfg.source_service.as_deref(),
            request_id,
            deadline: None,
        };
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = OpenError::Unreachable {
            reason: "no_endpoint",
            text: format!("no endpoint of {} is available", self.cfg.service()),
        };
        while let Some(endpoint) = self.next(&mut tried, key) {
            // Held across the attempt: an `Arc`, not a short-lived arc-swap guard.
            let table = self.ctx.table.load_full();
            let endpoints = table.endpoints(self.cfg.service());
            let heard = [Heard::default(), Heard::default()];
            let first = std::pin::pin!(self.open(endpoint.clone(), target, &heard[0]));
            let hedge = async {
                if !hedge::due(&self.ctx, self.hedge_delay(), &heard[0]).await {
                    return None;
                }
                let second = self.hedge(&mut tried, key)?;
                hedge::started(&self.ctx, &self.labels);
                Some(Box::pin(self.open(second, target, &heard[1])))
            };
            let raced = hedge::race(first, hedge).await;
            let labels = (&self.labels, self.cfg.service());
            note_race(&self.ctx, labels, &raced, &heard, &endpoint);
            if let Some((e, failed)) = &raced.other_failed
                && failed.try_another()
            {
                self.settle(endpoints, e, failed);
            }
            match raced.result {
                Ok((e, u)) => {
                    self.balancer.record(endpoints, &e.node, true);
                    return Ok((e, u));
                }
                Err((e, failed)) => {
                    if !failed.try_another() {
                        return Err(failed);
                    }
                    self.settle(endpoints, &e, &failed);
                    last_error = failed;
                }
            }
        }
        Err(last_error)
    }

    /// The next endpoint to try, counted as an attempt (a retry after the
    /// first); none once `attempts` were made or every endpoint was tried.
    fn next(&self, tried: &mut Vec<String>, key: u64) -> Option<Endpoint> {
        let endpoint = self.pick(tried, key)?;
        if !tried.is_empty() {
            let proxy = &self.ctx.metrics.proxy;
            proxy.upstream_retries.get_or_create(&self.labels).inc();
        }
        Some(self.attempting(endpoint, tried))
    }

    /// An endpoint not tried yet, if an attempt is left.
    fn pick(&self, tried: &[String], key: u64) -> Option<Endpoint> {
        if tried.len() as u32 >= self.cfg.attempts {
            return None;
        }
        let table = self.ctx.table.load();
        self.balancer
            .pick(table.endpoints(self.cfg.service()), self.cfg.lb, tried, key)
    }

    /// Counts an attempt on `endpoint` and adds it to `tried`.
    fn attempting(&self, endpoint: Endpoint, tried: &mut Vec<String>) -> Endpoint {
        let proxy = &self.ctx.metrics.proxy;
        proxy.upstream_attempts.get_or_create(&self.labels).inc();
        tried.push(endpoint.node.clone());
        endpoint
    }

    /// The endpoint of a hedge (an attempt, not a retry: hedges have their own
    /// counter), if hedging is on, an attempt and another endpoint are left,
    /// and the retry budget has room (spent if so).
    fn hedge(&self, tried: &mut Vec<String>, key: u64) -> Option<Endpoint> {
        if !self.cfg.hedge {
            return None;
        }
        let second = self.pick(tried, key)?;
        let spent = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_retry(Instant::now());
        spent.then(|| self.attempting(second, tried))
    }

    /// Opens a stream to `endpoint`, keeping the endpoint with the outcome.
    async fn open(
        &self,
        endpoint: Endpoint,
        target: Target<'_>,
        heard: &Heard,
    ) -> Result<(Endpoint, TcpUpstream), (Endpoint, OpenError)> {
        match upstream::open_tcp(
            &self.ctx,
            &endpoint,
            target,
            (self.cfg.connect_timeout, heard),
        )
        .await
        {
            Ok(u) => Ok((endpoint, u)),
            Err(e) => Err((endpoint, e)),
        }
    }

    /// How long the first open has before a hedge.
    fn hedge_delay(&self) -> Duration {
        hedge::delay(
            self.ctx.setup_times.p99(),
            self.cfg.hedge_min_delay,
            self.cfg.connect_timeout,
        )
    }

    /// Records a failed open for outlier detection and logs it.
    fn settle(&self, endpoints: &[Endpoint], endpoint: &Endpoint, e: &OpenError) {
        tracing::debug!(listener = %self.cfg.name, node = %endpoint.node, why = %e, "attempt failed; trying another endpoint");
        self.balancer.record(endpoints, &endpoint.node, false);
    }

    /// Byte counters of this listener's two directions.
    fn progress(&self) -> Arc<Progress> {
        let bytes = |direction| {
            self.ctx
                .metrics
                .proxy
                .listener_bytes
                .get_or_create(&ListenerDirectionLabels {
                    listener: self.cfg.name.clone(),
                    direction,
                })
                .clone()
        };
        Arc::new(Progress::counting(bytes("upstream"), bytes("downstream")))
    }
}
