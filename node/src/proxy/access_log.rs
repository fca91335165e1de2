//! HTTP access logs: one JSON object per line per request, written by a task of
//! its own so a slow disk never holds up a request. When the writer falls behind
//! by more than [`QUEUE`] lines, lines are dropped and counted
//! (`shoal_listener_connection_failures_total{reason="access_log_full"}`).

use std::path::PathBuf;

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::config::AccessLog;

/// Lines that may wait for the writer.
pub const QUEUE: usize = 8192;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    /// The listener.
    pub listener: &'a str,
    /// The request id (also sent upstream and back as `x-request-id`).
    pub request_id: &'a str,
    /// The client's address.
    pub client: String,
    /// HTTP version of the client's request.
    pub protocol: &'a str,
    /// The method.
    pub method: &'a str,
    /// The authority (`Host` or `:authority`).
    pub authority: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The route document that matched, `-` if none.
    pub route: &'a str,
    /// The destination service, `-` if none.
    pub service: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// The node that answered, `-` if none did.
    pub upstream_node: &'a str,
    /// That node's address (its QUIC address, or the local backend's).
    pub upstream_addr: &'a str,
    /// Tries made.
    pub attempts: u32,
    /// The request body size the client declared (`Content-Length`), if any.
    pub request_bytes: Option<u64>,
    /// The response body size the upstream declared, if any.
    pub response_bytes: Option<u64>,
    /// Time to the response head, in milliseconds.
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
    pub fn log(&self, line: &Line<'_>) -> bool {
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
