//! Route documents (design §4): the store of signed documents this node accepted,
//! their merge with what gossip delivers, and the route table HTTP listeners read.
//!
//! Every node keeps the documents in force in `<data_dir>/routes/<name>.route`
//! (one file per route, written atomically) and publishes each under
//! `route:<name>` in its own gossip key space. Whenever gossip changes,
//! [`RouteStore::refresh`] collects the `route:*` values of every live member
//! and this node's stored documents, checks each distinct document once (body
//! by `mesh_proto::route`, operator signature by [`TlsState`]; verdicts are
//! cached by a hash of signature, body and certificate), and lets
//! [`mesh_proto::route::merge()`] pick the winner per name. Then it
//!
//! - swaps the [`SharedRoutes`] table if the winners changed (readers never wait);
//! - *adopts* winners it does not hold yet — stores them and publishes them under
//!   its own keys — so a document survives the loss of any node, and a node that
//!   was away picks up what changed meanwhile; a stored document that lost is
//!   overwritten by the winner, and keys it published for names without a valid
//!   document any more are deleted;
//! - reports every refused document once (log and
//!   `shoal_route_documents_rejected_total{reason}`) and never applies it.
//!
//! [`RouteStore::apply`] is `POST /routes`: it checks a signed route, refuses one
//! that would not beat the document in force (an operator clock running behind),
//! stamps it with this node's hybrid logical clock, stores it and publishes it.
//! The decisions (validation, order, merge) live in `mesh_proto::route`; this
//! module moves documents between gossip, disk and the table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chitchat::{ChitchatId, NodeState};
use mesh_proto::codec::{decode_text, encode_text};
use mesh_proto::gossip::{
    HlcTimestamp, Key, ROUTE_KEY_PREFIX, RouteDocument, parse_key, route_key,
};
use mesh_proto::hlc::Hlc;
use mesh_proto::route::table::RouteTable;
use mesh_proto::route::{Precedence, RouteError, RouteSpec, Winner, merge};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_pki::{SignatureError, Signer};
use thiserror::Error;
use tokio::sync::{Mutex, watch};

use crate::gossip::Gossip;
use crate::metrics::{Metrics, ReasonLabels};
use crate::tls::{TlsState, describe_cert};

/// The route table HTTP listeners read, swapped atomically when the merged set of
/// route documents changes (readers never block, in-flight requests keep the table
/// they started with).
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// The directory under `node.data_dir` holding the stored documents.
pub const ROUTES_DIR: &str = "routes";
/// Suffix of a stored document's file: `<route name>.route`, holding the
/// document's gossip text (base64 of its frame).
pub const ROUTE_FILE_SUFFIX: &str = ".route";
/// Largest `POST /routes` request body, in bytes (a route document is at most
/// 32 KiB; base64 makes that about 43 KiB).
pub const MAX_APPLY_REQUEST_BYTES: usize = 64 * 1024;
/// How often the merge runs even if gossip did not change: signer certificates
/// expire, and a failed write is retried.
const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Reasons of `shoal_route_documents_rejected_total` besides the signature ones
/// ([`SignatureError::REASONS`]).
pub const BODY_REASONS: [&str; 3] = ["malformed", "key_mismatch", "invalid_body"];

/// The live members' gossip states, as chitchat's watcher delivers them.
type LiveStates = std::collections::BTreeMap<ChitchatId, NodeState>;

/// A SHA-256 over length-prefixed parts.
type Digest32 = [u8; 32];

/// One `route:*` value in gossip: (member, key, value).
type MemberValue = (String, String, String);

