//! Operator-signed route documents in the shared state: one per route name, the
//! one with the highest [`Precedence`] (signed issue time, then signed bytes),
//! relayed exactly as the operator signed it.
//!
//! A document is taken only if its body parses and names its route, its issue
//! time is not ahead of this node's clock by more than the allowed skew, and its
//! signer was a valid operator of the mesh CA *when it was issued*. That last rule
//! is what makes an expired document fail closed: once in force it stays (its
//! allow-lists keep denying) until a newer one replaces it, on every node, even
//! one that joins after the signer expired. The node keeps the winner on disk as a
//! high-water mark, so an older document replayed later never wins.
//!
//! The store also holds the mesh's revocation list
//! ([`crate::revocation`]): the one signed document named
//! [`REVOCATIONS_DOCUMENT`], taken only if the mesh CA itself signed it
//! ([`Crypto::revocation_signer`]), the highest version winning.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::gossip::RouteDocument;
use crate::revocation::{REVOCATIONS_DOCUMENT, RevocationList};
use crate::route::{Precedence, RouteSpec};

use super::refusal::Refusal;
use super::signing::{Crypto, DocumentSigner};
use super::wire::DocumentSummary;

/// The id of a document: the first 16 bytes of a SHA-256 over its name and
/// signed parts (length-prefixed).
pub fn document_id(doc: &RouteDocument) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in [
        doc.name.as_bytes(),
        &doc.body,
        &doc.signature,
        &doc.signer_cert_der,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let full = h.finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&full[..16]);
    id
}

/// A document in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDocument {
    /// The document as signed.
    pub document: RouteDocument,
    /// Its parsed body.
    pub spec: RouteSpec,
    /// Who signed it.
    pub signer: DocumentSigner,
    /// Its id.
    pub id: [u8; 16],
}

impl HeldDocument {
    /// Its precedence.
    pub fn precedence(&self) -> Precedence<'_> {
        Precedence::of(&self.document, &self.spec)
    }

    /// Whether its signer's certificate has expired at `wall_ms`: it stays in
    /// force (fails closed) and the node says so.
    pub fn signer_expired(&self, wall_ms: u64) -> bool {
        wall_ms > self.signer.not_after_ms
    }
}

/// The revocation list in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRevocations {
    /// The document as signed.
    pub document: RouteDocument,
    /// Its parsed body.
    pub list: RevocationList,
    /// The CA that signed it.
    pub signer: DocumentSigner,
    /// Its id.
    pub id: [u8; 16],
}

/// Why a document was refused: the protocol-level reason, and a finer label for
/// the route-document metric (`invalid_body`, `from_the_future`,
/// `too_many_documents`, or the signer check's reason: `bad_signature`,
/// `other_ca`, `not_an_operator`, `expired`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentRefusal {
    /// The reason counted in `shoal_gossip_rejected_total`.
    pub refusal: Refusal,
    /// The finer reason.
    pub label: &'static str,
}

impl DocumentRefusal {
    fn new(refusal: Refusal, label: &'static str) -> Self {
        DocumentRefusal { refusal, label }
    }
}

/// What applying a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentApplied {
    /// It is now in force for its name: relay it.
    InForce,
    /// It lost to (or is) the document in force.
    Stale,
}

/// The documents in force, by route name, and the revocation list.
#[derive(Debug, Default)]
pub struct DocumentStore {
    docs: BTreeMap<String, HeldDocument>,
    revocations: Option<HeldRevocations>,
}

impl DocumentStore {
    /// The document in force for `name`.
    pub fn get(&self, name: &str) -> Option<&HeldDocument> {
        self.docs.get(name)
    }

    /// Every route document in force (tombstones included), by name.
    pub fn iter(&self) -> impl Iterator<Item = &HeldDocument> {
        self.docs.values()
    }

    /// The revocation list in force.
    pub fn revocations(&self) -> Option<&HeldRevocations> {
        self.revocations.as_ref()
    }

