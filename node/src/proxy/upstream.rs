//! Reaching one endpoint of a service: a QUIC stream to its node, opened with a
//! `StreamHeader` and (TCP) answered with a `StreamStatus`, or (HTTP) followed at
//! once by the request (`outbound_http`) — or, when the endpoint is on
//! this node, the local backend under the same admission the inbound side applies
//! (`LocalService::admit`). TCP listeners open a [`TcpUpstream`] (a byte stream),
//! HTTP listeners an [`HttpUpstream`] (a pooled keep-alive connection when the
//! backend is local); both fail with an [`OpenError`] that says whether another
//! endpoint may help.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh_proto::codec::{EncodeError, FRAME_HEADER_LEN, decode_exact, encode, frame_len};
use mesh_proto::routing::Endpoint;
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use quinn::{RecvStream, SendStream};
use thiserror::Error;
use tokio::net::TcpStream;

use super::admission::{Caller, Refused, Slot};
use super::backend_pool::{BackendPool, Sender};
use super::hedge::{self, Heard};
use super::{LocalService, ProxyContext};
use crate::endpoint::ConnectError;

/// Why opening a path to one endpoint failed.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The endpoint could not be reached, or turned the stream away for a
    /// reason another endpoint may not have (overloaded, draining, down): try
    /// another. `reason` is the metric label.
    #[error("{text}")]
    Unreachable {
        /// The metric reason.
        reason: &'static str,
        /// What happened.
        text: String,
    },
    /// The endpoint refused the caller itself (not allowed to call the
    /// service): every endpoint would, so no other is tried.
    #[error("{text}")]
    Refused {
        /// The metric reason.
        reason: &'static str,
        /// What happened.
        text: String,
    },
    /// The stream header could not be written (a wire-format limit): nothing
    /// was sent, and no endpoint would get another header.
    #[error("the stream header cannot be sent: {0}")]
    Header(#[from] EncodeError),
}

impl OpenError {
    fn unreachable(reason: &'static str, text: impl Into<String>) -> Self {
        OpenError::Unreachable {
            reason,
            text: text.into(),
        }
    }

    /// The metric reason.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Unreachable { reason, .. } | OpenError::Refused { reason, .. } => reason,
            OpenError::Header(_) => "bad_header",
        }
    }

    /// The error for a refusal `node` answered (a status, or an HTTP request's
    /// "not forwarded"): another endpoint may help unless the caller itself
    /// was refused.
    pub fn refused_by(node: &str, status: &StreamStatus) -> OpenError {
        let reason = status_label(status.code);
        let text = format!("{node} answered {}: {}", status.code, status.reason);
        if status.code.is_retryable_elsewhere() {
            OpenError::Unreachable { reason, text }
        } else {
            OpenError::Refused { reason, text }
        }
    }

    /// Whether another endpoint may succeed where this one failed.
    pub fn try_another(&self) -> bool {
        matches!(self, OpenError::Unreachable { .. })
    }

    /// Whether the endpoint's node did not answer at all (no connection, or
    /// no status in time), as opposed to answering with a refusal.
    pub fn is_silence(&self) -> bool {
        matches!(self.label(), "connect_failed" | "timeout")
    }
}

/// A tunnel stream to an endpoint's node: past its `ok` (TCP), or with its
/// header written (HTTP).
#[derive(Debug)]
pub struct Tunnel {
    /// Towards the serving node.
    pub send: SendStream,
    /// From the serving node.
    pub recv: RecvStream,
}

/// A byte stream to an endpoint, for a TCP listener.
#[derive(Debug)]
pub enum TcpUpstream {
    /// The backend on this node, and its connection slot.
    Local(TcpStream, Slot),
    /// A tunnel to the endpoint's node.
    Tunnel(Tunnel),
}

/// A way to send an HTTP request to an endpoint, for an HTTP listener.
#[derive(Debug)]
pub enum HttpUpstream {
    /// The backend on this node.
    Local(LocalUpstream),
    /// A tunnel stream to the endpoint's node (a serving-side pool there),
    /// its header written.
    Tunnel(Tunnel),
}

