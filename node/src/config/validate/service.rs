//! Validation of `[[service]]` and its `[service.health]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use humantime_serde::re::humantime;
use mesh_proto::tunnel::Protocol;

use super::Validator;
use crate::config::defaults::{
    DEFAULT_BACKEND_CONNECT_TIMEOUT, DEFAULT_CALLER_SHARE_PERCENT, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_HTTP_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_UNHEALTHY_THRESHOLD, DEFAULT_WEIGHT, MAX_BACKEND_CONNECT_TIMEOUT, MAX_HEALTH_INTERVAL,
    MAX_HTTP_IDLE_TIMEOUT, MAX_MAX_CONNECTIONS, MAX_REQUEST_TIMEOUT, MAX_TAGS, MAX_THRESHOLD,
    MAX_WEIGHT, MIN_BACKEND_CONNECT_TIMEOUT, MIN_HEALTH_INTERVAL, MIN_LISTENER_TIMEOUT,
};
use crate::config::raw::{RawHealth, RawService};
use crate::config::types::{HealthConfig, HealthKind, ServiceConfig, TlsConfig};

impl Validator {
    pub(super) fn services(
        &mut self,
        raw: &[RawService],
        id: Option<&TlsConfig>,
    ) -> Option<Vec<ServiceConfig>> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut ok = true;
        for (i, svc) in raw.iter().enumerate() {
            match self.service(i, svc, id, &mut seen) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn service(
        &mut self,
        i: usize,
        raw: &RawService,
        id: Option<&TlsConfig>,
        seen: &mut BTreeMap<String, usize>,
    ) -> Option<ServiceConfig> {
        let f = |name: &str| format!("service[{i}].{name}");
        let name = self.service_name(i, raw.name.as_deref(), id, seen);
        let address = self.backend_address(&f("address"), raw.address.as_deref());
        let protocol = self.protocol(&f("protocol"), raw.protocol.as_deref());
        let weight = raw.weight.unwrap_or(DEFAULT_WEIGHT);
        let weight_ok = (1..=MAX_WEIGHT).contains(&weight);
        if !weight_ok {
            self.err(
                f("weight"),
                format!("{weight} is out of range: it must be between 1 and {MAX_WEIGHT}"),
            );
        }
        let tags_ok = self.service_tags(i, &raw.tags);
        let health = self.health(i, raw.health.as_ref(), protocol.unwrap_or(Protocol::Tcp));
        let allow_ok = self.allow_lists(i, raw);
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_ok = self.count_range(
            &f("max_connections"),
            max_connections,
            1,
            MAX_MAX_CONNECTIONS,
        );
        let per_caller = raw
            .max_connections_per_caller
            .unwrap_or_else(|| caller_share(max_connections));
        let per_caller_ok = (1..=max_connections).contains(&per_caller);
        if !per_caller_ok {
            self.err(
                f("max_connections_per_caller"),
                format!(
                    "{per_caller} is out of range: it must be between 1 and the service's max_connections ({max_connections})"
                ),
            );
        }
        let (connect_timeout, http_idle_timeout) = self.backend_timeouts(&f, raw);
        let http2 = self.http2(&f("http2"), raw.http2, protocol);
        let tls = self.backend_tls(i, raw, protocol, address);
        let idle_timeout = self.idle_timeout(&f("idle_timeout"), raw.idle_timeout);
        let response_timeout = raw.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        self.duration_range(
            &f("response_timeout"),
            response_timeout,
            MIN_LISTENER_TIMEOUT,
            MAX_REQUEST_TIMEOUT,
        );
        if !(weight_ok && tags_ok && allow_ok && max_ok && per_caller_ok) {
            return None;
        }
        Some(ServiceConfig {
            name: name?,
            address: address?,
            protocol: protocol?,
            weight,
            tags: raw.tags.clone(),
            health: health?,
            allow_nodes: raw.allow_nodes.clone(),
            allow_services: raw.allow_services.clone(),
            max_connections,
            max_connections_per_caller: per_caller,
            connect_timeout,
            http_idle_timeout,
            http2: http2?,
            tls: tls?,
            idle_timeout,
            response_timeout,
        })
    }

    /// `connect_timeout` and `http_idle_timeout`, defaulted and range-checked.
    fn backend_timeouts(
        &mut self,
        f: &dyn Fn(&str) -> String,
        raw: &RawService,
    ) -> (Duration, Duration) {
        let connect_timeout = raw
            .connect_timeout
            .unwrap_or(DEFAULT_BACKEND_CONNECT_TIMEOUT);
        self.duration_range(
            &f("connect_timeout"),
            connect_timeout,
            MIN_BACKEND_CONNECT_TIMEOUT,
            MAX_BACKEND_CONNECT_TIMEOUT,
        );
        let http_idle_timeout = raw.http_idle_timeout.unwrap_or(DEFAULT_HTTP_IDLE_TIMEOUT);
        self.duration_range(
            &f("http_idle_timeout"),
            http_idle_timeout,
            Duration::ZERO,
            MAX_HTTP_IDLE_TIMEOUT,
        );
        (connect_timeout, http_idle_timeout)
    }

    /// `http2`: only for an HTTP service (a TCP service's bytes are not HTTP
    /// to this node).
    fn http2(
        &mut self,
        field: &str,
        http2: Option<bool>,
        protocol: Option<Protocol>,
    ) -> Option<bool> {
        match (http2, protocol) {
            (Some(true), Some(Protocol::Tcp)) => {
                self.err(
                    field.to_string(),
                    "only an HTTP service speaks HTTP/2 to its backend: set protocol = \"http\", or remove http2".to_string(),
                );
                None
            }
            (http2, _) => Some(http2.unwrap_or(false)),
        }
    }

    /// A service's name: valid, listed once, and allowed by the certificate.
    fn service_name(
        &mut self,
        i: usize,
        name: Option<&str>,
        id: Option<&TlsConfig>,
        seen: &mut BTreeMap<String, usize>,
    ) -> Option<String> {
        let field = format!("service[{i}].name");
        let Some(name) = name else {
            self.err(field, "required: the service name");
            return None;
        };
        let mut ok = self.name(&field, "service name", name);
        if let Some(first) = seen.get(name) {
            self.err(
                &field,
                format!(
                    "{name:?} is already defined by service[{first}]; each service is listed once per node"
                ),
            );
            ok = false;
        } else {
            seen.insert(name.to_string(), i);
        }
        if ok
            && let Some(id) = id
            && !id.allowed_services.iter().any(|s| s == name)
        {
            let allows = if id.allowed_services.is_empty() {
                "none".to_string()
            } else {
                id.allowed_services.join(", ")
            };
            self.err(
                field,
                format!(
                    "{name:?} is not in the node certificate (it allows: {allows}); issue a certificate with --service {name}"
                ),
            );
            ok = false;
        }
        ok.then(|| name.to_string())
    }

    /// The local backend's address: an IP and a port the backend can be reached at.
    fn backend_address(&mut self, field: &str, address: Option<&str>) -> Option<SocketAddr> {
        let Some(a) = address else {
            self.err(
                field,
                "required: the IP:PORT of the local backend, such as 127.0.0.1:8080",
            );
            return None;
        };
        let a = self.socket_addr(field, a)?;
        if a.port() == 0 {
            self.err(field, format!("{a} has port 0; give the backend's port"));
            None
        } else if a.ip().is_unspecified() {
            self.err(
                field,
                format!(
                    "{a} is an unspecified address; give the address the backend can be reached at, such as 127.0.0.1:{}",
                    a.port()
                ),
            );
            None
        } else {
            Some(a)
        }
    }

    /// A service's tags: at most [`MAX_TAGS`], each a valid name.
    fn service_tags(&mut self, i: usize, tags: &[String]) -> bool {
        let mut ok = true;
        if tags.len() > MAX_TAGS {
            self.err(
                format!("service[{i}].tags"),
                format!("{} tags; at most {MAX_TAGS} are allowed", tags.len()),
            );
            ok = false;
        }
        for (t, tag) in tags.iter().enumerate() {
            ok &= self.name(&format!("service[{i}].tags[{t}]"), "tag", tag);
        }
        ok
    }

    /// The callers a service allows: node and service names.
    fn allow_lists(&mut self, i: usize, raw: &RawService) -> bool {
        let mut ok = true;
        for (n, node) in raw.allow_nodes.iter().enumerate() {
            ok &= self.name(&format!("service[{i}].allow_nodes[{n}]"), "node name", node);
        }
        for (n, svc) in raw.allow_services.iter().enumerate() {
            ok &= self.name(
                &format!("service[{i}].allow_services[{n}]"),
                "service name",
                svc,
            );
        }
        ok
    }

    pub(super) fn health(
        &mut self,
        i: usize,
        raw: Option<&RawHealth>,
        protocol: Protocol,
    ) -> Option<HealthConfig> {
        let f = |name: &str| format!("service[{i}].health.{name}");
        let empty = RawHealth::default();
        let raw = raw.unwrap_or(&empty);
        let errors_before = self.errors.len();
        let kind = self.health_kind(&f("kind"), raw.kind.as_deref(), protocol);
        let path = self.health_path(&f("path"), raw, kind, protocol);
        let interval = raw.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
        self.duration_range(
            &f("interval"),
            interval,
            MIN_HEALTH_INTERVAL,
            MAX_HEALTH_INTERVAL,
        );
        let timeout = raw.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT);
        if timeout.is_zero() {
            self.err(f("timeout"), "must be greater than 0");
        } else if timeout > interval {
            self.err(
                f("timeout"),
                format!(
                    "{} is longer than the check interval ({}); it must be at most the interval",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut threshold = |name: &str, value: Option<u32>, default: u32| {
            let v = value.unwrap_or(default);
            if !(1..=MAX_THRESHOLD).contains(&v) {
                self.err(
                    f(name),
                    format!("{v} is out of range: it must be between 1 and {MAX_THRESHOLD}"),
                );
            }
            v
        };
        let healthy_threshold = threshold(
            "healthy_threshold",
            raw.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = threshold(
            "unhealthy_threshold",
            raw.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        (self.errors.len() == errors_before).then_some(HealthConfig {
            kind,
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        })
    }

    /// The check's kind: as given, or by default the service's protocol.
    fn health_kind(&mut self, field: &str, kind: Option<&str>, protocol: Protocol) -> HealthKind {
        match kind {
            None => match protocol {
                Protocol::Http => HealthKind::Http,
                Protocol::Tcp => HealthKind::Tcp,
            },
            Some("tcp") => HealthKind::Tcp,
            Some("http") => HealthKind::Http,
            Some("none") => HealthKind::None,
            Some(other) => {
                self.err(
                    field,
                    format!(
                        "{other:?} is not a health check kind; use \"tcp\", \"http\" or \"none\""
                    ),
                );
                HealthKind::Tcp
            }
        }
    }

    /// An HTTP check's path: absolute, URL-safe, and only given to HTTP checks.
    fn health_path(
        &mut self,
        field: &str,
        raw: &RawHealth,
        kind: HealthKind,
        protocol: Protocol,
    ) -> String {
        let path = raw
            .path
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_PATH)
            .to_string();
        if !path.starts_with('/') {
            self.err(field, format!("{path:?} must start with '/'"));
        } else if !path.chars().all(|c| c.is_ascii_graphic()) {
            self.err(
                field,
                format!("{path:?} contains spaces or other characters not allowed in a URL path; percent-encode them"),
            );
        }
        if raw.path.is_some() && kind != HealthKind::Http {
            let why = if raw.kind.is_some() {
                String::new()
            } else {
                format!(" (the default for protocol \"{protocol}\")")
            };
            self.err(
                field,
                format!(
                    "is only used by HTTP checks, and this check is \"{kind}\"{why}; set kind = \"http\" or remove path"
                ),
            );
        }
        path
    }
}

/// The default share of `max_connections` one caller may hold
/// ([`DEFAULT_CALLER_SHARE_PERCENT`], at least 1).
fn caller_share(max_connections: u32) -> u32 {
    let share = u64::from(max_connections) * u64::from(DEFAULT_CALLER_SHARE_PERCENT) / 100;
    u32::try_from(share).unwrap_or(max_connections).max(1)
}
