//! SPIFFE identities: the `spiffe://TD/node/NAME`, `spiffe://TD/service/SVC` and
//! `spiffe://TD/operator/NAME` URIs that Shoal certificates carry, and reading them
//! back out of a certificate's subject alternative names.
//!
//! The node's TLS verifiers and the CLI both read identities through
//! [`CertIdentity::from_der`], so what "this certificate is node X, may host
//! services Y" means is decided here once.

use std::fmt;

use mesh_proto::names::{NameError, validate_name};
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI scheme of every SPIFFE id.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// What a SPIFFE id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// The trust domain itself (`spiffe://TD`), carried by the mesh CA.
    TrustDomain,
    /// A host running a `shoal` node (`spiffe://TD/node/NAME`).
    Node,
    /// A service a node may host (`spiffe://TD/service/SVC`).
    Service,
    /// A person or tool allowed to publish route documents (`spiffe://TD/operator/NAME`).
    Operator,
}

impl IdKind {
    fn path_segment(self) -> &'static str {
        match self {
            IdKind::TrustDomain => "",
            IdKind::Node => "node",
            IdKind::Service => "service",
            IdKind::Operator => "operator",
        }
    }
}

/// A parsed Shoal SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain (the mesh), for example `example.org`.
    pub trust_domain: String,
    /// What the id names.
    pub kind: IdKind,
    /// The node, service or operator name; empty for [`IdKind::TrustDomain`].
    pub name: String,
}

/// Why a SPIFFE id or a certificate's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The URI does not start with `spiffe://`.
    #[error("{uri:?} is not a SPIFFE id (it must start with spiffe://)")]
    NotSpiffe {
        /// The refused URI.
        uri: String,
    },
    /// The path is not one of `/node/NAME`, `/service/NAME`, `/operator/NAME`.
    #[error(
        "SPIFFE id {uri:?} has an unknown path; Shoal uses /node/NAME, /service/NAME and /operator/NAME"
    )]
    UnknownPath {
        /// The refused URI.
        uri: String,
    },
    /// The trust domain or the name breaks the naming rule.
    #[error("SPIFFE id {uri:?}: {source}")]
    BadName {
        /// The refused URI.
        uri: String,
        /// The rule that was broken.
        source: NameError,
    },
    /// The bytes are not an X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    /// The certificate carries SPIFFE ids of more than one trust domain.
    #[error("certificate mixes trust domains {0:?} and {1:?}")]
    MixedTrustDomains(String, String),
    /// The certificate carries more than one node or operator id, or both.
    #[error("certificate carries {0}; a Shoal certificate names exactly one node or one operator")]
    Ambiguous(String),
}

impl SpiffeId {
    /// Builds an id after checking both names.
    pub fn new(trust_domain: &str, kind: IdKind, name: &str) -> Result<Self, NameError> {
        validate_name("trust domain", trust_domain)?;
        if kind != IdKind::TrustDomain {
            validate_name(kind_what(kind), name)?;
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            kind,
            name: if kind == IdKind::TrustDomain {
                String::new()
            } else {
                name.to_string()
            },
        })
    }

    /// Parses `spiffe://TD`, `spiffe://TD/node/NAME`, `spiffe://TD/service/NAME` or
    /// `spiffe://TD/operator/NAME`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe {
                uri: uri.to_string(),
            })?;
        let bad_name = |source| IdentityError::BadName {
            uri: uri.to_string(),
            source,
        };
        let mut parts = rest.splitn(3, '/');
        let td = parts.next().unwrap_or_default();
        let (kind, name) = match (parts.next(), parts.next()) {
            (None, _) => (IdKind::TrustDomain, ""),
            (Some("node"), Some(n)) => (IdKind::Node, n),
            (Some("service"), Some(n)) => (IdKind::Service, n),
            (Some("operator"), Some(n)) => (IdKind::Operator, n),
            _ => {
                return Err(IdentityError::UnknownPath {
                    uri: uri.to_string(),
                });
            }
        };
        SpiffeId::new(td, kind, name).map_err(bad_name)
    }

    /// The URI form.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

fn kind_what(kind: IdKind) -> &'static str {
    match kind {
        IdKind::TrustDomain => "trust domain",
        IdKind::Node => "node name",
        IdKind::Service => "service name",
        IdKind::Operator => "operator name",
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            IdKind::TrustDomain => write!(f, "{SPIFFE_SCHEME}{}", self.trust_domain),
            kind => write!(
                f,
                "{SPIFFE_SCHEME}{}/{}/{}",
                self.trust_domain,
                kind.path_segment(),
                self.name
            ),
        }
    }
}