/// What checking one document found: its spec and signer, or the refusal's
/// reason label and message.
type Check = Result<(RouteSpec, Signer), (&'static str, String)>;

fn digest(parts: &[&[u8]]) -> Digest32 {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// What the signature check depends on: signature, body, certificate.
fn signature_id(doc: &RouteDocument) -> Digest32 {
    digest(&[&doc.signature, &doc.body, &doc.signer_cert_der])
}

/// A refused document, for reporting it once: name and the signed parts (not
/// the version, which any member can change).
fn report_id(doc: &RouteDocument) -> Digest32 {
    digest(&[
        doc.name.as_bytes(),
        &doc.signature,
        &doc.body,
        &doc.signer_cert_der,
    ])
}

/// Refused documents remembered as reported; past this many the memory is
/// cleared (and documents still around are reported again).
const MAX_REPORTED: usize = 4096;

/// One distinct document: name, version and the signed parts.
fn document_id(doc: &RouteDocument) -> Digest32 {
    digest(&[
        doc.name.as_bytes(),
        &doc.version.wall_ms.to_be_bytes(),
        &doc.version.logical.to_be_bytes(),
        doc.version.node.as_bytes(),
        &doc.signature,
        &doc.body,
        &doc.signer_cert_der,
    ])
}

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

// ---------------------------------------------------------------------------
// Admin API types
// ---------------------------------------------------------------------------

/// The JSON body of `POST /routes`: a signed route, each field base64 (standard
/// alphabet, padded). The node stamps the version; the signer does not.
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

/// A document version (its HLC reading), in JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionView {
    /// Wall-clock part, ms since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter.
    pub logical: u32,
    /// The node that stamped it.
    pub node: String,
}

impl From<&HlcTimestamp> for VersionView {
    fn from(v: &HlcTimestamp) -> Self {
        VersionView {
            wall_ms: v.wall_ms,
            logical: v.logical,
            node: v.node.clone(),
        }
    }
}

impl std::fmt::Display for VersionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.logical, self.node)
    }
}

/// One route document in force, as `GET /routes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// The route name.
    pub name: String,
    /// The version stamped by the node that accepted it.
    pub version: VersionView,
    /// When the operator issued it (signed), ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// The operator who signed it.
    pub signer: String,
    /// When the signer's certificate expires (Unix seconds): the document stops
    /// verifying then, unless replaced.
    pub signer_not_after: i64,
    /// A tombstone: the route is deleted.
    pub deleted: bool,
    /// The route itself.
    pub spec: RouteSpec,
}

/// One refused document, as `GET /routes/rejected` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedView {
    /// The route name it claims (its key's name for undecodable values).
    pub name: String,
    /// Its version, if it decoded.
    pub version: Option<VersionView>,
    /// The metric label: `malformed`, `key_mismatch`, `invalid_body`, or a
    /// signature reason (`bad_signature`, `not_an_operator`, `other_ca`, ...).
    pub reason: String,
    /// What is wrong, in words.
    pub error: String,
    /// The signer certificate's identity, if it parses.
    pub signer: Option<String>,
    /// The members publishing it.
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
    /// A new version replaced the one in force.
    Updated,
    /// A tombstone replaced the version in force.
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
        "route {name:?}: refused, the version in force was issued later ({current}, signed by {signer}) than this document ({issued}); an update must be issued after the version it replaces. Check the clock of the machine that signed it (it may be behind), or leave issued_at_ms out of the file so that `shoal route apply` sets it"
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
            ApplyError::Store { .. } => 500,
        }
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// A document in force, with what the checks found.
#[derive(Debug, Clone)]
struct InForce {
    id: Digest32,
    winner: Winner,
    signer: Signer,
}

impl InForce {
    fn view(&self) -> RouteView {
        RouteView {
            name: self.winner.document.name.clone(),
            version: (&self.winner.document.version).into(),
            issued_at_ms: self.winner.spec.issued_at_ms,
            signer: self.signer.operator.clone(),
            signer_not_after: self.signer.not_after,
            deleted: self.winner.spec.deleted,
            spec: self.winner.spec.clone(),
        }
    }
}

