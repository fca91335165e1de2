//! Mesh TLS: this node's certificate and key (reloadable without dropping
//! connections), the SPIFFE verifiers that both ends of every QUIC connection run,
//! and the rustls configurations built from them.
//!
//! A peer is accepted only if its certificate chains to the mesh CA, is valid now,
//! and carries exactly one `spiffe://TD/node/NAME` id of this node's trust domain.
//! rustls' WebPKI server verifier insists on a DNS/IP SAN, which SPIFFE-only
//! certificates lack, so both verifiers are written here (as Linkerd and ztunnel
//! do): the chain is checked by rustls-webpki, signatures by the crypto provider,
//! and then the SPIFFE id by [`shoal_pki::CertIdentity`].
//!
//! One crypto provider (ring), TLS 1.3 only.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_proto::revocation::{Revocation, RevocationList};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use shoal_pki::{
    CertIdentity, CertSerial, OperatorVerifier, RevocationVerifier, SignatureError, Signer,
};
use thiserror::Error;
use webpki::{EndEntityCert, KeyUsage};

use crate::metrics::{Metrics, ReasonLabels};

pub mod files;

/// ALPN of gossip connections: the membership protocol of
/// `mesh_proto::membership` (version 2; version 1 was chitchat's, which nodes no
/// longer speak).
pub const ALPN_GOSSIP: &[u8] = b"shoal-gossip/2";
/// ALPN of tunnel connections (version 2: an HTTP request travels as
/// `mesh_proto::exchange` parts right after its stream header; version 1
/// carried HTTP/1.1 after a status round trip, and nodes no longer speak it).
pub const ALPN_TUNNEL: &[u8] = b"shoal-tunnel/2";
/// The TLS server name every node dials. Which node must answer is checked after
/// the handshake, against the peer certificate's node id: node names follow the
/// DNS label rule but are not always valid TLS server names.
pub const ANY_NODE: &str = "any-node.shoal.invalid";

/// The three files of a node's identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFiles {
    /// The node certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The mesh CA certificate (PEM).
    pub ca: PathBuf,
}

