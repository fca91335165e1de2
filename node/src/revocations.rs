//! The mesh's revocation list on this node: the CA-signed list of node
//! certificates the mesh refuses ([`mesh_proto::revocation`], signed by
//! `shoal-pki revoke`).
//!
//! The list travels in gossip like a route document (the highest version wins
//! on every node). This module
//!
//! - puts the list stored in `<data_dir>/revocations.json` (written atomically
//!   whenever a newer one is in force) in force at start, before the endpoint
//!   binds ([`load_stored`]), so a restarted node refuses revoked peers before
//!   it hears from anyone;
//! - watches the membership view: when a new list is in force it hands it to
//!   [`TlsState`] (every later handshake, stream and gossip record from a revoked
//!   certificate is refused), drops the revoked members from membership (and so
//!   from the routing table), and closes the connections of revoked peers;
//! - is `POST /revocations` ([`RevocationStore::apply`], what `shoal revoke
//!   apply FILE` calls) and `GET /revocations`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::gossip::RouteDocument;
use mesh_proto::membership::documents::{DocumentApplied, HeldRevocations};
use mesh_proto::revocation::{Revocation, RevocationList};
use rustls::pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use shoal_pki::{RevocationFile, RevocationFileError, SignatureError};
use thiserror::Error;
use tokio::sync::{Mutex, watch};

use crate::endpoint::MeshEndpoint;
use crate::gossip::Gossip;
use crate::metrics::{Metrics, ReasonLabels};
use crate::routes::rfc3339_ms;
use crate::tls::TlsState;

/// The file under `node.data_dir` holding the list in force, in the JSON form
/// `shoal-pki revoke` writes.
pub const REVOCATIONS_FILE: &str = "revocations.json";
/// Largest `POST /revocations` body, in bytes.
pub const MAX_APPLY_REQUEST_BYTES: usize = shoal_pki::revoke::MAX_FILE_BYTES;

/// The list in force, as `GET /revocations` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationsView {
    /// Its version (0: no list is in force).
    pub version: u64,
    /// When the CA signed it, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Who signed it.
    pub signer: Option<String>,
    /// The revocations.
    pub entries: Vec<Revocation>,
}

/// What `POST /revocations` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    /// The list is now in force here, and spreading.
    Applied,
    /// This very list was already in force.
    Unchanged,
}

/// The answer to a successful `POST /revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// What was done.
    pub result: ApplyResult,
    /// The list now in force.
    pub revocations: RevocationsView,
}

/// Why `POST /revocations` refused a list; [`ApplyError::status`] is the HTTP
/// status, [`ApplyError::reason`] the metric label.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// Not a revocation list file.
    #[error("{0}")]
    Request(#[from] RevocationFileError),
    /// Not signed by this mesh's CA.
    #[error("{0}")]
    Signature(SignatureError),
    /// A list of another mesh.
    #[error("the list is for trust domain {list:?}, this mesh is {mesh:?}")]
    OtherTrustDomain {
        /// The list's.
        list: String,
        /// This node's.
        mesh: String,
    },
    /// Not newer than the list in force.
    #[error(
        "the list in force here is version {current}; this one is version {version}: revoke again with the list file the CA last wrote (`shoal-pki revoke --list FILE`), which has the next version"
    )]
    NotNewer {
        /// This list's version.
        version: u64,
        /// The version in force.
        current: u64,
    },
    /// The membership protocol refused it.
    #[error("refused ({0}); see docs/security.md")]
    Refused(&'static str),
}

impl ApplyError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApplyError::NotNewer { .. } => 409,
            _ => 400,
        }
    }

    /// The `reason` label of `shoal_revocation_lists_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Request(_) => "invalid_list",
            ApplyError::Signature(e) => e.reason(),
            ApplyError::OtherTrustDomain { .. } => "wrong_trust_domain",
            ApplyError::NotNewer { .. } => "not_newer",
            ApplyError::Refused(r) => r,
        }
    }
}

/// This node's revocation list: stored, watched, enforced. See the module
/// documentation.
pub struct RevocationStore {
    path: PathBuf,
    tls: Arc<TlsState>,
    gossip: Arc<Gossip>,
    endpoint: Arc<MeshEndpoint>,
    metrics: Arc<Metrics>,
    /// The id of the list last put in force here.
    in_force: Mutex<Option<[u8; 16]>>,
}

