//! Load-balancer pickers: which endpoint of a service gets the next connection
//! (later: the next HTTP request). Picking is two steps, both pure functions:
//! [`candidates`] narrows the service's endpoints by availability, health and zone
//! (the same rules for every policy), then the [`Policy`] chooses one of them —
//! weighted round robin from a counter, least-request by the power of two choices
//! from two random numbers, or a consistent-hash [`Ring`] from a key. The caller
//! supplies the counter, the random numbers, the key and its own view of ejected,
//! already-tried and in-flight endpoints, so the same inputs always give the same
//! pick; [`pick`] with a [`PickContext`] does both steps in one call and allocates
//! one byte per endpoint.
//!
//! Candidate rules, in order:
//! 1. Only *available* endpoints count (the caller's predicate: typically "not
//!    ejected by outlier detection and not already tried for this connection").
//! 2. Available [`Health::Healthy`] endpoints if there are any; otherwise available
//!    [`Health::Unknown`] ones (a fresh node not checked yet beats nothing); otherwise
//!    — every available endpoint is unhealthy — all available unhealthy ones. This
//!    last case is *panic mode*, as in Envoy: when everything looks down, the checks
//!    are more likely wrong than every backend, so trust nothing and spread the load
//!    over all of them rather than refuse.
//! 3. Zone preference (when the caller names its zone): if at least
//!    `min_zone_healthy` (and at least one) of the local zone's endpoints passed rule
//!    2, and they are at least half of all the local zone's endpoints, only those are
//!    kept; otherwise candidates come from every zone. Panic mode ignores zones.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::gossip::Health;
use crate::routing::Endpoint;

/// Default `min_zone_healthy`: one local candidate is enough to stay in the zone
/// (as long as it is at least half of the zone's endpoints).
pub const DEFAULT_MIN_ZONE_HEALTHY: usize = 1;

/// A load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Weighted round robin, driven by a per-listener counter
    /// ([`Candidates::round_robin`]).
    #[default]
    RoundRobin,
    /// Power of two choices on the caller's in-flight count per weight
    /// ([`Candidates::least_request`]).
    LeastRequest,
    /// Consistent hashing of a key (the client address, later a header or cookie)
    /// on a [`Ring`], for session persistence.
    RingHash,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 3] = [Policy::RoundRobin, Policy::LeastRequest, Policy::RingHash];

    /// The name used in config, logs and the admin API: `round_robin`,
    /// `least_request` or `ring_hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::RingHash => "ring_hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{0:?} is not a load-balancing policy; use \"round_robin\", \"least_request\" or \"ring_hash\""
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// Which health class the candidates were drawn from (rule 2 of the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Available healthy endpoints: the normal case.
    Healthy,
    /// No available endpoint is healthy; these are the not-yet-checked ones.
    Unknown,
    /// Every available endpoint is unhealthy; all of them are candidates.
    Panic,
}

impl Tier {
    /// The lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Healthy => "healthy",
            Tier::Unknown => "unknown",
            Tier::Panic => "panic",
        }
    }
}

/// The endpoints a policy may choose from, as flags over the input slice: built by
/// [`candidates`], borrowed from the routing table, never copied.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    endpoints: &'a [Endpoint],
    /// 1 for a candidate, 0 otherwise, per endpoint.
    selected: Vec<u8>,
    len: usize,
    total_weight: u64,
    tier: Option<Tier>,
    local_zone_only: bool,
}

/// An endpoint's weight as the pickers use it: below 1 counts as 1.
fn weight(e: &Endpoint) -> u64 {
    u64::from(e.weight.max(1))
}

/// Selects the candidates among `endpoints` by the rules of the module doc.
///
/// `local_zone: None` turns zone preference off. `is_available` is called once per
/// endpoint; the result takes one byte per endpoint.
pub fn candidates<'a>(
    endpoints: &'a [Endpoint],
    local_zone: Option<&str>,
    min_zone_healthy: usize,
    is_available: impl Fn(&Endpoint) -> bool,
) -> Candidates<'a> {
    const UNAVAILABLE: u8 = 0;
    const HEALTHY: u8 = 1;
    const UNKNOWN: u8 = 2;
    const UNHEALTHY: u8 = 3;

    let is_local = |e: &Endpoint| local_zone.is_some_and(|z| e.zone == z);
    // One byte per endpoint: its class first, then whether it is selected.
    let mut selected: Vec<u8> = Vec::with_capacity(endpoints.len());
    let mut count = [0usize; 4];
    let mut local = [0usize; 4];
    let mut local_total = 0usize;
    for e in endpoints {
        let class = if !is_available(e) {
            UNAVAILABLE
        } else {
            match e.health {
                Health::Healthy => HEALTHY,
                Health::Unknown => UNKNOWN,
                Health::Unhealthy => UNHEALTHY,
            }
        };
        count[usize::from(class)] += 1;
        if is_local(e) {
            local[usize::from(class)] += 1;
            local_total += 1;
        }
        selected.push(class);
    }
    let (tier, code) = if count[usize::from(HEALTHY)] > 0 {
        (Some(Tier::Healthy), HEALTHY)
    } else if count[usize::from(UNKNOWN)] > 0 {
        (Some(Tier::Unknown), UNKNOWN)
    } else if count[usize::from(UNHEALTHY)] > 0 {
        (Some(Tier::Panic), UNHEALTHY)
    } else {
        (None, UNAVAILABLE)
    };
    let local_in_tier = local[usize::from(code)];
    let local_zone_only = matches!(tier, Some(Tier::Healthy | Tier::Unknown))
        && local_in_tier >= min_zone_healthy.max(1)
        && 2 * local_in_tier >= local_total;

    let mut len = 0;
    let mut total_weight = 0u64;
    for (flag, e) in selected.iter_mut().zip(endpoints) {
        let keep = tier.is_some() && *flag == code && (!local_zone_only || is_local(e));
        if keep {
            len += 1;
            total_weight += weight(e);
        }
        *flag = u8::from(keep);
    }
    Candidates {
        endpoints,
        selected,
        len,
        total_weight,
        tier,
        local_zone_only,
    }
}

