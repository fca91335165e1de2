//! SWIM probing, the three roles of it: this node's own probe of one neighbour
//! (a ping, one retry, then indirect pings through other neighbours before it
//! accuses anyone), the intermediary's pending relays, and the target's budget of
//! signed answers to indirect pings.
//!
//! An intermediary cannot vouch for a dead node: the answer it relays is signed
//! by the target over the requester's nonce ([`super::signing::indirect_ack_payload`]),
//! and the requester checks that signature. An intermediary can only stay
//! silent, which leaves the requester where it was without indirect probes: it
//! accuses, and a live target refutes.
//!
//! Pure data and rules; the state machine ([`super::state`]) sends the messages.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::state::Peer;
use super::wire::IndirectAck;

/// Probes of different neighbours this node runs at once: as many as it has
/// neighbours with the default 4 rings. A new one starts every round while
/// fewer are pending: in a healthy mesh each ends within a round, so this
/// changes nothing; when a partition leaves most neighbours unreachable, their
/// probes overlap instead of queueing one after another, and a node cut off
/// from most of the mesh walks its rings to the members on its side sooner
/// (300 nodes, a tenth cut off: that side saw the rest dead after 35 s rather
/// than 45 s with 3 at once).
pub const MAX_PROBES: usize = 8;
/// Pings sent at once when a probe's first ping went unanswered. Each
/// indirect probe brings the target messages from three members that are not
/// its neighbours (and each intermediary one), so in a large mesh the few
/// members probed indirectly several times in one connection lifetime talk to
/// more peers than the overlay bounds: at 10,000 nodes, 1% loss and ten
/// minutes, one node reached 17. Two pings at the retry (as QUIC sends two
/// probe packets when its probe timer fires, RFC 9002 §6.2.4) make an
/// indirect probe need three lost round trips instead of two: about 50 times
/// rarer at 1% loss, for one more ping and ack in every fiftieth probe.
pub const RETRY_PINGS: usize = 2;
/// Intermediaries asked for an indirect probe (SWIM's `k`).
pub const INDIRECT_PROBES: usize = 3;
/// Most indirect pings this node relays at once, for all requesters.
pub const MAX_RELAYS: usize = 16;
/// Most indirect pings this node relays at once for one requester.
pub const MAX_RELAYS_PER_REQUESTER: usize = 2;
/// Most indirect pings this node answers (each costs a signature) per round.
pub const MAX_INDIRECT_ACKS_PER_ROUND: u32 = 8;

/// Where this node's probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The first ping is out.
    Direct,
    /// The ping was sent again ([`RETRY_PINGS`] times): one lost datagram must
    /// not become an accusation that every member hears and the target
    /// refutes.
    Retried,
    /// Other neighbours were asked to ping the target: a broken path between
    /// this node and the target must not become an accusation either.
    Indirect,
}

/// This node's probe of one neighbour.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The member probed.
    pub target: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The nonce its answers must carry.
    pub nonce: u64,
    /// When the current stage gives up.
    pub deadline: Instant,
    /// The current stage.
    pub stage: Stage,
}

/// What a probe's deadline leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ping the target again.
    Retry,
    /// Ask intermediaries to ping the target.
    Indirect,
    /// Accuse the target.
    Accuse,
}

impl Probe {
    /// A probe of `target` started at `now`, waiting `wait` for the answer.
    pub fn new(target: &Peer, nonce: u64, now: Instant, wait: Duration) -> Probe {
        Probe {
            target: target.name.clone(),
            addr: target.addr,
            nonce,
            deadline: now + wait,
            stage: Stage::Direct,
        }
    }

    /// The target, as a peer to send to.
    pub fn peer(&self) -> Peer {
        Peer {
            name: self.target.clone(),
            addr: self.addr,
        }
    }

    /// Moves to the next stage at its deadline, now `now`; each later stage
    /// waits `wait`.
    pub fn advance(&mut self, now: Instant, wait: Duration) -> Next {
        let (stage, next) = match self.stage {
            Stage::Direct => (Stage::Retried, Next::Retry),
            Stage::Retried => (Stage::Indirect, Next::Indirect),
            Stage::Indirect => return Next::Accuse,
        };
        self.stage = stage;
        self.deadline = now + wait;
        next
    }

    /// Skips to indirect probes (this node cannot reach the target at all).
    pub fn skip_to_indirect(&mut self, now: Instant, wait: Duration) {
        self.stage = Stage::Indirect;
        self.deadline = now + wait;
    }

    /// Whether `ack` answers this probe.
    pub fn answered_by(&self, ack: &IndirectAck, me: &str) -> bool {
        ack.target == self.target && ack.nonce == self.nonce && ack.requester == me
    }
}

#[derive(Debug, Clone)]
struct Relay {
    nonce: u64,
    requester: Peer,
    target: String,
    until: Instant,
}

/// The indirect pings this node sent for others, awaiting the target's answer.
#[derive(Debug, Default)]
pub struct Relays {
    pending: VecDeque<Relay>,
}

impl Relays {
    /// Records a relay of `requester`'s probe (`nonce`) of `target`, kept until
    /// `until`; `false` (nothing recorded) beyond the caps.
    pub fn admit(
        &mut self,
        requester: &Peer,
        nonce: u64,
        target: &str,
        now: Instant,
        until: Instant,
    ) -> bool {
        self.pending.retain(|r| r.until > now);
        let theirs = self
            .pending
            .iter()
            .filter(|r| r.requester.name == requester.name)
            .count();
        if self.pending.len() >= MAX_RELAYS || theirs >= MAX_RELAYS_PER_REQUESTER {
            return false;
        }
        self.pending.push_back(Relay {
            nonce,
            requester: requester.clone(),
            target: target.to_string(),
            until,
        });
        true
    }

