//! The memory benchmark (`shoal-sim memory`): the resident memory of a `shoal run`
//! process idle, and while it carries many concurrent tunnelled connections.
//!
//! Two node processes: `n1` hosts an echo service (a backend in this process),
//! `n2` has a listener for it. The benchmark measures both nodes idle, then opens
//! `connections` TCP connections through `n2`'s listener — each completes one
//! echo round trip, so every tunnel is established — holds them all open, and
//! measures again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::mesh::{Mesh, Mode};
use crate::runner::converged;
use crate::scenario::{BackendKind, ListenerSpec, MeshSpec, ServiceSpec};

/// What the memory benchmark found.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Tunnelled connections held open.
    pub connections: usize,
    /// RSS of the caller node (listener) idle, MiB.
    pub caller_idle_mib: f64,
    /// RSS of the serving node idle, MiB.
    pub server_idle_mib: f64,
    /// RSS of the caller node with the connections open, MiB.
    pub caller_loaded_mib: f64,
    /// RSS of the serving node with the connections open, MiB.
    pub server_loaded_mib: f64,
    /// Time to open all connections (each with one round trip), seconds.
    pub open_s: f64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Raises this process's open-file limit (children inherit it).
fn raise_fd_limit(want: u64) -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_none_or(|c| c >= want) {
        return Ok(cur.current.unwrap_or(u64::MAX));
    }
    // Root may raise the hard limit too; otherwise stay under it.
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want.max(cur.maximum.unwrap_or(0))),
        },
    );
    if raised.is_ok() {
        return Ok(want);
    }
    let target = want.min(cur.maximum.unwrap_or(u64::MAX));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: cur.maximum,
        },
    )
    .context("raising the open-file limit")?;
    Ok(target)
}

async fn open_one(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let mut stream = BufReader::new(stream);
    let mut greeting = String::new();
    if stream.read_line(&mut greeting).await? == 0 {
        bail!("the listener closed the connection");
    }
    stream.get_mut().write_all(b"x").await?;
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await?;
    Ok(stream.into_inner())
}

/// Opens `count` connections to `addr` (each with one round trip), prints
/// `open <count> <seconds>` and holds them until stdin closes. Runs in a child
/// process, so that neither it nor the benchmark process needs file descriptors
/// for both ends of every connection.
pub async fn hold(addr: SocketAddr, count: usize) -> Result<()> {
    raise_fd_limit(count as u64 + 1024)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..count {
        // At most 256 connections being set up at once.
        while pending.len() >= 256 {
            if let Some(r) = pending.join_next().await {
                held.push(r??);
            }
        }
        pending.spawn(open_one(addr));
    }
    while let Some(r) = pending.join_next().await {
        held.push(r??);
    }
    println!("open {} {:.3}", held.len(), started.elapsed().as_secs_f64());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(held);
    Ok(())
}

/// The benchmark's mesh: `echo` on n1, reached through a listener on n2 that
/// may hold `connections`.
fn two_nodes(connections: usize) -> MeshSpec {
    MeshSpec {
        nodes: 2,
        zones: vec!["zone-a".into()],
        gossip_interval: Duration::from_millis(250),
        health_interval: Duration::from_secs(2),
        seeds: 1,
        services: vec![ServiceSpec {
            name: "echo".into(),
            kind: BackendKind::Echo,
            on: vec!["n1".into()],
            // One caller holds them all: the per-caller share (three quarters
            // by default) would refuse the last quarter.
            max_connections: Some(u32::try_from(connections).unwrap_or(u32::MAX).max(1)),
        }],
        listeners: vec![ListenerSpec {
            service: "echo".into(),
            on: vec!["n2".into()],
            lb: "round_robin".into(),
            protocol: Default::default(),
        }],
    }
}

/// Starts `me` as the connection holder of `connections` to `addr` and
/// waits until it has opened them all; returns it (it holds them until its
/// stdin closes) and how long the opening took, in seconds.
async fn hold_connections(
    me: &std::path::Path,
    addr: std::net::SocketAddr,
    connections: usize,
) -> Result<(tokio::process::Child, f64)> {
    let mut holder = tokio::process::Command::new(me)
        .args(["hold-connections", "--addr", &addr.to_string(), "--count"])
        .arg(connections.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the connection holder")?;
    let stdout = holder.stdout.take().context("no stdout from the holder")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(300), read)
        .await
        .context("the holder did not open its connections within 300 s")??;
    let open_s: f64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the holder said {line:?}"))?;
    Ok((holder, open_s))
}

/// Runs the memory benchmark with `shoal` processes; `me` is this program (run
/// again as the connection holder).
pub async fn run(
    shoal: std::path::PathBuf,
    me: std::path::PathBuf,
    connections: usize,
) -> Result<MemoryReport> {
    let limit = raise_fd_limit(connections as u64 + 1024)?;
    if limit < connections as u64 + 256 {
        bail!(
            "the open-file limit is {limit}; {connections} connections need about {}: raise the hard limit (ulimit -Hn)",
            connections + 256
        );
    }
    let mut mesh = Mesh::new(two_nodes(connections), Mode::Processes { shoal }, 1)?;
    mesh.add("n1").await?;
    mesh.add("n2").await?;
    let start = Instant::now();
    while !converged(&mesh, true).await {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the two nodes did not converge within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |m: &Mesh, n: &str| m.node_rss(n).unwrap_or(0);
    let (server_idle, caller_idle) = (rss(&mesh, "n1"), rss(&mesh, "n2"));
    let addr = *mesh
        .node("n2")
        .and_then(|n| n.listeners.get("echo"))
        .context("n2 has no listener")?;

    let (mut holder, open_s) = hold_connections(&me, addr, connections).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (server_loaded, caller_loaded) = (rss(&mesh, "n1"), rss(&mesh, "n2"));
    drop(holder.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), holder.wait()).await;
    mesh.shutdown().await;
    Ok(MemoryReport {
        connections,
        caller_idle_mib: mib(caller_idle),
        server_idle_mib: mib(server_idle),
        caller_loaded_mib: mib(caller_loaded),
        server_loaded_mib: mib(server_loaded),
        open_s,
    })
}
