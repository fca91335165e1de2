//! `shoal reload`: has a running node read its config file again and apply
//! what can change live (`POST /reload`), and prints what it did.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;
use shoal_node::reload::Report;

use super::admin::admin_request;

/// Exit 0 if the reload applied everything that changed; 1 if a field was
/// refused (named, with why) or the file does not validate (nothing changed).
pub(crate) async fn reload(admin: SocketAddr, json: bool) -> Result<ExitCode> {
    let (status, body) = admin_request(admin, hyper::Method::POST, "/reload", Vec::new()).await?;
    if !status.is_success() {
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = error["error"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).to_string(),
            str::to_string,
        );
        eprintln!("shoal: reload refused ({status}): {text}");
        return Ok(ExitCode::FAILURE);
    }
    let report: Report = serde_json::from_slice(&body)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &Report) {
    if report.applied.is_empty() && report.refused.is_empty() {
        say!("nothing changed");
    }
    for line in &report.applied {
        say!("applied: {line}");
    }
    for r in &report.refused {
        say!("not applied: {}: {}", r.field, r.reason);
    }
    for (name, addr) in &report.listening {
        say!("listener {name} on {addr}");
    }
}
