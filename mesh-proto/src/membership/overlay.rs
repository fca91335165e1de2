//! Who a node talks to: its neighbours on a few pseudo-random rings of the
//! members it believes up — the expander topology of Rapid (Suresh et al.,
//! USENIX ATC 2018), used here for everything a node sends in a round.
//!
//! Each ring orders the members by a hash of their name seeded with the ring's
//! number; a node's neighbours are the member just after it and the one just
//! before it on every ring, so at most `2 × rings` peers whatever the size of the
//! mesh. Every node computes the same rings from the same membership, so the
//! relation is symmetric (A follows B on a ring exactly when B precedes A), and
//! the union of the rings is an expander: a message flooded along it reaches N
//! members in about `log(N) / log(2 × rings − 1)` hops. A node probes its
//! neighbours (so each member has `2 × rings` observers, a fixed number), floods
//! new items to them, and reconciles with them.
//!
//! A position is the hash of a name the mesh CA issued: a member cannot choose
//! its neighbours without the CA issuing it the right name.

/// Default number of rings: up to 8 neighbours.
pub const DEFAULT_RINGS: usize = 4;
/// Most rings a node may be configured with (up to 16 neighbours).
pub const MAX_RINGS: usize = 8;

const RING_SEED: u64 = 0x5ea1_0f5a_0a11_d00d;

/// The position of `name` on ring `ring`.
pub fn position(name: &str, ring: usize) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), RING_SEED ^ ring as u64)
}

/// The neighbours of `me` among `members` (which may include `me`; order does
/// not matter): for each of `rings` rings, the member just after `me` and the one
/// just before. Distinct, in ring order, at most `2 × rings`; indices into
/// `members`.
pub fn neighbours(me: &str, members: &[&str], rings: usize) -> Vec<usize> {
    let rings = rings.min(MAX_RINGS);
    let mine: [u64; MAX_RINGS] = std::array::from_fn(|ring| position(me, ring));
    // Per ring, the nearest member after this node and the nearest before it:
    // (distance, index). One pass over the members, each hashed once per ring.
    let mut after: [Option<(u64, usize)>; MAX_RINGS] = [None; MAX_RINGS];
    let mut before: [Option<(u64, usize)>; MAX_RINGS] = [None; MAX_RINGS];
    for (i, m) in members.iter().enumerate() {
        let first = position(m, 0);
        // Names are compared only when the positions collide.
        if first == mine[0] && *m == me {
            continue;
        }
        for ring in 0..rings {
            let p = if ring == 0 { first } else { position(m, ring) };
            closer(&mut after[ring], p.wrapping_sub(mine[ring]), i, members);
            closer(&mut before[ring], mine[ring].wrapping_sub(p), i, members);
        }
    }
    let mut out: Vec<usize> = Vec::with_capacity(2 * rings);
    for ring in 0..rings {
        for (_, i) in after[ring].into_iter().chain(before[ring]) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// Keeps in `best` the nearer of it and member `i` at `distance`;
/// (distance, name) keeps the choice deterministic even on a collision.
fn closer(best: &mut Option<(u64, usize)>, distance: u64, i: usize, members: &[&str]) {
    let nearer = best.is_none_or(|(d, b)| (distance, members[i]) < (d, members[b]));
    if nearer {
        *best = Some((distance, i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn graph(n: usize, rings: usize) -> BTreeMap<usize, BTreeSet<usize>> {
        let all = names(n);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        (0..n)
            .map(|i| (i, neighbours(&all[i], &refs, rings).into_iter().collect()))
            .collect()
    }

    #[test]
    fn the_neighbour_count_is_bounded_whatever_the_mesh_size() {
        for n in [2, 3, 10, 1000] {
            for (i, ns) in graph(n, DEFAULT_RINGS) {
                assert!(ns.len() <= 2 * DEFAULT_RINGS, "{n}: {i} has {}", ns.len());
                assert!(!ns.is_empty(), "{n}: {i} is alone");
                assert!(!ns.contains(&i), "{n}: {i} is its own neighbour");
            }
        }
    }

    #[test]
    fn neighbours_are_mutual() {
        let g = graph(500, DEFAULT_RINGS);
        for (a, ns) in &g {
            for b in ns {
                assert!(g[b].contains(a), "{a} → {b} but not back");
            }
        }
    }

    #[test]
    fn the_rings_form_a_connected_graph_of_small_diameter() {
        let n = 2000;
        let g = graph(n, DEFAULT_RINGS);
        let mut hops = vec![usize::MAX; n];
        hops[0] = 0;
        let mut queue = VecDeque::from([0]);
        while let Some(a) = queue.pop_front() {
            for &b in &g[&a] {
                if hops[b] == usize::MAX {
                    hops[b] = hops[a] + 1;
                    queue.push_back(b);
                }
            }
        }
        let far = hops.iter().max().copied().unwrap_or(usize::MAX);
        // log(2000) / log(7) ≈ 3.9: an expander's diameter is a small multiple.
        assert!(far <= 8, "diameter {far}");
    }

    #[test]
    fn a_member_leaving_changes_only_its_neighbours_neighbours() {
        let all = names(300);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let gone = 17;
        let before: Vec<BTreeSet<&str>> = (0..300)
            .map(|i| {
                neighbours(&all[i], &refs, DEFAULT_RINGS)
                    .into_iter()
                    .map(|j| refs[j])
                    .collect()
            })
            .collect();
        let rest: Vec<&str> = refs.iter().copied().filter(|m| *m != refs[gone]).collect();
        let mut changed = 0;
        for i in (0..300).filter(|i| *i != gone) {
            let after: BTreeSet<&str> = neighbours(&all[i], &rest, DEFAULT_RINGS)
                .into_iter()
                .map(|j| rest[j])
                .collect();
            if after != before[i] {
                assert!(before[i].contains(refs[gone]), "{i} changed needlessly");
                changed += 1;
            }
        }
        assert!(changed <= 2 * DEFAULT_RINGS, "{changed}");
    }
}
