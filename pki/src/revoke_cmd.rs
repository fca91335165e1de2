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
    let mut list = current_list(&args.list, &ca)?;
    let entry = entry(&args, &ca, now)?;
    let what = entry.describe();
    match list.add(entry) {
        Added::AlreadyRevoked => {
            say!(
                "{what} is already revoked in {} (version {}); nothing changed",
                args.list.display(),
                list.version
            );
            return Ok(());
        }
        Added::New | Added::Extended => {}
    }
    list.next_version(now);
    let document = ca.sign_revocations(&list)?;
    let text = RevocationFile::of(&document).to_json();
    shoal_pki::files::write_atomic(&args.list, text.as_bytes(), false)
        .with_context(|| format!("cannot write {}", args.list.display()))?;
    say!("wrote {}", args.list.display());
    say!(
        "revoked {what} ({}); revocation list version {} with {} entries",
        args.reason,
        list.version,
        list.entries.len()
    );
    say!(
        "publish it on any node: shoal revoke apply {}",
        args.list.display()
    );
    Ok(())
}

/// The list in `path` if it exists (it must be this CA's), else an empty one.
fn current_list(path: &Path, ca: &CertificateAuthority) -> Result<RevocationList> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RevocationList::empty(ca.trust_domain()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (list, document) =
        RevocationFile::parse(&bytes).with_context(|| path.display().to_string())?;
    let bundle =
        shoal_pki::CaBundle::from_pem(ca.cert_pem().as_bytes()).context("the CA certificate")?;
    RevocationVerifier::from_bundle(&bundle)
        .verify(&document, UnixTime::now())
        .with_context(|| {
            format!(
                "{}: not a list this CA signed; give the CA that signed it, or a new --list file",
                path.display()
            )
        })?;
    Ok(list)
}

/// The entry the arguments ask for.
fn entry(args: &RevokeArgs, ca: &CertificateAuthority, now: u64) -> Result<Revocation> {
    let mut entry = Revocation {
        serial: None,
        node: None,
        issued_before_ms: None,
        not_after_ms: None,
        reason: args.reason.clone(),
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
    Ok(entry)
}
