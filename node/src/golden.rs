//! The golden metrics an operator opens during an incident — per edge (this
//! node's listener → a service) and per service: requests per second, success
//! rate, p50/p95/p99 latency, open connections, retries and ejections; per
//! served service: streams, refusals; per node: refusals by reason and gossip
//! connections — as figures over the last [`WINDOW`] and as short series.
//!
//! [`sample`] reads the node's own Prometheus text into cumulative counts;
//! [`History`] keeps the last [`KEPT`] samples (taken every [`EVERY`] by the
//! node's `golden` task) and derives the [`GoldenView`] served at admin
//! `/stats`, drawn by the dashboard at `/` and printed by `shoal status`.
//! Both are pure: time comes in with each sample.

pub mod sample;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sample::{Counts, EdgeKey, ListenerInfo, Sample};

/// How often the node samples its metrics.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes' worth.
pub const KEPT: usize = 151;
/// The window of the headline figures.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The golden figures of one edge, or of one service over all edges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeView {
    /// The calling node, with the source service its listener claims
    /// (`node/service`) if any.
    pub caller: String,
    /// The listener (empty in a per-service roll-up).
    pub listener: String,
    /// The service called.
    pub service: String,
    /// `tcp` (figures per connection, latency = tunnel setup) or `http`
    /// (per request, latency = whole request); `mixed` in a roll-up of both.
    pub protocol: String,
    /// Requests (connections) per second over the window.
    pub requests_per_s: f64,
    /// The share not failed over the window; `null` without requests.
    pub success_rate: Option<f64>,
    /// Latency quantiles over the window, in ms; `null` without requests.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Client connections open now on the listener(s).
    pub active: f64,
    /// Retries per second over the window.
    pub retries_per_s: f64,
    /// Ejections over the window, on the listener(s).
    pub ejections: f64,
    /// The last five minutes, one point per sample interval.
    pub series: Series,
}

/// Per-interval points, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// Seconds before the newest sample (0 for the newest, negative before).
    pub t_s: Vec<f64>,
    /// Requests per second.
    pub requests_per_s: Vec<f64>,
    /// Success rate (`null` in an interval without requests).
    pub success_rate: Vec<Option<f64>>,
    /// p99 in ms (`null` in an interval without requests).
    pub p99_ms: Vec<Option<f64>>,
}

/// What a local service served over the window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServedView {
    /// The local service.
    pub service: String,
    /// Tunnelled streams served per second.
    pub streams_per_s: f64,
    /// Streams refused per second.
    pub refused_per_s: f64,
    /// Streams open now.
    pub active: f64,
}

/// Refusals of one kind over the window and in all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefusedView {
    /// What was refused (`inbound_streams`, `quic_connections`,
    /// `gossip_items`, ...: [`sample::REFUSAL_FAMILIES`]).
    pub what: String,
    /// Why.
    pub reason: String,
    /// Per second over the window.
    pub per_s: f64,
    /// Since the node started.
    pub total: f64,
}

/// Everything `/stats` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GoldenView {
    /// The window the figures are taken over, in seconds (shorter while the
    /// node has been up for less; 0 before it has two samples).
    pub window_s: f64,
    /// Per service this node calls, over all its listeners.
    pub services: Vec<EdgeView>,
    /// Per edge (listener → service).
    pub edges: Vec<EdgeView>,
    /// Per local service, the serving side.
    pub served: Vec<ServedView>,
    /// Refusals by kind and reason (those with any).
    pub refused: Vec<RefusedView>,
    /// Open gossip connections.
    pub gossip_connections: f64,
}

