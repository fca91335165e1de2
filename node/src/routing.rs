//! Keeps this node's routing table current: whenever gossip reports a change in
//! the live members, rebuild the table (`mesh_proto::routing::build_table`, a pure
//! function) and swap it in atomically. Readers (proxies, the admin API) load the
//! current table without locks.
//!
//! Which services a node may host is read from the certificate it publishes under
//! `cert`, verified against the mesh CA here (results cached per certificate).
//! If every peer disappears at once, the peers' last known entries are kept: an
//! isolated node keeps serving what it knew rather than nothing, while its own
//! entries (health, draining, services) stay current.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_proto::codec::decode_text;
use mesh_proto::gossip::{CERT_KEY, NodeCertificate};
use mesh_proto::routing::{Ignored, MemberInput, RoutingTable, build_table};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

use crate::gossip::Gossip;
use crate::metrics::Metrics;
use crate::tls::TlsState;

/// The shared, atomically swapped routing table.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// Verified certificates: the published value → (node, services, not_after unix).
#[derive(Debug, Default)]
struct CertCache {
    verified: HashMap<String, Option<(String, Vec<String>, i64)>>,
}

impl CertCache {
    /// The services `node`'s published certificate allows — only if that
    /// certificate verifies and is `node`'s own (a member publishing another
    /// node's public certificate gains nothing).
    fn services(
        &mut self,
        tls: &TlsState,
        node: &str,
        value: &str,
        now: UnixTime,
    ) -> Option<Vec<String>> {
        let entry = self.verified.entry(value.to_string()).or_insert_with(|| {
            let cert = decode_text::<NodeCertificate>(value).ok()?;
            let der = CertificateDer::from(cert.der);
            let id = tls
                .verify_peer(&der, &[], now, webpki::KeyUsage::server_auth())
                .ok()?;
            let (_, x509) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some((id.node?, id.services, x509.validity().not_after.timestamp()))
        });
        match entry {
            Some((owner, services, not_after))
                if owner == node && *not_after >= now.as_secs() as i64 =>
            {
                Some(services.clone())
            }
            _ => None,
        }
    }
}

/// Rebuilds the table on every change of the live set until `stop` fires.
pub async fn run(
    gossip: Arc<Gossip>,
    tls: Arc<TlsState>,
    table: SharedTable,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let self_name = gossip.self_id().node_id.to_string();
    let mut live = gossip.live_watcher().await;
    let mut certs = CertCache::default();
    let mut trust = tls.trust_changes();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    let mut isolated = false;
    loop {
        let next = {
            let states = live.borrow_and_update();
            let now = UnixTime::now();
            // The allowed services of each node, from its newest generation's certificate.
            let mut allowed: HashMap<&str, (u64, Vec<String>)> = HashMap::new();
            for (id, state) in states.iter() {
                let services = state
                    .get(CERT_KEY)
                    .and_then(|v| certs.services(&tls, &id.node_id, v, now))
                    .unwrap_or_default();
                let newer = allowed
                    .get(&*id.node_id)
                    .is_none_or(|(g, _)| *g < id.generation_id);
                if newer {
                    allowed.insert(&id.node_id, (id.generation_id, services));
                }
            }
            let current: HashSet<&str> = states.values().filter_map(|s| s.get(CERT_KEY)).collect();
            certs.verified.retain(|k, _| current.contains(k.as_str()));
            let inputs = states.iter().map(|(id, state)| MemberInput {
                node_id: &id.node_id,
                generation: id.generation_id,
                values: state.key_values().collect(),
            });
            let (table, ignored) = build_table(inputs, |node, service| {
                allowed
                    .get(node)
                    .is_some_and(|(_, s)| s.iter().any(|x| x == service))
            });
            for item in ignored {
                match item {
                    Ignored::NotInCertificate { node, service } => {
                        if reported.insert((node.clone(), service.clone())) {
                            metrics.ignored_service_claims.inc();
                            tracing::warn!(
                                %node, %service,
                                "ignoring a service claim the node's certificate does not allow"
                            );
                        }
                    }
                    other => tracing::debug!(?other, "ignored gossip record"),
                }
            }
            // Forget reports about nodes that left, so a returning one is reported again.
            reported.retain(|(node, _)| allowed.contains_key(node.as_str()));
            table
        };
        let alone = next.nodes().all(|n| n.record.name == self_name);
        let last = table.load_full();
        let had_peers = last.nodes().any(|n| n.record.name != self_name);
        let next = if alone && had_peers {
            if !isolated {
                tracing::warn!("lost every peer; keeping their last known state until they return");
                isolated = true;
            }
            // Keep the peers as last seen, but this node's own entries current.
            last.with_node_from(&next, &self_name)
        } else {
            if isolated {
                tracing::info!("peers are back; routing from gossip again");
                isolated = false;
            }
            next
        };
        table.store(Arc::new(next));
        metrics.routing_rebuilds.inc();
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = trust.changed() => {
                // Certificates verified under the old CA must be checked again.
                certs.verified.clear();
            }
            _ = stop.changed() => return,
        }
    }
}
