//! Choosing an endpoint of one service for one caller (a listener): the routing
//! table's endpoints, the caller's policy (`mesh_proto::lb`), its passive outlier
//! detection (`mesh_proto::outlier`) and its own count of streams in flight per
//! endpoint. Shared by TCP and HTTP listeners; one balancer per (listener,
//! service).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh_proto::lb::{self, PickContext, Policy, Ring};
use mesh_proto::outlier::{OutlierConfig as Detector, OutlierSet};
use mesh_proto::routing::Endpoint;

use super::ProxyContext;
use crate::config::OutlierConfig;
use crate::metrics::EndpointLabels;

/// Outlier state kept for endpoints no longer in the table, before it is pruned.
const PRUNE_SLACK: usize = 64;

/// Endpoint choice for one service, as seen by one listener.
#[derive(Debug)]
pub struct Balancer {
    listener: String,
    service: String,
    zone_aware: bool,
    counter: AtomicU64,
    rng: AtomicU64,
    outliers: Mutex<OutlierSet<String>>,
    ring: Mutex<Option<Arc<Ring>>>,
    inflight: Mutex<HashMap<String, u32>>,
}

/// A fresh random seed (nanoseconds of the clock; good enough to spread picks).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1
}

impl Balancer {
    /// A balancer for `service` on behalf of `listener`.
    pub fn new(listener: &str, service: &str, zone_aware: bool, outlier: OutlierConfig) -> Self {
        Balancer {
            listener: listener.to_string(),
            service: service.to_string(),
            zone_aware,
            counter: AtomicU64::new(0),
            rng: AtomicU64::new(seed()),
            outliers: Mutex::new(OutlierSet::new(Detector {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection: outlier.base_ejection,
                max_ejection: outlier.max_ejection,
            })),
            ring: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A random number (xorshift64*).
    pub fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Picks an endpoint not in `tried` and not ejected, by `policy`; `key` is the
    /// hash for ring hashing. If every untried endpoint is ejected, tries them
    /// anyway (an ejection is a guess; a refusal is certain).
    pub fn pick(
        &self,
        ctx: &ProxyContext,
        policy: Policy,
        tried: &[String],
        key: u64,
    ) -> Option<Endpoint> {
        let table = ctx.table.load();
        let endpoints = table.endpoints(&self.service);
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let outliers = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let ring = if policy == Policy::RingHash {
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
        let mut pick = PickContext {
            local_zone: if self.zone_aware {
                Some(ctx.zone.as_str())
            } else {
                None
            },
            min_zone_healthy: 1,
            counter: self.counter.fetch_add(1, Ordering::Relaxed),
            random: [self.random(), self.random()],
            key,
            available: &available,
            inflight: &load,
            ring: ring.as_deref(),
        };
        if let Some(e) = lb::pick(policy, endpoints, &pick) {
            return Some(e.clone());
        }
        let untried = |e: &Endpoint| !tried.contains(&e.node);
        pick.available = &untried;
        lb::pick(policy, endpoints, &pick).cloned()
    }

    /// Whether `node` is usable now: in the table, not unhealthy, not ejected.
    pub fn usable(&self, ctx: &ProxyContext, node: &str) -> Option<Endpoint> {
        let table = ctx.table.load();
        let e = table
            .endpoints(&self.service)
            .iter()
            .find(|e| e.node == node)?;
        let ejected = self
            .outliers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_ejected(node, Instant::now());
        (e.health != mesh_proto::gossip::Health::Unhealthy && !ejected).then(|| e.clone())
    }

    /// Records an attempt's outcome for outlier detection.
    pub fn record(&self, ctx: &ProxyContext, node: &str, ok: bool) {
        let mut outliers = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        // Forget endpoints that left the service, so the set does not grow with
        // every node name ever seen.
        let table = ctx.table.load();
        let endpoints = table.endpoints(&self.service);
        if outliers.len() > endpoints.len() + PRUNE_SLACK {
            outliers.retain(|n| endpoints.iter().any(|e| &e.node == n));
        }
        if outliers.record(node, ok, Instant::now()).is_some() {
            tracing::info!(listener = %self.listener, service = %self.service, %node, "ejected a failing endpoint");
            ctx.metrics
                .outlier_ejections
                .get_or_create(&EndpointLabels {
                    listener: self.listener.clone(),
                    node: node.to_string(),
                })
                .inc();
        }
    }

    /// Counts a stream to `node` in flight (`delta` +1 or -1).
    pub fn inflight_add(&self, node: &str, delta: i32) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(node.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            map.remove(node);
        }
    }
}
