//! The gossip wire format (`shoal-gossip/2`): one [`GossipMessage`] frame per
//! QUIC unidirectional stream. It carries signed records, signed suspicions and
//! operator-signed route documents, anti-entropy digests, probes, and the push
//! tree's announcements, prunes and grafts ([`super::tree`]).
//!
//! Nothing in a message is trusted because of who relayed it: the sender's
//! identity is the TLS certificate of the connection (not a field here), and every
//! item is checked against the signature of its *origin* before it is applied
//! ([`super::records`], [`super::liveness`], [`super::documents`]). Decoding only
//! checks sizes, names and counts, as every frame of this crate does.

use bincode::{Decode, Encode};

use crate::codec::{FieldError, Frame, impl_frame_body};
use crate::gossip::{Key, RouteDocument, parse_key};
use crate::names::validate_name;

/// Largest message body, in bytes. A QUIC stream carries one message, so the limit
/// is what one peer can make this node buffer per stream.
pub const MAX_MESSAGE_BODY: usize = 128 * 1024;
/// Size a sender aims a message at (items and digests are cut to fit): half the
/// limit, so a message never comes near it.
pub const TARGET_MESSAGE_BYTES: usize = 60 * 1024;
/// Most records one message may carry.
pub const MAX_RECORDS_PER_MESSAGE: usize = 512;
/// Most suspicions one message may carry.
pub const MAX_SUSPICIONS_PER_MESSAGE: usize = 256;
/// Most route documents one message may carry.
pub const MAX_DOCUMENTS_PER_MESSAGE: usize = 32;
/// Most origin summaries in one digest.
pub const MAX_DIGEST_ORIGINS: usize = 4096;
/// Most suspicion or document ids in one digest.
pub const MAX_DIGEST_IDS: usize = 1024;
/// Largest record value (the frame of a [`crate::gossip::NodeCertificate`],
/// [`crate::gossip::NodeRecord`] or [`crate::gossip::ServiceRecord`]), in bytes.
pub const MAX_VALUE_LEN: usize = 4400;
/// Largest signature, in bytes (DER ECDSA P-384 is at most 104; P-256 72).
pub const MAX_SIGNATURE_LEN: usize = 132;

/// A record of one node's key space, signed by that node.
///
/// The signature covers the cluster name and every field but itself
/// ([`super::signing::record_payload`]); `version` counts up across all the keys of
/// one `(origin, generation)`, so the highest version a node holds of an origin
/// summarises everything it holds of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct SignedRecord {
    /// The node the record is about, and the only one that can sign it.
    pub origin: String,
    /// The origin's generation: its start time, milliseconds since the Unix epoch.
    pub generation: u64,
    /// The version, unique within `(origin, generation)`.
    pub version: u64,
    /// When the origin signed it, by its clock, milliseconds since the Unix epoch.
    pub signed_at_ms: u64,
    /// The key: `node`, `cert` or `svc:<name>`.
    pub key: String,
    /// The value: the frame of the key's record type.
    pub value: Vec<u8>,
    /// The origin's signature.
    pub signature: Vec<u8>,
}

impl SignedRecord {
    /// Bytes this record occupies in a message and in memory accounting.
    pub fn weight(&self) -> usize {
        self.origin.len() + self.key.len() + self.value.len() + self.signature.len() + 40
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("record origin", &self.origin)?;
        match parse_key(&self.key) {
            Some(Key::Node | Key::Cert | Key::Service(_)) => {}
            _ => {
                return Err(FieldError::BadChar {
                    field: "record key",
                    ch: self.key.chars().next().unwrap_or(' '),
                    allowed: "keys are node, cert or svc:<name>",
                });
            }
        }
        too_long("record value", self.value.len(), MAX_VALUE_LEN)?;
        too_long("record signature", self.signature.len(), MAX_SIGNATURE_LEN)?;
        if self.signature.is_empty() {
            return Err(FieldError::Empty {
                field: "record signature",
            });
        }
        Ok(())
    }
}

