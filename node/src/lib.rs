//! The Shoal node.
pub mod admin;
pub mod app;
pub mod config;
pub mod endpoint;
pub mod gossip;
pub mod health;
pub mod metrics;
pub mod publish;
pub mod routing;
pub mod tls;

pub use app::{Bound, Node, StartError, StartOptions};
pub use config::Config;