impl<'a> Candidates<'a> {
    /// The slice the candidates were selected from.
    pub fn endpoints(&self) -> &'a [Endpoint] {
        self.endpoints
    }

    /// How many candidates there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no candidate: nothing can be picked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The health class the candidates come from; `None` when there are none.
    pub fn tier(&self) -> Option<Tier> {
        self.tier
    }

    /// Whether zone preference kept only the caller's zone.
    pub fn local_zone_only(&self) -> bool {
        self.local_zone_only
    }

    /// The sum of the candidates' weights (each at least 1).
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Whether `endpoints()[index]` is a candidate.
    pub fn contains(&self, index: usize) -> bool {
        self.selected.get(index).is_some_and(|&s| s == 1)
    }

    /// The candidates' positions in [`Candidates::endpoints`], in order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.selected
            .iter()
            .enumerate()
            .filter_map(|(i, &s)| (s == 1).then_some(i))
    }

    /// The candidates, in input order.
    pub fn iter(&self) -> impl Iterator<Item = &'a Endpoint> + '_ {
        let endpoints = self.endpoints;
        self.indices().map(move |i| &endpoints[i])
    }

    /// Picks one candidate by `policy`, taking what it needs from `ctx`
    /// (`ctx.available`, `ctx.local_zone` and `ctx.min_zone_healthy` were already
    /// applied by [`candidates`]). `None` only when there is no candidate.
    pub fn pick(&self, policy: Policy, ctx: &PickContext<'_>) -> Option<&'a Endpoint> {
        match policy {
            Policy::RoundRobin => self.round_robin(ctx.counter),
            Policy::LeastRequest => self.least_request(ctx.random, ctx.inflight),
            Policy::RingHash => ctx
                .ring
                .and_then(|ring| ring.pick_candidate(self, ctx.key))
                .or_else(|| self.hashed(ctx.key)),
        }
    }

    /// Weighted round robin: the `counter`-th pick of an interleaved sequence.
    ///
    /// The sequence repeats every `total_weight` picks and, within each repetition,
    /// chooses every candidate exactly `weight` times, spread out rather than in a
    /// burst: round `r` of a repetition lists, in input order, the candidates whose
    /// weight exceeds `r` (weights 3 and 1 give `a b a a`; equal weights alternate).
    /// So with a stable candidate set, any `total_weight` consecutive counters pick
    /// each candidate exactly `weight` times (a window across the counter's wrap at
    /// 2^64 excepted). The caller keeps one `AtomicU64` per
    /// listener and passes `fetch_add(1)`; when the set changes the sequence
    /// changes with it, no state to repair. Costs O(n · log(max weight)).
    pub fn round_robin(&self, counter: u64) -> Option<&'a Endpoint> {
        if self.total_weight == 0 {
            return None;
        }
        let position = counter % self.total_weight;
        // Picks before the end of round r: every candidate contributes min(w, r + 1).
        let through_round = |r: u64| self.iter().map(|e| weight(e).min(r + 1)).sum::<u64>();
        let max_weight = self.iter().map(weight).max().unwrap_or(1);
        let (mut lo, mut hi) = (0, max_weight - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if through_round(mid) > position {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let round = lo;
        let before = if round == 0 {
            0
        } else {
            through_round(round - 1)
        };
        let nth = usize::try_from(position - before).ok()?;
        self.iter().filter(|e| weight(e) > round).nth(nth)
    }

    /// Least request by the power of two choices: two distinct candidates are drawn
    /// at random in proportion to their weights (`random[0]` draws the first,
    /// `random[1]` the second among the rest), and the one with the lower
    /// `inflight / weight` wins; a tie goes to the first. `inflight` is the caller's
    /// own count of streams in flight to an endpoint (it may add the gossiped
    /// [`Endpoint::inflight`] if it wants the cluster-wide view). A single
    /// candidate is picked outright.
    pub fn least_request(
        &self,
        random: [u64; 2],
        inflight: impl Fn(&Endpoint) -> u32,
    ) -> Option<&'a Endpoint> {
        if self.total_weight == 0 {
            return None;
        }
        let first = self.weighted_at(random[0] % self.total_weight, None)?;
        let a = &self.endpoints[first];
        let rest = self.total_weight - weight(a);
        if rest == 0 {
            return Some(a);
        }
        let second = self.weighted_at(random[1] % rest, Some(first))?;
        let b = &self.endpoints[second];
        // inflight_a / weight_a vs inflight_b / weight_b, without division.
        let load_a = u64::from(inflight(a)) * weight(b);
        let load_b = u64::from(inflight(b)) * weight(a);
        Some(if load_b < load_a { b } else { a })
    }

    /// A weighted pick by `key` alone (`key mod total_weight` in the cumulative
    /// weights): the same key and candidate set give the same endpoint, but a
    /// change of the set moves most keys. This is [`Policy::RingHash`]'s fallback
    /// when no usable [`Ring`] is given.
    pub fn hashed(&self, key: u64) -> Option<&'a Endpoint> {
        if self.total_weight == 0 {
            return None;
        }
        let at = self.weighted_at(key % self.total_weight, None)?;
        Some(&self.endpoints[at])
    }

    /// The index of the candidate at `position` of the cumulative weights, leaving
    /// out `skip`.
    fn weighted_at(&self, position: u64, skip: Option<usize>) -> Option<usize> {
        let mut end = 0u64;
        self.indices().filter(|&i| Some(i) != skip).find(|&i| {
            end += weight(&self.endpoints[i]);
            position < end
        })
    }
}

