//! The node's own TLS files, checked once for both their readers: config
//! validation (`shoal check`, start) reports every [`Problem`] by field, and
//! [`super::load`] (start and every reload) accepts only files with none. The
//! certificate must be a node certificate of the CA's trust domain that chains to
//! the CA and is valid now, and the key must be its key.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shoal_pki::{CaBundle, CertIdentity, CertKind, VerifyError};
use time::OffsetDateTime;

/// What is wrong with one of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config field naming the file (`tls.cert`, `tls.key`, `tls.ca`).
    pub field: &'static str,
    /// What is wrong, and what to do about it.
    pub reason: String,
}

/// Where the three files are (`None`: the config names none).
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    /// The node certificate (PEM).
    pub cert: Option<&'a Path>,
    /// Its private key (PEM).
    pub key: Option<&'a Path>,
    /// The mesh CA certificate(s) (PEM).
    pub ca: Option<&'a Path>,
}

/// The files as far as they could be checked. `identity` is there whenever the
/// certificate is this node's, even an expired one, so its name and services
/// can still be checked against the config; `key` whenever the key parses.
#[derive(Debug)]
pub struct Checked {
    /// The node certificate.
    pub cert: CertificateDer<'static>,
    /// Its identity (node name, services, trust domain).
    pub identity: CertIdentity,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// The CA(s).
    pub bundle: CaBundle,
    /// The private key.
    pub key: Option<PrivateKeyDer<'static>>,
}

/// Checks the files at `now`: what could be read of them, and every problem.
/// The files are usable only if the problems are none.
pub fn check(paths: Paths<'_>, now: OffsetDateTime) -> (Option<Checked>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut report = |field, reason: String| problems.push(Problem { field, reason });
    let ca = read("tls.ca", paths.ca, &mut report);
    let cert = read("tls.cert", paths.cert, &mut report);
    let key = read("tls.key", paths.key, &mut report);
    let bundle = ca.as_ref().and_then(|(p, b)| ca_bundle(p, b, &mut report));
    let node_cert = cert
        .as_ref()
        .and_then(|(p, b)| node_cert(p, b, &mut report));
    let key = key.as_ref().and_then(|(p, pem)| {
        let k = private_key(p, pem, &mut report)?;
        if let (Some((cert_path, _)), Some((der, _))) = (&cert, &node_cert) {
            key_matches(&k, p, cert_path, der, &mut report);
        }
        PrivateKeyDer::from_pem_slice(pem).ok()
    });
    let (Some(bundle), Some((cert, identity)), Some((ca_path, _))) = (bundle, node_cert, &ca)
    else {
        return (None, problems);
    };
    if !chains(&bundle, ca_path, &cert, &identity, now, &mut report) {
        return (None, problems);
    }
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(&cert) else {
        return (None, problems);
    };
    let not_after = x509.validity().not_after.to_datetime();
    let checked = Checked {
        cert,
        identity,
        not_after,
        bundle,
        key,
    };
    (Some(checked), problems)
}

type Report<'r> = dyn FnMut(&'static str, String) + 'r;

