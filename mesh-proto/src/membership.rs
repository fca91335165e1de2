//! The membership protocol: who is in the mesh, who is alive, and what each
//! member publishes — shared by gossip, with no member able to forge another's
//! part of it.
//!
//! Every member publishes [`SignedRecord`]s about itself (its certificate, its
//! node record with its address and drain state, one record per service), each
//! signed with its own key over (cluster, name, generation, version, signing time,
//! key, value). Every node checks each record against the origin's certificate
//! before it applies it, whoever relayed it; records about the node itself are
//! never taken from a peer. Liveness is decided by each node's own timers from
//! signed accusations, and only the accused can refute ([`liveness`]). Route
//! documents travel exactly as the operator signed them ([`documents`]).
//!
//! The state machine ([`Membership`]) is sans-IO, in the manner of quinn-proto:
//! messages and `now` in; messages, timers and events out. The node drives it over
//! QUIC; [`sim`] drives thousands of copies on a simulated clock; tests drive it
//! with the insecure [`toy`] crypto.
//!
//! ```text
//!            handle_message ─┐         ┌─ poll_transmit (to peers)
//!  peers ──▶ (wire: decode)  ├─▶ Membership ─┤
//!            handle_timeout ─┘   │ records (verified, capped)
//!                                │ liveness (accusations, timers)
//!                                │ documents (operator-signed)
//!                                │ broadcast queue, anti-entropy
//!                                └─ poll_event, view ─▶ routing table, admin API
//! ```
//!
//! # Layout
//!
//! - [`wire`]: the [`GossipMessage`] frame and the items it carries.
//! - [`signing`]: the signed payloads and the [`Crypto`] trait.
//! - [`records`]: the verified records of every member and the rules to apply one.
//! - [`shared`]: checked records held once between the stores that share them.
//! - [`liveness`]: accusations, refutations and each node's verdicts.
//! - [`documents`]: route documents in force.
//! - [`overlay`]: the few neighbours a node talks to, whatever the mesh size.
//! - [`broadcast`]: new items queued for the neighbours.
//! - [`tree`]: which neighbours get records in full and which announcements.
//! - [`sync`]: anti-entropy digests and answers.
//! - [`state`]: the [`Membership`] state machine tying them together.
//! - [`view`]: the plain-data snapshot readers get.
//! - [`refusal`]: why an item was refused (a metric label).
//! - [`config`]: timing and caps.
//! - [`toy`]: an insecure crypto provider for tests and simulations.
//! - [`sim`]: a discrete-event network of state machines.

pub mod broadcast;
pub mod config;
pub mod documents;
pub mod liveness;
pub mod overlay;
pub mod probe;
pub mod records;
pub mod refusal;
pub mod shared;
pub mod signing;
pub mod sim;
pub mod state;
pub mod sync;
pub mod toy;
pub mod tree;
pub mod view;
pub mod wire;

pub use config::{Config, Limits, Timing};
pub use refusal::Refusal;
pub use signing::{Crypto, CryptoRefusal, DocumentSigner, NodeCert};
pub use state::{Destination, Event, Membership, Peer, PublishError, Transmit};
pub use view::{MemberRecords, MemberView, View};
pub use wire::{GossipMessage, SignedRecord, Suspicion};
