//! Validation of `[[listener]]`, its outlier detection and its ingress TLS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_proto::lb::Policy;
use mesh_proto::tunnel::Protocol;

use super::Validator;
use crate::config::defaults::{
    DEFAULT_ATTEMPTS, DEFAULT_BASE_EJECTION, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HEDGE_MIN_DELAY, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_EJECTION,
    DEFAULT_OUTLIER_FAILURES, DEFAULT_REQUEST_TIMEOUT, MAX_ATTEMPTS, MAX_BASE_EJECTION,
    MAX_CONNECT_TIMEOUT, MAX_HEADER_TIMEOUT, MAX_MAX_CONNECTIONS, MAX_OUTLIER_FAILURES,
    MAX_REQUEST_TIMEOUT, MIN_LISTENER_TIMEOUT,
};
use crate::config::raw::{RawListener, RawListenerTls};
use crate::config::types::{
    AccessLog, ListenerConfig, ListenerKind, ListenerTls, OutlierConfig, TlsConfig,
};

impl Validator {
    pub(super) fn listeners(
        &mut self,
        raw: &[RawListener],
        id: Option<&TlsConfig>,
    ) -> Option<Vec<ListenerConfig>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut binds: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, l) in raw.iter().enumerate() {
            match self.listener(i, l, id) {
                Some(l) => {
                    if let Some(first) = names.insert(l.name.clone(), i) {
                        self.err(
                            format!("listener[{i}].name"),
                            format!(
                                "{:?} is already the name of listener[{first}]; give each listener its own name",
                                l.name
                            ),
                        );
                        ok = false;
                    }
                    if l.bind.port() != 0
                        && let Some(first) = binds.insert(l.bind, i)
                    {
                        self.err(
                            format!("listener[{i}].bind"),
                            format!("{} is already bound by listener[{first}]", l.bind),
                        );
                        ok = false;
                    }
                    out.push(l);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn listener(
        &mut self,
        i: usize,
        raw: &RawListener,
        id: Option<&TlsConfig>,
    ) -> Option<ListenerConfig> {
        let before = self.errors.len();
        let bind = self.listener_bind(i, raw);
        let protocol = self.protocol(&format!("listener[{i}].protocol"), raw.protocol.as_deref());
        let http = protocol == Some(Protocol::Http);
        let (name, service) = self.listener_name_and_service(i, raw, http);
        let (kind, tls) = self.listener_kind_and_tls(i, raw, http);
        let access_log = self.listener_access_log(i, raw, http);
        let (request_timeout, header_timeout) = self.listener_http_timeouts(i, raw, http);
        let lb = self.listener_policy(i, raw);
        let source_service = self.listener_source_service(i, raw, id);
        let f = |name: &str| format!("listener[{i}].{name}");
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        self.count_range(
            &f("max_connections"),
            max_connections,
            1,
            MAX_MAX_CONNECTIONS,
        );
        let connect_timeout = raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        self.duration_range(
            &f("connect_timeout"),
            connect_timeout,
            MIN_LISTENER_TIMEOUT,
            MAX_CONNECT_TIMEOUT,
        );
        let idle_timeout = self.idle_timeout(&f("idle_timeout"), raw.idle_timeout);
        let attempts = raw.attempts.unwrap_or(DEFAULT_ATTEMPTS);
        self.count_range(&f("attempts"), attempts, 1, MAX_ATTEMPTS);
        let hedge_min_delay = raw
            .hedge_min_delay
            .unwrap_or(DEFAULT_HEDGE_MIN_DELAY.min(connect_timeout));
        self.duration_range(
            &f("hedge_min_delay"),
            hedge_min_delay,
            MIN_LISTENER_TIMEOUT,
            connect_timeout,
        );
        let outlier = self.outlier(i, raw);
        if self.errors.len() != before {
            return None;
        }
        Some(ListenerConfig {
            name,
            bind: bind?,
            service,
            protocol: protocol?,
            lb: lb?,
            source_service,
            max_connections,
            connect_timeout,
            idle_timeout,
            attempts,
            hedge: raw.hedge.unwrap_or(true),
            hedge_min_delay,
            zone_aware: raw.zone_aware.unwrap_or(true),
            outlier,
            kind,
            tls,
            access_log,
            request_timeout,
            header_timeout,
        })
    }

    fn listener_bind(&mut self, i: usize, raw: &RawListener) -> Option<SocketAddr> {
        let field = format!("listener[{i}].bind");
        match &raw.bind {
            None => {
                self.err(
                    field,
                    "required: the local IP:PORT applications connect to, such as 127.0.0.1:9000",
                );
                None
            }
            Some(b) => self.socket_addr(&field, b),
        }
    }

    /// The service a listener leads to (required unless it speaks HTTP) and
    /// its name (the service's unless given).
    fn listener_name_and_service(
        &mut self,
        i: usize,
        raw: &RawListener,
        http: bool,
    ) -> (String, Option<String>) {
        let f = |name: &str| format!("listener[{i}].{name}");
        let service = match &raw.service {
            None if http => None,
            None => {
                self.err(
                    f("service"),
                    "required for a tcp listener: the mesh service this listener leads to",
                );
                None
            }
            Some(s) => self
                .name(&f("service"), "service name", s)
                .then(|| s.clone()),
        };
        if raw.name.is_none() && service.is_none() && raw.service.is_none() && http {
            self.err(
                f("name"),
                "required for an http listener without a default service (the name labels its metrics and logs)",
            );
        }
        let name = raw
            .name
            .clone()
            .or_else(|| service.clone())
            .unwrap_or_default();
        if raw.name.is_some() {
            self.name(&f("name"), "listener name", &name);
        }
        (name, service)
    }

    /// Whether it is a mesh or an ingress listener, and (an HTTP ingress
    /// only) the certificate it serves.
    fn listener_kind_and_tls(
        &mut self,
        i: usize,
        raw: &RawListener,
        http: bool,
    ) -> (ListenerKind, Option<ListenerTls>) {
        let kind = match raw.kind.as_deref() {
            None | Some("mesh") => ListenerKind::Mesh,
            Some("ingress") => ListenerKind::Ingress,
            Some(other) => {
                self.err(
                    format!("listener[{i}].kind"),
                    format!("{other:?} is not a listener kind; use \"mesh\" or \"ingress\""),
                );
                ListenerKind::Mesh
            }
        };
        let tls = raw.tls.as_ref().and_then(|t| {
            if kind != ListenerKind::Ingress || !http {
                self.err(
                    format!("listener[{i}].tls"),
                    "only an http listener of kind = \"ingress\" serves its own certificate",
                );
                return None;
            }
            self.listener_tls(i, t)
        });
        (kind, tls)
    }

    fn listener_access_log(
        &mut self,
        i: usize,
        raw: &RawListener,
        http: bool,
    ) -> Option<AccessLog> {
        let field = format!("listener[{i}].access_log");
        let a = raw.access_log.as_deref()?;
        if !http {
            self.err(field, "only http listeners write an access log");
            return None;
        }
        match a {
            "" => {
                self.err(field, "is empty; use \"stdout\" or a file path");
                None
            }
            "stdout" => Some(AccessLog::Stdout),
            path => Some(AccessLog::File(self.resolve(Path::new(path)))),
        }
    }

    /// `request_timeout` and `header_timeout`, which only HTTP listeners use.
    fn listener_http_timeouts(
        &mut self,
        i: usize,
        raw: &RawListener,
        http: bool,
    ) -> (Duration, Duration) {
        let f = |name: &str| format!("listener[{i}].{name}");
        let request_timeout = raw.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        self.duration_range(
            &f("request_timeout"),
            request_timeout,
            MIN_LISTENER_TIMEOUT,
            MAX_REQUEST_TIMEOUT,
        );
        let header_timeout = raw.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT);
        self.duration_range(
            &f("header_timeout"),
            header_timeout,
            MIN_LISTENER_TIMEOUT,
            MAX_HEADER_TIMEOUT,
        );
        if !http && raw.header_timeout.is_some() {
            self.err(
                f("header_timeout"),
                "only http listeners read request heads",
            );
        }
        if !http && raw.request_timeout.is_some() {
            self.err(
                f("request_timeout"),
                "only http listeners time requests; a tcp listener has idle_timeout",
            );
        }
        (request_timeout, header_timeout)
    }

    fn listener_policy(&mut self, i: usize, raw: &RawListener) -> Option<Policy> {
        let Some(p) = raw.lb.as_deref() else {
            return Some(Policy::RoundRobin);
        };
        p.parse::<Policy>()
            .map_err(|e| self.err(format!("listener[{i}].lb"), e.to_string()))
            .ok()
    }

    /// The source service callers act for: one the node certificate names.
    fn listener_source_service(
        &mut self,
        i: usize,
        raw: &RawListener,
        id: Option<&TlsConfig>,
    ) -> Option<String> {
        let field = format!("listener[{i}].source_service");
        let source_service = raw.source_service.clone();
        if let Some(src) = &source_service
            && self.name(&field, "service name", src)
            && let Some(id) = id
            && !id.allowed_services.iter().any(|s| s == src)
        {
            self.err(
                field,
                format!(
                    "{src:?} is not in the node certificate, so peers would refuse the claim; issue a certificate with --service {src}"
                ),
            );
        }
        source_service
    }

    fn outlier(&mut self, i: usize, raw: &RawListener) -> OutlierConfig {
        let f = |name: &str| format!("listener[{i}].outlier.{name}");
        let o = raw.outlier.clone().unwrap_or_default();
        let outlier = OutlierConfig {
            consecutive_failures: o.consecutive_failures.unwrap_or(DEFAULT_OUTLIER_FAILURES),
            base_ejection: o.base_ejection.unwrap_or(DEFAULT_BASE_EJECTION),
            max_ejection: o.max_ejection.unwrap_or(DEFAULT_MAX_EJECTION),
        };
        self.count_range(
            &f("consecutive_failures"),
            outlier.consecutive_failures,
            1,
            MAX_OUTLIER_FAILURES,
        );
        self.duration_range(
            &f("base_ejection"),
            outlier.base_ejection,
            MIN_LISTENER_TIMEOUT,
            MAX_BASE_EJECTION,
        );
        if outlier.max_ejection < outlier.base_ejection {
            self.err(f("max_ejection"), "must be at least outlier.base_ejection");
        }
        outlier
    }

    pub(super) fn listener_tls(&mut self, i: usize, raw: &RawListenerTls) -> Option<ListenerTls> {
        let pair = self.cert_and_key(
            (&format!("listener[{i}].tls.cert"), raw.cert.as_ref()),
            (&format!("listener[{i}].tls.key"), raw.key.as_ref()),
        )?;
        Some(ListenerTls {
            cert: pair.cert,
            key: pair.key,
        })
    }
}
