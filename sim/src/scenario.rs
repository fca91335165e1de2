//! Scenarios as data: a TOML file describing the mesh to start (nodes, the
//! services they host, the listeners they offer) and a list of timed steps (add,
//! kill, restart, pause, resume, partition, heal, loss, traffic, health, wait,
//! expect). Parsing and checking happen here; running is `runner.rs`.
//!
//! ```toml
//! name = "demo"
//! [mesh]
//! nodes = 5
//! [[mesh.service]]
//! name = "echo"
//! on = ["n1", "n2"]
//! [[mesh.listener]]
//! service = "echo"
//! on = ["n3", "n4", "n5"]
//! [[step]]
//! action = "wait"
//! until = "converged"
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in the report.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed for everything random in the run (loss, traffic spacing).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The mesh at the start.
    pub mesh: MeshSpec,
    /// What happens, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

fn default_seed() -> u64 {
    1
}

/// The mesh a scenario starts with.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// Nodes started at the beginning, named `n1` .. `nN`.
    pub nodes: usize,
    /// Zones, assigned round robin (`n1` gets the first).
    #[serde(default = "default_zones")]
    pub zones: Vec<String>,
    /// Gossip interval of every node.
    #[serde(default = "default_gossip", with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Health-check interval of every backend.
    #[serde(default = "default_health", with = "humantime_serde")]
    pub health_interval: Duration,
    /// How many nodes every new node is given as seeds (the first ones).
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// Services and the nodes hosting them.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// Listeners and the nodes offering them.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSpec>,
}

fn default_zones() -> Vec<String> {
    vec!["zone-a".into()]
}
fn default_gossip() -> Duration {
    Duration::from_millis(250)
}
fn default_health() -> Duration {
    Duration::from_millis(500)
}
fn default_seeds() -> usize {
    1
}

/// A service of the mesh: a demo backend on each listed node.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// `echo` (TCP: answers with the node name, then echoes) or `http` (answers
    /// `GET` with the node name).
    #[serde(default = "default_kind")]
    pub kind: BackendKind,
    /// Nodes hosting it (`"all"` for every node, including ones added later).
    pub on: Vec<String>,
    /// Tunnelled connections each backend takes at once, all of them from one
    /// caller if need be (the service's `max_connections` and
    /// `max_connections_per_caller`); the node's defaults when unset.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_kind() -> BackendKind {
    BackendKind::Echo
}

/// What a demo backend speaks.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// TCP: writes `<node>\n`, then echoes.
    Echo,
    /// HTTP/1.1: answers every request with `<node>\n`.
    Http,
}

/// A listener of the mesh.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Service it leads to.
    pub service: String,
    /// Nodes offering it (`"all"` for every node).
    pub on: Vec<String>,
    /// Load-balancing policy.
    #[serde(default = "default_lb")]
    pub lb: String,
    /// What the listener speaks: `tcp` (default; carries each connection as
    /// bytes) or `http` (parses each request and sends it on a stream of its
    /// own; the service must be an `http` one).
    #[serde(default)]
    pub protocol: ListenerProtocol,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// A TCP listener.
    #[default]
    Tcp,
    /// An HTTP listener.
    Http,
}

impl ListenerProtocol {
    /// The node config's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Http => "http",
        }
    }
}

fn default_lb() -> String {
    "round_robin".into()
}

