//! Config reload while the node runs (SIGHUP, `shoal reload`, `POST /reload`):
//! [`plan()`] says what changed; [`Reloader`] applies it — services (their
//! backends, health checks, allow-lists, limits, weights and tags) and
//! listeners are added, changed or removed in place; a removed listener stops
//! accepting and its open connections finish (drained, not cut); a removed
//! service is withdrawn from gossip. Every other field that changed is left
//! as it is and named in the report (and the log): it needs a restart.

pub mod plan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mesh_proto::gossip::ServiceRecord;
use serde::Serialize;

use crate::config::{Config, ConfigErrors, HealthKind, ListenerConfig, Overrides};
use crate::gossip::Gossip;
use crate::metrics::Metrics;
use crate::proxy::ingress_tls::IngressCert;
use crate::proxy::{LocalService, ProxyContext};
use crate::publish::Publisher;
use crate::routes::SharedRoutes;
use crate::supervisor::Supervisor;
use crate::tls::TlsState;

pub use plan::{Change, Plan, Refused, plan};

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Services and listeners added, changed or removed, as `"listener api
    /// added"`.
    pub applied: Vec<String>,
    /// Fields not applied, by name, with why.
    pub refused: Vec<RefusedField>,
    /// Every listener and the address it is bound to, after the reload.
    pub listening: BTreeMap<String, SocketAddr>,
}

/// A field a reload did not apply.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RefusedField {
    /// The field (`node.listen`, `listener[api].bind`, ...).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The parts of a running node a reload changes.
#[derive(Debug)]
pub struct Parts {
    /// The proxy's context (local services).
    pub proxy: Arc<ProxyContext>,
    /// Gossip, to publish service records.
    pub gossip: Arc<Gossip>,
    /// This node's records.
    pub publisher: Arc<Publisher>,
    /// Metrics (health checks count there).
    pub metrics: Arc<Metrics>,
    /// The HTTP route table new HTTP listeners route by.
    pub routes: SharedRoutes,
    /// The certificate in force (which services it allows).
    pub tls: Arc<TlsState>,
    /// The node's tasks.
    pub supervisor: Arc<Supervisor>,
    /// The golden metrics, told about new listeners.
    pub golden: Arc<crate::golden::History>,
}

/// Applies config reloads, one at a time.
#[derive(Debug)]
pub struct Reloader {
    parts: Parts,
    /// The file (and command-line flags) the config was read from, if any.
    source: Option<(PathBuf, Overrides)>,
    /// The config in force; held across a reload, so reloads never interleave.
    current: tokio::sync::Mutex<Arc<Config>>,
    /// Listeners running: bound address and ingress certificate.
    listeners: Mutex<BTreeMap<String, Running>>,
}

/// A running listener: its bound address and ingress certificate.
type Running = (SocketAddr, Option<Arc<IngressCert>>);

/// Why a reload from the file did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node was started from a config in memory, not a file.
    #[error("this node was not started from a config file; nothing to re-read")]
    NoFile,
    /// The file does not validate: nothing was changed.
    #[error("the config file is not valid, nothing was changed:\n{0}")]
    Invalid(ConfigErrors),
}

impl Reloader {
    /// A reloader for a node running `config` (read from `source`, if any).
    pub fn new(parts: Parts, config: Arc<Config>, source: Option<(PathBuf, Overrides)>) -> Self {
        Reloader {
            parts,
            source,
            current: tokio::sync::Mutex::new(config),
            listeners: Mutex::default(),
        }
    }

    /// The parts it changes.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The config in force.
    pub async fn config(&self) -> Arc<Config> {
        self.current.lock().await.clone()
    }

    /// Records a listener the node started with.
    pub fn started(&self, name: &str, addr: SocketAddr, cert: Option<Arc<IngressCert>>) {
        self.lock_listeners().insert(name.to_string(), (addr, cert));
    }

    /// The ingress certificates of the running listeners (reloaded on SIGHUP).
    pub fn ingress_certs(&self) -> Vec<Arc<IngressCert>> {
        self.lock_listeners()
            .values()
            .filter_map(|(_, c)| c.clone())
            .collect()
    }

    /// Every running listener's bound address.
    pub fn listening(&self) -> BTreeMap<String, SocketAddr> {
        self.lock_listeners()
            .iter()
            .map(|(n, (a, _))| (n.clone(), *a))
            .collect()
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the config file again and applies it.
    pub async fn reload_file(&self) -> Result<Report, ReloadError> {
        let (path, overrides) = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path, overrides).map_err(ReloadError::Invalid)?;
        Ok(self.reload(new).await)
    }

    /// Applies `new` as far as it can change while the node runs.
    pub async fn reload(&self, new: Config) -> Report {
        let mut current = self.current.lock().await;
        let allowed = self.parts.tls.identity().services.clone();
        let plan = plan(&current, &new, &allowed);
        let mut report = Report::default();
        for r in &plan.refused {
            refuse(&mut report, &r.field, &r.reason);
        }
        let mut config = plan.config.clone();
        self.apply_services(&plan).await;
        let failed = self.apply_listeners(&plan, &current, &mut report).await;
        config.listeners.retain(|l| !failed.contains(&l.name));
        for c in &plan.changes {
            let line = format!("{} {} {}", c.what, c.name, c.how);
            if !(c.what == "listener" && failed.contains(&c.name)) {
                tracing::info!(what = c.what, name = %c.name, how = c.how, "config reload applied");
                report.applied.push(line);
            }
        }
        self.parts
            .golden
            .set_listeners(crate::golden::listeners_of(&config));
        report.listening = self.listening();
        *current = Arc::new(config);
        report
    }

