//! Property: whatever a hostile member sends — random, valid-looking items about
//! any node, signed with its own key or not signed at all — a node never panics
//! and never changes another node's signed state (generation, version, node
//! record, services) or its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_proto::codec::encode;
use mesh_proto::gossip::{Health, NodeCertificate};
use mesh_proto::membership::signing::{indirect_ack_payload, record_payload, suspicion_payload};
use mesh_proto::membership::sim::{Network, node_record, service_record};
use mesh_proto::membership::wire::{
    Body, Digest, DocumentSummary, IndirectAck, IndirectPing, Items, NameRange, OriginSummary,
    PingReq, SuspicionId,
};
use mesh_proto::membership::{Crypto, GossipMessage, MemberView, SignedRecord, Suspicion, Timing};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Sig {
    Evil,
    Random(Vec<u8>),
}

#[derive(Debug, Clone)]
struct RecordPlan {
    origin: usize,
    key: usize,
    generation: usize,
    version: usize,
    signed_at: usize,
    value: usize,
    random_value: Vec<u8>,
    sig: Sig,
}

#[derive(Debug, Clone)]
struct SuspicionPlan {
    accuser: usize,
    target: usize,
    generation: usize,
    version: usize,
    issued_at: usize,
    sig: Sig,
}

/// A real record held by `n1` (of any member), replayed or changed.
#[derive(Debug, Clone)]
struct MutationPlan {
    /// Which member's records, and which of them.
    origin: usize,
    index: usize,
    /// What to change: 0 nothing (a replay), 1 version up, 2 value, 3 key,
    /// 4 generation up, 5 signing time.
    change: usize,
    bump: u64,
    value: usize,
    sig: Option<Sig>,
}

#[derive(Debug, Clone)]
enum Plan {
    Mutations(Vec<MutationPlan>),
    Records(Vec<RecordPlan>),
    Suspicions(Vec<SuspicionPlan>),
    Sync(Vec<(usize, usize, usize, u64)>, bool),
    Ping(u64),
    Ack(u64),
    /// Indirect probing: a ping-req for a name, an indirect ping on behalf of
    /// a name, an indirect ack (target, requester) signed by evil or garbage.
    PingReq(usize, u64),
    IndirectPing(usize, u64),
    IndirectAck(usize, usize, u64, Sig),
    Bytes(Vec<u8>),
}

const NAMES: [&str; 5] = ["n1", "n2", "evil", "ghost", "n3"];
const KEYS: [&str; 5] = ["node", "cert", "svc:web", "svc:db", "svc:x"];

fn sig() -> impl Strategy<Value = Sig> {
    prop_oneof![
        Just(Sig::Evil),
        proptest::collection::vec(any::<u8>(), 1..80).prop_map(Sig::Random)
    ]
}

fn record_plan() -> impl Strategy<Value = RecordPlan> {
    (
        (0..NAMES.len(), 0..KEYS.len(), 0..6usize, 0..7usize),
        (
            0..4usize,
            0..8usize,
            proptest::collection::vec(any::<u8>(), 0..64),
            sig(),
        ),
    )
        .prop_map(
            |((origin, key, generation, version), (signed_at, value, random_value, sig))| {
                RecordPlan {
                    origin,
                    key,
                    generation,
                    version,
                    signed_at,
                    value,
                    random_value,
                    sig,
                }
            },
        )
}

fn suspicion_plan() -> impl Strategy<Value = SuspicionPlan> {
    (
        0..NAMES.len(),
        0..NAMES.len(),
        0..6usize,
        0..7usize,
        0..4usize,
        sig(),
    )
        .prop_map(
            |(accuser, target, generation, version, issued_at, sig)| SuspicionPlan {
                accuser,
                target,
                generation,
                version,
                issued_at,
                sig,
            },
        )
}

fn mutation_plan() -> impl Strategy<Value = MutationPlan> {
    (
        (0..4usize, 0..3usize, 0..6usize),
        (1..1_000_000u64, 0..8usize, proptest::option::of(sig())),
    )
        .prop_map(
            |((origin, index, change), (bump, value, sig))| MutationPlan {
                origin,
                index,
                change,
                bump,
                value,
                sig,
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        3 => proptest::collection::vec(mutation_plan(), 1..6).prop_map(Plan::Mutations),
        1 => proptest::collection::vec(record_plan(), 1..6).prop_map(Plan::Records),
        1 => proptest::collection::vec(suspicion_plan(), 1..6).prop_map(Plan::Suspicions),
        1 => (
            proptest::collection::vec((0..NAMES.len(), 0..6usize, 0..7usize, any::<u64>()), 0..6),
            any::<bool>()
        )
            .prop_map(|(o, r)| Plan::Sync(o, r)),
        1 => any::<u64>().prop_map(Plan::Ping),
        1 => any::<u64>().prop_map(Plan::Ack),
        1 => (0..NAMES.len(), any::<u64>()).prop_map(|(t, n)| Plan::PingReq(t, n)),
        1 => (0..NAMES.len(), any::<u64>()).prop_map(|(r, n)| Plan::IndirectPing(r, n)),
        1 => (0..NAMES.len(), 0..NAMES.len(), any::<u64>(), sig())
            .prop_map(|(t, r, n, s)| Plan::IndirectAck(t, r, n, s)),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Plan::Bytes),
    ]
}

