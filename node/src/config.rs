//! The node's configuration: the TOML file `shoal run --config FILE` reads, parsed
//! into [`RawConfig`] (a plain mirror of the file that the simulator can also build
//! in code), combined with command-line [`Overrides`], then validated into
//! [`Config`], the typed and checked form the node runs with. Validation reads the
//! TLS files and checks that they make a usable node identity (the certificate
//! chains to the CA, the key matches, every `[[service]]` is allowed by the
//! certificate), and collects every problem it finds as a [`ConfigError`] naming
//! the TOML field (`node.listen`, `service[1].health.timeout`, `tls.cert`) and the
//! reason. It does not bind sockets, create directories or keep file contents:
//! the node re-reads the certificate files itself at start and on SIGHUP.
//!
//! `docs/config.md` is the operator's reference for every field.

pub use mesh_proto::lb::Policy;
pub use mesh_proto::tunnel::Protocol;

mod defaults;
mod error;
mod load;
mod overrides;
mod raw;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use defaults::*;
pub use error::*;
pub use overrides::*;
pub use raw::*;
pub use types::*;
