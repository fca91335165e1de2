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

mod cli;

/// mimalloc instead of the system allocator: a request through the HTTP path
/// makes a few dozen small allocations on each node, and glibc's malloc was a
/// tenth of the node's CPU under load (docs/benchmarks.md). Built with
/// `no_thp`: otherwise it asks for transparent huge pages on its arenas, and an
/// idle node's memory doubled (17 → 35 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal_node::config::{Config, Overrides};
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
    /// Run the node until SIGTERM or Ctrl-C (SIGHUP re-reads the TLS files,
    /// then the config file: services and listeners change live).
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
    /// Validate a config file (and the files it names) without starting; with
    /// --pre, also check what would stop the node from starting or joining
    /// (ports free, certificate expiry, key file mode, seeds answering).
    Check {
        /// The config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Preflight checks, before starting a node (exit 1 if one fails).
        #[arg(long)]
        pre: bool,
        /// With --pre: print the checks as JSON.
        #[arg(long, requires = "pre")]
        json: bool,
    },
    /// Print a running node's members and services.
    Status {
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
        /// Print one JSON object (members, services, refused) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a running node is ready (its GET /readyz answers 200), else 1
    /// saying why: for container health checks and probes.
    Ready {
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
    },
    /// Have a running node read its config file again and apply what can
    /// change live (services, listeners, health checks, allow-lists); exit 1
    /// if a field was refused (it needs a restart) or the file is invalid.
    Reload {
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply, list and delete route documents (signed HTTP routing rules,
    /// cluster-wide; see docs/routing.md).
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Publish and show the mesh's CA-signed revocation list (see
    /// docs/security.md; lists are made with `shoal-pki revoke`).
    Revoke {
        #[command(subcommand)]
        command: RevokeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RevokeCommand {
    /// Publish a revocation list file (from `shoal-pki revoke`) through a node:
    /// every node enforces it within seconds.
    Apply {
        /// The revocation list file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
    },
    /// Show the revocation list in force on a node.
    List {
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
        /// Print the JSON of GET /revocations instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Check a route file, sign it with an operator key and apply it through a node.
    Apply {
        /// The route file: TOML or JSON (by its extension, .toml or .json, else by
        /// its content). issued_at_ms is set to now unless the file sets it.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        operator: OperatorArgs,
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
    },
    /// List the route documents in force, and any the node refused.
    List {
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
        /// Print the JSON of GET /routes instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a route: sign and apply a tombstone for it.
    Delete {
        /// The route's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        operator: OperatorArgs,
        /// The node's admin API: HOST:PORT or http://HOST:PORT (default: $SHOAL_ADMIN, else 127.0.0.1:7101).
        #[arg(long, value_name = "ADDR", env = "SHOAL_ADMIN", default_value = cli::DEFAULT_ADMIN_TEXT, value_parser = cli::parse_admin)]
        admin: SocketAddr,
    },
}

/// The operator identity that signs route documents.
#[derive(Args, Debug)]
struct OperatorArgs {
    /// The operator certificate (PEM), from `shoal-pki issue --operator NAME`.
    #[arg(long, value_name = "FILE", env = "SHOAL_OPERATOR_CERT")]
    operator_cert: PathBuf,
    /// The operator certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "SHOAL_OPERATOR_KEY")]
    operator_key: PathBuf,
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
        Command::Check { config, pre, json } => {
            match Config::load(&config, &Overrides::default()) {
                Ok(cfg) if pre => {
                    if !json {
                        say!("{}: ok", config.display());
                    }
                    cli::preflight(&cfg, json).await
                }
                Ok(cfg) => {
                    say!("{}: ok", config.display());
                    say!("{}", serde_json::to_string_pretty(&cfg)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{}: invalid configuration:\n{errors}", config.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
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
            let options = StartOptions {
                config_file: Some((config, overrides)),
                ..StartOptions::default()
            };
            let node = Node::start(cfg, options).await?;
            serve_until_signalled(node).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin, json } => {
            cli::status(admin, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ready { admin } => cli::ready(admin).await,
        Command::Reload { admin, json } => cli::reload(admin, json).await,
        Command::Route { command } => {
            cli::route(command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { command } => {
            cli::revoke(command).await?;
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
                match node.reload_config_file().await {
                    Ok(report) => tracing::info!(
                        applied = report.applied.len(),
                        refused = report.refused.len(),
                        "SIGHUP: config file reloaded"
                    ),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: config file not reloaded"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