/// One member's accusation that another member stopped answering, signed by the
/// accuser. A hint, never a verdict: every node decides a death on its own clock,
/// and the accused cancels the accusation everywhere by signing a newer record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Suspicion {
    /// The accusing node.
    pub accuser: String,
    /// Its generation.
    pub accuser_generation: u64,
    /// The accused node.
    pub target: String,
    /// The accused generation.
    pub target_generation: u64,
    /// The highest version of the target the accuser held: a record of the target
    /// with a higher version, signed recently enough, refutes the accusation.
    pub target_version: u64,
    /// When the accuser signed it, by its clock, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// The accuser's signature.
    pub signature: Vec<u8>,
}

impl Suspicion {
    /// The id digests carry.
    pub fn id(&self) -> SuspicionId {
        SuspicionId {
            target: self.target.clone(),
            accuser: self.accuser.clone(),
            target_version: self.target_version,
        }
    }

    /// Bytes this suspicion occupies in a message.
    pub fn weight(&self) -> usize {
        self.accuser.len() + self.target.len() + self.signature.len() + 48
    }

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("suspicion accuser", &self.accuser)?;
        validate_name("suspicion target", &self.target)?;
        too_long(
            "suspicion signature",
            self.signature.len(),
            MAX_SIGNATURE_LEN,
        )?;
        if self.signature.is_empty() {
            return Err(FieldError::Empty {
                field: "suspicion signature",
            });
        }
        Ok(())
    }
}

/// What a node holds of one origin, in a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OriginSummary {
    /// The origin.
    pub name: String,
    /// Its generation held.
    pub generation: u64,
    /// The highest version held.
    pub max_version: u64,
    /// A hash of every (key, version) held: equal summaries mean equal holdings,
    /// so a record missed between two versions is noticed too.
    pub fingerprint: u64,
}

/// Identifies a suspicion in a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct SuspicionId {
    /// The accused.
    pub target: String,
    /// The accuser.
    pub accuser: String,
    /// The accused version.
    pub target_version: u64,
}

/// Identifies a route document in a digest: its name and a digest of its signed
/// parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct DocumentSummary {
    /// The route name.
    pub name: String,
    /// The first 16 bytes of the SHA-256 of its signed parts
    /// ([`super::documents::document_id`]).
    pub id: [u8; 16],
}

/// A half-open range of origin names, `[from, to)`; `to = None` runs to the end.
/// Digests cover one range, so a digest stays small whatever the mesh size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct NameRange {
    /// First name in the range (the empty string: from the start).
    pub from: String,
    /// First name after the range, or `None`.
    pub to: Option<String>,
}

impl NameRange {
    /// The whole name space.
    pub fn all() -> NameRange {
        NameRange {
            from: String::new(),
            to: None,
        }
    }

    /// Whether `name` falls in the range.
    pub fn contains(&self, name: &str) -> bool {
        name >= self.from.as_str() && self.to.as_deref().is_none_or(|to| name < to)
    }
}

/// Anti-entropy: what the sender holds. The receiver answers with [`Items`] the
/// sender lacks and, if `reply`, with its own digest of the same range so the
/// sender can answer in turn.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Digest {
    /// The origins covered: the sender lists every origin it holds in the range.
    pub range: NameRange,
    /// What the sender holds of each origin in `range`.
    pub origins: Vec<OriginSummary>,
    /// The suspicions the sender holds of members in `range`.
    pub suspicions: Vec<SuspicionId>,
    /// Every route document the sender holds.
    pub documents: Vec<DocumentSummary>,
    /// Whether the receiver should send its own digest back.
    pub reply: bool,
}

