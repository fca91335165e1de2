//! HTTP access logs: one JSON object per line per request, completed when the
//! response has ended (so its byte counts and duration are what happened) and
//! written by a task of its own so a slow disk never holds up a request. When the writer falls behind
//! by more than [`QUEUE`] lines, lines are dropped and counted
//! (`shoal_listener_connection_failures_total{reason="access_log_full"}`).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::body::{Body, BoxError};
use crate::config::AccessLog;
use crate::metrics::{ListenerReasonLabels, Metrics};

/// Lines that may wait for the writer.
pub const QUEUE: usize = 8192;

/// One request, as logged. Written when the response has ended — its body sent
/// to the end, or abandoned (the client went away, the upstream failed) — so the
/// byte counts are what actually moved.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    /// The listener.
    pub listener: String,
    /// The request id (also sent upstream and back as `x-request-id`).
    pub request_id: String,
    /// The client's address.
    pub client: String,
    /// HTTP version of the client's request.
    pub protocol: &'static str,
    /// The method.
    pub method: String,
    /// The authority (`Host` or `:authority`).
    pub authority: String,
    /// The path, without the query.
    pub path: String,
    /// The route document that matched, `-` if none.
    pub route: String,
    /// The destination service, `-` if none.
    pub service: String,
    /// The status sent to the client.
    pub status: u16,
    /// The node that answered, `-` if none did.
    pub upstream_node: String,
    /// That node's address (its QUIC address, or the local backend's).
    pub upstream_addr: String,
    /// Tries made.
    pub attempts: u32,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// Whether the response body was sent to its end (`false`: the client went
    /// away or the upstream failed mid-body).
    pub complete: bool,
    /// Time to the response head, in milliseconds.
    pub head_ms: f64,
    /// Time to the end of the response (or its abandonment), in milliseconds.
    pub duration_ms: f64,
}

/// A handle to a running access-log writer.
#[derive(Debug, Clone)]
pub struct Writer(mpsc::Sender<String>);

impl Writer {
    /// Opens `target` and starts its writer task.
    pub async fn start(target: &AccessLog) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<String>(QUEUE);
        match target {
            AccessLog::Stdout => {
                tokio::spawn(write_lines(rx, tokio::io::stdout(), None));
            }
            AccessLog::File(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                tokio::spawn(write_lines(rx, file, Some(path.clone())));
            }
        }
        Ok(Writer(tx))
    }

    /// Queues one line; `false` if the queue is full and the line was dropped.
    pub fn log(&self, line: &Line) -> bool {
        match serde_json::to_string(line) {
            Ok(text) => self.0.try_send(text).is_ok(),
            Err(_) => false,
        }
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<String>,
    out: W,
    path: Option<PathBuf>,
) {
    let mut out = BufWriter::new(out);
    let mut warned = false;
    while let Some(line) = rx.recv().await {
        let mut result = write_one(&mut out, &line).await;
        // Write what else is queued, then flush once.
        while result.is_ok()
            && let Ok(more) = rx.try_recv()
        {
            result = write_one(&mut out, &more).await;
        }
        if result.is_ok() {
            result = out.flush().await;
        }
        if let Err(e) = result
            && !warned
        {
            warned = true;
            tracing::warn!(path = ?path, error = %e, "cannot write the access log");
        }
    }
}

async fn write_one<W: AsyncWrite + Unpin>(out: &mut W, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await
}

/// `body`, adding the bytes of its data frames to `count` as they are read.
pub fn count_body(body: Body, count: Arc<AtomicU64>) -> Body {
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
    .boxed_unsync()
}

/// The access-log line of one request, waiting for its response to end.
#[derive(Debug)]
pub struct LoggedBody {
    writer: Writer,
    line: Line,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl LoggedBody {
    /// A line to complete and write when the response body ends; `request_bytes`
    /// is the request body's running count ([`count_body`]).
    pub fn new(
        writer: Writer,
        line: Line,
        started: Instant,
        request_bytes: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            writer,
            line,
            started,
            request_bytes,
            metrics,
        }
    }

    /// The response body `body`, counted, writing the line when it ends.
    pub fn wrap(self, body: Body) -> Body {
        Counted {
            inner: body,
            pending: Some(self),
        }
        .boxed_unsync()
    }

    fn write(mut self, complete: bool) {
        self.line.complete = complete;
        self.line.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        self.line.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        if !self.writer.log(&self.line) {
            self.metrics
                .proxy
                .listener_failures
                .get_or_create(&ListenerReasonLabels {
                    listener: self.line.listener.clone(),
                    reason: "access_log_full",
                })
                .inc();
        }
    }
}

/// A response body that counts what it passes on and writes its request's line
/// when it ends, fails, or is dropped (the client went away).
struct Counted {
    inner: Body,
    pending: Option<LoggedBody>,
}

impl Counted {
    fn finish(&mut self, complete: bool) {
        if let Some(p) = self.pending.take() {
            p.write(complete);
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.line.response_bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let done = self.inner.is_end_stream();
        self.finish(done);
    }
}
