//! Route documents (design §4): the operator-signed documents in force, this
//! node's durable copy of them, and the route table HTTP listeners read.
//!
//! The documents themselves live in the membership protocol's shared state, one
//! per route name, exactly as the operator signed them
//! ([`mesh_proto::membership::documents`]): relayed by every node, republished
//! by none, checked by each against the mesh CA. This module
//!
//! - puts the documents stored in `<data_dir>/routes/<name>.route` in force at
//!   start (one file per route, written atomically), so a restarted node routes
//!   by them at once, and an older document replayed later never beats the one
//!   on disk: the stored winner is the route's durable high-water mark;
//! - watches the membership view: whenever the documents in force change it
//!   swaps the [`SharedRoutes`] table (readers never wait) and stores the new
//!   winners;
//! - says when the operator certificate that signed a document in force has
//!   expired: the document stays in force (it fails closed: its allow-lists keep
//!   denying) until a newer one replaces it, and a warning and the
//!   `shoal_route_documents_expired` gauge say so;
//! - lists the documents peers sent that were refused (`GET /routes/rejected`).
//!
//! [`RouteStore::apply`] is `POST /routes`: it checks a signed route, refuses
//! one that would not beat the document in force (an operator clock running
//! behind), and puts it in force, which stores and gossips it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mesh_proto::codec::{decode_text, encode_text};
use mesh_proto::gossip::{LegacyRouteDocument, RouteDocument};
use mesh_proto::membership::documents::{DocumentApplied, HeldDocument};
use mesh_proto::route::table::RouteTable;
use mesh_proto::route::{Precedence, RouteError, RouteSpec};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use shoal_pki::SignatureError;
use thiserror::Error;
use tokio::sync::{Mutex, watch};

use crate::gossip::Gossip;
use crate::metrics::{Metrics, ReasonLabels};
use crate::tls::{TlsState, describe_cert};

/// The route table HTTP listeners read, swapped atomically when the set of
/// route documents in force changes (readers never block, in-flight requests
/// keep the table they started with).
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// The directory under `node.data_dir` holding the stored documents.
pub const ROUTES_DIR: &str = "routes";
/// Suffix of a stored document's file: `<route name>.route`, holding the
/// document's text form (base64 of its frame).
pub const ROUTE_FILE_SUFFIX: &str = ".route";
/// Largest `POST /routes` request body, in bytes (a route document is at most
/// 32 KiB; base64 makes that about 43 KiB).
pub const MAX_APPLY_REQUEST_BYTES: usize = 64 * 1024;
/// How often the documents in force are looked at even if nothing changed:
/// signer certificates expire, and a failed write is retried.
const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Reasons of `shoal_route_documents_rejected_total` besides the signature ones
/// ([`SignatureError::REASONS`]).
pub const BODY_REASONS: [&str; 3] = ["invalid_body", "from_the_future", "too_many_documents"];

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as RFC 3339, for messages.
pub fn rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn view_of(held: &HeldDocument, now_ms: u64) -> RouteView {
    RouteView {
        name: held.document.name.clone(),
        id: hex_id(&held.id),
        issued_at_ms: held.spec.issued_at_ms,
        signer: held.signer.operator.clone(),
        signer_not_after: i64::try_from(held.signer.not_after_ms / 1000).unwrap_or(i64::MAX),
        signer_expired: held.signer_expired(now_ms),
        deleted: held.spec.deleted,
        spec: held.spec.clone(),
    }
}

// ---------------------------------------------------------------------------
// Admin API types
// ---------------------------------------------------------------------------

/// The JSON body of `POST /routes`: a signed route, each field base64 (standard
/// alphabet, padded): exactly what gossip carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The signed body: the route's canonical JSON ([`RouteSpec::to_body`]).
    pub body: String,
    /// The operator's ECDSA P-256 SHA-256 signature over `body` (DER).
    pub signature: String,
    /// The operator certificate that made the signature (DER).
    pub signer_cert_der: String,
}

impl ApplyRequest {
    /// The request for a signed route.
    pub fn new(signed: &shoal_pki::SignedRoute) -> ApplyRequest {
        ApplyRequest {
            body: BASE64.encode(&signed.body),
            signature: BASE64.encode(&signed.signature),
            signer_cert_der: BASE64.encode(&signed.signer_cert_der),
        }
    }

