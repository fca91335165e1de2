//! A discrete-event network of [`Membership`] state machines on a simulated
//! clock: the real protocol code, thousands of nodes in one process, seconds of
//! simulated time in milliseconds of real time, and the same run every time for
//! the same seed.
//!
//! Messages are encoded and decoded as on the wire (so the codec and its limits
//! take part), delivered after a fixed latency, and dropped by partitions, by
//! dead nodes and by a seeded random loss. Nodes use the insecure [`ToyCrypto`];
//! a test plays a hostile member by injecting messages in a member's name with
//! [`Network::inject`].

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{decode_exact, encode};
use crate::gossip::{Health, NODE_KEY, NodeRecord, NodeState, ServiceRecord, service_key};
use crate::tunnel::Protocol;

use super::config::{Config, Limits, Timing};
use super::shared::SharedRecords;
use super::state::{Destination, Event, Membership, Peer};
use super::toy::ToyCrypto;
use super::wire::{Body, GossipMessage};

/// The simulated epoch in wall-clock milliseconds (2026-01-01).
pub const WALL_EPOCH_MS: u64 = 1_767_225_600_000;
/// Certificates issued by [`Network::add`] expire this long after the epoch.
const CERT_LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its state machine.
    pub membership: Membership<ToyCrypto>,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it runs (a killed node neither sends nor receives).
    pub running: bool,
    /// Events it produced, oldest first (kept when `record_events` is on).
    pub events: Vec<(Duration, Event)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    /// Reversed ordering: the heap pops the earliest delivery first.
    at: std::cmp::Reverse<(Duration, u64)>,
    from: String,
    to_addr: SocketAddr,
    to_name: Option<String>,
    bytes: Vec<u8>,
}

/// How long a gossip connection that carries nothing stays open: the node's
/// gossip pool idle time (`GOSSIP_POOL_IDLE` in the node's endpoint). Two nodes
/// that exchanged a message within this long count as connected.
pub const CONNECTION_IDLE: Duration = Duration::from_secs(15);

/// How long a connection to a node that stopped stays open: the node's QUIC
/// idle timeout (its keep-alives go unanswered).
pub const DEAD_CONNECTION_IDLE: Duration = Duration::from_secs(10);

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent (encoded frames).
    pub bytes: u64,
    /// Messages dropped (loss, partitions, dead or unknown receivers).
    pub dropped: u64,
    /// Times a node declared a running node dead.
    pub deaths_of_running: u64,
    /// Bytes sent, by what the message carried ([`kind_of`]).
    pub bytes_by_kind: BTreeMap<&'static str, u64>,
    /// Messages sent, by what they carried ([`kind_of`]).
    pub messages_by_kind: BTreeMap<&'static str, u64>,
}

/// What a message is, for [`Stats::bytes_by_kind`]: `ping`, `ack`, `sync_hash`,
/// `sync`, `ping_req`, `indirect_ping`, `indirect_ack`, `ihave`, `prune`,
/// `graft`, or for items what they
/// carry (`records` if any, else `suspicions` if any, else `documents`).
pub fn kind_of(body: &Body) -> &'static str {
    match body {
        Body::Ping(_) => "ping",
        Body::Ack(_) => "ack",
        Body::SyncHash(_) => "sync_hash",
        Body::Sync(_) => "sync",
        Body::Items(i) if !i.records.is_empty() => "records",
        Body::Items(i) if !i.suspicions.is_empty() => "suspicions",
        Body::Items(_) => "documents",
        Body::PingReq(_) => "ping_req",
        Body::IndirectPing(_) => "indirect_ping",
        Body::IndirectAck(_) => "indirect_ack",
        Body::Time(_) => "time",
        Body::TimeIs(_) => "time_is",
        Body::IHave(_) => "ihave",
        Body::Prune => "prune",
        Body::Graft(_) => "graft",
    }
}

