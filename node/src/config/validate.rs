//! Validation: turns a [`RawConfig`] into a [`Config`], collecting every problem.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::re::humantime;
use mesh_proto::names::validate_name;
use mesh_proto::tunnel::{Protocol, UnknownProtocol};
use time::OffsetDateTime;

use crate::config::error::{ConfigError, ConfigErrors};
use crate::config::raw::{ROOT_FIELD, RawConfig};
use crate::config::types::Config;

mod backend_tls;
mod gossip;
mod listener;
mod node;
mod service;
mod tls;

pub(super) struct Validator {
    base_dir: PathBuf,
    now: OffsetDateTime,
    errors: Vec<ConfigError>,
}

/// Where a field's section comes in the file, for ordering errors.
pub(super) fn section_rank(field: &str) -> u8 {
    let section = field.split(['.', '[']).next().unwrap_or_default();
    match section {
        "node" => 0,
        "tls" => 1,
        "gossip" => 2,
        "service" => 3,
        "listener" => 4,
        _ => 5,
    }
}

const ADDR_EXAMPLE: &str = "an IP:PORT address such as 10.0.0.5:7100 or [fd00::5]:7100";

impl Validator {
    pub(super) fn new(base_dir: &Path, now: OffsetDateTime) -> Self {
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        Validator {
            base_dir,
            now,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(field, reason));
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        let joined = self.base_dir.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    pub(super) fn run(mut self, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let tls = self.tls(raw.tls.as_ref());
        let node = self.node(&raw.node, tls.as_ref());
        let gossip = self.gossip(&raw.gossip);
        let services = self.services(&raw.services, tls.as_ref());
        let listeners = self.listeners(&raw.listeners, tls.as_ref());
        match (node, tls, services, listeners) {
            (Some(node), Some(tls), Some(services), Some(listeners)) if self.errors.is_empty() => {
                Ok(Config {
                    node,
                    tls,
                    gossip,
                    services,
                    listeners,
                })
            }
            _ => {
                if self.errors.is_empty() {
                    self.err(ROOT_FIELD, "invalid configuration");
                }
                // File order: the sections were checked out of order because
                // [node] and [[service]] depend on what the [tls] files say.
                self.errors.sort_by_key(|e| section_rank(&e.field));
                Err(ConfigErrors(self.errors))
            }
        }
    }

    fn name(&mut self, field: &str, what: &'static str, value: &str) -> bool {
        match validate_name(what, value) {
            Ok(()) => true,
            Err(e) => {
                self.err(field, e.to_string());
                false
            }
        }
    }

    /// A `protocol` field: `tcp` (also when absent) or `http`.
    fn protocol(&mut self, field: &str, raw: Option<&str>) -> Option<Protocol> {
        raw.map_or(Ok(Protocol::Tcp), str::parse)
            .map_err(|e: UnknownProtocol| self.err(field, e.to_string()))
            .ok()
    }

    fn socket_addr(&mut self, field: &str, value: &str) -> Option<SocketAddr> {
        match value.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if value.contains(':') && value.matches(':').count() > 1 {
                    " (IPv6 addresses go in brackets: [fd00::5]:7100)"
                } else if !value.contains(':') {
                    " (the port is missing)"
                } else {
                    ""
                };
                self.err(
                    field,
                    format!(
                        "{value:?} is not {ADDR_EXAMPLE}{hint}; host names are not accepted here"
                    ),
                );
                None
            }
        }
    }

    // --- [node] ----------------------------------------------------------------

    fn duration_range(&mut self, field: &str, d: Duration, min: Duration, max: Duration) {
        if d < min || d > max {
            self.err(
                field,
                format!(
                    "{} is out of range: it must be between {} and {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
    }

    /// An `idle_timeout` (a listener's or a service's): `value` or the
    /// default, within its range.
    fn idle_timeout(&mut self, field: &str, value: Option<Duration>) -> Duration {
        use crate::config::defaults::{
            DEFAULT_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT, MIN_LISTENER_TIMEOUT,
        };
        let v = value.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        self.duration_range(field, v, MIN_LISTENER_TIMEOUT, MAX_IDLE_TIMEOUT);
        v
    }

    /// `value` (or `default`), checked against `range`.
    fn count_in(
        &mut self,
        field: &str,
        value: Option<usize>,
        default: usize,
        range: &std::ops::RangeInclusive<usize>,
    ) -> usize {
        let v = value.unwrap_or(default);
        if !range.contains(&v) {
            self.err(
                field,
                format!(
                    "{v} is out of range: it must be between {} and {} (the default is {default})",
                    range.start(),
                    range.end()
                ),
            );
        }
        v
    }

    fn at_least(&mut self, field: &str, d: Duration, min: Duration) {
        if d < min {
            self.err(
                field,
                format!(
                    "{} is too short: it must be at least {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min)
                ),
            );
        }
    }

    // --- [[service]] -----------------------------------------------------------

    fn count_range(&mut self, field: &str, value: u32, min: u32, max: u32) -> bool {
        if (min..=max).contains(&value) {
            true
        } else {
            self.err(
                field,
                format!("{value} is out of range: it must be between {min} and {max}"),
            );
            false
        }
    }

    // --- [[listener]] ----------------------------------------------------------
}
