//! Why an item from a peer was refused. Every refusal leaves the state as it was
//! and is reported, by reason, to the driver (metric
//! `shoal_gossip_rejected_total{reason}`). Items that are merely old news (a
//! version already held, an older generation) are not refusals and are dropped
//! silently.

use std::fmt;

/// Why an item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The message did not decode (driver-level).
    Malformed,
    /// The message is from another cluster.
    WrongCluster,
    /// A record about this node that this node did not publish.
    AboutSelf,
    /// A record of an origin whose certificate is not known yet (the certificate
    /// record must come first; anti-entropy delivers it).
    UnknownOrigin,
    /// A certificate record whose certificate does not verify (other CA, expired,
    /// other trust domain, not a node certificate).
    BadCertificate,
    /// A certificate record whose certificate names another node than the origin.
    CertificateMismatch,
    /// A signature that does not verify. Honest members verify before they relay,
    /// so the sender is faulty or hostile.
    BadSignature,
    /// A value that does not decode as its key's record, or contradicts its key
    /// or origin (a node record naming another node, another cluster).
    InvalidValue,
    /// A service record for a service the origin's certificate does not allow.
    ServiceNotInCertificate,
    /// Signed or started later than this node's clock plus the allowed skew.
    FromTheFuture,
    /// A record of a generation that a newer one replaced, or that died and was
    /// forgotten.
    StaleGeneration,
    /// The member cap is reached; the new member is not admitted.
    MemberLimit,
    /// The origin already holds as many keys as allowed.
    KeyLimit,
    /// The state holds as many bytes as allowed.
    StateFull,
    /// A suspicion by an accuser that is not a current member.
    UnknownAccuser,
    /// A suspicion of a node that is not a current member.
    UnknownTarget,
    /// A suspicion naming a version of its target this node never saw (the target
    /// never signed it, or this node is behind).
    UnknownVersion,
    /// The accuser raised more suspicions than its budget allows.
    AccuserRateLimited,
    /// The suspicion cap is reached.
    SuspicionLimit,
    /// A suspicion older than suspicions live.
    SuspicionTooOld,
    /// A suspicion whose accuser and target are the same node.
    SelfAccusation,
    /// A route document whose body does not parse, validate or match its name.
    DocumentInvalid,
    /// A route document whose operator signature or signer is refused.
    DocumentSignature,
    /// The route document cap is reached.
    DocumentLimit,
    /// A message from a peer in quarantine (it sent a bad signature).
    Quarantined,
    /// An anti-entropy request from a peer that already sent two of its kind
    /// in the last half round (each costs this node a digest).
    SyncRateLimited,
    /// A graft (a request for announced records) from a peer that already sent
    /// two in the last half round: an honest neighbour grafts at most once per
    /// graft wait.
    GraftRateLimited,
    /// An indirect probe this node will not help with: a ping-req for a member
    /// it does not hold (or for itself or the requester), beyond the relay caps,
    /// or an indirect ping beyond this round's answer budget.
    IndirectProbeRefused,
}

impl Refusal {
    /// Every reason, for metrics.
    pub const ALL: [Refusal; 28] = [
        Refusal::Malformed,
        Refusal::WrongCluster,
        Refusal::AboutSelf,
        Refusal::UnknownOrigin,
        Refusal::BadCertificate,
        Refusal::CertificateMismatch,
        Refusal::BadSignature,
        Refusal::InvalidValue,
        Refusal::ServiceNotInCertificate,
        Refusal::FromTheFuture,
        Refusal::StaleGeneration,
        Refusal::MemberLimit,
        Refusal::KeyLimit,
        Refusal::StateFull,
        Refusal::UnknownAccuser,
        Refusal::UnknownTarget,
        Refusal::UnknownVersion,
        Refusal::AccuserRateLimited,
        Refusal::SuspicionLimit,
        Refusal::SuspicionTooOld,
        Refusal::SelfAccusation,
        Refusal::DocumentInvalid,
        Refusal::DocumentSignature,
        Refusal::DocumentLimit,
        Refusal::Quarantined,
        Refusal::SyncRateLimited,
        Refusal::GraftRateLimited,
        Refusal::IndirectProbeRefused,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::WrongCluster => "wrong_cluster",
            Refusal::AboutSelf => "about_self",
            Refusal::UnknownOrigin => "unknown_origin",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::CertificateMismatch => "certificate_mismatch",
            Refusal::BadSignature => "bad_signature",
            Refusal::InvalidValue => "invalid_value",
            Refusal::ServiceNotInCertificate => "service_not_in_certificate",
            Refusal::FromTheFuture => "from_the_future",
            Refusal::StaleGeneration => "stale_generation",
            Refusal::MemberLimit => "member_limit",
            Refusal::KeyLimit => "key_limit",
            Refusal::StateFull => "state_full",
            Refusal::UnknownAccuser => "unknown_accuser",
            Refusal::UnknownTarget => "unknown_target",
            Refusal::UnknownVersion => "unknown_version",
            Refusal::AccuserRateLimited => "accuser_rate_limited",
            Refusal::SuspicionLimit => "suspicion_limit",
            Refusal::SuspicionTooOld => "suspicion_too_old",
            Refusal::SelfAccusation => "self_accusation",
            Refusal::DocumentInvalid => "document_invalid",
            Refusal::DocumentSignature => "document_signature",
            Refusal::DocumentLimit => "document_limit",
            Refusal::Quarantined => "quarantined",
            Refusal::SyncRateLimited => "sync_rate_limited",
            Refusal::GraftRateLimited => "graft_rate_limited",
            Refusal::IndirectProbeRefused => "indirect_probe_refused",
        }
    }

    /// Whether the refusal proves the *sender* faulty or hostile, whoever the
    /// item's origin is: honest members check every item before they store or
    /// relay it, so they never send a bad signature. The driver quarantines such
    /// a sender for a while.
    pub fn proves_sender_faulty(self) -> bool {
        matches!(self, Refusal::BadSignature)
    }

    /// Whether the refusal is ordinary in a healthy mesh (races between gossip
    /// paths, restarts): logged at debug level only.
    pub fn is_benign(self) -> bool {
        matches!(
            self,
            Refusal::UnknownOrigin
                | Refusal::StaleGeneration
                | Refusal::UnknownAccuser
                | Refusal::UnknownTarget
                | Refusal::UnknownVersion
                | Refusal::SuspicionTooOld
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Refusal::ALL {
            let l = r.as_str();
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
            assert!(seen.insert(l), "{l} twice");
        }
    }
}