/// The simulated network.
#[derive(Debug)]
pub struct Network {
    base: Instant,
    elapsed: Duration,
    ca_secret: u64,
    cluster: String,
    timing: Timing,
    limits: Limits,
    latency: Duration,
    loss_per_million: u64,
    rng: u64,
    seq: u64,
    nodes: BTreeMap<String, SimNode>,
    by_addr: HashMap<SocketAddr, String>,
    /// Each partition: a side, and the nodes it was cut from (every other
    /// node when it was made).
    partitions: Vec<(HashSet<String>, HashSet<String>)>,
    /// Single links cut, both ways.
    cut_links: BTreeSet<(String, String)>,
    queue: BinaryHeap<InFlight>,
    links: HashMap<(SocketAddr, SocketAddr), Duration>,
    /// Each running node's next timer, and a heap of them (entries that no
    /// longer match `timer_of` are stale and skipped).
    timer_of: HashMap<String, Duration>,
    timers: BinaryHeap<std::cmp::Reverse<(Duration, String)>>,
    touched: Vec<String>,
    /// Keep every event of every node (tests) or not (large runs).
    pub record_events: bool,
    /// Counters.
    pub stats: Stats,
    next_ip: u32,
    /// The records every node holds, held once between them.
    shared: Arc<SharedRecords<String>>,
    /// The node whose messages are kept in `watched` (see [`Network::watch`]).
    watching: Option<String>,
    watched: Vec<(Duration, Body)>,
}

impl Network {
    /// An empty network whose nodes gossip with `timing`; `seed` fixes every
    /// random choice.
    pub fn new(timing: Timing, seed: u64) -> Network {
        Network {
            base: Instant::now(),
            elapsed: Duration::ZERO,
            ca_secret: seed ^ 0x5eed,
            cluster: "sim".into(),
            timing,
            limits: Limits::default(),
            latency: Duration::from_millis(1),
            loss_per_million: 0,
            rng: seed | 1,
            seq: 0,
            nodes: BTreeMap::new(),
            by_addr: HashMap::new(),
            partitions: Vec::new(),
            cut_links: BTreeSet::new(),
            queue: BinaryHeap::new(),
            links: HashMap::new(),
            timer_of: HashMap::new(),
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            record_events: true,
            stats: Stats::default(),
            next_ip: 1,
            shared: Arc::default(),
            watching: None,
            watched: Vec::new(),
        }
    }

    /// The limits of the nodes added from now on (the defaults until set).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Keeps every message `name` sends from now on, lost or not (a test reads
    /// them with [`Network::sent_by_watched`]); one node at a time.
    pub fn watch(&mut self, name: &str) {
        self.watching = Some(name.to_string());
        self.watched.clear();
    }

    /// The messages the watched node sent, with when, oldest first.
    pub fn sent_by_watched(&self) -> &[(Duration, Body)] {
        &self.watched
    }

