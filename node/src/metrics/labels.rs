//! The label sets of the node's metric families, shared by the subsystems'
//! groups.

use prometheus_client::encoding::EncodeLabelSet;

/// Direction of gossip traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by this node.
    Sent,
    /// Received by this node.
    Received,
}

impl Direction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Labels: `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    /// sent or received.
    pub direction: &'static str,
}

/// Labels: `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why (a short snake_case word).
    pub reason: &'static str,
}

/// Labels: `task`, a long-running task of the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task's name (`gossip`, `routing`, `routes`, `health:<service>`...).
    pub task: String,
}

/// Labels: `state` of a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    /// alive, dead or draining.
    pub state: &'static str,
}

/// Labels: `service`, `result` of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HealthCheckLabels {
    /// The local service checked.
    pub service: String,
    /// success or failure.
    pub result: &'static str,
}

/// Labels: `listener`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener name.
    pub listener: String,
}

/// Labels: `listener`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// The listener name.
    pub listener: String,
    /// Why (a short snake_case word).
    pub reason: &'static str,
}

/// Labels: `listener`, `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerDirectionLabels {
    /// The listener name.
    pub listener: String,
    /// `upstream` (client to service) or `downstream` (service to client).
    pub direction: &'static str,
}

/// Labels: `node` (a peer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node name.
    pub node: String,
}

/// Labels: `listener`, `node` (an upstream endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The listener name.
    pub listener: String,
    /// The endpoint's node.
    pub node: String,
}

/// Labels: `service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The local service.
    pub service: String,
}

/// Labels: `service`, `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceDirectionLabels {
    /// The local service.
    pub service: String,
    /// `upstream` (caller to backend) or `downstream` (backend to caller).
    pub direction: &'static str,
}

/// Labels: `service`, `reason` of an inbound refusal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceReasonLabels {
    /// The target service named in the stream header (or `-` if unreadable).
    pub service: String,
    /// The refusal (`unknown_service`, `unauthorized`, ...).
    pub reason: &'static str,
}

/// Labels: `service`, `connection` (`new` or `reused`) of a tunnelled HTTP request
/// relayed to a local backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceConnectionLabels {
    /// The local service.
    pub service: String,
    /// Whether the request went over a new or a pooled keep-alive connection.
    pub connection: &'static str,
}

/// Labels of HTTP request metrics: `listener`, `route`, `service`, `class`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The listener name.
    pub listener: String,
    /// The route document that matched (`-` for the listener's default service).
    pub route: String,
    /// The destination service (`-` when none was chosen).
    pub service: String,
    /// Status class of the response: `2xx`, `4xx`, `5xx`...
    pub class: &'static str,
}

/// Labels of HTTP retry metrics: `listener`, `route`, `service`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpRetryLabels {
    /// The listener name.
    pub listener: String,
    /// The route document (`-` for the listener's default service).
    pub route: String,
    /// The destination service.
    pub service: String,
    /// What the previous try ran into: `connect_failure`, `5xx`, `reset`, `timeout`.
    pub reason: &'static str,
}
