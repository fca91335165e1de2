//! The client side of `shoal`: commands that talk to a running node's admin
//! API (`status`, `ready`, `route`, `revoke`) and print what it answers.

mod admin;
mod preflight;
mod ready;
mod reload;
mod revoke;
mod route;
mod status;
mod table;

pub(crate) use admin::{DEFAULT_ADMIN_TEXT, parse_admin};
pub(crate) use preflight::preflight;
pub(crate) use ready::ready;
pub(crate) use reload::reload;
pub(crate) use revoke::revoke;
pub(crate) use route::route;
pub(crate) use status::status;
