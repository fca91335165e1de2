//! Seeds: the addresses a node asks to join the mesh. `node.seeds` may name
//! hosts (`seeds.shoal.internal:7100`, a Kubernetes headless Service): every
//! address a name resolves to is a seed. To those are added the peers saved in
//! the data directory (`members.json`). Names are resolved at start and again,
//! every [`RESOLVE_EVERY`], while this node has no live peer — a mesh whose
//! seed hosts moved, or pods behind a name that appeared after this node
//! started, is still found; a node in the mesh does not resolve at all.
//!
//! [`Reresolver`] is the rule, on the caller's clock and with the resolution
//! handed in, so it runs in unit tests without DNS; [`run`] drives it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::gossip::Gossip;
use crate::routing::SharedTable;

/// The file under `node.data_dir` holding the peers last known, tried as seeds
/// at the next start.
pub const MEMBERS_FILE: &str = "members.json";
/// How often names are resolved again while the node has no live peer.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// At most this many peers are saved in [`MEMBERS_FILE`]: enough to find the
/// mesh again after a restart, and a file (and a seed list at the next start)
/// that does not grow with the mesh.
pub const SAVED_PEERS: usize = 16;

/// Every address `seeds` resolve to (an `IP:PORT` to itself), then the peers
/// saved in `data_dir`, without `advertise`, each once. A name that does not
/// resolve is logged (`said`: the error last logged for it, so a repeated
/// failure is logged once) and skipped.
pub async fn resolve(
    seeds: &[String],
    data_dir: &Path,
    advertise: SocketAddr,
    said: &mut HashMap<String, String>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => {
                said.remove(seed);
                out.extend(addrs);
            }
            Err(e) => {
                let error = e.to_string();
                if said.get(seed) != Some(&error) {
                    tracing::warn!(%seed, %error, "cannot resolve a seed; skipping it");
                    said.insert(seed.clone(), error);
                }
            }
        }
    }
    for addr in read_members_file(data_dir) {
        out.push(addr);
    }
    let mut seen = BTreeSet::new();
    out.retain(|a| *a != advertise && seen.insert(*a));
    out
}

/// The seeds at start (see [`resolve`]).
pub async fn initial(config: &Config, advertise: SocketAddr) -> Vec<SocketAddr> {
    resolve(
        &config.node.seeds,
        &config.node.data_dir,
        advertise,
        &mut Default::default(),
    )
    .await
}

/// When to resolve the seed names again.
#[derive(Debug)]
pub struct Reresolver {
    names: bool,
    next: tokio::time::Instant,
    current: Vec<SocketAddr>,
}

impl Reresolver {
    /// For `seeds` (as configured), currently resolved to `current`, at `now`.
    pub fn new(seeds: &[String], current: Vec<SocketAddr>, now: tokio::time::Instant) -> Self {
        Reresolver {
            names: seeds.iter().any(|s| s.parse::<SocketAddr>().is_err()),
            next: now + RESOLVE_EVERY,
            current,
        }
    }

    /// Whether to resolve at `now`, given whether the node has a live peer:
    /// only if some seed is a name, the node is alone, and the last
    /// resolution is [`RESOLVE_EVERY`] old.
    pub fn due(&mut self, now: tokio::time::Instant, alone: bool) -> bool {
        if !self.names || !alone || now < self.next {
            return false;
        }
        self.next = now + RESOLVE_EVERY;
        true
    }

    /// A new resolution: `Some` (the seeds to use) if it differs from the
    /// current one.
    pub fn resolved(&mut self, seeds: Vec<SocketAddr>) -> Option<Vec<SocketAddr>> {
        if seeds.is_empty() || seeds == self.current {
            return None;
        }
        self.current = seeds.clone();
        Some(seeds)
    }
}

/// Resolves the seed names again while the node is alone (see the module
/// documentation), until `stop` fires.
pub async fn run(
    config: Arc<Config>,
    advertise: SocketAddr,
    gossip: Arc<Gossip>,
    table: SharedTable,
    mut stop: watch::Receiver<bool>,
) {
    let me = gossip.name().to_string();
    let (seeds, data_dir) = (&config.node.seeds, &config.node.data_dir);
    let mut said = HashMap::new();
    let start = resolve(seeds, data_dir, advertise, &mut said).await;
    let mut rule = Reresolver::new(seeds, start, tokio::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let alone = !table.load().nodes().any(|n| n.record.name != me);
        if !rule.due(tokio::time::Instant::now(), alone) {
            continue;
        }
        let resolved = resolve(seeds, data_dir, advertise, &mut said).await;
        if let Some(resolved) = rule.resolved(resolved) {
            tracing::info!(seeds = ?resolved, "seed names resolved again while alone");
            gossip.set_seeds(resolved);
        }
    }
}