    /// The three decoded fields.
    pub fn decode(&self) -> Result<SignedParts, ApplyError> {
        let field = |name: &str, text: &str| {
            BASE64
                .decode(text.trim())
                .map_err(|e| ApplyError::Request(format!("{name} is not base64: {e}")))
        };
        Ok(SignedParts {
            body: field("body", &self.body)?,
            signature: field("signature", &self.signature)?,
            signer_cert_der: field("signer_cert_der", &self.signer_cert_der)?,
        })
    }
}

/// The decoded fields of an [`ApplyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedParts {
    /// The signed body.
    pub body: Vec<u8>,
    /// The signature over it.
    pub signature: Vec<u8>,
    /// The signer's certificate, DER.
    pub signer_cert_der: Vec<u8>,
}

/// One route document in force, as `GET /routes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// The route name.
    pub name: String,
    /// The document's id: the first 16 bytes of a SHA-256 over its name and
    /// signed parts, hex. Equal on every node that holds the same document.
    pub id: String,
    /// When the operator issued it (signed), ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// The operator who signed it.
    pub signer: String,
    /// When the signer's certificate expires (Unix seconds). The document stays
    /// in force after that (it fails closed) until a newer one replaces it.
    pub signer_not_after: i64,
    /// Whether the signer's certificate has expired.
    pub signer_expired: bool,
    /// A tombstone: the route is deleted.
    pub deleted: bool,
    /// The route itself.
    pub spec: RouteSpec,
}

/// One refused document, as `GET /routes/rejected` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedView {
    /// The route name it claims.
    pub name: String,
    /// The metric label: `invalid_body`, `from_the_future`, `too_many_documents`,
    /// or a signature reason (`bad_signature`, `not_an_operator`, `other_ca`, ...).
    pub reason: String,
    /// What is wrong, in words.
    pub error: String,
    /// The signer certificate's identity, if it parses.
    pub signer: Option<String>,
    /// The members that sent it (this node's own name for its data directory).
    pub published_by: Vec<String>,
    /// Whether this node holds it in its data directory.
    pub stored: bool,
}

/// What `POST /routes` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    /// The route did not exist (or was deleted): answered with 201.
    Created,
    /// A document issued later replaced the one in force.
    Updated,
    /// A tombstone replaced the document in force.
    Deleted,
    /// The document (or the same route, signed with the same certificate) is
    /// already in force; nothing changed.
    Unchanged,
}

impl std::fmt::Display for ApplyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyResult::Created => "created",
            ApplyResult::Updated => "updated",
            ApplyResult::Deleted => "deleted",
            ApplyResult::Unchanged => "unchanged",
        })
    }
}

/// The answer to a successful `POST /routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// What was done.
    pub result: ApplyResult,
    /// The document now in force.
    pub route: RouteView,
}

/// Why `POST /routes` refused a document. [`ApplyError::status`] is the HTTP status.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The request body is not an [`ApplyRequest`].
    #[error(
        "the request is not a signed route ({0}); send JSON {{\"body\", \"signature\", \"signer_cert_der\"}}, each base64, as `shoal route apply` does (see docs/routing.md)"
    )]
    Request(String),
    /// The route body does not parse or validate.
    #[error("invalid route: {0}")]
    Invalid(RouteError),
    /// The signer or the signature is refused.
    #[error("route {name:?}: {error}")]
    Signature {
        /// The route.
        name: String,
        /// Why.
        error: SignatureError,
    },
    /// `issued_at_ms` is too far in the future.
    #[error(
        "route {name:?}: issued_at_ms is {issued} ({ahead_s} s ahead of this node's clock; at most {max_s} s are tolerated); check the clock of the machine that signed it (NTP)"
    )]
    FromTheFuture {
        /// The route.
        name: String,
        /// Its issue time.
        issued: String,
        /// How far ahead, in seconds.
        ahead_s: u64,
        /// The tolerance, in seconds.
        max_s: u64,
    },
    /// The document would not beat the one in force.
    #[error(
        "route {name:?}: refused, the document in force was issued later ({current}, signed by {signer}) than this one ({issued}); an update must be issued after the document it replaces. Check the clock of the machine that signed it (it may be behind), or leave issued_at_ms out of the file so that `shoal route apply` sets it"
    )]
    NotNewer {
        /// The route.
        name: String,
        /// This document's issue time.
        issued: String,
        /// The issue time of the document in force.
        current: String,
        /// Who signed the document in force.
        signer: String,
    },
    /// A tombstone for a route this node does not know.
    #[error(
        "route {name:?} does not exist on this node (GET /routes lists them); nothing to delete"
    )]
    NoSuchRoute {
        /// The route.
        name: String,
    },
    /// A tombstone for a route that is already deleted.
    #[error("route {name:?} is already deleted")]
    AlreadyDeleted {
        /// The route.
        name: String,
    },
    /// The membership protocol refused the document (too many documents, say).
    #[error("route {name:?}: refused ({reason}); see docs/routing.md")]
    Refused {
        /// The route.
        name: String,
        /// The refusal's label.
        reason: &'static str,
    },
    /// The document could not be written to disk.
    #[error(
        "route {name:?}: cannot store it in {path}: {cause}; check node.data_dir (free space, permissions)"
    )]
    Store {
        /// The route.
        name: String,
        /// The file.
        path: PathBuf,
        /// The error.
        cause: String,
    },
}