#[derive(Debug)]
struct State {
    hlc: Hlc,
    /// The documents in `<data_dir>/routes/`, by name.
    stored: BTreeMap<String, RouteDocument>,
    /// Names this node published under `route:<name>`.
    published: HashSet<String>,
    /// Signature verdicts by [`signature_id`] (time-independent ones only).
    verdicts: HashMap<Digest32, Result<Signer, SignatureError>>,
    /// Refused documents already logged and counted ([`report_id`], or a hash of
    /// an undecodable value), at most [`MAX_REPORTED`].
    reported: HashSet<Digest32>,
    /// The documents in force after the last merge.
    in_force: BTreeMap<String, InForce>,
    /// The documents refused by the last merge.
    rejected: Vec<RejectedView>,
    /// A hash of the gossip input of the last merge.
    fingerprint: Option<u64>,
}

/// This node's route documents: stored, merged with gossip, published. See the
/// module documentation.
pub struct RouteStore {
    dir: PathBuf,
    tls: Arc<TlsState>,
    gossip: Arc<Gossip>,
    metrics: Arc<Metrics>,
    table: SharedRoutes,
    live: watch::Receiver<LiveStates>,
    state: Mutex<State>,
}

impl std::fmt::Debug for RouteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// One document offered to the merge, and who offers it.
struct Candidate {
    doc: RouteDocument,
    published_by: Vec<String>,
    stored: bool,
}

