//! The membership state machine: messages and time in, messages and events out.
//!
//! The driver (the node, or a simulator) feeds it what peers sent
//! ([`Membership::handle_message`]) and wakes it when [`Membership::poll_timeout`]
//! says ([`Membership::handle_timeout`]); it then drains
//! [`Membership::poll_transmit`] and [`Membership::poll_event`]. It never touches
//! a socket or a clock, so thousands of copies run in one process on a simulated
//! clock. A node talks to its few neighbours on the overlay ([`super::overlay`]),
//! whatever the size of the mesh. Each round it
//!
//! 1. probes one neighbour (round robin over a shuffled list); a probe unanswered
//!    within `probe_timeout` is sent again, then other neighbours are asked to
//!    ping the target for it (SWIM's indirect probe, answered with the target's
//!    signature), and only when all of that stays unanswered does it become a
//!    signed accusation ([`super::probe`], [`super::liveness`]);
//! 2. pushes what is still queued to its neighbours ([`super::broadcast`]):
//!    records in full along the push tree and announced off it
//!    ([`super::tree`]) — news is pushed as soon as it arrives, so the round only
//!    catches up what did not fit in a message, and asks for announced records
//!    no push brought;
//! 3. every `sync_every` rounds, reconciles one range of origin names with one
//!    neighbour ([`super::sync`]), and now and then with a member it believes
//!    dead or with a seed, so partitions heal and a new node pulls the state;
//! 4. forgets members dead for longer than `dead_grace`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::encode;
use crate::gossip::{CERT_KEY, NODE_KEY, NodeCertificate, RouteDocument};

use super::broadcast::TransmitQueue;
use super::config::Config;
use super::documents::{DocumentApplied, DocumentRefusal, DocumentStore};
use super::liveness::{Accepted, Health, Liveness, Transition, millis};
use super::probe::{AckBudget, INDIRECT_PROBES, MAX_PROBES, Next, Probe, RETRY_PINGS, Relays};
use super::records::{Applied, Judge, Origin, RecordStore};
use super::refusal::Refusal;
use super::shared::SharedRecords;
use super::signing::{Crypto, indirect_ack_payload, record_payload, suspicion_payload};
use super::sync;
use super::tree::PushTree;
use super::view::{MemberView, View};
use super::wire::{
    Body, GossipMessage, IndirectAck, IndirectPing, Items, NameRange, PingReq, SignedRecord,
    Suspicion, TimeIs,
};

mod push;

/// How long a peer that sent a bad signature is ignored.
pub const QUARANTINE: Duration = Duration::from_secs(30);
/// Peers whose last anti-entropy request is remembered before old entries are
/// dropped.
const MAX_SYNC_PEERS: usize = 4096;
/// Probes that timed out remembered, to notice their late answers.
const TIMED_OUT_REMEMBERED: usize = 8;
/// Highest [`Membership::local_health`].
pub const MAX_LOCAL_HEALTH: u32 = 8;
/// Floods of this node's own suspicions: the second, a round later, covers a
/// loss on the first hop, where a flood has no redundancy yet. (Its own
/// records are pushed once: a second push would be a duplicate that prunes the
/// tree, and its announcements to lazy neighbours cover a lost push.)
const OWN_FLOODS: u32 = 2;
/// Pushes of news from others, and of this node's own records (each neighbour
/// passes it on too).
const RELAY_FLOODS: u32 = 1;
/// Items signed longer ago than this are not flooded on when they arrive: they
/// are old state a node is catching up on (by anti-entropy), not news.
pub const FLOOD_FRESHNESS: Duration = Duration::from_secs(10);
/// Unreachable members waiting for accusation budget, at most.
const MAX_DEFERRED_ACCUSATIONS: usize = 64;
/// Rounds after which the neighbours are computed again even if the membership
/// seems unchanged.
const NEIGHBOURS_REFRESH_ROUNDS: u64 = 16;
/// Rounds a new node waits at most for its view to stop growing before it
/// chooses its first neighbours.
const FIRST_CHOICE_ROUNDS: u64 = 2;
/// Records learned in a round that make it a bulk pull (a joiner taking in a
/// large mesh's state: about 2,400 a round from one anti-entropy answer).
const BULK_PULL_RECORDS: u32 = 512;
/// Rounds a new node waits at most for its first neighbours while it still
/// pulls in bulk: chosen in a fraction of the membership, its ring neighbours
/// would all be replaced once it holds the rest, and both sets would be its
/// connections for a while (a joiner of 10,000 nodes had 18).
const BULK_PULL_CHOICE_ROUNDS: u64 = 40;

/// Most anti-entropy rounds in a row that hash the same range again because
/// it differed (see [`Membership::handle_sync`]): a range that always differs
/// with some peer (one holds a member the other buried) does not hold the walk
/// over the other ranges for longer.
const MAX_SYNC_REPEATS: u8 = 4;
/// Every this many anti-entropy exchanges, one goes to a member believed dead
/// (so a healed partition is noticed) and one to a seed.
const SYNC_WIDER_EVERY: u64 = 4;
/// Anti-entropy requests of one kind answered per peer per half round. An
/// honest member sends a node at most two in one round: as a neighbour, and as
/// a seed it knows by another address than the node's own record gives (it
/// cannot tell them apart before it connects).
const SYNCS_PER_HALF_ROUND: u8 = 2;
/// How rarely a wider exchange goes to a seed: with probability
/// `1 / (members × SEED_SYNC_RARITY)`, so the whole mesh contacts a seed about
/// once every `SEED_SYNC_RARITY` wider rounds (16 s at the default interval),
/// whatever its size.
const SEED_SYNC_RARITY: u64 = 4;

/// The next number of a splitmix64 sequence whose state is `state`: the state
/// machine's and the simulator's reproducible randomness.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A request whose answers [`Membership::may_answer`] limits per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ask {
    /// An anti-entropy range hash.
    RangeHash,
    /// A digest asking for one back.
    Digest,
    /// A digest answering one of this node's (asking for nothing back).
    DigestAnswer,
    /// A graft of announced records.
    Graft,
}

impl Ask {
    /// How many of this kind one peer may send per half round: answers to
    /// this node's digests come one round trip after the questions, so up to
    /// two windows' worth of them can land in one.
    fn limit(self) -> u8 {
        match self {
            Ask::DigestAnswer => SYNCS_PER_HALF_ROUND * 2,
            Ask::RangeHash | Ask::Digest | Ask::Graft => SYNCS_PER_HALF_ROUND,
        }
    }
}

/// A peer: its certificate's node name and its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The node name of its certificate.
    pub name: String,
    /// The address its connection comes from.
    pub addr: SocketAddr,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A member, at the address its signed node record gives (or the address it
    /// wrote from, for an answer). The driver checks the name on connect.
    Member(Peer),
    /// A seed address: any mesh node may answer.
    Seed(SocketAddr),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub to: Destination,
    /// What.
    pub message: GossipMessage,
}