fn always_available(_: &Endpoint) -> bool {
    true
}

fn nothing_in_flight(_: &Endpoint) -> u32 {
    0
}

/// Everything [`pick`] needs besides the policy and the endpoints. Plain borrowed
/// data, built on the stack for each pick.
///
/// The node fills it per connection: `counter` from the listener's
/// `AtomicU64::fetch_add(1)`, `random` from any fast generator, `key` from
/// [`hash_ip`] of the client's address, `available` from its outlier set and the
/// endpoints this connection already tried. Fields a policy does not use are
/// ignored ([`PickContext::default`] fills them neutrally: no zone preference,
/// everything available, nothing in flight, no ring).
#[derive(Clone, Copy)]
pub struct PickContext<'a> {
    /// The caller's zone, or `None` to ignore zones.
    pub local_zone: Option<&'a str>,
    /// Local candidates needed to stay in the zone (see the module doc); 0 counts
    /// as 1. Usually [`DEFAULT_MIN_ZONE_HEALTHY`].
    pub min_zone_healthy: usize,
    /// [`Policy::RoundRobin`]'s position: the listener's counter, incremented per pick.
    pub counter: u64,
    /// [`Policy::LeastRequest`]'s two random draws.
    pub random: [u64; 2],
    /// [`Policy::RingHash`]'s key, from [`hash_key`] or [`hash_ip`].
    pub key: u64,
    /// Whether an endpoint may be used at all (not ejected, not already tried).
    pub available: &'a dyn Fn(&Endpoint) -> bool,
    /// The caller's in-flight count per endpoint, for [`Policy::LeastRequest`].
    pub inflight: &'a dyn Fn(&Endpoint) -> u32,
    /// The ring for [`Policy::RingHash`], built from the same endpoints; without
    /// it (or when it was built from other endpoints and none of its points is a
    /// candidate) ring hash falls back to [`Candidates::hashed`].
    pub ring: Option<&'a Ring>,
}

impl Default for PickContext<'_> {
    fn default() -> Self {
        PickContext {
            local_zone: None,
            min_zone_healthy: DEFAULT_MIN_ZONE_HEALTHY,
            counter: 0,
            random: [0, 0],
            key: 0,
            available: &always_available,
            inflight: &nothing_in_flight,
            ring: None,
        }
    }
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("local_zone", &self.local_zone)
            .field("min_zone_healthy", &self.min_zone_healthy)
            .field("counter", &self.counter)
            .field("random", &self.random)
            .field("key", &self.key)
            .field("ring", &self.ring.map(Ring::len))
            .finish_non_exhaustive()
    }
}

/// Picks one endpoint of a service for a new connection or request: [`candidates`]
/// then [`Candidates::pick`]. Returns `None` only when no endpoint is a candidate
/// (the service has none, or none is available). Allocates one byte per endpoint.
///
/// ```
/// # use mesh_proto::{gossip::Health, routing::Endpoint, tunnel::Protocol};
/// use mesh_proto::lb::{self, PickContext, Policy, Ring};
/// # let ep = |node: &str, zone: &str| Endpoint {
/// #     node: node.into(), generation: 1, zone: zone.into(),
/// #     addr: "127.0.0.1:7000".parse().unwrap(), protocol: Protocol::Tcp,
/// #     health: Health::Healthy, weight: 100, inflight: 0, tags: vec![],
/// # };
/// let endpoints = [ep("a", "eu-1"), ep("b", "eu-2"), ep("c", "eu-2")];
/// let tried = ["b"];
/// let ring = Ring::build(&endpoints);
/// let available = |e: &Endpoint| !tried.contains(&e.node.as_str());
/// let ctx = PickContext {
///     local_zone: Some("eu-2"),
///     key: lb::hash_ip("192.0.2.7".parse()?),
///     available: &available,
///     ring: Some(&ring),
///     ..PickContext::default()
/// };
/// // b is out, and c alone is half of eu-2: the pick stays in the zone.
/// let picked = lb::pick(Policy::RingHash, &endpoints, &ctx);
/// assert_eq!(picked.map(|e| e.node.as_str()), Some("c"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pick<'a>(
    policy: Policy,
    endpoints: &'a [Endpoint],
    ctx: &PickContext<'_>,
) -> Option<&'a Endpoint> {
    if endpoints.is_empty() {
        return None;
    }
    candidates(
        endpoints,
        ctx.local_zone,
        ctx.min_zone_healthy,
        ctx.available,
    )
    .pick(policy, ctx)
}

/// Hashes a session key (a client address, a header or cookie value) for
/// [`Policy::RingHash`]: xxh3, 64 bits, the same on every node and every version.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Hashes a client IP address (never its port: a client's connections come from
/// many ports) for [`Policy::RingHash`]. An IPv4-mapped IPv6 address hashes as the
/// IPv4 address, so a dual-stack listener keeps a client's sessions.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => hash_key(&v6.octets()),
    }
}

/// How many points a [`Ring`] gives its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Points of an endpoint of the smallest weight in the set; the others get
    /// proportionally more. 0 counts as 1.
    pub points_per_endpoint: u32,
    /// Most points in the ring: beyond it every endpoint's share is scaled down,
    /// though each keeps at least one point. 0 counts as 1, above
    /// [`RingConfig::MAX_POINTS_LIMIT`] counts as that limit.
    pub max_points: u32,
}

impl RingConfig {
    /// The largest accepted `max_points` (16 bytes each, about 16 MiB).
    pub const MAX_POINTS_LIMIT: u32 = 1 << 20;
}

impl Default for RingConfig {
    /// 100 points per endpoint of the smallest weight, at most 10,000 in all.
    fn default() -> Self {
        RingConfig {
            points_per_endpoint: 100,
            max_points: 10_000,
        }
    }
}

