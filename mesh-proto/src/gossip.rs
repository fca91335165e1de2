//! What a node publishes about itself in gossip (design §4): the key names and
//! the records stored under them — its [`NodeCertificate`] under [`CERT_KEY`], its
//! [`NodeRecord`] under [`NODE_KEY`], one [`ServiceRecord`] per local service
//! under `svc:<name>` — each carried, signed by the node, in a
//! [`crate::membership::SignedRecord`]; and the operator-signed
//! [`RouteDocument`]s shared by the whole mesh.

use std::fmt;
use std::net::SocketAddr;

use bincode::{Decode, Encode};

use crate::codec::{FieldError, Frame, impl_frame_body};
use crate::names::{is_valid_name, validate_name};
use crate::tunnel::Protocol;

/// Key of the node's own [`NodeRecord`].
pub const NODE_KEY: &str = "node";
/// Prefix of the keys holding [`ServiceRecord`]s: `svc:<service name>`.
pub const SERVICE_KEY_PREFIX: &str = "svc:";
/// Prefix of the keys holding [`RouteDocument`]s: `route:<route name>`.
pub const ROUTE_KEY_PREFIX: &str = "route:";

/// The key of the record for local service `name`.
pub fn service_key(name: &str) -> String {
    format!("{SERVICE_KEY_PREFIX}{name}")
}

/// The key of the route document called `name`.
pub fn route_key(name: &str) -> String {
    format!("{ROUTE_KEY_PREFIX}{name}")
}

/// The key of a node's certificate ([`NodeCertificate`]): what lets every other
/// node check which services the node may host.
pub const CERT_KEY: &str = "cert";

/// A recognised key of a node's key space, as returned by [`parse_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// [`NODE_KEY`].
    Node,
    /// [`CERT_KEY`].
    Cert,
    /// `svc:<name>`, with the service name.
    Service(&'a str),
    /// `route:<name>`, with the route name.
    Route(&'a str),
}

/// Recognises a key. Returns `None` for any other key, including a known prefix
/// followed by an invalid name (a peer's bad key is ignored, never trusted).
pub fn parse_key(key: &str) -> Option<Key<'_>> {
    if key == NODE_KEY {
        return Some(Key::Node);
    }
    if key == CERT_KEY {
        return Some(Key::Cert);
    }
    if let Some(name) = key.strip_prefix(SERVICE_KEY_PREFIX) {
        return is_valid_name(name).then_some(Key::Service(name));
    }
    if let Some(name) = key.strip_prefix(ROUTE_KEY_PREFIX) {
        return is_valid_name(name).then_some(Key::Route(name));
    }
    None
}

/// Whether a node takes new streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum NodeState {
    /// Taking new streams.
    Serving,
    /// Shutting down: finishing its streams, taking no new ones. Callers stop
    /// choosing its endpoints as soon as they see this.
    Draining,
}

impl NodeState {
    /// The lowercase name used in logs and the admin API (`serving`, `draining`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value under [`NODE_KEY`]: who the node is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NodeRecord {
    /// The node's name, as in its certificate (`spiffe://TD/node/<name>`).
    pub name: String,
    /// The zone the node runs in, for zone-aware load balancing.
    pub zone: String,
    /// The cluster (mesh) the node belongs to.
    pub cluster: String,
    /// Where peers reach the node's QUIC endpoint. Must be dialable: no unspecified
    /// IP, no port 0.
    pub quic_addr: SocketAddr,
    /// The node's software version: 1 to [`NodeRecord::MAX_VERSION_LEN`] bytes of
    /// printable ASCII.
    pub version: String,
    /// When the node started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Whether the node takes new streams.
    pub state: NodeState,
}

impl NodeRecord {
    /// Longest accepted software version string, in bytes.
    pub const MAX_VERSION_LEN: usize = 64;
}

impl Frame for NodeRecord {
    const NAME: &'static str = "node record";
    const MAX_BODY_LEN: usize = 1024;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("node name", &self.name)?;
        validate_name("zone", &self.zone)?;
        validate_name("cluster", &self.cluster)?;
        if self.quic_addr.ip().is_unspecified() || self.quic_addr.port() == 0 {
            return Err(FieldError::Undialable {
                field: "QUIC address",
                addr: self.quic_addr,
            });
        }
        if self.version.is_empty() {
            return Err(FieldError::Empty {
                field: "software version",
            });
        }
        if self.version.len() > Self::MAX_VERSION_LEN {
            return Err(FieldError::TooLong {
                field: "software version",
                len: self.version.len(),
                max: Self::MAX_VERSION_LEN,
            });
        }
        if let Some(ch) = self.version.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(FieldError::BadChar {
                field: "software version",
                ch,
                allowed: "only printable ASCII is allowed",
            });
        }
        Ok(())
    }
}
impl_frame_body!(NodeRecord);

