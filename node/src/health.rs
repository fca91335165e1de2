//! Active health checks of this node's own backends: each local service is probed
//! on its interval (TCP connect, or HTTP `GET path` expecting 2xx) within its
//! timeout; results go through the consecutive-threshold state machine
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
use crate::publish::Publisher;

/// One probe of `svc`'s backend: `Ok` if healthy, else why not.
pub async fn probe(svc: &ServiceConfig) -> Result<(), String> {
    let timeout = svc.health.timeout;
    let work = async {
        match svc.health.kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => TcpStream::connect(svc.address)
                .await
                .map(drop)
                .map_err(|e| format!("connect {}: {e}", svc.address)),
            HealthKind::Http => http_get(svc).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn http_get(svc: &ServiceConfig) -> Result<(), String> {
    let stream = TcpStream::connect(svc.address)
        .await
        .map_err(|e| format!("connect {}: {e}", svc.address))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(svc.health.path.as_str())
        .header(hyper::header::HOST, svc.address.to_string())
        .header(hyper::header::USER_AGENT, "shoal-health-check")
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let result = sender.send_request(req).await;
    driver.abort();
    let resp = result.map_err(|e| format!("GET {}: {e}", svc.health.path))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "GET {} answered {}",
            svc.health.path,
            resp.status()
        ))
    }
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
    let mut ticker = tokio::time::interval(svc.health.interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let result = probe(&svc).await;
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
