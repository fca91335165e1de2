//! HTTP listeners' requests: answered by route, service and status class,
//! their latency, retries, and retries the budget refused.

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
