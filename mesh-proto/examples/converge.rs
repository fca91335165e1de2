//! The membership protocol on the discrete-event simulator
//! (`mesh_proto::membership::sim`): how long N nodes started together take to
//! converge and how many bytes that costs per node, then how long one change takes
//! to reach every node. `cargo run --release -p mesh-proto --example converge`.
//! The simulator models no CPU: compare with `sim/bench/gossip.sh`, which runs
//! real nodes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_proto::gossip::Health;
use mesh_proto::membership::{Timing, sim::Network};
fn main() {
    for n in [10usize, 100, 300, 1000] {
        let mut net = Network::new(Timing::default(), 1);
        net.set_latency(Duration::from_millis(5));
        net.record_events = false;
        for i in 0..n {
            net.add(&format!("n{i}"), &["web"]);
        }
        let t0 = net.elapsed();
        let ok = net.run_until(Duration::from_secs(120), |x| x.converged());
        let t = net.elapsed() - t0;
        let (m, b) = (net.stats.messages, net.stats.bytes);
        net.run_for(Duration::from_secs(5));
        let b0 = net.stats.bytes;
        net.set_health("n1", "web", Health::Unhealthy);
        let t1 = net.elapsed();
        let names = net.names();
        let spread = net.run_until(Duration::from_secs(30), |x| {
            names.iter().all(|o| {
                let v = x.node(o).unwrap().membership.view(x.now(), x.wall_ms());
                v.members.iter().any(|m| {
                    m.name == "n1" && m.services.iter().any(|s| s.health == Health::Unhealthy)
                })
            })
        });
        println!(
            "n={n} converged={ok} in {t:?} msgs={m} bytes/node={} ; change spread={spread} in {:?}, bytes/node={}",
            b / n as u64,
            net.elapsed() - t1,
            (net.stats.bytes - b0) / n as u64
        );
    }
}
