//! Revocation lists: the node certificates the mesh refuses before they expire.
//!
//! A list is signed by the mesh CA's key (`shoal-pki revoke`) and travels in
//! gossip as a signed document named [`REVOCATIONS_DOCUMENT`] — a name no route
//! can have — relayed exactly as signed, like a route document. Every node holds
//! the list with the highest [`RevocationList::version`]; a list only shrinks
//! when the CA signs a newer version without an entry.
//!
//! An entry revokes either
//! - one certificate, by serial number (`shoal-pki revoke --cert F | --serial S`), or
//! - every certificate of a node issued before a time (`--node NAME`): the host is
//!   cut off, and comes back only with a certificate issued after the revocation.
//!
//! This module is the body's schema, its canonical JSON form and the matching
//! rule ([`RevocationList::revokes`]); it does no cryptography (the node checks
//! the CA signature) and reads no clock.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gossip::RouteDocument;
use crate::names::validate_name;

/// The name of the signed document carrying the revocation list. It is not a
/// valid route name (route names are DNS-style, without `_`), so no route can
/// take its place.
pub const REVOCATIONS_DOCUMENT: &str = "_revocations";
/// Most entries a list holds. Its canonical body must also fit
/// [`RouteDocument::MAX_DOCUMENT_LEN`] (24 KiB): a `--cert` entry takes about
/// 155 bytes, a `--node` entry about 100, so 128 entries fit with room for
/// longer node names and reasons (about 190 bytes an entry on average);
/// [`RevocationList::validate`] checks both bounds. Entries for a certificate
/// that has expired are dropped when the list is signed again.
pub const MAX_REVOCATIONS: usize = 128;
/// Longest reason, in bytes.
pub const MAX_REASON_LEN: usize = 64;
/// Longest serial number in hex digits (RFC 5280: at most 20 octets).
pub const MAX_SERIAL_HEX: usize = 40;

/// One revoked certificate, or every certificate of a node issued before a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The revoked certificate's serial number: lowercase hex without leading
    /// zero bytes ([`normalize_serial`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The node whose certificates are revoked (with `issued_before_ms`), or, for a
    /// serial entry, the node the certificate named (for people reading the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// With `node` and no serial: every certificate of the node whose validity
    /// starts before this time (ms since the Unix epoch) is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before_ms: Option<u64>,
    /// When the revoked certificate expires anyway (serial entries from
    /// `--cert`): the entry can be dropped after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
    /// Why (`key_compromise`, `decommissioned`, ...): short text for the logs.
    pub reason: String,
    /// When it was revoked, ms since the Unix epoch.
    pub revoked_at_ms: u64,
}

/// The signed list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// The trust domain whose CA signs it.
    pub trust_domain: String,
    /// Bumped on every change; the highest version wins everywhere.
    pub version: u64,
    /// When the CA signed this version, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// The revocations.
    #[serde(default)]
    pub entries: Vec<Revocation>,
}

/// The body's outer object: the key makes a revocation body unmistakable for a
/// route body and the other way round.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    revocation_list: RevocationList,
}

/// What [`RevocationList::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    New,
    /// The node was already revoked; its cut-off moved later (certificates
    /// issued since are revoked too).
    Extended,
    /// The list already revokes it; nothing changed.
    AlreadyRevoked,
}

/// What is known of a presented certificate, for [`RevocationList::revokes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts<'a> {
    /// Its serial number, as [`serial_hex`] writes it.
    pub serial: &'a str,
    /// The node it names, if any.
    pub node: Option<&'a str>,
    /// Start of its validity, ms since the Unix epoch.
    pub not_before_ms: u64,
}