/// Everything a certificate says about who holds it, read from its URI SANs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// The trust domain of its SPIFFE ids; `None` when it carries none.
    pub trust_domain: Option<String>,
    /// The node name, for node certificates.
    pub node: Option<String>,
    /// The operator name, for operator certificates.
    pub operator: Option<String>,
    /// The services a node certificate allows its node to host, sorted.
    pub services: Vec<String>,
    /// Every SPIFFE id found, in certificate order.
    pub ids: Vec<SpiffeId>,
    /// Whether basic constraints mark it as a CA.
    pub is_ca: bool,
}

impl CertIdentity {
    /// Reads the identity of a DER certificate. URI SANs that are not SPIFFE ids are
    /// ignored; malformed SPIFFE ids, mixed trust domains or several node/operator
    /// ids are errors.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        Self::from_x509(&cert)
    }

    /// Like [`CertIdentity::from_der`] for an already parsed certificate.
    pub fn from_x509(cert: &X509Certificate<'_>) -> Result<Self, IdentityError> {
        let mut out = CertIdentity {
            is_ca: cert.is_ca(),
            ..Default::default()
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Malformed(format!("subject alternative name: {e}")))?;
        let Some(san) = san else {
            return Ok(out);
        };
        for name in &san.value.general_names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            if !uri.starts_with(SPIFFE_SCHEME) {
                continue;
            }
            let id = SpiffeId::parse(uri)?;
            match &out.trust_domain {
                Some(td) if *td != id.trust_domain => {
                    return Err(IdentityError::MixedTrustDomains(
                        td.clone(),
                        id.trust_domain.clone(),
                    ));
                }
                Some(_) => {}
                None => out.trust_domain = Some(id.trust_domain.clone()),
            }
            match id.kind {
                IdKind::Node | IdKind::Operator => {
                    if out.node.is_some() || out.operator.is_some() {
                        return Err(IdentityError::Ambiguous(format!(
                            "several node/operator ids (another one is {id})"
                        )));
                    }
                    if id.kind == IdKind::Node {
                        out.node = Some(id.name.clone());
                    } else {
                        out.operator = Some(id.name.clone());
                    }
                }
                IdKind::Service => out.services.push(id.name.clone()),
                IdKind::TrustDomain => {}
            }
            out.ids.push(id);
        }
        if out.operator.is_some() && !out.services.is_empty() {
            return Err(IdentityError::Ambiguous(
                "an operator id and service ids".to_string(),
            ));
        }
        out.services.sort();
        out.services.dedup();
        Ok(out)
    }

    /// The kind of certificate this is, as `shoal-pki inspect` reports it.
    pub fn kind(&self) -> CertKind {
        if self.is_ca {
            CertKind::Ca
        } else if self.node.is_some() {
            CertKind::Node
        } else if self.operator.is_some() {
            CertKind::Operator
        } else {
            CertKind::Other
        }
    }

    /// Whether a node with this certificate may host `service`.
    pub fn allows_service(&self, service: &str) -> bool {
        self.services
            .binary_search_by(|s| s.as_str().cmp(service))
            .is_ok()
    }
}

/// The role of a certificate in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// The mesh certificate authority.
    Ca,
    /// A node certificate (`spiffe://TD/node/NAME`).
    Node,
    /// An operator certificate (`spiffe://TD/operator/NAME`).
    Operator,
    /// Anything else (no Shoal identity).
    Other,
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertKind::Ca => "ca",
            CertKind::Node => "node",
            CertKind::Operator => "operator",
            CertKind::Other => "other",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_kind() {
        for uri in [
            "spiffe://example.org",
            "spiffe://example.org/node/web-1",
            "spiffe://example.org/service/web",
            "spiffe://example.org/operator/alice",
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id.to_uri(), uri);
        }
        let id = SpiffeId::parse("spiffe://td/node/a").unwrap();
        assert_eq!(id.kind, IdKind::Node);
        assert_eq!(id.name, "a");
        assert_eq!(id.trust_domain, "td");
    }

    #[test]
    fn rejects_foreign_and_malformed_ids() {
        assert!(matches!(
            SpiffeId::parse("https://td/node/a"),
            Err(IdentityError::NotSpiffe { .. })
        ));
        for bad in [
            "spiffe://td/pod/a",
            "spiffe://td/node",
            "spiffe://td/",
            "spiffe://td/node/a/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            SpiffeId::parse("spiffe://TD/node/a"),
            Err(IdentityError::BadName { .. })
        ));
        assert!(matches!(
            SpiffeId::parse("spiffe://td/node/A"),
            Err(IdentityError::BadName { .. })
        ));
    }
}
