//! Which inbound QUIC connection attempts the endpoint takes, before any
//! handshake work: at most `node.max_connections` open in all,
//! `node.max_connections_per_address` from one peer host, and
//! `node.max_handshakes` still in their handshake; and once more than
//! `node.retry_handshakes_above` attempts a second arrive from addresses not yet
//! validated, the next ones must first prove their address with a QUIC Retry (so
//! a flood from spoofed addresses costs this node a stateless packet each, not a
//! handshake).
//!
//! A peer host is its IP address — an IPv6 peer its /64, the block one host is
//! usually given — so one host cannot take more places by using more ports. A
//! loopback peer is a node on this very host, and several run side by side
//! (tests, the simulator): those are told apart by port.
//!
//! A pure state machine on the caller's clock: [`IncomingGate::judge`] says what
//! to do with an attempt; an accepted one holds its place until
//! [`IncomingGate::closed`], and counts as a handshake in progress until
//! [`IncomingGate::established`] (or its close).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The limits, from `[node]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLimits {
    /// Connections open at once, accepted or being accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer host ([`PeerHost`]).
    pub max_per_address: usize,
    /// Connections still in their handshake at once.
    pub max_handshakes: usize,
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
pub const REFUSAL_REASONS: [&str; 3] = [
    "too_many_connections",
    "too_many_from_address",
    "too_many_handshakes",
];

/// The `shoal_quic_incoming_refused_total` reason of a handshake dropped for
/// taking longer than [`super::ACCEPT_HANDSHAKE_TIMEOUT`].
pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";

/// The window handshake attempts are counted in.
const WINDOW: Duration = Duration::from_secs(1);

/// What connections are counted by for `node.max_connections_per_address`: the
/// peer's IP address (IPv4, or IPv4-mapped IPv6), its /64 (IPv6), or, on
/// loopback, its address and port (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerHost(IpAddr, u16);

impl PeerHost {
    /// The host `remote` counts against.
    pub fn of(remote: SocketAddr) -> PeerHost {
        let ip = remote.ip().to_canonical();
        if ip.is_loopback() {
            return PeerHost(ip, remote.port());
        }
        match ip {
            IpAddr::V4(_) => PeerHost(ip, 0),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                PeerHost(IpAddr::V6(Ipv6Addr::from(prefix)), 0)
            }
        }
    }
}

/// Connections open by peer host, handshakes in progress, and attempts in the
/// current window.
#[derive(Debug)]
pub struct IncomingGate {
    limits: IncomingLimits,
    open: HashMap<PeerHost, usize>,
    total: usize,
    handshaking: usize,
    window: Option<(Instant, u32)>,
}

impl IncomingLimits {
    /// The defaults of `node.max_connections`, `node.max_connections_per_address`,
    /// `node.max_handshakes` and `node.retry_handshakes_above`.
    pub const DEFAULT: IncomingLimits = IncomingLimits {
        max_connections: 4096,
        max_per_address: 64,
        max_handshakes: 128,
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
            handshaking: 0,
            window: None,
        }
    }

    /// Judges an attempt from `remote` (`validated`: it already answered a
    /// Retry) at `now`; an accepted attempt is counted open, and handshaking.
    pub fn judge(&mut self, remote: SocketAddr, validated: bool, now: Instant) -> Verdict {
        let host = PeerHost::of(remote);
        if self.total >= self.limits.max_connections {
            return Verdict::Refuse(REFUSAL_REASONS[0]);
        }
        if self.open.get(&host).copied().unwrap_or(0) >= self.limits.max_per_address {
            return Verdict::Refuse(REFUSAL_REASONS[1]);
        }
        if self.handshaking >= self.limits.max_handshakes {
            return Verdict::Refuse(REFUSAL_REASONS[2]);
        }
        if !validated && self.attempt(now) > self.limits.retry_above {
            return Verdict::Retry;
        }
        *self.open.entry(host).or_default() += 1;
        self.total += 1;
        self.handshaking += 1;
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

    /// An accepted connection finished its handshake.
    pub fn established(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// An accepted connection from `remote` closed (`handshaking`: before
    /// [`IncomingGate::established`], e.g. its handshake failed or timed out).
    pub fn closed(&mut self, remote: SocketAddr, handshaking: bool) {
        let host = PeerHost::of(remote);
        if let Some(n) = self.open.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&host);
            }
            self.total = self.total.saturating_sub(1);
            if handshaking {
                self.established();
            }
        }
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        self.total
    }

    /// Connections still in their handshake.
    pub fn handshaking(&self) -> usize {
        self.handshaking
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
            max_handshakes: 1000,
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
        g.closed(addr(1), false);
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
        g.closed(addr(2), false);
        assert_eq!(g.judge(addr(4), true, now), Verdict::Accept);
        // A close for an address with nothing open changes nothing.
        g.closed(addr(9), false);
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

    #[test]
    fn a_host_is_counted_by_its_address_not_its_ports() {
        let remote = |text: &str| text.parse::<SocketAddr>().unwrap();
        let mut g = gate(100, 2, 1000);
        let now = Instant::now();
        assert_eq!(g.judge(remote("10.0.0.5:4000"), true, now), Verdict::Accept);
        assert_eq!(g.judge(remote("10.0.0.5:4001"), true, now), Verdict::Accept);
        assert_eq!(
            g.judge(remote("10.0.0.5:4002"), true, now),
            Verdict::Refuse("too_many_from_address"),
            "a new port is the same host"
        );
        assert_eq!(
            g.judge(remote("[::ffff:10.0.0.5]:4003"), true, now),
            Verdict::Refuse("too_many_from_address"),
            "so is the same address mapped into IPv6"
        );
        // An IPv6 host is its /64.
        assert_eq!(
            g.judge(remote("[2001:db8::1]:1"), true, now),
            Verdict::Accept
        );
        assert_eq!(
            g.judge(remote("[2001:db8::2]:1"), true, now),
            Verdict::Accept
        );
        assert_eq!(
            g.judge(remote("[2001:db8::3]:1"), true, now),
            Verdict::Refuse("too_many_from_address")
        );
        assert_eq!(
            g.judge(remote("[2001:db8:0:1::1]:1"), true, now),
            Verdict::Accept
        );
        // Loopback peers are nodes of this host: told apart by port.
        for port in 1..=3 {
            assert_eq!(g.judge(addr(port), true, now), Verdict::Accept);
        }
        g.closed(remote("10.0.0.5:4000"), false);
        assert_eq!(g.judge(remote("10.0.0.5:5000"), true, now), Verdict::Accept);
    }

    #[test]
    fn handshakes_in_progress_are_capped_until_established_or_closed() {
        let mut g = IncomingGate::new(IncomingLimits {
            max_connections: 100,
            max_per_address: 100,
            max_handshakes: 2,
            retry_above: 1000,
        });
        let now = Instant::now();
        assert_eq!(g.judge(addr(1), true, now), Verdict::Accept);
        assert_eq!(g.judge(addr(2), true, now), Verdict::Accept);
        assert_eq!(
            g.judge(addr(3), true, now),
            Verdict::Refuse("too_many_handshakes")
        );
        g.established();
        assert_eq!(g.handshaking(), 1);
        assert_eq!(g.judge(addr(3), true, now), Verdict::Accept);
        // A handshake that fails gives both places back.
        g.closed(addr(3), true);
        assert_eq!((g.open(), g.handshaking()), (2, 1));
        // An established connection closing leaves the handshakes alone.
        g.closed(addr(1), false);
        assert_eq!((g.open(), g.handshaking()), (1, 1));
    }
}
