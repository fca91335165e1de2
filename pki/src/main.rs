//! The `shoal-pki` command: see `shoal-pki --help` and docs/security.md.

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

/// `print!` that ignores a closed stdout.
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod revoke_cmd;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use shoal_pki::ca::{CA_CERT_FILE, DEFAULT_CA_DAYS};
use shoal_pki::inspect::parse_cert_file;
use shoal_pki::{CertificateAuthority, Validity, inspect_der, verify_cert};
use time::OffsetDateTime;

/// Default lifetime of node certificates: short, so a stolen one stops
/// working soon; renew with `shoal-pki issue --renew` (docs/operations.md).
const DEFAULT_NODE_DAYS: u32 = 30;
/// Default lifetime of operator certificates.
const DEFAULT_OPERATOR_DAYS: u32 = 365;

#[derive(Parser, Debug)]
#[command(
    name = "shoal-pki",
    version,
    about = "Shoal's mesh certificate authority"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the mesh CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue a node or operator certificate signed by the mesh CA.
    Issue(IssueArgs),
    /// Describe a certificate: identities, kind, validity, fingerprint.
    Inspect {
        /// The certificate file (PEM or DER).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node certificate (or every certificate of a node) in the mesh's
    /// CA-signed revocation list; publish it with `shoal revoke apply FILE`.
    Revoke(RevokeArgs),
    /// Exit 0 if FILE chains to the CA and is valid now; otherwise say why.
    Verify {
        /// The CA directory (holding ca.crt) or the CA certificate file.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The certificate to check.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new mesh CA: DIR/ca.crt and DIR/ca.key (0600).
    Init {
        /// The trust domain, e.g. example.org (lowercase letters, digits, '-', '.').
        #[arg(long, value_name = "TD")]
        trust_domain: String,
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime in days.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["node", "operator", "renew"])))]
struct IssueArgs {
    /// The CA directory written by `shoal-pki ca init`.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// Issue a node certificate for this node name.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// A service the node may host (repeatable; node certificates only).
    #[arg(long = "service", value_name = "SVC", conflicts_with = "operator")]
    services: Vec<String>,
    /// Issue an operator certificate for this operator name.
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Renew this certificate (a node.crt or operator.crt file, or the
    /// directory holding it): the same node and services, or the same
    /// operator, with a new key and a new lifetime.
    #[arg(long, value_name = "CERT", conflicts_with = "services")]
    renew: Option<PathBuf>,
    /// Lifetime in days [default: 30 for node certificates, 365 for operator
    /// certificates].
    #[arg(long)]
    days: Option<u32>,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").args(["cert", "serial", "node"])))]
struct RevokeArgs {
    /// The CA directory written by `shoal-pki ca init`: its key signs the list.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The revocation list file: read if it exists, written (atomically) with
    /// the new entry and the next version.
    #[arg(long, value_name = "FILE")]
    list: PathBuf,
    /// Revoke this certificate (a node.crt, or the directory holding it).
    #[arg(long, value_name = "CERT")]
    cert: Option<PathBuf>,
    /// Revoke the certificate with this serial number (hex, as `shoal-pki
    /// inspect` prints it).
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// Revoke every certificate of this node issued until now; a certificate
    /// issued for it later is accepted again.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Why, for the logs (e.g. key_compromise, decommissioned); needed with
    /// --cert, --serial or --node.
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// During a CA rollover: the previous CA's certificate (its ca.crt, or its
    /// directory). The list may be signed by it; the next version is signed by
    /// --ca, with every entry kept. Without --cert/--serial/--node, only carries
    /// the list over.
    #[arg(long, value_name = "CA_CERT")]
    previous_ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-pki: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    trust_domain,
                    out,
                    days,
                    force,
                },
        } => {
            let ca = CertificateAuthority::create(&trust_domain, Validity::days_from_now(days)?)?;
            let written = ca.save(&out, force)?;
            print_written(&written);
            say!(
                "created mesh CA for trust domain {trust_domain}, valid {days} days; keep {} secret",
                out.join("ca.key").display()
            );
        }
        Command::Issue(args) => issue(args)?,
        Command::Revoke(args) => revoke_cmd::run(args)?,
        Command::Inspect { file, json } => {
            let der = read_cert(&file)?;
            let info = inspect_der(&der, OffsetDateTime::now_utc())
                .with_context(|| file.display().to_string())?;
            if json {
                say!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                say_inline!("{}", info.to_text());
            }
        }
        Command::Verify { ca, file } => {
            let ca_file = if ca.is_dir() {
                ca.join(CA_CERT_FILE)
            } else {
                ca
            };
            let ca_der = read_cert(&ca_file)?;
            let der = match read_cert(&file) {
                Ok(d) => d,
                Err(e) => {
                    say!("{}: {e:#}", file.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            match verify_cert(&ca_der, &der, OffsetDateTime::now_utc()) {
                Ok(v) => {
                    let who = v
                        .identity
                        .node
                        .as_deref()
                        .or(v.identity.operator.as_deref())
                        .unwrap_or("-");
                    say!(
                        "{}: ok ({} {who}, trust domain {}, valid until {})",
                        file.display(),
                        v.kind,
                        v.identity.trust_domain.as_deref().unwrap_or("-"),
                        v.not_after
                    );
                }
                Err(e) => {
                    say!("{}: {e}", file.display());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn issue(args: IssueArgs) -> Result<()> {
    let ca = CertificateAuthority::load(&args.ca)?;
    let who = match &args.renew {
        Some(old) => renewed(old, ca.trust_domain())?,
        None => match (&args.node, &args.operator) {
            (Some(node), None) => Who::Node(node.clone(), args.services.clone()),
            (None, Some(op)) => Who::Operator(op.clone()),
            _ => bail!("give exactly one of --node, --operator and --renew"),
        },
    };
    let days = args.days.unwrap_or(match who {
        Who::Node(..) => DEFAULT_NODE_DAYS,
        Who::Operator(_) => DEFAULT_OPERATOR_DAYS,
    });
    let validity = Validity::days_from_now(days)?;
    let cert = match &who {
        Who::Node(node, services) => ca.issue_node(node, services, validity)?,
        Who::Operator(op) => ca.issue_operator(op, validity)?,
    };
    let written = cert.save(&args.out, args.force)?;
    print_written(&written);
    let ids: Vec<String> = cert.ids.iter().map(|i| i.to_uri()).collect();
    let renewal = if args.renew.is_some() {
        "renewed"
    } else {
        "issued"
    };
    say!(
        "{renewal} {} certificate: {} (valid {days} days)",
        cert.kind,
        ids.join(" ")
    );
    Ok(())
}

/// Whom a certificate is for.
enum Who {
    /// A node, and the services it may host.
    Node(String, Vec<String>),
    /// An operator.
    Operator(String),
}

/// Whom the certificate at `path` (or in the directory `path`) is for, if it
/// is a node's or an operator's of `trust_domain`.
fn renewed(path: &Path, trust_domain: &str) -> Result<Who> {
    let file = if path.is_dir() {
        ["node.crt", "operator.crt"]
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.exists())
            .with_context(|| format!("{}: holds no node.crt or operator.crt", path.display()))?
    } else {
        path.to_path_buf()
    };
    let der = read_cert(&file)?;
    let id = shoal_pki::CertIdentity::from_der(&der).with_context(|| file.display().to_string())?;
    if id.trust_domain.as_deref() != Some(trust_domain) {
        bail!(
            "{}: a certificate of trust domain {:?}, not of this CA's ({trust_domain:?})",
            file.display(),
            id.trust_domain.as_deref().unwrap_or("none")
        );
    }
    match (id.node, id.operator) {
        (Some(node), None) => Ok(Who::Node(node, id.services)),
        (None, Some(op)) => Ok(Who::Operator(op)),
        _ => bail!(
            "{}: neither a node nor an operator certificate; nothing to renew",
            file.display()
        ),
    }
}

/// A node certificate file given as itself or as the directory holding it.
fn node_cert_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("node.crt")
    } else {
        path.to_path_buf()
    }
}

fn read_cert(path: &Path) -> Result<rustls_pki_types::CertificateDer<'static>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_cert_file(&bytes).with_context(|| path.display().to_string())
}

fn print_written(paths: &[PathBuf]) {
    for p in paths {
        say!("wrote {}", p.display());
    }
}
