//! `shoal-pki`: the mesh certificate authority, as a library and a CLI.
//!
//! Shoal identifies every participant with an X.509 certificate carrying SPIFFE
//! ids in its URI subject alternative names, signed by one mesh CA per trust
//! domain:
//!
//! | certificate | SPIFFE ids | used for |
//! |---|---|---|
//! | CA (`ca.crt`) | `spiffe://TD` | signing node and operator certificates (path length 0) |
//! | node (`node.crt`) | `spiffe://TD/node/NAME`, `spiffe://TD/service/SVC`... | mTLS QUIC server and client; may host the listed services |
//! | operator (`operator.crt`) | `spiffe://TD/operator/NAME` | signing cluster-wide route documents |
//!
//! All keys are ECDSA P-256. The library works in memory (tests and the
//! simulator mint certificates without touching disk); the `shoal-pki` binary
//! adds files, and writes every file set all or nothing.
//!
//! It does not run an online CA or rotate anything: nodes re-read their
//! certificate files on SIGHUP, so rotation is issuing new files. Revocation is
//! a CA-signed list that nodes gossip ([`revoke`]).
//!
//! Layout:
//! - [`identity`]: SPIFFE ids and reading them out of a certificate;
//! - [`ca`]: creating, loading and saving the CA;
//! - [`issue`]: node and operator certificates;
//! - [`inspect`]: describing a certificate;
//! - [`verify`]: checking a certificate against the CA;
//! - [`sign`]: operator signatures on route documents (signing with an operator
//!   key, verifying signer and signature against the mesh CA);
//! - [`revoke`]: the CA-signed revocation list (signing, checking, its file);
//! - [`files`]: all-or-nothing and atomic file writes.

pub mod ca;
pub mod files;
pub mod identity;
pub mod inspect;
pub mod issue;
pub mod revoke;
pub mod sign;
pub mod verify;

pub use ca::{CaError, CertificateAuthority, Validity};
pub use identity::{CertIdentity, CertKind, IdKind, SpiffeId};
pub use inspect::{CertInfo, inspect_der};
pub use issue::{IssueError, IssuedCert};
pub use revoke::{CertSerial, RevocationFile, RevocationFileError, RevocationVerifier};
pub use sign::{KeyError, OperatorKey, OperatorVerifier, SignatureError, SignedRoute, Signer};
pub use verify::{BundleError, CaBundle, Verified, VerifyError, verify_cert};
