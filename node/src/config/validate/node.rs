//! Validation of `[node]`: name, addresses, data directory, seeds.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use crate::config::defaults::{
    ADMIN_HEADER_TIMEOUT_RANGE, ADMIN_MAX_CONNECTIONS_RANGE, DEFAULT_ADMIN,
    DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_CLUSTER,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_ZONE, MAX_CONNECTIONS_RANGE, RETRY_HANDSHAKES_RANGE,
};
use crate::config::raw::RawNode;
use crate::config::types::IncomingConfig;
use crate::config::types::{NodeConfig, TlsConfig};
use crate::endpoint::IncomingLimits;
use crate::endpoint::{INITIAL_TUNNEL_STREAMS, MAX_TUNNEL_STREAMS};

impl Validator {
    pub(super) fn node(&mut self, raw: &RawNode, id: Option<&TlsConfig>) -> Option<NodeConfig> {
        let name = self.node_name(raw.name.as_deref(), id);
        let cluster = raw
            .cluster
            .as_deref()
            .unwrap_or(DEFAULT_CLUSTER)
            .to_string();
        self.name("node.cluster", "cluster name", &cluster);
        let zone = raw.zone.as_deref().unwrap_or(DEFAULT_ZONE).to_string();
        self.name("node.zone", "zone", &zone);
        let (listen, advertise) = self.quic_addresses(raw);
        let admin = match &raw.admin {
            Some(a) => self.socket_addr("node.admin", a),
            None => Some(DEFAULT_ADMIN),
        }
        .and_then(|a| self.loopback_admin(a));
        let data_dir = match &raw.data_dir {
            Some(d) => self.data_dir(d),
            None => {
                self.err(
                    "node.data_dir",
                    "required: the directory for this node's durable state, such as /var/lib/shoal",
                );
                None
            }
        };
        let (seeds, other_seeds) = self.seeds(&raw.seeds, [listen, advertise]);
        Some(NodeConfig {
            name: name?,
            cluster,
            zone,
            listen: listen?,
            advertise,
            admin: admin?,
            admin_header_timeout: self.admin_header_timeout(raw.admin_header_timeout),
            admin_max_connections: self.count_u32(
                "node.admin_max_connections",
                raw.admin_max_connections,
                DEFAULT_ADMIN_MAX_CONNECTIONS,
                ADMIN_MAX_CONNECTIONS_RANGE,
            ),
            incoming: self.incoming(raw),
            data_dir: data_dir?,
            seeds,
            ready_alone: raw.ready_alone.unwrap_or(other_seeds == 0),
            drain_timeout: raw.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            max_streams_per_connection: self.max_streams(raw.max_streams_per_connection),
        })
    }

    /// `node.admin`, if it is a loopback address: the admin API answers
    /// reads without authentication.
    fn loopback_admin(&mut self, admin: SocketAddr) -> Option<SocketAddr> {
        if admin.ip().is_loopback() {
            return Some(admin);
        }
        self.err(
            "node.admin",
            format!(
                "{admin} is not a loopback address: the admin API serves members, config and metrics without authentication, so it listens on loopback only (127.0.0.0/8 or [::1]); reach it over SSH or through a proxy that authenticates"
            ),
        );
        None
    }

    /// `node.admin_header_timeout`, within its range.
    fn admin_header_timeout(&mut self, value: Option<Duration>) -> Duration {
        let v = value.unwrap_or(DEFAULT_ADMIN_HEADER_TIMEOUT);
        let (min, max) = ADMIN_HEADER_TIMEOUT_RANGE;
        if !(min..=max).contains(&v) {
            self.err(
                "node.admin_header_timeout",
                format!("{v:?} is out of range: it must be between {min:?} and {max:?}"),
            );
        }
        v
    }

    /// The caps on inbound QUIC connections, each within its range.
    fn incoming(&mut self, raw: &RawNode) -> IncomingConfig {
        let d = IncomingLimits::DEFAULT;
        IncomingConfig {
            max_connections: self.count_u32(
                "node.max_connections",
                raw.max_connections,
                d.max_connections as u32,
                MAX_CONNECTIONS_RANGE,
            ),
            max_connections_per_address: self.count_u32(
                "node.max_connections_per_address",
                raw.max_connections_per_address,
                d.max_per_address as u32,
                MAX_CONNECTIONS_RANGE,
            ),
            max_handshakes: self.count_u32(
                "node.max_handshakes",
                raw.max_handshakes,
                d.max_handshakes as u32,
                MAX_CONNECTIONS_RANGE,
            ),
            retry_handshakes_above: self.count_u32(
                "node.retry_handshakes_above",
                raw.retry_handshakes_above,
                d.retry_above,
                RETRY_HANDSHAKES_RANGE,
            ),
        }
    }

    /// [`Validator::count_in`] for a `u32` field with a `(min, max)` range.
    fn count_u32(
        &mut self,
        field: &str,
        value: Option<u32>,
        default: u32,
        range: (u32, u32),
    ) -> u32 {
        let (min, max) = (range.0 as usize, range.1 as usize);
        let v = self.count_in(
            field,
            value.map(|v| v as usize),
            default as usize,
            &(min..=max),
        );
        u32::try_from(v).unwrap_or(range.1)
    }

    /// `node.max_streams_per_connection`, if set: at least the streams a new
    /// connection starts with, at most the protocol's cap.
    fn max_streams(&mut self, value: Option<u32>) -> Option<u32> {
        let v = value?;
        let (min, max) = (INITIAL_TUNNEL_STREAMS, MAX_TUNNEL_STREAMS);
        if (min..=max).contains(&v) {
            return Some(v);
        }
        self.err(
            "node.max_streams_per_connection",
            format!("{v} is out of range: it must be between {min} (the streams a connection starts with) and {max}"),
        );
        None
    }