/// The samples of the last five minutes.
#[derive(Debug)]
pub struct History {
    caller: String,
    listeners: Mutex<BTreeMap<String, ListenerInfo>>,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// An empty history of node `node`, whose listeners are `listeners`.
    pub fn new(node: &str, listeners: BTreeMap<String, ListenerInfo>) -> History {
        History {
            caller: node.to_string(),
            listeners: Mutex::new(listeners),
            samples: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// The listeners changed (a config reload).
    pub fn set_listeners(&self, listeners: BTreeMap<String, ListenerInfo>) {
        *self.listeners.lock().unwrap_or_else(|e| e.into_inner()) = listeners;
    }

    fn listeners(&self) -> BTreeMap<String, ListenerInfo> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the exposition `text` taken at `at` into a sample and keeps it.
    pub fn record(&self, text: &str, at: Duration) {
        self.push(Sample::read(text, at, &self.listeners()));
    }

    /// Keeps `sample`, forgetting the oldest beyond [`KEPT`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The figures over [`WINDOW`] and the series of the samples kept.
    pub fn view(&self) -> GoldenView {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(last), Some(_)) = (samples.back(), samples.front()) else {
            return GoldenView::default();
        };
        let first = samples
            .iter()
            .find(|s| last.at.saturating_sub(s.at) <= WINDOW)
            .unwrap_or(last);
        let span = last.at.saturating_sub(first.at).as_secs_f64();
        let samples: Vec<&Sample> = samples.iter().collect();
        let edges: Vec<EdgeView> = last
            .edges
            .keys()
            .map(|k| self.edge_view(&samples, (first, last), std::slice::from_ref(k)))
            .collect();
        let services: BTreeMap<&str, Vec<EdgeKey>> =
            last.edges.keys().fold(BTreeMap::new(), |mut m, k| {
                m.entry(k.service.as_str()).or_default().push(k.clone());
                m
            });
        GoldenView {
            window_s: span,
            services: services
                .values()
                .map(|keys| self.edge_view(&samples, (first, last), keys))
                .collect(),
            edges,
            served: served(first, last, span),
            refused: refused(first, last, span),
            gossip_connections: last.gossip_connections,
        }
    }

    /// The figures of `keys` (one edge, or every edge to one service) summed.
    fn edge_view(
        &self,
        all: &[&Sample],
        (first, last): (&Sample, &Sample),
        keys: &[EdgeKey],
    ) -> EdgeView {
        let sum = |s: &Sample| sum_counts(s, keys);
        let (a, b) = (sum(first), sum(last));
        let span = last.at.saturating_sub(first.at).as_secs_f64();
        let d = delta(&a, &b);
        let listeners: BTreeSet<&str> = keys.iter().map(|k| k.listener.as_str()).collect();
        let known = self.listeners();
        let protocols: BTreeSet<&str> = listeners
            .iter()
            .filter_map(|l| known.get(*l).map(|i| i.protocol))
            .collect();
        let sources: BTreeSet<&str> = listeners
            .iter()
            .filter_map(|l| known.get(*l)?.source_service.as_deref())
            .collect();
        let caller = match sources.iter().next() {
            Some(s) if sources.len() == 1 => format!("{}/{s}", self.caller),
            _ => self.caller.clone(),
        };
        let per_listener = |s: &Sample, f: fn(&Counts) -> f64| -> f64 {
            listeners
                .iter()
                .filter_map(|l| s.listeners.get(*l))
                .map(f)
                .sum()
        };
        EdgeView {
            caller,
            listener: if keys.len() == 1 {
                keys[0].listener.clone()
            } else {
                String::new()
            },
            service: keys.first().map(|k| k.service.clone()).unwrap_or_default(),
            protocol: match protocols.len() {
                1 => protocols
                    .iter()
                    .next()
                    .copied()
                    .unwrap_or("tcp")
                    .to_string(),
                _ => "mixed".to_string(),
            },
            requests_per_s: rate(d.requests, span),
            success_rate: success(&d),
            p50_ms: quantile_ms(&d.buckets, 0.50),
            p95_ms: quantile_ms(&d.buckets, 0.95),
            p99_ms: quantile_ms(&d.buckets, 0.99),
            active: per_listener(last, |c| c.active),
            retries_per_s: rate(d.retries, span),
            ejections: (per_listener(last, |c| c.ejections) - per_listener(first, |c| c.ejections))
                .max(0.0),
            series: series(all, keys),
        }
    }
}

/// The counts of `keys` in `s`, summed.
fn sum_counts(s: &Sample, keys: &[EdgeKey]) -> Counts {
    let mut total = Counts::default();
    for c in keys.iter().filter_map(|k| s.edges.get(k)) {
        total.requests += c.requests;
        total.failures += c.failures;
        total.retries += c.retries;
        if total.buckets.is_empty() {
            total.buckets = c.buckets.iter().map(|(le, _)| (*le, 0.0)).collect();
        }
        for (t, (_, n)) in total.buckets.iter_mut().zip(&c.buckets) {
            t.1 += n;
        }
    }
    total
}

/// What happened between two cumulative counts (a counter that went down —
/// the node restarted it — counts from zero).
fn delta(a: &Counts, b: &Counts) -> Counts {
    let d = |x: f64, y: f64| if y >= x { y - x } else { y };
    Counts {
        requests: d(a.requests, b.requests),
        failures: d(a.failures, b.failures),
        retries: d(a.retries, b.retries),
        ejections: d(a.ejections, b.ejections),
        buckets: b
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (le, n))| (*le, d(a.buckets.get(i).map_or(0.0, |x| x.1), *n)))
            .collect(),
        active: b.active,
    }
}

