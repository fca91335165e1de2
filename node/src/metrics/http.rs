//! HTTP listeners' requests: answered by route, service and status class,
//! their latency, retries, and retries the budget refused.

use std::sync::Mutex;

use super::Families;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::{HttpLabels, HttpRetryLabels, ListenerLabels, latency_histogram, register};

/// The HTTP request families.
#[derive(Debug)]
pub struct HttpMetrics {
    /// HTTP requests answered by listeners, by route, service and status class.
    pub requests: Family<HttpLabels, Counter>,
    /// Time from a request's arrival to its response headers.
    pub duration: Family<HttpLabels, Histogram>,
    /// HTTP tries after the first, by route, service and reason.
    pub retries: Family<HttpRetryLabels, Counter>,
    /// HTTP retries refused by the listener's retry budget.
    pub retry_budget_exhausted: Family<ListenerLabels, Counter>,
}

impl HttpMetrics {
    pub(super) fn register(r: &mut Families) -> Self {
        HttpMetrics {
            requests: register(
                r,
                "http_requests",
                "HTTP requests answered by listeners, by route, service and status class",
                Family::default(),
            ),
            duration: register(
                r,
                "http_request_duration_seconds",
                "Time from an HTTP request's arrival to its response headers",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            retries: register(
                r,
                "http_retries",
                "HTTP tries after the first, by route, service and the previous try's failure",
                Family::default(),
            ),
            retry_budget_exhausted: register(
                r,
                "http_retry_budget_exhausted",
                "HTTP retries not made because the listener's retry budget was spent",
                Family::default(),
            ),
        }
    }
}

/// Most (route, service, class) combinations one listener keeps handles for;
/// beyond, its requests are counted through the families' maps.
const MAX_CACHED: usize = 256;

/// One listener's handles into the request families, by route, service and
/// status class: counting a request then hashes and allocates no label
/// strings. (Label sets are never removed from the families, so a handle stays
/// the one the families expose.)
#[derive(Debug)]
pub struct RequestCounts {
    listener: String,
    cached: Mutex<Vec<Cached>>,
}

#[derive(Debug)]
struct Cached {
    route: String,
    service: String,
    class: &'static str,
    requests: Counter,
    duration: Histogram,
}

impl RequestCounts {
    /// The handles of listener `listener`, none taken yet.
    pub fn new(listener: &str) -> Self {
        RequestCounts {
            listener: listener.to_string(),
            cached: Mutex::new(Vec::new()),
        }
    }

    /// Counts one answered request (`route` and `service` empty when none)
    /// and the `seconds` its response head took.
    pub fn count(
        &self,
        families: &HttpMetrics,
        (route, service): (&str, &str),
        class: &'static str,
        seconds: f64,
    ) {
        let route = or_dash(route);
        let service = or_dash(service);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached
            .iter()
            .find(|c| c.class == class && c.route == route && c.service == service)
        {
            c.requests.inc();
            c.duration.observe(seconds);
            return;
        }
        let labels = HttpLabels {
            listener: self.listener.clone(),
            route: route.to_string(),
            service: service.to_string(),
            class,
        };
        let requests = families.requests.get_or_create(&labels).clone();
        let duration = families.duration.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(seconds);
        if cached.len() < MAX_CACHED {
            cached.push(Cached {
                route: labels.route,
                service: labels.service,
                class,
                requests,
                duration,
            });
        }
    }
}

/// `-` for an empty label value.
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn cached_handles_count_into_the_families_by_their_labels() {
        let metrics = Metrics::new();
        let counts = RequestCounts::new("web");
        for _ in 0..3 {
            counts.count(&metrics.http, ("shop", "cart"), "2xx", 0.001);
        }
        counts.count(&metrics.http, ("", "cart"), "5xx", 0.002);
        let labels = |route: &str, class| HttpLabels {
            listener: "web".into(),
            route: route.into(),
            service: "cart".into(),
            class,
        };
        let got = |route, class| {
            metrics
                .http
                .requests
                .get_or_create(&labels(route, class))
                .get()
        };
        assert_eq!(got("shop", "2xx"), 3);
        assert_eq!(got("-", "5xx"), 1, "an empty route is `-`");
        assert_eq!(got("shop", "5xx"), 0);
        let text = metrics.encode();
        assert!(
            text.contains(
                "shoal_http_request_duration_seconds_count{listener=\"web\",route=\"shop\",service=\"cart\",class=\"2xx\"} 3"
            ),
            "{text}"
        );
    }
}