    /// The node's name: as configured (and then the certificate's), or the
    /// certificate's.
    fn node_name(&mut self, name: Option<&str>, id: Option<&TlsConfig>) -> Option<String> {
        let Some(name) = name else {
            return id.map(|id| id.node_name.clone());
        };
        let ok = self.name("node.name", "node name", name);
        if let Some(id) = id
            && ok
            && name != id.node_name
        {
            self.err(
                "node.name",
                format!(
                    "{name:?} does not match the certificate's node name {:?}; remove node.name or use a certificate issued for {name:?}",
                    id.node_name
                ),
            );
        }
        Some(name.to_string())
    }

    /// `node.listen` and `node.advertise`: peers must be able to reach the
    /// address advertised.
    fn quic_addresses(&mut self, raw: &RawNode) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let listen = match &raw.listen {
            Some(l) => self.socket_addr("node.listen", l),
            None => {
                self.err(
                    "node.listen",
                    "required: the UDP IP:PORT of this node's QUIC endpoint, such as 0.0.0.0:7100",
                );
                None
            }
        };
        let advertise = raw
            .advertise
            .as_deref()
            .and_then(|a| self.socket_addr("node.advertise", a));
        if let Some(a) = advertise
            && a.ip().is_unspecified()
        {
            self.err(
                "node.advertise",
                format!(
                    "{a} is an unspecified address; peers need an address they can reach, such as this host's IP"
                ),
            );
        }
        let Some(listen_addr) = listen else {
            return (listen, advertise);
        };
        if listen_addr.ip().is_unspecified() && raw.advertise.is_none() {
            self.err(
                "node.advertise",
                format!(
                    "required because node.listen ({listen_addr}) is an unspecified address: set the IP:PORT peers use to reach this node"
                ),
            );
        }
        if let Some(a) = advertise
            && a.port() == 0
            && listen_addr.port() != 0
        {
            self.err(
                "node.advertise",
                format!(
                    "port 0 means \"the port actually bound\" and is only allowed when node.listen's port is 0 too (it is {})",
                    listen_addr.port()
                ),
            );
        }
        (listen, advertise)
    }

    /// The seeds, each once, and how many of them are not this node itself
    /// (`own`: its listen and advertise addresses).
    fn seeds(&mut self, raw: &[String], own: [Option<SocketAddr>; 2]) -> (Vec<String>, usize) {
        let mut seeds: Vec<String> = Vec::new();
        let mut parsed: Vec<Option<SocketAddr>> = Vec::new();
        for (i, seed) in raw.iter().enumerate() {
            let field = format!("node.seeds[{i}]");
            if let Some(s) = self.seed(&field, seed)
                && !seeds.contains(&s)
            {
                parsed.push(s.parse().ok());
                seeds.push(s);
            }
        }
        let own: Vec<SocketAddr> = own
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        let others = parsed
            .iter()
            .filter(|s| !matches!(s, Some(a) if own.contains(a)))
            .count();
        (seeds, others)
    }

    pub(super) fn data_dir(&mut self, raw: &Path) -> Option<PathBuf> {
        if raw.as_os_str().is_empty() {
            self.err("node.data_dir", "is empty; name a directory");
            return None;
        }
        let dir = self.resolve(raw);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            Ok(_) => {
                self.err(
                    "node.data_dir",
                    format!(
                        "{} exists and is not a directory; point data_dir at a directory",
                        dir.display()
                    ),
                );
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent_ok = dir
                    .parent()
                    .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir()));
                if parent_ok {
                    Some(dir)
                } else {
                    self.err(
                        "node.data_dir",
                        format!(
                            "neither {} nor its parent directory exists; the node creates the directory itself, but not its parents",
                            dir.display()
                        ),
                    );
                    None
                }
            }
            Err(e) => {
                self.err(
                    "node.data_dir",
                    format!("cannot inspect {}: {e}", dir.display()),
                );
                None
            }
        }
    }

    /// Checks one seed; returns it normalized (trimmed).
    pub(super) fn seed(&mut self, field: &str, raw: &str) -> Option<String> {
        let s = raw.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                self.err(
                    field,
                    format!("{raw:?} has port 0; give the seed's QUIC port"),
                );
                return None;
            }
            if a.ip().is_unspecified() {
                self.err(
                    field,
                    format!(
                        "{raw:?} is an unspecified address; give an address that reaches the seed"
                    ),
                );
                return None;
            }
            return Some(a.to_string());
        }
        let bad = |why: &str| {
            format!(
                "{raw:?} is not HOST:PORT ({why}); for example 10.0.0.5:7100 or seed-1.example.org:7100"
            )
        };
        let Some((host, port)) = s.rsplit_once(':') else {
            self.err(field, bad("the port is missing"));
            return None;
        };
        if host.contains(':') {
            self.err(field, bad("IPv6 addresses go in brackets: [fd00::5]:7100"));
            return None;
        }
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_ok {
            self.err(field, bad(&format!("{host:?} is not a valid host name")));
            return None;
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Some(format!("{host}:{p}")),
            _ => {
                self.err(
                    field,
                    bad(&format!("{port:?} is not a port from 1 to 65535")),
                );
                None
            }
        }
    }

    // --- [tls] -----------------------------------------------------------------
}
