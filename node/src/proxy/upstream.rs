//! Reaching one endpoint of a service: a QUIC stream to its node, opened with a
//! `StreamHeader` and answered with a `StreamStatus` — or, when the endpoint is on
//! this node, a TCP connection to the local backend under the same rules the
//! inbound side applies (allow-lists, connection limit, connect timeout). Shared
//! by TCP and HTTP listeners.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::codec::{FRAME_HEADER_LEN, decode_exact, encode, frame_len};
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use quinn::{RecvStream, SendStream};
use tokio::net::TcpStream;

use super::admission::{Caller, Refused};
use super::backend_pool::{BackendPool, Sender};
use super::{CountGuard, ProxyContext};
use crate::endpoint::Use;

/// Why one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// The endpoint could not be reached or refused; try another. The label
    /// is the metric reason; the text says what happened.
    Retryable(&'static str, String),
    /// Trying elsewhere would not help (the caller is not authorized).
    Final(&'static str, String),
}

impl AttemptError {
    /// The metric reason.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Retryable(l, _) | AttemptError::Final(l, _) => l,
        }
    }

    /// What happened.
    pub fn text(&self) -> &str {
        match self {
            AttemptError::Retryable(_, t) | AttemptError::Final(_, t) => t,
        }
    }
}

/// An established path to an endpoint.
#[derive(Debug)]
pub enum Upstream {
    /// The backend on this node, and its connection slot.
    Local(TcpStream, CountGuard),
    /// The HTTP backend on this node: a keep-alive connection from its pool (or
    /// a new one), the pool, the backend's connect timeout, and the slot.
    LocalHttp(Sender, Arc<BackendPool>, Duration, CountGuard),
    /// A tunnel stream to the endpoint's node, past its `ok`.
    Tunnel(SendStream, RecvStream),
}

/// What to open.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The service.
    pub service: &'a str,
    /// The caller's claimed source service.
    pub source_service: Option<&'a str>,
    /// TCP or HTTP.
    pub protocol: Protocol,
    /// The request id.
    pub request_id: RequestId,
    /// The caller's whole remaining time budget for this exchange (HTTP requests),
    /// sent so the serving node cuts work off when the caller has given up. `None`
    /// for TCP connections, which live as long as they are used.
    pub deadline: Option<Duration>,
}

/// The status-code label used in metrics.
pub fn status_label(code: StatusCode) -> &'static str {
    code.metric_label()
}

/// Opens a path to `endpoint` within `timeout`.
pub async fn open(
    ctx: &ProxyContext,
    endpoint: &Endpoint,
    target: Target<'_>,
    timeout: Duration,
) -> Result<Upstream, AttemptError> {
    if endpoint.node == ctx.node_name {
        return open_local(ctx, target, timeout).await;
    }
    let header = StreamHeader {
        target_service: target.service.to_string(),
        source_service: target.source_service.map(str::to_string),
        protocol: target.protocol,
        request_id: target.request_id,
        deadline_ms: target
            .deadline
            .map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32),
    };
    let work = async {
        let conn = ctx
            .endpoint
            .connect(endpoint.addr, Use::Tunnel, Some(&endpoint.node))
            .await
            .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
        let frame =
            encode(&header).map_err(|e| AttemptError::Final("bad_header", e.to_string()))?;
        send.write_all(&frame)
            .await
            .map_err(|e| AttemptError::Retryable("connect_failed", e.to_string()))?;
        let status = read_status(&mut recv).await?;
        if status.code.is_ok() {
            Ok(Upstream::Tunnel(send, recv))
        } else {
            let label = status_label(status.code);
            let why = format!(
                "{} answered {}: {}",
                endpoint.node, status.code, status.reason
            );
            if status.code.is_retryable_elsewhere() {
                Err(AttemptError::Retryable(label, why))
            } else {
                Err(AttemptError::Final(label, why))
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Retryable(
            "timeout",
            format!("{} did not answer within {timeout:?}", endpoint.node),
        )),
    }
}

async fn open_local(
    ctx: &ProxyContext,
    target: Target<'_>,
    timeout: Duration,
) -> Result<Upstream, AttemptError> {
    // The same checks the inbound side makes, for a caller on this node.
    let Some(local) = ctx.services.get(target.service) else {
        return Err(AttemptError::Retryable(
            "unknown_service",
            "this node does not host the service".into(),
        ));
    };
    let caller = Caller {
        node: &ctx.node_name,
        source_service: target.source_service,
        // The listener's source service comes from this node's own config,
        // checked against its certificate when the config was validated.
        source_certified: true,
    };
    let slot = local.admit(&caller).map_err(|refused| match refused {
        Refused::AtCapacity { .. } => AttemptError::Retryable("overloaded", refused.to_string()),
        Refused::UncertifiedSource { .. } | Refused::NotAllowed { .. } => {
            AttemptError::Final("unauthorized", refused.to_string())
        }
    })?;
    let timeout = timeout.min(local.config.connect_timeout);
    if target.protocol == Protocol::Http {
        // An HTTP request goes over a pooled keep-alive connection, as on the
        // serving side of a tunnel.
        let sender = match local.pool.take() {
            Some(s) => s,
            None => local.pool.connect(timeout).await.map_err(|e| {
                let label = if e.kind() == std::io::ErrorKind::TimedOut {
                    "timeout"
                } else {
                    "backend_refused"
                };
                AttemptError::Retryable(
                    label,
                    format!("local backend {}: {e}", local.config.address),
                )
            })?,
        };
        return Ok(Upstream::LocalHttp(
            sender,
            local.pool.clone(),
            local.config.connect_timeout,
            slot,
        ));
    }
    match tokio::time::timeout(timeout, TcpStream::connect(local.config.address)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Upstream::Local(s, slot))
        }
        Ok(Err(e)) => Err(AttemptError::Retryable(
            "backend_refused",
            format!("local backend {}: {e}", local.config.address),
        )),
        Err(_) => Err(AttemptError::Retryable(
            "timeout",
            format!(
                "local backend {} did not accept in time",
                local.config.address
            ),
        )),
    }
}

async fn read_status(recv: &mut RecvStream) -> Result<StreamStatus, AttemptError> {
    let broken = |e: &dyn std::fmt::Display| {
        AttemptError::Retryable("connect_failed", format!("reading the status: {e}"))
    };
    let mut buf = vec![0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut buf).await.map_err(|e| broken(&e))?;
    let total = frame_len::<StreamStatus>(&buf).map_err(|e| broken(&e))?;
    buf.resize(total, 0);
    recv.read_exact(&mut buf[FRAME_HEADER_LEN..])
        .await
        .map_err(|e| broken(&e))?;
    decode_exact::<StreamStatus>(&buf).map_err(|e| broken(&e))
}
