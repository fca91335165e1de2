//! Which inbound QUIC connection attempts the endpoint takes, before any
//! handshake work: at most `node.max_connections` open in all,
//! `node.max_connections_per_address` from one peer host, and
//! `node.max_handshakes` still in their handshake, an eighth of those (at least
//! 2) from one host (an IPv6 host by its /64 here). An attempt from an address
//! not yet validated must first prove it with a QUIC Retry once more than
//! `node.retry_handshakes_above` such attempts arrive in a second, or once half
//! the handshake places are taken: a flood from spoofed addresses — fast, or
//! slow enough to stay under the rate — then costs this node a stateless packet
//! each, never a handshake place, and only peers that can receive at their
//! address compete for the places.
//!
//! A peer host is its IP address, so one host cannot take more places by using
//! more ports. An IPv6 peer is its full address too: hosts of one LAN share a
//! /64, and grouping by it would refuse honest neighbours (a host with a whole
//! /64 can take more places; `node.max_connections` still bounds them all). A
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
pub const REFUSAL_REASONS: [&str; 4] = [
    "too_many_connections",
    "too_many_from_address",
    "too_many_handshakes",
    "too_many_handshakes_from_address",
];

/// The `shoal_quic_incoming_refused_total` reason of a handshake dropped for
/// taking longer than [`super::ACCEPT_HANDSHAKE_TIMEOUT`].
pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";

/// The window handshake attempts are counted in.
const WINDOW: Duration = Duration::from_secs(1);

/// What connections are counted by for `node.max_connections_per_address`: the
/// peer's IP address (an IPv4-mapped IPv6 address as IPv4), or, on loopback, its
/// address and port (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerHost(IpAddr, u16);

impl PeerHost {
    /// The host `remote` counts against.
    pub fn of(remote: SocketAddr) -> PeerHost {
        let ip = remote.ip().to_canonical();
        if ip.is_loopback() {
            return PeerHost(ip, remote.port());
        }
        PeerHost(ip, 0)
    }
}

/// What handshakes in progress are counted by, per host: as [`PeerHost`], but
/// an IPv6 host by its /64 (handshakes are short, so neighbours sharing a /64
/// lose little, and one host holding a whole /64 gains nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HandshakeHost(IpAddr, u16);

impl HandshakeHost {
    fn of(remote: SocketAddr) -> HandshakeHost {
        let PeerHost(ip, port) = PeerHost::of(remote);
        match ip {
            IpAddr::V6(v6) if !ip.is_loopback() => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                HandshakeHost(IpAddr::V6(Ipv6Addr::from(prefix)), 0)
            }
            _ => HandshakeHost(ip, port),
        }
    }
}