    /// New local services in force, their health checks and gossip records.
    async fn apply_services(&self, plan: &Plan) {
        let Parts {
            proxy,
            gossip,
            publisher,
            metrics,
            supervisor,
            tls,
            ..
        } = &self.parts;
        let old = proxy.services();
        let services = plan
            .config
            .services
            .iter()
            .map(|s| {
                let local = match old.get(&s.name) {
                    Some(o) => o.reconfigured(s.clone()),
                    None => LocalService::new(s.clone(), metrics),
                };
                (s.name.clone(), local)
            })
            .collect();
        proxy.services.store(Arc::new(services));
        tls.require_services(
            plan.config
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        );
        for c in plan.changes.iter().filter(|c| c.what == "service") {
            let Some(s) = plan.config.services.iter().find(|s| s.name == c.name) else {
                supervisor.retire(&health_task(&c.name)).await;
                publisher.withdraw_service(gossip, &c.name).await;
                continue;
            };
            let before = old.get(&c.name).map(|o| &o.config);
            let mut record = service_record(s);
            if before.is_some_and(|b| same_checks(b, s)) {
                // Same backend, same checks: its health stands, its checks run on.
                if let Some(health) = publisher.health(&s.name).await {
                    record.health = health;
                }
                publisher.put_service(gossip, record).await;
                continue;
            }
            supervisor.retire(&health_task(&c.name)).await;
            publisher.put_service(gossip, record).await;
            crate::app::spawn_health_check(supervisor, s, (gossip, publisher, metrics));
        }
    }

    /// Listeners stopped, started or restarted; returns those that could not
    /// start (their fields are in `report.refused`).
    async fn apply_listeners(&self, plan: &Plan, old: &Config, report: &mut Report) -> Vec<String> {
        let mut failed = Vec::new();
        for c in plan.changes.iter().filter(|c| c.what == "listener") {
            if c.how != "added" {
                self.parts.supervisor.retire(&listener_task(&c.name)).await;
                self.lock_listeners().remove(&c.name);
                tracing::info!(listener = %c.name, "listener stopped; its open connections finish");
            }
            let Some((i, cfg)) = plan
                .config
                .listeners
                .iter()
                .enumerate()
                .find(|(_, l)| l.name == c.name)
            else {
                continue;
            };
            if let Err(refusal) = self.start_listener(i, cfg).await {
                refuse(report, &refusal.field, &refusal.reason);
                failed.push(c.name.clone());
                // A changed listener that cannot start again keeps its old
                // settings if it can still bind them.
                if let Some((j, before)) = old
                    .listeners
                    .iter()
                    .enumerate()
                    .find(|(_, l)| l.name == c.name)
                    && self.start_listener(j, before).await.is_ok()
                {
                    tracing::warn!(listener = %c.name, "kept the listener's previous settings");
                }
            }
        }
        failed
    }

    /// Binds and starts listener `cfg` (index `i` in the file).
    async fn start_listener(&self, i: usize, cfg: &ListenerConfig) -> Result<(), Refused> {
        let cert = match &cfg.tls {
            Some(files) => Some(IngressCert::load(i, files).map_err(|e| Refused {
                field: format!("listener[{i}].tls"),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let bind_error = |e: std::io::Error| Refused {
            field: format!("listener[{i}].bind"),
            reason: format!("cannot bind {}: {e}", cfg.bind),
        };
        let socket = crate::proxy::listen(cfg.bind).map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        crate::app::spawn_listener(&self.parts, cfg.clone(), socket, addr, cert.clone())
            .await
            .map_err(|reason| Refused {
                field: format!("listener[{i}]"),
                reason,
            })?;
        self.started(&cfg.name, addr, cert);
        Ok(())
    }
}

/// Whether `a` and `b` are checked the same way: same backend, same health
/// check (a change elsewhere — allow-lists, limits, weight — keeps the checks
/// running and the health known).
fn same_checks(a: &crate::config::ServiceConfig, b: &crate::config::ServiceConfig) -> bool {
    a.address == b.address && a.protocol == b.protocol && a.health == b.health
}

fn refuse(report: &mut Report, field: &str, reason: &str) {
    tracing::warn!(%field, %reason, "config reload: field not applied");
    report.refused.push(RefusedField {
        field: field.to_string(),
        reason: reason.to_string(),
    });
}

/// The supervised task of a service's health checks.
pub fn health_task(service: &str) -> String {
    format!("health:{service}")
}

/// The supervised task of a listener.
pub fn listener_task(listener: &str) -> String {
    format!("listener:{listener}")
}

/// The gossip record of a local service as configured (health unknown until
/// its first check, healthy if it is not checked).
pub fn service_record(s: &crate::config::ServiceConfig) -> ServiceRecord {
    ServiceRecord {
        name: s.name.clone(),
        protocol: s.protocol,
        weight: s.weight,
        health: if s.health.kind == HealthKind::None {
            mesh_proto::gossip::Health::Healthy
        } else {
            mesh_proto::gossip::Health::Unknown
        },
        inflight: 0,
        tags: s.tags.clone(),
    }
}

#[cfg(test)]
mod tests;