impl RouteStore {
    /// Opens the store in `<data_dir>/routes/` (created if missing), loads the
    /// documents saved there (unreadable files are logged and skipped), merges them
    /// with what gossip already has, publishes the winners and fills `table`.
    pub async fn open(
        data_dir: &Path,
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
                .route_rejections
                .get_or_create(&ReasonLabels { reason });
        }
        let node = gossip.self_id().node_id.to_string();
        let live = gossip.live_watcher().await;
        let store = Arc::new(RouteStore {
            dir,
            tls,
            gossip,
            metrics,
            table,
            live,
            state: Mutex::new(State {
                hlc: Hlc::new(node),
                stored,
                published: HashSet::new(),
                verdicts: HashMap::new(),
                reported: HashSet::new(),
                in_force: BTreeMap::new(),
                rejected: Vec::new(),
                fingerprint: None,
            }),
        });
        store.refresh(true).await;
        Ok(store)
    }

    /// The documents in force (tombstones included), by name.
    pub async fn routes(&self) -> Vec<RouteView> {
        let st = self.state.lock().await;
        st.in_force.values().map(InForce::view).collect()
    }

    /// The documents refused by the last merge.
    pub async fn rejected(&self) -> Vec<RejectedView> {
        self.state.lock().await.rejected.clone()
    }

    /// Re-runs the merge on every gossip change, on a CA change, and every
    /// 30 s (certificates expire), until `stop` fires.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut live = self.gossip.live_watcher().await;
        let mut trust = self.tls.trust_changes();
        let mut tick = tokio::time::interval(RECHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            tokio::select! {
                changed = live.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.refresh(false).await;
                }
                _ = trust.changed() => {
                    // Verdicts reached under the old CA set must be reached again.
                    self.state.lock().await.verdicts.clear();
                    self.refresh(true).await;
                }
                _ = tick.tick() => self.refresh(true).await,
                _ = stop.changed() => return,
            }
        }
    }

    /// Merges the live members' `route:*` values with the stored documents (see the
    /// module documentation). Without `force`, does nothing if the gossip values
    /// are those of the last merge.
    pub async fn refresh(&self, force: bool) {
        let self_id = self.gossip.self_id().clone();
        // (member, key, value) of every route key of every live member, and this
        // node's own route values as gossip holds them.
        let (values, own): (Vec<MemberValue>, HashMap<String, String>) = {
            let states = self.live.borrow();
            let values = states
                .iter()
                .flat_map(|(id, state)| {
                    state
                        .iter_prefix(ROUTE_KEY_PREFIX)
                        .map(|(k, v)| (id.node_id.to_string(), k.to_string(), v.value.clone()))
                })
                .collect();
            let own = states
                .get(&self_id)
                .map(|s| {
                    s.iter_prefix(ROUTE_KEY_PREFIX)
                        .map(|(k, v)| (k.to_string(), v.value.clone()))
                        .collect()
                })
                .unwrap_or_default();
            (values, own)
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        values.hash(&mut hasher);
        let fingerprint = hasher.finish();

        let mut st = self.state.lock().await;
        if !force && st.fingerprint == Some(fingerprint) {
            return;
        }
        st.fingerprint = Some(fingerprint);
        let now = UnixTime::now();
        let now_ms = unix_ms();

        // Decode every value; refuse those that are not documents of their key.
        let mut candidates: BTreeMap<Digest32, Candidate> = BTreeMap::new();
        let mut refused: Vec<(Digest32, RejectedView)> = Vec::new();
        for (member, key, value) in values {
            let key_name = key
                .strip_prefix(ROUTE_KEY_PREFIX)
                .unwrap_or(&key)
                .to_string();
            let refuse = |reason: &str, error: String| {
                (
                    digest(&[member.as_bytes(), key.as_bytes(), value.as_bytes()]),
                    RejectedView {
                        name: key_name.clone(),
                        version: None,
                        reason: reason.to_string(),
                        error,
                        signer: None,
                        published_by: vec![member.clone()],
                        stored: false,
                    },
                )
            };
            let Some(Key::Route(name)) = parse_key(&key) else {
                refused.push(refuse(
                    "malformed",
                    format!("{key:?} is not a valid route key (route:<name>)"),
                ));
                continue;
            };
            let doc = match decode_text::<RouteDocument>(&value) {
                Ok(doc) => doc,
                Err(e) => {
                    refused.push(refuse(
                        "malformed",
                        format!("the value of {key:?} is not a route document: {e}"),
                    ));
                    continue;
                }
            };
            if doc.name != name {
                let (id, mut view) = refuse(
                    "key_mismatch",
                    format!(
                        "published under {key:?} but the document is for route {:?}",
                        doc.name
                    ),
                );
                view.version = Some((&doc.version).into());
                refused.push((id, view));
                continue;
            }
            candidates
                .entry(document_id(&doc))
                .or_insert_with(|| Candidate {
                    doc,
                    published_by: Vec::new(),
                    stored: false,
                })
                .published_by
                .push(member);
        }
        for doc in st.stored.values() {
            candidates
                .entry(document_id(doc))
                .or_insert_with(|| Candidate {
                    doc: doc.clone(),
                    published_by: Vec::new(),
                    stored: false,
                })
                .stored = true;
        }

        // Check each distinct document once: body, then signature.
        let mut checked: HashMap<Digest32, Check> = HashMap::new();
        for (id, c) in &candidates {
            let result = match RouteSpec::parse_document(&c.doc) {
                Err(e) => Err(("invalid_body", format!("invalid route body: {e}"))),
                Ok(spec) => match verdict(&self.tls, &mut st.verdicts, &c.doc, now) {
                    Ok(signer) => Ok((spec, signer)),
                    Err(e) => Err((e.reason(), e.to_string())),
                },
            };
            checked.insert(*id, result);
        }
        let live_signatures: HashSet<Digest32> =
            candidates.values().map(|c| signature_id(&c.doc)).collect();
        st.verdicts.retain(|k, _| live_signatures.contains(k));

        let merged = merge(candidates.values().map(|c| &c.doc), |d| {
            checked.get(&document_id(d)).is_some_and(|r| r.is_ok())
        });

        // Report refusals, each once while it is around.
        for (id, c) in &candidates {
            if let Some(Err((reason, error))) = checked.get(id) {
                let mut published_by = c.published_by.clone();
                published_by.sort();
                published_by.dedup();
                refused.push((
                    report_id(&c.doc),
                    RejectedView {
                        name: c.doc.name.clone(),
                        version: Some((&c.doc.version).into()),
                        reason: reason.to_string(),
                        error: error.clone(),
                        signer: Some(describe_cert(&CertificateDer::from(
                            c.doc.signer_cert_der.as_slice(),
                        ))),
                        published_by,
                        stored: c.stored,
                    },
                ));
            }
        }
        if st.reported.len() > MAX_REPORTED {
            st.reported.clear();
        }
        for (id, view) in &refused {
            if st.reported.insert(*id) {
                self.metrics
                    .route_rejections
                    .get_or_create(&ReasonLabels {
                        reason: reason_label(&view.reason),
                    })
                    .inc();
                tracing::warn!(
                    route = %view.name,
                    version = %view.version.as_ref().map(ToString::to_string).unwrap_or_default(),
                    reason = %view.reason,
                    published_by = %view.published_by.join(","),
                    error = %view.error,
                    "refused a route document"
                );
            }
        }
        refused.sort_by(|a, b| (&a.1.name, &a.1.version).cmp(&(&b.1.name, &b.1.version)));
        st.rejected = refused.into_iter().map(|(_, v)| v).collect();

        // The documents in force.
        let mut in_force = BTreeMap::new();
        for (name, winner) in merged.winners {
            let id = document_id(&winner.document);
            let Some(Ok((_, signer))) = checked.get(&id) else {
                continue;
            };
            in_force.insert(
                name,
                InForce {
                    id,
                    signer: signer.clone(),
                    winner,
                },
            );
        }
        let changed = in_force.len() != st.in_force.len()
            || in_force
                .iter()
                .zip(st.in_force.iter())
                .any(|((n1, a), (n2, b))| n1 != n2 || a.id != b.id);
        for (name, f) in &in_force {
            if st.in_force.get(name).map(|old| old.id) == Some(f.id) {
                continue;
            }
            if let Err(e) = st.hlc.observe(&f.winner.document.version, now_ms) {
                tracing::warn!(route = %name, error = %e, "not adopting a route version's clock reading");
            }
            tracing::info!(
                route = %name,
                version = %VersionView::from(&f.winner.document.version),
                issued_at = %rfc3339_ms(f.winner.spec.issued_at_ms),
                signer = %f.signer.operator,
                deleted = f.winner.spec.deleted,
                "route document in force"
            );
        }
        for name in st.in_force.keys() {
            if !in_force.contains_key(name) {
                tracing::warn!(route = %name, "route has no valid document any more; it is removed");
            }
        }

        // Adopt: store and publish every winner.
        for (name, f) in &in_force {
            let doc = &f.winner.document;
            if st.stored.get(name) != Some(doc) {
                match self.persist(doc).await {
                    Ok(()) => {
                        st.stored.insert(name.clone(), doc.clone());
                    }
                    Err(e) => {
                        tracing::error!(route = %name, error = %e, "cannot store a route document")
                    }
                }
            }
            match encode_text(doc) {
                Ok(text) => {
                    let key = route_key(name);
                    if own.get(&key) != Some(&text) {
                        self.gossip.set(&key, &text).await;
                    }
                    st.published.insert(name.clone());
                }
                Err(e) => {
                    tracing::error!(route = %name, error = %e, "cannot encode a route document")
                }
            }
        }
        let withdrawn: Vec<String> = st
            .published
            .iter()
            .filter(|n| !in_force.contains_key(*n))
            .cloned()
            .collect();
        for name in withdrawn {
            self.gossip.delete(&route_key(&name)).await;
            st.published.remove(&name);
        }

        if changed {
            let table = RouteTable::new(
                in_force
                    .values()
                    .filter(|f| !f.winner.spec.deleted)
                    .map(|f| f.winner.spec.clone()),
            );
            self.metrics.route_documents.set(table.len() as i64);
            self.table.store(Arc::new(table));
            let expiry = in_force.values().map(|f| f.signer.not_after).min();
            self.metrics.route_signer_expiry.set(expiry.unwrap_or(0));
        }
        st.in_force = in_force;
    }

    /// `POST /routes`: checks a signed route, refuses it if it would not beat the
    /// document in force, stamps its version, stores and publishes it.
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyResponse, ApplyError> {
        let SignedParts {
            body,
            signature,
            signer_cert_der,
        } = request.decode()?;
        let spec = match RouteSpec::parse_body(&body) {
            Ok(spec) => spec,
            Err(e) => {
                if self.state.lock().await.reported.insert(digest(&[&body])) {
                    self.metrics
                        .route_rejections
                        .get_or_create(&ReasonLabels {
                            reason: "invalid_body",
                        })
                        .inc();
                }
                return Err(ApplyError::Invalid(e));
            }
        };
        let name = spec.name.clone();
        let now_ms = unix_ms();
        let max_drift = Hlc::DEFAULT_MAX_DRIFT_MS;
        if spec.issued_at_ms > now_ms.saturating_add(max_drift) {
            return Err(ApplyError::FromTheFuture {
                name,
                issued: rfc3339_ms(spec.issued_at_ms),
                ahead_s: (spec.issued_at_ms - now_ms) / 1000,
                max_s: max_drift / 1000,
            });
        }
        // Merge what gossip has now, so "in force" is as current as it can be.
        self.refresh(false).await;
        let mut st = self.state.lock().await;
        let node = st.hlc.node().to_string();
        let mut doc = RouteDocument {
            name: name.clone(),
            version: HlcTimestamp {
                wall_ms: 0,
                logical: 0,
                node,
            },
            body,
            signature,
            signer_cert_der,
        };
        let signer = match verdict(&self.tls, &mut st.verdicts, &doc, UnixTime::now()) {
            Ok(signer) => signer,
            Err(error) => {
                if st.reported.insert(report_id(&doc)) {
                    self.metrics
                        .route_rejections
                        .get_or_create(&ReasonLabels {
                            reason: error.reason(),
                        })
                        .inc();
                }
                tracing::warn!(route = %name, reason = error.reason(), %error, "refused a route document from the admin API");
                return Err(ApplyError::Signature { name, error });
            }
        };
        let current = st.in_force.get(&name).cloned();
        if let Some(cur) = &current {
            let d = &cur.winner.document;
            if d.body == doc.body
                && d.signature == doc.signature
                && d.signer_cert_der == doc.signer_cert_der
            {
                return Ok(ApplyResponse {
                    result: ApplyResult::Unchanged,
                    route: cur.view(),
                });
            }
            if spec.deleted && cur.winner.spec.deleted {
                return Err(ApplyError::AlreadyDeleted { name });
            }
            // The same route signed again with the same certificate (a pipeline
            // applying every route on each deploy): keep the document in force.
            // Another certificate (a renewed one) makes a new version.
            let same_content = RouteSpec {
                issued_at_ms: cur.winner.spec.issued_at_ms,
                ..spec.clone()
            } == cur.winner.spec;
            if same_content && d.signer_cert_der == doc.signer_cert_der {
                return Ok(ApplyResponse {
                    result: ApplyResult::Unchanged,
                    route: cur.view(),
                });
            }
            if spec.issued_at_ms < cur.winner.spec.issued_at_ms {
                return Err(not_newer(&spec, cur));
            }
        } else if spec.deleted {
            return Err(ApplyError::NoSuchRoute { name });
        }
        let result = match &current {
            _ if spec.deleted => ApplyResult::Deleted,
            Some(cur) if !cur.winner.spec.deleted => ApplyResult::Updated,
            _ => ApplyResult::Created,
        };
        doc.version = st.hlc.now(now_ms);
        if let Some(cur) = &current
            && Precedence::of(&doc, &spec) <= cur.winner.precedence()
        {
            return Err(not_newer(&spec, cur));
        }
        self.persist(&doc).await?;
        tracing::info!(
            route = %name,
            version = %VersionView::from(&doc.version),
            signer = %signer.operator,
            %result,
            "accepted a route document from the admin API"
        );
        st.stored.insert(name.clone(), doc.clone());
        drop(st);
        self.refresh(true).await;
        let st = self.state.lock().await;
        let route = match st.in_force.get(&name) {
            Some(f) => f.view(),
            // Only a concurrent, newer apply can get here; report what was stored.
            None => InForce {
                id: document_id(&doc),
                winner: Winner {
                    document: doc,
                    spec,
                },
                signer,
            }
            .view(),
        };
        Ok(ApplyResponse { result, route })
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

fn not_newer(spec: &RouteSpec, current: &InForce) -> ApplyError {
    ApplyError::NotNewer {
        name: spec.name.clone(),
        issued: rfc3339_ms(spec.issued_at_ms),
        current: rfc3339_ms(current.winner.spec.issued_at_ms),
        signer: current.signer.operator.clone(),
    }
}

/// The signature verdict for `doc` at `now`, from the cache when it has one
/// (re-checking the signer's validity window, which depends on `now`).
fn verdict(
    tls: &TlsState,
    cache: &mut HashMap<Digest32, Result<Signer, SignatureError>>,
    doc: &RouteDocument,
    now: UnixTime,
) -> Result<Signer, SignatureError> {
    let id = signature_id(doc);
    if let Some(cached) = cache.get(&id) {
        let signer = cached.clone()?;
        signer.valid_at(now)?;
        return Ok(signer);
    }
    let result = tls.verify_route_document(doc, now);
    if !matches!(
        result,
        Err(SignatureError::Expired { .. } | SignatureError::NotYetValid { .. })
    ) {
        cache.insert(id, result.clone());
    }
    result
}

/// The `'static` label for a reason string produced by this module.
fn reason_label(reason: &str) -> &'static str {
    SignatureError::REASONS
        .iter()
        .chain(BODY_REASONS.iter())
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("malformed")
}

/// Reads every `<name>.route` file of `dir`. Files that do not decode, or whose
/// document is for another name, are logged and skipped; temporary files left by
/// an interrupted write are removed.
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
            .and_then(|text| decode_text::<RouteDocument>(text.trim()).map_err(|e| e.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> RouteDocument {
        RouteDocument {
            name: name.to_string(),
            version: HlcTimestamp {
                wall_ms: 7,
                logical: 1,
                node: "n1".into(),
            },
            body: b"{}".to_vec(),
            signature: vec![1, 2, 3],
            signer_cert_der: vec![4, 5],
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
    fn ids_separate_what_they_should() {
        let a = doc("shop");
        let mut restamped = a.clone();
        restamped.version.logical += 1;
        assert_eq!(signature_id(&a), signature_id(&restamped));
        assert_eq!(report_id(&a), report_id(&restamped));
        assert_ne!(document_id(&a), document_id(&restamped));
        let mut moved = a.clone();
        moved.name = "other".into();
        assert_eq!(signature_id(&a), signature_id(&moved));
        assert_ne!(report_id(&a), report_id(&moved));
        // Length prefixes: bytes moved between fields change the digest.
        let mut shifted = a.clone();
        shifted.signature = vec![1, 2];
        shifted.signer_cert_der = vec![3, 4, 5];
        assert_ne!(signature_id(&a), signature_id(&shifted));
    }

    #[test]
    fn every_reason_is_a_metric_label() {
        for reason in SignatureError::REASONS.iter().chain(BODY_REASONS.iter()) {
            assert_eq!(reason_label(reason), *reason);
        }
        assert_eq!(rfc3339_ms(1_767_225_600_120), "2026-01-01T00:00:00.12Z");
    }
}
