//! The routing table: for each service, the endpoints that may receive its
//! traffic — as a pure function of the members the membership protocol holds.
//!
//! The node feeds [`build_table`] the members it believes up (alive or suspect),
//! with their verified, decoded records ([`crate::membership::View`]) and the
//! services their certificates allow now; it gets back the table and a report of
//! what it ignored and why. No clock, no I/O: the same state always gives the
//! same table, which the node swaps in atomically.
//!
//! Rules, in order:
//! 1. Of several generations of one node, only the highest counts.
//! 2. A member without a node record naming itself is skipped (reported):
//!    callers cannot reach it.
//! 3. A draining node is listed but contributes no endpoints.
//! 4. A service record must be allowed by the node's certificate (a certificate
//!    renewed without a service drops it); otherwise it is ignored and reported.
//! 5. A service record of weight 0 is a service its node withdrew (a config
//!    reload removed it): no endpoint.
//! 6. Endpoints are ordered by node name, so pickers see a stable order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::gossip::{Health, NodeRecord, NodeState, ServiceRecord};
use crate::tunnel::Protocol;

/// One member that is up, with its verified records.
#[derive(Debug, Clone)]
pub struct MemberInput<'a> {
    /// The node name.
    pub name: &'a str,
    /// Its generation (start time); higher is newer.
    pub generation: u64,
    /// Its node record, if received (shared with the view it came from).
    pub node: Option<&'a Arc<NodeRecord>>,
    /// Its service records.
    pub services: &'a [ServiceRecord],
    /// The services its certificate allows now (none once it expired).
    pub allowed: &'a [String],
}

/// One place a service can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The hosting node.
    pub node: String,
    /// The hosting node's generation.
    pub generation: u64,
    /// The hosting node's zone.
    pub zone: String,
    /// The hosting node's QUIC address.
    pub addr: SocketAddr,
    /// The service's protocol.
    pub protocol: Protocol,
    /// Health as the hosting node's checks see it.
    pub health: Health,
    /// Load-balancing weight.
    pub weight: u32,
    /// In-flight load the node last published.
    pub inflight: u32,
    /// Tags.
    pub tags: Vec<String>,
}

/// A node in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Its record (shared with the view the table was built from).
    pub record: Arc<NodeRecord>,
    /// Its generation.
    pub generation: u64,
}

/// The routing table: plain data, built by [`build_table`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    services: BTreeMap<String, Vec<Endpoint>>,
    nodes: BTreeMap<String, NodeEntry>,
}

impl RoutingTable {
    /// The endpoints of `service` (empty if unknown), ordered by node name.
    pub fn endpoints(&self, service: &str) -> &[Endpoint] {
        self.services.get(service).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every service with at least one endpoint, and its endpoints.
    pub fn services(&self) -> impl Iterator<Item = (&str, &[Endpoint])> {
        self.services
            .iter()
            .map(|(name, eps)| (name.as_str(), eps.as_slice()))
    }

    /// The live nodes with a valid record, serving or draining.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// One node by name.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    /// This table with everything about `node` (its entry and its endpoints)
    /// replaced by what `fresh` says about it. A node cut off from every peer keeps
    /// its last view of the others this way while its own state (health, draining,
    /// services) stays current.
    pub fn with_node_from(&self, fresh: &RoutingTable, node: &str) -> RoutingTable {
        let mut out = self.clone();
        out.nodes.remove(node);
        if let Some(entry) = fresh.nodes.get(node) {
            out.nodes.insert(node.to_string(), entry.clone());
        }
        for eps in out.services.values_mut() {
            eps.retain(|e| e.node != node);
        }
        for (service, eps) in &fresh.services {
            let mine = eps.iter().filter(|e| e.node == node).cloned();
            let list = out.services.entry(service.clone()).or_default();
            list.extend(mine);
            list.sort_by(|a, b| a.node.cmp(&b.node));
        }
        out.services.retain(|_, eps| !eps.is_empty());
        out
    }
}

/// Something [`build_table`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// A service claim the node's certificate does not allow.
    NotInCertificate {
        /// The node.
        node: String,
        /// The claimed service.
        service: String,
    },
    /// A node record that names another node.
    InvalidRecord {
        /// The node.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// A member without a node record.
    NoNodeRecord {
        /// The node.
        node: String,
    },
}

/// Rule 1: the newest generation per node, by name. A view lists each member
/// once, by name, so that is the input as it comes (checked in one pass);
/// anything else goes through a map.
fn newest_by_name<'a>(members: impl IntoIterator<Item = MemberInput<'a>>) -> Vec<MemberInput<'a>> {
    let members: Vec<MemberInput<'a>> = members.into_iter().collect();
    if members.windows(2).all(|w| w[0].name < w[1].name) {
        return members;
    }
    let mut newest: BTreeMap<&str, MemberInput<'a>> = BTreeMap::new();
    for m in members {
        match newest.get(m.name) {
            Some(existing) if existing.generation >= m.generation => {}
            _ => {
                newest.insert(m.name, m);
            }
        }
    }
    newest.into_values().collect()
}

