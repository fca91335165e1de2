//! Traffic generators: requests to a service through the listeners of the running
//! nodes, at a set rate, each on a fresh connection (so every request exercises
//! endpoint choice, the tunnel setup and, on failure, the retries). Every request
//! is recorded — when, through which node, served by which node, how long, and
//! how it failed — for the live status line and the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::scenario::BackendKind;

/// Longest a request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests in flight per generator; beyond, a tick is counted as failed.
pub const MAX_IN_FLIGHT: usize = 2_000;

/// One request's result.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it started, since the run's start.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// The service.
    pub service: String,
    /// The node whose listener it went through.
    pub via: String,
    /// The node whose backend answered.
    pub served_by: Option<String>,
    /// The service whose backend answered (HTTP; a route may send a request
    /// to another service than the one its listener leads to).
    pub served_service: Option<String>,
    /// `None` if it succeeded, else why not.
    pub failure: Option<&'static str>,
}

/// Everything recorded so far.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Vec<Record>>,
}

impl Stats {
    fn push(&self, r: Record) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// A copy of every record.
    pub fn records(&self) -> Vec<Record> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Summary of the records that started in `[from, to)`.
    pub fn summary(&self, from: Duration, to: Duration) -> Summary {
        let records = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Summary::of(records.iter().filter(|r| r.at >= from && r.at < to))
    }
}

/// Counts and latency percentiles of a set of requests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Requests.
    pub sent: u64,
    /// Successful ones.
    pub ok: u64,
    /// Failed ones.
    pub failed: u64,
    /// Failures by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Successful requests by serving node.
    pub served_by: BTreeMap<String, u64>,
    /// Successful HTTP requests by the service that served them (a route's
    /// split shows here).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub served_service: BTreeMap<String, u64>,
    /// Latency percentiles of successful requests, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `records`.
    pub fn of<'a>(records: impl Iterator<Item = &'a Record>) -> Summary {
        let mut s = Summary::default();
        let mut hist = Histogram::<u64>::new(3).ok();
        for r in records {
            s.sent += 1;
            match r.failure {
                None => {
                    s.ok += 1;
                    if let Some(h) = hist.as_mut() {
                        let _ = h.record(r.latency.as_micros().max(1) as u64);
                    }
                    if let Some(n) = &r.served_by {
                        *s.served_by.entry(n.clone()).or_default() += 1;
                    }
                    if let Some(svc) = &r.served_service {
                        *s.served_service.entry(svc.clone()).or_default() += 1;
                    }
                }
                Some(why) => {
                    s.failed += 1;
                    *s.failed_by_reason.entry(why.to_string()).or_default() += 1;
                }
            }
        }
        if let Some(h) = hist.filter(|h| !h.is_empty()) {
            let ms = |us: u64| us as f64 / 1000.0;
            s.p50_ms = ms(h.value_at_quantile(0.50));
            s.p90_ms = ms(h.value_at_quantile(0.90));
            s.p99_ms = ms(h.value_at_quantile(0.99));
            s.max_ms = ms(h.max());
        }
        s
    }

    /// Failed share, percent.
    pub fn failed_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / self.sent as f64
        }
    }
}

/// A running generator.
#[derive(Debug)]
pub struct Generator {
    task: JoinHandle<()>,
}

impl Generator {
    /// Sends `rate` requests per second to `service`, spread round robin over the
    /// current `targets` (listener node, address).
    pub fn start(
        service: String,
        kind: BackendKind,
        rate: f64,
        targets: watch::Receiver<Vec<(String, SocketAddr)>>,
        stats: Arc<Stats>,
        epoch: Instant,
    ) -> Generator {
        let task = tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut next = 0usize;
            loop {
                tick.tick().await;
                let targets = targets.borrow().clone();
                if targets.is_empty() {
                    continue;
                }
                let (via, addr) = targets[next % targets.len()].clone();
                next = next.wrapping_add(1);
                let at = epoch.elapsed();
                if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    stats.push(Record {
                        at,
                        latency: Duration::ZERO,
                        service: service.clone(),
                        via,
                        served_by: None,
                        served_service: None,
                        failure: Some("generator_saturated"),
                    });
                    continue;
                }
                in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let stats = stats.clone();
                let service = service.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = tokio::time::timeout(REQUEST_TIMEOUT, request(kind, addr)).await;
                    let (served, failure) = match result {
                        Ok(Ok(body)) => (Some(body), None),
                        Ok(Err(why)) => (None, Some(why)),
                        Err(_) => (None, Some("timeout")),
                    };
                    // `<node>` (echo) or `<node> <service>` (HTTP).
                    let (served_by, served_service) = match served {
                        Some(body) => match body.split_once(' ') {
                            Some((node, svc)) => (Some(node.to_string()), Some(svc.to_string())),
                            None => (Some(body), None),
                        },
                        None => (None, None),
                    };
                    stats.push(Record {
                        at,
                        latency: started.elapsed(),
                        service,
                        via,
                        served_by,
                        served_service,
                        failure,
                    });
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        Generator { task }
    }

    /// Stops sending (requests in flight still finish and are recorded).
    pub fn stop(self) {
        self.task.abort();
    }
}

fn classify(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect_refused",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::UnexpectedEof => "closed",
        _ => "io_error",
    }
}

/// One request; returns the serving node's name.
async fn request(kind: BackendKind, addr: SocketAddr) -> Result<String, &'static str> {
    let stream = TcpStream::connect(addr).await.map_err(|e| classify(&e))?;
    let _ = stream.set_nodelay(true);
    match kind {
        BackendKind::Echo => {
            let mut stream = BufReader::new(stream);
            let mut node = String::new();
            let n = stream
                .read_line(&mut node)
                .await
                .map_err(|e| classify(&e))?;
            if n == 0 {
                // The listener closed the connection: no endpoint could be reached.
                return Err("closed");
            }
            stream
                .get_mut()
                .write_all(b"ping\n")
                .await
                .map_err(|e| classify(&e))?;
            let mut back = [0u8; 5];
            stream
                .read_exact(&mut back)
                .await
                .map_err(|e| classify(&e))?;
            if &back != b"ping\n" {
                return Err("corrupted");
            }
            Ok(node.trim().to_string())
        }
        BackendKind::Http => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .map_err(|_| "closed")?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/")
                .header(hyper::header::HOST, "sim")
                .body(Empty::new())
                .map_err(|_| "bad_request")?;
            let resp = sender.send_request(req).await.map_err(|_| "closed")?;
            if !resp.status().is_success() {
                return Err(if resp.status().is_server_error() {
                    "http_5xx"
                } else {
                    "http_other"
                });
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| "closed")?
                .to_bytes();
            Ok(String::from_utf8_lossy(&body).trim().to_string())
        }
    }
}