/// Why a list body is refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RevocationError {
    /// Larger than a document body may be.
    #[error(
        "the revocation list is {len} bytes; at most {max} fit in a signed document (revoke whole nodes rather than each certificate, or wait for revoked certificates to expire)"
    )]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the JSON schema.
    #[error("the revocation list does not parse: {0}")]
    Syntax(String),
    /// A field breaks a rule.
    #[error("revocation list field {field}: {problem}")]
    Invalid {
        /// The field (`entries[3].serial`, ...).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RevocationError {
    RevocationError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Hex of a certificate's raw serial bytes, lowercase, without leading zero
/// bytes (DER adds one to keep the number positive).
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[first..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial number as an operator may write it (`0A:1B:...`, `0a1b...`, with or
/// without leading zeros) in the form [`serial_hex`] gives.
pub fn normalize_serial(text: &str) -> Result<String, RevocationError> {
    let digits: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "serial",
            format!("{text:?} is not a hex serial number (as `shoal-pki inspect` prints it)"),
        ));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
        .collect();
    let hex = serial_hex(&bytes);
    if hex.is_empty() || hex.len() > MAX_SERIAL_HEX {
        return Err(invalid(
            "serial",
            format!("{text:?} is not a serial number of 1 to 20 bytes"),
        ));
    }
    Ok(hex)
}

impl Revocation {
    /// Revokes every certificate of `node` whose validity starts before
    /// `issued_before_ms`, at `now_ms`, for `reason`.
    pub fn of_node(node: &str, issued_before_ms: u64, reason: &str, now_ms: u64) -> Revocation {
        Revocation {
            serial: None,
            node: Some(node.to_string()),
            issued_before_ms: Some(issued_before_ms),
            not_after_ms: None,
            reason: reason.to_string(),
            revoked_at_ms: now_ms,
        }
    }

    /// Whether this entry revokes the certificate `cert` describes.
    pub fn matches(&self, cert: &CertFacts<'_>) -> bool {
        match (&self.serial, self.issued_before_ms) {
            (Some(serial), _) => serial == cert.serial,
            (None, Some(before)) => {
                self.node.as_deref() == cert.node && cert.not_before_ms < before
            }
            (None, None) => false,
        }
    }

    /// What it revokes, in words.
    pub fn describe(&self) -> String {
        match (&self.serial, &self.node) {
            (Some(serial), Some(node)) => format!("certificate {serial} of node {node}"),
            (Some(serial), None) => format!("certificate {serial}"),
            (None, Some(node)) => {
                format!("every certificate of node {node} issued before the revocation")
            }
            (None, None) => "nothing".to_string(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), RevocationError> {
        if let Some(serial) = &self.serial {
            let normal = normalize_serial(serial).map_err(|_| {
                invalid(
                    format!("{field}.serial"),
                    "not lowercase hex of 1 to 20 bytes",
                )
            })?;
            if normal != *serial {
                return Err(invalid(
                    format!("{field}.serial"),
                    "not in canonical form (lowercase hex, no leading zero bytes)",
                ));
            }
        }
        if let Some(node) = &self.node {
            validate_name("node name", node)
                .map_err(|e| invalid(format!("{field}.node"), e.to_string()))?;
        }
        match (&self.serial, &self.node, self.issued_before_ms) {
            (Some(_), _, None) | (None, Some(_), Some(_)) => {}
            (Some(_), _, Some(_)) => {
                return Err(invalid(
                    format!("{field}.issued_before_ms"),
                    "only for node entries (an entry has a serial or a node, not both rules)",
                ));
            }
            _ => {
                return Err(invalid(
                    field,
                    "an entry needs a serial, or a node with issued_before_ms",
                ));
            }
        }
        if self.reason.is_empty()
            || self.reason.len() > MAX_REASON_LEN
            || self.reason.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                format!("{field}.reason"),
                format!("1 to {MAX_REASON_LEN} bytes of printable text"),
            ));
        }
        Ok(())
    }
}

impl RevocationList {
    /// An empty list of version 0 for `trust_domain`.
    pub fn empty(trust_domain: impl Into<String>) -> RevocationList {
        RevocationList {
            trust_domain: trust_domain.into(),
            version: 0,
            issued_at_ms: 0,
            entries: Vec::new(),
        }
    }

