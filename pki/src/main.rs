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

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use shoal_pki::ca::{CA_CERT_FILE, DEFAULT_CA_DAYS};
use shoal_pki::inspect::parse_cert_file;
use shoal_pki::{CertificateAuthority, Validity, inspect_der, verify_cert};
use time::OffsetDateTime;

/// Default lifetime of node and operator certificates.
const DEFAULT_LEAF_DAYS: u32 = 365;

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
#[command(group(clap::ArgGroup::new("who").required(true).args(["node", "operator"])))]
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
    /// Lifetime in days.
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: u32,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
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
    let validity = Validity::days_from_now(args.days)?;
    let cert = match (&args.node, &args.operator) {
        (Some(node), None) => ca.issue_node(node, &args.services, validity)?,
        (None, Some(op)) => ca.issue_operator(op, validity)?,
        _ => bail!("give exactly one of --node and --operator"),
    };
    let written = cert.save(&args.out, args.force)?;
    print_written(&written);
    let ids: Vec<String> = cert.ids.iter().map(|i| i.to_uri()).collect();
    say!(
        "issued {} certificate: {} (valid {} days)",
        cert.kind,
        ids.join(" "),
        args.days
    );
    Ok(())
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
