//! Choosing an endpoint of one service for one caller (a listener): the caller's
//! policy (`mesh_proto::lb`) over the endpoints it is given, its passive outlier
//! detection (`mesh_proto::outlier`), the peers the whole node suspects
//! ([`Suspects`]) and its own count of streams in flight per endpoint, held by
//! [`InFlight`] guards. Shared by TCP and HTTP listeners; one balancer per
//! (listener, service).
//!
//! The balancer takes the endpoints as an argument (the caller reads them from
//! the routing table) and reads time from `tokio::time::Instant`, so its rules
//! run in unit tests on a paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_proto::gossip::Health;
use mesh_proto::lb::{self, PickContext, Policy, Ring};
use mesh_proto::outlier::{OutlierConfig as Detector, OutlierSet};
use mesh_proto::routing::Endpoint;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::suspects::Suspects;
use crate::config::OutlierConfig;
use crate::metrics::EndpointLabels;

/// Outlier state kept for endpoints no longer in the table, before it is pruned.
const PRUNE_SLACK: usize = 64;

/// Streams in flight per endpoint node.
/// Streams in flight per node; a key is shared with the guards counting under
/// it, so counting allocates only for a node with none in flight yet.
type Counts = Arc<Mutex<HashMap<Arc<str>, u32>>>;

/// Endpoint choice for one service, as seen by one listener.
#[derive(Debug)]
pub struct Balancer {
    listener: String,
    service: String,
    local_zone: Option<String>,
    counter: AtomicU64,
    rng: AtomicU64,
    outliers: Mutex<OutlierSet<String>>,
    ring: Mutex<Option<Arc<Ring>>>,
    inflight: Counts,
    ejections: Family<EndpointLabels, Counter>,
    suspects: Option<Arc<Suspects>>,
}

/// A fresh random seed (nanoseconds of the clock; good enough to spread picks).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1
}

/// Now, on tokio's clock (paused and advanced in tests).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Balancer {
    /// A balancer for `service` on behalf of `listener`; with `local_zone` it
    /// prefers endpoints in that zone. Ejections are counted in `ejections`.
    pub fn new(
        listener: &str,
        service: &str,
        local_zone: Option<&str>,
        outlier: OutlierConfig,
        ejections: Family<EndpointLabels, Counter>,
    ) -> Self {
        Balancer {
            listener: listener.to_string(),
            service: service.to_string(),
            local_zone: local_zone.map(str::to_string),
            counter: AtomicU64::new(0),
            rng: AtomicU64::new(seed()),
            outliers: Mutex::new(OutlierSet::new(Detector {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection: outlier.base_ejection,
                max_ejection: outlier.max_ejection,
            })),
            ring: Mutex::new(None),
            inflight: Arc::default(),
            ejections,
            suspects: None,
        }
    }

    /// The same, also avoiding the peers in `suspects` (the node's).
    pub fn with_suspects(mut self, suspects: Arc<Suspects>) -> Self {
        self.suspects = Some(suspects);
        self
    }

    fn suspect(&self, node: &str) -> bool {
        self.suspects.as_ref().is_some_and(|s| s.is_suspect(node))
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

    /// Picks one of `endpoints` (the service's, from the routing table) not in
    /// `tried`, not ejected and not suspect, by `policy`; `key` is the hash for
    /// ring hashing. If every untried endpoint is ejected or suspect, tries them
    /// anyway (an ejection is a guess; a refusal is certain).
    pub fn pick(
        &self,
        endpoints: &[Endpoint],
        policy: Policy,
        tried: &[String],
        key: u64,
    ) -> Option<Endpoint> {
        if endpoints.is_empty() {
            return None;
        }
        let now = now();
        let outliers = lock(&self.outliers);
        let inflight = lock(&self.inflight);
        let ring = (policy == Policy::RingHash).then(|| self.ring_for(endpoints));
        let available = |e: &Endpoint| {
            !tried.contains(&e.node) && !outliers.is_ejected(&e.node, now) && !self.suspect(&e.node)
        };
        let load = |e: &Endpoint| inflight.get(e.node.as_str()).copied().unwrap_or(0);
        let mut pick = PickContext {
            local_zone: self.local_zone.as_deref(),
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

    /// The hash ring of `endpoints`: the cached one while the endpoints are the
    /// same, else a new one (cached in its place).
    fn ring_for(&self, endpoints: &[Endpoint]) -> Arc<Ring> {
        let mut cached = lock(&self.ring);
        match cached.as_ref() {
            Some(r) if r.matches(endpoints) => r.clone(),
            _ => {
                let r = Arc::new(Ring::build(endpoints));
                *cached = Some(r.clone());
                r
            }
        }
    }

    /// Whether `node` is usable now: among `endpoints`, not unhealthy, not
    /// ejected, not suspect.
    pub fn usable(&self, endpoints: &[Endpoint], node: &str) -> Option<Endpoint> {
        let e = endpoints.iter().find(|e| e.node == node)?;
        let ejected = lock(&self.outliers).is_ejected(node, now()) || self.suspect(node);
        (e.health != Health::Unhealthy && !ejected).then(|| e.clone())
    }

    /// Records an attempt's outcome on `node` for outlier detection; `endpoints`
    /// are the service's current ones (state of nodes that left is forgotten).
    pub fn record(&self, endpoints: &[Endpoint], node: &str, ok: bool) {
        let mut outliers = lock(&self.outliers);
        // Forget endpoints that left the service, so the set does not grow with
        // every node name ever seen.
        if outliers.len() > endpoints.len() + PRUNE_SLACK {
            outliers.retain(|n| endpoints.iter().any(|e| &e.node == n));
        }
        if outliers.record(node, ok, now()).is_some() {
            tracing::info!(listener = %self.listener, service = %self.service, %node, "ejected a failing endpoint");
            self.ejections
                .get_or_create(&EndpointLabels {
                    listener: self.listener.clone(),
                    node: node.to_string(),
                })
                .inc();
        }
    }

    /// Counts a stream to `node` as in flight until the guard is dropped
    /// (least-request balancing reads the count).
    pub fn in_flight(&self, node: &str) -> InFlight {
        let mut counts = lock(&self.inflight);
        let node = match counts.get_key_value(node) {
            Some((key, _)) => key.clone(),
            None => Arc::from(node),
        };
        *counts.entry(node.clone()).or_insert(0) += 1;
        InFlight {
            counts: self.inflight.clone(),
            node,
        }
    }

    /// Streams to `node` in flight now.
    pub fn in_flight_to(&self, node: &str) -> u32 {
        lock(&self.inflight).get(node).copied().unwrap_or(0)
    }
}

/// One stream to an endpoint in flight, as its balancer counts it; dropping it
/// ends the count, whichever way the stream ends.
#[derive(Debug)]
pub struct InFlight {
    counts: Counts,
    node: Arc<str>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&*self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&*self.node);
            }
        }
    }
}

#[cfg(test)]
mod tests;
