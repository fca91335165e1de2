//! The receiving end of tunnels: every bidirectional stream on a
//! `shoal-tunnel/2` connection starts with a `StreamHeader`. This node checks it —
//! the caller's identity comes from its certificate, never from what it claims.
//! A TCP stream is answered with a `StreamStatus` and, on `ok`, spliced to the
//! local backend. An HTTP request stream carries its request right after the
//! header (the caller does not wait for a status): a refusal is a "not
//! forwarded" part, and an admitted request is relayed over a pooled keep-alive
//! backend connection ([`super::inbound_http`]).
//!
//! Checks, in order (the first that fails decides the status):
//! 1. the header is well-formed, of this protocol version, within its size limit
//!    (otherwise the stream is reset; other streams of the connection go on);
//! 2. the node is not draining (`draining`);
//! 3. the target service is hosted here (`unknown-service`);
//! 4. the service admits the caller ([`LocalService::admit`], the same checks
//!    a local listener's connection passes): a claimed source service is named
//!    in the caller's certificate, and the service's allow-list admits the
//!    caller (`unauthorized`, logged); the service is under its connection
//!    limit (`overloaded`);
//! 5. (HTTP) the request head follows, well-formed and in time (otherwise the
//!    stream is reset);
//! 6. the backend accepts a TCP connection in time, or (HTTP) a pooled keep-alive
//!    connection is ready (`backend-refused`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mesh_proto::codec::{FRAME_HEADER_LEN, decode_exact, encode, frame_len};
use mesh_proto::exchange::{Part, RequestHead};
use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader, StreamStatus};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use quinn::{RecvStream, SendStream};
use shoal_pki::CertIdentity;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::admission::{Caller, Slot};
use super::exchange::{self, PartReader, ReadError};
use super::splice::{self, Progress, RESET_CODE, Side};
use super::{HEADER_TIMEOUT, LocalService, ProxyContext, inbound_http};
use crate::endpoint::{INITIAL_TUNNEL_STREAMS, Inbound, grow_stream_limit};
use crate::metrics::ServiceReasonLabels;

/// Serves inbound tunnel connections until `conns` closes (a restarted run
/// takes over the receiver).
pub async fn serve(
    conns: Arc<tokio::sync::Mutex<mpsc::Receiver<Inbound>>>,
    ctx: Arc<ProxyContext>,
) {
    let mut conns = conns.lock().await;
    while let Some(inbound) = conns.recv().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let peer = Arc::new(inbound.peer);
            let open = Arc::new(AtomicU32::new(0));
            let mut limit = INITIAL_TUNNEL_STREAMS;
            while let Ok((send, recv)) = inbound.conn.accept_bi().await {
                let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                limit = grow_stream_limit(
                    &inbound.conn,
                    now_open,
                    limit,
                    ctx.max_streams_per_connection,
                );
                let ctx = ctx.clone();
                let peer = peer.clone();
                let open = open.clone();
                // Boxed: a stream's future is kilobytes, and spawning moves a
                // future by value through several frames into its task.
                let serving = Box::pin(stream(ctx, peer, send, recv));
                tokio::spawn(async move {
                    serving.await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    }
}

/// Reads one stream header. `Err` carries the refusal label.
async fn read_header(recv: &mut RecvStream) -> Result<StreamHeader, &'static str> {
    let mut buf = vec![0u8; FRAME_HEADER_LEN];
    let read = async {
        recv.read_exact(&mut buf)
            .await
            .map_err(|_| "truncated_header")?;
        let total = frame_len::<StreamHeader>(&buf).map_err(|_| "bad_header")?;
        buf.resize(total, 0);
        recv.read_exact(&mut buf[FRAME_HEADER_LEN..])
            .await
            .map_err(|_| "truncated_header")?;
        decode_exact::<StreamHeader>(&buf).map_err(|_| "bad_header")
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .unwrap_or(Err("header_timeout"))
}

/// A tunnel stream past its header: who calls (by its certificate), and what
/// it asked for.
struct Asked<'a> {
    ctx: &'a ProxyContext,
    caller: String,
    header: StreamHeader,
}

impl Asked<'_> {
    fn service(&self) -> &str {
        &self.header.target_service
    }

    /// Answers `code` with `reason` — a status for a TCP stream, a "not
    /// forwarded" part for an HTTP request — counted and logged, and ends the
    /// stream.
    async fn refuse(&self, send: &mut SendStream, code: StatusCode, reason: String) {
        answer_refusal(
            self.ctx,
            (self.service(), self.header.protocol),
            &self.caller,
            self.header.request_id,
            send,
            code,
            reason,
        )
        .await;
    }
}

/// What a stream may spend: the caller's remaining time budget on this host's
/// clock (work is not started, and is cut off, once the caller has given up
/// anyway), and so how long the backend may take to accept.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Option<tokio::time::Instant>,
    connect_timeout: Duration,
}