/// One step.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// Start new nodes (named `n{N+1}`...); they host services whose `on` is `all`.
    Add {
        /// How many.
        #[serde(default = "one")]
        count: usize,
    },
    /// Stop a node abruptly (in processes mode: SIGKILL).
    Kill {
        /// The node.
        node: String,
    },
    /// Start a killed or stopped node again, same name and certificate, new generation.
    Restart {
        /// The node.
        node: String,
    },
    /// Stop a node gracefully (drain, then leave).
    Stop {
        /// The node.
        node: String,
    },
    /// Freeze a node (in-process: its network goes silent; processes: SIGSTOP).
    Pause {
        /// The node.
        node: String,
    },
    /// Unfreeze a node.
    Resume {
        /// The node.
        node: String,
    },
    /// Cut these nodes off from all the others.
    Partition {
        /// One side; the other side is everyone else.
        nodes: Vec<String>,
    },
    /// Remove every partition.
    Heal,
    /// Apply a route document (docs/routing.md's schema, durations as in the
    /// config; `issued_at_ms` is set when it is applied), signed with an
    /// operator certificate of the mesh's CA, through the first running node;
    /// the step ends once every running node routes by it. HTTP listeners
    /// route by it (the traffic's requests carry `Host: sim`).
    Route {
        /// The document, as a table.
        document: serde_json::Value,
    },
    /// Drop a share of the datagrams to and from a node (0 clears it).
    Loss {
        /// The node.
        node: String,
        /// Percent, 0 to 100.
        percent: f64,
    },
    /// Start (or, with rate 0, stop) traffic to a service through its listeners.
    Traffic {
        /// The service.
        service: String,
        /// Requests per second, spread over the listener nodes.
        rate: f64,
    },
    /// Make a service's backend on a node fail (or recover) its health checks and
    /// its requests.
    Health {
        /// The service.
        service: String,
        /// The node.
        node: String,
        /// Healthy or not.
        healthy: bool,
    },
    /// Wait a fixed time, or until a condition holds.
    Wait {
        /// A fixed time.
        #[serde(default, rename = "for", with = "humantime_serde")]
        duration: Option<Duration>,
        /// A condition: `converged` (every running node sees every running node
        /// alive and every endpoint), `healthy` (every running node sees every
        /// endpoint of every service healthy).
        #[serde(default)]
        until: Option<Condition>,
        /// Bound for `until`.
        #[serde(default = "default_wait_timeout", with = "humantime_serde")]
        timeout: Duration,
    },
    /// Watch a quiet mesh for a while and count false deaths: a running node seen
    /// not alive by another running node.
    Steady {
        /// How long.
        #[serde(rename = "for", with = "humantime_serde")]
        duration: Duration,
    },
    /// Leave the mesh alone for a while, without polling it, and measure what
    /// membership costs when nothing changes: gossip bytes sent and process CPU
    /// time (in-process mode), per node per second.
    Quiet {
        /// How long.
        #[serde(rename = "for", with = "humantime_serde")]
        duration: Duration,
    },
    /// Check the run so far; a failed expectation makes the run fail.
    Expect {
        /// At most this many failed requests since the start.
        #[serde(default)]
        max_failed: Option<u64>,
        /// At most this share (percent) of failed requests.
        #[serde(default)]
        max_failed_percent: Option<f64>,
        /// At least this many successful requests.
        #[serde(default)]
        min_ok: Option<u64>,
        /// The mesh is converged now.
        #[serde(default)]
        converged: Option<bool>,
        /// Every running node's p99 latency of requests so far is at most this.
        #[serde(default, with = "humantime_serde")]
        max_p99: Option<Duration>,
        /// At most this many false deaths seen by `steady` steps so far.
        #[serde(default)]
        max_false_deaths: Option<u64>,
    },
}

fn one() -> usize {
    1
}
fn default_wait_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A condition to wait for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Every running node sees every running node alive, every killed or stopped
    /// node gone, and every endpoint of the running hosts.
    Converged,
    /// As `converged`, and every endpoint healthy.
    Healthy,
}

/// Why a scenario is unusable.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// TOML or schema error.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml says.
        message: String,
    },
    /// A semantic error.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Where.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        scenario.check(origin)?;
        Ok(scenario)
    }

    /// Node names at the start.
    pub fn initial_nodes(&self) -> Vec<String> {
        (1..=self.mesh.nodes).map(|i| format!("n{i}")).collect()
    }

    /// How many nodes can ever exist: the initial ones plus every `add`.
    pub fn most_nodes(&self) -> usize {
        let added: usize = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Add { count } => *count,
                _ => 0,
            })
            .sum();
        self.mesh.nodes + added
    }

    fn check(&self, origin: &str) -> Result<(), ScenarioError> {
        let mut check = Check {
            origin,
            scenario: self,
            known: BTreeSet::new(),
            services: BTreeSet::new(),
        };
        check.mesh()?;
        check.services()?;
        check.listeners()?;
        for (i, step) in self.steps.iter().enumerate() {
            check.step(format!("step[{i}]"), step)?;
        }
        Ok(())
    }
}

/// The checks of a scenario, each refusal naming its field.
struct Check<'a> {
    origin: &'a str,
    scenario: &'a Scenario,
    /// Every node name that can ever exist: initial ones plus added ones.
    known: BTreeSet<String>,
    /// The services defined so far.
    services: BTreeSet<String>,
}