impl ApplyError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            ApplyError::Request(_)
            | ApplyError::Invalid(_)
            | ApplyError::Signature { .. }
            | ApplyError::FromTheFuture { .. } => 400,
            ApplyError::NotNewer { .. } => 409,
            ApplyError::NoSuchRoute { .. } | ApplyError::AlreadyDeleted { .. } => 404,
            ApplyError::Refused { .. } => 409,
            ApplyError::Store { .. } => 500,
        }
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct State {
    /// The documents in `<data_dir>/routes/`, by name.
    stored: BTreeMap<String, RouteDocument>,
    /// The ids of the documents in force at the last refresh, by name.
    in_force: BTreeMap<String, [u8; 16]>,
    /// The documents the route table was last built from (what `GET /routes`
    /// lists, so that it agrees with the table).
    documents: Vec<HeldDocument>,
    /// Documents of this node's data directory that were refused.
    refused_locally: Vec<RejectedView>,
    /// Ids of documents whose signer expired, already reported.
    expired_reported: HashSet<[u8; 16]>,
}

/// This node's route documents: stored, watched, applied. See the module
/// documentation.
pub struct RouteStore {
    dir: PathBuf,
    max_skew: Duration,
    tls: Arc<TlsState>,
    gossip: Arc<Gossip>,
    metrics: Arc<Metrics>,
    table: SharedRoutes,
    state: Mutex<State>,
}

impl std::fmt::Debug for RouteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RouteStore {
    /// Opens the store in `<data_dir>/routes/` (created if missing), puts the
    /// documents saved there in force (unreadable or refused ones are logged and
    /// listed as rejected) and fills `table`.
    pub async fn open(
        data_dir: &Path,
        max_skew: Duration,
        tls: Arc<TlsState>,
        gossip: Arc<Gossip>,
        metrics: Arc<Metrics>,
        table: SharedRoutes,
    ) -> std::io::Result<Arc<RouteStore>> {
        let dir = data_dir.join(ROUTES_DIR);
        std::fs::create_dir_all(&dir)?;
        let stored = load_dir(&dir);
        if !stored.is_empty() {
            tracing::info!(
                documents = stored.len(),
                dir = %dir.display(),
                "loaded stored route documents"
            );
        }
        for reason in SignatureError::REASONS.iter().chain(BODY_REASONS.iter()) {
            let _ = metrics
                .routing
                .route_rejections
                .get_or_create(&ReasonLabels { reason });
        }
        let mut refused_locally = Vec::new();
        for doc in stored.values() {
            if let Err(r) = gossip.publish_document(doc.clone()) {
                gossip.count_refused_document(doc, r.label);
                tracing::warn!(route = %doc.name, reason = r.label, "a stored route document is refused; it is not in force");
                refused_locally.push(rejected_view(doc, r.label, gossip.name(), true));
            }
        }
        let store = Arc::new(RouteStore {
            dir,
            max_skew,
            tls,
            gossip,
            metrics,
            table,
            state: Mutex::new(State {
                stored,
                refused_locally,
                ..State::default()
            }),
        });
        store.refresh().await;
        Ok(store)
    }

    /// The documents in force (tombstones included), by name: those the route
    /// table was last built from.
    pub async fn routes(&self) -> Vec<RouteView> {
        let now = unix_ms();
        let st = self.state.lock().await;
        st.documents.iter().map(|d| view_of(d, now)).collect()
    }