/// Connections open by peer host, handshakes in progress (in all and by
/// host), and attempts in the current window.
#[derive(Debug)]
pub struct IncomingGate {
    limits: IncomingLimits,
    open: HashMap<PeerHost, usize>,
    total: usize,
    handshaking: usize,
    handshaking_by: HashMap<HandshakeHost, usize>,
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
            handshaking_by: HashMap::new(),
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
        if !validated && (self.attempt(now) > self.limits.retry_above || self.half_full()) {
            return Verdict::Retry;
        }
        if self.handshaking >= self.limits.max_handshakes {
            return Verdict::Refuse(REFUSAL_REASONS[2]);
        }
        let shaking = HandshakeHost::of(remote);
        if self.handshaking_by.get(&shaking).copied().unwrap_or(0) >= self.per_host_handshakes() {
            return Verdict::Refuse(REFUSAL_REASONS[3]);
        }
        *self.open.entry(host).or_default() += 1;
        *self.handshaking_by.entry(shaking).or_default() += 1;
        self.total += 1;
        self.handshaking += 1;
        Verdict::Accept
    }

    /// Handshakes one host may have in progress: an eighth of the places (at
    /// least 2), so a few hosts with real addresses — which answer a Retry —
    /// cannot take them all.
    fn per_host_handshakes(&self) -> usize {
        (self.limits.max_handshakes / 8).max(2)
    }

    /// Half the handshake places (rounded up) are taken: from here on only
    /// validated addresses may take the rest.
    fn half_full(&self) -> bool {
        self.handshaking >= self.limits.max_handshakes.div_ceil(2)
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

    /// An accepted connection from `remote` finished its handshake.
    pub fn established(&mut self, remote: SocketAddr) {
        self.handshaking = self.handshaking.saturating_sub(1);
        let host = HandshakeHost::of(remote);
        if let Some(n) = self.handshaking_by.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.handshaking_by.remove(&host);
            }
        }
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
                self.established(remote);
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
        // IPv6 neighbours on one LAN share a /64 and are still told apart.
        for host in 1..=3 {
            let a = remote(&format!("[2001:db8::{host}]:1"));
            assert_eq!(g.judge(a, true, now), Verdict::Accept);
        }
        assert_eq!(
            g.judge(remote("[2001:db8::1]:2"), true, now),
            Verdict::Accept
        );
        assert_eq!(
            g.judge(remote("[2001:db8::1]:3"), true, now),
            Verdict::Refuse("too_many_from_address")
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
        g.established(addr(1));
        assert_eq!(g.handshaking(), 1);
        assert_eq!(
            g.judge(addr(3), false, now),
            Verdict::Retry,
            "with half the places taken, an unvalidated address proves itself first"
        );
        assert_eq!(g.judge(addr(3), true, now), Verdict::Accept);
        // A handshake that fails gives both places back.
        g.closed(addr(3), true);
        assert_eq!((g.open(), g.handshaking()), (2, 1));
        // An established connection closing leaves the handshakes alone.
        g.closed(addr(1), false);
        assert_eq!((g.open(), g.handshaking()), (1, 1));
    }

    #[test]
    fn a_slow_spoofed_flood_never_takes_a_handshake_place_beyond_half() {
        // Far under the Retry rate, but never finishing its handshakes.
        let mut g = IncomingGate::new(IncomingLimits {
            max_connections: 10_000,
            max_per_address: 100,
            max_handshakes: 128,
            retry_above: 1000,
        });
        let t0 = Instant::now();
        let spoofed = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 9));
        let mut taken = 0;
        for i in 0..1000 {
            if g.judge(spoofed(i), false, t0 + WINDOW * i) == Verdict::Accept {
                taken += 1;
            }
        }
        assert_eq!(
            taken, 64,
            "half the places, then Retry for every spoofed address"
        );
        // A peer that answers the Retry still gets a place.
        assert_eq!(g.judge(addr(7), true, t0), Verdict::Accept);
    }

    #[test]
    fn one_host_answering_retries_takes_only_its_share_of_the_handshake_places() {
        let mut g = IncomingGate::new(IncomingLimits {
            max_connections: 10_000,
            max_per_address: 1000,
            max_handshakes: 128,
            retry_above: 1000,
        });
        let now = Instant::now();
        let remote = |text: &str| text.parse::<SocketAddr>().unwrap();
        // A /64 of addresses, each validated: 16 handshakes (128 / 8), no more.
        let taken = (1..=100)
            .filter(|i| {
                g.judge(remote(&format!("[2001:db8::{i}]:1")), true, now) == Verdict::Accept
            })
            .count();
        assert_eq!(taken, 16);
        assert_eq!(
            g.judge(remote("[2001:db8::200]:1"), true, now),
            Verdict::Refuse("too_many_handshakes_from_address")
        );
        // Another host is not affected; one finished handshake frees a place.
        assert_eq!(g.judge(remote("10.0.0.1:1"), true, now), Verdict::Accept);
        g.established(remote("[2001:db8::1]:1"));
        assert_eq!(
            g.judge(remote("[2001:db8::200]:1"), true, now),
            Verdict::Accept
        );
        // Established connections count against the per-address cap only.
        assert_eq!(g.handshaking(), 17);
    }
}