/// A consistent-hash ring over a service's endpoints, for session persistence.
///
/// Each endpoint gets points in proportion to its weight (see [`RingConfig`]),
/// placed at `xxh3(node name, seeded with the point's number)`: the node *name*,
/// not its generation, so a restarted node keeps its sessions, and an endpoint's
/// points depend only on its own name and weight (while the ring is below
/// `max_points`), so adding or removing an endpoint moves only the keys that land
/// on its points. A key goes to the first point clockwise from `key` whose
/// endpoint is a candidate: while the preferred endpoint is unavailable its keys
/// spill to the next endpoints on the ring, and they come back when it returns.
///
/// Build it from all of a service's endpoints (health is applied at pick time,
/// not here) and rebuild when [`Ring::matches`] says the set or a weight changed.
/// Building sorts at most `max_points` points; picking is a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Point positions, ascending.
    hashes: Vec<u64>,
    /// `owners[i]` is the index in `members` of the endpoint at `hashes[i]`.
    owners: Vec<u32>,
    /// The endpoints it was built from: node name and weight, in input order.
    members: Vec<(String, u32)>,
}

impl Ring {
    /// Builds the ring with the default [`RingConfig`].
    pub fn build(endpoints: &[Endpoint]) -> Ring {
        Ring::with_config(endpoints, RingConfig::default())
    }

    /// Builds the ring with `config`.
    pub fn with_config(endpoints: &[Endpoint], config: RingConfig) -> Ring {
        let members: Vec<(String, u32)> = endpoints
            .iter()
            .map(|e| (e.node.clone(), e.weight))
            .collect();
        let counts = point_counts(endpoints, config);
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(total);
        for ((owner, e), &count) in (0u32..).zip(endpoints).zip(&counts) {
            for replica in 0..count {
                let at = xxh3_64_with_seed(e.node.as_bytes(), u64::from(replica));
                points.push((at, owner));
            }
        }
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip();
        Ring {
            hashes,
            owners,
            members,
        }
    }

    /// Whether the ring was built from exactly these endpoints: the same node
    /// names, in the same order, with the same weights. When it was not, rebuild;
    /// health, generation or address changes do not matter.
    pub fn matches(&self, endpoints: &[Endpoint]) -> bool {
        self.members.len() == endpoints.len()
            && self
                .members
                .iter()
                .zip(endpoints)
                .all(|((node, w), e)| *node == e.node && *w == e.weight)
    }

    /// How many points the ring has.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the ring has no point (it was built from no endpoint).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// How many points belong to `node`.
    pub fn points_of(&self, node: &str) -> usize {
        self.owners
            .iter()
            .filter(|&&o| self.members.get(o as usize).is_some_and(|(n, _)| n == node))
            .count()
    }

    /// The endpoint of `endpoints` that `key` maps to: the first point clockwise
    /// from `key` whose endpoint is in `endpoints` and passes `is_candidate`.
    /// `endpoints` should be the slice the ring was built from; with another one,
    /// endpoints are found by node name and points of absent ones are skipped.
    /// `None` when no point qualifies.
    pub fn pick<'a>(
        &self,
        endpoints: &'a [Endpoint],
        key: u64,
        is_candidate: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let at = self.walk(endpoints, key, |i| is_candidate(&endpoints[i]))?;
        Some(&endpoints[at])
    }

    /// [`Ring::pick`] among `candidates`.
    pub fn pick_candidate<'a>(
        &self,
        candidates: &Candidates<'a>,
        key: u64,
    ) -> Option<&'a Endpoint> {
        let endpoints = candidates.endpoints();
        let at = self.walk(endpoints, key, |i| candidates.contains(i))?;
        Some(&endpoints[at])
    }

    /// Walks one lap clockwise from `key`; returns the index in `endpoints` of the
    /// first point's endpoint that is present and accepted.
    fn walk(
        &self,
        endpoints: &[Endpoint],
        key: u64,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.hashes.len();
        let start = self.hashes.partition_point(|&h| h < key);
        // Built on the first point whose owner is not at its own index.
        let mut by_name: Option<Vec<Option<usize>>> = None;
        for step in 0..n {
            let owner = self.owners[(start + step) % n] as usize;
            let (node, _) = &self.members[owner];
            let index = match endpoints.get(owner) {
                Some(e) if e.node == *node => Some(owner),
                _ => by_name.get_or_insert_with(|| self.locate(endpoints))[owner],
            };
            if let Some(i) = index
                && accept(i)
            {
                return Some(i);
            }
        }
        None
    }

    /// For each member, its index in `endpoints` by node name, if present.
    fn locate(&self, endpoints: &[Endpoint]) -> Vec<Option<usize>> {
        self.members
            .iter()
            .map(|(node, _)| endpoints.iter().position(|e| e.node == *node))
            .collect()
    }
}