impl Budget {
    /// How long the backend's response head may be awaited: the caller's
    /// deadline (whatever it sent: up to 49 days), at most the service's
    /// `response_timeout` from now.
    fn head_deadline(&self, response_timeout: Duration) -> Option<tokio::time::Instant> {
        let cap = tokio::time::Instant::now() + response_timeout;
        Some(self.deadline.map_or(cap, |d| d.min(cap)))
    }

    fn of(header: &StreamHeader, local: &LocalService) -> Budget {
        let now = tokio::time::Instant::now();
        let deadline = header
            .deadline_ms
            .map(|ms| now + Duration::from_millis(u64::from(ms)));
        let connect_timeout = deadline.map_or(local.config.connect_timeout, |d| {
            local
                .config
                .connect_timeout
                .min(d.saturating_duration_since(now))
        });
        Budget {
            deadline,
            connect_timeout,
        }
    }
}

/// The decision on a well-formed header, before any I/O: the local service and
/// a slot in it, or the status that refuses the stream and why. The caller is
/// `peer` (its certificate); a source service it claims counts only if the
/// certificate names it.
fn verdict<'s>(
    draining: bool,
    services: &'s std::collections::HashMap<String, LocalService>,
    peer: &CertIdentity,
    header: &StreamHeader,
) -> Result<(&'s LocalService, Slot), (StatusCode, String)> {
    if draining {
        return Err((StatusCode::Draining, "this node is draining".to_string()));
    }
    let service = &header.target_service;
    let Some(local) = services.get(service) else {
        return Err((
            StatusCode::UnknownService,
            format!("service {service:?} is not hosted on this node"),
        ));
    };
    let claimed = header.source_service.as_deref();
    let caller = Caller {
        node: peer.node.as_deref().unwrap_or_default(),
        source_service: claimed,
        source_certified: claimed.is_none_or(|src| peer.allows_service(src)),
    };
    local
        .admit(&caller)
        .map(|slot| (local, slot))
        .map_err(|refused| (refused.status(), refused.to_string()))
}

async fn stream(
    ctx: Arc<ProxyContext>,
    peer: Arc<CertIdentity>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let _in_flight = ctx.endpoint.stream_guard();
    let caller = peer.node.clone().unwrap_or_default();
    let header = match read_header(&mut recv).await {
        Ok(h) => h,
        Err(reason) => {
            count_refusal(&ctx, "-", reason);
            tracing::debug!(%caller, reason, "refused a tunnel stream without a valid header");
            let _ = recv.stop(RESET_CODE);
            let _ = send.reset(RESET_CODE);
            return;
        }
    };
    let services = ctx.services();
    let verdict = verdict(ctx.is_draining(), &services, &peer, &header);
    let asked = Asked {
        ctx: &ctx,
        caller,
        header,
    };
    let (local, slot) = match verdict {
        Ok(admitted) => admitted,
        Err((code, reason)) => return asked.refuse(&mut send, code, reason).await,
    };
    let budget = Budget::of(&asked.header, local);
    if asked.header.protocol == Protocol::Http {
        http_stream(&asked, local, budget, send, recv, slot).await;
    } else {
        tcp_stream(&asked, local, budget, send, recv, slot).await;
    }
}

/// A TCP stream: a new connection to the backend, `ok`, then the bytes spliced
/// both ways until either side ends.
async fn tcp_stream(
    asked: &Asked<'_>,
    local: &LocalService,
    budget: Budget,
    mut send: SendStream,
    recv: RecvStream,
    _slot: Slot,
) {
    let address = local.config.address;
    let timeout = budget.connect_timeout;
    let backend = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("backend {address} refused: {e}");
            return asked
                .refuse(&mut send, StatusCode::BackendRefused, reason)
                .await;
        }
        Err(_) => {
            let reason = format!("backend {address} did not accept within {timeout:?}");
            return asked
                .refuse(&mut send, StatusCode::BackendRefused, reason)
                .await;
        }
    };
    let _ = backend.set_nodelay(true);
    let Some(accepted) = accept(local, &mut send).await else {
        return;
    };
    let progress = Arc::new(Progress::counting(
        accepted.upstream.clone(),
        accepted.downstream.clone(),
    ));
    tracing::trace!(caller = %asked.caller, service = %asked.service(), request_id = %asked.header.request_id, "tunnel stream accepted");
    let totals = splice::splice(
        Side::quic(send, recv),
        Side::tcp(backend),
        local.config.idle_timeout,
        budget.deadline,
        progress,
    )
    .await;
    tracing::debug!(caller = %asked.caller, service = %asked.service(), request_id = %asked.header.request_id, from_caller = totals.a_to_b, to_caller = totals.b_to_a, aborted = totals.aborted, "tunnel stream ended");
}

