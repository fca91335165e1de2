//! What each scenario step does: one method per step kind, each starting the
//! watchers that measure the mesh's reaction to it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{
    Run, alive_everywhere, converged, gone_everywhere, health_seen, partition_seen, process_cpu_ms,
};
use crate::report::{Expectation, QuietCost, Timing};
use crate::scenario::{BackendKind, Condition, Step};
use crate::traffic::Generator;

/// How long a watcher waits for the mesh to react to one event.
const REACTION_BOUND: Duration = Duration::from_secs(120);
/// How long it waits for a wave of added nodes to be seen alive everywhere.
const WAVE_BOUND: Duration = Duration::from_secs(300);

/// The phase of the run a step begins, named for the report's per-phase
/// table; `None` for steps that change nothing in the mesh.
pub(super) fn phase_of(step: &Step) -> Option<String> {
    Some(match step {
        Step::Add { count } => format!("after adding {count}"),
        Step::Kill { node } => format!("after kill {node}"),
        Step::Stop { node } => format!("after stop {node}"),
        Step::Restart { node } => format!("after restart {node}"),
        Step::Pause { node } => format!("paused {node}"),
        Step::Resume { node } => format!("after resume {node}"),
        Step::Partition { nodes } => format!("partition {}", nodes.join(",")),
        Step::Heal => "after heal".to_string(),
        Step::Loss { node, percent } => format!("{percent}% loss on {node}"),
        Step::Health {
            service,
            node,
            healthy,
        } => format!(
            "{service}@{node} {}",
            if *healthy { "healthy" } else { "unhealthy" }
        ),
        _ => return None,
    })
}