/// The value under [`CERT_KEY`]: the node's certificate (DER), published so that
/// every node can check, against the mesh CA, which services the node may host. A
/// service record whose service the certificate does not name is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NodeCertificate {
    /// The DER certificate, 1 to [`NodeCertificate::MAX_DER_LEN`] bytes.
    pub der: Vec<u8>,
}

impl NodeCertificate {
    /// Largest accepted certificate, in bytes.
    pub const MAX_DER_LEN: usize = 4096;
}

impl Frame for NodeCertificate {
    const NAME: &'static str = "node certificate";
    const MAX_BODY_LEN: usize = 4200;

    fn validate(&self) -> Result<(), FieldError> {
        if self.der.is_empty() {
            return Err(FieldError::Empty {
                field: "node certificate",
            });
        }
        if self.der.len() > Self::MAX_DER_LEN {
            return Err(FieldError::TooLong {
                field: "node certificate",
                len: self.der.len(),
                max: Self::MAX_DER_LEN,
            });
        }
        Ok(())
    }
}
impl_frame_body!(NodeCertificate);

/// Health of a local service endpoint, as its hosting node's active checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Health {
    /// The last checks passed.
    Healthy,
    /// The last checks failed; callers skip the endpoint.
    Unhealthy,
    /// Not checked yet (or checks are off).
    Unknown,
}

impl Health {
    /// The lowercase name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value under `svc:<name>`: one endpoint of a service, on the publishing node.
///
/// It carries no backend address: callers never connect to a backend directly (the
/// traffic arrives through the node's tunnel), so gossip does not reveal where the
/// backend listens.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ServiceRecord {
    /// The service name; the publishing node's certificate must name it.
    pub name: String,
    /// The protocol the service speaks.
    pub protocol: Protocol,
    /// Relative load-balancing weight, [`ServiceRecord::MIN_WEIGHT`] to
    /// [`ServiceRecord::MAX_WEIGHT`].
    pub weight: u32,
    /// Result of the hosting node's active health checks.
    pub health: Health,
    /// Requests or connections in flight to this endpoint when published.
    pub inflight: u32,
    /// Free-form labels (each a valid name), at most [`ServiceRecord::MAX_TAGS`].
    pub tags: Vec<String>,
}

impl ServiceRecord {
    /// Smallest accepted weight.
    pub const MIN_WEIGHT: u32 = 1;
    /// Largest accepted weight.
    pub const MAX_WEIGHT: u32 = 10_000;
    /// Most tags a record may carry.
    pub const MAX_TAGS: usize = 16;
}

impl Frame for ServiceRecord {
    const NAME: &'static str = "service record";
    const MAX_BODY_LEN: usize = 2048;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("service name", &self.name)?;
        if !(Self::MIN_WEIGHT..=Self::MAX_WEIGHT).contains(&self.weight) {
            return Err(FieldError::OutOfRange {
                field: "service weight",
                value: self.weight.into(),
                min: Self::MIN_WEIGHT.into(),
                max: Self::MAX_WEIGHT.into(),
            });
        }
        if self.tags.len() > Self::MAX_TAGS {
            return Err(FieldError::TooMany {
                field: "service tags",
                count: self.tags.len(),
                max: Self::MAX_TAGS,
            });
        }
        for tag in &self.tags {
            validate_name("service tag", tag)?;
        }
        Ok(())
    }
}
impl_frame_body!(ServiceRecord);

/// A signed route document, exactly as the operator signed it.
///
/// `body` is the canonical JSON of a [`crate::route::RouteSpec`]
/// ([`crate::route::RouteSpec::to_body`], read back by
/// [`crate::route::RouteSpec::parse_document`]); `signature` is the operator's
/// ECDSA P-256 SHA-256 signature (DER) over exactly those bytes, checked by the
/// node against the mesh CA (`shoal_pki::sign`). Nothing else is carried: no
/// field a relay could change. Of two documents for one route, the one with the
/// higher [`crate::route::Precedence`] wins (the signed issue time, then the
/// signed bytes). Decoding checks only names and sizes: a decoded document is not
/// yet trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct RouteDocument {
    /// The route's name.
    pub name: String,
    /// The signed document bytes, at most [`RouteDocument::MAX_DOCUMENT_LEN`].
    pub body: Vec<u8>,
    /// The operator's signature over `body`, at most
    /// [`RouteDocument::MAX_SIGNATURE_LEN`] bytes.
    pub signature: Vec<u8>,
    /// The operator certificate (DER) that made the signature, at most
    /// [`RouteDocument::MAX_SIGNER_CERT_LEN`] bytes.
    pub signer_cert_der: Vec<u8>,
}

impl RouteDocument {
    /// Longest accepted document body, in bytes.
    pub const MAX_DOCUMENT_LEN: usize = 24 * 1024;
    /// Longest accepted signature, in bytes (an ECDSA P-256 signature is at most 72).
    pub const MAX_SIGNATURE_LEN: usize = 512;
    /// Longest accepted signer certificate, in bytes.
    pub const MAX_SIGNER_CERT_LEN: usize = 4 * 1024;
}