/// An HTTP request stream: its request head (sent by the caller right after
/// the stream header, without waiting), a pooled (or new) keep-alive
/// connection to the backend, then the exchange relayed by [`inbound_http`].
/// Without a backend connection, the caller is told nothing was forwarded.
async fn http_stream(
    asked: &Asked<'_>,
    local: &LocalService,
    budget: Budget,
    mut send: SendStream,
    recv: RecvStream,
    slot: Slot,
) {
    let (caller, service) = (&asked.caller, asked.service());
    let request_id = asked.header.request_id;
    let mut reader = PartReader::new(recv);
    let head = match read_request_head(&mut reader).await {
        Ok(head) => head,
        Err(reason) => {
            count_refusal(asked.ctx, service, reason);
            tracing::debug!(%caller, %service, %request_id, reason, "refused a tunnelled HTTP request without a valid head");
            reader.stop(RESET_CODE);
            let _ = send.reset(RESET_CODE);
            return;
        }
    };
    let (sender, connection) = match local.pool.take() {
        Some(s) => (s, "reused"),
        None => match local.pool.connect(budget.connect_timeout).await {
            Ok(s) => (s, "new"),
            Err(e) => {
                let reason = format!("backend {} refused: {e}", local.config.address);
                return asked
                    .refuse(&mut send, StatusCode::BackendRefused, reason)
                    .await;
            }
        },
    };
    let accepted = accepted(local);
    let counters = (accepted.upstream.clone(), accepted.downstream.clone());
    let keep: Arc<dyn Send + Sync> = Arc::new((slot, accepted));
    let counted = inbound_http::Reuse {
        reused: connection == "reused",
        new: local.counters.http_new.clone(),
        reused_count: local.counters.http_reused.clone(),
    };
    tracing::trace!(%caller, %service, %request_id, connection, "tunnelled HTTP request accepted");
    let relay = inbound_http::Relay {
        pool: local.pool.clone(),
        sender,
        reuse: counted,
        connect_timeout: local.config.connect_timeout,
        counters,
        keep,
        deadline: budget.head_deadline(local.config.response_timeout),
        idle_timeout: local.config.idle_timeout,
    };
    let stream = inbound_http::Stream { head, reader, send };
    match inbound_http::serve(relay, stream).await {
        inbound_http::Ended::Done => {}
        inbound_http::Ended::NotForwarded(reason) => {
            count_refusal(
                asked.ctx,
                service,
                StatusCode::BackendRefused.metric_label(),
            );
            tracing::debug!(%caller, %service, %request_id, %reason, "tunnelled HTTP request not forwarded");
        }
        inbound_http::Ended::Idle => {
            tracing::debug!(%caller, %service, %request_id, idle_timeout = ?local.config.idle_timeout, "tunnelled HTTP exchange idle past the service's idle_timeout; dropped");
        }
        inbound_http::Ended::Failed(e) => {
            tracing::debug!(%caller, %service, %request_id, error = %e, "tunnelled HTTP request ended with an error");
        }
    }
}

/// Reads the request head that follows the stream header. `Err` carries the
/// refusal label.
async fn read_request_head(reader: &mut PartReader) -> Result<RequestHead, &'static str> {
    match tokio::time::timeout(HEADER_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Part::RequestHead(head)))) => Ok(head),
        Ok(Ok(Some(_))) | Ok(Err(ReadError::Part(_))) => Err("bad_request_head"),
        Ok(Ok(None)) | Ok(Err(_)) => Err("truncated_request_head"),
        Err(_) => Err("header_timeout"),
    }
}

/// An accepted stream's metrics: counted in `shoal_inbound_streams_total`, open
/// in `shoal_inbound_active_streams` until dropped, and its byte counters.
struct Accepted {
    active: Gauge,
    upstream: Counter,
    downstream: Counter,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Answers `ok` on `send` (a TCP stream) and counts the stream as accepted;
/// `None` if the caller is gone.
async fn accept(local: &LocalService, send: &mut SendStream) -> Option<Accepted> {
    let ok = encode(&StreamStatus::ok()).ok()?;
    send.write_all(&ok).await.ok()?;
    Some(accepted(local))
}

/// Counts a stream as accepted.
fn accepted(local: &LocalService) -> Accepted {
    let c = &local.counters;
    c.streams.inc();
    c.active.inc();
    Accepted {
        active: c.active.clone(),
        upstream: c.upstream.clone(),
        downstream: c.downstream.clone(),
    }
}

/// Closes pooled backend connections idle for longer than their service's
/// `http_idle_timeout`, every second, until the node stops.
pub async fn reap_pools(ctx: Arc<ProxyContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for local in ctx.services().values() {
            local.pool.reap();
        }
    }
}