/// The backend on this node: a keep-alive connection from its pool (or a new
/// one), given back to `pool` after the exchange.
#[derive(Debug)]
pub struct LocalUpstream {
    /// The connection.
    pub sender: Sender,
    /// The backend's pool.
    pub pool: Arc<BackendPool>,
    /// The backend's connect timeout, should the connection need redoing.
    pub connect_timeout: Duration,
    /// The backend's connection slot.
    pub slot: Slot,
}

/// What to open.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The service.
    pub service: &'a str,
    /// The caller's claimed source service.
    pub source_service: Option<&'a str>,
    /// The request id.
    pub request_id: RequestId,
    /// The caller's whole remaining time budget for this exchange (HTTP requests),
    /// sent so the serving node cuts work off when the caller has given up. `None`
    /// for TCP connections, which live as long as they are used.
    pub deadline: Option<Duration>,
}

impl Target<'_> {
    fn header(&self, protocol: Protocol) -> StreamHeader {
        StreamHeader {
            target_service: self.service.to_string(),
            source_service: self.source_service.map(str::to_string),
            protocol,
            request_id: self.request_id,
            deadline_ms: self
                .deadline
                .map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32),
        }
    }
}

/// The status-code label used in metrics.
pub fn status_label(code: StatusCode) -> &'static str {
    code.metric_label()
}

/// Opens a byte stream to `endpoint` within `timeout`; `heard` learns the
/// connection a tunnel uses.
pub async fn open_tcp(
    ctx: &ProxyContext,
    endpoint: &Endpoint,
    target: Target<'_>,
    (timeout, heard): (Duration, &Heard),
) -> Result<TcpUpstream, OpenError> {
    if endpoint.node != ctx.node_name {
        let header = target.header(Protocol::Tcp);
        return Ok(TcpUpstream::Tunnel(
            dial(ctx, endpoint, &header, (timeout, heard), None).await?,
        ));
    }
    let services = ctx.services();
    let (local, slot) = admit_local(&services, &ctx.node_name, &target)?;
    let address = local.config.address;
    let timeout = timeout.min(local.config.connect_timeout);
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(TcpUpstream::Local(s, slot))
        }
        Ok(Err(e)) => Err(OpenError::unreachable(
            "backend_refused",
            format!("local backend {address}: {e}"),
        )),
        Err(_) => Err(OpenError::unreachable(
            "timeout",
            format!("local backend {address} did not accept in time"),
        )),
    }
}

/// Opens a way to send an HTTP request to `endpoint` within `timeout`: a
/// tunnel stream, or a pooled keep-alive connection to the local backend (as
/// on the serving side of a tunnel); `heard` learns the connection a tunnel
/// uses. A tunnel stream carries `request` (a whole request's parts,
/// `outbound_http::encode_whole`) in the same write as its header.
pub async fn open_http(
    ctx: &ProxyContext,
    endpoint: &Endpoint,
    target: Target<'_>,
    (timeout, heard): (Duration, &Heard),
    request: Option<&Bytes>,
) -> Result<HttpUpstream, OpenError> {
    if endpoint.node != ctx.node_name {
        let header = target.header(Protocol::Http);
        return Ok(HttpUpstream::Tunnel(
            dial(ctx, endpoint, &header, (timeout, heard), request).await?,
        ));
    }
    // (An HTTP tunnel's header is not answered: the request follows it at
    // once, and the first part back is the answer; see `outbound_http`.)
    let services = ctx.services();
    let (local, slot) = admit_local(&services, &ctx.node_name, &target)?;
    let connect_timeout = local.config.connect_timeout;
    let sender = match local.pool.take() {
        Some(s) => s,
        None => local
            .pool
            .connect(timeout.min(connect_timeout))
            .await
            .map_err(|e| {
                let reason = if e.kind() == std::io::ErrorKind::TimedOut {
                    "timeout"
                } else {
                    "backend_refused"
                };
                OpenError::unreachable(
                    reason,
                    format!("local backend {}: {e}", local.config.address),
                )
            })?,
    };
    Ok(HttpUpstream::Local(LocalUpstream {
        sender,
        pool: local.pool.clone(),
        connect_timeout,
        slot,
    }))
}