    /// The requester to pass `ack` (from `from`) on to, once; `None` if it
    /// answers no pending relay.
    pub fn take(&mut self, ack: &IndirectAck, from: &str, now: Instant) -> Option<Peer> {
        let i = self.position(ack, from, now)?;
        self.pending.remove(i).map(|r| r.requester)
    }

    fn position(&self, ack: &IndirectAck, from: &str, now: Instant) -> Option<usize> {
        self.pending.iter().position(|r| {
            r.until > now
                && r.nonce == ack.nonce
                && r.target == from
                && ack.target == from
                && r.requester.name == ack.requester
        })
    }

    /// Forgets the relays of or to `name`.
    pub fn forget(&mut self, name: &str) {
        self.pending
            .retain(|r| r.requester.name != name && r.target != name);
    }
}

/// How many indirect pings this node still answers this round.
#[derive(Debug, Default)]
pub struct AckBudget {
    round: u64,
    used: u32,
}

impl AckBudget {
    /// Takes one answer from round `round`'s budget; `false` when spent.
    pub fn take(&mut self, round: u64) -> bool {
        if self.round != round {
            (self.round, self.used) = (round, 0);
        }
        if self.used >= MAX_INDIRECT_ACKS_PER_ROUND {
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, port: u16) -> Peer {
        Peer {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn ack(requester: &str, target: &str, nonce: u64) -> IndirectAck {
        IndirectAck {
            nonce,
            requester: requester.into(),
            target: target.into(),
            signature: vec![1],
        }
    }

    #[test]
    fn a_probe_pings_retries_asks_others_then_accuses() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(400);
        let mut p = Probe::new(&peer("b", 2), 7, t0, Duration::from_millis(800));
        assert_eq!(p.deadline, t0 + Duration::from_millis(800));
        assert_eq!(p.advance(p.deadline, wait), Next::Retry);
        assert_eq!(p.stage, Stage::Retried);
        assert_eq!(p.advance(p.deadline, wait), Next::Indirect);
        assert_eq!(p.stage, Stage::Indirect);
        assert_eq!(p.deadline, t0 + Duration::from_millis(1600));
        assert_eq!(p.advance(p.deadline, wait), Next::Accuse);
    }

    #[test]
    fn an_unreachable_target_goes_straight_to_indirect_probes() {
        let t0 = Instant::now();
        let mut p = Probe::new(&peer("b", 2), 7, t0, Duration::from_secs(1));
        p.skip_to_indirect(t0, Duration::from_millis(400));
        assert_eq!(p.stage, Stage::Indirect);
        assert_eq!(p.advance(p.deadline, Duration::ZERO), Next::Accuse);
    }

    #[test]
    fn only_the_targets_answer_to_this_nodes_nonce_counts() {
        let p = Probe::new(&peer("b", 2), 7, Instant::now(), Duration::from_secs(1));
        assert!(p.answered_by(&ack("a", "b", 7), "a"));
        assert!(!p.answered_by(&ack("a", "b", 8), "a"), "other nonce");
        assert!(!p.answered_by(&ack("a", "c", 7), "a"), "other target");
        assert!(!p.answered_by(&ack("x", "b", 7), "a"), "other requester");
    }

    #[test]
    fn relays_pass_the_targets_answer_once_to_the_requester() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        let mut relays = Relays::default();
        assert!(relays.admit(&peer("a", 1), 7, "b", t0, until));
        // Only from the target, for the requester and nonce recorded.
        assert!(relays.take(&ack("a", "b", 7), "c", t0).is_none());
        assert!(relays.take(&ack("a", "b", 8), "b", t0).is_none());
        assert!(relays.take(&ack("x", "b", 7), "b", t0).is_none());
        assert_eq!(relays.take(&ack("a", "b", 7), "b", t0), Some(peer("a", 1)));
        assert!(relays.take(&ack("a", "b", 7), "b", t0).is_none(), "once");
    }

    #[test]
    fn relays_expire_and_are_capped_per_requester_and_in_all() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        let mut relays = Relays::default();
        for n in 0..MAX_RELAYS_PER_REQUESTER as u64 {
            assert!(relays.admit(&peer("a", 1), n, "b", t0, until));
        }
        assert!(!relays.admit(&peer("a", 1), 99, "b", t0, until));
        for i in 0..(MAX_RELAYS - MAX_RELAYS_PER_REQUESTER) {
            let requester = peer(&format!("r{i}"), 10 + i as u16);
            assert!(relays.admit(&requester, 1, "b", t0, until));
        }
        assert!(!relays.admit(&peer("z", 9), 1, "b", t0, until), "full");
        // Expired relays make room, and no longer match.
        assert!(relays.take(&ack("a", "b", 0), "b", until).is_none());
        assert!(relays.admit(&peer("z", 9), 1, "b", until, until + Duration::from_secs(1)));
    }

    #[test]
    fn the_answer_budget_is_per_round() {
        let mut budget = AckBudget::default();
        for _ in 0..MAX_INDIRECT_ACKS_PER_ROUND {
            assert!(budget.take(1));
        }
        assert!(!budget.take(1));
        assert!(budget.take(2));
    }
}