/// Counts a refused stream of `service` (`-` when not hosted here) by `reason`.
fn count_refusal(ctx: &ProxyContext, service: &str, reason: &'static str) {
    ctx.metrics
        .inbound
        .refusals
        .get_or_create(&ServiceReasonLabels {
            service: if ctx.services().contains_key(service) {
                service.to_string()
            } else {
                "-".to_string()
            },
            reason,
        })
        .inc();
}

async fn answer_refusal(
    ctx: &ProxyContext,
    (service, protocol): (&str, Protocol),
    caller: &str,
    request_id: RequestId,
    send: &mut SendStream,
    code: StatusCode,
    reason: String,
) {
    count_refusal(ctx, service, code.metric_label());
    if code == StatusCode::Unauthorized {
        tracing::warn!(%caller, %service, %request_id, %reason, "refused an unauthorized caller");
    } else {
        tracing::debug!(%caller, %service, %request_id, %reason, status = %code, "refused a tunnel stream");
    }
    let status = StreamStatus::new(code, reason);
    match protocol {
        Protocol::Tcp => {
            if let Ok(frame) = encode(&status) {
                let _ = send.write_all(&frame).await;
            }
        }
        Protocol::Http => {
            let _ = exchange::write_part(send, &Part::NotForwarded(status)).await;
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mesh_proto::tunnel::{Protocol, RequestId, StatusCode, StreamHeader};
    use shoal_pki::CertIdentity;

    use super::verdict;
    use crate::proxy::{LocalService, test_service};

    /// The certificate identity of node `node` allowed to host `services`.
    fn peer(node: &str, services: &[&str]) -> CertIdentity {
        CertIdentity {
            trust_domain: Some("mesh.test".into()),
            node: Some(node.into()),
            operator: None,
            services: services.iter().map(|s| s.to_string()).collect(),
            ids: Vec::new(),
            is_ca: false,
        }
    }

    fn header(service: &str, source: Option<&str>) -> StreamHeader {
        StreamHeader {
            target_service: service.into(),
            source_service: source.map(str::to_string),
            protocol: Protocol::Tcp,
            request_id: RequestId(7),
            deadline_ms: None,
        }
    }

    /// `db`, allowing node `n2` and service `web`, two connections at most.
    fn services() -> HashMap<String, LocalService> {
        HashMap::from([("db".to_string(), test_service("db", &["n2"], &["web"], 2))])
    }

    fn refusal(
        r: Result<(&LocalService, crate::proxy::admission::Slot), (StatusCode, String)>,
    ) -> (StatusCode, String) {
        match r {
            Ok(_) => panic!("admitted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_draining_node_refuses_every_stream_first() {
        let (code, reason) = refusal(verdict(
            true,
            &services(),
            &peer("n2", &[]),
            &header("db", None),
        ));
        assert_eq!(code, StatusCode::Draining);
        assert_eq!(reason, "this node is draining");
    }

    #[test]
    fn a_service_not_hosted_here_is_named_in_the_refusal() {
        let (code, reason) = refusal(verdict(
            false,
            &services(),
            &peer("n2", &[]),
            &header("cache", None),
        ));
        assert_eq!(code, StatusCode::UnknownService);
        assert!(reason.contains("\"cache\""), "{reason}");
    }

    #[test]
    fn the_caller_is_who_its_certificate_says_not_what_it_claims() {
        let services = services();
        // n3 claims to act for `web`, which its certificate does not name.
        let (code, reason) = refusal(verdict(
            false,
            &services,
            &peer("n3", &[]),
            &header("db", Some("web")),
        ));
        assert_eq!(code, StatusCode::Unauthorized);
        assert!(reason.contains("web"), "{reason}");
        // With a certificate naming `web`, the same claim is admitted.
        assert!(
            verdict(
                false,
                &services,
                &peer("n3", &["web"]),
                &header("db", Some("web"))
            )
            .is_ok()
        );
        // n2 is on the allow-list by name; n4 is not, and claims nothing.
        assert!(verdict(false, &services, &peer("n2", &[]), &header("db", None)).is_ok());
        let (code, _) = refusal(verdict(
            false,
            &services,
            &peer("n4", &[]),
            &header("db", None),
        ));
        assert_eq!(code, StatusCode::Unauthorized);
    }

    #[test]
    fn admitted_streams_hold_their_slot_until_they_end() {
        let services = services();
        let n2 = peer("n2", &[]);
        let first = verdict(false, &services, &n2, &header("db", None));
        let second = verdict(false, &services, &n2, &header("db", None));
        assert!(first.is_ok() && second.is_ok());
        let (code, _) = refusal(verdict(false, &services, &n2, &header("db", None)));
        assert_eq!(code, StatusCode::Overloaded);
        drop(first);
        assert!(verdict(false, &services, &n2, &header("db", None)).is_ok());
    }
}
