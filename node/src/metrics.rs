//! The node's Prometheus metrics: one registry per node (so several in-process
//! nodes never mix their figures), its families grouped by the subsystem that
//! updates them — [`gossip`], [`tls`] (certificates and peer connections),
//! [`routing`] (the table and route documents), [`proxy`] (listeners),
//! [`http`] (HTTP listeners' requests) and [`inbound`] (the serving side) —
//! each group registering its own. Served as text at `/metrics` by the admin API.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

pub mod gossip;
pub mod http;
pub mod inbound;
mod labels;
pub mod proxy;
pub mod routing;
pub mod tls;

pub use inbound::ServiceCounters;
pub use labels::*;

/// Every metric the node exports, by subsystem.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Vec<String>,
    /// Membership and gossip.
    pub gossip: gossip::GossipMetrics,
    /// This node's certificate, and the peers' QUIC connections and handshakes.
    pub tls: tls::TlsMetrics,
    /// The routing table and route documents.
    pub routing: routing::RoutingMetrics,
    /// Listeners: client connections and their upstream attempts.
    pub proxy: proxy::ProxyMetrics,
    /// HTTP listeners' requests.
    pub http: http::HttpMetrics,
    /// The serving side: tunnelled streams and local services' health checks.
    pub inbound: inbound::InboundMetrics,
    /// Long-running tasks restarted after they ended unexpectedly, by task.
    pub task_restarts: Family<TaskLabels, Counter>,
    /// Admin API connections and requests refused, by reason.
    pub admin_refused: Family<ReasonLabels, Counter>,
}

/// The registry being filled, and the family names registered in it.
struct Families {
    registry: Registry,
    names: Vec<String>,
}

/// Registers `metric` as `name` and returns it.
fn register<M: Metric + Clone>(families: &mut Families, name: &str, help: &str, metric: M) -> M {
    families.registry.register(name, help, metric.clone());
    families.names.push(format!("{PREFIX}_{name}"));
    metric
}

/// The prefix of every family name.
const PREFIX: &str = "shoal";

/// A latency histogram: 100 µs to ~3 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered under the `shoal_` prefix.
    pub fn new() -> Self {
        let mut families = Families {
            registry: Registry::with_prefix(PREFIX),
            names: Vec::new(),
        };
        let r = &mut families;
        let mut metrics = Metrics {
            gossip: gossip::GossipMetrics::register(r),
            tls: tls::TlsMetrics::register(r),
            routing: routing::RoutingMetrics::register(r),
            proxy: proxy::ProxyMetrics::register(r),
            http: http::HttpMetrics::register(r),
            inbound: inbound::InboundMetrics::register(r),
            task_restarts: register(
                r,
                "task_restarts",
                "Long-running tasks restarted after they ended unexpectedly, by task",
                Family::default(),
            ),
            admin_refused: register(
                r,
                "admin_refused",
                "Admin API connections and requests refused (too many connections, headers or body too slow, a Host that does not name this node), by reason",
                Family::default(),
            ),
            registry: Registry::default(),
            families: Vec::new(),
        };
        metrics.registry = families.registry;
        metrics.families = families.names;
        metrics
    }

    /// The name of every family registered (`shoal_...`, without the
    /// `_total` of counters): what `/metrics` exports, each once it has a
    /// sample.
    pub fn family_names(&self) -> &[String] {
        &self.families
    }

    /// Counts one restart of `task`.
    pub fn task_restarted(&self, task: &str) {
        self.task_restarts
            .get_or_create(&TaskLabels {
                task: task.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