fn pick_u64(net: &Network, name: &str, which: usize, real: u64) -> u64 {
    let _ = (net, name);
    match which {
        0 => real,
        1 => real.saturating_add(1),
        2 => real.saturating_sub(1),
        3 => 0,
        4 => u64::MAX,
        5 => 1 << 62,
        _ => real.saturating_add(1000),
    }
}

struct World {
    net: Network,
}

impl World {
    fn new() -> World {
        let mut net = Network::new(Timing::from_interval(Duration::from_millis(100)), 3);
        for n in ["n1", "n2", "n3", "evil"] {
            net.add(n, &["web"]);
        }
        assert!(net.run_until(Duration::from_secs(10), Network::converged));
        World { net }
    }

    fn generation(&self, name: &str) -> u64 {
        self.net
            .node(name)
            .map(|n| n.membership.config().generation)
            .unwrap_or(self.net.wall_ms())
    }

    fn sign(&self, payload: &[u8], sig: &Sig) -> Vec<u8> {
        match sig {
            Sig::Evil => self.net.crypto_of("evil").sign(payload).unwrap(),
            Sig::Random(b) => b.clone(),
        }
    }

    fn value(&self, p: &RecordPlan) -> Vec<u8> {
        let evil = self.net.node("evil").unwrap().addr;
        match p.value {
            0 => node_record(NAMES[p.origin], evil, self.generation(NAMES[p.origin])),
            1 => service_record("web", Health::Unhealthy),
            2 => service_record("db", Health::Healthy),
            3 => encode(&NodeCertificate {
                der: self
                    .net
                    .crypto_of("evil")
                    .issue_node(NAMES[p.origin], &["web"], u64::MAX),
            })
            .unwrap(),
            4 => encode(&NodeCertificate {
                der: self
                    .net
                    .crypto_of("evil")
                    .issue_node("evil", &["web", "db"], u64::MAX),
            })
            .unwrap(),
            _ => p.random_value.clone(),
        }
    }

    fn record(&self, p: &RecordPlan) -> SignedRecord {
        let origin = NAMES[p.origin];
        let wall = self.net.wall_ms();
        let mut r = SignedRecord {
            origin: origin.into(),
            generation: pick_u64(&self.net, origin, p.generation, self.generation(origin)),
            version: pick_u64(&self.net, origin, p.version, 5),
            signed_at_ms: pick_u64(&self.net, origin, p.signed_at, wall),
            key: KEYS[p.key].into(),
            value: self.value(p),
            signature: vec![],
        };
        r.signature = self.sign(&record_payload(self.net.cluster(), &r), &p.sig);
        r
    }

    fn suspicion(&self, p: &SuspicionPlan) -> Suspicion {
        let (accuser, target) = (NAMES[p.accuser], NAMES[p.target]);
        let mut s = Suspicion {
            accuser: accuser.into(),
            accuser_generation: self.generation(accuser),
            target: target.into(),
            target_generation: pick_u64(&self.net, target, p.generation, self.generation(target)),
            target_version: pick_u64(&self.net, target, p.version, 3),
            issued_at_ms: pick_u64(&self.net, target, p.issued_at, self.net.wall_ms()),
            signature: vec![],
        };
        s.signature = self.sign(&suspicion_payload(self.net.cluster(), &s), &p.sig);
        s
    }

    fn mutation(&self, p: &MutationPlan) -> Option<SignedRecord> {
        let origin = ["n2", "n3", "n1", "evil"][p.origin];
        let held = self.net.node("n1")?.membership.signed_records(origin);
        let mut r = held.get(p.index % held.len().max(1))?.clone();
        let fake = RecordPlan {
            origin: NAMES.iter().position(|n| *n == origin).unwrap_or(0),
            key: 0,
            generation: 0,
            version: 0,
            signed_at: 0,
            value: p.value,
            random_value: vec![1, 2, 3],
            sig: Sig::Evil,
        };
        match p.change {
            0 => {}
            1 => r.version = r.version.saturating_add(p.bump),
            2 => {
                r.value = self.value(&fake);
                r.version = r.version.saturating_add(1);
            }
            3 => {
                r.key = KEYS[(p.bump % KEYS.len() as u64) as usize].into();
                r.version = r.version.saturating_add(1);
            }
            4 => r.generation = r.generation.saturating_add(p.bump % 10_000),
            _ => r.signed_at_ms = r.signed_at_ms.saturating_add(p.bump),
        }
        if let Some(sig) = &p.sig {
            r.signature = self.sign(&record_payload(self.net.cluster(), &r), sig);
        }
        Some(r)
    }

