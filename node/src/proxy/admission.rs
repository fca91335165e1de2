//! Admission of a stream by a local service: the one place that decides whether
//! a caller may open a connection to a service this node hosts, used alike by
//! the tunnel's serving side ([`super::inbound`]) and by a listener whose
//! endpoint is on this very node ([`super::upstream`]).
//!
//! Checks, in order (the first that fails decides):
//! 1. a claimed source service is one the caller's certificate names;
//! 2. the service's allow-list admits the caller's node or source service;
//! 3. the calling node holds fewer than the service's
//!    `max_connections_per_caller`, so no one caller can take every slot;
//! 4. the service is under its connection limit. The slot taken is held by the
//!    returned [`Slot`] and given back (to the service and to the caller's
//!    share) when that is dropped.
//!
//! Whether the service is hosted here, and whether the node is draining, are the
//! callers' to check first: they are about the node, not the service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_proto::tunnel::StatusCode;

use super::{CountGuard, LocalService};

/// Connections each calling node holds to one service.
pub type CallerCounts = Arc<Mutex<HashMap<String, usize>>>;

/// One connection slot of a local service, held for one caller: given back to
/// the service and to the caller's share when dropped.
#[derive(Debug)]
pub struct Slot {
    _service: CountGuard,
    _caller: CallerShare,
}

/// One of a caller's connections, counted in its share of a service.
#[derive(Debug)]
struct CallerShare {
    counts: CallerCounts,
    caller: String,
}

impl Drop for CallerShare {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

/// Who asks a local service for a connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The calling node, from its certificate (or this node's own name).
    pub node: &'a str,
    /// The source service it claims, if any.
    pub source_service: Option<&'a str>,
    /// Whether the caller's certificate names the claimed source service (a
    /// caller on this node claims what its own validated config says).
    pub source_certified: bool,
}

/// Why a local service refused a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The caller claimed a source service its certificate does not name.
    #[error(
        "caller {caller} claims source service {source_service:?} its certificate does not name"
    )]
    UncertifiedSource {
        /// The calling node.
        caller: String,
        /// The source service it claimed.
        source_service: String,
    },
    /// The service's allow-list admits neither the caller's node nor its
    /// source service.
    #[error("caller {caller} ({}) is not on the allow-list of {service}", source_service.as_deref().unwrap_or("no source service"))]
    NotAllowed {
        /// The calling node.
        caller: String,
        /// The source service it claimed, if any.
        source_service: Option<String>,
        /// The service refused.
        service: String,
    },
    /// The calling node holds as many connections to the service as its
    /// `max_connections_per_caller`.
    #[error(
        "caller {caller} already holds {max} connections to {service}, its most (max_connections_per_caller); the rest are kept for other callers"
    )]
    CallerAtCapacity {
        /// The calling node.
        caller: String,
        /// The service.
        service: String,
        /// Its `max_connections_per_caller`.
        max: u32,
    },
    /// The service has as many connections open as its `max_connections`.
    #[error("{service} is at its limit of {max} connections")]
    AtCapacity {
        /// The service.
        service: String,
        /// Its `max_connections`.
        max: u32,
    },
}

impl Refused {
    /// The status the tunnel answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::UncertifiedSource { .. } | Refused::NotAllowed { .. } => {
                StatusCode::Unauthorized
            }
            Refused::AtCapacity { .. } | Refused::CallerAtCapacity { .. } => StatusCode::Overloaded,
        }
    }
}

impl LocalService {
    /// Admits `caller` to this service, or says why not (see the module
    /// documentation for the checks). On success the returned guard holds one
    /// of the service's connection slots, counted in the caller's share.
    pub fn admit(&self, caller: &Caller<'_>) -> Result<Slot, Refused> {
        if let Some(src) = caller.source_service
            && !caller.source_certified
        {
            return Err(Refused::UncertifiedSource {
                caller: caller.node.to_string(),
                source_service: src.to_string(),
            });
        }
        if !self.config.allows(caller.node, caller.source_service) {
            return Err(Refused::NotAllowed {
                caller: caller.node.to_string(),
                source_service: caller.source_service.map(str::to_string),
                service: self.config.name.clone(),
            });
        }
        let share = self.take_share(caller.node)?;
        let max = self.config.max_connections;
        let service = CountGuard::try_acquire(&self.active, max as usize).ok_or_else(|| {
            Refused::AtCapacity {
                service: self.config.name.clone(),
                max,
            }
        })?;
        Ok(Slot {
            _service: service,
            _caller: share,
        })
    }