/// Something the driver may want to log or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An item was refused.
    Refused {
        /// Why.
        reason: Refusal,
        /// The peer that sent it.
        sender: String,
        /// The node the item claimed to come from, if any.
        origin: Option<String>,
    },
    /// A message from a node of another cluster (`cluster`: the cluster it
    /// names), refused (a [`Event::Refused`] with `wrong_cluster` comes with
    /// it): the operator's mistake to name, with both clusters.
    OtherCluster {
        /// The peer that sent it.
        sender: String,
        /// The cluster its message names.
        cluster: String,
    },
    /// A new member, or a new generation of one, was admitted.
    Joined {
        /// Its name.
        name: String,
        /// Its generation.
        generation: u64,
    },
    /// A member was accused (a new accusation was accepted).
    Accused {
        /// The accused.
        target: String,
        /// The accuser.
        accuser: String,
    },
    /// This node's timer declared a member dead.
    Died {
        /// The member.
        name: String,
        /// Who accused it.
        accusers: Vec<String>,
    },
    /// A member declared dead refuted and is alive again.
    Revived {
        /// The member.
        name: String,
    },
    /// A dead member was forgotten.
    Forgotten {
        /// The member.
        name: String,
    },
    /// This node was accused and refuted the accusation.
    Refuted {
        /// The accuser.
        accuser: String,
    },
    /// This node accused `target` again for a peer that still held it alive
    /// when every accusation of it was too old to hand on.
    Reaccused {
        /// The member.
        target: String,
    },
    /// A peer is ignored for [`QUARANTINE`] after sending a bad signature.
    Quarantined {
        /// The peer.
        peer: String,
    },
    /// A route document was refused (also reported as [`Event::Refused`]).
    DocumentRefused {
        /// The document.
        document: Box<RouteDocument>,
        /// The finer reason ([`DocumentRefusal::label`]).
        label: &'static str,
        /// The peer that sent it (this node's own name for local input).
        sender: String,
    },
    /// A route document is now in force.
    DocumentInForce {
        /// The route.
        name: String,
    },
    /// A peer had forgotten this node (or never heard of it), which signed all
    /// its records again.
    Reannounced,
    /// This node could not sign a record of its own.
    SigningFailed {
        /// The key it tried to publish.
        key: String,
    },
}

/// Why this node's own input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The value is not a valid record of its key, or the key is not this node's.
    #[error("cannot publish {key}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The crypto provider could not sign.
    #[error("cannot sign {key} with this node's key")]
    Signing {
        /// The key.
        key: String,
    },
    /// This node's own certificate does not check out.
    #[error("this node's certificate is refused: {0}")]
    Certificate(String),
}

/// One node's membership protocol state. See the module documentation.
#[derive(Debug)]
pub struct Membership<C: Crypto> {
    config: Config,
    crypto: C,
    records: RecordStore<C::PublicKey>,
    liveness: Liveness,
    documents: DocumentStore,
    queue: TransmitQueue,
    tree: PushTree,
    seeds: Vec<SocketAddr>,
    rng: u64,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    view_version: u64,
    next_round: Option<Instant>,
    round: u64,
    syncs: u64,
    catching_up: bool,
    local_health: u32,
    timed_out: VecDeque<(String, u64)>,
    probes: Vec<Probe>,
    relays: Relays,
    ack_budget: AckBudget,
    probe_order: Vec<String>,
    neighbours: Vec<Peer>,
    topology: u64,
    /// The last round in which a new member (or generation) was learned.
    learned_round: u64,
    /// Records that changed the state in this round, and whether the last
    /// round learned [`BULK_PULL_RECORDS`] or more.
    learned_records: u32,
    bulk_pull: bool,
    neighbours_of: Option<(u64, u64, u64)>,

    sync_cursor: String,
    /// The range this node last sent a hash of, until a peer's digest says it
    /// differs (and it is hashed again), and how many rounds in a row it was.
    last_sync_range: Option<NameRange>,
    sync_repeats: u8,
    /// Members whose probe from here went unanswered through every stage,
    /// until when they stay out of this node's neighbours: as long as an
    /// accusation stays valid ([`Timing::suspicion_ttl`]), or until they are
    /// heard from (a healed path brings their probes).
    unreachable: HashMap<String, Instant>,
    /// Unreachable members not yet accused for want of budget, oldest first.
    deferred: VecDeque<String>,
    quarantine: HashMap<String, Instant>,
    /// Per (peer, digest or hash): when its current half round began and how
    /// many of its anti-entropy requests were answered in it.
    sync_answered: HashMap<(String, Ask), (Instant, u8)>,
    own_version: u64,
    last_signed_ms: u64,
    last_announce_ms: u64,
}

impl<C: Crypto> Membership<C> {
    /// A node that knows nobody yet but `seeds`, whose first round is due at
    /// `now`; `rng_seed` makes its random choices reproducible.
    pub fn new(
        config: Config,
        crypto: C,
        seeds: Vec<SocketAddr>,
        rng_seed: u64,
        now: Instant,
    ) -> Self {
        Membership {
            config,
            crypto,
            records: RecordStore::default(),
            liveness: Liveness::default(),
            documents: DocumentStore::default(),
            queue: TransmitQueue::default(),
            tree: PushTree::default(),
            seeds,
            rng: rng_seed | 1,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            view_version: 1,
            next_round: Some(now),
            round: 0,
            syncs: 0,
            catching_up: false,
            local_health: 0,
            timed_out: VecDeque::new(),
            probes: Vec::new(),
            relays: Relays::default(),
            ack_budget: AckBudget::default(),
            probe_order: Vec::new(),
            neighbours: Vec::new(),
            topology: 0,
            learned_round: 0,
            learned_records: 0,
            bulk_pull: false,
            neighbours_of: None,

            sync_cursor: String::new(),
            last_sync_range: None,
            sync_repeats: 0,
            unreachable: HashMap::new(),
            deferred: VecDeque::new(),
            quarantine: HashMap::new(),
            sync_answered: HashMap::new(),
            own_version: 0,
            last_signed_ms: 0,
            last_announce_ms: 0,
        }
    }

    /// Holds the records it takes in `shared`, with every other state machine
    /// given the same, so identical records are held once between them (the
    /// simulator's nodes; see [`super::shared`]). Call it before the first
    /// record is published.
    pub fn share_records(&mut self, shared: Arc<SharedRecords<C::PublicKey>>) {
        self.records.share(shared);
    }

    /// This node's own origin as its store holds it (its certificate, node
    /// and service records), to give to `Membership::adopt_settled` of
    /// another node.
    pub fn own_origin(&self) -> Option<Arc<Origin<C::PublicKey>>> {
        self.records.get_shared(&self.config.name)
    }

    /// Starts this node as if gossip had already given it `origins`, each
    /// checked by another node of the same cluster and held unjudged (see
    /// `RecordStore::adopt`): the simulator's settled start, which skips the
    /// cold start of a mesh too large to start from nothing in a simulation.
    /// No event is raised and nothing is queued for the neighbours (every node
    /// starts with the same state). Returns how many origins were taken.
    ///
    /// Crate-private: it takes records without checking them, which only the
    /// simulator (`sim::Network::settle`) may do.
    pub(crate) fn adopt_settled(
        &mut self,
        origins: impl IntoIterator<Item = Arc<Origin<C::PublicKey>>>,
    ) -> usize {
        let taken = self.records.adopt(origins);
        if taken > 0 {
            self.topology_changed();
            self.changed();
        }
        taken
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The crypto provider.
    pub fn crypto(&self) -> &C {
        &self.crypto
    }

    /// Replaces the seeds.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.seeds = seeds;
    }

