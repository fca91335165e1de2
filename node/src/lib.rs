//! The Shoal node: one per host. It joins the mesh's gossip cluster over an mTLS
//! QUIC endpoint, publishes which services this host serves and how healthy they
//! are, and derives a routing table from what every node publishes.
//!
//! The node is a library first: [`Node::start`] builds a running node from a
//! validated [`Config`] and returns a handle with the addresses it actually bound
//! ([`Bound`]) and the ways to stop it. The `shoal` binary is a thin main around it;
//! the tests and the simulator start nodes in-process the same way, optionally on a
//! UDP socket of their own ([`StartOptions::socket`]) to inject faults.
//!
//! It does not decide protocol details (frames, records, the routing rules, health
//! thresholds): those live in `mesh-proto`, without I/O.
//!
//! Layout (see docs/architecture.md):
//! - [`app`]: wiring, [`Node`];
//! - [`config`]: the TOML file, validated into [`Config`];
//! - [`tls`]: identity, trust, SPIFFE verifiers, reloads;
//! - [`endpoint`]: the QUIC endpoint, ALPN dispatch, connection pool;
//! - [`gossip`]: the membership protocol (`mesh_proto::membership`) driven over
//!   the endpoint, with per-peer fair queues and the node's crypto;
//! - [`publish`]: this node's own records;
//! - [`reload`]: config reload while running (services, listeners);
//! - [`health`]: active checks of local backends;
//! - [`proxy`]: listeners, tunnels and the inbound side;
//! - [`routing`]: the routing table, rebuilt on change, swapped atomically;
//! - [`seeds`]: seed addresses (DNS names resolved again while alone);
//! - [`routes`]: route documents (operator-signed L7 rules) in force, stored;
//! - [`supervisor`]: long-running tasks, restarted when they end unexpectedly;
//! - [`admin`]: the admin HTTP API; [`metrics`]: what it exports;
//! - [`golden`]: the golden metrics (rates, success, latency) the dashboard shows.

pub mod admin;
pub mod app;
pub mod config;
pub mod endpoint;
pub mod golden;
pub mod gossip;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod publish;
pub mod reload;
pub mod revocations;
pub mod routes;
pub mod routing;
pub mod seeds;
pub mod supervisor;
pub mod throttle;
pub mod tls;

pub use app::{Bound, Node, StartError, StartOptions};
pub use config::Config;