/// Points per endpoint: `points_per_endpoint × weight / smallest weight`, rounded;
/// above `max_points` in all, one point each plus a weighted share of the rest.
fn point_counts(endpoints: &[Endpoint], config: RingConfig) -> Vec<u32> {
    let per = u128::from(config.points_per_endpoint.max(1));
    let max = u128::from(config.max_points.clamp(1, RingConfig::MAX_POINTS_LIMIT));
    let Some(min_weight) = endpoints.iter().map(|e| u128::from(weight(e))).min() else {
        return Vec::new();
    };
    let raw: Vec<u128> = endpoints
        .iter()
        .map(|e| (u128::from(weight(e)) * per + min_weight / 2) / min_weight)
        .collect();
    let sum: u128 = raw.iter().sum();
    let n = endpoints.len() as u128;
    let to_u32 = |c: u128| u32::try_from(c).unwrap_or(u32::MAX);
    if sum <= max {
        raw.into_iter().map(to_u32).collect()
    } else if max > n {
        raw.into_iter()
            .map(|r| to_u32(1 + r * (max - n) / sum))
            .collect()
    } else {
        vec![1; endpoints.len()]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::tunnel::Protocol;

    fn ep(node: &str, zone: &str, health: Health, weight: u32) -> Endpoint {
        Endpoint {
            node: node.into(),
            generation: 1,
            zone: zone.into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            protocol: Protocol::Tcp,
            health,
            weight,
            inflight: 0,
            tags: vec![],
        }
    }

    fn healthy(node: &str, weight: u32) -> Endpoint {
        ep(node, "z1", Health::Healthy, weight)
    }

    fn names<'a>(it: impl IntoIterator<Item = &'a Endpoint>) -> Vec<&'a str> {
        it.into_iter().map(|e| e.node.as_str()).collect()
    }

    /// splitmix64: a tiny seeded generator, so statistical tests are exact replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
        }
        let err = "random".parse::<Policy>().unwrap_err();
        assert_eq!(err, UnknownPolicy("random".into()));
        assert!(err.to_string().contains("round_robin"), "{err}");
        assert_eq!(Policy::default(), Policy::RoundRobin);
    }

    #[test]
    fn healthy_endpoints_are_preferred() {
        let eps = [
            ep("a", "z1", Health::Unknown, 1),
            ep("b", "z1", Health::Healthy, 1),
            ep("c", "z1", Health::Unhealthy, 1),
            ep("d", "z1", Health::Healthy, 1),
        ];
        let c = candidates(&eps, None, 1, |_| true);
        assert_eq!(names(c.iter()), ["b", "d"]);
        assert_eq!(c.tier(), Some(Tier::Healthy));
        assert_eq!(c.len(), 2);
        assert_eq!(c.total_weight(), 2);
        assert_eq!(c.indices().collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn unknown_endpoints_are_the_fallback() {
        let eps = [
            ep("a", "z1", Health::Unknown, 1),
            ep("b", "z1", Health::Unhealthy, 1),
            ep("c", "z1", Health::Unknown, 1),
        ];
        let c = candidates(&eps, None, 1, |_| true);
        assert_eq!(names(c.iter()), ["a", "c"]);
        assert_eq!(c.tier(), Some(Tier::Unknown));
    }

    #[test]
    fn panic_mode_spreads_over_every_available_unhealthy_endpoint() {
        let eps = [
            ep("a", "z1", Health::Unhealthy, 1),
            ep("b", "z2", Health::Unhealthy, 1),
            ep("c", "z1", Health::Healthy, 1),
            ep("d", "z1", Health::Unhealthy, 1),
        ];
        // The one healthy endpoint is unavailable (say, ejected).
        let c = candidates(&eps, Some("z1"), 1, |e| e.node != "c");
        assert_eq!(c.tier(), Some(Tier::Panic));
        assert!(!c.local_zone_only(), "panic mode ignores zones");
        assert_eq!(names(c.iter()), ["a", "b", "d"]);
    }

    #[test]
    fn availability_is_respected() {
        let eps = [
            ep("a", "z1", Health::Healthy, 1),
            ep("b", "z1", Health::Unknown, 1),
            ep("c", "z1", Health::Healthy, 1),
        ];
        let c = candidates(&eps, None, 1, |e| e.node != "a");
        assert_eq!(names(c.iter()), ["c"]);
        let c = candidates(&eps, None, 1, |e| e.node == "b");
        assert_eq!(names(c.iter()), ["b"]);
        assert_eq!(c.tier(), Some(Tier::Unknown));
        let c = candidates(&eps, None, 1, |_| false);
        assert!(c.is_empty());
        assert_eq!(c.tier(), None);
        for p in Policy::ALL {
            let ctx = PickContext {
                available: &|_| false,
                ..PickContext::default()
            };
            assert_eq!(pick(p, &eps, &ctx), None);
        }
        assert_eq!(pick(Policy::RoundRobin, &[], &PickContext::default()), None);
    }

    fn zoned(local_healthy: usize, local_unhealthy: usize) -> Vec<Endpoint> {
        let mut eps = vec![
            ep("r1", "remote", Health::Healthy, 1),
            ep("r2", "remote", Health::Healthy, 1),
        ];
        for i in 0..local_healthy {
            eps.push(ep(&format!("lh{i}"), "local", Health::Healthy, 1));
        }
        for i in 0..local_unhealthy {
            eps.push(ep(&format!("lu{i}"), "local", Health::Unhealthy, 1));
        }
        eps
    }

    #[test]
    fn zone_preference_holds_while_half_the_zone_is_healthy() {
        // 2 of 4 local endpoints healthy: exactly half, stay local.
        let eps = zoned(2, 2);
        let c = candidates(&eps, Some("local"), 1, |_| true);
        assert!(c.local_zone_only());
        assert_eq!(names(c.iter()), ["lh0", "lh1"]);
        // 1 of 3: below half, spill over to every zone.
        let eps = zoned(1, 2);
        let c = candidates(&eps, Some("local"), 1, |_| true);
        assert!(!c.local_zone_only());
        assert_eq!(names(c.iter()), ["r1", "r2", "lh0"]);
        // Half, but fewer than min_zone_healthy.
        let eps = zoned(2, 2);
        let c = candidates(&eps, Some("local"), 3, |_| true);
        assert!(!c.local_zone_only());
        assert_eq!(c.len(), 4);
        let c = candidates(&eps, Some("local"), 2, |_| true);
        assert!(c.local_zone_only());
        // An ejected local endpoint counts against the zone.
        let c = candidates(&eps, Some("local"), 1, |e| e.node != "lh1");
        assert!(!c.local_zone_only());
        assert_eq!(names(c.iter()), ["r1", "r2", "lh0"]);
        // No zone given, or a zone without endpoints: every zone.
        assert_eq!(candidates(&eps, None, 1, |_| true).len(), 4);
        let c = candidates(&eps, Some("elsewhere"), 0, |_| true);
        assert!(!c.local_zone_only());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn zone_preference_applies_to_unknown_endpoints_too() {
        let eps = [
            ep("a", "z1", Health::Unknown, 1),
            ep("b", "z2", Health::Unknown, 1),
        ];
        let c = candidates(&eps, Some("z2"), 1, |_| true);
        assert_eq!(names(c.iter()), ["b"]);
        assert_eq!(c.tier(), Some(Tier::Unknown));
    }

    #[test]
    fn round_robin_gives_each_its_weight_in_any_window() {
        let eps = [healthy("a", 3), healthy("b", 1), healthy("c", 2)];
        let c = candidates(&eps, None, 1, |_| true);
        assert_eq!(c.total_weight(), 6);
        for start in [0u64, 1, 5, 17, u64::MAX - 10] {
            let mut seen = BTreeMap::new();
            for i in 0..6 {
                let e = c.round_robin(start.wrapping_add(i)).unwrap();
                *seen.entry(e.node.as_str()).or_insert(0) += 1;
            }
            assert_eq!(seen, BTreeMap::from([("a", 3), ("b", 1), ("c", 2)]));
        }
    }

    #[test]
    fn round_robin_interleaves() {
        let eps = [healthy("a", 3), healthy("b", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let seq: Vec<_> = (0..8).map(|i| c.round_robin(i).unwrap()).collect();
        assert_eq!(names(seq), ["a", "b", "a", "a", "a", "b", "a", "a"]);
        // Equal weights (the default is 100) alternate instead of bursting.
        let eps = [healthy("a", 100), healthy("b", 100), healthy("c", 100)];
        let c = candidates(&eps, None, 1, |_| true);
        let seq: Vec<_> = (0..6).map(|i| c.round_robin(i).unwrap()).collect();
        assert_eq!(names(seq), ["a", "b", "c", "a", "b", "c"]);
        // Large, unequal weights: still exact over the window.
        let eps = [healthy("a", 10_000), healthy("b", 9_999), healthy("c", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let mut counts = BTreeMap::new();
        for i in 0..20_000 {
            *counts.entry(&c.round_robin(i).unwrap().node).or_insert(0) += 1;
        }
        assert_eq!(counts.into_values().collect::<Vec<_>>(), [10_000, 9_999, 1]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let eps = [healthy("a", 1), healthy("b", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let load = |e: &Endpoint| if e.node == "a" { 5 } else { 1 };
        let mut rng = Rng(1);
        for _ in 0..100 {
            let r = [rng.next(), rng.next()];
            assert_eq!(c.least_request(r, load).unwrap().node, "b");
        }
        // Per weight: a carries 3 on weight 3 (1 each), b 2 on weight 1.
        let eps = [healthy("a", 3), healthy("b", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let load = |e: &Endpoint| if e.node == "a" { 3 } else { 2 };
        for _ in 0..100 {
            let r = [rng.next(), rng.next()];
            assert_eq!(c.least_request(r, load).unwrap().node, "a");
        }
        // Of three, the most loaded never wins: it always meets a lighter one.
        let eps = [healthy("a", 1), healthy("b", 1), healthy("c", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let load = |e: &Endpoint| if e.node == "b" { 9 } else { 0 };
        for _ in 0..300 {
            let r = [rng.next(), rng.next()];
            assert_ne!(c.least_request(r, load).unwrap().node, "b");
        }
    }

    #[test]
    fn least_request_ties_go_to_the_first_draw_and_one_is_picked_outright() {
        let eps = [healthy("a", 1), healthy("b", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        // random[0] = 0 draws a, 1 draws b.
        assert_eq!(c.least_request([0, 0], |_| 4).unwrap().node, "a");
        assert_eq!(c.least_request([1, 0], |_| 4).unwrap().node, "b");
        let one = [healthy("only", 7)];
        let c = candidates(&one, None, 1, |_| true);
        assert_eq!(c.least_request([9, 9], |_| 100).unwrap().node, "only");
    }

    #[test]
    fn least_request_respects_weights() {
        let eps = [healthy("a", 3), healthy("b", 1)];
        let c = candidates(&eps, None, 1, |_| true);
        let mut rng = Rng(42);
        let picks = 10_000;
        let a = (0..picks)
            .filter(|_| {
                let r = [rng.next(), rng.next()];
                c.least_request(r, |_| 0).unwrap().node == "a"
            })
            .count();
        let share = a as f64 / picks as f64;
        assert!((0.72..=0.78).contains(&share), "a got {share}");
    }

    fn keys(count: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng(seed);
        (0..count)
            .map(|_| hash_key(&rng.next().to_le_bytes()))
            .collect()
    }

    fn ring_map(ring: &Ring, eps: &[Endpoint], keys: &[u64]) -> Vec<String> {
        keys.iter()
            .map(|&k| ring.pick(eps, k, |_| true).unwrap().node.clone())
            .collect()
    }

    fn equal(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| healthy(&format!("node-{i:02}"), 100))
            .collect()
    }

    #[test]
    fn ring_is_stable_for_a_key() {
        let eps = equal(5);
        let ring = Ring::build(&eps);
        assert_eq!(ring.len(), 500);
        let key = hash_ip("10.1.2.3".parse().unwrap());
        let first = ring.pick(&eps, key, |_| true).unwrap();
        for _ in 0..100 {
            assert_eq!(ring.pick(&eps, key, |_| true).unwrap(), first);
        }
        // A rebuild, or a restart of the node (new generation), changes nothing.
        let mut restarted = eps.clone();
        for e in &mut restarted {
            e.generation += 1;
        }
        assert!(ring.matches(&restarted));
        let rebuilt = Ring::build(&restarted);
        assert_eq!(rebuilt, ring);
        assert_eq!(
            rebuilt.pick(&restarted, key, |_| true).unwrap().node,
            first.node
        );
    }

    #[test]
    fn ring_spreads_keys_evenly_and_by_weight() {
        let keys = keys(10_000, 7);
        for n in [2, 5, 10] {
            let eps = equal(n);
            let ring = Ring::build(&eps);
            let mut counts = BTreeMap::new();
            for node in ring_map(&ring, &eps, &keys) {
                *counts.entry(node).or_insert(0usize) += 1;
            }
            let even = keys.len() as f64 / n as f64;
            assert_eq!(counts.len(), n);
            for (node, c) in counts {
                let dev = (c as f64 - even).abs() / even;
                assert!(dev <= 0.30, "n={n}: {node} got {c}, expected ~{even}");
            }
        }
        let eps: Vec<_> = (1..=4).map(|w| healthy(&format!("w{w}"), w)).collect();
        let ring = Ring::build(&eps);
        assert_eq!(ring.points_of("w1"), 100);
        assert_eq!(ring.points_of("w4"), 400);
        let mut counts = BTreeMap::new();
        for node in ring_map(&ring, &eps, &keys) {
            *counts.entry(node).or_insert(0usize) += 1;
        }
        for (w, e) in (1..=4).zip(&eps) {
            let expected = keys.len() as f64 * w as f64 / 10.0;
            let got = counts[&e.node] as f64;
            assert!(
                (got - expected).abs() / expected <= 0.30,
                "weight {w}: {got} keys, expected ~{expected}"
            );
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let keys = keys(10_000, 11);
        let eps = equal(6);
        let before = ring_map(&Ring::build(&eps), &eps, &keys);
        let removed = "node-03";
        let fewer: Vec<_> = eps.iter().filter(|e| e.node != removed).cloned().collect();
        let after = ring_map(&Ring::build(&fewer), &fewer, &keys);
        for (b, a) in before.iter().zip(&after) {
            if b != removed {
                assert_eq!(b, a);
            }
        }
        assert!(before.iter().any(|b| b == removed));
    }

    #[test]
    fn adding_an_endpoint_moves_about_one_in_n_plus_one() {
        let keys = keys(10_000, 13);
        for n in [3, 5, 9] {
            let eps = equal(n);
            let before = ring_map(&Ring::build(&eps), &eps, &keys);
            let mut more = eps.clone();
            more.push(healthy("newcomer", 100));
            let after = ring_map(&Ring::build(&more), &more, &keys);
            let moved: Vec<_> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b != a)
                .map(|(_, a)| a)
                .collect();
            assert!(
                moved.iter().all(|a| *a == "newcomer"),
                "keys moved between old endpoints"
            );
            let share = moved.len() as f64 / keys.len() as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                (0.5 * ideal..=1.5 * ideal).contains(&share),
                "n={n}: {share} moved, ideal {ideal}"
            );
        }
    }

    #[test]
    fn an_unavailable_endpoints_keys_go_next_and_come_back() {
        let keys = keys(2_000, 17);
        let eps = equal(4);
        let ring = Ring::build(&eps);
        let normal = ring_map(&ring, &eps, &keys);
        let down = "node-01";
        let during: Vec<_> = keys
            .iter()
            .map(|&k| ring.pick(&eps, k, |e| e.node != down).unwrap().node.clone())
            .collect();
        for (n, d) in normal.iter().zip(&during) {
            assert_ne!(d, down);
            if n != down {
                assert_eq!(n, d, "a key not on the down endpoint moved");
            }
        }
        // Through the whole pick path, with the endpoint ejected, then back.
        let pick_with = |available: &dyn Fn(&Endpoint) -> bool, key| {
            let ctx = PickContext {
                key,
                available,
                ring: Some(&ring),
                ..PickContext::default()
            };
            pick(Policy::RingHash, &eps, &ctx).unwrap().node.clone()
        };
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(pick_with(&|e| e.node != down, k), during[i]);
            assert_eq!(pick_with(&|_| true, k), normal[i]);
        }
        // The same through health: an unhealthy endpoint is skipped the same way.
        let mut sick = eps.clone();
        sick[1].health = Health::Unhealthy;
        assert!(ring.matches(&sick));
        let c = candidates(&sick, None, 1, |_| true);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(ring.pick_candidate(&c, k).unwrap().node, during[i]);
        }
    }

    #[test]
    fn ring_size_is_bounded_and_every_endpoint_has_a_point() {
        let many: Vec<_> = (0..300)
            .map(|i| healthy(&format!("n{i:03}"), 100))
            .collect();
        let ring = Ring::build(&many);
        assert!(ring.len() <= 10_000, "{}", ring.len());
        assert!(many.iter().all(|e| ring.points_of(&e.node) >= 1));
        let skewed = [healthy("big", 10_000), healthy("small", 1)];
        let ring = Ring::build(&skewed);
        assert!(ring.len() <= 10_000);
        assert_eq!(ring.points_of("small"), 1);
        let tiny = RingConfig {
            points_per_endpoint: 0,
            max_points: 2,
        };
        let ring = Ring::with_config(&many, tiny);
        assert_eq!(ring.len(), 300);
        assert!(Ring::build(&[]).is_empty());
        assert_eq!(Ring::build(&[]).pick(&many, 1, |_| true), None);
    }

    #[test]
    fn matches_tracks_names_and_weights() {
        let eps = equal(3);
        let ring = Ring::build(&eps);
        assert!(ring.matches(&eps));
        let mut reweighted = eps.clone();
        reweighted[2].weight = 5;
        assert!(!ring.matches(&reweighted));
        assert!(!ring.matches(&eps[..2]));
        let mut renamed = eps.clone();
        renamed[0].node = "other".into();
        assert!(!ring.matches(&renamed));
    }

    #[test]
    fn a_stale_ring_still_picks_only_present_endpoints() {
        let keys = keys(500, 19);
        let old = equal(5);
        let ring = Ring::build(&old);
        // Two gone, one new: indices no longer line up.
        let now: Vec<_> = [&old[0], &old[2], &old[4]]
            .into_iter()
            .cloned()
            .chain([healthy("node-99", 100)])
            .collect();
        for &k in &keys {
            let got = ring.pick(&now, k, |_| true).unwrap();
            assert!(now.contains(got));
            assert_ne!(got.node, "node-99", "not on the old ring");
        }
        // Only the newcomer is a candidate: the ring has no point for it, so the
        // pick falls back to a plain weighted hash.
        let ctx = PickContext {
            key: keys[0],
            available: &|e| e.node == "node-99",
            ring: Some(&ring),
            ..PickContext::default()
        };
        assert_eq!(pick(Policy::RingHash, &now, &ctx).unwrap().node, "node-99");
    }

    #[test]
    fn ring_hash_without_a_ring_hashes_over_the_candidates() {
        let eps = [healthy("a", 1), healthy("b", 1)];
        let ctx = |key| PickContext {
            key,
            ..PickContext::default()
        };
        assert_eq!(pick(Policy::RingHash, &eps, &ctx(0)).unwrap().node, "a");
        assert_eq!(pick(Policy::RingHash, &eps, &ctx(1)).unwrap().node, "b");
    }

    #[test]
    fn ip_hashing_ignores_the_mapping_of_v4_into_v6() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(mapped));
        assert_eq!(hash_ip(v4), hash_key(&[192, 0, 2, 7]));
        assert_ne!(hash_ip(v4), hash_ip("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn pick_context_debug_does_not_need_the_closures() {
        let s = format!("{:?}", PickContext::default());
        assert!(s.starts_with("PickContext"), "{s}");
    }

    /// The candidate rules, written out plainly, to check [`candidates`] against.
    fn model<'a>(
        eps: &'a [Endpoint],
        zone: Option<&str>,
        min_zone: usize,
        available: &dyn Fn(&Endpoint) -> bool,
    ) -> BTreeSet<&'a str> {
        let avail: Vec<&Endpoint> = eps.iter().filter(|e| available(e)).collect();
        let tier = [Health::Healthy, Health::Unknown, Health::Unhealthy]
            .into_iter()
            .find(|h| avail.iter().any(|e| e.health == *h));
        let Some(tier) = tier else {
            return BTreeSet::new();
        };
        let set: Vec<&Endpoint> = avail.into_iter().filter(|e| e.health == tier).collect();
        if let Some(z) = zone
            && tier != Health::Unhealthy
        {
            let local_total = eps.iter().filter(|e| e.zone == z).count();
            let local: Vec<&Endpoint> = set.iter().copied().filter(|e| e.zone == z).collect();
            if !local.is_empty() && local.len() >= min_zone && 2 * local.len() >= local_total {
                return local.into_iter().map(|e| e.node.as_str()).collect();
            }
        }
        set.into_iter().map(|e| e.node.as_str()).collect()
    }

    fn arb_endpoints() -> impl Strategy<Value = Vec<(Endpoint, bool, u32)>> {
        let health = prop_oneof![
            Just(Health::Healthy),
            Just(Health::Unknown),
            Just(Health::Unhealthy)
        ];
        prop::collection::vec(
            (0..3usize, health, 1..=10_000u32, any::<bool>(), 0..50u32),
            0..12,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (z, h, w, avail, load))| {
                    (
                        ep(&format!("n{i:02}"), ["z0", "z1", "z2"][z], h, w),
                        avail,
                        load,
                    )
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn pick_returns_a_candidate_whenever_there_is_one(
            input in arb_endpoints(),
            zone in prop::option::of(prop_oneof![Just("z0"), Just("z1"), Just("z9")]),
            min_zone in 0..4usize,
            policy in prop_oneof![
                Just(Policy::RoundRobin),
                Just(Policy::LeastRequest),
                Just(Policy::RingHash)
            ],
            counter: u64,
            random: [u64; 2],
            key: u64,
            ring_from in 0..3u8,
        ) {
            let eps: Vec<Endpoint> = input.iter().map(|(e, _, _)| e.clone()).collect();
            let avail: BTreeSet<String> =
                input.iter().filter(|(_, a, _)| *a).map(|(e, _, _)| e.node.clone()).collect();
            let load: BTreeMap<String, u32> =
                input.iter().map(|(e, _, l)| (e.node.clone(), *l)).collect();
            let available = |e: &Endpoint| avail.contains(&e.node);
            let inflight = |e: &Endpoint| load[&e.node];
            let ring = match ring_from {
                0 => None,
                1 => Some(Ring::build(&eps)),
                // Stale: built from every other endpoint.
                _ => Some(Ring::build(&eps.iter().step_by(2).cloned().collect::<Vec<_>>())),
            };
            let expected = model(&eps, zone, min_zone, &available);
            let c = candidates(&eps, zone, min_zone, available);
            prop_assert_eq!(names(c.iter()).into_iter().collect::<BTreeSet<_>>(), expected.clone());
            let ctx = PickContext {
                local_zone: zone,
                min_zone_healthy: min_zone,
                counter,
                random,
                key,
                available: &available,
                inflight: &inflight,
                ring: ring.as_ref(),
            };
            match pick(policy, &eps, &ctx) {
                Some(e) => prop_assert!(expected.contains(e.node.as_str())),
                None => prop_assert!(expected.is_empty()),
            }
        }
    }
}