    /// The documents refused: from peers (the most recent), and from this
    /// node's data directory.
    pub async fn rejected(&self) -> Vec<RejectedView> {
        let mut out: Vec<RejectedView> = self
            .gossip
            .refused_documents()
            .into_iter()
            .map(|r| {
                let mut v = rejected_view(&r.document, r.reason, "", false);
                v.published_by = r.senders;
                v.published_by.sort();
                v
            })
            .collect();
        out.extend(self.state.lock().await.refused_locally.iter().cloned());
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Follows the documents in force until `stop` fires; looks again every
    /// 30 s (signer certificates expire, failed writes are retried).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut views = self.gossip.watch();
        let mut trust = self.tls.trust_changes();
        let mut tick = tokio::time::interval(RECHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = trust.changed() => self.gossip.recheck_trust(),
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.refresh().await;
        }
    }

    /// Brings the table and the stored copies in line with the documents in
    /// force.
    pub async fn refresh(&self) {
        let view = self.gossip.view();
        let now = unix_ms();
        let mut st = self.state.lock().await;
        let in_force: BTreeMap<String, [u8; 16]> = view
            .documents
            .iter()
            .map(|d| (d.document.name.clone(), d.id))
            .collect();
        let changed = in_force != st.in_force;
        for d in &view.documents {
            if st.in_force.get(&d.document.name) != Some(&d.id) {
                tracing::info!(
                    route = %d.document.name,
                    id = %hex_id(&d.id),
                    issued_at = %rfc3339_ms(d.spec.issued_at_ms),
                    signer = %d.signer.operator,
                    deleted = d.spec.deleted,
                    "route document in force"
                );
            }
            self.store_winner(&mut st, &d.document).await;
        }
        self.report_expired(&mut st, &view.documents, now);
        if changed {
            let table = RouteTable::new(
                view.documents
                    .iter()
                    .filter(|d| !d.spec.deleted)
                    .map(|d| d.spec.clone()),
            );
            self.metrics.routing.route_documents.set(table.len() as i64);
            self.table.store(Arc::new(table));
            let expiry = view
                .documents
                .iter()
                .map(|d| d.signer.not_after_ms / 1000)
                .min();
            self.metrics
                .routing
                .route_signer_expiry
                .set(expiry.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
        }
        st.in_force = in_force;
        st.documents = view.documents.clone();
    }

    /// Stores `doc` unless it is what the data directory already holds.
    async fn store_winner(&self, st: &mut State, doc: &RouteDocument) {
        if st.stored.get(&doc.name) == Some(doc) {
            return;
        }
        match self.persist(doc).await {
            Ok(()) => {
                st.stored.insert(doc.name.clone(), doc.clone());
            }
            Err(e) => {
                tracing::error!(route = %doc.name, error = %e, "cannot store a route document")
            }
        }
    }

    /// Warns once per document whose signer's certificate expired, and keeps the
    /// gauge of such documents.
    fn report_expired(&self, st: &mut State, docs: &[HeldDocument], now: u64) {
        let expired: Vec<&HeldDocument> = docs.iter().filter(|d| d.signer_expired(now)).collect();
        self.metrics
            .routing
            .route_documents_expired
            .set(expired.len() as i64);
        for d in &expired {
            if st.expired_reported.insert(d.id) {
                tracing::warn!(
                    route = %d.document.name,
                    signer = %d.signer.operator,
                    expired = %rfc3339_ms(d.signer.not_after_ms),
                    "the operator certificate that signed this route document has expired; the document stays in force (its allow-lists keep denying) until a newer one is applied: sign it again with a valid operator certificate"
                );
            }
        }
        let current: HashSet<[u8; 16]> = expired.iter().map(|d| d.id).collect();
        st.expired_reported.retain(|id| current.contains(id));
    }

    /// `POST /routes`: checks a signed route, refuses it if it would not beat the
    /// document in force, and puts it in force (which stores and gossips it).
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyResponse, ApplyError> {
        let now_ms = unix_ms();
        let (spec, doc) = self.parse_request(request, now_ms)?;
        let name = spec.name.clone();
        let signer = self.check_signer(&doc)?;
        let current = self.held(&name);
        let result = judge_against(&doc, &spec, &signer.operator, current.as_ref())?;
        if result == ApplyResult::Unchanged
            && let Some(held) = &current
        {
            let route = view_of(held, now_ms);
            return Ok(ApplyResponse { result, route });
        }
        self.put_in_force(&doc, &spec, &signer.operator, current.as_ref())
            .await?;
        tracing::info!(route = %name, signer = %signer.operator, %result, "accepted a route document from the admin API");
        self.refresh().await;
        let route = self
            .held(&name)
            .map(|held| view_of(&held, now_ms))
            .ok_or(ApplyError::NoSuchRoute { name })?;
        Ok(ApplyResponse { result, route })
    }

    /// The route and its document from an apply request: a body that parses,
    /// issued no further ahead of this node's clock than the skew allowed.
    fn parse_request(
        &self,
        request: &ApplyRequest,
        now_ms: u64,
    ) -> Result<(RouteSpec, RouteDocument), ApplyError> {
        let SignedParts {
            body,
            signature,
            signer_cert_der,
        } = request.decode()?;
        let mut doc = RouteDocument {
            name: String::new(),
            body,
            signature,
            signer_cert_der,
        };
        let spec = match RouteSpec::parse_body(&doc.body) {
            Ok(spec) => spec,
            Err(e) => {
                self.gossip.count_refused_document(&doc, "invalid_body");
                return Err(ApplyError::Invalid(e));
            }
        };
        let max_skew = u64::try_from(self.max_skew.as_millis()).unwrap_or(u64::MAX);
        if spec.issued_at_ms > now_ms.saturating_add(max_skew) {
            return Err(ApplyError::FromTheFuture {
                name: spec.name.clone(),
                issued: rfc3339_ms(spec.issued_at_ms),
                ahead_s: (spec.issued_at_ms - now_ms) / 1000,
                max_s: max_skew / 1000,
            });
        }
        doc.name = spec.name.clone();
        Ok((spec, doc))
    }

    /// The document's signer: an operator of the mesh CA whose certificate is
    /// valid now (relaying only needs it valid when the document was issued).
    fn check_signer(&self, doc: &RouteDocument) -> Result<shoal_pki::Signer, ApplyError> {
        self.tls
            .verify_route_document(doc, UnixTime::now())
            .map_err(|error| {
                self.gossip.count_refused_document(doc, error.reason());
                tracing::warn!(route = %doc.name, reason = error.reason(), %error, "refused a route document from the admin API");
                ApplyError::Signature {
                    name: doc.name.clone(),
                    error,
                }
            })
    }

    /// The document gossip holds for route `name`, if any.
    fn held(&self, name: &str) -> Option<HeldDocument> {
        self.gossip
            .view()
            .documents
            .iter()
            .find(|d| d.document.name == name)
            .cloned()
    }

    /// Publishes `doc` in gossip (which puts it in force), then stores it.
    async fn put_in_force(
        &self,
        doc: &RouteDocument,
        spec: &RouteSpec,
        signer: &str,
        current: Option<&HeldDocument>,
    ) -> Result<(), ApplyError> {
        let name = spec.name.clone();
        match self.gossip.publish_document(doc.clone()) {
            Ok(DocumentApplied::InForce) => {}
            Ok(DocumentApplied::Stale) => {
                return Err(ApplyError::NotNewer {
                    name,
                    issued: rfc3339_ms(spec.issued_at_ms),
                    current: current
                        .map(|c| rfc3339_ms(c.spec.issued_at_ms))
                        .unwrap_or_default(),
                    signer: signer.to_string(),
                });
            }
            Err(r) => {
                self.gossip.count_refused_document(doc, r.label);
                return Err(ApplyError::Refused {
                    name,
                    reason: r.label,
                });
            }
        }
        self.persist(doc).await?;
        self.state.lock().await.stored.insert(name, doc.clone());
        Ok(())
    }

    /// Writes `doc` to its file atomically (temporary file, fsync, rename).
    async fn persist(&self, doc: &RouteDocument) -> Result<(), ApplyError> {
        let path = self.dir.join(format!("{}{ROUTE_FILE_SUFFIX}", doc.name));
        let fail = |path: &Path, cause: String| ApplyError::Store {
            name: doc.name.clone(),
            path: path.to_path_buf(),
            cause,
        };
        let text = encode_text(doc).map_err(|e| fail(&path, e.to_string()))?;
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            shoal_pki::files::write_atomic(&target, text.as_bytes(), false)
        })
        .await
        .map_err(|e| fail(&path, e.to_string()))?
        .map_err(|e| fail(&path, e.to_string()))
    }
}

