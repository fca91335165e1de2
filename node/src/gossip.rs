//! Gossip membership: the membership state machine
//! ([`mesh_proto::membership::Membership`]) driven over the QUIC endpoint, this
//! node's own records published through it, and the view of the mesh it yields.
//!
//! The state machine decides everything (what to accept, who is alive, what to
//! send); this module moves bytes and time: a driver loop ([`Gossip::run`]) takes
//! received messages from a per-peer fair queue, decodes them (size-limited),
//! hands them over, wakes the machine when it asks, sends what it emits, logs and
//! counts its events, and publishes a fresh [`View`] whenever it changed. The
//! state lives outside the loop, so a supervised restart of the loop loses
//! nothing.

pub mod clock;
pub mod crypto;
pub mod fair_queue;
pub mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesh_proto::codec::{decode_exact, encode};
use mesh_proto::gossip::RouteDocument;
use mesh_proto::membership::documents::{DocumentApplied, DocumentRefusal, document_id};
use mesh_proto::membership::{
    Config as MembershipConfig, Event, GossipMessage, Membership, PublishError, Refusal, View,
};
use tokio::sync::{Notify, mpsc, watch};

pub use crypto::NodeCrypto;
pub use fair_queue::FairQueue;
pub use transport::{Outbound, Received};

use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// Messages one peer may have waiting for the state machine.
pub const PEER_INBOUND_QUEUE: usize = 32;
/// Bytes all peers together may have waiting.
pub const INBOUND_QUEUE_BYTES: usize = 32 << 20;
/// Messages handled per turn of the loop before timers and output get a turn.
const BATCH: usize = 64;
/// Shortest time between two views published by the driver loop.
pub const VIEW_COALESCE: Duration = Duration::from_millis(50);
/// Longest: however costly a view is to build and read, a change reaches the
/// routing table within this.
pub const VIEW_COALESCE_MAX: Duration = Duration::from_millis(500);
/// Publishing views (building one, and the routing table built from it) takes
/// at most about one part in this of the time, however large the mesh: in a
/// burst of changes a view of 10,000 members is published less often than one
/// of 10.
pub const VIEW_COST_RATIO: u32 = 20;

/// How long the driver waits after publishing a view before publishing the
/// next, given what the last one cost to build and to read.
pub fn view_gap(cost: Duration) -> Duration {
    cost.saturating_mul(VIEW_COST_RATIO)
        .clamp(VIEW_COALESCE, VIEW_COALESCE_MAX)
}