impl Check<'_> {
    fn bad(&self, field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.origin.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The mesh's size and zones; the node names they make.
    fn mesh(&mut self) -> Result<(), ScenarioError> {
        let mesh = &self.scenario.mesh;
        if mesh.nodes == 0 {
            return Err(self.bad("mesh.nodes", "must be at least 1"));
        }
        if mesh.zones.is_empty() {
            return Err(self.bad("mesh.zones", "needs at least one zone"));
        }
        for z in &mesh.zones {
            mesh_proto::names::validate_name("zone", z)
                .map_err(|e| self.bad("mesh.zones", e.to_string()))?;
        }
        self.known = (1..=self.scenario.most_nodes())
            .map(|i| format!("n{i}"))
            .collect();
        Ok(())
    }

    /// `on = [...]`: `all` or known nodes.
    fn on(&self, field: String, nodes: &[String]) -> Result<(), ScenarioError> {
        match nodes
            .iter()
            .find(|n| *n != "all" && !self.known.contains(*n))
        {
            Some(n) => Err(self.bad(field, format!("unknown node {n:?}"))),
            None => Ok(()),
        }
    }

    fn node(&self, field: &str, node: &String) -> Result<(), ScenarioError> {
        if self.known.contains(node) {
            Ok(())
        } else {
            Err(self.bad(field, format!("unknown node {node:?}")))
        }
    }

    fn service(&self, field: &str, service: &String) -> Result<(), ScenarioError> {
        if self.services.contains(service) {
            Ok(())
        } else {
            Err(self.bad(field, format!("unknown service {service:?}")))
        }
    }

    fn services(&mut self) -> Result<(), ScenarioError> {
        for (i, s) in self.scenario.mesh.services.iter().enumerate() {
            mesh_proto::names::validate_name("service name", &s.name)
                .map_err(|e| self.bad(format!("mesh.service[{i}].name"), e.to_string()))?;
            if !self.services.insert(s.name.clone()) {
                return Err(self.bad(format!("mesh.service[{i}].name"), "listed twice"));
            }
            self.on(format!("mesh.service[{i}].on"), &s.on)?;
        }
        Ok(())
    }

    fn listeners(&self) -> Result<(), ScenarioError> {
        let mesh = &self.scenario.mesh;
        for (i, l) in mesh.listeners.iter().enumerate() {
            self.service(&format!("mesh.listener[{i}].service"), &l.service)?;
            if l.protocol == ListenerProtocol::Http
                && mesh
                    .services
                    .iter()
                    .any(|s| s.name == l.service && s.kind != BackendKind::Http)
            {
                return Err(self.bad(
                    format!("mesh.listener[{i}].protocol"),
                    format!(
                        "an http listener needs an http service; {:?} is not one",
                        l.service
                    ),
                ));
            }
            if l.lb.parse::<mesh_proto::lb::Policy>().is_err() {
                return Err(self.bad(
                    format!("mesh.listener[{i}].lb"),
                    format!("{:?}: use round_robin, least_request or ring_hash", l.lb),
                ));
            }
            self.on(format!("mesh.listener[{i}].on"), &l.on)?;
        }
        Ok(())
    }

    fn step(&self, field: String, step: &Step) -> Result<(), ScenarioError> {
        match step {
            Step::Kill { node }
            | Step::Restart { node }
            | Step::Stop { node }
            | Step::Pause { node }
            | Step::Resume { node } => self.node(&field, node),
            Step::Partition { nodes } => {
                if nodes.is_empty() {
                    return Err(self.bad(field, "partition needs at least one node"));
                }
                nodes.iter().try_for_each(|n| self.node(&field, n))
            }
            Step::Loss { node, percent } => {
                self.node(&field, node)?;
                if !(0.0..=100.0).contains(percent) {
                    return Err(
                        self.bad(field, format!("percent {percent} is not between 0 and 100"))
                    );
                }
                Ok(())
            }
            Step::Traffic { service, rate } => self.traffic(field, service, *rate),
            Step::Health { service, node, .. } => {
                self.node(&field, node)?;
                self.service(&field, service)
            }
            Step::Wait {
                duration, until, ..
            } if duration.is_some() == until.is_some() => {
                Err(self.bad(field, "give exactly one of `for` and `until`"))
            }
            Step::Add { count: 0 } => Err(self.bad(field, "count must be at least 1")),
            Step::Steady { duration } | Step::Quiet { duration } if duration.is_zero() => {
                Err(self.bad(field, "`for` must be longer than 0"))
            }
            Step::Route { document } => self.route(field, document),
            Step::Wait { .. }
            | Step::Add { .. }
            | Step::Steady { .. }
            | Step::Quiet { .. }
            | Step::Heal
            | Step::Expect { .. } => Ok(()),
        }
    }

    fn traffic(&self, field: String, service: &String, rate: f64) -> Result<(), ScenarioError> {
        self.service(&field, service)?;
        if !self
            .scenario
            .mesh
            .listeners
            .iter()
            .any(|l| l.service == *service)
        {
            return Err(self.bad(field, format!("no listener leads to {service:?}")));
        }
        if !(0.0..=100_000.0).contains(&rate) {
            return Err(self.bad(field, format!("rate {rate} is not between 0 and 100000")));
        }
        Ok(())
    }

    /// A route document: valid, and sending only to defined services.
    fn route(&self, field: String, document: &serde_json::Value) -> Result<(), ScenarioError> {
        let spec = route_spec(document, 0).map_err(|e| self.bad(field.clone(), e))?;
        match spec
            .rules
            .iter()
            .flat_map(|r| &r.backends)
            .find(|b| !self.services.contains(&b.service))
        {
            Some(b) => Err(self.bad(
                field,
                format!(
                    "the route sends to {:?}, which no [[mesh.service]] defines",
                    b.service
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The route document of a `route` step, stamped `issued_at_ms` and
/// validated.
pub fn route_spec(
    document: &serde_json::Value,
    issued_at_ms: u64,
) -> Result<mesh_proto::route::RouteSpec, String> {
    let mut document = document.clone();
    shoal_node::routes::durations_as_written(&mut document)?;
    if let Some(fields) = document.as_object_mut() {
        fields.insert("issued_at_ms".into(), issued_at_ms.into());
    }
    let spec: mesh_proto::route::RouteSpec =
        serde_json::from_value(document).map_err(|e| format!("document: {e}"))?;
    spec.validate().map_err(|e| format!("document: {e}"))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
[mesh]
nodes = 3
[[mesh.service]]
name = "echo"
on = ["n1"]
[[mesh.listener]]
service = "echo"
on = ["n2", "n3"]
[[step]]
action = "wait"
until = "converged"
[[step]]
action = "traffic"
service = "echo"
rate = 10
[[step]]
action = "kill"
node = "n1"
[[step]]
action = "add"
count = 2
[[step]]
action = "partition"
nodes = ["n5"]
[[step]]
action = "wait"
for = "2s"
[[step]]
action = "expect"
max_failed = 3
max_p99 = "500ms"
"#;

    #[test]
    fn an_http_listener_needs_an_http_service() {
        let bad = OK.replace(
            "[[mesh.listener]]\nservice = \"echo\"",
            "[[mesh.listener]]\nservice = \"echo\"\nprotocol = \"http\"",
        );
        let e = Scenario::parse(&bad, "t").unwrap_err().to_string();
        assert!(e.contains("mesh.listener[0].protocol"), "{e}");
        assert!(e.contains("needs an http service"), "{e}");
    }

    #[test]
    fn parses_every_kind_of_step() {
        let s = Scenario::parse(OK, "t.toml").unwrap();
        assert_eq!(s.mesh.nodes, 3);
        assert_eq!(s.steps.len(), 7);
        assert_eq!(s.steps[3], Step::Add { count: 2 });
        assert_eq!(
            s.steps[5],
            Step::Wait {
                duration: Some(Duration::from_secs(2)),
                until: None,
                timeout: Duration::from_secs(60)
            }
        );
        assert_eq!(s.initial_nodes(), ["n1", "n2", "n3"]);
    }

    #[test]
    fn refuses_what_cannot_run_and_names_the_place() {
        for (text, needle) in [
            (
                OK.replace("node = \"n1\"", "node = \"n9\""),
                "unknown node \"n9\"",
            ),
            (OK.replace("action = \"heal\"", "x"), ""),
            (OK.replace("rate = 10", "rate = -1"), "rate -1"),
            (
                OK.replace(
                    "until = \"converged\"",
                    "until = \"converged\"\nfor = \"1s\"",
                ),
                "exactly one",
            ),
            (OK.replace("nodes = 3", "nodes = 0"), "mesh.nodes"),
            (
                OK.replace("action = \"kill\"", "action = \"explode\""),
                "explode",
            ),
            (
                OK.replace(
                    "service = \"echo\"\non = [\"n2\"",
                    "service = \"nope\"\non = [\"n2\"",
                ),
                "unknown service",
            ),
            (
                OK.replace("name = \"t\"", "name = \"t\"\ncolor = 1"),
                "color",
            ),
        ] {
            if needle.is_empty() {
                continue;
            }
            let e = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(e.starts_with("t.toml"), "{e}");
        }
    }
}