    fn random(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            return None;
        }
        let i = (self.random() % from.len() as u64) as usize;
        from.get(i).cloned()
    }

    fn changed(&mut self) {
        self.view_version = self.view_version.wrapping_add(1);
    }

    /// Bumped whenever the [`View`] may differ.
    pub fn view_version(&self) -> u64 {
        self.view_version
    }

    // ------------------------------------------------------------------
    // This node's own records
    // ------------------------------------------------------------------

    /// Publishes this node's certificate (DER): checked like a peer's, signed
    /// with the key the crypto provider holds now. Every other record of this
    /// node is signed again after it, so peers can check them with the new key.
    pub fn publish_certificate(
        &mut self,
        der: &[u8],
        now: Instant,
        wall_ms: u64,
    ) -> Result<(), PublishError> {
        let cert = self
            .crypto
            .node_certificate(der, wall_ms)
            .map_err(|r| PublishError::Certificate(r.detail))?;
        if cert.node != self.config.name {
            return Err(PublishError::Certificate(format!(
                "it is node {:?}'s, this node is {:?}",
                cert.node, self.config.name
            )));
        }
        let value =
            encode(&NodeCertificate { der: der.to_vec() }).map_err(|e| PublishError::Invalid {
                key: CERT_KEY.into(),
                reason: e.to_string(),
            })?;
        let record = self.sign_own(CERT_KEY, value, wall_ms)?;
        let others: Vec<(String, Vec<u8>)> = self
            .records
            .get(&self.config.name)
            .filter(|o| o.generation == self.config.generation)
            .map(|o| {
                o.records()
                    .filter(|r| r.key != CERT_KEY)
                    .map(|r| (r.key.clone(), r.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.records.insert_own(record, Some(cert), now);
        self.queue_own(CERT_KEY);
        self.last_announce_ms = wall_ms;
        for (key, value) in others {
            self.publish(&key, value, now, wall_ms)?;
        }
        self.changed();
        self.push_round();
        Ok(())
    }

    /// Publishes one of this node's records (`node` or `svc:<name>`), with the
    /// next version. The certificate must have been published first.
    pub fn publish(
        &mut self,
        key: &str,
        value: Vec<u8>,
        now: Instant,
        wall_ms: u64,
    ) -> Result<(), PublishError> {
        if key == CERT_KEY {
            return Err(PublishError::Invalid {
                key: key.into(),
                reason: "use publish_certificate".into(),
            });
        }
        let held = self
            .records
            .get(&self.config.name)
            .filter(|o| o.generation == self.config.generation);
        let Some(own) = held else {
            return Err(PublishError::Invalid {
                key: key.into(),
                reason: "publish the certificate first".into(),
            });
        };
        let probe = SignedRecord {
            origin: self.config.name.clone(),
            generation: self.config.generation,
            version: 0,
            signed_at_ms: 0,
            key: key.to_string(),
            value: value.clone(),
            signature: vec![0],
        };
        super::records::check_own_value(&probe, own, &self.config.cluster).map_err(|reason| {
            PublishError::Invalid {
                key: key.into(),
                reason,
            }
        })?;
        let record = self.sign_own(key, value, wall_ms)?;
        self.records.insert_own(record, None, now);
        self.queue_own(key);
        self.changed();
        self.push_round();
        Ok(())
    }

    /// Queues this node's own record under `key`, as the store holds it.
    fn queue_own(&mut self, key: &str) {
        let own = self.records.get(&self.config.name);
        if let Some(record) = own.and_then(|o| o.shared_record(key)) {
            self.queue.record(record.clone(), RELAY_FLOODS, None);
        }
    }

    fn sign_own(
        &mut self,
        key: &str,
        value: Vec<u8>,
        wall_ms: u64,
    ) -> Result<SignedRecord, PublishError> {
        self.own_version = self.own_version.saturating_add(1);
        self.last_signed_ms = self.last_signed_ms.max(wall_ms);
        let mut record = SignedRecord {
            origin: self.config.name.clone(),
            generation: self.config.generation,
            version: self.own_version,
            signed_at_ms: self.last_signed_ms,
            key: key.to_string(),
            value,
            signature: Vec::new(),
        };
        let payload = record_payload(&self.config.cluster, &record);
        match self.crypto.sign(&payload) {
            Some(sig) => {
                record.signature = sig;
                Ok(record)
            }
            None => {
                self.events
                    .push_back(Event::SigningFailed { key: key.into() });
                Err(PublishError::Signing { key: key.into() })
            }
        }
    }

    /// A peer's digest covers this node's name but lacks its generation: the
    /// peer never heard of it, or forgot it (a partition longer than
    /// `dead_grace`) and now refuses its old records. Signing every record again
    /// (at most once per `dead_grace`) lets it back in.
    fn reannounce_if_unknown(&mut self, digest: &super::wire::Digest, now: Instant, wall_ms: u64) {
        let me = &self.config.name;
        let known = digest
            .origins
            .iter()
            .any(|o| o.name == *me && o.generation == self.config.generation);
        let grace = millis(self.config.timing.dead_grace);
        if known
            || !digest.range.contains(me)
            || wall_ms < self.last_announce_ms.saturating_add(grace)
        {
            return;
        }
        let der = self
            .records
            .get(me)
            .and_then(|o| o.record(CERT_KEY))
            .and_then(|r| crate::codec::decode_exact::<NodeCertificate>(&r.value).ok())
            .map(|c| c.der);
        if let Some(der) = der
            && self.publish_certificate(&der, now, wall_ms).is_ok()
        {
            self.events.push_back(Event::Reannounced);
        }
    }

    /// Refutes accusations against this node: signs its node record again with a
    /// new version.
    fn refute(&mut self, now: Instant, wall_ms: u64) {
        let value = self
            .records
            .get(&self.config.name)
            .and_then(|o| o.record(NODE_KEY))
            .map(|r| r.value.clone());
        if let Some(value) = value {
            let _ = self.publish(NODE_KEY, value, now, wall_ms);
        }
    }

    /// Puts a route document in force locally (from the admin API or this node's
    /// disk), under the same rules as one from a peer.
    pub fn publish_document(
        &mut self,
        document: RouteDocument,
        wall_ms: u64,
    ) -> Result<DocumentApplied, DocumentRefusal> {
        let applied = self.documents.apply(
            document.clone(),
            &self.crypto,
            wall_ms,
            millis(self.config.timing.max_clock_skew),
            self.config.limits.max_documents,
        )?;
        if applied == DocumentApplied::InForce {
            self.events.push_back(Event::DocumentInForce {
                name: document.name.clone(),
            });
            self.queue.document(document, RELAY_FLOODS);
            self.changed();
        }
        Ok(applied)
    }

    /// After the mesh CA changed: drops members and documents whose certificates
    /// no longer check out.
    pub fn recheck_trust(&mut self, now: Instant, wall_ms: u64) {
        let gone = self
            .records
            .recheck_certificates(&self.crypto, wall_ms, &self.config.name);
        for name in gone {
            // Not buried: once the trust allows it again, it is welcome back.
            self.records.remove_unburied(&name);
            self.forget(&name, now, wall_ms);
        }
        if !self.documents.recheck(&self.crypto).is_empty() {
            self.changed();
        }
    }

    fn forget(&mut self, name: &str, now: Instant, wall_ms: u64) {
        self.topology_changed();
        self.records.remove(name, now, wall_ms);
        self.liveness.forget(name);
        self.relays.forget(name);
        self.queue.forget_origin(name);
        self.unreachable.remove(name);
        self.events.push_back(Event::Forgotten {
            name: name.to_string(),
        });
        self.changed();
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Whether messages from `peer` are being ignored.
    pub fn is_quarantined(&self, peer: &str, now: Instant) -> bool {
        self.quarantine.get(peer).is_some_and(|until| now < *until)
    }

    /// Reports a message that did not decode (the driver's refusal).
    pub fn refuse_malformed(&mut self, peer: &str) {
        self.refused(Refusal::Malformed, peer, None);
    }

    fn refused(&mut self, reason: Refusal, sender: &str, origin: Option<String>) {
        self.events.push_back(Event::Refused {
            reason,
            sender: sender.to_string(),
            origin,
        });
    }

    /// Handles one message from `from`.
    pub fn handle_message(&mut self, from: Peer, msg: GossipMessage, now: Instant, wall_ms: u64) {
        if msg.cluster != self.config.cluster {
            self.refused(Refusal::WrongCluster, &from.name, None);
            self.events.push_back(Event::OtherCluster {
                sender: from.name.clone(),
                cluster: msg.cluster,
            });
            return;
        }
        if self.is_quarantined(&from.name, now) {
            self.refused(Refusal::Quarantined, &from.name, None);
            return;
        }
        match msg.body {
            // Told to anyone of the cluster (`shoal check --pre` measures clock
            // skew), with no other effect: neither counts as a sign of life.
            Body::Time(nonce) => {
                let answer = TimeIs { nonce, wall_ms };
                return self.send(Destination::Member(from), Body::TimeIs(answer));
            }
            Body::TimeIs(_) => return,
            _ => {}
        }
        self.records.heard_from(&from.name, now);
        if self.unreachable.remove(&from.name).is_some() {
            self.topology_changed();
        }
        match msg.body {
            Body::Ping(nonce) => self.send(Destination::Member(from), Body::Ack(nonce)),
            Body::Ack(nonce) => {
                if let Some(i) = self
                    .probes
                    .iter()
                    .position(|p| p.target == from.name && p.nonce == nonce)
                {
                    self.probes.swap_remove(i);
                    self.local_health = self.local_health.saturating_sub(1);
                } else if let Some(i) = self
                    .timed_out
                    .iter()
                    .position(|(t, n)| *t == from.name && *n == nonce)
                {
                    // An answer after the probe gave up: the peer was alive and
                    // this node's wait too short (it, or the path, is slow).
                    self.timed_out.remove(i);
                    self.worse_local_health();
                }
            }
            Body::SyncHash(theirs) => self.handle_sync_hash(from, theirs, now),
            Body::Sync(digest) => self.handle_sync(from, digest, now, wall_ms),
            Body::Items(items) => {
                self.handle_items(&from, items, now, wall_ms);
                // News goes on at once: a flood waits for no round.
                self.push_round();
            }
            Body::PingReq(req) => self.handle_ping_req(from, req, now),
            Body::IndirectPing(ping) => self.handle_indirect_ping(from, ping),
            Body::IndirectAck(ack) => self.handle_indirect_ack(from, ack, now),
            Body::IHave(list) => self.handle_ihave(&from, list, now),
            Body::Prune => {
                self.tree.prune(&from.name);
            }
            Body::Graft(list) => self.handle_graft(from, list, now),
            Body::Time(_) | Body::TimeIs(_) => {}
        }
    }

    /// A neighbour asks this node to ping `req.target` for it: pinged by name,
    /// at the address this node holds, within the relay caps.
    fn handle_ping_req(&mut self, from: Peer, req: PingReq, now: Instant) {
        let addr = (req.target != self.config.name && req.target != from.name)
            .then(|| self.node_addr(&req.target))
            .flatten();
        let until = now + self.config.timing.probe_timeout;
        let Some(addr) =
            addr.filter(|_| self.relays.admit(&from, req.nonce, &req.target, now, until))
        else {
            self.refused(Refusal::IndirectProbeRefused, &from.name, Some(req.target));
            return;
        };
        let to = Peer {
            name: req.target,
            addr,
        };
        let ping = IndirectPing {
            nonce: req.nonce,
            requester: from.name,
        };
        self.send(Destination::Member(to), Body::IndirectPing(ping));
    }

    /// Signs `payload` with this node's key; if the key cannot sign, reports
    /// [`Event::SigningFailed`] for `what` and returns `None`.
    fn sign_or_report(&mut self, payload: &[u8], what: impl FnOnce() -> String) -> Option<Vec<u8>> {
        let signature = self.crypto.sign(payload);
        if signature.is_none() {
            self.events.push_back(Event::SigningFailed { key: what() });
        }
        signature
    }

    /// Pinged on behalf of another member: answered with a signed ack, within
    /// this round's budget (each answer costs a signature).
    fn handle_indirect_ping(&mut self, from: Peer, ping: IndirectPing) {
        if !self.ack_budget.take(self.round) {
            self.refused(Refusal::IndirectProbeRefused, &from.name, None);
            return;
        }
        let mut ack = IndirectAck {
            nonce: ping.nonce,
            requester: ping.requester,
            target: self.config.name.clone(),
            signature: Vec::new(),
        };
        let payload = indirect_ack_payload(&self.config.cluster, &ack);
        let Some(signature) = self.sign_or_report(&payload, || "indirect ack".to_string()) else {
            return;
        };
        ack.signature = signature;
        self.send(Destination::Member(from), Body::IndirectAck(ack));
    }

    /// A signed answer to an indirect ping: it ends this node's own probe, or
    /// is relayed to the requester this node pinged for. The target's signature
    /// is checked first (honest members relay nothing unchecked, so a bad one
    /// quarantines the sender); one for a member this node does not hold, or
    /// that answers nothing pending, is dropped.
    fn handle_indirect_ack(&mut self, from: Peer, ack: IndirectAck, now: Instant) {
        let Some(target) = self.records.get(&ack.target) else {
            return;
        };
        let payload = indirect_ack_payload(&self.config.cluster, &ack);
        if !self
            .crypto
            .verify(&target.cert.key, &payload, &ack.signature)
        {
            self.on_refusal(Refusal::BadSignature, &from, ack.target, now);
            return;
        }
        let me = self.config.name.as_str();
        if let Some(i) = self.probes.iter().position(|p| p.answered_by(&ack, me)) {
            self.probes.swap_remove(i);
        } else if let Some(requester) = self.relays.take(&ack, &from.name, now) {
            self.send(Destination::Member(requester), Body::IndirectAck(ack));
        }
    }

    /// A peer's range hash: answered with this node's digest of the range if
    /// they differ.
    fn handle_sync_hash(&mut self, from: Peer, theirs: super::wire::RangeHash, now: Instant) {
        if !self.may_answer(&from.name, now, Ask::RangeHash) {
            return;
        }
        let (records, liveness, documents) = (&self.records, &self.liveness, &self.documents);
        let mine = sync::range_hash(theirs.range.clone(), records, liveness, documents);
        if mine != theirs {
            let digest = sync::digest_of_range(theirs.range, records, liveness, documents, true);
            self.send(Destination::Member(from), Body::Sync(digest));
        }
    }

    /// A peer's digest: answered with what it lacks, and with this node's own
    /// digest of the range if it asked for one.
    fn handle_sync(&mut self, from: Peer, digest: super::wire::Digest, now: Instant, wall_ms: u64) {
        // Each digest costs an answer (and may cost re-accusations): those
        // that answer this node's own are limited too, since a peer can send
        // them unasked.
        let ask = if digest.reply {
            Ask::Digest
        } else {
            Ask::DigestAnswer
        };
        if !self.may_answer(&from.name, now, ask) {
            return;
        }
        self.catching_up = true;
        if digest.reply {
            self.sync_again(&digest.range);
        }
        self.reannounce_if_unknown(&digest, now, wall_ms);
        let held = (&self.records, &self.liveness, &self.documents);
        let mut answer = sync::answer(&digest, &from.name, held, &self.config.timing, wall_ms);
        let (records, liveness, documents) = held;
        let mine = digest.reply.then(|| {
            sync::digest_of_range(digest.range.clone(), records, liveness, documents, false)
        });
        // Only for a peer on this node's side: one held dead (across a
        // partition) holds members alive that this node cannot reach, and
        // learns of its own accusations and refutes instead.
        let peer_up = || self.health(&from.name).is_some_and(Health::is_up);
        let fresh = if !answer.reaccuse.is_empty() && peer_up() {
            self.reaccuse(&answer.reaccuse, now, wall_ms)
        } else {
            Vec::new()
        };
        if !fresh.is_empty() {
            answer.items.push(Items {
                suspicions: fresh,
                ..Items::default()
            });
        }
        for items in answer.items {
            self.send(Destination::Member(from.clone()), Body::Items(items));
        }
        if let Some(mine) = mine {
            self.send(Destination::Member(from), Body::Sync(mine));
        }
    }

    /// A peer's digest answers this node's hash of `range`: they differ, so the
    /// next anti-entropy round hashes the range again from the same start
    /// (split by what this node then holds), up to [`MAX_SYNC_REPEATS`] rounds
    /// in a row. A node catching up thus keeps pulling where the difference is:
    /// walking on, it would hash ranges it already holds in between, and a
    /// joiner of a 10,000-node mesh, whose ranges multiply as it learns, took
    /// 30 s instead of a few.
    fn sync_again(&mut self, range: &NameRange) {
        if self.last_sync_range.as_ref() != Some(range) || self.sync_repeats >= MAX_SYNC_REPEATS {
            return;
        }
        self.last_sync_range = None;
        self.sync_cursor = range.from.clone();
        self.sync_repeats += 1;
    }

    /// Whether `peer`'s request (a range hash, a digest asking for one back,
    /// or a graft) is answered: at most [`SYNCS_PER_HALF_ROUND`] of each kind
    /// per peer per half round, since each costs this node a digest or a
    /// message of records.
    fn may_answer(&mut self, peer: &str, now: Instant, ask: Ask) -> bool {
        let key = (peer.to_string(), ask);
        let spacing = self.config.timing.interval / 2;
        let (since, count) = match self.sync_answered.get(&key) {
            Some(&(at, n)) if now.saturating_duration_since(at) < spacing => (at, n),
            _ => (now, 0),
        };
        if count >= ask.limit() {
            let reason = match ask {
                Ask::Graft => Refusal::GraftRateLimited,
                Ask::RangeHash | Ask::Digest | Ask::DigestAnswer => Refusal::SyncRateLimited,
            };
            self.refused(reason, peer, None);
            return false;
        }
        if self.sync_answered.len() >= MAX_SYNC_PEERS {
            self.sync_answered
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < spacing);
        }
        self.sync_answered.insert(key, (since, count + 1));
        true
    }

    fn handle_items(&mut self, from: &Peer, items: Items, now: Instant, wall_ms: u64) {
        let pushed = items.records.len();
        let mut changed = 0;
        for record in items.records {
            match self.handle_record(from, record, now, wall_ms) {
                Some(true) => changed += 1,
                Some(false) => {}
                None => return,
            }
        }
        if pushed > 0 && changed * 2 <= pushed {
            self.pushed_nothing_new(from);
        }
        for s in items.suspicions {
            if !self.handle_suspicion(from, s, now, wall_ms) {
                return;
            }
        }
        for d in items.documents {
            let copy = d.clone();
            if let Err(r) = self.publish_document(d, wall_ms) {
                self.refused(r.refusal, &from.name, Some(copy.name.clone()));
                self.events.push_back(Event::DocumentRefused {
                    document: Box::new(copy),
                    label: r.label,
                    sender: from.name.clone(),
                });
            }
        }
    }

    /// The QUIC address `origin`'s node record gives, if one is held.
    fn node_addr(&self, origin: &str) -> Option<SocketAddr> {
        let o = self.records.get(origin)?;
        o.node().map(|n| n.quic_addr)
    }

    /// Applies one record: whether it changed the state, `None` if the sender
    /// is now quarantined.
    fn handle_record(
        &mut self,
        from: &Peer,
        record: SignedRecord,
        now: Instant,
        wall_ms: u64,
    ) -> Option<bool> {
        let (origin, key) = (record.origin.clone(), record.key.clone());
        let node_record = key == NODE_KEY;
        let addr_before = node_record.then(|| self.node_addr(&origin)).flatten();
        let judge = Judge {
            cluster: &self.config.cluster,
            self_name: &self.config.name,
            now,
            wall_ms,
            max_skew_ms: millis(self.config.timing.max_clock_skew),
            crypto: &self.crypto,
            limits: &self.config.limits,
        };
        match self.records.apply(record, &judge) {
            Ok(Applied::Stale) => Some(false),
            Ok(Applied::Changed { new_generation }) => {
                // The overlay depends on who is up and where: a re-signed node
                // record at the same address leaves it as it is.
                if new_generation || (node_record && self.node_addr(&origin) != addr_before) {
                    self.topology_changed();
                }
                if new_generation {
                    self.learned_round = self.round;
                }
                self.learned_records = self.learned_records.saturating_add(1);
                let stored = self
                    .records
                    .get(&origin)
                    .and_then(|o| o.shared_record(&key));
                if let Some(record) = stored.cloned() {
                    self.on_new_record(record, &from.name, new_generation, wall_ms);
                }
                Some(true)
            }
            Err(reason) => self.on_refusal(reason, from, origin, now).then_some(false),
        }
    }

    fn on_new_record(
        &mut self,
        record: Arc<SignedRecord>,
        from: &str,
        new_generation: bool,
        wall_ms: u64,
    ) {
        let origin = record.origin.clone();
        if new_generation {
            self.liveness.forget(&origin);
            self.events.push_back(Event::Joined {
                name: origin.clone(),
                generation: record.generation,
            });
        }
        if let Some(o) = self.records.get(&origin) {
            let (generation, v, at) = (o.generation, o.max_version, o.max_signed_at_ms);
            if let Some(Transition::Revived { name }) =
                self.liveness
                    .on_record(&origin, generation, v, at, &self.config.timing)
            {
                self.topology_changed();
                self.events.push_back(Event::Revived { name });
            }
        }
        if is_fresh(record.signed_at_ms, wall_ms) {
            self.queue.record(record, RELAY_FLOODS, Some(from));
        }
        self.changed();
    }

    /// Reports a refusal; quarantines the sender if it proves it faulty. Returns
    /// whether to go on with the sender's message.
    fn on_refusal(&mut self, reason: Refusal, from: &Peer, origin: String, now: Instant) -> bool {
        self.refused(reason, &from.name, Some(origin));
        if reason.proves_sender_faulty() {
            self.quarantine.insert(from.name.clone(), now + QUARANTINE);
            self.events.push_back(Event::Quarantined {
                peer: from.name.clone(),
            });
            return false;
        }
        true
    }

    fn handle_suspicion(&mut self, from: &Peer, s: Suspicion, now: Instant, wall_ms: u64) -> bool {
        let target = s.target.clone();
        if s.target == self.config.name {
            return match self.judge_self_suspicion(&s, now, wall_ms) {
                Ok(()) => true,
                Err(reason) => self.on_refusal(reason, from, target, now),
            };
        }
        let copy = s.clone();
        let result = self.accept_suspicion(s, now, wall_ms, false);
        match result {
            Ok(Accepted::Stale | Accepted::Refreshed) => true,
            Ok(Accepted::New) => {
                self.events.push_back(Event::Accused {
                    target: copy.target.clone(),
                    accuser: copy.accuser.clone(),
                });
                if is_fresh(copy.issued_at_ms, wall_ms) {
                    self.queue.suspicion(copy, RELAY_FLOODS);
                }
                self.changed();
                true
            }
            Err(reason) => self.on_refusal(reason, from, target, now),
        }
    }

    /// Hands a suspicion to the liveness rules (`own`: this node's, not checked).
    fn accept_suspicion(
        &mut self,
        s: Suspicion,
        now: Instant,
        wall_ms: u64,
        own: bool,
    ) -> Result<Accepted, Refusal> {
        self.liveness.accept(
            s,
            &self.records,
            &self.crypto,
            &self.config.cluster,
            &self.config.timing,
            &self.config.limits,
            now,
            wall_ms,
            own,
        )
    }

    /// An accusation of this node: checked like any other, then refuted.
    fn judge_self_suspicion(
        &mut self,
        s: &Suspicion,
        now: Instant,
        wall_ms: u64,
    ) -> Result<(), Refusal> {
        let timing = &self.config.timing;
        let skew = millis(timing.max_clock_skew);
        if s.issued_at_ms > wall_ms.saturating_add(skew) {
            return Err(Refusal::FromTheFuture);
        }
        let own = self
            .records
            .get(&self.config.name)
            .ok_or(Refusal::UnknownTarget)?;
        if s.target_generation != own.generation {
            return Ok(());
        }
        if s.target_version > own.max_version {
            return Err(Refusal::UnknownVersion);
        }
        if own.max_version > s.target_version
            && own.max_signed_at_ms.saturating_add(skew) >= s.issued_at_ms
        {
            return Ok(()); // already refuted
        }
        let accuser = self
            .records
            .get(&s.accuser)
            .filter(|o| o.generation == s.accuser_generation)
            .ok_or(Refusal::UnknownAccuser)?;
        let payload = suspicion_payload(&self.config.cluster, s);
        if !self
            .crypto
            .verify(&accuser.cert.key, &payload, &s.signature)
        {
            return Err(Refusal::BadSignature);
        }
        if !self
            .liveness
            .may_accuse(&s.accuser, timing, &self.config.limits, now)
        {
            return Err(Refusal::AccuserRateLimited);
        }
        self.events.push_back(Event::Refuted {
            accuser: s.accuser.clone(),
        });
        self.worse_local_health();
        self.refute(now, wall_ms);
        Ok(())
    }

    /// Lifeguard's local health multiplier: 0 when this node is healthy, up to
    /// [`MAX_LOCAL_HEALTH`] when it wakes late (starved of CPU), gets answers to
    /// probes it had given up on (it waits too little for how slow it or its
    /// paths are), or is accused (others could not reach it). Each answered
    /// probe lowers it by one. Its
    /// probes wait `probe_timeout × (1 + local_health)`, so an overloaded node
    /// stops accusing healthy peers of its own slowness. (An unanswered probe
    /// alone says nothing about this node: the peer may well be dead.)
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    fn worse_local_health(&mut self) {
        self.local_health = (self.local_health + 1).min(MAX_LOCAL_HEALTH);
    }

    /// Tells the state machine that `peer` could not be reached (a dial or a
    /// write failed): a pending probe of it fails at once.
    pub fn peer_unreachable(&mut self, peer: &str, now: Instant, wall_ms: u64) {
        let wait = self.stage_wait();
        let Some(p) = self.probes.iter_mut().find(|p| p.target == peer) else {
            return;
        };
        if p.stage == super::probe::Stage::Indirect {
            return;
        }
        p.skip_to_indirect(now, wait);
        let (target, nonce) = (p.target.clone(), p.nonce);
        self.ask_intermediaries(&target, nonce, now, wall_ms);
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

    /// When [`Membership::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_round,
            self.probes.iter().map(|p| p.deadline).min(),
            self.liveness.next_deadline(&self.config.timing),
            self.tree.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs whatever is due at `now`: probe timeouts, suspicion timers, rounds.
    pub fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        if let Some(t) = self.next_round
            && now > t + self.config.timing.interval
        {
            // Woken more than a round late: this node is starved (CPU, GC,
            // a paused VM), and its probes' silence says more about it than
            // about its peers.
            self.worse_local_health();
        }
        self.advance_probes(now, wall_ms);
        self.graft_due(now);
        for t in self.liveness.tick(now, &self.config.timing) {
            if let Transition::Died { name, accusers, .. } = t {
                self.topology_changed();
                self.events.push_back(Event::Died { name, accusers });
                self.changed();
            }
        }
        let due = self.next_round.is_none_or(|t| now >= t);
        if due {
            self.next_round = Some(now + self.config.timing.interval);
            self.round(now, wall_ms);
        }
    }

    /// How long each stage of a probe after the first waits: half a probe
    /// timeout, stretched by the local health.
    fn stage_wait(&self) -> Duration {
        self.config.timing.probe_timeout / 2 * (1 + self.local_health)
    }

    /// Moves this node's probes on whose stage timed out: a retry, then
    /// indirect probes, then an accusation.
    fn advance_probes(&mut self, now: Instant, wall_ms: u64) {
        let wait = self.stage_wait();
        let mut i = 0;
        while i < self.probes.len() {
            let p = &mut self.probes[i];
            if now < p.deadline {
                i += 1;
                continue;
            }
            let (target, nonce) = (p.target.clone(), p.nonce);
            match p.advance(now, wait) {
                Next::Retry => {
                    let to = p.peer();
                    for _ in 0..RETRY_PINGS {
                        self.send(Destination::Member(to.clone()), Body::Ping(nonce));
                    }
                }
                Next::Indirect => self.ask_intermediaries(&target, nonce, now, wall_ms),
                Next::Accuse => {
                    self.probes.swap_remove(i);
                    self.probe_timed_out(&target, nonce, now, wall_ms);
                    continue;
                }
            }
            i += 1;
        }
    }

    /// A probe of `target` went unanswered through every stage: remembered
    /// (a late answer says this node waited too little), and the target accused.
    fn probe_timed_out(&mut self, target: &str, nonce: u64, now: Instant, wall_ms: u64) {
        if self.timed_out.len() >= TIMED_OUT_REMEMBERED {
            self.timed_out.pop_front();
        }
        self.timed_out.push_back((target.to_string(), nonce));
        // The target leaves this node's neighbours (the next member on its
        // rings takes its place) until it is heard from or the wait is over: a
        // node cut off from most of the mesh walks its rings at probing speed
        // and finds the members on its side of the cut, rather than wait out
        // every suspicion (and its accusation budget) with nobody to flood to.
        let until = now + self.config.timing.suspicion_ttl();
        self.unreachable.insert(target.to_string(), until);
        self.topology_changed();
        if !self.accuse(target, now, wall_ms) && self.deferred.len() < MAX_DEFERRED_ACCUSATIONS {
            // Out of budget: accused when the budget allows, since it is no
            // longer probed from here.
            self.deferred.push_back(target.to_string());
        }
    }

    /// Asks up to [`INDIRECT_PROBES`] other neighbours to ping `target` for the
    /// probe `nonce`; with none to ask, ends the probe and accuses at once.
    fn ask_intermediaries(&mut self, target: &str, nonce: u64, now: Instant, wall_ms: u64) {
        let mut others: Vec<Peer> = self
            .neighbours()
            .into_iter()
            .filter(|n| n.name != target)
            .collect();
        if others.is_empty() {
            self.probes.retain(|p| p.nonce != nonce);
            self.probe_timed_out(target, nonce, now, wall_ms);
            return;
        }
        for _ in 0..INDIRECT_PROBES.min(others.len()) {
            let i = (self.random() % others.len() as u64) as usize;
            let via = others.swap_remove(i);
            let req = PingReq {
                nonce,
                target: target.to_string(),
            };
            self.send(Destination::Member(via), Body::PingReq(req));
        }
    }

    fn round(&mut self, now: Instant, wall_ms: u64) {
        self.round = self.round.wrapping_add(1);
        // A pull goes on while the walk over the ranges finds differences,
        // even through a round whose range matched.
        let learned = std::mem::take(&mut self.learned_records);
        self.bulk_pull = learned >= BULK_PULL_RECORDS || (self.bulk_pull && self.catching_up);
        if self.probes.len() < MAX_PROBES {
            self.start_probe(now);
        }
        self.push_round();
        let sync_every = u64::from(self.config.timing.sync_every.max(1));
        // Once an exchange found differences (a node catching up, a partition
        // healing), exchange every round until the walk over the ranges ends;
        // else every `sync_every`.
        let periodic = self.round % sync_every == 1 || sync_every == 1;
        if self.catching_up || periodic {
            self.sync_round(periodic);
        }
        for name in self
            .liveness
            .dead_longer_than(self.config.timing.dead_grace, now)
        {
            self.forget(&name, now, wall_ms);
        }
        let timing = &self.config.timing;
        self.records.expire_tombstones(
            now,
            timing.tombstone_ttl,
            self.config.limits.max_tombstones,
        );
        self.quarantine.retain(|_, until| now < *until);
        self.accuse_deferred(now, wall_ms);
        let before = self.unreachable.len();
        self.unreachable.retain(|_, until| now < *until);
        if self.unreachable.len() != before {
            self.topology_changed();
        }
        let spacing = self.config.timing.interval;
        self.sync_answered
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < spacing);
    }

    /// Accuses the unreachable members the budget refused earlier, while it
    /// allows; those heard from since, or already dead, are dropped.
    fn accuse_deferred(&mut self, now: Instant, wall_ms: u64) {
        while let Some(target) = self.deferred.front().cloned() {
            let still = self.unreachable.contains_key(&target)
                && self.records.get(&target).is_some_and(|o| {
                    let timing = &self.config.timing;
                    self.liveness.health(&o.name, o.generation, timing).is_up()
                });
            if still && !self.accuse(&target, now, wall_ms) {
                return;
            }
            self.deferred.pop_front();
        }
    }

    /// Members other than this node believed dead, not yet forgotten.
    fn dead_peers(&self) -> Vec<Peer> {
        self.liveness
            .dead()
            .filter(|(name, _)| *name != self.config.name)
            .filter_map(|(name, generation)| {
                let o = self
                    .records
                    .get(name)
                    .filter(|o| o.generation == generation)?;
                o.node().map(|n| Peer {
                    name: o.name.to_string(),
                    addr: n.quic_addr,
                })
            })
            .collect()
    }

    /// This node's overlay neighbours as last chosen (none before the first
    /// choice): the peers whose connections it keeps whatever else it sheds.
    pub fn current_neighbours(&self) -> &[Peer] {
        &self.neighbours
    }

    /// The set of members up, or their addresses, may have changed: the
    /// neighbours are computed again when next needed.
    fn topology_changed(&mut self) {
        self.topology = self.topology.wrapping_add(1);
    }

    /// This node's neighbours on the overlay ([`super::overlay`]), among the
    /// members it believes up.
    ///
    /// Computed again at most once a round (a partition changes the membership
    /// many times a round), and every [`NEIGHBOURS_REFRESH_ROUNDS`] anyway; a
    /// node in its first [`NEIGHBOURS_REFRESH_ROUNDS`] keeps its first ones.
    fn neighbours(&mut self) -> Vec<Peer> {
        let epoch = self.round / NEIGHBOURS_REFRESH_ROUNDS;
        // A node that just started sees a partial membership that grows with
        // every answer: it keeps its first neighbours until the next refresh
        // rather than talk to a new set each round.
        // (Unless one of them could not be probed: it is replaced at once.)
        let young = epoch == 0
            && !self.neighbours.is_empty()
            && !self
                .neighbours
                .iter()
                .any(|n| self.unreachable.contains_key(&n.name));
        // Nor does it choose its first ones while its view still grows (a
        // joiner pulls the whole state in a round or two; neighbours chosen
        // from its first answer would all be replaced), unless the whole mesh
        // is starting and views grow for longer.
        let growing = self.learned_round + 1 >= self.round;
        let wait = if self.bulk_pull {
            self.round <= BULK_PULL_CHOICE_ROUNDS
        } else {
            growing && self.round <= FIRST_CHOICE_ROUNDS
        };
        if self.neighbours.is_empty() && wait {
            return Vec::new();
        }
        // What the neighbours follow from (the members up, their addresses,
        // the unreachable) changes only with `topology`: unchanged, the same
        // neighbours would be chosen again.
        let stale = match self.neighbours_of {
            None => true,
            Some((round, topology, at_epoch)) => {
                topology != self.topology && (at_epoch != epoch || (round != self.round && !young))
            }
        };
        if stale {
            let (me, timing) = (&self.config.name, &self.config.timing);
            let up: Vec<(&str, SocketAddr)> = self
                .records
                .origins()
                // (This node among them is skipped by the overlay.)
                .filter(|o| self.liveness.health(&o.name, o.generation, timing).is_up())
                .filter(|o| !self.unreachable.contains_key(&*o.name))
                .filter_map(|o| o.node().map(|n| (&*o.name, n.quic_addr)))
                .collect();
            let names: Vec<&str> = up.iter().map(|(n, _)| *n).collect();
            let chosen: Vec<Peer> = super::overlay::neighbours(me, &names, timing.rings)
                .into_iter()
                .filter_map(|i| up.get(i))
                .map(|(name, addr)| Peer {
                    name: name.to_string(),
                    addr: *addr,
                })
                .collect();
            // A new neighbour is probed next: it may replace one that died in
            // a partition, and a cut is seen as fast as its far side is probed.
            if !self.neighbours.is_empty() {
                for n in chosen.iter().rev() {
                    if !self.neighbours.iter().any(|o| o.name == n.name) {
                        self.probe_order.push(n.name.clone());
                    }
                }
            }
            self.neighbours = chosen;
            self.tree
                .keep_links(self.neighbours.iter().map(|p| p.name.as_str()));
            self.neighbours_of = Some((self.round, self.topology, epoch));
        }
        self.neighbours.clone()
    }

    /// The peers this node talks to in rounds (its neighbours), by name.
    pub fn neighbour_names(&mut self) -> Vec<String> {
        self.neighbours().into_iter().map(|p| p.name).collect()
    }

    /// Starts a probe of the next neighbour in a shuffled round-robin order,
    /// skipping those already probed and those this node already accuses (their
    /// fate is with the suspicion now).
    fn start_probe(&mut self, now: Instant) {
        let me = self.config.name.clone();
        let candidates: Vec<Peer> = self
            .neighbours()
            .into_iter()
            .filter(|n| !self.probes.iter().any(|p| p.target == n.name))
            .filter(|n| !self.liveness.is_accused_by(&n.name, &me))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let target = loop {
            let Some(name) = self.probe_order.pop() else {
                let mut names: Vec<String> = candidates.iter().map(|p| p.name.clone()).collect();
                for i in (1..names.len()).rev() {
                    let j = (self.random() % (i as u64 + 1)) as usize;
                    names.swap(i, j);
                }
                self.probe_order = names;
                continue;
            };
            if let Some(peer) = candidates.iter().find(|p| p.name == name) {
                break peer.clone();
            }
        };
        let nonce = self.random();
        let wait = self.config.timing.probe_timeout * (1 + self.local_health);
        self.probes.push(Probe::new(&target, nonce, now, wait));
        self.send(Destination::Member(target), Body::Ping(nonce));
    }

    /// Accuses `target`: a signed suspicion, held here, pushed to everyone and
    /// sent to the target so it can refute at once.
    /// `false` only when this node's accusation budget is spent (the caller
    /// may try again later).
    fn accuse(&mut self, target: &str, now: Instant, wall_ms: u64) -> bool {
        let Some(t) = self.records.get(target) else {
            return true;
        };
        let addr = t.node().map(|n| n.quic_addr);
        let me = self.config.name.clone();
        // Enough others accuse it already for the shortest timeout: one more
        // accusation would change no timer, and would spend this node's budget
        // (which a node cut off from most of the mesh needs for the many
        // members only it can accuse).
        let others = self.liveness.accusation_count(target);
        if others > self.config.timing.confirmations_for_min as usize {
            return true;
        }
        if !self
            .liveness
            .may_accuse(&me, &self.config.timing, &self.config.limits, now)
        {
            return false;
        }
        let Some(s) = self.sign_suspicion(target, wall_ms) else {
            return true;
        };
        let accepted = self.accept_suspicion(s.clone(), now, wall_ms, true);
        if accepted != Ok(Accepted::New) {
            return true;
        }
        self.events.push_back(Event::Accused {
            target: target.to_string(),
            accuser: s.accuser.clone(),
        });
        if let Some(addr) = addr {
            let items = Items {
                suspicions: vec![s.clone()],
                ..Items::default()
            };
            let to = Destination::Member(Peer {
                name: target.to_string(),
                addr,
            });
            self.send(to, Body::Items(items));
        }
        self.queue.suspicion(s, OWN_FLOODS);
        self.changed();
        self.push_round();
        true
    }

    /// Accuses `targets` again (each held dead here, and every accusation held
    /// too old to hand on) for a peer held alive that holds them alive, as far as this
    /// node's budget allows; returns the accusations, held here too, so the
    /// next peer that needs one is handed it without a signature. Not flooded:
    /// the peer floods what is new to it.
    fn reaccuse(&mut self, targets: &[String], now: Instant, wall_ms: u64) -> Vec<Suspicion> {
        let me = self.config.name.clone();
        let mut out = Vec::new();
        for target in targets {
            let (timing, limits) = (&self.config.timing, &self.config.limits);
            if !self.liveness.may_reaccuse(&me, timing, limits, now) {
                break;
            }
            let Some(s) = self.sign_suspicion(target, wall_ms) else {
                continue;
            };
            match self.accept_suspicion(s.clone(), now, wall_ms, true) {
                Ok(Accepted::New | Accepted::Refreshed) => {
                    self.events.push_back(Event::Reaccused {
                        target: target.clone(),
                    });
                    out.push(s);
                }
                // Signed but not held (no room for another accusation, or one
                // as new held already): the signature still costs a token, so
                // no run of digests can make this node sign without limit.
                Ok(Accepted::Stale) | Err(_) => {
                    let (timing, limits) = (&self.config.timing, &self.config.limits);
                    self.liveness.charge(&me, timing, limits, now);
                }
            }
        }
        out
    }

    /// This node's signed accusation of `target` as held here (its generation
    /// and highest version); `None` if unknown or signing failed (reported).
    fn sign_suspicion(&mut self, target: &str, wall_ms: u64) -> Option<Suspicion> {
        let t = self.records.get(target)?;
        let mut s = Suspicion {
            accuser: self.config.name.clone(),
            accuser_generation: self.config.generation,
            target: target.to_string(),
            target_generation: t.generation,
            target_version: t.max_version,
            issued_at_ms: wall_ms,
            signature: Vec::new(),
        };
        let payload = suspicion_payload(&self.config.cluster, &s);
        s.signature = self.sign_or_report(&payload, || format!("suspicion of {target}"))?;
        Some(s)
    }

    /// One anti-entropy exchange: with a neighbour, and in every
    /// [`SYNC_WIDER_EVERY`]th periodic one (not those of a node catching up,
    /// which would widen its connections) with a member believed dead too.
    fn sync_round(&mut self, periodic: bool) {
        if periodic {
            self.syncs = self.syncs.wrapping_add(1);
        }
        let up = self.neighbours();
        let wider = periodic && self.syncs.is_multiple_of(SYNC_WIDER_EVERY);
        let mut targets: Vec<Destination> = Vec::new();
        if let Some(p) = self.pick(&up) {
            targets.push(Destination::Member(p));
        }
        if wider || up.is_empty() {
            let dead = self.dead_peers();
            if let Some(p) = self.pick(&dead) {
                targets.push(Destination::Member(p));
            }
        }
        let members = self.records.len().max(1) as u64;
        if up.is_empty() || (wider && self.random().is_multiple_of(members * SEED_SYNC_RARITY)) {
            // A seed while this node knows no live member; else rarely (one
            // exchange with a seed in the whole mesh every SEED_SYNC_RARITY
            // wider rounds), so that sides of a partition longer than
            // `dead_grace`, which forgot each other, still meet again, while
            // the seeds keep few more connections than anyone else. Not a seed
            // already picked as a member this round: a second exchange with it
            // would only be refused (`sync_rate_limited`).
            let seeds: Vec<SocketAddr> = self
                .seeds
                .iter()
                .filter(|s| {
                    !targets
                        .iter()
                        .any(|t| matches!(t, Destination::Member(p) if p.addr == **s))
                })
                .copied()
                .collect();
            if let Some(s) = self.pick(&seeds) {
                targets.push(Destination::Seed(s));
            }
        }
        if targets.is_empty() {
            return;
        }
        // A range still here was not found different: the repeats end.
        if self.last_sync_range.is_some() {
            self.sync_repeats = 0;
        }
        let range = sync::next_range(&mut self.sync_cursor, &self.records, &self.liveness);
        self.last_sync_range = Some(range.clone());
        // The walk reached its last range: catching up ends here, unless this
        // range (or a peer's) is found different again.
        if self.sync_cursor.is_empty() {
            self.catching_up = false;
        }
        let hash = sync::range_hash(range, &self.records, &self.liveness, &self.documents);
        for to in targets {
            self.send(to, Body::SyncHash(hash.clone()));
        }
    }

    fn send(&mut self, to: Destination, body: Body) {
        self.outbox.push_back(Transmit {
            to,
            message: GossipMessage {
                cluster: self.config.cluster.clone(),
                sender_generation: self.config.generation,
                body,
            },
        });
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// How many members (this node included) this node believes up: those
    /// held, less those declared dead in the generation held (walks the dead,
    /// not every member).
    pub fn up_members(&self) -> usize {
        let dead = self
            .liveness
            .dead()
            .filter(|(name, generation)| {
                self.records
                    .get(name)
                    .is_some_and(|o| o.generation == *generation)
            })
            .count();
        self.records.len() - dead
    }

    /// A summary of everything this node holds about members: how many, and a
    /// hash of their generations and records. Two nodes with equal summaries
    /// hold the same records.
    pub fn state_summary(&self) -> (u32, u64) {
        let all = super::wire::NameRange::all();
        let h = sync::range_hash(all, &self.records, &self.liveness, &self.documents);
        (h.count, h.origins)
    }

    /// The version of `origin`'s record `key` held here, if any.
    pub fn record_version(&self, origin: &str, key: &str) -> Option<u64> {
        self.records
            .get(origin)
            .and_then(|o| o.record(key))
            .map(|r| r.version)
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The liveness of `name` as this node sees it.
    pub fn health(&self, name: &str) -> Option<Health> {
        if name == self.config.name {
            return Some(Health::Alive);
        }
        let o = self.records.get(name)?;
        Some(
            self.liveness
                .health(name, o.generation, &self.config.timing),
        )
    }

    /// The signed records held of `name`, as received (certificate first).
    pub fn signed_records(&self, name: &str) -> Vec<SignedRecord> {
        self.records
            .get(name)
            .map(|o| o.records_after(0).into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes of records held.
    pub fn state_bytes(&self) -> usize {
        self.records.bytes()
    }

    /// The shared state as this node sees it now.
    pub fn view(&self, now: Instant, wall_ms: u64) -> View {
        let members = self
            .records
            .members()
            .map(|(o, heard)| {
                let is_self = *o.name == *self.config.name;
                let health = if is_self {
                    Health::Alive
                } else {
                    self.liveness
                        .health(&o.name, o.generation, &self.config.timing)
                };
                MemberView {
                    records: o.member_records(),
                    is_self,
                    health: health.as_str(),
                    accusers: self.liveness.accusers(&o.name),
                    cert_valid: o.cert.not_after_ms >= wall_ms,
                    last_heard_ms: if is_self {
                        0
                    } else {
                        millis(now.saturating_duration_since(heard))
                    },
                }
            })
            .collect();
        View {
            version: self.view_version,
            members,
            documents: self.documents.iter().cloned().collect(),
            revocations: self.documents.revocations().cloned(),
        }
    }
}

/// Whether an item signed at `signed_ms` is news at `wall_ms` (see
/// [`FLOOD_FRESHNESS`]).
fn is_fresh(signed_ms: u64, wall_ms: u64) -> bool {
    signed_ms.saturating_add(super::liveness::millis(FLOOD_FRESHNESS)) >= wall_ms
}