/// What applying `doc` would do against the document in force: the result, or
/// the refusal an operator should see.
fn judge_against(
    doc: &RouteDocument,
    spec: &RouteSpec,
    signer: &str,
    current: Option<&HeldDocument>,
) -> Result<ApplyResult, ApplyError> {
    let name = spec.name.clone();
    let Some(cur) = current else {
        return if spec.deleted {
            Err(ApplyError::NoSuchRoute { name })
        } else {
            Ok(ApplyResult::Created)
        };
    };
    let d = &cur.document;
    if d.body == doc.body
        && d.signature == doc.signature
        && d.signer_cert_der == doc.signer_cert_der
    {
        return Ok(ApplyResult::Unchanged);
    }
    if spec.deleted && cur.spec.deleted {
        return Err(ApplyError::AlreadyDeleted { name });
    }
    // The same route signed again with the same certificate (a pipeline applying
    // every route on each deploy): keep the document in force. Another
    // certificate (a renewed one) makes a new document.
    let same_content = RouteSpec {
        issued_at_ms: cur.spec.issued_at_ms,
        ..spec.clone()
    } == cur.spec;
    if same_content && d.signer_cert_der == doc.signer_cert_der {
        return Ok(ApplyResult::Unchanged);
    }
    if Precedence::of(doc, spec) <= cur.precedence() {
        return Err(ApplyError::NotNewer {
            name,
            issued: rfc3339_ms(spec.issued_at_ms),
            current: rfc3339_ms(cur.spec.issued_at_ms),
            signer: signer.to_string(),
        });
    }
    Ok(match () {
        _ if spec.deleted => ApplyResult::Deleted,
        _ if cur.spec.deleted => ApplyResult::Created,
        _ => ApplyResult::Updated,
    })
}