impl std::fmt::Debug for RevocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The list stored in `<data_dir>/revocations.json`, checked (the mesh CA,
/// valid when it signed it; this trust domain) and put in force in `tls` for
/// every later handshake: call before the endpoint binds. Returns the document
/// for [`RevocationStore::open`] to gossip — unless it was signed more than
/// `max_skew` ahead of this node's clock, as gossip would refuse it (then it is
/// enforced here only, and that is logged and counted). A file that is
/// unreadable or refused is logged and counted, and nothing is in force.
pub fn load_stored(
    data_dir: &Path,
    tls: &TlsState,
    metrics: &Metrics,
    max_skew: Duration,
) -> Option<RouteDocument> {
    let path = data_dir.join(REVOCATIONS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the stored revocation list");
            return None;
        }
    };
    let checked = RevocationFile::parse(&bytes)
        .map_err(ApplyError::Request)
        .and_then(|(list, doc)| {
            let signed = UnixTime::since_unix_epoch(Duration::from_millis(list.issued_at_ms));
            tls.verify_revocations(&doc, signed)
                .map_err(ApplyError::Signature)?;
            Ok((list, doc))
        });
    match checked {
        Ok((list, doc)) => {
            let ahead = list.issued_at_ms.saturating_sub(crate::gossip::wall_ms());
            let from_the_future = Duration::from_millis(ahead) > max_skew;
            tls.set_revocations(list);
            if from_the_future {
                // This node's clock is behind the CA's: the list is enforced
                // (it is the CA's), but not gossiped, as gossip would refuse it.
                count_refused(metrics, "from_the_future");
                tracing::warn!(path = %path.display(), ahead_ms = ahead, "the stored revocation list was signed ahead of this node's clock (check its time): enforced here, not gossiped");
                return None;
            }
            Some(doc)
        }
        Err(e) => {
            count_refused(metrics, e.reason());
            tracing::error!(path = %path.display(), reason = e.reason(), error = %e, "the stored revocation list is not in force");
            None
        }
    }
}

