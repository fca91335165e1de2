//! `shoal-sim`: a whole Shoal mesh on one machine — real nodes (the same code as
//! `shoal run`), demo backends, traffic, injected faults — and a report of what
//! happened.
//!
//! - [`scenario`]: scenarios as data (TOML): the mesh, then timed steps;
//! - [`mesh`]: starting, stopping and observing nodes, in-process or as processes;
//! - [`faults`]: the simulated network under in-process nodes (partitions, loss,
//!   pauses);
//! - [`backends`]: the demo services;
//! - [`traffic`]: request generators and their records;
//! - [`runner`]: executing a scenario and measuring the mesh's reactions;
//! - [`report`]: the result, as text and JSON;
//! - [`memory`]: the memory benchmark of `shoal run` processes;
//! - [`model`]: the membership protocol of thousands of nodes on a simulated
//!   clock (`shoal-sim model`).

pub mod backends;
pub mod faults;
pub mod memory;
pub mod mesh;
pub mod model;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod traffic;

/// The built-in demo scenario.
pub const DEMO: &str = include_str!("../scenarios/demo.toml");
