//! `shoal-pki revoke`: adds an entry to the revocation list file and signs the
//! next version with the CA key (the list itself: [`shoal_pki::revoke`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mesh_proto::revocation::{Added, Revocation, RevocationList, normalize_serial};
use rustls_pki_types::UnixTime;
use shoal_pki::ca::BACKDATE;
use shoal_pki::{CertSerial, CertificateAuthority, RevocationFile, RevocationVerifier};

use crate::{RevokeArgs, node_cert_file, read_cert};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs the command.
pub fn run(args: RevokeArgs) -> Result<()> {
    let ca = CertificateAuthority::load(&args.ca)?;
    let now = unix_ms();
    let previous = args.previous_ca.as_deref().map(previous_ca).transpose()?;
    let mut list = current_list(&args.list, &ca, previous.as_deref())?;
    let what = match entry(&args, &ca, now)? {
        Some(entry) => {
            let what = entry.describe();
            if list.add(entry) == Added::AlreadyRevoked && previous.is_none() {
                say!(
                    "{what} is already revoked in {} (version {}); nothing changed",
                    args.list.display(),
                    list.version
                );
                return Ok(());
            }
            what
        }
        None if previous.is_some() => "nothing new".to_string(),
        None => bail!("say what to revoke: --cert FILE, --serial SERIAL or --node NAME"),
    };
    list.next_version(now);
    let document = ca.sign_revocations(&list)?;
    let text = RevocationFile::of(&document).to_json();
    shoal_pki::files::write_atomic(&args.list, text.as_bytes(), false)
        .with_context(|| format!("cannot write {}", args.list.display()))?;
    say!("wrote {}", args.list.display());
    say!(
        "revoked {what} ({}); revocation list version {} with {} entries, signed by {}",
        args.reason.as_deref().unwrap_or("carried over"),
        list.version,
        list.entries.len(),
        args.ca.display()
    );
    say!(
        "publish it on any node: shoal revoke apply {}",
        args.list.display()
    );
    Ok(())
}

/// The previous CA's certificate (PEM), from its file or directory.
fn previous_ca(path: &Path) -> Result<String> {
    let file = if path.is_dir() {
        path.join(shoal_pki::ca::CA_CERT_FILE)
    } else {
        path.to_path_buf()
    };
    let pem = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read --previous-ca {}", file.display()))?;
    shoal_pki::CaBundle::from_pem(pem.as_bytes())
        .with_context(|| format!("--previous-ca {}: not a CA certificate", file.display()))?;
    Ok(pem)
}

/// The list in `path` if it exists (it must be signed by this CA or by
/// `previous`), else an empty one.
fn current_list(
    path: &Path,
    ca: &CertificateAuthority,
    previous: Option<&str>,
) -> Result<RevocationList> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && previous.is_some() => {
            bail!(
                "{}: no such list; --previous-ca carries an existing list over to --ca, so give the list file the previous CA signed (a new list needs no --previous-ca)",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RevocationList::empty(ca.trust_domain()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (list, document) =
        RevocationFile::parse(&bytes).with_context(|| path.display().to_string())?;
    let signers = format!("{}\n{}", ca.cert_pem(), previous.unwrap_or_default());
    let bundle =
        shoal_pki::CaBundle::from_pem(signers.as_bytes()).context("the CA certificates")?;
    if bundle.trust_domain != ca.trust_domain() {
        bail!(
            "--previous-ca is of trust domain {:?}, --ca of {:?}",
            bundle.trust_domain,
            ca.trust_domain()
        );
    }
    RevocationVerifier::from_bundle(&bundle)
        .verify(&document, UnixTime::now())
        .with_context(|| {
            format!(
                "{}: not a list this CA signed; give the CA that signed it, or during a CA rollover the old CA's certificate with --previous-ca",
                path.display()
            )
        })?;
    if previous.is_some() {
        let by = shoal_pki::inspect_der(&document.signer_cert_der, time::OffsetDateTime::now_utc())
            .map(|info| info.sha256_fingerprint)
            .with_context(|| format!("{}: the signer's certificate", path.display()))?;
        let whose = if document.signer_cert_der.as_slice() == ca.cert_der().as_ref() {
            "--ca"
        } else {
            "--previous-ca"
        };
        say!(
            "carrying over version {} with {} entries, signed by {whose} (sha256 {by})",
            list.version,
            list.entries.len()
        );
    }
    Ok(list)
}

/// The entry the arguments ask for, if any.
fn entry(args: &RevokeArgs, ca: &CertificateAuthority, now: u64) -> Result<Option<Revocation>> {
    if args.cert.is_none() && args.serial.is_none() && args.node.is_none() {
        if args.reason.is_some() {
            bail!("--reason needs --cert, --serial or --node: what is revoked?");
        }
        return Ok(None);
    }
    let Some(reason) = args.reason.clone() else {
        bail!("--reason is required with --cert, --serial or --node (e.g. key_compromise)");
    };
    let mut entry = Revocation {
        serial: None,
        node: None,
        issued_before_ms: None,
        not_after_ms: None,
        reason,
        revoked_at_ms: now,
    };
    if let Some(path) = &args.cert {
        let file = node_cert_file(path);
        let der = read_cert(&file)?;
        let id =
            shoal_pki::CertIdentity::from_der(&der).with_context(|| file.display().to_string())?;
        if id.trust_domain.as_deref() != Some(ca.trust_domain()) || id.node.is_none() {
            bail!(
                "{}: not a node certificate of trust domain {:?}; only node certificates are revoked",
                file.display(),
                ca.trust_domain()
            );
        }
        let facts = CertSerial::of(&der).with_context(|| file.display().to_string())?;
        entry.serial = Some(facts.serial);
        entry.node = facts.node;
        entry.not_after_ms = Some(facts.not_after_ms);
    } else if let Some(serial) = &args.serial {
        entry.serial = Some(normalize_serial(serial)?);
    } else if let Some(node) = &args.node {
        mesh_proto::names::validate_name("node name", node)?;
        entry.node = Some(node.clone());
        // Certificates are valid from BACKDATE before they were issued: a
        // validity starting before `now - BACKDATE` means issued before now, so a
        // certificate issued from now on is accepted.
        let backdate = u64::try_from(BACKDATE.whole_milliseconds()).unwrap_or(0);
        entry.issued_before_ms = Some(now.saturating_sub(backdate));
    }
    Ok(Some(entry))
}