fn count_refused(metrics: &Metrics, reason: &'static str) {
    metrics
        .tls
        .revocation_lists_refused
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

impl RevocationStore {
    /// Gossips `stored` (what [`load_stored`] returned) and enforces the list
    /// in force.
    pub async fn open(
        data_dir: &Path,
        stored: Option<RouteDocument>,
        tls: Arc<TlsState>,
        gossip: Arc<Gossip>,
        endpoint: Arc<MeshEndpoint>,
        metrics: Arc<Metrics>,
    ) -> Arc<RevocationStore> {
        let store = Arc::new(RevocationStore {
            path: data_dir.join(REVOCATIONS_FILE),
            tls,
            gossip,
            endpoint,
            metrics,
            in_force: Mutex::new(None),
        });
        if let Some(doc) = stored
            && let Err(r) = store.gossip.publish_document(doc)
        {
            store.count_refused(r.label);
            tracing::error!(path = %store.path.display(), reason = r.label, "the stored revocation list was refused by gossip");
        }
        store.refresh().await;
        store
    }

    /// Follows the list in force until `stop` fires.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut views = self.gossip.watch();
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
            self.refresh().await;
        }
    }

    /// Enforces the list in force if it changed since the last look; drops it
    /// from TLS once gossip dropped it (its CA left the bundle).
    pub async fn refresh(&self) {
        let held = self.gossip.view().revocations.clone();
        let mut in_force = self.in_force.lock().await;
        match held {
            None => {
                if in_force.take().is_some() {
                    self.withdraw();
                }
            }
            Some(held) if *in_force != Some(held.id) => {
                *in_force = Some(held.id);
                self.enforce(&held).await;
            }
            Some(_) => {}
        }
    }

    /// Gossip no longer holds the list it held: its signer is no longer a CA
    /// this node trusts (after a CA rollover without carrying the list over).
    /// No list is in force until the new CA signs one.
    fn withdraw(&self) {
        tracing::warn!(
            "the revocation list in force was signed by a CA this node no longer trusts; no list is in force until the current CA signs one (shoal-pki revoke --previous-ca, docs/operations.md)"
        );
        self.tls
            .set_revocations(RevocationList::empty(self.tls.trust_domain()));
        self.metrics.tls.revocation_list_version.set(0);
        self.metrics.tls.revocation_entries.set(0);
    }

    /// Hands `held` to TLS, drops revoked members and closes revoked peers'
    /// connections, and stores it.
    async fn enforce(&self, held: &HeldRevocations) {
        let list = &held.list;
        tracing::info!(
            version = list.version,
            entries = list.entries.len(),
            issued_at = %rfc3339_ms(list.issued_at_ms),
            signer = %held.signer.operator,
            "revocation list in force"
        );
        for e in &list.entries {
            tracing::info!(revoked = %e.describe(), reason = %e.reason, "revoked");
        }
        self.metrics
            .tls
            .revocation_list_version
            .set(i64::try_from(list.version).unwrap_or(i64::MAX));
        self.metrics
            .tls
            .revocation_entries
            .set(list.entries.len() as i64);
        if self.tls.set_revocations(list.clone()) {
            self.gossip.recheck_trust();
            let closed = self.endpoint.recycle(true);
            if closed > 0 {
                tracing::warn!(
                    closed,
                    "closed the connections of peers whose certificate is revoked"
                );
            }
        }
        self.persist(&held.document).await;
    }

    /// Writes the list to its file atomically, unless the file holds it.
    async fn persist(&self, document: &RouteDocument) {
        let text = RevocationFile::of(document).to_json();
        if std::fs::read(&self.path).is_ok_and(|b| b == text.as_bytes()) {
            return;
        }
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            shoal_pki::files::write_atomic(&path, text.as_bytes(), false)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(path = %self.path.display(), "cannot store the revocation list; check node.data_dir (free space, permissions)");
        }
    }

    /// `POST /revocations`: checks a list file's body and signature and puts it
    /// in force if it is newer than the list in force.
    pub async fn apply(&self, file: &[u8]) -> Result<ApplyResponse, ApplyError> {
        let judged = self.judge(file);
        let result = match judged {
            Ok(None) => ApplyResult::Unchanged,
            Ok(Some(doc)) => match self.gossip.publish_document(doc) {
                Ok(DocumentApplied::InForce) => ApplyResult::Applied,
                Ok(DocumentApplied::Stale) => ApplyResult::Unchanged,
                Err(r) => return Err(self.refused(ApplyError::Refused(r.label))),
            },
            Err(e) => return Err(self.refused(e)),
        };
        if result == ApplyResult::Applied {
            tracing::info!("accepted a revocation list from the admin API");
        }
        self.refresh().await;
        Ok(ApplyResponse {
            result,
            revocations: self.view(),
        })
    }

    /// The document to publish, `None` if it is the list in force, or why not.
    fn judge(&self, file: &[u8]) -> Result<Option<RouteDocument>, ApplyError> {
        let (list, doc) = RevocationFile::parse(file)?;
        let mesh = self.tls.trust_domain();
        if list.trust_domain != mesh {
            return Err(ApplyError::OtherTrustDomain {
                list: list.trust_domain,
                mesh,
            });
        }
        self.tls
            .verify_revocations(&doc, UnixTime::now())
            .map_err(ApplyError::Signature)?;
        let Some(current) = self.gossip.view().revocations.clone() else {
            return Ok(Some(doc));
        };
        if current.document.body == doc.body {
            return Ok(None);
        }
        if RevocationList::precedence((&list, &doc), (&current.list, &current.document))
            != std::cmp::Ordering::Greater
        {
            return Err(ApplyError::NotNewer {
                version: list.version,
                current: current.list.version,
            });
        }
        Ok(Some(doc))
    }

    fn refused(&self, e: ApplyError) -> ApplyError {
        self.count_refused(e.reason());
        tracing::warn!(reason = e.reason(), error = %e, "refused a revocation list");
        e
    }

    fn count_refused(&self, reason: &'static str) {
        count_refused(&self.metrics, reason);
    }

    /// The list in force.
    pub fn view(&self) -> RevocationsView {
        let held = self.gossip.view().revocations.clone();
        let list = held.as_ref().map(|h| &h.list);
        RevocationsView {
            version: list.map_or(0, |l| l.version),
            issued_at_ms: list.map_or(0, |l| l.issued_at_ms),
            signer: held.as_ref().map(|h| h.signer.operator.clone()),
            entries: list.map(|l| l.entries.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_reason_and_status() {
        let not_newer = ApplyError::NotNewer {
            version: 1,
            current: 2,
        };
        assert_eq!((not_newer.status(), not_newer.reason()), (409, "not_newer"));
        assert!(not_newer.to_string().contains("version 2"));
        let other = ApplyError::OtherTrustDomain {
            list: "a.test".into(),
            mesh: "b.test".into(),
        };
        assert_eq!(
            (other.status(), other.reason()),
            (400, "wrong_trust_domain")
        );
        let sig = ApplyError::Signature(SignatureError::BadSignature);
        assert_eq!(sig.reason(), "bad_signature");
    }
}