/// A summary of everything a node holds in one range of origin names, and of
/// its suspicions and documents: the cheap first step of anti-entropy. The
/// receiver compares it with its own; only if they differ does it send a full
/// [`Digest`]. A quiet mesh exchanges little more than these.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RangeHash {
    /// The origins covered.
    pub range: NameRange,
    /// How many origins the sender holds in the range.
    pub count: u32,
    /// An order-independent hash of (name, generation, fingerprint) of each.
    pub origins: u64,
    /// The same over the suspicions held of members in the range (one mark
    /// for each member held dead).
    pub suspicions: u64,
    /// The same over the route documents held.
    pub documents: u64,
}

/// Items to apply: records, suspicions, documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Items {
    /// Signed records, certificates of an origin before its other records.
    pub records: Vec<SignedRecord>,
    /// Signed suspicions.
    pub suspicions: Vec<Suspicion>,
    /// Operator-signed route documents.
    pub documents: Vec<RouteDocument>,
}

impl Items {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.suspicions.is_empty() && self.documents.is_empty()
    }
}

/// What a message does.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Body {
    /// A liveness probe; answered with [`Body::Ack`] carrying the same nonce.
    Ping(u64),
    /// The answer to a [`Body::Ping`].
    Ack(u64),
    /// Anti-entropy, first step: is anything different?
    SyncHash(RangeHash),
    /// Anti-entropy: what the sender holds.
    Sync(Digest),
    /// Items pushed (new changes) or answering a digest.
    Items(Items),
    /// SWIM's indirect probe: "my pings of `target` went unanswered; ping it
    /// for me". The receiver pings the member by name, at the address it holds
    /// (never one the requester gives), with [`Body::IndirectPing`].
    PingReq(PingReq),
    /// A ping on behalf of `requester`, answered with a signed
    /// [`Body::IndirectAck`] to the intermediary.
    IndirectPing(IndirectPing),
    /// The target's signed answer to an indirect ping, relayed unchanged by the
    /// intermediary to the requester, who checks the target's signature: an
    /// intermediary cannot vouch for a dead node.
    IndirectAck(IndirectAck),
    /// "What time is it by your clock?" (`shoal check --pre` asks a seed to
    /// measure clock skew). Answered with [`Body::TimeIs`] carrying the same
    /// nonce, to anyone of the cluster, with no other effect: not a sign of
    /// life, not a join.
    Time(u64),
    /// The answer to a [`Body::Time`].
    TimeIs(TimeIs),
    /// Lazy push ([`super::tree`]): "I hold these": sent instead of the items to
    /// the neighbours the sender's pushes do not go to in full.
    IHave(Vec<Announced>),
    /// "Your pushes reach me by another path: announce them only." The link
    /// leaves the push tree both ways.
    Prune,
    /// "I lack what you announced: send it, and push to me in full again."
    /// Each entry names the version the sender holds (records after it are
    /// wanted). Answered with [`Body::Items`].
    Graft(Vec<Announced>),
}

/// One origin in a [`Body::IHave`] (the version announced) or a
/// [`Body::Graft`] (the version held; records after it are wanted).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Announced {
    /// The origin.
    pub origin: String,
    /// Its generation.
    pub generation: u64,
    /// A version of that generation.
    pub version: u64,
}

/// Most origins in one [`Body::IHave`] or [`Body::Graft`].
pub const MAX_ANNOUNCED: usize = MAX_RECORDS_PER_MESSAGE;

fn validate_announced(field: &'static str, list: &[Announced]) -> Result<(), FieldError> {
    too_many(field, list.len(), MAX_ANNOUNCED)?;
    for a in list {
        validate_name(field, &a.origin)?;
    }
    Ok(())
}

/// See [`Body::TimeIs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct TimeIs {
    /// The asker's nonce.
    pub nonce: u64,
    /// The answering node's wall clock, milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// See [`Body::PingReq`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PingReq {
    /// The requester's probe nonce.
    pub nonce: u64,
    /// The member to ping.
    pub target: String,
}

/// See [`Body::IndirectPing`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct IndirectPing {
    /// The requester's probe nonce.
    pub nonce: u64,
    /// Who asked for the ping.
    pub requester: String,
}