fn read(
    field: &'static str,
    path: Option<&Path>,
    report: &mut Report<'_>,
) -> Option<(PathBuf, Vec<u8>)> {
    let Some(path) = path else {
        report(
            field,
            "required: a PEM file path (shoal-pki issue writes node.crt, node.key and ca.crt)"
                .into(),
        );
        return None;
    };
    match std::fs::read(path) {
        Ok(bytes) => Some((path.to_path_buf(), bytes)),
        Err(e) => {
            report(field, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// The CA (one, or several of one trust domain during a CA rollover).
fn ca_bundle(path: &Path, bytes: &[u8], report: &mut Report<'_>) -> Option<CaBundle> {
    CaBundle::from_pem(bytes)
        .map_err(|e| {
            report(
                "tls.ca",
                format!(
                    "{} is not a Shoal mesh CA file ({e}); use the ca.crt written by `shoal-pki ca init`",
                    path.display()
                ),
            );
        })
        .ok()
}

/// The node certificate: PEM, a Shoal identity, and a node's (not an
/// operator's or a CA's).
fn node_cert(
    path: &Path,
    bytes: &[u8],
    report: &mut Report<'_>,
) -> Option<(CertificateDer<'static>, CertIdentity)> {
    let p = path.display();
    let Ok(der) = CertificateDer::from_pem_slice(bytes) else {
        report(
            "tls.cert",
            format!("{p} is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)"),
        );
        return None;
    };
    let id = match CertIdentity::from_der(&der) {
        Ok(id) => id,
        Err(e) => {
            report("tls.cert", format!("{p}: {e}"));
            return None;
        }
    };
    let problem = match id.kind() {
        CertKind::Node => return Some((der, id)),
        CertKind::Operator => format!(
            "{p} is an operator certificate (spiffe://{}/operator/{}); a node needs a node certificate: shoal-pki issue --ca DIR --node NAME --service SVC...",
            id.trust_domain.as_deref().unwrap_or("?"),
            id.operator.as_deref().unwrap_or("?"),
        ),
        CertKind::Ca => format!(
            "{p} is a CA certificate; put it in tls.ca and point tls.cert at a node certificate (shoal-pki issue --node NAME)"
        ),
        CertKind::Other => format!(
            "{p} carries no spiffe://TRUST-DOMAIN/node/NAME id; it is not a Shoal node certificate (shoal-pki issue --node NAME)"
        ),
    };
    report("tls.cert", problem);
    None
}

/// The key: a usable PEM private key.
fn private_key(path: &Path, pem: &[u8], report: &mut Report<'_>) -> Option<rcgen::KeyPair> {
    let parsed = std::str::from_utf8(pem)
        .map_err(|e| e.to_string())
        .and_then(|s| rcgen::KeyPair::from_pem(s).map_err(|e| e.to_string()));
    parsed
        .map_err(|e| {
            report(
                "tls.key",
                format!("{} is not a usable PEM private key ({e})", path.display()),
            );
        })
        .ok()
}

/// The key's public half is the certificate's.
fn key_matches(
    key: &rcgen::KeyPair,
    key_path: &Path,
    cert_path: &Path,
    cert_der: &[u8],
    report: &mut Report<'_>,
) {
    let matches = x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, x)| {
        x.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    });
    if !matches {
        report(
            "tls.key",
            format!(
                "{} does not match the public key of tls.cert ({}); use the key written next to that certificate",
                key_path.display(),
                cert_path.display()
            ),
        );
    }
}

/// The certificate against the CA: same trust domain, and it chains at `now`.
/// Returns whether the certificate is still this node's: an expired or not yet
/// valid one is (a problem is reported, and the name and services can still be
/// checked against it, so one run of `shoal check` reports every problem).
fn chains(
    bundle: &CaBundle,
    ca_path: &Path,
    cert: &CertificateDer<'static>,
    id: &CertIdentity,
    now: OffsetDateTime,
    report: &mut Report<'_>,
) -> bool {
    let cert_td = id.trust_domain.as_deref().unwrap_or_default();
    if cert_td != bundle.trust_domain {
        report(
            "tls.cert",
            format!(
                "certificate of another trust domain: it is for {cert_td:?} but tls.ca ({}) is the CA of {:?}",
                ca_path.display(),
                bundle.trust_domain
            ),
        );
        return false;
    }
    let Err(e) = bundle.verify(cert, now) else {
        return true;
    };
    let keep_going = matches!(e, VerifyError::Expired(_) | VerifyError::NotYetValid(_));
    let (field, reason) = match e {
        VerifyError::Expired(when) => (
            "tls.cert",
            format!("the certificate expired on {when}; issue a new one with shoal-pki issue"),
        ),
        VerifyError::NotYetValid(_) => (
            "tls.cert",
            format!("the certificate is {e}; is this host's clock right?"),
        ),
        VerifyError::OtherCa { .. } => (
            "tls.cert",
            format!(
                "the certificate was not signed by the CA in tls.ca ({}): {e}",
                ca_path.display()
            ),
        ),
        VerifyError::CaNotValid(why) => (
            "tls.ca",
            format!("the CA certificate is not valid now: {why}"),
        ),
        VerifyError::WrongTrustDomain { .. } => (
            "tls.cert",
            format!("certificate of another trust domain: {e}"),
        ),
        other => (
            "tls.cert",
            format!("the certificate does not verify: {other}"),
        ),
    };
    report(field, reason);
    keep_going
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use shoal_pki::{CertificateAuthority, Validity};
    use time::{Duration, OffsetDateTime};

    use super::{Paths, check};
    use crate::tls::{TlsFiles, load, provider};

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    }

    impl Files {
        fn paths(&self) -> Paths<'_> {
            Paths {
                cert: Some(&self.cert),
                key: Some(&self.key),
                ca: Some(&self.ca),
            }
        }

        fn tls_files(&self) -> TlsFiles {
            TlsFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
                ca: self.ca.clone(),
            }
        }
    }

    /// A node certificate for `n1` (service `web`) valid over `validity`.
    fn issued(ca: &CertificateAuthority, validity: Validity) -> Files {
        let dir = tempfile::tempdir().unwrap();
        ca.issue_node("n1", &["web".to_string()], validity)
            .unwrap()
            .save(dir.path(), false)
            .unwrap();
        Files {
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
            ca: dir.path().join("ca.crt"),
            _dir: dir,
        }
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::create("mesh.test", Validity::days_from_now(30).unwrap()).unwrap()
    }

    #[test]
    fn a_node_certificate_with_its_key_has_no_problem_and_loads() {
        let files = issued(&ca(), Validity::days_from_now(10).unwrap());
        let (checked, problems) = check(files.paths(), OffsetDateTime::now_utc());
        assert_eq!(problems, vec![]);
        let checked = checked.unwrap();
        assert_eq!(checked.identity.node.as_deref(), Some("n1"));
        assert_eq!(checked.identity.services, vec!["web".to_string()]);
        assert!(checked.key.is_some());
        let (identity, _) = load(&files.tls_files(), &provider()).unwrap();
        assert_eq!(identity.node_name, "n1");
        assert_eq!(identity.not_after_unix, checked.not_after.unix_timestamp());
    }

    #[test]
    fn an_expired_certificate_is_still_this_nodes_but_does_not_load() {
        let now = OffsetDateTime::now_utc();
        let past = Validity::between(now - Duration::days(10), now - Duration::days(1)).unwrap();
        let files = issued(&ca(), past);
        let (checked, problems) = check(files.paths(), now);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "tls.cert");
        assert!(problems[0].reason.contains("expired"), "{problems:?}");
        assert_eq!(
            checked.unwrap().identity.node.as_deref(),
            Some("n1"),
            "the name can still be checked against the config"
        );
        let err = load(&files.tls_files(), &provider())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("tls.cert: {}", problems[0].reason),
            "the same words"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_named_and_refused() {
        let ca = ca();
        let files = issued(&ca, Validity::days_from_now(10).unwrap());
        let other = issued(&ca, Validity::days_from_now(10).unwrap());
        std::fs::copy(&other.key, &files.key).unwrap();
        let (_, problems) = check(files.paths(), OffsetDateTime::now_utc());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "tls.key");
        assert!(
            problems[0].reason.contains("does not match"),
            "{problems:?}"
        );
        let err = load(&files.tls_files(), &provider())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tls.key: "), "{err}");
    }

    #[test]
    fn a_certificate_of_another_ca_and_missing_files_are_each_reported() {
        let files = issued(&ca(), Validity::days_from_now(10).unwrap());
        let stranger = issued(&ca(), Validity::days_from_now(10).unwrap());
        let paths = Paths {
            ca: Some(&stranger.ca),
            ..files.paths()
        };
        let (checked, problems) = check(paths, OffsetDateTime::now_utc());
        assert!(checked.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].reason.contains("not signed by the CA"),
            "{problems:?}"
        );
        // Two CAs of one trust domain carry the same name: the fingerprint
        // tells them apart, and the message says so.
        assert!(
            problems[0].reason.contains(", sha256 ")
                && problems[0].reason.contains("another CA of the same name"),
            "{problems:?}"
        );
        let none = Paths {
            cert: None,
            key: None,
            ca: None,
        };
        let (checked, problems) = check(none, OffsetDateTime::now_utc());
        assert!(checked.is_none());
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["tls.ca", "tls.cert", "tls.key"]);
        assert!(problems.iter().all(|p| p.reason.starts_with("required")));
    }
}
