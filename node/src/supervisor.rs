//! Long-running tasks, supervised: each is started from a factory, and when it
//! ends while the node is not stopping — it returned, panicked or was aborted —
//! the supervisor logs it, counts it (`shoal_task_restarts_total{task}`), waits a
//! backoff (100 ms doubling to 5 s, back to 100 ms after a minute of good
//! running) and starts it again. While a task is down, [`Supervisor::down`]
//! names it and `/readyz` answers 503.
//!
//! Tasks keep their state outside the future (in `Arc`s), so a restart resumes
//! where the last run stopped. A task the node no longer wants (a listener or
//! health check a config reload removed) is retired: stopped for good, not
//! restarted ([`Supervisor::retire`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::metrics::Metrics;

/// First wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run this long resets the backoff.
const GOOD_RUN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Shared {
    down: BTreeSet<String>,
    running: BTreeMap<String, AbortHandle>,
}

/// Starts and restarts the node's tasks.
#[derive(Debug)]
pub struct Supervisor {
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
    /// Each task's supervising loop, by name.
    loops: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl Supervisor {
    /// A supervisor whose tasks stop for good once `stop` turns true.
    pub fn new(metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> Supervisor {
        Supervisor {
            metrics,
            stop,
            shared: Arc::default(),
            loops: Mutex::default(),
        }
    }

    /// The node's stop signal, for the tasks this supervisor runs.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Runs `make()` as task `name`, and again whenever it ends before the node
    /// stops.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let metrics = self.metrics.clone();
        let shared = self.shared.clone();
        let mut stop = self.stop.clone();
        let key = name.clone();
        let supervising = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = tokio::time::Instant::now();
                let run = tokio::spawn(make());
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.running.insert(name.clone(), run.abort_handle());
                    s.down.remove(&name);
                }
                let outcome = run.await;
                if *stop.borrow() {
                    return;
                }
                let how = match &outcome {
                    Ok(()) => "returned".to_string(),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(_) => "was aborted".to_string(),
                };
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .down
                    .insert(name.clone());
                metrics.task_restarted(&name);
                if started.elapsed() >= GOOD_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(task = %name, how = %how, restart_in = ?backoff, "a node task ended unexpectedly; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, supervising);
    }

    /// Stops task `name` for good (it is not restarted) and waits until it
    /// has ended and dropped what it held (a listener's socket, say). False
    /// if no such task runs.
    pub async fn retire(&self, name: &str) -> bool {
        let Some(supervising) = self
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        else {
            return false;
        };
        supervising.abort();
        let _ = supervising.await;
        let run = {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.down.remove(name);
            s.running.remove(name)
        };
        if let Some(run) = run {
            run.abort();
            while !run.is_finished() {
                tokio::task::yield_now().await;
            }
        }
        true
    }

    /// The tasks that are down (ended, waiting to be restarted).
    pub fn down(&self) -> Vec<String> {
        self.health().down()
    }

    /// A handle readers (the admin API) keep to ask which tasks are down.
    pub fn health(&self) -> TaskHealth {
        TaskHealth(self.shared.clone())
    }

    /// Aborts the current run of task `name` (as a crash would); the supervisor
    /// restarts it. Returns whether such a task runs.
    pub fn abort(&self, name: &str) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match s.running.get(name) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Stops every task (after `stop` was sent) and waits for them.
    pub async fn shutdown(&self) {
        let running: Vec<AbortHandle> = {
            let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.running.values().cloned().collect()
        };
        let loops = std::mem::take(&mut *self.loops.lock().unwrap_or_else(|e| e.into_inner()));
        for h in loops.values() {
            h.abort();
        }
        for h in running {
            h.abort();
        }
        for (_, h) in loops {
            let _ = h.await;
        }
    }
}

/// Which supervised tasks are down, for readiness.
#[derive(Debug, Clone)]
pub struct TaskHealth(Arc<Mutex<Shared>>);

impl TaskHealth {
    /// The tasks that are down.
    pub fn down(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .down
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_counted_and_restarted() {
        let metrics = Arc::new(Metrics::new());
        let (stop_tx, stop) = watch::channel(false);
        let sup = Supervisor::new(metrics.clone(), stop);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        let health = sup.health();
        for _ in 0..100 {
            if runs.load(Ordering::SeqCst) >= 3 && health.down().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(health.down().is_empty());
        let text = metrics.encode();
        assert!(
            text.contains("shoal_task_restarts_total{task=\"flaky\"} 2"),
            "{text}"
        );
        // An abort is a crash too.
        assert!(sup.abort("flaky"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(health.down(), ["flaky"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(health.down().is_empty());
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        stop_tx.send(true).unwrap();
        sup.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_end_because_the_node_stops_are_not_restarted() {
        let metrics = Arc::new(Metrics::new());
        let (stop_tx, stop) = watch::channel(false);
        let sup = Supervisor::new(metrics.clone(), stop.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.spawn("worker", move || {
            let (r, mut stop) = (r.clone(), stop.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let _ = stop.changed().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop_tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!metrics.encode().contains("task=\"worker\""));
        sup.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_task_ends_for_good_and_drops_what_it_held() {
        let metrics = Arc::new(Metrics::new());
        let (_stop_tx, stop) = watch::channel(false);
        let sup = Supervisor::new(metrics.clone(), stop);
        let held = Arc::new(());
        let h = held.clone();
        sup.spawn("listener:old", move || {
            let h = h.clone();
            async move {
                let _h = h;
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(Arc::strong_count(&held), 3, "the factory's and the run's");
        assert!(sup.retire("listener:old").await);
        assert_eq!(Arc::strong_count(&held), 1, "both dropped once retired");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(sup.down().is_empty(), "not down, not restarted");
        assert!(
            !metrics.encode().contains("listener:old"),
            "no restart counted"
        );
        assert!(!sup.retire("listener:old").await, "already gone");
    }
}