/// The largest [`MEMBERS_FILE`] read: far more than [`SAVED_PEERS`]
/// addresses take, and enough for the longer lists of earlier versions.
const MEMBERS_FILE_MAX_BYTES: u64 = 256 * 1024;

/// The peers saved in `dir`'s [`MEMBERS_FILE`], at most [`SAVED_PEERS`]
/// (none if it is missing; a file that is too large or not a JSON list of
/// addresses is ignored with a warning, and replaced at the next save).
pub fn read_members_file(dir: &Path) -> Vec<SocketAddr> {
    use std::io::Read;
    let path = dir.join(MEMBERS_FILE);
    let Ok(file) = std::fs::File::open(&path) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    let read = file
        .take(MEMBERS_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes);
    let parsed = match read {
        Ok(n) if n as u64 > MEMBERS_FILE_MAX_BYTES => {
            Err(format!("larger than {MEMBERS_FILE_MAX_BYTES} bytes"))
        }
        Ok(_) => serde_json::from_slice::<Vec<SocketAddr>>(&bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match parsed {
        Ok(mut peers) => {
            peers.truncate(SAVED_PEERS);
            peers
        }
        Err(reason) => {
            tracing::warn!(file = %path.display(), %reason, "ignoring the saved members");
            Vec::new()
        }
    }
}

/// The peers to save next, given those saved and the peers up now (`up`,
/// without this node): `None` while every saved peer is up and there are as
/// many as there can be ([`SAVED_PEERS`], or every peer up if fewer), so the
/// file is rewritten when a saved peer goes down, not whenever the mesh
/// changes. Otherwise the saved peers still up, topped up from the others in
/// an order of their own for each node (`me`), so that nodes restarting
/// together do not all try the same few peers first. Never empty: an
/// isolated node keeps its last list.
pub fn peers_to_save(
    me: SocketAddr,
    saved: &[SocketAddr],
    up: &BTreeSet<SocketAddr>,
) -> Option<Vec<SocketAddr>> {
    let want = up.len().min(SAVED_PEERS);
    let mut kept: Vec<SocketAddr> = saved.iter().copied().filter(|a| up.contains(a)).collect();
    let full = kept.len() == saved.len() && (want..=SAVED_PEERS).contains(&kept.len());
    if want == 0 || full {
        return None;
    }
    // A longer list (saved by an earlier version) is cut down.
    kept.truncate(SAVED_PEERS);
    let mut others: Vec<SocketAddr> = up.iter().copied().filter(|a| !kept.contains(a)).collect();
    others.sort_by_cached_key(|a| order_for(me, *a));
    let mut next = kept;
    next.extend(others.into_iter().take(want.saturating_sub(next.len())));
    next.sort();
    Some(next)
}

/// A fixed pseudo-random rank of `peer` as seen by `me` (SipHash with fixed
/// keys: the same on every run).
fn order_for(me: SocketAddr, peer: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (me, peer).hash(&mut h);
    h.finish()
}

/// Saves `peers` to `dir`'s [`MEMBERS_FILE`], atomically.
pub fn write_members_file(dir: &Path, peers: &[SocketAddr]) {
    let Ok(json) = serde_json::to_vec_pretty(peers) else {
        return;
    };
    if let Err(e) = shoal_pki::files::write_atomic(&dir.join(MEMBERS_FILE), &json, false) {
        tracing::warn!(error = %e, "cannot save the last known members");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_only_while_alone_and_every_few_seconds() {
        let now = tokio::time::Instant::now();
        let seeds = vec!["seeds.mesh.internal:7100".to_string()];
        let mut rule = Reresolver::new(&seeds, vec![addr(1)], now);
        assert!(!rule.due(now, true), "just resolved");
        let later = now + RESOLVE_EVERY;
        assert!(
            !rule.due(later, false),
            "a node with a live peer never resolves"
        );
        assert!(rule.due(later, true));
        assert!(!rule.due(later, true), "not twice in a row");
        assert!(rule.due(later + RESOLVE_EVERY, true));
        // The same answer changes nothing; a new one replaces the seeds; an
        // empty one (the name is gone for now) keeps the last.
        assert_eq!(rule.resolved(vec![addr(1)]), None);
        assert_eq!(rule.resolved(vec![addr(2)]), Some(vec![addr(2)]));
        assert_eq!(rule.resolved(vec![]), None);
        assert_eq!(rule.resolved(vec![addr(2)]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_alone_are_never_resolved_again() {
        let now = tokio::time::Instant::now();
        let seeds = vec!["10.0.0.1:7100".to_string()];
        let mut rule = Reresolver::new(&seeds, vec![addr(7100)], now);
        assert!(!rule.due(now + RESOLVE_EVERY * 10, true));
    }

    #[test]
    fn a_saved_members_file_is_read_bounded_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_members_file(dir.path()).is_empty(), "no file");
        let long: Vec<SocketAddr> = (100..300).map(addr).collect();
        write_members_file(dir.path(), &long);
        assert_eq!(read_members_file(dir.path()), long[..SAVED_PEERS]);
        let file = dir.path().join(MEMBERS_FILE);
        std::fs::write(&file, b"{not json").unwrap();
        assert!(read_members_file(dir.path()).is_empty(), "garbage");
        std::fs::write(&file, vec![b' '; MEMBERS_FILE_MAX_BYTES as usize + 1]).unwrap();
        assert!(read_members_file(dir.path()).is_empty(), "too large");
    }

    fn peers(ports: impl IntoIterator<Item = u16>) -> BTreeSet<SocketAddr> {
        ports.into_iter().map(addr).collect()
    }

    #[test]
    fn a_large_mesh_saves_a_bounded_set_of_peers_and_keeps_it_while_they_are_up() {
        let me = addr(1);
        let mut up = peers(100..1100);
        let saved = peers_to_save(me, &[], &up).expect("nothing saved yet");
        assert_eq!(saved.len(), SAVED_PEERS, "bounded, however large the mesh");
        assert!(saved.iter().all(|a| up.contains(a)));
        // Others join and leave: the saved peers still do, so nothing is written.
        up.extend(peers(2000..2100));
        let unsaved = *up.iter().find(|a| !saved.contains(a)).unwrap();
        up.remove(&unsaved);
        assert_eq!(peers_to_save(me, &saved, &up), None);
        // One saved peer goes down: it alone is replaced.
        up.remove(&saved[0]);
        let next = peers_to_save(me, &saved, &up).expect("a saved peer is gone");
        assert_eq!(next.len(), SAVED_PEERS);
        assert!(!next.contains(&saved[0]));
        assert_eq!(
            next.iter().filter(|a| saved.contains(a)).count(),
            SAVED_PEERS - 1,
            "the others are kept"
        );
        // Another node picks other peers first.
        let theirs = peers_to_save(addr(2), &[], &peers(100..1100)).unwrap();
        assert_ne!(theirs, saved, "each node its own order");
    }

    #[test]
    fn a_small_mesh_saves_every_peer_and_an_isolated_node_keeps_its_list() {
        let me = addr(1);
        let saved = peers_to_save(me, &[], &peers([7, 8])).unwrap();
        assert_eq!(saved, vec![addr(7), addr(8)]);
        assert_eq!(peers_to_save(me, &saved, &peers([7, 8])), None);
        assert_eq!(
            peers_to_save(me, &saved, &peers([7, 8, 9])),
            Some(vec![addr(7), addr(8), addr(9)]),
            "room for one more"
        );
        assert_eq!(
            peers_to_save(me, &saved, &peers([])),
            None,
            "alone: keep the list"
        );
        let long: Vec<SocketAddr> = peers(100..200).into_iter().collect();
        let cut = peers_to_save(me, &long, &peers(100..200)).expect("too long a list");
        assert_eq!(
            cut.len(),
            SAVED_PEERS,
            "a list saved by an earlier version is cut down"
        );
    }

    #[tokio::test]
    async fn a_name_resolves_to_every_address_and_the_saved_peers_follow_without_this_node() {
        let dir = tempfile::tempdir().unwrap();
        write_members_file(dir.path(), &[addr(9), "127.0.0.1:7100".parse().unwrap()]);
        let me: SocketAddr = "127.0.0.1:7200".parse().unwrap();
        let seeds = vec![
            "localhost:7100".to_string(),
            "127.0.0.1:7200".to_string(),
            "no-such-host.invalid:7100".to_string(),
        ];
        let mut said = Default::default();
        let got = resolve(&seeds, dir.path(), me, &mut said).await;
        assert!(got.contains(&"127.0.0.1:7100".parse().unwrap()), "{got:?}");
        assert!(got.contains(&addr(9)), "{got:?}");
        assert!(!got.contains(&me), "never this node itself: {got:?}");
        let unique: BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "each address once: {got:?}");
        assert!(
            said.contains_key("no-such-host.invalid:7100"),
            "a failure is remembered"
        );
    }
}
