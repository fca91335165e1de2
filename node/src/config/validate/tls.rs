//! Validation of `[tls]`: the files, and that they make a usable node identity
//! (by `tls::files::check`, the same check the node makes when it loads them),
//! with every problem reported by field; and reading the PEM files listeners name.

use std::path::PathBuf;

use super::Validator;
use crate::config::raw::RawTls;
use crate::config::types::TlsConfig;
use crate::tls::files::{self, Paths};

impl Validator {
    pub(super) fn read_file(
        &mut self,
        field: &str,
        path: Option<&PathBuf>,
    ) -> Option<(PathBuf, Vec<u8>)> {
        let Some(path) = path else {
            self.err(
                field,
                "required: a PEM file path (shoal-pki issue writes node.crt, node.key and ca.crt)",
            );
            return None;
        };
        let abs = self.resolve(path);
        match std::fs::read(&abs) {
            Ok(bytes) => Some((abs, bytes)),
            Err(e) => {
                self.err(field, format!("cannot read {}: {e}", abs.display()));
                None
            }
        }
    }

    pub(super) fn tls(&mut self, raw: Option<&RawTls>) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.err(
                "tls",
                "the [tls] table is required: cert, key and ca (the files `shoal-pki issue --node NAME` writes)",
            );
            return None;
        };
        let cert = raw.cert.as_ref().map(|p| self.resolve(p));
        let key = raw.key.as_ref().map(|p| self.resolve(p));
        let ca = raw.ca.as_ref().map(|p| self.resolve(p));
        let paths = Paths {
            cert: cert.as_deref(),
            key: key.as_deref(),
            ca: ca.as_deref(),
        };
        let (checked, problems) = files::check(paths, self.now);
        for p in problems {
            self.err(p.field, p.reason);
        }
        // Built even when the key has a problem (already reported), so that the
        // node name and the services can still be checked against the certificate.
        let checked = checked?;
        Some(TlsConfig {
            cert: cert?,
            key: key.unwrap_or_default(),
            ca: ca?,
            trust_domain: checked.bundle.trust_domain.clone(),
            node_name: checked.identity.node.clone()?,
            allowed_services: checked.identity.services,
            cert_not_after: checked.not_after,
        })
    }

    // --- [gossip] --------------------------------------------------------------
}
