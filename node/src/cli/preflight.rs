//! `shoal check --pre`: what would stop a node from starting or joining,
//! found before it starts (like `linkerd check --pre`) — its ports free, its
//! certificate far from expiry, its key private, and each seed resolving and
//! answering an mTLS handshake with this node's own certificate (so a seed
//! that is the admin port, or a node of another CA, shows here, named), and
//! each seed's clock close to this machine's ([`clock`]).

mod clock;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use shoal_node::config::Config;
use shoal_node::endpoint::{Accepted, MeshEndpoint, SocketSource, Use};
use shoal_node::metrics::Metrics;
use shoal_node::tls::{TlsFiles, TlsState};

/// How long a seed has to answer the handshake.
const SEED_TIMEOUT: Duration = Duration::from_secs(3);
/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING_DAYS: i64 = 7;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    /// `ok`, `warn` or `fail`.
    pub level: &'static str,
    /// The config field checked.
    pub field: String,
    /// What was found.
    pub detail: String,
}

impl Finding {
    fn new(level: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding {
            level,
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// Runs every check on `config`, prints them (or JSON) and exits 1 if one
/// failed.
pub(crate) async fn preflight(config: &Config, json: bool) -> Result<ExitCode> {
    let mut findings = ports(config).await;
    findings.extend(certificate(config));
    findings.extend(key_mode(&config.tls.key));
    findings.extend(seeds(config).await);
    if json {
        say!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for f in &findings {
            say!("{:<5} {}: {}", f.level, f.field, f.detail);
        }
    }
    let failed = findings.iter().filter(|f| f.level == "fail").count();
    if failed > 0 {
        eprintln!("shoal: {failed} check(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether each address the node binds is free now.
async fn ports(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let taken = |field: &str, addr: SocketAddr, e: std::io::Error| {
        Finding::new(
            "fail",
            field,
            format!(
                "{addr} cannot be bound: {e} (is a node already running, or another program on this port?)"
            ),
        )
    };
    let free = |field: &str, addr: SocketAddr, proto: &str| {
        Finding::new("ok", field, format!("{addr}/{proto} is free"))
    };
    out.push(match std::net::UdpSocket::bind(config.node.listen) {
        Ok(_) => free("node.listen", config.node.listen, "udp"),
        Err(e) => taken("node.listen", config.node.listen, e),
    });
    out.push(
        match tokio::net::TcpListener::bind(config.node.admin).await {
            Ok(_) => free("node.admin", config.node.admin, "tcp"),
            Err(e) => taken("node.admin", config.node.admin, e),
        },
    );
    for (i, l) in config.listeners.iter().enumerate() {
        let field = format!("listener[{i}].bind");
        out.push(match tokio::net::TcpListener::bind(l.bind).await {
            Ok(_) => free(&field, l.bind, "tcp"),
            Err(e) => taken(&field, l.bind, e),
        });
    }
    out
}

/// How long the certificate has left.
fn certificate(config: &Config) -> Vec<Finding> {
    let left = config.tls.cert_not_after - time::OffsetDateTime::now_utc();
    let days = left.whole_days();
    let level = if left.is_negative() {
        "fail"
    } else if days < EXPIRY_WARNING_DAYS {
        "warn"
    } else {
        "ok"
    };
    let renew = if level == "ok" {
        ""
    } else {
        " — renew it: shoal-pki issue --renew"
    };
    vec![Finding::new(
        level,
        "tls.cert",
        format!(
            "node {} of {}, valid until {} ({days} days left){renew}",
            config.tls.node_name, config.tls.trust_domain, config.tls.cert_not_after
        ),
    )]
}

/// Whether the private key can be read by other users.
fn key_mode(key: &std::path::Path) -> Vec<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let finding = match std::fs::metadata(key) {
        Err(e) => Finding::new("fail", "tls.key", format!("{}: {e}", key.display())),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 == 0 {
                Finding::new(
                    "ok",
                    "tls.key",
                    format!("mode {mode:04o}: only its owner can read it"),
                )
            } else {
                Finding::new(
                    "warn",
                    "tls.key",
                    format!(
                        "mode {mode:04o}: readable by other users; anyone who reads it can act as this node (chmod 600 {})",
                        key.display()
                    ),
                )
            }
        }
    };
    vec![finding]
}

/// Each seed: resolved, and answering a handshake with this node's certificate.
async fn seeds(config: &Config) -> Vec<Finding> {
    if config.node.seeds.is_empty() {
        return vec![Finding::new(
            "warn",
            "node.seeds",
            "none: this node only joins when others seed it (or --seed is given)",
        )];
    }
    let (endpoint, mut accepted) = match client(config) {
        Ok(e) => e,
        Err(e) => return vec![Finding::new("fail", "tls", format!("{e:#}"))],
    };
    let mut out = Vec::new();
    for (i, seed) in config.node.seeds.iter().enumerate() {
        let field = format!("node.seeds[{i}]");
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(seed.as_str()).await {
            Ok(a) => a.collect(),
            Err(e) => {
                out.push(Finding::new(
                    "fail",
                    field,
                    format!("{seed} does not resolve: {e}"),
                ));
                continue;
            }
        };
        for addr in addrs {
            let answered = handshake(&endpoint, &field, seed, addr).await;
            let ok = answered.level == "ok";
            out.push(answered);
            if ok {
                let asked = clock::ask_time(
                    &endpoint,
                    &mut accepted.gossip,
                    addr,
                    &config.node.cluster,
                    SEED_TIMEOUT,
                )
                .await;
                out.push(clock::judge(
                    &field,
                    addr,
                    asked,
                    config.gossip.max_clock_skew,
                ));
            }
        }
    }
    endpoint.close();
    out
}

/// An endpoint with this node's own certificate, on a free port, and where
/// it hands the connections it accepts.
fn client(config: &Config) -> Result<(Arc<MeshEndpoint>, Accepted)> {
    let metrics = Arc::new(Metrics::new());
    let files = TlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        ca: config.tls.ca.clone(),
    };
    let tls = TlsState::load(&files, metrics.clone())?;
    let any: SocketAddr = if config.node.listen.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    Ok(MeshEndpoint::new(SocketSource::Bind(any), tls, metrics)?)
}

/// The outcome of one handshake with a seed's address.
async fn handshake(
    endpoint: &Arc<MeshEndpoint>,
    field: &str,
    seed: &str,
    addr: SocketAddr,
) -> Finding {
    match tokio::time::timeout(SEED_TIMEOUT, endpoint.connect(addr, Use::Tunnel, None)).await {
        Ok(Ok(conn)) => {
            let peer = shoal_node::tls::peer_identity(conn.peer_identity())
                .and_then(|p| p.node)
                .unwrap_or_else(|| "?".to_string());
            conn.close(0u32.into(), b"preflight");
            Finding::new(
                "ok",
                field,
                format!("{seed} ({addr}) answered: node {peer}, certificate of this mesh's CA"),
            )
        }
        Ok(Err(e)) => Finding::new("fail", field, format!("{seed} ({addr}): {e}")),
        Err(_) => Finding::new(
            "fail",
            field,
            format!(
                "{seed} ({addr}) did not answer within {SEED_TIMEOUT:?}: is it a node's QUIC port (its node.listen, not node.admin), and is UDP open to it?"
            ),
        ),
    }
}