    /// The first entry that revokes `cert`.
    pub fn revokes(&self, cert: &CertFacts<'_>) -> Option<&Revocation> {
        self.entries.iter().find(|e| e.matches(cert))
    }

    /// Checks every rule; the error names the field.
    pub fn validate(&self) -> Result<(), RevocationError> {
        validate_name("trust domain", &self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.entries.len() > MAX_REVOCATIONS {
            return Err(invalid(
                "entries",
                format!(
                    "{} entries; at most {MAX_REVOCATIONS} (revoke a whole node rather than each of its certificates)",
                    self.entries.len()
                ),
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            e.validate(&format!("entries[{i}]"))?;
        }
        let len = self.to_body().len();
        if len > RouteDocument::MAX_DOCUMENT_LEN {
            return Err(RevocationError::TooLarge {
                len,
                max: RouteDocument::MAX_DOCUMENT_LEN,
            });
        }
        Ok(())
    }

    /// The canonical body: compact JSON in declaration order.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            revocation_list: self.clone(),
        })
        .unwrap_or_default()
    }

    /// Reads and checks a body.
    pub fn parse_body(body: &[u8]) -> Result<RevocationList, RevocationError> {
        if body.len() > RouteDocument::MAX_DOCUMENT_LEN {
            return Err(RevocationError::TooLarge {
                len: body.len(),
                max: RouteDocument::MAX_DOCUMENT_LEN,
            });
        }
        let parsed: Body =
            serde_json::from_slice(body).map_err(|e| RevocationError::Syntax(e.to_string()))?;
        parsed.revocation_list.validate()?;
        Ok(parsed.revocation_list)
    }

    /// Reads the body of a signed document, which must be named
    /// [`REVOCATIONS_DOCUMENT`].
    pub fn parse_document(document: &RouteDocument) -> Result<RevocationList, RevocationError> {
        if document.name != REVOCATIONS_DOCUMENT {
            return Err(invalid(
                "name",
                format!("the document is named {:?}", document.name),
            ));
        }
        RevocationList::parse_body(&document.body)
    }

    /// Which of two signed lists wins: the higher version, then the later issue,
    /// then the body bytes, then the signature and the signer's certificate — a
    /// total order over documents, so every node ends up holding the very same
    /// one. The same body signed twice (ECDSA signatures differ every time, and
    /// a renewed CA certificate differs too) is the same list: one copy replaces
    /// the other once and everywhere, and enforcing it changes nothing. Without
    /// the signed parts in the order, two nodes holding different copies would
    /// each find the other's not newer, and their digests would name different
    /// documents forever.
    pub fn precedence(
        (a, a_doc): (&RevocationList, &RouteDocument),
        (b, b_doc): (&RevocationList, &RouteDocument),
    ) -> Ordering {
        (a.version, a.issued_at_ms)
            .cmp(&(b.version, b.issued_at_ms))
            .then_with(|| {
                (&a_doc.body, &a_doc.signature, &a_doc.signer_cert_der).cmp(&(
                    &b_doc.body,
                    &b_doc.signature,
                    &b_doc.signer_cert_der,
                ))
            })
    }

    /// Adds `entry`, unless an entry already revokes the same certificate (or the
    /// same node's, up to a later time).
    pub fn add(&mut self, entry: Revocation) -> Added {
        for e in &mut self.entries {
            if entry.serial.is_some() && e.serial == entry.serial {
                return Added::AlreadyRevoked;
            }
            if entry.serial.is_none() && e.serial.is_none() && e.node == entry.node {
                if entry.issued_before_ms > e.issued_before_ms {
                    *e = entry;
                    return Added::Extended;
                }
                return Added::AlreadyRevoked;
            }
        }
        self.entries.push(entry);
        Added::New
    }

    /// Makes this the next version, issued at `now_ms` (never earlier than the
    /// version it replaces), without the entries that expired by then.
    pub fn next_version(&mut self, now_ms: u64) {
        self.prune_expired(now_ms);
        self.version = self.version.saturating_add(1);
        self.issued_at_ms = self.issued_at_ms.max(now_ms);
    }

