//! Which inbound QUIC connection attempts the endpoint takes, before any
//! handshake work: at most `node.max_connections` open in all and
//! `node.max_connections_per_address` from one peer address (a node's QUIC
//! endpoint); and once more than `node.retry_handshakes_above` attempts a second
//! arrive from addresses not yet validated, the next ones must first prove
//! their address with a QUIC Retry (so a flood from spoofed addresses costs this
//! node a stateless packet each, not a handshake).
//!
//! A pure state machine on the caller's clock: [`IncomingGate::judge`] says what
//! to do with an attempt, and an accepted one holds its place until
//! [`IncomingGate::closed`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The limits, from `[node]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLimits {
    /// Connections open at once, accepted or being accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_per_address: usize,
    /// Attempts from unvalidated addresses per second before Retry is required.
    pub retry_above: u32,
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handshake; the attempt holds a place until [`IncomingGate::closed`].
    Accept,
    /// Ask the client to prove its address first (QUIC Retry).
    Retry,
    /// Refuse (QUIC `CONNECTION_REFUSED`), for this reason (a metric label).
    Refuse(&'static str),
}

/// Reasons of `shoal_quic_incoming_refused_total`.
pub const REFUSAL_REASONS: [&str; 2] = ["too_many_connections", "too_many_from_address"];

/// The window handshake attempts are counted in.
const WINDOW: Duration = Duration::from_secs(1);

/// Connections open by peer address, and attempts in the current window.
#[derive(Debug)]
pub struct IncomingGate {
    limits: IncomingLimits,
    open: HashMap<SocketAddr, usize>,
    total: usize,
    window: Option<(Instant, u32)>,
}

impl IncomingLimits {
    /// The defaults of `node.max_connections`, `node.max_connections_per_address`
    /// and `node.retry_handshakes_above`.
    pub const DEFAULT: IncomingLimits = IncomingLimits {
        max_connections: 4096,
        max_per_address: 64,
        retry_above: 256,
    };
}

impl IncomingGate {
    /// A gate with nothing open.
    pub fn new(limits: IncomingLimits) -> IncomingGate {
        IncomingGate {
            limits,
            open: HashMap::new(),
            total: 0,
            window: None,
        }
    }

    /// Judges an attempt from `remote` (`validated`: it already answered a
    /// Retry) at `now`; an accepted attempt is counted open.
    pub fn judge(&mut self, remote: SocketAddr, validated: bool, now: Instant) -> Verdict {
        if self.total >= self.limits.max_connections {
            return Verdict::Refuse(REFUSAL_REASONS[0]);
        }
        if self.open.get(&remote).copied().unwrap_or(0) >= self.limits.max_per_address {
            return Verdict::Refuse(REFUSAL_REASONS[1]);
        }
        if !validated && self.attempt(now) > self.limits.retry_above {
            return Verdict::Retry;
        }
        *self.open.entry(remote).or_default() += 1;
        self.total += 1;
        Verdict::Accept
    }

    /// Counts an unvalidated attempt in the current window; returns how many
    /// the window holds with it.
    fn attempt(&mut self, now: Instant) -> u32 {
        let (start, count) = match self.window {
            Some((start, count)) if now.saturating_duration_since(start) < WINDOW => {
                (start, count + 1)
            }
            _ => (now, 1),
        };
        self.window = Some((start, count));
        count
    }

    /// Replaces the limits; what is open counts against the new ones.
    pub fn set_limits(&mut self, limits: IncomingLimits) {
        self.limits = limits;
    }

    /// An accepted connection from `remote` closed (or its handshake failed).
    pub fn closed(&mut self, remote: SocketAddr) {
        if let Some(n) = self.open.get_mut(&remote) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&remote);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn gate(max_connections: usize, max_per_address: usize, retry_above: u32) -> IncomingGate {
        IncomingGate::new(IncomingLimits {
            max_connections,
            max_per_address,
            retry_above,
        })
    }

    #[test]
    fn one_address_gets_its_share_and_a_closed_connection_frees_a_place() {
        let mut g = gate(100, 2, 1000);
        let now = Instant::now();
        assert_eq!(g.judge(addr(1), false, now), Verdict::Accept);
        assert_eq!(g.judge(addr(1), false, now), Verdict::Accept);
        assert_eq!(
            g.judge(addr(1), false, now),
            Verdict::Refuse("too_many_from_address")
        );
        assert_eq!(
            g.judge(addr(2), false, now),
            Verdict::Accept,
            "others are not affected"
        );
        g.closed(addr(1));
        assert_eq!(g.judge(addr(1), false, now), Verdict::Accept);
        assert_eq!(g.open(), 3);
    }

    #[test]
    fn the_total_cap_refuses_every_address() {
        let mut g = gate(3, 10, 1000);
        let now = Instant::now();
        for port in 1..=3 {
            assert_eq!(g.judge(addr(port), false, now), Verdict::Accept);
        }
        assert_eq!(
            g.judge(addr(4), true, now),
            Verdict::Refuse("too_many_connections")
        );
        g.closed(addr(2));
        assert_eq!(g.judge(addr(4), true, now), Verdict::Accept);
        // A close for an address with nothing open changes nothing.
        g.closed(addr(9));
        assert_eq!(g.open(), 3);
    }

    #[test]
    fn above_the_handshake_rate_unvalidated_attempts_must_retry() {
        let mut g = gate(100, 100, 2);
        let t0 = Instant::now();
        assert_eq!(g.judge(addr(1), false, t0), Verdict::Accept);
        assert_eq!(g.judge(addr(2), false, t0), Verdict::Accept);
        assert_eq!(g.judge(addr(3), false, t0), Verdict::Retry);
        // Having answered the Retry, it is taken.
        assert_eq!(g.judge(addr(3), true, t0), Verdict::Accept);
        // A new window starts a second later.
        let t1 = t0 + WINDOW;
        assert_eq!(g.judge(addr(4), false, t1), Verdict::Accept);
        // A retry is not counted open.
        assert_eq!(g.open(), 4);
    }

    #[test]
    fn zero_means_every_unvalidated_attempt_retries() {
        let mut g = gate(100, 100, 0);
        let now = Instant::now();
        assert_eq!(g.judge(addr(1), false, now), Verdict::Retry);
        assert_eq!(g.judge(addr(1), true, now), Verdict::Accept);
    }
}