    fn message(&self, plan: &Plan) -> Option<GossipMessage> {
        let body = match plan {
            Plan::Mutations(ms) => Body::Items(Items {
                records: ms.iter().filter_map(|p| self.mutation(p)).collect(),
                ..Items::default()
            }),
            Plan::Records(rs) => Body::Items(Items {
                records: rs.iter().map(|p| self.record(p)).collect(),
                ..Items::default()
            }),
            Plan::Suspicions(ss) => Body::Items(Items {
                suspicions: ss.iter().map(|p| self.suspicion(p)).collect(),
                ..Items::default()
            }),
            Plan::Sync(origins, reply) => Body::Sync(Digest {
                range: NameRange::all(),
                origins: origins
                    .iter()
                    .map(|(o, g, v, f)| OriginSummary {
                        name: NAMES[*o].into(),
                        generation: pick_u64(&self.net, NAMES[*o], *g, self.generation(NAMES[*o])),
                        max_version: pick_u64(&self.net, NAMES[*o], *v, 4),
                        fingerprint: *f,
                    })
                    .collect(),
                suspicions: vec![SuspicionId {
                    target: "n2".into(),
                    accuser: "evil".into(),
                    target_version: 1,
                }],
                documents: vec![DocumentSummary {
                    name: "shop".into(),
                    id: [0; 16],
                }],
                reply: *reply,
            }),
            Plan::Ping(n) => Body::Ping(*n),
            Plan::Ack(n) => Body::Ack(*n),
            Plan::PingReq(t, nonce) => Body::PingReq(PingReq {
                nonce: *nonce,
                target: NAMES[*t].into(),
            }),
            Plan::IndirectPing(r, nonce) => Body::IndirectPing(IndirectPing {
                nonce: *nonce,
                requester: NAMES[*r].into(),
            }),
            Plan::IndirectAck(t, r, nonce, sig) => {
                let mut ack = IndirectAck {
                    nonce: *nonce,
                    requester: NAMES[*r].into(),
                    target: NAMES[*t].into(),
                    signature: vec![],
                };
                ack.signature = self.sign(&indirect_ack_payload(self.net.cluster(), &ack), sig);
                Body::IndirectAck(ack)
            }
            Plan::Bytes(_) => return None,
        };
        Some(GossipMessage {
            cluster: self.net.cluster().into(),
            sender_generation: self.generation("evil"),
            body,
        })
    }
}

/// What `observer` holds of `name` that only `name` can sign.
fn signed_state(net: &Network, observer: &str, name: &str) -> Option<MemberView> {
    let view = net
        .node(observer)?
        .membership
        .view(net.now(), net.wall_ms());
    let mut m = view.members.into_iter().find(|m| m.name == name)?;
    // Not signed state: this node's own opinions and timers.
    m.health = "";
    m.accusers.clear();
    m.last_heard_ms = 0;
    Some(m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn hostile_messages_never_change_another_nodes_signed_state(plans in proptest::collection::vec(plan(), 1..12)) {
        let mut w = World::new();
        let before_n2 = signed_state(&w.net, "n1", "n2");
        let before_n3 = signed_state(&w.net, "n1", "n3");
        let before_self = signed_state(&w.net, "n1", "n1").map(|m| (m.node.clone(), m.services.clone()));
        let evil = w.net.node("evil").unwrap().addr;
        for plan in &plans {
            match w.message(plan) {
                Some(m) => w.net.inject("evil", evil, "n1", &m),
                None => {
                    // Raw bytes: the decoder refuses them; nothing reaches the state.
                    if let Plan::Bytes(b) = plan {
                        let decoded = mesh_proto::codec::decode_exact::<GossipMessage>(b);
                        if let Ok(m) = decoded {
                            w.net.inject("evil", evil, "n1", &m);
                        }
                    }
                }
            }
        }
        prop_assert_eq!(signed_state(&w.net, "n1", "n2"), before_n2);
        prop_assert_eq!(signed_state(&w.net, "n1", "n3"), before_n3);
        let after_self = signed_state(&w.net, "n1", "n1").map(|m| (m.node.clone(), m.services.clone()));
        prop_assert_eq!(after_self, before_self);
        prop_assert!(signed_state(&w.net, "n1", "ghost").is_none(), "no ghost without a certificate");
    }
}