fn rate(n: f64, span: f64) -> f64 {
    if span > 0.0 { n / span } else { 0.0 }
}

fn success(d: &Counts) -> Option<f64> {
    (d.requests > 0.0).then(|| ((d.requests - d.failures) / d.requests).clamp(0.0, 1.0))
}

/// The `q` quantile of a cumulative histogram, in ms, interpolated within its
/// bucket as Prometheus' `histogram_quantile` does; the highest finite bound
/// if it falls in the last bucket.
pub fn quantile_ms(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * within) * 1000.0);
        }
        lower = (le, n);
    }
    Some(lower.0 * 1000.0)
}

/// One point per sample interval for `keys`.
fn series(all: &[&Sample], keys: &[EdgeKey]) -> Series {
    let mut out = Series::default();
    let Some(newest) = all.last() else {
        return out;
    };
    for pair in all.windows(2) {
        let (a, b) = (sum_counts(pair[0], keys), sum_counts(pair[1], keys));
        let d = delta(&a, &b);
        let span = pair[1].at.saturating_sub(pair[0].at).as_secs_f64();
        out.t_s
            .push(-(newest.at.saturating_sub(pair[1].at).as_secs_f64()));
        out.requests_per_s.push(rate(d.requests, span));
        out.success_rate.push(success(&d));
        out.p99_ms.push(quantile_ms(&d.buckets, 0.99));
    }
    out
}

/// The serving side over the window.
fn served(first: &Sample, last: &Sample, span: f64) -> Vec<ServedView> {
    last.served
        .iter()
        .map(|(service, b)| {
            let a = first.served.get(service).cloned().unwrap_or_default();
            let d = delta(&a, b);
            ServedView {
                service: service.clone(),
                streams_per_s: rate(d.requests, span),
                refused_per_s: rate(d.failures, span),
                active: b.active,
            }
        })
        .collect()
}

/// Refusals with any count, over the window and in all.
fn refused(first: &Sample, last: &Sample, span: f64) -> Vec<RefusedView> {
    last.refused
        .iter()
        .filter(|(_, total)| **total > 0.0)
        .map(|((what, reason), total)| {
            let before = first
                .refused
                .get(&(what.clone(), reason.clone()))
                .copied()
                .unwrap_or(0.0);
            RefusedView {
                what: what.clone(),
                reason: reason.clone(),
                per_s: rate((total - before).max(0.0), span),
                total: *total,
            }
        })
        .collect()
}

/// Samples `metrics` into `history` every [`EVERY`] until `stop` (the node's
/// `golden` task: the thin driver of [`History`]).
pub async fn sample_every(
    history: std::sync::Arc<History>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => history.record(&metrics.encode(), started.elapsed()),
            _ = stop.changed() => return,
        }
    }
}

/// What each of `config`'s listeners calls, for [`History::new`].
pub fn listeners_of(config: &crate::config::Config) -> BTreeMap<String, ListenerInfo> {
    config
        .listeners
        .iter()
        .map(|l| {
            let info = ListenerInfo {
                protocol: match l.protocol {
                    mesh_proto::tunnel::Protocol::Http => "http",
                    _ => "tcp",
                },
                service: l.service.clone(),
                source_service: l.source_service.clone(),
            };
            (l.name.clone(), info)
        })
        .collect()
}

#[cfg(test)]
mod tests;