/// A tunnel stream to `endpoint`'s node carrying `header`, once the node
/// answered `ok`, within `timeout`. What came of it is evidence about the
/// peer for the whole node: an answer (any status) clears a suspicion, and
/// silence makes the peer suspect ([`super::suspects`]) — a connection that
/// said nothing for [`hedge::suspicion_silence`] since the open began, or a
/// dial that ends without a handshake (followed to its end by
/// [`hedge::follow_dial`], whatever this open's own deadline).
async fn dial(
    ctx: &ProxyContext,
    endpoint: &Endpoint,
    header: &StreamHeader,
    (timeout, heard): (Duration, &Heard),
    request: Option<&Bytes>,
) -> Result<Tunnel, OpenError> {
    let started = tokio::time::Instant::now();
    let _counted = ctx.setup_times.opening();
    let opened = open_stream(ctx, endpoint, header, (timeout, heard), request).await;
    match &opened {
        // An HTTP stream is not answered before its request is sent: the
        // answer (or the silence) comes in `outbound_http`'s exchange.
        Ok(_) if header.protocol == Protocol::Http => {}
        Ok(_) => {
            // The stream's setup, not a handshake's: a dial is not what a
            // hedge waits on.
            let took = heard.since_connected().unwrap_or(started.elapsed());
            ctx.setup_times.record(took);
            ctx.suspects.answered(&endpoint.node);
        }
        Err(OpenError::Header(_)) => {}
        Err(e) if !e.is_silence() => ctx.suspects.answered(&endpoint.node),
        Err(e) if heard.dial_failed() => ctx.suspects.no_answer(&endpoint.node, e.label()),
        Err(_) if !heard.connected() => hedge::follow_dial(ctx, endpoint, &header.target_service),
        Err(_) => heard.suspect_if_silent(&ctx.suspects, &endpoint.node),
    }
    opened
}

/// A send stream reset (`CANCELLED`) if dropped before the open is done: an
/// open given up on (a hedge won, the deadline passed) must not look like a
/// caller that sent its request and finished, which is what the implicit
/// finish of a dropped stream would say to the serving node.
struct Opening(Option<SendStream>);

/// The application error code of a stream reset because its open was given
/// up on.
const CANCELLED: u32 = 1;

impl Opening {
    fn stream(&mut self) -> &mut SendStream {
        self.0.as_mut().expect("taken only by done()")
    }

    fn done(mut self) -> SendStream {
        self.0.take().expect("taken once")
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(send) = &mut self.0 {
            let _ = send.reset(quinn::VarInt::from_u32(CANCELLED));
        }
    }
}

/// [`dial`]'s work: connect, open the stream, send the header, read the status.
async fn open_stream(
    ctx: &ProxyContext,
    endpoint: &Endpoint,
    header: &StreamHeader,
    (timeout, heard): (Duration, &Heard),
    request: Option<&Bytes>,
) -> Result<Tunnel, OpenError> {
    // The header, and the request that follows it when it is known whole:
    // one write, so both leave in one packet.
    let mut frames = [
        Bytes::from(encode(header)?),
        request.cloned().unwrap_or_default(),
    ];
    let frames = if request.is_some() {
        &mut frames[..]
    } else {
        &mut frames[..1]
    };
    let broken =
        |e: &dyn std::fmt::Display| OpenError::unreachable("connect_failed", e.to_string());
    let work = async {
        let conn = ctx
            .endpoint
            .connect_for_service(endpoint.addr, &endpoint.node, &header.target_service)
            .await
            .map_err(|e| match e {
                ConnectError::ServiceNotAllowed { .. } => {
                    OpenError::unreachable("service_not_in_certificate", e.to_string())
                }
                e => {
                    if matches!(
                        e,
                        ConnectError::Timeout { .. } | ConnectError::Handshake { .. }
                    ) {
                        heard.dial_failed_now();
                    }
                    broken(&e)
                }
            })?;
        heard.connection(&conn);
        let (send, mut recv) = conn.open_bi().await.map_err(|e| broken(&e))?;
        let mut send = Opening(Some(send));
        send.stream()
            .write_all_chunks(frames)
            .await
            .map_err(|e| broken(&e))?;
        if request.is_some() {
            // The request is whole: the stream's end leaves with it, so the
            // serving node need not stop the stream after its response, and
            // its acknowledgement rides on that response instead of a packet
            // of its own (two datagrams per exchange, not four).
            let _ = send.stream().finish();
        }
        if header.protocol == Protocol::Http {
            return Ok(Tunnel {
                send: send.done(),
                recv,
            });
        }
        let status = read_status(&mut recv).await?;
        if status.code.is_ok() {
            return Ok(Tunnel {
                send: send.done(),
                recv,
            });
        }
        Err(OpenError::refused_by(&endpoint.node, &status))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::unreachable(
                "timeout",
                format!("{} did not answer within {timeout:?}", endpoint.node),
            ))
        })
}

