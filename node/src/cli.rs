//! The client side of `shoal`: commands that talk to a running node's admin
//! API (`status`, `route`) and print what it answers.

mod admin;
mod route;
mod status;
mod table;

pub(crate) use route::route;
pub(crate) use status::status;
