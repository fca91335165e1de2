//! `shoal`: the per-host Shoal node. A thin main around [`shoal_node::Node`].

/// `println!` that ignores a closed stdout (`shoal ... | head` must not panic).
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use shoal_node::admin::{EndpointView, MemberView};
use shoal_node::config::{Config, DEFAULT_ADMIN, Overrides};
use shoal_node::{Node, StartOptions};

/// The per-host Shoal node: gossip membership, mTLS QUIC tunnels, proxying.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node until SIGTERM or Ctrl-C (SIGHUP re-reads the TLS files).
    Run {
        /// The config file (see docs/config.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A seed peer's QUIC address (repeatable; added to node.seeds).
        #[arg(long = "seed", value_name = "HOST:PORT")]
        seeds: Vec<String>,
        /// Override node.listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Override node.admin.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Worker threads: 1 runs everything on one thread (least CPU per byte);
        /// more spreads connections over cores.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_THREADS)]
        threads: usize,
    },
    /// Validate a config file (and the files it names) without starting.
    Check {
        /// The config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a running node's members and services.
    Status {
        /// The node's admin address.
        #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
}

/// Default `--threads`.
const DEFAULT_THREADS: usize = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let threads = match &cli.command {
        Command::Run { threads, .. } => *threads,
        _ => 1,
    };
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { config } => match Config::load(&config, &Overrides::default()) {
            Ok(cfg) => {
                say!("{}: ok", config.display());
                say!("{}", serde_json::to_string_pretty(&cfg)?);
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{}: invalid configuration:\n{errors}", config.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Run {
            config,
            seeds,
            listen,
            admin,
            threads: _,
        } => {
            let overrides = Overrides {
                seeds,
                listen,
                admin,
            };
            let cfg = match Config::load(&config, &overrides) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{}: invalid configuration:\n{errors}", config.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let node = Node::start(cfg, StartOptions::default()).await?;
            serve_until_signalled(node).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin } => {
            status(admin).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve_until_signalled(node: Node) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = node.reload_tls().await {
                    tracing::error!(error = %e, "SIGHUP: cannot reload the TLS files; keeping the current ones");
                }
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn get_json<T: serde::de::DeserializeOwned>(admin: SocketAddr, path: &str) -> Result<T> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("cannot reach the admin API at {admin}; is the node running? (--admin)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, admin.to_string())
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("GET {path} answered {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

async fn status(admin: SocketAddr) -> Result<()> {
    let members: Vec<MemberView> = get_json(admin, "/members").await?;
    let services: std::collections::BTreeMap<String, Vec<EndpointView>> =
        get_json(admin, "/services").await?;
    say!("MEMBERS");
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.name, if m.is_self { " *" } else { "" }),
                m.state.clone(),
                m.address.clone(),
                m.zone.clone(),
                m.generation.to_string(),
                format!("{} ms", m.heartbeat_age_ms),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATE",
            "ADDRESS",
            "ZONE",
            "GENERATION",
            "HEARTBEAT AGE",
        ],
        &rows,
    );
    say!();
    say!("SERVICES");
    let rows: Vec<Vec<String>> = services
        .iter()
        .flat_map(|(name, eps)| {
            eps.iter().map(move |e| {
                vec![
                    name.clone(),
                    e.node.clone(),
                    e.zone.clone(),
                    e.protocol.clone(),
                    e.health.clone(),
                    e.weight.to_string(),
                    e.inflight.to_string(),
                ]
            })
        })
        .collect();
    print_table(
        &[
            "SERVICE",
            "NODE",
            "ZONE",
            "PROTOCOL",
            "HEALTH",
            "WEIGHT",
            "IN FLIGHT",
        ],
        &rows,
    );
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        say!("(none)");
    }
}