    /// One more connection in `node`'s share, unless it holds its most.
    fn take_share(&self, node: &str) -> Result<CallerShare, Refused> {
        let max = self.config.max_connections_per_caller;
        let mut counts = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.get(node).copied().unwrap_or(0);
        if held >= max as usize {
            return Err(Refused::CallerAtCapacity {
                caller: node.to_string(),
                service: self.config.name.clone(),
                max,
            });
        }
        counts.insert(node.to_string(), held + 1);
        Ok(CallerShare {
            counts: self.callers.clone(),
            caller: node.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_service;

    fn service(
        allow_nodes: &[&str],
        allow_services: &[&str],
        max_connections: u32,
    ) -> LocalService {
        test_service("db", allow_nodes, allow_services, max_connections)
    }

    fn caller<'a>(node: &'a str, source: Option<&'a str>, certified: bool) -> Caller<'a> {
        Caller {
            node,
            source_service: source,
            source_certified: certified,
        }
    }

    #[test]
    fn with_no_allow_list_every_mesh_node_is_admitted() {
        let db = service(&[], &[], 10);
        assert!(db.admit(&caller("node-2", None, true)).is_ok());
        assert!(db.admit(&caller("node-3", Some("web"), true)).is_ok());
    }

    #[test]
    fn the_allow_list_admits_a_node_or_a_source_service() {
        let db = service(&["node-2"], &["web"], 10);
        assert!(db.admit(&caller("node-2", None, true)).is_ok());
        assert!(db.admit(&caller("node-3", Some("web"), true)).is_ok());
        let refused = db.admit(&caller("node-3", Some("batch"), true));
        assert_eq!(
            refused.as_ref().err(),
            Some(&Refused::NotAllowed {
                caller: "node-3".into(),
                source_service: Some("batch".into()),
                service: "db".into(),
            })
        );
        let refused = refused.err().unwrap_or_else(|| unreachable!());
        assert_eq!(refused.status(), StatusCode::Unauthorized);
        assert_eq!(
            refused.to_string(),
            "caller node-3 (batch) is not on the allow-list of db"
        );
        assert!(matches!(
            db.admit(&caller("node-3", None, true)),
            Err(Refused::NotAllowed { .. })
        ));
    }

    #[test]
    fn a_source_service_the_certificate_does_not_name_is_refused_before_the_allow_list() {
        // Even a service the allow-list names: the claim itself is false.
        let db = service(&[], &["web"], 10);
        let refused = db.admit(&caller("node-3", Some("web"), false));
        assert!(
            matches!(&refused, Err(Refused::UncertifiedSource { caller, source_service })
                if caller == "node-3" && source_service == "web"),
            "{refused:?}"
        );
        assert_eq!(
            refused.err().map(|r| r.status()),
            Some(StatusCode::Unauthorized)
        );
        // A caller that claims nothing has nothing to certify.
        assert!(
            service(&[], &[], 10)
                .admit(&caller("node-3", None, false))
                .is_ok()
        );
    }

    #[test]
    fn slots_are_held_by_guards_and_given_back_when_they_drop() {
        let db = service(&[], &[], 2);
        let first = db.admit(&caller("node-2", None, true));
        let second = db.admit(&caller("node-3", None, true));
        assert!(first.is_ok() && second.is_ok());
        let third = db.admit(&caller("node-4", None, true));
        assert_eq!(
            third.as_ref().err(),
            Some(&Refused::AtCapacity {
                service: "db".into(),
                max: 2
            })
        );
        assert_eq!(
            third.err().map(|r| r.status()),
            Some(StatusCode::Overloaded)
        );
        assert_eq!(db.active.load(std::sync::atomic::Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(db.active.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(db.admit(&caller("node-4", None, true)).is_ok());
    }

    #[test]
    fn one_caller_cannot_take_every_slot() {
        let mut db = service(&[], &[], 4);
        db.config.max_connections_per_caller = 3;
        let held = |db: &LocalService, node: &str| {
            db.callers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(node)
                .copied()
        };
        let mine: Vec<_> = (0..3)
            .map(|_| db.admit(&caller("node-2", None, true)))
            .collect();
        assert!(mine.iter().all(Result::is_ok));
        let fourth = db.admit(&caller("node-2", None, true));
        assert_eq!(
            fourth.as_ref().err(),
            Some(&Refused::CallerAtCapacity {
                caller: "node-2".into(),
                service: "db".into(),
                max: 3
            })
        );
        assert_eq!(
            fourth.err().map(|r| r.status()),
            Some(StatusCode::Overloaded)
        );
        // The slot kept for the others is there ...
        let other = db.admit(&caller("node-3", None, true));
        assert!(other.is_ok());
        // ... and now the service is full for everyone; a refused caller
        // holds nothing afterwards.
        assert!(matches!(
            db.admit(&caller("node-4", None, true)),
            Err(Refused::AtCapacity { .. })
        ));
        assert_eq!(held(&db, "node-4"), None);
        assert_eq!(held(&db, "node-2"), Some(3));
        drop(mine);
        assert_eq!(held(&db, "node-2"), None, "given back when they end");
        let again = db.admit(&caller("node-2", None, true));
        assert!(again.is_ok());
        assert_eq!(held(&db, "node-2"), Some(1));
    }
}
