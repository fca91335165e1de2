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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_proto::route::RouteSpec;
use shoal_node::admin::{EndpointView, MemberView};
use shoal_node::config::{Config, DEFAULT_ADMIN, Overrides};
use shoal_node::routes::{ApplyRequest, ApplyResponse, RejectedView, RouteView, rfc3339_ms};
use shoal_node::{Node, StartOptions};
use shoal_pki::OperatorKey;

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
    /// Apply, list and delete route documents (signed HTTP routing rules,
    /// cluster-wide; see docs/routing.md).
    Route {
        #[command(subcommand)]
        command: RouteCommand,
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
        /// The node's admin address.
        #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
    /// List the route documents in force, and any the node refused.
    List {
        /// The node's admin address.
        #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_ADMIN)]
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
        /// The node's admin address.
        #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_ADMIN)]
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
        Command::Route { command } => {
            route(command).await?;
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

/// One request to the admin API; returns the status and the body.
async fn admin_request(
    admin: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("cannot reach the admin API at {admin}; is the node running? (--admin)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, admin.to_string());
    if !body.is_empty() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body)))?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get_json<T: serde::de::DeserializeOwned>(admin: SocketAddr, path: &str) -> Result<T> {
    let (status, body) = admin_request(admin, hyper::Method::GET, path, Vec::new()).await?;
    if !status.is_success() {
        bail!("GET {path} answered {status}");
    }
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
                if m.accused_by.is_empty() {
                    m.state.clone()
                } else {
                    format!("{} (accused by {})", m.state, m.accused_by.join(","))
                },
                m.address.clone(),
                m.zone.clone(),
                m.generation.to_string(),
                m.last_heard_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
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
            "LAST HEARD",
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

async fn route(command: RouteCommand) -> Result<()> {
    match command {
        RouteCommand::Apply {
            file,
            operator,
            admin,
        } => {
            let spec = load_route_file(&file, unix_ms())?;
            let key = operator.load()?;
            apply_signed(admin, &key, &spec).await
        }
        RouteCommand::Delete {
            name,
            operator,
            admin,
        } => {
            let spec = RouteSpec::tombstone(name.clone(), unix_ms());
            spec.validate()
                .map_err(|e| anyhow!("route name {name:?}: {e}"))?;
            let key = operator.load()?;
            apply_signed(admin, &key, &spec).await
        }
        RouteCommand::List { admin, json } => {
            if json {
                let routes: serde_json::Value = get_json(admin, "/routes").await?;
                say!("{}", serde_json::to_string_pretty(&routes)?);
                return Ok(());
            }
            let routes: Vec<RouteView> = get_json(admin, "/routes").await?;
            let rejected: Vec<RejectedView> = get_json(admin, "/routes/rejected").await?;
            print_routes(&routes, &rejected);
            Ok(())
        }
    }
}

impl OperatorArgs {
    /// Reads and checks the operator certificate and key.
    fn load(&self) -> Result<OperatorKey> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
        };
        let cert = read(&self.operator_cert)?;
        let key = read(&self.operator_key)?;
        OperatorKey::from_pem(&cert, &key).map_err(|e| {
            let file = match e {
                shoal_pki::KeyError::Key(_) => self.operator_key.display().to_string(),
                shoal_pki::KeyError::KeyMismatch => format!(
                    "{} and {}",
                    self.operator_cert.display(),
                    self.operator_key.display()
                ),
                _ => self.operator_cert.display().to_string(),
            };
            anyhow!("{file}: {e}")
        })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads a route file (TOML or JSON), sets `issued_at_ms` to `now_ms` unless the
/// file sets it, and validates it; errors name the file and the field.
fn load_route_file(path: &Path, now_ms: u64) -> Result<RouteSpec> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
    let json = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let mut value: serde_json::Value = if json {
        serde_json::from_str(&text).map_err(|e| anyhow!("{shown}: not valid JSON: {e}"))?
    } else {
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line} column {column}")
                })
                .unwrap_or_default();
            anyhow!("{shown}: not valid TOML{at}: {}", e.message().trim())
        })?
    };
    let Some(fields) = value.as_object_mut() else {
        bail!("{shown}: a route is a table with name, hosts and rules (see docs/routing.md)");
    };
    fields
        .entry("issued_at_ms")
        .or_insert_with(|| serde_json::Value::from(now_ms));
    let spec: RouteSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            anyhow!("{shown}: {}", e.inner())
        } else {
            anyhow!("{shown}: {field}: {}", e.inner())
        }
    })?;
    spec.validate().map_err(|e| anyhow!("{shown}: {e}"))?;
    Ok(spec)
}

/// Signs `spec` (its canonical body) and posts it to the node; prints the outcome.
async fn apply_signed(admin: SocketAddr, key: &OperatorKey, spec: &RouteSpec) -> Result<()> {
    let signed = key.sign_route(spec)?;
    let body = serde_json::to_vec(&ApplyRequest::new(&signed))?;
    let (status, answer) = admin_request(admin, hyper::Method::POST, "/routes", body).await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
        bail!(
            "the node refused route {:?} ({status}): {message}",
            spec.name
        );
    }
    let applied: ApplyResponse = serde_json::from_slice(&answer)
        .with_context(|| format!("POST /routes answered {status} with an unexpected body"))?;
    let r = &applied.route;
    say!(
        "route {} {}: document {}, issued {}, signed by {}",
        r.name,
        applied.result,
        r.id,
        rfc3339_ms(r.issued_at_ms),
        r.signer
    );
    Ok(())
}

fn print_routes(routes: &[RouteView], rejected: &[RejectedView]) {
    say!("ROUTES");
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.deleted { "deleted" } else { "active" }.to_string(),
                r.spec.hosts.join(","),
                r.spec.rules.len().to_string(),
                rfc3339_ms(r.issued_at_ms),
                if r.signer_expired {
                    format!("{} (expired)", r.signer)
                } else {
                    r.signer.clone()
                },
                r.id.clone(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "STATE", "HOSTS", "RULES", "ISSUED", "SIGNER", "ID"],
        &rows,
    );
    if rejected.is_empty() {
        return;
    }
    say!();
    say!("REJECTED");
    let rows: Vec<Vec<String>> = rejected
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.reason.clone(),
                r.published_by.join(","),
                r.error.clone(),
            ]
        })
        .collect();
    print_table(&["NAME", "REASON", "PUBLISHED BY", "ERROR"], &rows);
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