fn rejected_view(doc: &RouteDocument, reason: &str, sender: &str, stored: bool) -> RejectedView {
    RejectedView {
        name: doc.name.clone(),
        reason: reason.to_string(),
        error: reason_sentence(reason),
        signer: Some(describe_cert(&CertificateDer::from(
            doc.signer_cert_der.as_slice(),
        ))),
        published_by: if sender.is_empty() {
            Vec::new()
        } else {
            vec![sender.to_string()]
        },
        stored,
    }
}

/// A sentence for a refusal label.
fn reason_sentence(reason: &str) -> String {
    match reason {
        "invalid_body" => "the body does not parse, validate or name its route".into(),
        "from_the_future" => "issued_at_ms is ahead of this node's clock by more than the allowed skew; check the signer's clock (NTP)".into(),
        "too_many_documents" => "the mesh holds as many route documents as gossip.max_documents allows".into(),
        "bad_signature" => "the signature does not match the document body".into(),
        "other_ca" => "the signer certificate was not issued by this mesh's CA".into(),
        "not_an_operator" => "the signer certificate is not an operator certificate".into(),
        "expired" => "the signer certificate had expired when the document was issued".into(),
        "not_yet_valid" => "the signer certificate was not valid yet when the document was issued".into(),
        other => format!("refused: {other}"),
    }
}

/// Reads every `<name>.route` file of `dir` (documents written before route
/// documents lost their node-stamped version are read too). Files that do not
/// decode, or whose document is for another name, are logged and skipped;
/// temporary files left by an interrupted write are removed.
fn load_dir(dir: &Path) -> BTreeMap<String, RouteDocument> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the route documents directory");
            return out;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') {
            if file.contains(".tmp-") {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(stem) = file.strip_suffix(ROUTE_FILE_SUFFIX) else {
            continue;
        };
        let doc = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| decode_stored(text.trim()));
        match doc {
            Ok(doc) if doc.name == stem => {
                out.insert(doc.name.clone(), doc);
            }
            Ok(doc) => tracing::warn!(
                file = %path.display(),
                route = %doc.name,
                "skipping a stored route document whose file name is not its route's"
            ),
            Err(error) => tracing::warn!(
                file = %path.display(),
                %error,
                "skipping an unreadable stored route document"
            ),
        }
    }
    out
}

/// A stored document's text, in the current layout or the one with a version.
fn decode_stored(text: &str) -> Result<RouteDocument, String> {
    match decode_text::<RouteDocument>(text) {
        Ok(doc) => Ok(doc),
        Err(current) => decode_text::<LegacyRouteDocument>(text)
            .map(RouteDocument::from)
            .map_err(|_| current.to_string()),
    }
}