/// The local service `target` names, and a slot in it, by the same admission
/// the inbound side applies, for a caller on this node.
fn admit_local<'c>(
    services: &'c HashMap<String, LocalService>,
    node: &str,
    target: &Target<'_>,
) -> Result<(&'c LocalService, Slot), OpenError> {
    let Some(local) = services.get(target.service) else {
        return Err(OpenError::unreachable(
            "unknown_service",
            "this node does not host the service",
        ));
    };
    let caller = Caller {
        node,
        source_service: target.source_service,
        // The listener's source service comes from this node's own config,
        // checked against its certificate when the config was validated.
        source_certified: true,
    };
    let slot = local.admit(&caller).map_err(|refused| match refused {
        Refused::AtCapacity { .. } | Refused::CallerAtCapacity { .. } => {
            OpenError::unreachable("overloaded", refused.to_string())
        }
        Refused::UncertifiedSource { .. } | Refused::NotAllowed { .. } => OpenError::Refused {
            reason: "unauthorized",
            text: refused.to_string(),
        },
    })?;
    Ok((local, slot))
}

async fn read_status(recv: &mut RecvStream) -> Result<StreamStatus, OpenError> {
    let broken = |e: &dyn std::fmt::Display| {
        OpenError::unreachable("connect_failed", format!("reading the status: {e}"))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mesh_proto::codec::encode;
    use mesh_proto::tunnel::{Protocol, RequestId};

    use super::{OpenError, Target, admit_local};
    use crate::proxy::{LocalService, test_service};

    fn target<'a>(service: &'a str, source: Option<&'a str>) -> Target<'a> {
        Target {
            service,
            source_service: source,
            request_id: RequestId(1),
            deadline: None,
        }
    }

    fn refused(r: Result<(&LocalService, crate::proxy::admission::Slot), OpenError>) -> OpenError {
        match r {
            Ok(_) => panic!("admitted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_local_endpoint_admits_by_the_serving_rules_and_says_whether_another_may_help() {
        // `db` allows service `web` only, one connection at most.
        let services = HashMap::from([("db".to_string(), test_service("db", &[], &["web"], 1))]);
        let e = refused(admit_local(&services, "n1", &target("cache", None)));
        assert_eq!(e.label(), "unknown_service");
        assert!(e.try_another(), "another node may host it");
        let e = refused(admit_local(&services, "n1", &target("db", Some("batch"))));
        assert!(matches!(e, OpenError::Refused { .. }), "{e:?}");
        assert_eq!(e.label(), "unauthorized");
        assert!(!e.try_another(), "every endpoint would refuse this caller");
        let held = admit_local(&services, "n1", &target("db", Some("web")));
        assert!(held.is_ok());
        let e = refused(admit_local(&services, "n1", &target("db", Some("web"))));
        assert_eq!(e.label(), "overloaded");
        assert!(e.try_another(), "another endpoint may have room");
        drop(held);
        assert!(admit_local(&services, "n1", &target("db", Some("web"))).is_ok());
    }

    #[test]
    fn a_header_the_wire_format_cannot_carry_is_final_and_not_a_refusal() {
        let long = "s".repeat(100_000);
        let header = target(&long, None).header(Protocol::Http);
        let e = OpenError::from(encode(&header).unwrap_err());
        assert_eq!(e.label(), "bad_header");
        assert!(!e.try_another());
        assert!(
            !matches!(e, OpenError::Refused { .. }),
            "an HTTP listener answers it 500, not 403"
        );
        assert!(
            e.to_string()
                .starts_with("the stream header cannot be sent"),
            "{e}"
        );
    }
}