fn store_micros(slot: &AtomicU64, d: Duration) {
    slot.store(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn micros(slot: &AtomicU64) -> Duration {
    Duration::from_micros(slot.load(Ordering::Relaxed))
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The running gossip layer of one node.
pub struct Gossip {
    name: String,
    generation: u64,
    advertise: SocketAddr,
    state: Mutex<Membership<NodeCrypto>>,
    view: watch::Sender<Arc<View>>,
    wake: Notify,
    inbound: Arc<FairQueue<Received>>,
    outbound: Arc<Outbound>,
    unreachable: tokio::sync::Mutex<mpsc::Receiver<String>>,
    refused_documents: Mutex<RefusedDocuments>,
    view_at: Mutex<Instant>,
    /// What the last view cost to build, and to read (the routing table built
    /// from it), in microseconds: sets the gap before the next ([`view_gap`]).
    view_build_us: AtomicU64,
    view_read_us: AtomicU64,
    metrics: Arc<Metrics>,
    /// This node's cluster, for the log line naming another cluster's node.
    cluster: String,
    /// When each node of another cluster was last named in the log.
    other_clusters: Throttle,
}

/// Route documents peers sent that were refused, for `GET /routes/rejected`:
/// the most recent, each once.
#[derive(Debug, Default)]
struct RefusedDocuments {
    recent: std::collections::VecDeque<RefusedDocument>,
    seen: std::collections::HashSet<[u8; 16]>,
}

/// A route document a peer sent that was refused.
#[derive(Debug, Clone)]
pub struct RefusedDocument {
    /// The document.
    pub document: RouteDocument,
    /// Why (the label of `shoal_route_documents_rejected_total`).
    pub reason: &'static str,
    /// The peers that sent it.
    pub senders: Vec<String>,
}

/// Refused documents remembered for the admin API.
const MAX_REFUSED_DOCUMENTS: usize = 64;
/// Refused document ids remembered as counted.
const MAX_REFUSED_IDS: usize = 4096;

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("name", &self.name)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What [`Gossip::new`] needs besides the state machine.
#[derive(Debug)]
pub struct Wiring {
    /// Where received messages wait.
    pub inbound: Arc<FairQueue<Received>>,
    /// Where messages to send go.
    pub outbound: Arc<Outbound>,
    /// Names of members that could not be dialled.
    pub unreachable: mpsc::Receiver<String>,
}

impl Gossip {
    /// The gossip layer around `membership` (whose own records are published
    /// The names of this node's overlay neighbours (see
    /// [`MeshEndpoint::shed_gossip`](crate::endpoint::MeshEndpoint::shed_gossip)).
    pub fn neighbour_names(&self) -> std::collections::HashSet<String> {
        let state = self.lock();
        state
            .current_neighbours()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// already). Nothing runs until [`Gossip::run`].
    pub fn new(
        membership: Membership<NodeCrypto>,
        advertise: SocketAddr,
        wiring: Wiring,
        metrics: Arc<Metrics>,
    ) -> Arc<Gossip> {
        let config: &MembershipConfig = membership.config();
        let (name, generation) = (config.name.clone(), config.generation);
        let cluster = config.cluster.clone();
        for r in Refusal::ALL {
            let _ = metrics.gossip.rejected_for(r.as_str());
        }
        let view = membership.view(Instant::now(), wall_ms());
        Arc::new(Gossip {
            name,
            generation,
            advertise,
            state: Mutex::new(membership),
            view: watch::channel(Arc::new(view)).0,
            wake: Notify::new(),
            inbound: wiring.inbound,
            outbound: wiring.outbound,
            unreachable: tokio::sync::Mutex::new(wiring.unreachable),
            refused_documents: Mutex::new(RefusedDocuments::default()),
            view_at: Mutex::new(Instant::now()),
            view_build_us: AtomicU64::new(0),
            view_read_us: AtomicU64::new(0),
            metrics,
            cluster,
            other_clusters: Throttle::default(),
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's generation (its start time, ms).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The address this node advertises.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    fn lock(&self) -> MutexGuard<'_, Membership<NodeCrypto>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current view of the mesh.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// A view built now, with `last_heard_ms` current (the published [`View`]
    /// is rebuilt only when something changed): for the admin API.
    pub fn current_view(&self) -> View {
        self.lock().view(Instant::now(), wall_ms())
    }

    /// Tells the driver what reading the last view cost (the routing table
    /// built from it), so that it publishes views no faster than they are read
    /// cheaply ([`view_gap`]).
    pub fn note_view_read(&self, took: Duration) {
        store_micros(&self.view_read_us, took);
    }

    /// Changes whenever the view does.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    /// Publishes one of this node's records (`node` or `svc:<name>`).
    pub fn publish(&self, key: &str, value: Vec<u8>) -> Result<(), PublishError> {
        let result = self.lock().publish(key, value, Instant::now(), wall_ms());
        self.after_local_change();
        result
    }

    /// Publishes this node's (new) certificate and signs every record again.
    pub fn publish_certificate(&self, der: &[u8]) -> Result<(), PublishError> {
        let result = self
            .lock()
            .publish_certificate(der, Instant::now(), wall_ms());
        self.after_local_change();
        result
    }

    /// Puts a route document in force here and gossips it (from the admin API,
    /// or this node's disk).
    pub fn publish_document(&self, doc: RouteDocument) -> Result<DocumentApplied, DocumentRefusal> {
        let result = self.lock().publish_document(doc, wall_ms());
        self.after_local_change();
        result
    }

    /// After the mesh CA changed: drops what no longer checks out.
    pub fn recheck_trust(&self) {
        {
            let mut state = self.lock();
            state.crypto().clear_cache();
            state.recheck_trust(Instant::now(), wall_ms());
        }
        self.after_local_change();
    }

    /// Replaces the seed addresses.
    pub fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        self.lock().set_seeds(seeds);
    }

    /// Bytes of records held.
    pub fn state_bytes(&self) -> usize {
        self.lock().state_bytes()
    }

    /// The signed records held of member `name`, as received.
    pub fn signed_records(&self, name: &str) -> Vec<mesh_proto::membership::SignedRecord> {
        self.lock().signed_records(name)
    }

    fn after_local_change(&self) {
        self.refresh_view();
        self.wake.notify_one();
    }

    fn refresh_view(&self) {
        let state = self.lock();
        if state.view_version() != self.view.borrow().version {
            let started = Instant::now();
            let view = Arc::new(state.view(started, wall_ms()));
            drop(state);
            store_micros(&self.view_build_us, started.elapsed());
            self.view.send_replace(view);
        }
        *self.view_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Publishes the view if it changed, at most once per [`view_gap`] of what
    /// the last one cost (during a burst of changes — nodes joining — readers
    /// rebuild their tables once per gap, not once per message, and a large
    /// mesh's costlier views come less often). Returns when a pending change is
    /// due, if one waits.
    fn coalesce_view(&self) -> Option<Instant> {
        let changed = self.lock().view_version() != self.view.borrow().version;
        if !changed {
            return None;
        }
        let cost = micros(&self.view_build_us) + micros(&self.view_read_us);
        let due = *self.view_at.lock().unwrap_or_else(|e| e.into_inner()) + view_gap(cost);
        if Instant::now() >= due {
            self.refresh_view();
            None
        } else {
            Some(due)
        }
    }

    /// The driver loop: runs until `stop` fires. Safe to run again after it
    /// ended (the state is kept in `self`).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut unreachable = self.unreachable.lock().await;
        let mut view_due: Option<Instant> = None;
        loop {
            let deadline = [self.lock().poll_timeout(), view_due]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.inbound.ready() => {}
                _ = self.wake.notified() => {}
                _ = sleep => {}
                name = unreachable.recv() => {
                    if let Some(name) = name {
                        self.lock().peer_unreachable(&name, Instant::now(), wall_ms());
                    }
                }
                _ = stop.changed() => return,
            }
            self.turn();
            view_due = self.coalesce_view();
        }
    }

    /// One turn: a batch of received messages (decoded before the state is
    /// locked), due timers, then output.
    fn turn(&self) {
        let batch: Vec<_> = std::iter::from_fn(|| self.inbound.pop())
            .take(BATCH)
            .map(|(_, (peer, bytes))| (peer, decode_exact::<GossipMessage>(&bytes)))
            .collect();
        let mut state = self.lock();
        for (peer, decoded) in batch {
            let (now, wall) = (Instant::now(), wall_ms());
            match decoded {
                Ok(msg) => state.handle_message(peer, msg, now, wall),
                Err(e) => {
                    tracing::debug!(peer = %peer.name, error = %e, "dropped a malformed gossip message");
                    state.refuse_malformed(&peer.name);
                }
            }
        }
        let now = Instant::now();
        if state.poll_timeout().is_some_and(|t| t <= now) {
            state.handle_timeout(now, wall_ms());
        }
        while let Some(t) = state.poll_transmit() {
            match encode(&t.message) {
                Ok(bytes) => self.outbound.send(&t.to, bytes),
                Err(e) => tracing::error!(error = %e, "cannot encode a gossip message"),
            }
        }
        while let Some(e) = state.poll_event() {
            self.report(e);
        }
        self.metrics
            .gossip
            .state_bytes
            .set(state.state_bytes() as i64);
        drop(state);
        if !self.inbound.is_empty() {
            self.wake.notify_one();
        }
    }

    /// The route documents peers sent that were refused, most recent last.
    pub fn refused_documents(&self) -> Vec<RefusedDocument> {
        let r = self
            .refused_documents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.recent.iter().cloned().collect()
    }

    /// Counts a refused route document in `shoal_route_documents_rejected_total`,
    /// once per distinct document (whether gossip or the admin API brought it);
    /// returns whether it was new.
    pub fn count_refused_document(&self, document: &RouteDocument, label: &'static str) -> bool {
        let mut r = self
            .refused_documents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Self::count_in(&mut r, &self.metrics, document, label)
    }

    fn count_in(
        r: &mut RefusedDocuments,
        metrics: &Metrics,
        document: &RouteDocument,
        label: &'static str,
    ) -> bool {
        if r.seen.len() >= MAX_REFUSED_IDS {
            r.seen.clear();
        }
        let new = r.seen.insert(document_id(document));
        if new {
            metrics
                .routing
                .route_rejections
                .get_or_create(&crate::metrics::ReasonLabels { reason: label })
                .inc();
        }
        new
    }

    fn document_refused(&self, document: RouteDocument, label: &'static str, sender: String) {
        let id = document_id(&document);
        let mut r = self
            .refused_documents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(known) = r.recent.iter_mut().find(|d| document_id(&d.document) == id) {
            if !known.senders.contains(&sender) {
                known.senders.push(sender);
            }
            return;
        }
        if Self::count_in(&mut r, &self.metrics, &document, label) {
            tracing::warn!(route = %document.name, reason = label, %sender, "refused a route document from gossip");
        }
        if r.recent.len() >= MAX_REFUSED_DOCUMENTS {
            r.recent.pop_front();
        }
        r.recent.push_back(RefusedDocument {
            document,
            reason: label,
            senders: vec![sender],
        });
    }

    fn report(&self, event: Event) {
        match event {
            Event::Refused {
                reason,
                sender,
                origin,
            } => {
                self.metrics.gossip.rejected_for(reason.as_str()).inc();
                let origin = origin.unwrap_or_default();
                // Another cluster's messages are named once a minute by
                // `OtherCluster` below, not once each.
                if reason.is_benign() || reason == mesh_proto::membership::Refusal::WrongCluster {
                    tracing::debug!(%sender, %origin, %reason, "refused a gossip item");
                } else {
                    tracing::warn!(%sender, %origin, %reason, "refused a gossip item");
                }
            }
            Event::OtherCluster { sender, cluster } => {
                if self.other_clusters.should_say(&sender) {
                    tracing::warn!(
                        peer = %sender,
                        peer_cluster = %cluster,
                        this_cluster = %self.cluster,
                        "a node of another cluster gossips with this one; its messages are refused (check node.cluster on both, and the seeds)"
                    );
                }
            }
            Event::Joined { name, generation } => {
                tracing::info!(member = %name, generation, "member joined")
            }
            Event::Accused { target, accuser } => {
                self.metrics.gossip.suspicions.inc();
                tracing::info!(member = %target, %accuser, "member suspected");
            }
            Event::Died { name, accusers } => {
                tracing::warn!(member = %name, accusers = %accusers.join(","), "member declared dead")
            }
            Event::Reaccused { target } => {
                self.metrics.gossip.reaccusations.inc();
                tracing::info!(member = %target, "member held dead accused again for a peer that held it alive");
            }
            Event::Revived { name } => tracing::info!(member = %name, "member alive again"),
            Event::Forgotten { name } => tracing::info!(member = %name, "dead member forgotten"),
            Event::Refuted { accuser } => {
                self.metrics.gossip.refutations.inc();
                tracing::warn!(%accuser, "this node was suspected; refuted");
            }
            Event::Quarantined { peer } => {
                self.metrics.gossip.quarantines.inc();
                tracing::warn!(%peer, "peer sent a bad signature; ignoring it for a while");
            }
            Event::DocumentRefused {
                document,
                label,
                sender,
            } => self.document_refused(*document, label, sender),
            Event::DocumentInForce { name } => {
                tracing::debug!(document = %name, "signed document in force")
            }
            Event::Reannounced => {
                tracing::info!(
                    "a peer did not know this node (it had been away longer than gossip.dead_node_grace); signed every record again"
                )
            }
            Event::SigningFailed { key } => {
                tracing::error!(%key, "cannot sign this node's record with its key")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_published_no_faster_than_they_are_cheap_to_build_and_read() {
        // A cheap view: as often as every VIEW_COALESCE.
        assert_eq!(view_gap(Duration::ZERO), VIEW_COALESCE);
        assert_eq!(view_gap(Duration::from_micros(500)), VIEW_COALESCE);
        // A costly one: its cost is one part in VIEW_COST_RATIO of the gap.
        let cost = Duration::from_millis(10);
        assert_eq!(view_gap(cost), cost * VIEW_COST_RATIO);
        // However costly, a change is published within VIEW_COALESCE_MAX.
        assert_eq!(view_gap(Duration::from_secs(5)), VIEW_COALESCE_MAX);
        assert_eq!(view_gap(Duration::MAX), VIEW_COALESCE_MAX);
    }
}