/// The durations a route file may write as in the config (`timeout = "5s"`,
/// `per_try_timeout = "1500ms"`, a session's `ttl = "1h"`), turned into the
/// document's own fields (`timeout_ms`, `per_try_timeout_ms`, `ttl_s`) before
/// it is validated and signed. Errors name the field.
pub fn durations_as_written(route: &mut serde_json::Value) -> Result<(), String> {
    let Some(rules) = route.get_mut("rules").and_then(|r| r.as_array_mut()) else {
        return Ok(());
    };
    for (i, rule) in rules.iter_mut().enumerate() {
        let at = format!("rules[{i}]");
        convert(rule, &at, ("timeout", "timeout_ms"), 1)?;
        convert(rule, &at, ("per_try_timeout", "per_try_timeout_ms"), 1)?;
        if let Some(session) = rule.get_mut("session") {
            convert(session, &format!("{at}.session"), ("ttl", "ttl_s"), 1000)?;
        }
    }
    Ok(())
}

/// Replaces `table[written]` (a duration string) by `table[field]` in units
/// of `unit_ms` milliseconds.
fn convert(
    table: &mut serde_json::Value,
    at: &str,
    (written, field): (&str, &str),
    unit_ms: u128,
) -> Result<(), String> {
    let Some(map) = table.as_object_mut() else {
        return Ok(());
    };
    let Some(value) = map.remove(written) else {
        return Ok(());
    };
    if map.contains_key(field) {
        return Err(format!("{at}: give {written} or {field}, not both"));
    }
    let text = value.as_str().ok_or_else(|| {
        format!("{at}.{written}: a duration with a unit, such as \"5s\" or \"500ms\" (got {value})")
    })?;
    let d = humantime_serde::re::humantime::parse_duration(text).map_err(|e| {
        format!("{at}.{written}: {text:?} is not a duration ({e}); write it as \"5s\" or \"500ms\"")
    })?;
    let ms = d.as_millis();
    if ms % unit_ms != 0 {
        return Err(format!(
            "{at}.{written}: {text:?} is not a whole number of seconds"
        ));
    }
    let n =
        u64::try_from(ms / unit_ms).map_err(|_| format!("{at}.{written}: {text:?} is too long"))?;
    map.insert(field.to_string(), serde_json::Value::from(n));
    Ok(())
}

#[cfg(test)]
mod tests {
    use mesh_proto::membership::documents::document_id;

    use super::*;

    #[test]
    fn durations_written_as_in_the_config_become_the_documents_fields() {
        let mut route = serde_json::json!({"name": "web", "rules": [
            {"timeout": "2s", "per_try_timeout": "500ms", "session": {"type": "cookie", "ttl": "1h"}},
            {"timeout_ms": 7}
        ]});
        durations_as_written(&mut route).unwrap();
        assert_eq!(
            route["rules"],
            serde_json::json!([
                {"timeout_ms": 2000, "per_try_timeout_ms": 500, "session": {"type": "cookie", "ttl_s": 3600}},
                {"timeout_ms": 7}
            ])
        );
        let error = |rule: serde_json::Value| {
            let mut route = serde_json::json!({"rules": [rule]});
            durations_as_written(&mut route).unwrap_err()
        };
        assert!(
            error(serde_json::json!({"timeout": 5}))
                .starts_with("rules[0].timeout: a duration with a unit")
        );
        assert!(error(serde_json::json!({"timeout": "5 parsecs"})).contains("is not a duration"));
        assert!(
            error(serde_json::json!({"session": {"ttl": "1500ms"}}))
                .contains("whole number of seconds")
        );
        assert_eq!(
            error(serde_json::json!({"timeout": "1s", "timeout_ms": 1000})),
            "rules[0]: give timeout or timeout_ms, not both"
        );
    }

    fn doc(name: &str) -> RouteDocument {
        RouteDocument {
            name: name.to_string(),
            body: b"{}".to_vec(),
            signature: vec![1, 2, 3],
            signer_cert_der: vec![4, 5],
        }
    }

    fn held(spec: &RouteSpec, signature: u8, cert: u8) -> HeldDocument {
        let document = RouteDocument {
            name: spec.name.clone(),
            body: spec.to_body(),
            signature: vec![signature],
            signer_cert_der: vec![cert],
        };
        HeldDocument {
            id: document_id(&document),
            document,
            spec: spec.clone(),
            signer: mesh_proto::membership::DocumentSigner {
                operator: "alice".into(),
                not_before_ms: 0,
                not_after_ms: u64::MAX,
            },
        }
    }

