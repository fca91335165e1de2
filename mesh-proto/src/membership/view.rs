//! What the state machine shows the rest of the node: every member with its
//! liveness and its verified records, and the route documents in force. Plain
//! data, rebuilt on demand; the routing table and the admin API are functions of
//! it.

use std::net::SocketAddr;

use crate::gossip::{NodeRecord, ServiceRecord};

use super::documents::{HeldDocument, HeldRevocations};

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Whether this is the node itself.
    pub is_self: bool,
    /// `alive`, `suspect` or `dead` (this node's verdict).
    pub health: &'static str,
    /// Who accuses it, if anyone.
    pub accusers: Vec<String>,
    /// Its node record (address, zone, state), once received.
    pub node: Option<NodeRecord>,
    /// Its service records.
    pub services: Vec<ServiceRecord>,
    /// The services its certificate allows now: none once it expired.
    pub allowed_services: Vec<String>,
    /// When its certificate expires, ms since the Unix epoch.
    pub cert_not_after_ms: u64,
    /// The highest version held.
    pub version: u64,
    /// Milliseconds since this node last heard from it or of it (an answer, a
    /// message, a newer record), as of when the view was built; `u64::MAX` if
    /// never.
    pub last_heard_ms: u64,
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