/// Builds the table from the members that are up (see the module documentation).
pub fn build_table<'a>(
    members: impl IntoIterator<Item = MemberInput<'a>>,
) -> (RoutingTable, Vec<Ignored>) {
    let mut table = RoutingTable::default();
    let mut ignored = Vec::new();
    for member in newest_by_name(members) {
        let name = member.name;
        let record = match member.node {
            Some(r) if r.name == name => r.clone(),
            Some(r) => {
                ignored.push(Ignored::InvalidRecord {
                    node: name.to_string(),
                    reason: format!("node record names node {:?}", r.name),
                });
                continue;
            }
            None => {
                ignored.push(Ignored::NoNodeRecord {
                    node: name.to_string(),
                });
                continue;
            }
        };
        let serving = record.state == NodeState::Serving;
        for svc in member.services {
            if !member.allowed.contains(&svc.name) {
                ignored.push(Ignored::NotInCertificate {
                    node: name.to_string(),
                    service: svc.name.clone(),
                });
                continue;
            }
            // Not serving, or a service the node withdrew (weight 0: a config
            // reload removed it).
            if !serving || svc.weight == ServiceRecord::WITHDRAWN {
                continue;
            }
            table
                .services
                .entry(svc.name.clone())
                .or_default()
                .push(Endpoint {
                    node: name.to_string(),
                    generation: member.generation,
                    zone: record.zone.clone(),
                    addr: record.quic_addr,
                    protocol: svc.protocol,
                    health: svc.health,
                    weight: svc.weight,
                    inflight: svc.inflight,
                    tags: svc.tags.clone(),
                });
        }
        table.nodes.insert(
            name.to_string(),
            NodeEntry {
                record,
                generation: member.generation,
            },
        );
    }
    // Members are visited in node order (BTreeMap), so endpoints already are sorted.
    (table, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: NodeState) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            zone: "z1".into(),
            cluster: "c".into(),
            quic_addr: "127.0.0.1:7000".parse().unwrap(),
            version: "test".into(),
            started_at_ms: 1,
            state,
        }
    }

    fn svc(name: &str, health: Health) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            protocol: Protocol::Tcp,
            weight: 100,
            health,
            inflight: 0,
            tags: vec![],
        }
    }

    struct Owned {
        id: String,
        generation: u64,
        node: Option<Arc<NodeRecord>>,
        services: Vec<ServiceRecord>,
        allowed: Vec<String>,
    }

    fn member(id: &str, generation: u64, state: NodeState, services: &[(&str, Health)]) -> Owned {
        Owned {
            id: id.into(),
            generation,
            node: Some(Arc::new(node(id, state))),
            services: services.iter().map(|(s, h)| svc(s, *h)).collect(),
            allowed: services.iter().map(|(s, _)| s.to_string()).collect(),
        }
    }

    fn inputs(members: &[Owned]) -> Vec<MemberInput<'_>> {
        members
            .iter()
            .map(|m| MemberInput {
                name: &m.id,
                generation: m.generation,
                node: m.node.as_ref(),
                services: &m.services,
                allowed: &m.allowed,
            })
            .collect()
    }

    #[test]
    fn with_node_from_replaces_only_that_node() {
        let before = [
            member("a", 1, NodeState::Serving, &[("web", Health::Healthy)]),
            member("b", 1, NodeState::Serving, &[("web", Health::Healthy)]),
            member("c", 1, NodeState::Serving, &[("db", Health::Healthy)]),
        ];
        let (old, _) = build_table(inputs(&before));
        // b is alone now: it no longer sees a or c, its web went unhealthy, it added api.
        let alone = [member(
            "b",
            1,
            NodeState::Serving,
            &[("web", Health::Unhealthy), ("api", Health::Healthy)],
        )];
        let (fresh, _) = build_table(inputs(&alone));
        let merged = old.with_node_from(&fresh, "b");
        let web: Vec<_> = merged
            .endpoints("web")
            .iter()
            .map(|e| (e.node.as_str(), e.health))
            .collect();
        assert_eq!(web, [("a", Health::Healthy), ("b", Health::Unhealthy)]);
        assert_eq!(merged.endpoints("api").len(), 1);
        assert_eq!(merged.endpoints("db")[0].node, "c");
        assert_eq!(merged.nodes().count(), 3);

        // b draining and serving nothing: its endpoints go, the others stay.
        let draining = [member("b", 1, NodeState::Draining, &[])];
        let (fresh, _) = build_table(inputs(&draining));
        let merged = old.with_node_from(&fresh, "b");
        assert_eq!(merged.endpoints("web").len(), 1);
        assert_eq!(merged.node("b").unwrap().record.state, NodeState::Draining);
    }

    #[test]
    fn builds_endpoints_per_service_in_node_order() {
        let members = [
            member("c", 1, NodeState::Serving, &[("web", Health::Healthy)]),
            member(
                "a",
                1,
                NodeState::Serving,
                &[("web", Health::Unhealthy), ("db", Health::Unknown)],
            ),
            member("b", 1, NodeState::Serving, &[]),
        ];
        let (table, ignored) = build_table(inputs(&members));
        assert!(ignored.is_empty(), "{ignored:?}");
        let web: Vec<_> = table
            .endpoints("web")
            .iter()
            .map(|e| (e.node.as_str(), e.health))
            .collect();
        assert_eq!(web, [("a", Health::Unhealthy), ("c", Health::Healthy)]);
        assert_eq!(table.endpoints("db").len(), 1);
        assert!(table.endpoints("nope").is_empty());
        assert_eq!(table.nodes().count(), 3);
        assert_eq!(table.endpoints("web")[0].zone, "z1");
    }

    #[test]
    fn a_service_published_with_weight_zero_is_withdrawn() {
        let mut a = member("a", 1, NodeState::Serving, &[("web", Health::Healthy)]);
        let b = member("b", 1, NodeState::Serving, &[("web", Health::Healthy)]);
        a.services[0].weight = ServiceRecord::WITHDRAWN;
        let members = [a, b];
        let (table, ignored) = build_table(inputs(&members));
        assert!(ignored.is_empty(), "{ignored:?}");
        let web: Vec<_> = table
            .endpoints("web")
            .iter()
            .map(|e| e.node.as_str())
            .collect();
        assert_eq!(web, ["b"], "a no longer offers web");
        assert!(table.node("a").is_some(), "a is still a member");
    }

    #[test]
    fn claims_outside_the_certificate_are_ignored_and_reported() {
        let mut m = member(
            "a",
            1,
            NodeState::Serving,
            &[("web", Health::Healthy), ("payments", Health::Healthy)],
        );
        m.allowed = vec!["web".into()];
        let members = [m];
        let (table, ignored) = build_table(inputs(&members));
        assert_eq!(table.endpoints("web").len(), 1);
        assert!(table.endpoints("payments").is_empty());
        assert_eq!(
            ignored,
            [Ignored::NotInCertificate {
                node: "a".into(),
                service: "payments".into()
            }]
        );
    }

    #[test]
    fn draining_nodes_offer_no_endpoints() {
        let members = [member(
            "a",
            1,
            NodeState::Draining,
            &[("web", Health::Healthy)],
        )];
        let (table, _) = build_table(inputs(&members));
        assert!(table.endpoints("web").is_empty());
        assert_eq!(table.node("a").unwrap().record.state, NodeState::Draining);
    }

    #[test]
    fn members_in_any_order_give_endpoints_in_node_order() {
        let web = &[("web", Health::Healthy)];
        let sorted = [
            member("a", 1, NodeState::Serving, web),
            member("b", 1, NodeState::Serving, web),
            member("c", 1, NodeState::Serving, web),
        ];
        let shuffled = [
            member("c", 1, NodeState::Serving, web),
            member("a", 1, NodeState::Serving, web),
            member("b", 1, NodeState::Serving, web),
        ];
        let (table, _) = build_table(inputs(&shuffled));
        let nodes: Vec<&str> = table
            .endpoints("web")
            .iter()
            .map(|e| e.node.as_str())
            .collect();
        assert_eq!(nodes, ["a", "b", "c"]);
        assert_eq!(table, build_table(inputs(&sorted)).0);
    }

    #[test]
    fn newest_generation_wins() {
        let members = [
            member("a", 5, NodeState::Serving, &[("new", Health::Healthy)]),
            member("a", 2, NodeState::Serving, &[("old", Health::Healthy)]),
        ];
        let (table, _) = build_table(inputs(&members));
        assert_eq!(table.endpoints("new")[0].generation, 5);
        assert!(table.endpoints("old").is_empty());
    }

    #[test]
    fn members_without_a_usable_node_record_are_skipped_with_a_reason() {
        let mut imposter = member("b", 1, NodeState::Serving, &[("web", Health::Healthy)]);
        imposter.node = Some(Arc::new(node("someone-else", NodeState::Serving)));
        let mut no_record = member("c", 1, NodeState::Serving, &[("web", Health::Healthy)]);
        no_record.node = None;
        let members = [
            member("a", 1, NodeState::Serving, &[("web", Health::Healthy)]),
            imposter,
            no_record,
        ];
        let (table, ignored) = build_table(inputs(&members));
        assert_eq!(table.endpoints("web").len(), 1);
        assert!(table.node("b").is_none());
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored.contains(&Ignored::NoNodeRecord { node: "c".into() }));
    }

    #[test]
    fn same_input_same_table() {
        let members = [
            member("x", 1, NodeState::Serving, &[("web", Health::Healthy)]),
            member("y", 1, NodeState::Serving, &[("web", Health::Healthy)]),
        ];
        let mut reversed = inputs(&members);
        reversed.reverse();
        assert_eq!(build_table(inputs(&members)).0, build_table(reversed).0);
    }
}