/// See [`Body::IndirectAck`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct IndirectAck {
    /// The requester's probe nonce.
    pub nonce: u64,
    /// Who asked for the ping.
    pub requester: String,
    /// The member that answered (and signed).
    pub target: String,
    /// The target's signature over
    /// [`super::signing::indirect_ack_payload`].
    pub signature: Vec<u8>,
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GossipMessage {
    /// The cluster the sender belongs to: other clusters' messages are refused.
    pub cluster: String,
    /// The sender's generation (its name is its certificate's).
    pub sender_generation: u64,
    /// What the message does.
    pub body: Body,
}

fn too_long(field: &'static str, len: usize, max: usize) -> Result<(), FieldError> {
    if len > max {
        return Err(FieldError::TooLong { field, len, max });
    }
    Ok(())
}

fn too_many(field: &'static str, count: usize, max: usize) -> Result<(), FieldError> {
    if count > max {
        return Err(FieldError::TooMany { field, count, max });
    }
    Ok(())
}

impl NameRange {
    fn validate(&self) -> Result<(), FieldError> {
        if !self.from.is_empty() {
            validate_name("digest range start", &self.from)?;
        }
        if let Some(to) = &self.to {
            validate_name("digest range end", to)?;
        }
        Ok(())
    }
}

impl Digest {
    fn validate(&self) -> Result<(), FieldError> {
        self.range.validate()?;
        too_many("digest origins", self.origins.len(), MAX_DIGEST_ORIGINS)?;
        too_many("digest suspicions", self.suspicions.len(), MAX_DIGEST_IDS)?;
        too_many("digest documents", self.documents.len(), MAX_DIGEST_IDS)?;
        for o in &self.origins {
            validate_name("digest origin", &o.name)?;
        }
        for s in &self.suspicions {
            validate_name("digest suspicion target", &s.target)?;
            validate_name("digest suspicion accuser", &s.accuser)?;
        }
        for d in &self.documents {
            // The revocation list's name is not a route name, on purpose.
            if d.name != crate::revocation::REVOCATIONS_DOCUMENT {
                validate_name("digest document", &d.name)?;
            }
        }
        Ok(())
    }
}

impl Items {
    fn validate(&self) -> Result<(), FieldError> {
        too_many("records", self.records.len(), MAX_RECORDS_PER_MESSAGE)?;
        too_many(
            "suspicions",
            self.suspicions.len(),
            MAX_SUSPICIONS_PER_MESSAGE,
        )?;
        too_many("documents", self.documents.len(), MAX_DOCUMENTS_PER_MESSAGE)?;
        for r in &self.records {
            r.validate()?;
        }
        for s in &self.suspicions {
            s.validate()?;
        }
        for d in &self.documents {
            d.validate()?;
        }
        Ok(())
    }
}