    /// Every signed document held, route documents and the revocation list,
    /// with its id: what anti-entropy offers.
    pub fn signed(&self) -> impl Iterator<Item = (&RouteDocument, [u8; 16])> {
        self.revocations
            .iter()
            .map(|r| (&r.document, r.id))
            .chain(self.docs.values().map(|d| (&d.document, d.id)))
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Whether the document `summary` names is the one in force.
    pub fn holds(&self, summary: &DocumentSummary) -> bool {
        if summary.name == REVOCATIONS_DOCUMENT {
            return self
                .revocations
                .as_ref()
                .is_some_and(|r| r.id == summary.id);
        }
        self.docs
            .get(&summary.name)
            .is_some_and(|d| d.id == summary.id)
    }

    /// Judges a document and puts it in force if it passes and beats the one in
    /// force (see the module documentation).
    pub fn apply<C: Crypto>(
        &mut self,
        document: RouteDocument,
        crypto: &C,
        wall_ms: u64,
        max_skew_ms: u64,
        max_documents: usize,
    ) -> Result<DocumentApplied, DocumentRefusal> {
        if document.name == REVOCATIONS_DOCUMENT {
            return self.apply_revocations(document, crypto, wall_ms, max_skew_ms);
        }
        let id = document_id(&document);
        let held = self.docs.get(&document.name);
        if held.is_some_and(|h| h.id == id) {
            return Ok(DocumentApplied::Stale);
        }
        let spec = RouteSpec::parse_document(&document)
            .map_err(|_| DocumentRefusal::new(Refusal::DocumentInvalid, "invalid_body"))?;
        if spec.issued_at_ms > wall_ms.saturating_add(max_skew_ms) {
            return Err(DocumentRefusal::new(
                Refusal::FromTheFuture,
                "from_the_future",
            ));
        }
        if let Some(h) = held
            && Precedence::of(&document, &spec) <= h.precedence()
        {
            return Ok(DocumentApplied::Stale);
        }
        if held.is_none() && self.docs.len() >= max_documents {
            return Err(DocumentRefusal::new(
                Refusal::DocumentLimit,
                "too_many_documents",
            ));
        }
        let signer = crypto
            .document_signer(&document, spec.issued_at_ms)
            .map_err(|r| DocumentRefusal::new(Refusal::DocumentSignature, r.reason))?;
        self.docs.insert(
            document.name.clone(),
            HeldDocument {
                document,
                spec,
                signer,
                id,
            },
        );
        Ok(DocumentApplied::InForce)
    }

    /// Judges a revocation list: it parses, is not issued ahead of this node's
    /// clock by more than the skew, beats the list in force, and the mesh CA
    /// (valid when the list was issued) signed it.
    fn apply_revocations<C: Crypto>(
        &mut self,
        document: RouteDocument,
        crypto: &C,
        wall_ms: u64,
        max_skew_ms: u64,
    ) -> Result<DocumentApplied, DocumentRefusal> {
        let id = document_id(&document);
        let held = self.revocations.as_ref();
        if held.is_some_and(|h| h.id == id) {
            return Ok(DocumentApplied::Stale);
        }
        let list = RevocationList::parse_document(&document)
            .map_err(|_| DocumentRefusal::new(Refusal::DocumentInvalid, "invalid_body"))?;
        if list.issued_at_ms > wall_ms.saturating_add(max_skew_ms) {
            return Err(DocumentRefusal::new(
                Refusal::FromTheFuture,
                "from_the_future",
            ));
        }
        if let Some(h) = held
            && RevocationList::precedence((&list, &document), (&h.list, &h.document))
                != Ordering::Greater
        {
            return Ok(DocumentApplied::Stale);
        }
        let signer = crypto
            .revocation_signer(&document, list.issued_at_ms)
            .map_err(|r| DocumentRefusal::new(Refusal::DocumentSignature, r.reason))?;
        self.revocations = Some(HeldRevocations {
            document,
            list,
            signer,
            id,
        });
        Ok(DocumentApplied::InForce)
    }

    /// The summaries for a digest (the revocation list first).
    pub fn summaries(&self) -> Vec<DocumentSummary> {
        self.signed()
            .map(|(d, id)| DocumentSummary {
                name: d.name.clone(),
                id,
            })
            .collect()
    }

    /// Drops every document whose signer no longer checks out against the mesh
    /// CA (after the CA changed). Returns the names dropped.
    pub fn recheck<C: Crypto>(&mut self, crypto: &C) -> Vec<String> {
        let gone: Vec<String> = self
            .docs
            .values()
            .filter(|d| {
                crypto
                    .document_signer(&d.document, d.spec.issued_at_ms)
                    .is_err()
            })
            .map(|d| d.document.name.clone())
            .collect();
        for name in &gone {
            self.docs.remove(name);
        }
        if let Some(r) = &self.revocations
            && crypto
                .revocation_signer(&r.document, r.list.issued_at_ms)
                .is_err()
        {
            self.revocations = None;
        }
        gone
    }
}
