//! `shoal ready`: whether a running node is ready (its `GET /readyz`), as an
//! exit status — for container health checks, Kubernetes exec probes and
//! scripts, where no HTTP client may be at hand.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;

use super::admin::admin_request;

/// Exit 0 if the node answers `/readyz` with 200; 1 (saying why) otherwise,
/// including when the admin API cannot be reached.
pub(crate) async fn ready(admin: SocketAddr) -> Result<ExitCode> {
    match admin_request(admin, hyper::Method::GET, "/readyz", Vec::new()).await {
        Ok((status, _)) if status.is_success() => {
            say!("ready");
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, body)) => {
            eprintln!(
                "shoal: not ready ({status}): {}",
                String::from_utf8_lossy(&body).trim()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("shoal: not ready: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