impl Frame for GossipMessage {
    const NAME: &'static str = "gossip message";
    const MAX_BODY_LEN: usize = MAX_MESSAGE_BODY;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("cluster", &self.cluster)?;
        match &self.body {
            Body::Ping(_) | Body::Ack(_) | Body::Time(_) | Body::TimeIs(_) | Body::Prune => Ok(()),
            Body::IHave(list) => validate_announced("announced origin", list),
            Body::Graft(list) => validate_announced("grafted origin", list),
            Body::SyncHash(h) => h.range.validate(),
            Body::Sync(d) => d.validate(),
            Body::Items(items) => items.validate(),
            Body::PingReq(r) => Ok(validate_name("ping-req target", &r.target)?),
            Body::IndirectPing(p) => Ok(validate_name("indirect ping requester", &p.requester)?),
            Body::IndirectAck(a) => {
                validate_name("indirect ack requester", &a.requester)?;
                validate_name("indirect ack target", &a.target)?;
                too_long(
                    "indirect ack signature",
                    a.signature.len(),
                    MAX_SIGNATURE_LEN,
                )
            }
        }
    }
}
impl_frame_body!(GossipMessage);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_exact, encode};

    fn record() -> SignedRecord {
        SignedRecord {
            origin: "node-1".into(),
            generation: 7,
            version: 3,
            signed_at_ms: 9,
            key: "svc:web".into(),
            value: vec![1; 40],
            signature: vec![2; 64],
        }
    }

    #[test]
    fn messages_round_trip() {
        let msg = GossipMessage {
            cluster: "mesh".into(),
            sender_generation: 1,
            body: Body::Items(Items {
                records: vec![record()],
                suspicions: vec![Suspicion {
                    accuser: "a".into(),
                    accuser_generation: 1,
                    target: "b".into(),
                    target_generation: 2,
                    target_version: 3,
                    issued_at_ms: 4,
                    signature: vec![5; 70],
                }],
                documents: vec![],
            }),
        };
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode_exact::<GossipMessage>(&bytes).unwrap(), msg);
        let sync = GossipMessage {
            cluster: "mesh".into(),
            sender_generation: 1,
            body: Body::Sync(Digest {
                range: NameRange {
                    from: "a".into(),
                    to: Some("m".into()),
                },
                origins: vec![OriginSummary {
                    name: "b".into(),
                    generation: 1,
                    max_version: 2,
                    fingerprint: 3,
                }],
                suspicions: vec![],
                documents: vec![DocumentSummary {
                    name: "shop".into(),
                    id: [3; 16],
                }],
                reply: true,
            }),
        };
        let bytes = encode(&sync).unwrap();
        assert_eq!(decode_exact::<GossipMessage>(&bytes).unwrap(), sync);
    }

    #[test]
    fn bad_items_are_refused_at_decode() {
        let mut bad_key = record();
        bad_key.key = "route:shop".into();
        let mut unsigned = record();
        unsigned.signature.clear();
        let mut bad_origin = record();
        bad_origin.origin = "Node".into();
        let mut huge = record();
        huge.value = vec![0; MAX_VALUE_LEN + 1];
        for r in [bad_key, unsigned, bad_origin, huge] {
            let msg = GossipMessage {
                cluster: "mesh".into(),
                sender_generation: 1,
                body: Body::Items(Items {
                    records: vec![r.clone()],
                    ..Items::default()
                }),
            };
            assert!(encode(&msg).is_err(), "{r:?}");
        }
    }

    fn announced(origin: &str) -> Announced {
        Announced {
            origin: origin.into(),
            generation: 7,
            version: 9,
        }
    }

    #[test]
    fn push_tree_messages_round_trip_and_are_bounded() {
        for body in [
            Body::IHave(vec![announced("node-1"), announced("node-2")]),
            Body::Graft(vec![announced("node-3")]),
            Body::Prune,
        ] {
            let msg = GossipMessage {
                cluster: "mesh".into(),
                sender_generation: 1,
                body,
            };
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode_exact::<GossipMessage>(&bytes).unwrap(), msg);
        }
        let too_many = vec![announced("node-1"); MAX_ANNOUNCED + 1];
        let bad_name = vec![announced("Node 1")];
        for body in [
            Body::IHave(too_many.clone()),
            Body::Graft(too_many),
            Body::IHave(bad_name.clone()),
            Body::Graft(bad_name),
        ] {
            let msg = GossipMessage {
                cluster: "mesh".into(),
                sender_generation: 1,
                body,
            };
            assert!(encode(&msg).is_err(), "{msg:?}");
        }
    }

    #[test]
    fn ranges_are_half_open() {
        let r = NameRange {
            from: "b".into(),
            to: Some("d".into()),
        };
        assert!(!r.contains("a"));
        assert!(r.contains("b"));
        assert!(r.contains("c.x"));
        assert!(!r.contains("d"));
        assert!(NameRange::all().contains("a"));
    }
}
