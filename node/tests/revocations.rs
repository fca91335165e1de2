//! The revocation list a node stored is in force as soon as it is loaded —
//! before the endpoint binds — and a stored file that does not check out is
//! refused, counted, and puts nothing in force.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::revocation::{Revocation, RevocationList};
use shoal_node::metrics::Metrics;
use shoal_node::revocations::{REVOCATIONS_FILE, load_stored};
use shoal_node::tls::{TlsFiles, TlsState};
use shoal_pki::{CertificateAuthority, IssuedCert, RevocationFile, Validity};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The TLS state of node `n1`, with its files in `dir`.
fn tls_of(dir: &Path, ca: &CertificateAuthority, me: &IssuedCert) -> (Arc<TlsState>, Arc<Metrics>) {
    let files = TlsFiles {
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, &me.cert_pem).unwrap();
    std::fs::write(&files.key, &me.key_pem).unwrap();
    std::fs::write(&files.ca, ca.cert_pem()).unwrap();
    let metrics = Arc::new(Metrics::new());
    (TlsState::load(&files, metrics.clone()).unwrap(), metrics)
}

#[test]
fn a_stored_list_is_in_force_once_loaded_and_a_tampered_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        CertificateAuthority::create("shoal.test", Validity::days_from_now(30).unwrap()).unwrap();
    let validity = || Validity::days_from_now(1).unwrap();
    let me = ca.issue_node("n1", &[], validity()).unwrap();
    let revoked = ca.issue_node("n2", &[], validity()).unwrap();
    let mut list = RevocationList::empty("shoal.test");
    let now = now_ms() + 60_000; // after n2's certificate was issued
    list.add(Revocation::of_node("n2", now, "key_compromise", now));
    list.next_version(now_ms());
    let document = ca.sign_revocations(&list).unwrap();
    let file = RevocationFile::of(&document).to_json();

    // Nothing stored: nothing in force, nothing refused.
    let (tls, metrics) = tls_of(dir.path(), &ca, &me);
    assert_eq!(load_stored(dir.path(), &tls, &metrics, SKEW), None);
    assert_eq!(tls.revocations().version, 0);

    std::fs::write(dir.path().join(REVOCATIONS_FILE), &file).unwrap();
    assert_eq!(
        load_stored(dir.path(), &tls, &metrics, SKEW),
        Some(document)
    );
    assert_eq!(tls.revocations().version, 1);
    assert!(tls.revocation_of(&revoked.cert_der).is_some());
    assert!(tls.revocation_of(&me.cert_der).is_none());

    // The stored file changed behind the node's back: refused and counted.
    let refused = |text: String, reason: &str| {
        std::fs::write(dir.path().join(REVOCATIONS_FILE), text).unwrap();
        let (tls, metrics) = tls_of(dir.path(), &ca, &me);
        assert_eq!(load_stored(dir.path(), &tls, &metrics, SKEW), None);
        assert_eq!(tls.revocations().version, 0);
        let counted = format!("shoal_revocation_lists_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.encode().contains(&counted), "{}", metrics.encode());
    };
    let tampered = file.replace("key_compromise", "key_compromisx");
    assert_ne!(tampered, file);
    refused(tampered, "bad_signature");

    let mut ahead = list.clone();
    ahead.next_version(now_ms() + 2 * SKEW.as_millis() as u64);
    let ahead = RevocationFile::of(&ca.sign_revocations(&ahead).unwrap()).to_json();
    // A list signed further ahead of this node's clock than the skew allows
    // (this node's clock is behind): enforced, since the CA signed it, but not
    // gossiped (gossip would refuse it), and counted.
    std::fs::write(dir.path().join(REVOCATIONS_FILE), ahead).unwrap();
    let (tls, metrics) = tls_of(dir.path(), &ca, &me);
    assert_eq!(load_stored(dir.path(), &tls, &metrics, SKEW), None);
    assert_eq!(tls.revocations().version, 2);
    assert!(tls.revocation_of(&revoked.cert_der).is_some());
    let counted = "shoal_revocation_lists_refused_total{reason=\"from_the_future\"} 1";
    assert!(metrics.encode().contains(counted), "{}", metrics.encode());
}

/// `gossip.max_clock_skew` in these tests.
const SKEW: std::time::Duration = std::time::Duration::from_secs(300);
