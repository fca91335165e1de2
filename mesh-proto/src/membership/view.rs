//! What the state machine shows the rest of the node: every member with its
//! liveness and its verified records, and the route documents in force. Plain
//! data, rebuilt on demand; the routing table and the admin API are functions of
//! it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::gossip::{NodeRecord, ServiceRecord};

use super::documents::{HeldDocument, HeldRevocations};

/// What a member's records say: its name, generation, node and service
/// records and what its certificate allows. Built once per set of records
/// held and shared (`Arc`) by every view built while they stay the same, so a
/// view of N members costs N reference counts, not N copies of every record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecords {
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Its node record (address, zone, state), once received.
    pub node: Option<Arc<NodeRecord>>,
    /// Its service records.
    pub services: Vec<ServiceRecord>,
    /// The services its certificate allows while it is valid.
    pub cert_services: Vec<String>,
    /// When its certificate expires, ms since the Unix epoch.
    pub cert_not_after_ms: u64,
    /// The highest version held.
    pub version: u64,
}

/// One member: its records (shared, see [`MemberRecords`], whose fields read
/// through this type) and this node's verdict on it as of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// What its records say.
    pub records: Arc<MemberRecords>,
    /// Whether this is the node itself.
    pub is_self: bool,
    /// `alive`, `suspect` or `dead` (this node's verdict).
    pub health: &'static str,
    /// Who accuses it, if anyone.
    pub accusers: Vec<String>,
    /// Whether its certificate was still valid when the view was built.
    pub cert_valid: bool,
    /// Milliseconds since this node last heard from it or of it (an answer, a
    /// message, a newer record), as of when the view was built; `u64::MAX` if
    /// never.
    pub last_heard_ms: u64,
}

impl std::ops::Deref for MemberView {
    type Target = MemberRecords;

    fn deref(&self) -> &MemberRecords {
        &self.records
    }
}

impl MemberView {
    /// Its QUIC address, from its signed node record.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.node.as_ref().map(|n| n.quic_addr)
    }

    /// Whether it is alive or suspect (not declared dead).
    pub fn is_up(&self) -> bool {
        self.health != "dead"
    }

    /// The services its certificate allows now: none once it expired.
    pub fn allowed_services(&self) -> &[String] {
        if self.cert_valid {
            &self.records.cert_services
        } else {
            &[]
        }
    }
}

/// The shared state as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Bumped on every change that could matter to a reader.
    pub version: u64,
    /// Every member held, by name.
    pub members: Vec<MemberView>,
    /// The route documents in force, by name.
    pub documents: Vec<HeldDocument>,
    /// The revocation list in force, if any.
    pub revocations: Option<HeldRevocations>,
}
