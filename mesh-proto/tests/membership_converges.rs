//! Property: whatever is lost on the way — random loss rates, partitions of
//! random sides, single broken paths, in any sequence, while members keep
//! changing their records — once messages flow again every node converges:
//! every running member up in every view and every node holding the same
//! records (the same state summary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_proto::gossip::Health;
use mesh_proto::membership::Timing;
use mesh_proto::membership::sim::Network;
use proptest::prelude::*;

const NODES: usize = 6;

/// One stretch of trouble.
#[derive(Debug, Clone)]
struct Phase {
    /// How long it lasts, in rounds.
    rounds: u32,
    /// Message loss during it, in percent.
    loss_percent: u32,
    /// Nodes cut off from the others (none: no partition).
    side: Vec<bool>,
    /// Single broken paths.
    cuts: Vec<(usize, usize)>,
    /// A node that flips its service's health during the phase.
    flip: Option<usize>,
}

fn phase() -> impl Strategy<Value = Phase> {
    (
        1..40u32,
        prop_oneof![Just(0u32), 1..30u32, Just(100u32)],
        proptest::collection::vec(proptest::bool::weighted(0.2), NODES),
        proptest::collection::vec((0..NODES, 0..NODES), 0..4),
        proptest::option::of(0..NODES),
    )
        .prop_map(|(rounds, loss_percent, side, cuts, flip)| Phase {
            rounds,
            loss_percent,
            side,
            cuts,
            flip,
        })
}

fn name(i: usize) -> String {
    format!("n{i}")
}

fn same_state_everywhere(net: &Network) -> bool {
    let summaries: Vec<(u32, u64)> = net
        .names()
        .iter()
        .filter_map(|n| net.node(n))
        .filter(|n| n.running)
        .map(|n| n.membership.state_summary())
        .collect();
    summaries.windows(2).all(|w| w[0] == w[1]) && summaries[0].0 as usize == NODES
}

fn apply(net: &mut Network, p: &Phase, healthy: &mut [bool]) {
    net.set_loss(f64::from(p.loss_percent) / 100.0);
    let side: Vec<String> = (0..NODES).filter(|i| p.side[*i]).map(name).collect();
    let side: Vec<&str> = side.iter().map(String::as_str).collect();
    net.partition(&side);
    for (a, b) in &p.cuts {
        if a != b {
            net.cut_link(&name(*a), &name(*b));
        }
    }
    if let Some(i) = p.flip {
        healthy[i] = !healthy[i];
        let h = if healthy[i] {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        net.set_health(&name(i), "web", h);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_loss_pattern_converges_once_messages_flow_again(
        phases in proptest::collection::vec(phase(), 1..6),
        seed in any::<u64>(),
    ) {
        let timing = Timing::from_interval(Duration::from_millis(100));
        let mut net = Network::new(timing.clone(), seed);
        net.record_events = false;
        for i in 0..NODES {
            net.add(&name(i), &["web"]);
        }
        prop_assert!(net.run_until(Duration::from_secs(30), Network::converged));
        let mut healthy = vec![true; NODES];
        for p in &phases {
            apply(&mut net, p, &mut healthy);
            net.run_for(timing.interval * p.rounds);
            net.heal();
        }
        net.set_loss(0.0);
        // Bounded by the suspicion and anti-entropy timers, not by luck: a node
        // declared dead refutes within a few rounds of hearing of it, and
        // anti-entropy repairs every difference within a few exchanges.
        let whole = net.run_until(Duration::from_secs(60), |net| {
            net.converged() && same_state_everywhere(net)
        });
        prop_assert!(whole, "not converged 60 s after the trouble ended");
    }
}
