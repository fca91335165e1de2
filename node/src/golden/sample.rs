//! One sample of the golden metrics: the node's own Prometheus exposition
//! (what `/metrics` serves, so the dashboard and a scraper never disagree)
//! read back into cumulative counts per edge, per served service and per
//! refusal reason.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

/// One edge: this node's listener calling a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    /// The listener the calls come through.
    pub listener: String,
    /// The service called.
    pub service: String,
}

/// Cumulative counts of one edge (or one served service) at a sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests (HTTP) or connections (TCP) finished or accepted.
    pub requests: f64,
    /// Those that failed: a 5xx answer (HTTP), a connection the mesh could not
    /// serve (TCP), a stream refused (served side).
    pub failures: f64,
    /// Attempts after the first one of a request or connection.
    pub retries: f64,
    /// Endpoints ejected by outlier detection (per listener only).
    pub ejections: f64,
    /// Latency histogram: (upper bound in seconds, cumulative count).
    pub buckets: Vec<(f64, f64)>,
    /// Client connections (per listener) or streams (served side) open at
    /// the sample: a gauge.
    pub active: f64,
}

/// What one listener calls and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `tcp` or `http`.
    pub protocol: &'static str,
    /// The service a TCP listener forwards to (HTTP listeners name theirs per
    /// request).
    pub service: Option<String>,
    /// The source service the listener claims for its callers, if any.
    pub source_service: Option<String>,
}

/// The golden counts of the node at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When, since the history began.
    pub at: Duration,
    /// By edge (listener → service): requests, failures, retries, latency.
    pub edges: BTreeMap<EdgeKey, Counts>,
    /// By listener: its open client connections and outlier ejections (an
    /// HTTP listener's are not any one service's).
    pub listeners: BTreeMap<String, Counts>,
    /// By local service: tunnelled streams served.
    pub served: BTreeMap<String, Counts>,
    /// Refusals by (what was refused, reason), from the
    /// [`REFUSAL_FAMILIES`].
    pub refused: BTreeMap<(String, String), f64>,
    /// Open gossip connections.
    pub gossip_connections: f64,
}

/// A family's name without the `shoal_` prefix and the `_total` suffix.
fn short(metric: &str) -> &str {
    let m = metric.strip_prefix("shoal_").unwrap_or(metric);
    m.strip_suffix("_total").unwrap_or(m)
}

/// The counters of refusals — every limit, every bad peer or input the node
/// turns away — and what each refuses (shown by the dashboard and `shoal
/// status`).
pub const REFUSAL_FAMILIES: [(&str, &str); 11] = [
    ("shoal_quic_incoming_refused_total", "quic_connections"),
    ("shoal_rejected_peers_total", "peer_certificates"),
    ("shoal_inbound_refusals_total", "inbound_streams"),
    (
        "shoal_listener_connection_failures_total",
        "listener_connections",
    ),
    ("shoal_http_retry_budget_exhausted_total", "http_retries"),
    ("shoal_gossip_dropped_total", "gossip_messages"),
    ("shoal_gossip_rejected_total", "gossip_items"),
    ("shoal_route_documents_rejected_total", "route_documents"),
    ("shoal_revocation_lists_refused_total", "revocation_lists"),
    ("shoal_tls_reloads_refused_total", "certificate_reloads"),
    ("shoal_admin_refused_total", "admin_api"),
];

/// What the refusal counter `family` (short name) refuses, if it is one.
fn refusal(family: &str) -> Option<&'static str> {
    REFUSAL_FAMILIES
        .iter()
        .find(|(f, _)| short(f) == family)
        .map(|(_, what)| *what)
}

/// The families [`Sample::add`] reads besides the refusals, by short name.
const READ_FAMILIES: [&str; 13] = [
    "gossip_connections",
    "inbound_streams",
    "inbound_refusals",
    "inbound_active_streams",
    "listener_active_connections",
    "outlier_ejections",
    "http_requests",
    "http_request_duration_seconds",
    "http_retries",
    "listener_connections",
    "listener_connection_failures",
    "upstream_retries",
    "tunnel_setup_seconds",
];

/// Whether exposition `line` (a sample, or a `# TYPE` / `# HELP` / `# UNIT`
/// line) belongs to a family a sample reads.
pub(super) fn is_read(line: &str) -> bool {
    let name = match line.strip_prefix('#') {
        Some(comment) => comment.split_whitespace().nth(1).unwrap_or(""),
        None => line.split(['{', ' ']).next().unwrap_or(""),
    };
    let name = name.strip_prefix("shoal_").unwrap_or(name);
    let family = ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    READ_FAMILIES.contains(&family) || refusal(family).is_some()
}

/// Adds histogram `counts` into `into` (bucket by bucket, same bounds).
fn add_buckets(into: &mut Vec<(f64, f64)>, counts: &[prometheus_parse::HistogramCount]) {
    if into.is_empty() {
        into.extend(counts.iter().map(|c| (c.less_than, 0.0)));
    }
    for (slot, c) in into.iter_mut().zip(counts) {
        slot.1 += c.count;
    }
}

/// The value of a counter, gauge or untyped sample.
fn scalar(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        _ => 0.0,
    }
}

