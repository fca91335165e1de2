//! Shoal's wire contract and I/O-free logic.
//!
//! Every byte one Shoal node sends another is defined here: the frames at the start
//! of each `shoal-tunnel/2` stream, the records each node publishes through gossip,
//! and the one codec that turns all of them into bytes and back. A node built from
//! this crate agrees with every other node on layout, versions and limits, because
//! there is no second place where they are written down.
//!
//! What it does:
//!
//! - frames every message as `[version u8][body length u32 BE][bincode body]`, with a
//!   hard size limit per message type, checked before anything is allocated;
//! - tells "need more bytes" ([`codec::DecodeError::Incomplete`]) from "bad bytes"
//!   ([`codec::InvalidFrame`]), rejects trailing garbage, and validates every decoded
//!   value (names, list lengths, ranges) before handing it out;
//! - never panics on any input: every decoder is property-tested and fuzzed
//!   (`fuzz/`, one target per frame type).
//!
//! What it does not do: I/O. There are no sockets, no async runtime and no clock
//! here (code that needs the time takes `now` as an argument); the `shoal-node`
//! crate drives these types over QUIC. Nor does it do cryptography: the membership
//! protocol signs and verifies through a [`membership::Crypto`] its driver
//! provides, and a decoded [`gossip::RouteDocument`] is well-formed, not trusted.
//!
//! ```
//! use mesh_proto::codec::{decode, encode};
//! use mesh_proto::tunnel::{Protocol, RequestId, StreamHeader};
//!
//! let header = StreamHeader {
//!     target_service: "orders".into(),
//!     source_service: Some("web".into()),
//!     protocol: Protocol::Tcp,
//!     request_id: RequestId(7),
//!     deadline_ms: Some(1500),
//! };
//! let mut wire = encode(&header)?;
//! wire.extend_from_slice(b"SSH-2.0-"); // a TCP stream's bytes follow the header
//! let (decoded, used) = decode::<StreamHeader>(&wire)?;
//! assert_eq!(decoded, header);
//! assert_eq!(&wire[used..], b"SSH-2.0-");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! - [`names`]: the naming rule shared by nodes, services, zones and trust domains.
//! - [`codec`]: the frame layout, the [`codec::Frame`] trait, binary and text
//!   (base64, for gossip values) encoding and decoding, and their errors.
//! - [`tunnel`]: [`tunnel::StreamHeader`] and [`tunnel::StreamStatus`], the frames
//!   that open a tunnel stream.
//! - [`exchange`]: the parts of one HTTP exchange on a tunnel stream (request
//!   and response heads, body data, trailers, the "not forwarded" refusal).
//! - [`gossip`]: the key names and the records each node publishes about itself:
//!   [`gossip::NodeRecord`], [`gossip::NodeCertificate`], [`gossip::ServiceRecord`];
//!   and the operator-signed [`gossip::RouteDocument`], relayed exactly as signed
//!   ([`gossip::LegacyRouteDocument`] reads the v1 layout nodes stored on disk).
//! - [`membership`]: the membership protocol, sans-IO: signed records, liveness
//!   that no member can forge, anti-entropy, and a simulator.
//! - [`routing`]: the routing table as a pure function of the live members' records.
//! - [`health`]: the healthy/unhealthy state machine of one endpoint.
//! - [`lb`]: the load-balancer pickers: candidate selection (health, panic mode,
//!   zone preference), weighted round robin, least-request, and the ring-hash
//!   [`lb::Ring`] for session persistence.
//! - [`outlier`]: passive outlier detection: ejection with a doubling backoff after
//!   consecutive failures, per endpoint ([`outlier::OutlierDetector`]) and per
//!   service ([`outlier::OutlierSet`]).
//! - [`route`]: route documents for HTTP traffic: the signed schema
//!   ([`route::RouteSpec`]) and its validation, request matching
//!   ([`route::RouteTable`]), the weighted split, and the merge that picks the
//!   document in force for each route name ([`route::merge()`]).
//! - [`retry`]: the retry budget ([`retry::RetryBudget`]) that caps retries at a
//!   share of the traffic.
#![deny(missing_docs)]

pub mod codec;
pub mod exchange;
pub mod gossip;
pub mod health;
pub mod lb;
pub mod membership;
pub mod names;
pub mod outlier;
pub mod retry;
pub mod revocation;
pub mod route;
pub mod routing;
pub mod tunnel;
