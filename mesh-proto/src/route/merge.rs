//! The route merge: from a set of route documents, the one in force for each
//! route name — the same on every node that sees the same documents, with no
//! coordinator.
//!
//! Per name, [`merge()`] keeps the document that
//! 1. carries a body that parses, validates, and names the document's route
//!    ([`RouteSpec::parse_document`]),
//! 2. passes the caller's `verified` check (the node checks the signature over the
//!    body and the signer's operator certificate against the mesh CA: this crate
//!    does no cryptography),
//! 3. and has the highest [`Precedence`]: the signed `issued_at_ms` of its body
//!    first, then its body, signature and certificate bytes — a total order, so
//!    every node picks the same winner whatever order the documents arrive in.
//!
//! The order uses only what the operator signed: documents are relayed exactly as
//! signed and carry no field a node stamps, so no member can reorder documents. A
//! member that sends an old, validly signed document again cannot make it beat a
//! newer one, nor undo a deletion: only an operator can issue a document that
//! wins. The signature and certificate bytes decide only between documents with
//! the same body — the same route, to the byte — so even a relay that makes
//! another valid signature of a body (ECDSA signatures are malleable) only picks
//! which copy of identical content is in force.
//!
//! The cost of ordering by the operator's issue time: an operator's clock that
//! runs behind makes a new document lose to an older one, which is why the node
//! refuses, at `route apply`, a document that does not beat the current winner
//! (compare [`Precedence`]s) and says so.
//!
//! Documents failing rule 1 or 2 are reported as [`Rejected`] with the reason and
//! never win. A winning tombstone (`deleted: true`) stays among the winners — it
//! keeps beating older versions of the route — but [`Merged::table`] leaves the
//! route out. Tombstones are never forgotten: they are small, and forgetting one
//! would let an old version come back.

use std::collections::BTreeMap;

use thiserror::Error;

use super::{RouteError, RouteSpec, RouteTable};
use crate::gossip::RouteDocument;

/// The order between two valid documents of one route: the greater wins. Fields
/// compare in declaration order; all of them come from what the operator signed
/// (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence<'a> {
    /// The signed issue time from the body ([`RouteSpec::issued_at_ms`]).
    pub issued_at_ms: u64,
    /// The body bytes.
    pub body: &'a [u8],
    /// The signature bytes.
    pub signature: &'a [u8],
    /// The signer certificate bytes.
    pub signer_cert_der: &'a [u8],
}

impl<'a> Precedence<'a> {
    /// The precedence of `document`, whose body parsed as `spec`.
    pub fn of(document: &'a RouteDocument, spec: &RouteSpec) -> Precedence<'a> {
        Precedence {
            issued_at_ms: spec.issued_at_ms,
            body: &document.body,
            signature: &document.signature,
            signer_cert_der: &document.signer_cert_der,
        }
    }
}

/// The document in force for one route name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    /// The document, to publish under `route:<name>` and store.
    pub document: RouteDocument,
    /// Its parsed body.
    pub spec: RouteSpec,
}

impl Winner {
    /// This winner's precedence.
    pub fn precedence(&self) -> Precedence<'_> {
        Precedence::of(&self.document, &self.spec)
    }
}

/// Why a document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectReason {
    /// The body does not parse or validate, or names another route.
    #[error("invalid route body: {0}")]
    Invalid(#[from] RouteError),
    /// The `verified` check failed: a bad signature, or a signer that is not an
    /// operator certified by the mesh CA.
    #[error(
        "the signature does not verify, or the signer is not an operator of this mesh's CA; re-sign it with `shoal route apply` and an operator key"
    )]
    Unverified,
}

/// A document that [`merge()`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The route name the document claims.
    pub name: String,
    /// Why it was refused.
    pub reason: RejectReason,
}

/// The outcome of [`merge()`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Per route name, the document in force, tombstones included.
    pub winners: BTreeMap<String, Winner>,
    /// The documents refused, each once, ordered by name and signed bytes.
    pub rejected: Vec<Rejected>,
}

impl Merged {
    /// The winners that are not tombstones.
    pub fn live(&self) -> impl Iterator<Item = &Winner> {
        self.winners.values().filter(|w| !w.spec.deleted)
    }

    /// The route table of the live winners.
    pub fn table(&self) -> RouteTable {
        RouteTable::new(self.live().map(|w| w.spec.clone()))
    }
}

/// Checks one document as [`merge()`] does (body, then `verified`) and returns its
/// spec.
pub fn check_document(
    document: &RouteDocument,
    verified: impl Fn(&RouteDocument) -> bool,
) -> Result<RouteSpec, RejectReason> {
    let spec = RouteSpec::parse_document(document)?;
    if !verified(document) {
        return Err(RejectReason::Unverified);
    }
    Ok(spec)
}

/// Merges route documents (see the module doc). Identical documents are checked
/// once, so `verified` runs once per distinct document.
pub fn merge<'a>(
    documents: impl IntoIterator<Item = &'a RouteDocument>,
    verified: impl Fn(&RouteDocument) -> bool,
) -> Merged {
    let mut docs: Vec<&RouteDocument> = documents.into_iter().collect();
    docs.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    docs.dedup();

    let mut winners: BTreeMap<&str, (&RouteDocument, RouteSpec)> = BTreeMap::new();
    let mut rejected = Vec::new();
    for doc in docs {
        match check_document(doc, &verified) {
            Err(reason) => rejected.push(Rejected {
                name: doc.name.clone(),
                reason,
            }),
            Ok(spec) => match winners.get(doc.name.as_str()) {
                Some((best, best_spec))
                    if Precedence::of(best, best_spec) >= Precedence::of(doc, &spec) => {}
                _ => {
                    winners.insert(&doc.name, (doc, spec));
                }
            },
        }
    }
    Merged {
        winners: winners
            .into_iter()
            .map(|(name, (document, spec))| {
                (
                    name.to_string(),
                    Winner {
                        document: document.clone(),
                        spec,
                    },
                )
            })
            .collect(),
        rejected,
    }
}

/// A total order on documents, for deduplication and a deterministic report.
fn sort_key(d: &RouteDocument) -> (&str, &[u8], &[u8], &[u8]) {
    (&d.name, &d.body, &d.signature, &d.signer_cert_der)
}