    #[test]
    fn apply_requests_carry_the_three_parts_in_base64() {
        let signed = shoal_pki::SignedRoute {
            name: "shop".into(),
            body: b"{\"name\":\"shop\"}".to_vec(),
            signature: vec![0, 255, 7],
            signer_cert_der: vec![48, 1, 2],
        };
        let request = ApplyRequest::new(&signed);
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["signature"], "AP8H", "standard, padded base64");
        let parts = request.decode().unwrap();
        assert_eq!(parts.body, signed.body);
        assert_eq!(parts.signature, signed.signature);
        assert_eq!(parts.signer_cert_der, signed.signer_cert_der);

        let mut bad = request.clone();
        bad.signature = "not base64!".into();
        let err = bad.decode().unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("signature is not base64"), "{err}");
        let unknown: Result<ApplyRequest, _> =
            serde_json::from_str(r#"{"body":"","signature":"","signer_cert_der":"","version":1}"#);
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    #[test]
    fn stored_documents_are_read_back_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["shop", "api.v2"] {
            let text = encode_text(&doc(name)).unwrap();
            std::fs::write(dir.path().join(format!("{name}.route")), text + "\n").unwrap();
        }
        // A document under another route's file name, junk, a leftover temporary
        // file and an unrelated file.
        std::fs::write(
            dir.path().join("other.route"),
            encode_text(&doc("shop")).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.route"), "not a document").unwrap();
        std::fs::write(dir.path().join(".shop.route.tmp-1-2"), "half").unwrap();
        std::fs::write(dir.path().join("README"), "hello").unwrap();

        let loaded = load_dir(dir.path());
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            ["api.v2", "shop"],
            "{loaded:?}"
        );
        assert_eq!(loaded["shop"], doc("shop"));
        assert!(!dir.path().join(".shop.route.tmp-1-2").exists());
        assert!(dir.path().join("README").exists());
        assert!(load_dir(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn applying_is_judged_against_the_document_in_force() {
        let v1 = RouteSpec::tombstone("shop", 1_000);
        let live = RouteSpec::parse_body(
            br#"{"name":"shop","issued_at_ms":1000,"rules":[{"backends":[{"service":"web"}]}]}"#,
        )
        .unwrap();
        let cur = held(&live, 1, 9);
        let doc_of = |h: &HeldDocument| h.document.clone();
        // Nothing in force: created; a tombstone for nothing: 404.
        assert_eq!(
            judge_against(&doc_of(&cur), &live, "alice", None).unwrap(),
            ApplyResult::Created
        );
        assert_eq!(
            judge_against(&doc_of(&held(&v1, 1, 9)), &v1, "alice", None)
                .unwrap_err()
                .status(),
            404
        );
        // The same document, or the same route re-signed with the same
        // certificate: unchanged.
        assert_eq!(
            judge_against(&doc_of(&cur), &live, "alice", Some(&cur)).unwrap(),
            ApplyResult::Unchanged
        );
        let mut resigned = live.clone();
        resigned.issued_at_ms = 2_000;
        let again = held(&resigned, 2, 9);
        assert_eq!(
            judge_against(&doc_of(&again), &resigned, "alice", Some(&cur)).unwrap(),
            ApplyResult::Unchanged
        );
        // Issued later by another certificate: an update; earlier: 409.
        let renewed = held(&resigned, 2, 8);
        assert_eq!(
            judge_against(&doc_of(&renewed), &resigned, "alice", Some(&cur)).unwrap(),
            ApplyResult::Updated
        );
        let mut older = live.clone();
        older.issued_at_ms = 500;
        let err =
            judge_against(&doc_of(&held(&older, 3, 8)), &older, "alice", Some(&cur)).unwrap_err();
        assert_eq!(err.status(), 409, "{err}");
        // A later tombstone deletes; a second one is 404.
        let mut gone = v1.clone();
        gone.issued_at_ms = 3_000;
        assert_eq!(
            judge_against(&doc_of(&held(&gone, 4, 9)), &gone, "alice", Some(&cur)).unwrap(),
            ApplyResult::Deleted
        );
        let deleted = held(&gone, 4, 9);
        let mut again = gone.clone();
        again.issued_at_ms = 4_000;
        assert_eq!(
            judge_against(
                &doc_of(&held(&again, 5, 8)),
                &again,
                "alice",
                Some(&deleted)
            )
            .unwrap_err()
            .status(),
            404
        );
    }

    #[test]
    fn every_reason_has_a_sentence() {
        for reason in SignatureError::REASONS.iter().chain(BODY_REASONS.iter()) {
            assert!(!reason_sentence(reason).is_empty());
        }
        assert_eq!(rfc3339_ms(1_767_225_600_120), "2026-01-01T00:00:00.12Z");
    }
}