fn human(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

impl Run {
    /// Runs step `i`.
    pub(super) async fn step(&mut self, i: usize, step: &Step) -> Result<()> {
        if let Some(phase) = phase_of(step) {
            self.phase_marks.push((self.epoch.elapsed(), phase));
        }
        match step {
            Step::Add { count } => self.add(*count).await?,
            Step::Kill { node } => self.kill(node).await?,
            Step::Stop { node } => self.stop(node).await?,
            Step::Restart { node } => self.restart(node).await?,
            Step::Pause { node } => self.pause(node).await?,
            Step::Resume { node } => self.resume(node).await?,
            Step::Partition { nodes } => self.partition(nodes).await?,
            Step::Heal => self.heal().await?,
            Step::Route { document } => self.route(document).await?,
            Step::Loss { node, percent } => {
                self.note(&format!("{percent}% packet loss on {node}"));
                self.mesh.read().await.loss(node, *percent)?;
            }
            Step::Traffic { service, rate } => self.traffic(service, *rate)?,
            Step::Health {
                service,
                node,
                healthy,
            } => self.health(service, node, *healthy).await?,
            Step::Wait {
                duration,
                until,
                timeout,
            } => self.wait(*duration, *until, *timeout).await?,
            Step::Steady { duration } => self.steady(*duration).await,
            Step::Quiet { duration } => self.quiet(*duration).await,
            Step::Expect { .. } => self.expect(i, step).await,
        }
        Ok(())
    }

    fn push_timing(&self, timing: Timing) {
        self.timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(timing);
    }

    /// Watches until every running node sees every one of `nodes` alive.
    fn watch_alive(&mut self, event: String, what: &str, nodes: Vec<String>, bound: Duration) {
        self.watch(event, what, bound, move |m| {
            let nodes = nodes.clone();
            async move { alive_everywhere(&*m.read().await, &nodes).await }
        });
    }

    /// Watches until no running node sees `node` alive or routes to it.
    fn watch_gone(&mut self, event: String, what: &str, node: &str) {
        let node = node.to_string();
        self.watch(event, what, REACTION_BOUND, move |m| {
            let node = node.clone();
            async move { gone_everywhere(&*m.read().await, &node).await }
        });
    }

    /// Starts `count` nodes, one after the other, and watches the wave with one
    /// watcher (a watcher per node would poll the mesh `count` times over).
    async fn add(&mut self, count: usize) -> Result<()> {
        let mut added = Vec::with_capacity(count);
        for _ in 0..count {
            let name = format!("n{}", self.mesh.read().await.names().len() + 1);
            self.note(&format!("adding {name}"));
            self.mesh.write().await.add(&name).await?;
            added.push(name);
        }
        let (event, what) = match added.as_slice() {
            [one] => (format!("added {one}"), "seen alive by every node"),
            [first, .., last] => (
                format!("added {first}..{last}"),
                "all seen alive by every node",
            ),
            [] => return Ok(()),
        };
        self.watch_alive(event, what, added, WAVE_BOUND);
        self.max_nodes = self.max_nodes.max(self.mesh.read().await.names().len());
        self.refresh_targets().await;
        Ok(())
    }

    async fn kill(&mut self, node: &str) -> Result<()> {
        self.note(&format!(
            "killing {node} abruptly: its connections die without a word; callers must hedge to other endpoints, and gossip must declare it dead"
        ));
        self.mesh.write().await.kill(node).await?;
        self.faults
            .push((self.epoch.elapsed(), vec![node.to_string()]));
        self.refresh_targets().await;
        self.watch_gone(format!("killed {node}"), "dropped by every node", node);
        Ok(())
    }

    async fn stop(&mut self, node: &str) -> Result<()> {
        self.note(&format!("stopping {node} gracefully"));
        self.faults
            .push((self.epoch.elapsed(), vec![node.to_string()]));
        self.watch_gone(
            format!("stopped {node}"),
            "gone from every routing table",
            node,
        );
        self.mesh.write().await.stop(node).await?;
        self.refresh_targets().await;
        Ok(())
    }

    async fn restart(&mut self, node: &str) -> Result<()> {
        self.note(&format!(
            "restarting {node} (same name and certificate, a new generation): every node must see it alive, and it serves again"
        ));
        self.mesh.write().await.start(node).await?;
        self.refresh_targets().await;
        self.watch_alive(
            format!("restarted {node}"),
            "seen alive by every node",
            vec![node.to_string()],
            REACTION_BOUND,
        );
        Ok(())
    }

    async fn pause(&mut self, node: &str) -> Result<()> {
        self.note(&format!("pausing {node}"));
        self.mesh.write().await.pause(node).await?;
        self.faults
            .push((self.epoch.elapsed(), vec![node.to_string()]));
        self.refresh_targets().await;
        self.watch_gone(format!("paused {node}"), "seen dead by every node", node);
        Ok(())
    }

    async fn resume(&mut self, node: &str) -> Result<()> {
        // The pause's watcher polls; if the node is seen dead now, record it
        // before the resume ends that, whatever the poll's phase.
        if gone_everywhere(&*self.mesh.read().await, node).await {
            self.settle(&format!("paused {node}"));
        }
        self.note(&format!("resuming {node}"));
        self.mesh.write().await.resume(node).await?;
        self.refresh_targets().await;
        self.watch_alive(
            format!("resumed {node}"),
            "seen alive by every node",
            vec![node.to_string()],
            REACTION_BOUND,
        );
        Ok(())
    }

    async fn partition(&mut self, nodes: &[String]) -> Result<()> {
        self.note(&format!(
            "cutting {} off from the rest (every datagram dropped, both ways): callers must hedge, and each side must declare the other dead",
            nodes.join(", ")
        ));
        self.mesh.read().await.partition(nodes)?;
        self.faults.push((self.epoch.elapsed(), nodes.to_vec()));
        let side = nodes.to_vec();
        self.watch(
            format!("partition {}", nodes.join(",")),
            "both sides see the other dead",
            REACTION_BOUND,
            move |m| {
                let side = side.clone();
                async move { partition_seen(&*m.read().await, &side).await }
            },
        );
        Ok(())
    }

    async fn heal(&mut self) -> Result<()> {
        self.note(
            "healing every partition: the sides must see each other alive and converge again",
        );
        self.mesh.read().await.heal()?;
        self.watch(
            "healed".into(),
            "converged again",
            REACTION_BOUND,
            |m| async move { converged(&*m.read().await, false).await },
        );
        Ok(())
    }

    /// Starts (or, with rate 0, stops) traffic to `service`.
    fn traffic(&mut self, service: &str, rate: f64) -> Result<()> {
        if let Some(g) = self.generators.remove(service) {
            g.stop();
        }
        let starts = rate > 0.0;
        if !starts {
            self.note(&format!("traffic to {service} stopped"));
            return Ok(());
        }
        self.note(&format!("traffic: {rate} requests/s to {service}"));
        let Some(tx) = self.targets.get(service) else {
            bail!("no listener leads to {service}");
        };
        let kind = self
            .kinds
            .get(service)
            .copied()
            .unwrap_or(BackendKind::Echo);
        let g = Generator::start(
            service.to_string(),
            kind,
            rate,
            tx.subscribe(),
            self.stats.clone(),
            self.epoch,
        );
        self.generators.insert(service.to_string(), g);
        Ok(())
    }

    /// Makes `service` on `node` healthy or not, and watches its own node, then
    /// every node, see it.
    async fn health(&mut self, service: &str, node: &str, healthy: bool) -> Result<()> {
        let state = if healthy { "healthy" } else { "unhealthy" };
        self.note(&format!("{service} on {node} becomes {state}"));
        self.mesh
            .write()
            .await
            .set_health(service, node, healthy)
            .await?;
        for (what, own) in [
            ("seen by its own node", true),
            ("seen by every node", false),
        ] {
            let (s, n) = (service.to_string(), node.to_string());
            self.watch(
                format!("{service}@{node} {state}"),
                what,
                REACTION_BOUND,
                move |m| {
                    let (s, n) = (s.clone(), n.clone());
                    async move { health_seen(&*m.read().await, &s, &n, state, own).await }
                },
            );
        }
        Ok(())
    }

    async fn wait(
        &mut self,
        duration: Option<Duration>,
        until: Option<Condition>,
        timeout: Duration,
    ) -> Result<()> {
        if let Some(d) = duration {
            self.note(&format!("waiting {}", human(d)));
            tokio::time::sleep(d).await;
        }
        let Some(cond) = until else {
            return Ok(());
        };
        let what = match cond {
            Condition::Converged => "converged",
            Condition::Healthy => "healthy",
        };
        self.note(&format!("waiting until the mesh is {what}"));
        let at = self.epoch.elapsed();
        let took = self.wait_until(cond, timeout).await?;
        let nodes = self.mesh.read().await.running().len();
        self.push_timing(Timing {
            event: format!("wait ({nodes} nodes)"),
            at_s: at.as_secs_f64(),
            what: what.to_string(),
            after_s: Some(took.as_secs_f64()),
        });
        Ok(())
    }

    async fn steady(&mut self, duration: Duration) {
        self.note(&format!(
            "watching for false deaths for {}",
            human(duration)
        ));
        let at = self.epoch.elapsed();
        let found = self.watch_steady(duration).await;
        self.false_deaths += found;
        let nodes = self.mesh.read().await.running().len();
        self.push_timing(Timing {
            event: format!("steady ({nodes} nodes)"),
            at_s: at.as_secs_f64(),
            what: format!("false deaths: {found}"),
            after_s: Some(duration.as_secs_f64()),
        });
    }

    /// Leaves the mesh alone for `duration` and measures what it cost.
    async fn quiet(&mut self, duration: Duration) {
        self.note(&format!("measuring a quiet mesh for {}", human(duration)));
        let (nodes, bytes0, in_process) = {
            let mesh = self.mesh.read().await;
            let in_process = mesh.network().is_some();
            (
                mesh.running().len(),
                mesh.gossip_bytes_sent().await,
                in_process,
            )
        };
        let cpu0 = process_cpu_ms();
        let start = Instant::now();
        tokio::time::sleep(duration).await;
        let seconds = start.elapsed().as_secs_f64();
        let cpu1 = process_cpu_ms();
        let (bytes1, (connections, _)) = {
            let mesh = self.mesh.read().await;
            (
                mesh.gossip_bytes_sent().await,
                mesh.max_gossip_connections().await,
            )
        };
        let node_seconds = nodes.max(1) as f64 * seconds;
        let cost = QuietCost {
            nodes,
            seconds,
            gossip_bytes_per_node_per_s: bytes1.saturating_sub(bytes0) as f64 / node_seconds,
            cpu_ms_per_node_per_s: match (in_process, cpu0, cpu1) {
                (true, Some(a), Some(b)) => Some((b - a) / node_seconds),
                _ => None,
            },
            max_connections_per_node: connections,
        };
        self.push_timing(Timing {
            event: format!("quiet ({nodes} nodes)"),
            at_s: self.epoch.elapsed().as_secs_f64() - seconds,
            what: format!(
                "{:.2} KB/s gossip per node",
                cost.gossip_bytes_per_node_per_s / 1000.0
            ),
            after_s: Some(seconds),
        });
        self.quiet = Some(cost);
    }

    /// Checks the run so far against an `expect` step (step `i`).
    async fn expect(&mut self, i: usize, step: &Step) {
        let Step::Expect {
            max_failed,
            max_failed_percent,
            min_ok,
            converged: want_converged,
            max_p99,
            max_false_deaths,
        } = step
        else {
            return;
        };
        let summary = self.stats.summary(Duration::ZERO, Duration::MAX);
        let mut checks: Vec<(String, String, bool)> = Vec::new();
        if let Some(m) = max_failed {
            checks.push((
                format!("at most {m} failed requests"),
                format!("{} failed", summary.failed),
                summary.failed <= *m,
            ));
        }
        if let Some(p) = max_failed_percent {
            checks.push((
                format!("at most {p}% failed requests"),
                format!(
                    "{:.2}% failed ({} of {})",
                    summary.failed_percent(),
                    summary.failed,
                    summary.sent
                ),
                summary.failed_percent() <= *p,
            ));
        }
        if let Some(m) = min_ok {
            checks.push((
                format!("at least {m} successful requests"),
                format!("{} ok", summary.ok),
                summary.ok >= *m,
            ));
        }
        if let Some(p) = max_p99 {
            let limit = p.as_secs_f64() * 1000.0;
            checks.push((
                format!("p99 latency at most {limit:.0} ms"),
                format!("p99 {:.1} ms", summary.p99_ms),
                summary.p99_ms <= limit,
            ));
        }
        if let Some(m) = max_false_deaths {
            let found = self.false_deaths;
            checks.push((
                format!("at most {m} false deaths"),
                format!("{found} false deaths"),
                found <= *m,
            ));
        }
        if let Some(want) = want_converged {
            let is = converged(&*self.mesh.read().await, false).await;
            checks.push((
                format!("converged = {want}"),
                format!("converged = {is}"),
                is == *want,
            ));
        }
        for (expected, found, passed) in checks {
            self.expectations.push(Expectation {
                step: i,
                expected,
                found,
                passed,
            });
        }
    }
}

impl Run {
    /// Applies a route document through the mesh (see [`Step::Route`]).
    async fn route(&mut self, document: &serde_json::Value) -> Result<()> {
        let spec = crate::scenario::route_spec(document, wall_ms())
            .map_err(|e| anyhow::anyhow!("route step: {e}"))?;
        let split: Vec<String> = spec
            .rules
            .iter()
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| format!("{} {}", b.service, b.weight))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .collect();
        self.note(&format!(
            "applying route {} for {} (signed by an operator of the mesh's CA): HTTP requests go {}; TCP listeners ignore routes",
            spec.name,
            spec.hosts.join(", "),
            split.join("; then ")
        ));
        let at = self.epoch.elapsed();
        self.mesh.read().await.apply_route(&spec).await?;
        self.note(&format!(
            "  -> route {}: in force on every running node after {:.2} s",
            spec.name,
            self.epoch.elapsed().saturating_sub(at).as_secs_f64()
        ));
        Ok(())
    }
}

/// Now, in ms since the Unix epoch (a route document's `issued_at_ms`).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