    /// Drops the entries that no longer matter at `now_ms`: serial entries whose
    /// certificate has expired anyway.
    pub fn prune_expired(&mut self, now_ms: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|e| e.not_after_ms.is_none_or(|end| end >= now_ms));
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_serial(serial: &str) -> Revocation {
        Revocation {
            serial: Some(serial.into()),
            node: Some("node-2".into()),
            issued_before_ms: None,
            not_after_ms: Some(5_000),
            reason: "key_compromise".into(),
            revoked_at_ms: 1_000,
        }
    }

    fn by_node(node: &str, before: u64) -> Revocation {
        Revocation::of_node(node, before, "decommissioned", before)
    }

    fn list(entries: Vec<Revocation>) -> RevocationList {
        RevocationList {
            trust_domain: "shoal.test".into(),
            version: 3,
            issued_at_ms: 2_000,
            entries,
        }
    }

    fn facts<'a>(serial: &'a str, node: &'a str, not_before_ms: u64) -> CertFacts<'a> {
        CertFacts {
            serial,
            node: Some(node),
            not_before_ms,
        }
    }

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(serial_hex(&[0, 0x0a, 0x1b]), "0a1b");
        assert_eq!(normalize_serial("0A:1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("00:0a:1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("a1b").unwrap(), "0a1b");
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial("00").is_err());
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial(&"ab".repeat(21)).is_err());
    }

    #[test]
    fn a_serial_entry_revokes_that_certificate_only() {
        let l = list(vec![by_serial("0a1b")]);
        assert!(l.revokes(&facts("0a1b", "node-2", 0)).is_some());
        assert!(l.revokes(&facts("0a1c", "node-2", 0)).is_none());
    }

    #[test]
    fn a_node_entry_revokes_certificates_issued_before_it() {
        let l = list(vec![by_node("node-2", 10_000)]);
        assert!(l.revokes(&facts("01", "node-2", 9_999)).is_some());
        // Renewed after the revocation: welcome back.
        assert!(l.revokes(&facts("02", "node-2", 10_000)).is_none());
        assert!(l.revokes(&facts("03", "node-3", 0)).is_none());
        let anonymous = CertFacts {
            serial: "04",
            node: None,
            not_before_ms: 0,
        };
        assert!(l.revokes(&anonymous).is_none());
    }

    #[test]
    fn the_body_round_trips_and_is_canonical() {
        let l = list(vec![by_serial("0a1b"), by_node("node-3", 7)]);
        let body = l.to_body();
        assert_eq!(RevocationList::parse_body(&body).unwrap(), l);
        assert_eq!(
            RevocationList::parse_body(&body).unwrap().to_body(),
            body,
            "the same list always gives the same bytes"
        );
        assert!(body.starts_with(b"{\"revocation_list\":"));
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_field() {
        let too_many = list(vec![by_node("node-2", 1); MAX_REVOCATIONS + 1]);
        let field = |l: RevocationList| match RevocationList::parse_body(&l.to_body()) {
            Err(RevocationError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert_eq!(field(too_many), "entries");
        assert_eq!(field(list(vec![by_serial("0A1B")])), "entries[0].serial");
        assert_eq!(field(list(vec![by_serial("000a")])), "entries[0].serial");
        let mut both = by_serial("0a");
        both.issued_before_ms = Some(1);
        assert_eq!(field(list(vec![both])), "entries[0].issued_before_ms");
        let mut neither = by_node("node-2", 1);
        neither.issued_before_ms = None;
        assert_eq!(field(list(vec![neither])), "entries[0]");
        let mut bad_node = by_node("node-2", 1);
        bad_node.node = Some("Node_2".into());
        assert_eq!(field(list(vec![bad_node])), "entries[0].node");
        let mut no_reason = by_node("node-2", 1);
        no_reason.reason.clear();
        assert_eq!(field(list(vec![no_reason])), "entries[0].reason");
        let mut td = list(vec![]);
        td.trust_domain = "Bad Domain".into();
        assert_eq!(field(td), "trust_domain");
        assert!(matches!(
            RevocationList::parse_body(b"{\"name\":\"web\"}"),
            Err(RevocationError::Syntax(_))
        ));
        assert!(matches!(
            RevocationList::parse_body(&vec![b' '; RouteDocument::MAX_DOCUMENT_LEN + 1]),
            Err(RevocationError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_list_whose_body_would_not_fit_a_document_is_refused_before_signing() {
        let long = Revocation {
            serial: Some("ab".repeat(20)),
            node: Some(format!("{}.{}", "n".repeat(60), "m".repeat(60))),
            issued_before_ms: None,
            not_after_ms: Some(u64::MAX),
            reason: "\"".repeat(MAX_REASON_LEN),
            revoked_at_ms: u64::MAX,
        };
        let full = list(vec![long; MAX_REVOCATIONS]);
        match full.validate() {
            Err(RevocationError::TooLarge { len, max }) => {
                assert!(len > max);
                assert_eq!(max, RouteDocument::MAX_DOCUMENT_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The same number of typical entries fits.
        let typical: Vec<Revocation> = (0..MAX_REVOCATIONS)
            .map(|i| {
                let mut e = by_serial(&format!("7f{i:038x}"));
                e.not_after_ms = Some(1_800_000_000_000);
                e.revoked_at_ms = 1_770_000_000_000;
                e
            })
            .collect();
        assert_eq!(list(typical).validate(), Ok(()));
    }

    #[test]
    fn the_highest_version_wins() {
        let doc = |l: &RevocationList| RouteDocument {
            name: REVOCATIONS_DOCUMENT.into(),
            body: l.to_body(),
            signature: vec![1],
            signer_cert_der: vec![2],
        };
        let old = list(vec![by_serial("01")]);
        let mut new = list(vec![]);
        new.version = 4;
        new.issued_at_ms = 1; // an earlier clock does not matter: the version does
        assert_eq!(
            RevocationList::precedence((&new, &doc(&new)), (&old, &doc(&old))),
            Ordering::Greater
        );
        let mut resigned = doc(&new);
        resigned.signature = vec![9, 9];
        assert_eq!(
            RevocationList::precedence((&new, &resigned), (&new, &doc(&new))),
            Ordering::Greater,
            "the same body signed twice: one copy wins everywhere"
        );
        assert_eq!(
            RevocationList::precedence((&new, &doc(&new)), (&new, &resigned)),
            Ordering::Less,
            "and the order does not depend on who holds which"
        );
    }

    #[test]
    fn adding_an_entry_twice_changes_nothing_and_a_node_cut_off_only_moves_later() {
        let mut l = list(vec![]);
        assert_eq!(l.add(by_serial("01")), Added::New);
        assert_eq!(l.add(by_serial("01")), Added::AlreadyRevoked);
        assert_eq!(l.add(by_node("node-3", 10)), Added::New);
        assert_eq!(l.add(by_node("node-3", 5)), Added::AlreadyRevoked);
        assert_eq!(l.add(by_node("node-3", 20)), Added::Extended);
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.entries[1].issued_before_ms, Some(20));
        l.next_version(6_000);
        assert_eq!((l.version, l.issued_at_ms), (4, 6_000));
        assert_eq!(l.entries.len(), 1, "the expired serial entry is dropped");
        l.next_version(1);
        assert_eq!(
            (l.version, l.issued_at_ms),
            (5, 6_000),
            "never issued earlier"
        );
    }

    #[test]
    fn expired_serial_entries_are_pruned_node_entries_stay() {
        let mut l = list(vec![by_serial("01"), by_node("node-3", 7)]);
        assert_eq!(l.prune_expired(5_000), 0);
        assert_eq!(l.prune_expired(5_001), 1);
        assert_eq!(l.entries, vec![by_node("node-3", 7)]);
    }
}