impl Sample {
    /// Reads the exposition `text` taken at `at`; `listeners` says what each
    /// listener calls. Samples of unknown families are ignored, so a text this
    /// reader does not fully understand gives fewer figures, never an error.
    pub fn read(text: &str, at: Duration, listeners: &BTreeMap<String, ListenerInfo>) -> Sample {
        // Only the families read below go through the parser (a regex per
        // line): most of a node's exposition is gossip and QUIC families this
        // sample never reads, and every node parses it every two seconds.
        Sample::from_lines(text.lines().filter(|l| is_read(l)), at, listeners)
    }

    /// [`Sample::read`] of exactly `lines`, none left out.
    pub(super) fn from_lines<'a>(
        lines: impl Iterator<Item = &'a str>,
        at: Duration,
        listeners: &BTreeMap<String, ListenerInfo>,
    ) -> Sample {
        let mut s = Sample {
            at,
            ..Sample::default()
        };
        let Ok(scrape) = Scrape::parse(lines.map(|l| Ok(l.to_string()))) else {
            return s;
        };
        for sample in &scrape.samples {
            s.add(
                short(&sample.metric),
                &sample.labels,
                &sample.value,
                listeners,
            );
        }
        s
    }

    /// Adds one parsed sample to the figure it feeds, if any.
    fn add(
        &mut self,
        family: &str,
        labels: &prometheus_parse::Labels,
        value: &Value,
        listeners: &BTreeMap<String, ListenerInfo>,
    ) {
        let label = |name: &str| labels.get(name).unwrap_or_default().to_string();
        if let Some(what) = refusal(family) {
            let reason = labels.get("reason").unwrap_or("-");
            *self
                .refused
                .entry((what.to_string(), reason.to_string()))
                .or_default() += scalar(value);
        }
        match family {
            "gossip_connections" => self.gossip_connections = scalar(value),
            "inbound_streams" => self.served_mut(&label("service")).requests += scalar(value),
            "inbound_refusals" => self.served_mut(&label("service")).failures += scalar(value),
            "inbound_active_streams" => self.served_mut(&label("service")).active += scalar(value),
            _ => self.add_edge(family, labels, value, listeners),
        }
    }

    /// Adds a listener's sample to its edge (HTTP listeners' per request
    /// service, TCP listeners' configured one).
    fn add_edge(
        &mut self,
        family: &str,
        labels: &prometheus_parse::Labels,
        value: &Value,
        listeners: &BTreeMap<String, ListenerInfo>,
    ) {
        let Some(listener) = labels.get("listener") else {
            return;
        };
        let Some(info) = listeners.get(listener) else {
            return;
        };
        match family {
            "listener_active_connections" => {
                return self.listener_mut(listener).active += scalar(value);
            }
            "outlier_ejections" => return self.listener_mut(listener).ejections += scalar(value),
            _ => {}
        }
        let http = info.protocol == "http";
        let service = match (http, labels.get("service"), &info.service) {
            (true, Some(s), _) if s != "-" => s.to_string(),
            (false, _, Some(s)) => s.clone(),
            // An HTTP request no route matched, or a per-listener family of
            // an HTTP listener: not one edge's.
            _ => return,
        };
        let edge = self
            .edges
            .entry(EdgeKey {
                listener: listener.to_string(),
                service,
            })
            .or_default();
        match (http, family, value) {
            (true, "http_requests", v) => {
                edge.requests += scalar(v);
                if labels.get("class") == Some("5xx") {
                    edge.failures += scalar(v);
                }
            }
            (true, "http_request_duration_seconds", Value::Histogram(h)) => {
                add_buckets(&mut edge.buckets, h);
            }
            (true, "http_retries", v) => edge.retries += scalar(v),
            (false, "listener_connections", v) => edge.requests += scalar(v),
            (false, "listener_connection_failures", v) => edge.failures += scalar(v),
            (false, "upstream_retries", v) => edge.retries += scalar(v),
            (false, "tunnel_setup_seconds", Value::Histogram(h)) => {
                add_buckets(&mut edge.buckets, h)
            }
            _ => {}
        }
    }

    fn listener_mut(&mut self, listener: &str) -> &mut Counts {
        self.listeners.entry(listener.to_string()).or_default()
    }

    fn served_mut(&mut self, service: &str) -> &mut Counts {
        self.served.entry(service.to_string()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lines_of_families_read_reach_the_parser() {
        let read = READ_FAMILIES
            .iter()
            .copied()
            .chain(REFUSAL_FAMILIES.iter().map(|(f, _)| short(f)));
        for family in read {
            for line in [
                format!("# TYPE shoal_{family} counter"),
                format!("# HELP shoal_{family} What it counts."),
                format!("shoal_{family}_total{{listener=\"web\"}} 3"),
                format!("shoal_{family}_bucket{{le=\"0.5\"}} 1"),
                format!("shoal_{family}_sum 0.25"),
                format!("shoal_{family}_count 1"),
                format!("shoal_{family} 7"),
            ] {
                assert!(is_read(&line), "{line}");
            }
        }
        for line in [
            "# TYPE shoal_gossip_messages_sent counter",
            "shoal_gossip_messages_sent_total{kind=\"ping\"} 10",
            "shoal_quic_rtt_seconds_bucket{le=\"0.001\"} 4",
            "shoal_http_requests_in_flight 2",
            "# EOF",
            "",
        ] {
            assert!(!is_read(line), "{line}");
        }
    }
}