impl Frame for RouteDocument {
    const NAME: &'static str = "route document";
    const MAX_BODY_LEN: usize = 32 * 1024;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("route name", &self.name)?;
        validate_document_sizes(&self.body, &self.signature, &self.signer_cert_der)
    }
}
impl_frame_body!(RouteDocument);

fn validate_document_sizes(
    body: &[u8],
    signature: &[u8],
    signer_cert_der: &[u8],
) -> Result<(), FieldError> {
    for (field, len, max) in [
        ("route body", body.len(), RouteDocument::MAX_DOCUMENT_LEN),
        (
            "route signature",
            signature.len(),
            RouteDocument::MAX_SIGNATURE_LEN,
        ),
        (
            "route signer certificate",
            signer_cert_der.len(),
            RouteDocument::MAX_SIGNER_CERT_LEN,
        ),
    ] {
        if len > max {
            return Err(FieldError::TooLong { field, len, max });
        }
    }
    Ok(())
}

/// The layout route documents had before they were relayed as signed: with a
/// version stamped by the node that accepted the document (not signed). Nodes
/// kept such documents on disk; this type reads them, and
/// [`From<LegacyRouteDocument>`] drops the version. Never sent.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LegacyRouteDocument {
    /// The route's name.
    pub name: String,
    /// The version stamped by the accepting node, ignored.
    pub version: LegacyVersion,
    /// The signed document bytes.
    pub body: Vec<u8>,
    /// The operator's signature over `body`.
    pub signature: Vec<u8>,
    /// The operator certificate (DER).
    pub signer_cert_der: Vec<u8>,
}

/// The node-stamped version of a [`LegacyRouteDocument`] (a hybrid logical
/// clock reading).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LegacyVersion {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter.
    pub logical: u32,
    /// The stamping node.
    pub node: String,
}

impl Frame for LegacyRouteDocument {
    const NAME: &'static str = "route document (layout with a version)";
    const MAX_BODY_LEN: usize = 32 * 1024;

    fn validate(&self) -> Result<(), FieldError> {
        validate_name("route name", &self.name)?;
        validate_name("route version node", &self.version.node)?;
        validate_document_sizes(&self.body, &self.signature, &self.signer_cert_der)
    }
}
impl_frame_body!(LegacyRouteDocument);

impl From<LegacyRouteDocument> for RouteDocument {
    fn from(old: LegacyRouteDocument) -> RouteDocument {
        RouteDocument {
            name: old.name,
            body: old.body,
            signature: old.signature,
            signer_cert_der: old.signer_cert_der,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_key_recognises_every_kind() {
        assert_eq!(parse_key("node"), Some(Key::Node));
        assert_eq!(parse_key("cert"), Some(Key::Cert));
        assert_eq!(parse_key("svc:web"), Some(Key::Service("web")));
        assert_eq!(parse_key("route:api.v2"), Some(Key::Route("api.v2")));
        assert_eq!(parse_key(&service_key("db")), Some(Key::Service("db")));
        assert_eq!(parse_key(&route_key("r-1")), Some(Key::Route("r-1")));
    }

    #[test]
    fn parse_key_ignores_unknown_keys_and_bad_names() {
        for key in [
            "",
            "nodes",
            "Node",
            "svc:",
            "svc:Web",
            "svc:a_b",
            "svc:-a",
            "route:",
            "route:x..y",
            "svc",
            "other:web",
            " svc:web",
            "svc:web ",
        ] {
            assert_eq!(parse_key(key), None, "{key:?}");
        }
    }

    #[test]
    fn documents_stored_with_a_version_are_read_back_without_it() {
        use crate::codec::{decode_text, encode_text};
        let old = LegacyRouteDocument {
            name: "shop".into(),
            version: LegacyVersion {
                wall_ms: 1_767_225_600_000,
                logical: 1,
                node: "n1".into(),
            },
            body: b"{}".to_vec(),
            signature: vec![1, 2],
            signer_cert_der: vec![3],
        };
        let text = encode_text(&old).unwrap();
        let doc: RouteDocument = decode_text::<LegacyRouteDocument>(&text).unwrap().into();
        assert_eq!(doc.name, "shop");
        assert_eq!(doc.body, b"{}");
        assert_eq!(doc.signature, [1, 2]);
        assert_eq!(doc.signer_cert_der, [3]);
        // The old layout never passes for the new one (the version's wall clock
        // reads as a body length of terabytes), so readers try the new layout
        // first and fall back.
        assert!(decode_text::<RouteDocument>(&text).is_err());
        let new = encode_text(&doc).unwrap();
        assert_eq!(decode_text::<RouteDocument>(&new).unwrap(), doc);
    }

    #[test]
    fn enums_display_lowercase() {
        assert_eq!(NodeState::Draining.to_string(), "draining");
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
    }
}