/// Why the node's own TLS material could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file cannot be read or does not hold what it should
    /// ([`files::check`]'s first problem).
    #[error("{field}: {reason}")]
    Invalid {
        /// Which config field names the file.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// The trust side: the mesh CA as a trust anchor, and the trust domain.
#[derive(Debug)]
pub struct MeshTrust {
    trust_domain: String,
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    /// The same anchors, for operator signatures on route documents.
    operators: OperatorVerifier,
    /// The CA certificates themselves, for the CA signature on the revocation
    /// list.
    revocations: RevocationVerifier,
    /// The CA certificates (DER), to tell whether a reload changed them.
    ca_fingerprint: Vec<Vec<u8>>,
}

/// What this node presents: certificate, key, and the identity they carry.
#[derive(Debug)]
pub struct LocalIdentity {
    /// The node name in the certificate.
    pub node_name: String,
    /// The trust domain.
    pub trust_domain: String,
    /// Services the certificate allows this node to host.
    pub services: Vec<String>,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// When the certificate expires (unix seconds).
    pub not_after_unix: i64,
    certified: Arc<CertifiedKey>,
}

/// How long before this node's certificate expires the node starts warning (a
/// WARN log line every hour, `shoal_certificate_expires_soon`, the dashboard).
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl LocalIdentity {
    /// Seconds until the certificate expires, at `now_unix` (negative once it
    /// has).
    pub fn seconds_left(&self, now_unix: i64) -> i64 {
        self.not_after_unix - now_unix
    }

    /// Whether the certificate expires within [`EXPIRY_WARNING`] of `now_unix`.
    pub fn expires_soon(&self, now_unix: i64) -> bool {
        self.seconds_left(now_unix) < EXPIRY_WARNING.as_secs() as i64
    }
}

/// Loads certificate, key and CA once [`files::check`] finds no problem with
/// them (the first problem is the error): a node certificate valid now under
/// that CA, and its key.
pub fn load(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<(LocalIdentity, MeshTrust), TlsError> {
    let paths = files::Paths {
        cert: Some(&files.cert),
        key: Some(&files.key),
        ca: Some(&files.ca),
    };
    let (checked, problems) = files::check(paths, time::OffsetDateTime::now_utc());
    if let Some(p) = problems.into_iter().next() {
        return Err(invalid(p.field, p.reason));
    }
    let (Some(checked), Some(node_name)) = (
        checked.as_ref(),
        checked.as_ref().and_then(|c| c.identity.node.clone()),
    ) else {
        return Err(invalid("tls.cert", "not a usable node certificate"));
    };
    let Some(key) = checked.key.as_ref().map(PrivateKeyDer::clone_key) else {
        return Err(invalid("tls.key", "not a usable private key"));
    };
    let certified =
        CertifiedKey::from_der(vec![checked.cert.clone()], key, provider).map_err(|e| {
            invalid(
                "tls.key",
                format!("does not match tls.cert or is not a supported key: {e}"),
            )
        })?;
    let trust_domain = checked.bundle.trust_domain.clone();
    let anchors = checked
        .bundle
        .cas
        .iter()
        .map(|ca| {
            webpki::anchor_from_trusted_cert(ca)
                .map(|a| a.to_owned())
                .map_err(|e| invalid("tls.ca", format!("{e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = LocalIdentity {
        node_name,
        trust_domain: trust_domain.clone(),
        services: checked.identity.services.clone(),
        not_after_unix: checked.not_after.unix_timestamp(),
        cert_der: checked.cert.clone(),
        certified: Arc::new(certified),
    };
    let trust = MeshTrust {
        operators: OperatorVerifier::new(trust_domain.clone(), anchors.clone()),
        revocations: RevocationVerifier::from_bundle(&checked.bundle),
        trust_domain,
        anchors,
        ca_fingerprint: checked
            .bundle
            .cas
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
    };
    Ok((identity, trust))
}

/// Why a peer certificate was refused; also the `reason` label of the
/// `shoal_rejected_peers_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not signed by the mesh CA.
    OtherCa,
    /// Expired.
    Expired,
    /// Not valid yet.
    NotYetValid,
    /// SPIFFE ids of another trust domain.
    WrongTrustDomain,
    /// No `spiffe://TD/node/NAME` id (an operator certificate, say).
    NotANode,
    /// Not the node that was dialled.
    WrongNode,
    /// Does not parse, or has contradictory ids.
    Malformed,
    /// Any other chain problem (key usage, ...).
    Invalid,
    /// A node dialled for a service presented a certificate that does not
    /// allow it.
    ServiceNotAllowed,
    /// The certificate is on the mesh's revocation list.
    Revoked,
}

impl Rejection {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Rejection; 10] = [
        Rejection::OtherCa,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::WrongTrustDomain,
        Rejection::NotANode,
        Rejection::WrongNode,
        Rejection::Malformed,
        Rejection::Invalid,
        Rejection::ServiceNotAllowed,
        Rejection::Revoked,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::OtherCa => "other_ca",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongTrustDomain => "wrong_trust_domain",
            Rejection::NotANode => "not_a_node",
            Rejection::WrongNode => "wrong_node",
            Rejection::Malformed => "malformed",
            Rejection::Invalid => "invalid",
            Rejection::ServiceNotAllowed => "service_not_allowed",
            Rejection::Revoked => "revoked",
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(match self {
            Rejection::OtherCa => CertificateError::UnknownIssuer,
            Rejection::Expired => CertificateError::Expired,
            Rejection::NotYetValid => CertificateError::NotValidYet,
            Rejection::Malformed => CertificateError::BadEncoding,
            Rejection::WrongNode => CertificateError::NotValidForName,
            Rejection::Revoked => CertificateError::Revoked,
            Rejection::WrongTrustDomain
            | Rejection::NotANode
            | Rejection::Invalid
            | Rejection::ServiceNotAllowed => CertificateError::ApplicationVerificationFailure,
        })
    }
}

/// The node's TLS state: identity and trust, each swappable on reload.
pub struct TlsState {
    identity: ArcSwap<LocalIdentity>,
    trust: ArcSwap<MeshTrust>,
    provider: Arc<CryptoProvider>,
    algs: WebPkiSupportedAlgorithms,
    metrics: Arc<Metrics>,
    stamp: std::sync::Mutex<FileStamp>,
    trust_generation: tokio::sync::watch::Sender<u64>,
    /// Services a reloaded certificate must still allow (the ones this node hosts).
    required_services: std::sync::Mutex<Vec<String>>,
    /// The revocation list in force (empty until one is).
    revoked: ArcSwap<RevocationList>,
    /// Refused certificates already logged: one peer retrying a refused
    /// handshake is one line a minute, not one per attempt.
    refusals_logged: crate::throttle::Throttle,
}

/// Modification time and length of each TLS file, to notice changes on disk.
pub type FileStamp = Vec<Option<(std::time::SystemTime, u64)>>;

impl TlsFiles {
    /// The files' current stamp.
    pub fn stamp(&self) -> FileStamp {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// Why a reload was refused; the `reason` label of
/// `shoal_tls_reloads_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReloadRefusal {
    /// The files cannot be read, or do not make a usable identity.
    UnusableFiles,
    /// The certificate is another node's.
    OtherNode,
    /// The CA is of another trust domain.
    OtherTrustDomain,
    /// The certificate no longer allows a service this node hosts.
    ServiceNotAllowed,
}

impl ReloadRefusal {
    fn as_str(self) -> &'static str {
        match self {
            ReloadRefusal::UnusableFiles => "unusable_files",
            ReloadRefusal::OtherNode => "other_node",
            ReloadRefusal::OtherTrustDomain => "other_trust_domain",
            ReloadRefusal::ServiceNotAllowed => "service_not_allowed",
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// The CA set differs: connections authenticated under the old one must be
    /// checked again.
    pub ca_changed: bool,
    /// This node's own certificate differs.
    pub cert_changed: bool,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("node", &self.identity.load().node_name)
            .field("trust_domain", &self.trust.load().trust_domain)
            .finish_non_exhaustive()
    }
}

/// The crypto provider every Shoal TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsState {
    /// Loads the files into a new state.
    pub fn load(files: &TlsFiles, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let stamp = files.stamp();
        let (identity, trust) = load(files, &provider)?;
        let algs = provider.signature_verification_algorithms;
        metrics.tls.certificate_expiry.set(identity.not_after_unix);
        for r in Rejection::ALL {
            let _ = metrics
                .tls
                .rejected_peers
                .get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        Ok(Arc::new(TlsState {
            identity: ArcSwap::from_pointee(identity),
            trust: ArcSwap::from_pointee(trust),
            provider,
            algs,
            metrics,
            stamp: std::sync::Mutex::new(stamp),
            trust_generation: tokio::sync::watch::channel(0).0,
            required_services: std::sync::Mutex::default(),
            revoked: ArcSwap::from_pointee(RevocationList::empty(String::new())),
            refusals_logged: crate::throttle::Throttle::default(),
        }))
    }

    /// Whether this node's certificate expires within [`EXPIRY_WARNING`] of
    /// `now_unix` (then the seconds left), kept in
    /// `shoal_certificate_expires_soon`.
    pub fn check_expiry(&self, now_unix: i64) -> Option<i64> {
        let identity = self.identity.load();
        let soon = identity.expires_soon(now_unix);
        self.metrics
            .tls
            .certificate_expires_soon
            .set(i64::from(soon));
        soon.then(|| identity.seconds_left(now_unix))
    }

    /// From now on, a reloaded certificate that does not allow every one of
    /// `services` (the services this node hosts) is refused: the node keeps
    /// the certificate it has rather than drop a service from the mesh.
    pub fn require_services(&self, services: Vec<String>) {
        *self
            .required_services
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = services;
    }

    /// Whether the files changed on disk since they were last loaded (or last
    /// failed to load).
    pub fn files_changed(&self, files: &TlsFiles) -> bool {
        let now = files.stamp();
        let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *stamp == now {
            false
        } else {
            *stamp = now;
            true
        }
    }

    /// Loads the files again and installs them, unless the new identity is
    /// another node's, of another trust domain, or no longer allows a service
    /// this node hosts (see [`TlsState::require_services`]): then the current
    /// identity stays, and the refusal is counted by reason
    /// (`shoal_tls_reloads_refused_total`).
    pub fn reload(&self, files: &TlsFiles) -> Result<Reloaded, TlsError> {
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = files.stamp();
        let loaded = load(files, &self.provider).map_err(|e| (ReloadRefusal::UnusableFiles, e));
        let checked = loaded.and_then(|(identity, trust)| {
            self.check_successor(&identity)?;
            Ok((identity, trust))
        });
        let (identity, trust) = match checked {
            Ok(new) => new,
            Err((reason, e)) => {
                self.metrics
                    .tls
                    .reloads_refused
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
                return Err(e);
            }
        };
        let current = self.identity.load();
        let ca_changed = self.trust.load().ca_fingerprint != trust.ca_fingerprint;
        let cert_changed = current.cert_der != identity.cert_der;
        self.metrics
            .tls
            .certificate_expiry
            .set(identity.not_after_unix);
        self.identity.store(Arc::new(identity));
        self.trust.store(Arc::new(trust));
        if ca_changed {
            self.trust_generation.send_modify(|g| *g += 1);
        }
        Ok(Reloaded {
            ca_changed,
            cert_changed,
        })
    }

    /// Whether `identity` may replace the current one: the same node, the same
    /// trust domain, and every hosted service still allowed.
    fn check_successor(&self, identity: &LocalIdentity) -> Result<(), (ReloadRefusal, TlsError)> {
        let current = self.identity.load();
        if identity.node_name != current.node_name {
            let reason = format!(
                "the new certificate is for node {:?}, this node is {:?}; restart to rename a node",
                identity.node_name, current.node_name
            );
            return Err((ReloadRefusal::OtherNode, invalid("tls.cert", reason)));
        }
        if identity.trust_domain != current.trust_domain {
            let reason = format!(
                "the new CA is for trust domain {:?}, this node is in {:?}",
                identity.trust_domain, current.trust_domain
            );
            return Err((ReloadRefusal::OtherTrustDomain, invalid("tls.ca", reason)));
        }
        let required = self
            .required_services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(dropped) = required.iter().find(|s| !identity.services.contains(s)) else {
            return Ok(());
        };
        let allows = if identity.services.is_empty() {
            "none".to_string()
        } else {
            identity.services.join(", ")
        };
        let reason = format!(
            "the new certificate does not allow service {dropped:?}, which this node hosts (it allows: {allows}); \
             issue it again with --service {dropped} (and every other hosted service), or remove the service from the config and restart"
        );
        Err((
            ReloadRefusal::ServiceNotAllowed,
            invalid("tls.cert", reason),
        ))
    }

    /// Changes whenever a reload installs a different CA set.
    pub fn trust_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust_generation.subscribe()
    }

    /// The identity currently presented.
    pub fn identity(&self) -> Arc<LocalIdentity> {
        self.identity.load_full()
    }

    /// Checks a peer's certificate; returns its identity.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<CertIdentity, Rejection> {
        let trust = self.trust.load();
        let ee = EndEntityCert::try_from(end_entity).map_err(|_| Rejection::Malformed)?;
        ee.verify_for_usage(
            self.algs.all,
            &trust.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => Rejection::Expired,
            webpki::Error::CertNotValidYet { .. } => Rejection::NotYetValid,
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                Rejection::OtherCa
            }
            webpki::Error::BadDer | webpki::Error::BadDerTime => Rejection::Malformed,
            _ => Rejection::Invalid,
        })?;
        let id = CertIdentity::from_der(end_entity).map_err(|_| Rejection::Malformed)?;
        if id.trust_domain.as_deref() != Some(trust.trust_domain.as_str()) {
            return Err(Rejection::WrongTrustDomain);
        }
        if id.node.is_none() {
            return Err(Rejection::NotANode);
        }
        if self.revocation_of(end_entity).is_some() {
            return Err(Rejection::Revoked);
        }
        Ok(id)
    }

    /// The entry of the revocation list in force that revokes `cert`, if any.
    pub fn revocation_of(&self, cert: &CertificateDer<'_>) -> Option<Revocation> {
        let list = self.revoked.load();
        if list.entries.is_empty() {
            return None;
        }
        let facts = CertSerial::of(cert)?;
        list.revokes(&facts.facts()).cloned()
    }

    /// Puts `list` in force for every later check; returns whether it differs
    /// from the list in force. Connections and members it revokes are for the
    /// caller to drop ([`crate::revocations`]).
    pub fn set_revocations(&self, list: RevocationList) -> bool {
        if **self.revoked.load() == list {
            return false;
        }
        self.revoked.store(Arc::new(list));
        true
    }

    /// The revocation list in force (version 0 and empty if none is).
    pub fn revocations(&self) -> Arc<RevocationList> {
        self.revoked.load_full()
    }

    /// Checks the CA signature of a revocation list at `now` (see
    /// [`shoal_pki::revoke`]).
    pub fn verify_revocations(
        &self,
        document: &mesh_proto::gossip::RouteDocument,
        now: UnixTime,
    ) -> Result<Signer, SignatureError> {
        self.trust.load().revocations.verify(document, now)
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> String {
        self.trust.load().trust_domain.clone()
    }

    /// Signs `message` with this node's current private key, for the records it
    /// publishes in gossip (ECDSA P-256 with SHA-256 for shoal-pki keys; P-384 and
    /// Ed25519 keys are supported too). `None` if the key cannot sign.
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        let identity = self.identity.load();
        let signer = identity.certified.key.choose_scheme(&[
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
        ])?;
        signer.sign(message).ok()
    }

    /// Checks the operator signature of a route document against the current
    /// mesh CA set (see [`shoal_pki::sign`]): the signer certificate chains to it,
    /// is valid at `now`, is an operator certificate of this trust domain, and
    /// signed the body.
    pub fn verify_route_document(
        &self,
        document: &mesh_proto::gossip::RouteDocument,
        now: UnixTime,
    ) -> Result<Signer, SignatureError> {
        self.trust.load().operators.verify(document, now)
    }

    fn checked(
        &self,
        result: Result<CertIdentity, Rejection>,
        side: &'static str,
        cert: &CertificateDer<'_>,
    ) -> Result<CertIdentity, rustls::Error> {
        result.map_err(|r| {
            self.metrics.tls.reject(r.as_str());
            let peer = describe_cert(cert);
            let key = format!("{side} {} {peer}", r.as_str());
            let Some(left_out) = self
                .refusals_logged
                .say_at(&key, std::time::Instant::now())
            else {
                return r.into_rustls();
            };
            if r == Rejection::OtherCa {
                // The issuer's name is the same for every CA of a trust
                // domain: the fingerprints of this mesh's CAs tell them apart.
                tracing::warn!(
                    peer_role = side,
                    %peer,
                    reason = r.as_str(),
                    issuer = %issuer_of(cert),
                    this_mesh_ca = %self.trust.load().describe_cas(),
                    repeats_not_logged = left_out,
                    "refused a peer certificate of another CA (logged once a minute per certificate)"
                );
            } else {
                tracing::warn!(
                    peer_role = side,
                    %peer,
                    reason = r.as_str(),
                    repeats_not_logged = left_out,
                    "refused a peer certificate (logged once a minute per certificate)"
                );
            }
            r.into_rustls()
        })
    }

    /// The rustls server config of the QUIC endpoint: client certificates required,
    /// both ALPNs offered.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PeerVerifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN_GOSSIP.to_vec(), ALPN_TUNNEL.to_vec()];
        Ok(cfg)
    }

    /// A rustls client config for dialling peers with the given ALPN.
    pub fn client_config(
        self: &Arc<Self>,
        alpn: &[u8],
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

/// The issuer a certificate names.
fn issuer_of(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert)
        .map_or_else(|_| "?".to_string(), |(_, x)| x.issuer().to_string())
}

impl MeshTrust {
    /// This mesh's CAs as log lines name them: subject and SHA-256
    /// fingerprint, `; `-separated.
    pub fn describe_cas(&self) -> String {
        self.ca_fingerprint
            .iter()
            .map(|der| match x509_parser::parse_x509_certificate(der) {
                Ok((_, x)) => shoal_pki::verify::describe_ca(&x, der),
                Err(_) => shoal_pki::inspect::sha256_fingerprint(der),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A short description of a certificate for logs: its SPIFFE ids, else its
/// subject and issuer.
pub fn describe_cert(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x)) => match CertIdentity::from_x509(&x) {
            Ok(id) if !id.ids.is_empty() => id
                .ids
                .iter()
                .map(|i| i.to_uri())
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!("subject {} issued by {}", x.subject(), x.issuer()),
        },
        Err(_) => "an unparseable certificate".to_string(),
    }
}

/// The peer's end-entity certificate as quinn reports it.
pub fn peer_cert(identity: Option<Box<dyn std::any::Any>>) -> Option<CertificateDer<'static>> {
    let chain = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Reads the node identity out of a peer's certificate chain as quinn reports it
/// (`Connection::peer_identity`).
pub fn peer_identity(identity: Option<Box<dyn std::any::Any>>) -> Option<CertIdentity> {
    let chain = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    CertIdentity::from_der(chain.first()?).ok()
}

/// Serves the current certificate to both TLS roles.
#[derive(Debug)]
struct Resolver(Arc<TlsState>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity.load().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies peers in both roles.
#[derive(Debug)]
struct PeerVerifier(Arc<TlsState>);

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is always ANY_NODE: node names need not be valid TLS
        // server names (an all-digit last label is not), so which node answered is
        // checked after the handshake (`MeshEndpoint::connect`).
        let _ = server_name;
        let result = self
            .0
            .verify_peer(end_entity, intermediates, now, KeyUsage::server_auth());
        self.0
            .checked(result, "server", end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is not offered; refuse rather than verify.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints are advisory and our clients have exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .0
            .verify_peer(end_entity, intermediates, now, KeyUsage::client_auth());
        self.0
            .checked(result, "client", end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}