    /// The simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The simulated monotonic clock.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// The simulated wall clock, ms since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        WALL_EPOCH_MS + super::liveness::millis(self.elapsed)
    }

    /// Sets the one-way latency of every message.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    /// Drops each message with probability `loss` (0 to 1).
    pub fn set_loss(&mut self, loss: f64) {
        self.loss_per_million = (loss.clamp(0.0, 1.0) * 1e6) as u64;
    }

    /// The crypto of the simulated CA acting as `name` (what a member holding
    /// `name`'s key would have).
    pub fn crypto_of(&self, name: &str) -> ToyCrypto {
        ToyCrypto::new(self.ca_secret, name)
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn random(&mut self) -> u64 {
        super::state::splitmix64(&mut self.rng)
    }

    /// Starts a node called `name`, hosting `services` (healthy), seeded with the
    /// first node of the network (if any). Returns its address.
    pub fn add(&mut self, name: &str, services: &[&str]) -> SocketAddr {
        let seeds: Vec<SocketAddr> = self.nodes.values().take(3).map(|n| n.addr).collect();
        self.add_with_seeds(name, services, seeds)
    }

    /// [`Network::add`] with explicit seeds.
    pub fn add_with_seeds(
        &mut self,
        name: &str,
        services: &[&str],
        seeds: Vec<SocketAddr>,
    ) -> SocketAddr {
        let addr = match self.nodes.get(name) {
            Some(n) => n.addr,
            None => {
                let ip = Ipv4Addr::from(0x0a00_0000 + self.next_ip);
                self.next_ip += 1;
                SocketAddr::new(IpAddr::V4(ip), 7100)
            }
        };
        let generation = self.wall_ms();
        let config = Config {
            cluster: self.cluster.clone(),
            name: name.to_string(),
            generation,
            timing: self.timing.clone(),
            limits: self.limits.clone(),
        };
        let crypto = self.crypto_of(name);
        let cert = crypto.issue_node(name, services, WALL_EPOCH_MS + CERT_LIFETIME_MS);
        let seed = self.random();
        let (now, wall) = (self.now(), self.wall_ms());
        let mut m = Membership::new(config, crypto, seeds, seed, now);
        m.share_records(self.shared.clone());
        let started = m
            .publish_certificate(&cert, now, wall)
            .and_then(|()| m.publish(NODE_KEY, node_record(name, addr, generation), now, wall));
        debug_assert!(started.is_ok(), "{started:?}");
        for s in services {
            let _ = m.publish(
                &service_key(s),
                service_record(s, Health::Healthy),
                now,
                wall,
            );
        }
        self.by_addr.insert(addr, name.to_string());
        self.nodes.insert(
            name.to_string(),
            SimNode {
                membership: m,
                addr,
                running: true,
                events: Vec::new(),
            },
        );
        self.schedule(name);
        addr
    }

    /// Gives every running node every other running node's records, as if
    /// gossip had already spread them (see `Membership::adopt_settled`, in this crate only): a
    /// settled mesh without its cold start, which at 10,000 nodes is 10⁸
    /// records received and judged. Nothing is sent. Returns how many origins
    /// the nodes took between them.
    pub fn settle(&mut self) -> usize {
        let own: Vec<_> = self
            .nodes
            .values()
            .filter(|n| n.running)
            .filter_map(|n| n.membership.own_origin())
            .collect();
        let mut taken = 0;
        for n in self.nodes.values_mut().filter(|n| n.running) {
            taken += n.membership.adopt_settled(own.iter().cloned());
        }
        taken
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&SimNode> {
        self.nodes.get(name)
    }

    /// The node called `name`, to change it (what it then sends goes out on
    /// the next step).
    pub fn node_mut(&mut self, name: &str) -> Option<&mut SimNode> {
        self.touched.push(name.to_string());
        self.nodes.get_mut(name)
    }

    /// The names of every node, running or not.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Stops `name` abruptly.
    pub fn kill(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.running = false;
        }
    }

    /// Starts a stopped node again with the state it had (a paused process or
    /// virtual machine that resumes).
    pub fn resume(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.running = true;
        }
        self.schedule(name);
    }

    /// Cuts every link between `side` and the other nodes.
    pub fn partition(&mut self, side: &[&str]) {
        let side: HashSet<String> = side.iter().map(|s| s.to_string()).collect();
        let others = self
            .nodes
            .keys()
            .filter(|n| !side.contains(*n))
            .cloned()
            .collect();
        self.partitions.push((side, others));
    }

    /// Cuts the link between `a` and `b` only (both ways): a broken path, while
    /// both still reach everyone else.
    pub fn cut_link(&mut self, a: &str, b: &str) {
        self.cut_links.insert((a.to_string(), b.to_string()));
        self.cut_links.insert((b.to_string(), a.to_string()));
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.partitions.clear();
        self.cut_links.clear();
    }

    /// Whether a message from `from` to `to` is cut by a partition or a cut link.
    fn is_cut(&self, from: &str, to: &str) -> bool {
        let across = |(side, others): &(HashSet<String>, HashSet<String>)| {
            (side.contains(from) && others.contains(to))
                || (side.contains(to) && others.contains(from))
        };
        self.partitions.iter().any(across)
            || (!self.cut_links.is_empty()
                && self.cut_links.contains(&(from.to_string(), to.to_string())))
    }

    /// Publishes a health change of `service` on `name`.
    pub fn set_health(&mut self, name: &str, service: &str, health: Health) {
        let (now, wall) = (self.now(), self.wall_ms());
        if let Some(n) = self.nodes.get_mut(name) {
            let _ = n.membership.publish(
                &service_key(service),
                service_record(service, health),
                now,
                wall,
            );
        }
        self.flush(name);
    }

    /// Delivers `msg` to `to` as if `from` (a member's certificate name) had sent
    /// it from `from_addr`: how a test plays a hostile member.
    ///
    /// # Panics
    ///
    /// If `msg` cannot be encoded (over a size limit): no peer could send it,
    /// and a test injecting it would otherwise check nothing.
    pub fn inject(&mut self, from: &str, from_addr: SocketAddr, to: &str, msg: &GossipMessage) {
        let bytes = match encode(msg) {
            Ok(bytes) => bytes,
            Err(e) => {
                panic!("the injected message cannot be encoded, so no peer could send it: {e}")
            }
        };
        let (now, wall) = (self.now(), self.wall_ms());
        let elapsed = self.elapsed;
        let record = self.record_events;
        let Some(node) = self.nodes.get_mut(to) else {
            return;
        };
        let peer = Peer {
            name: from.to_string(),
            addr: from_addr,
        };
        match decode_exact::<GossipMessage>(&bytes) {
            Ok(m) => node.membership.handle_message(peer, m, now, wall),
            Err(_) => node.membership.refuse_malformed(from),
        }
        let died = drain_events(node, elapsed, record);
        self.count_deaths(died);
        self.flush(to);
    }

    /// Runs the network for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.elapsed + d;
        while let Some(next) = self.next_event_time() {
            if next > end {
                break;
            }
            self.elapsed = self.elapsed.max(next);
            self.step();
        }
        self.elapsed = end;
    }

    /// Runs until `cond` holds or `limit` of simulated time passed; returns
    /// whether it held, checking every `interval`/2.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Network) -> bool) -> bool {
        let tick = (self.timing.interval / 2).max(Duration::from_millis(1));
        let end = self.elapsed + limit;
        while self.elapsed < end {
            if cond(self) {
                return true;
            }
            self.run_for(tick);
        }
        cond(self)
    }

    /// Files `name`'s next timer (after anything may have changed it).
    fn schedule(&mut self, name: &str) {
        let Some(n) = self.nodes.get(name) else {
            return;
        };
        let at = n
            .membership
            .poll_timeout()
            .filter(|_| n.running)
            .map(|t| t.saturating_duration_since(self.base));
        match at {
            Some(at) if self.timer_of.get(name) != Some(&at) => {
                self.timer_of.insert(name.to_string(), at);
                self.timers.push(std::cmp::Reverse((at, name.to_string())));
            }
            Some(_) => {}
            None => {
                self.timer_of.remove(name);
            }
        }
    }

    fn next_timer(&mut self) -> Option<Duration> {
        while let Some(std::cmp::Reverse((at, name))) = self.timers.peek() {
            if self.timer_of.get(name) == Some(at) {
                return Some(*at);
            }
            self.timers.pop();
        }
        None
    }

    fn next_event_time(&mut self) -> Option<Duration> {
        for name in std::mem::take(&mut self.touched) {
            self.flush(&name);
        }
        let msg = self.queue.peek().map(|m| m.at.0.0);
        let timer = self.next_timer();
        match (msg, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn step(&mut self) {
        let (now, wall) = (self.now(), self.wall_ms());
        let elapsed = self.elapsed;
        let record = self.record_events;
        while self.queue.peek().is_some_and(|m| m.at.0.0 <= elapsed) {
            let Some(m) = self.queue.pop() else { break };
            self.deliver(m, now, wall);
        }
        let mut due: Vec<String> = Vec::new();
        while let Some(at) = self.next_timer()
            && at <= elapsed
        {
            if let Some(std::cmp::Reverse((_, name))) = self.timers.pop() {
                self.timer_of.remove(&name);
                due.push(name);
            }
        }
        for name in due {
            if !self.nodes.get(&name).is_some_and(|n| n.running) {
                continue;
            }
            let mut died = Vec::new();
            if let Some(n) = self.nodes.get_mut(&name) {
                n.membership.handle_timeout(now, wall);
                died = drain_events(n, elapsed, record);
            }
            self.count_deaths(died);
            self.flush(&name);
        }
    }

    fn deliver(&mut self, m: InFlight, now: Instant, wall: u64) {
        let elapsed = self.elapsed;
        let record = self.record_events;
        let Some(to) = self.by_addr.get(&m.to_addr).cloned() else {
            self.stats.dropped += 1;
            return;
        };
        let wrong_node = m.to_name.as_ref().is_some_and(|n| *n != to);
        let cut = self.is_cut(&m.from, &to);
        let from_addr = self.nodes.get(&m.from).map(|n| n.addr);
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if wrong_node || cut || !node.running || from_addr.is_none() {
            self.stats.dropped += 1;
            return;
        }
        let peer = Peer {
            name: m.from.clone(),
            addr: from_addr.unwrap_or(m.to_addr),
        };
        match decode_exact::<GossipMessage>(&m.bytes) {
            Ok(msg) => node.membership.handle_message(peer, msg, now, wall),
            Err(_) => node.membership.refuse_malformed(&m.from),
        }
        let died = drain_events(node, elapsed, record);
        let to_addr = node.addr;
        if let Some(from_addr) = from_addr {
            let pair = (from_addr.min(to_addr), from_addr.max(to_addr));
            self.links.insert(pair, elapsed);
        }
        self.count_deaths(died);
        self.flush(&to);
    }

    fn count_deaths(&mut self, died: Vec<String>) {
        for name in died {
            if self.nodes.get(&name).is_some_and(|n| n.running) {
                self.stats.deaths_of_running += 1;
            }
        }
    }

    /// The most gossip connections any node has: peers it exchanged a message
    /// with in the last [`CONNECTION_IDLE`] (a message delivered either way).
    ///
    /// A connection to a node that stopped closes sooner, after
    /// [`DEAD_CONNECTION_IDLE`] (QUIC's idle timeout: keep-alives go
    /// unanswered).
    pub fn max_connections(&mut self) -> usize {
        let now = self.elapsed;
        let stopped: BTreeSet<SocketAddr> = self
            .nodes
            .values()
            .filter(|n| !n.running)
            .map(|n| n.addr)
            .collect();
        self.links.retain(|(a, b), at| {
            let idle = if stopped.contains(a) || stopped.contains(b) {
                DEAD_CONNECTION_IDLE
            } else {
                CONNECTION_IDLE
            };
            now.saturating_sub(*at) < idle
        });
        let mut per: HashMap<SocketAddr, usize> = HashMap::new();
        for (a, b) in self.links.keys() {
            *per.entry(*a).or_default() += 1;
            *per.entry(*b).or_default() += 1;
        }
        per.values().copied().max().unwrap_or(0)
    }

    /// Forgets every connection (to measure from now on).
    pub fn reset_connections(&mut self) {
        self.links.clear();
    }

    /// Moves `name`'s outgoing messages onto the wire.
    fn flush(&mut self, name: &str) {
        self.schedule(name);
        let mut out = Vec::new();
        if let Some(n) = self.nodes.get_mut(name) {
            if !n.running {
                while n.membership.poll_transmit().is_some() {}
                return;
            }
            while let Some(t) = n.membership.poll_transmit() {
                out.push(t);
            }
        }
        for t in out {
            // A node must never produce a message over the wire's limits: the
            // simulator stops on it rather than hide the bug as a lost message.
            let bytes = match encode(&t.message) {
                Ok(bytes) => bytes,
                Err(e) => panic!("{name} produced a gossip message it cannot encode: {e}"),
            };
            self.stats.messages += 1;
            self.stats.bytes += bytes.len() as u64;
            let kind = kind_of(&t.message.body);
            if self.watching.as_deref() == Some(name) {
                self.watched.push((self.elapsed, t.message.body.clone()));
            }
            *self.stats.bytes_by_kind.entry(kind).or_default() += bytes.len() as u64;
            *self.stats.messages_by_kind.entry(kind).or_default() += 1;
            if self.loss_per_million > 0 && self.random() % 1_000_000 < self.loss_per_million {
                self.stats.dropped += 1;
                continue;
            }
            let (to_addr, to_name) = match t.to {
                Destination::Member(p) => (p.addr, Some(p.name)),
                Destination::Seed(a) => (a, None),
            };
            self.seq += 1;
            self.queue.push(InFlight {
                at: std::cmp::Reverse((self.elapsed + self.latency, self.seq)),
                from: name.to_string(),
                to_addr,
                to_name,
                bytes,
            });
        }
    }

    /// How many distinct records the nodes hold between them (each held once
    /// however many nodes hold it).
    pub fn distinct_records_held(&self) -> usize {
        self.shared.len()
    }

    /// How many distinct origins the nodes hold between them (an origin held
    /// at the same records by many nodes counts once).
    pub fn distinct_origins_held(&self) -> usize {
        self.shared.origins_len()
    }

    /// Whether every running node sees every other running node up and no
    /// stopped node up.
    pub fn converged(&self) -> bool {
        let running: BTreeSet<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.running)
            .map(|(k, _)| k)
            .collect();
        self.nodes.values().filter(|n| n.running).all(|n| {
            let view = n.membership.view(self.now(), self.wall_ms());
            let up: BTreeSet<&String> = view
                .members
                .iter()
                .filter(|m| m.is_up())
                .map(|m| &m.name)
                .collect();
            running.iter().all(|r| up.contains(r)) && up.iter().all(|u| running.contains(u))
        })
    }

    /// How `observer` sees `name`: `alive`, `suspect`, `dead`, or `None` if it
    /// does not know it.
    pub fn health_seen(&self, observer: &str, name: &str) -> Option<&'static str> {
        let n = self.nodes.get(observer)?;
        n.membership.health(name).map(|h| h.as_str())
    }
}

/// Moves `node`'s events to its log (if `record`); returns the names it
/// declared dead.
fn drain_events(node: &mut SimNode, at: Duration, record: bool) -> Vec<String> {
    let mut died = Vec::new();
    while let Some(e) = node.membership.poll_event() {
        if let Event::Died { name, .. } = &e {
            died.push(name.clone());
        }
        if record {
            node.events.push((at, e));
        }
    }
    died
}

/// The encoded node record of a simulated node.
pub fn node_record(name: &str, addr: SocketAddr, generation: u64) -> Vec<u8> {
    encode(&NodeRecord {
        name: name.to_string(),
        zone: "zone-a".into(),
        cluster: "sim".into(),
        quic_addr: addr,
        version: "sim".into(),
        started_at_ms: generation,
        state: NodeState::Serving,
    })
    .unwrap_or_default()
}

/// The encoded record of a simulated service.
pub fn service_record(name: &str, health: Health) -> Vec<u8> {
    encode(&ServiceRecord {
        name: name.to_string(),
        protocol: Protocol::Tcp,
        weight: 1,
        health,
        inflight: 0,
        tags: vec![],
    })
    .unwrap_or_default()
}
