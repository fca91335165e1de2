//! Active health checks of this node's own backends: each local service is probed
//! on its interval (TCP connect, or HTTP `GET path` expecting 2xx — in HTTP/2
//! for an `http2` service, over TLS for a `tls` one) within its timeout; results go through the consecutive-threshold state machine
//! (`mesh_proto::health`), and state changes are published to gossip.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use mesh_proto::gossip::Health;
use mesh_proto::health::HealthTracker;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{HealthKind, ServiceConfig};
use crate::gossip::Gossip;
use crate::metrics::{HealthCheckLabels, Metrics};
use crate::proxy::backend_tls::{BackendConnector, Offer};
use crate::publish::Publisher;

/// What a TLS backend's health checks connect with: made once per checking
/// task (its trusted CAs parsed once), or why it cannot be.
pub type ProbeTls = Option<Result<BackendConnector, String>>;

/// The [`ProbeTls`] of `svc`: `None` unless it says `tls = true`.
pub fn probe_tls(svc: &ServiceConfig) -> ProbeTls {
    let tls = svc.tls.as_ref()?;
    Some(BackendConnector::new(tls, svc.http2).map_err(|e| e.to_string()))
}

/// One probe of `svc`'s backend (over `tls`, from [`probe_tls`]): `Ok` if
/// healthy, else why not.
pub async fn probe(svc: &ServiceConfig, tls: &ProbeTls) -> Result<(), String> {
    let timeout = svc.health.timeout;
    let work = async {
        match svc.health.kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => TcpStream::connect(svc.address)
                .await
                .map(drop)
                .map_err(|e| format!("connect {}: {e}", svc.address)),
            HealthKind::Http => http_get(svc, tls).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn http_get(svc: &ServiceConfig, tls: &ProbeTls) -> Result<(), String> {
    let stream = TcpStream::connect(svc.address)
        .await
        .map_err(|e| format!("connect {}: {e}", svc.address))?;
    let Some(connector) = tls else {
        return get_over(stream, svc.http2, svc).await;
    };
    let (stream, h2) = connector
        .as_ref()
        .map_err(Clone::clone)?
        .handshake(stream, Offer::Service)
        .await
        .map_err(|e| format!("{}: {e}", svc.address))?;
    let refused = stream.observer().refused();
    get_over(stream, h2, svc).await.map_err(|e| match refused.get() {
        Some(alert) => format!(
            "{}: the backend refused this node's TLS client certificate (alert {alert}): check the service's tls_cert and tls_key",
            svc.address
        ),
        None => e,
    })
}

/// `GET` the health path over `io`, in HTTP/2 (`h2`) or HTTP/1.1.
async fn get_over<IO>(io: IO, h2: bool, svc: &ServiceConfig) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let path = svc.health.path.as_str();
    let (result, driver) = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        )
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let scheme = if svc.tls.is_some() { "https" } else { "http" };
        let req = request(&format!("{scheme}://{}{path}", svc.address), svc)?;
        (sender.send_request(req).await, driver)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        (sender.send_request(request(path, svc)?).await, driver)
    };
    driver.abort();
    let resp = result.map_err(|e| format!("GET {path}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {}", resp.status()))
    }
}

fn request(uri: &str, svc: &ServiceConfig) -> Result<hyper::Request<Empty<Bytes>>, String> {
    hyper::Request::get(uri)
        .header(hyper::header::HOST, svc.address.to_string())
        .header(hyper::header::USER_AGENT, "shoal-health-check")
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))
}

/// Checks `svc` until `stop` fires, publishing every state change.
pub async fn run(
    svc: ServiceConfig,
    gossip: Arc<Gossip>,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tracker =
        HealthTracker::new(svc.health.healthy_threshold, svc.health.unhealthy_threshold);
    let tls = probe_tls(&svc);
    let mut ticker = tokio::time::interval(svc.health.interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let result = probe(&svc, &tls).await;
        metrics
            .inbound
            .health_checks
            .get_or_create(&HealthCheckLabels {
                service: svc.name.clone(),
                result: if result.is_ok() { "success" } else { "failure" },
            })
            .inc();
        if let Some(state) = tracker.record(result.is_ok()) {
            match (&result, state) {
                (Err(why), Health::Unhealthy) => {
                    tracing::warn!(service = %svc.name, reason = %why, "backend is unhealthy")
                }
                _ => tracing::info!(service = %svc.name, health = %state, "backend health changed"),
            }
            publisher.set_health(&gossip, &svc.name, state).await;
        }
    }
}
