//! Command-line overrides of config fields.

use std::net::SocketAddr;

use crate::config::raw::RawConfig;

/// Command-line flags applied on top of the file before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--seed HOST:PORT`: added after the file's `node.seeds`.
    pub seeds: Vec<String>,
    /// `--listen ADDR`: replaces `node.listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin ADDR`: replaces `node.admin`.
    pub admin: Option<SocketAddr>,
}

impl Overrides {
    /// Applies the flags to a raw configuration.
    pub fn apply(&self, raw: &mut RawConfig) {
        raw.node.seeds.extend(self.seeds.iter().cloned());
        if let Some(listen) = self.listen {
            raw.node.listen = Some(listen.to_string());
        }
        if let Some(admin) = self.admin {
            raw.node.admin = Some(admin.to_string());
        }
    }
}
