//! `shoal revoke`: publish a CA-signed revocation list through a node's admin
//! API, and show the list in force.

use anyhow::{Context, Result, bail};
use shoal_node::revocations::{ApplyResponse, ApplyResult, RevocationsView};
use shoal_node::routes::rfc3339_ms;

use super::admin::{admin_request, get_json};
use super::table::print_table;
use crate::RevokeCommand;

pub(crate) async fn revoke(command: RevokeCommand) -> Result<()> {
    match command {
        RevokeCommand::Apply { file, admin } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            // Checked here too, so a wrong file is named before any request.
            shoal_pki::RevocationFile::parse(&bytes).with_context(|| file.display().to_string())?;
            let (status, answer) =
                admin_request(admin, hyper::Method::POST, "/revocations", bytes).await?;
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
                bail!("the node refused the revocation list ({status}): {message}");
            }
            let applied: ApplyResponse = serde_json::from_slice(&answer)?;
            let list = &applied.revocations;
            match applied.result {
                ApplyResult::Applied => say!(
                    "revocation list version {} ({} entries) is in force on {admin} and spreading to every node",
                    list.version,
                    list.entries.len()
                ),
                ApplyResult::Unchanged => say!(
                    "revocation list version {} was already in force on {admin}",
                    list.version
                ),
            }
            Ok(())
        }
        RevokeCommand::List { admin, json } => {
            if json {
                let list: serde_json::Value = get_json(admin, "/revocations").await?;
                say!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let list: RevocationsView = get_json(admin, "/revocations").await?;
            print_list(&list);
            Ok(())
        }
    }
}

fn print_list(list: &RevocationsView) {
    if list.version == 0 {
        say!("no revocation list is in force");
        return;
    }
    say!(
        "revocation list version {}, issued {} by {}",
        list.version,
        rfc3339_ms(list.issued_at_ms),
        list.signer.as_deref().unwrap_or("-")
    );
    let rows: Vec<Vec<String>> = list
        .entries
        .iter()
        .map(|e| vec![e.describe(), e.reason.clone(), rfc3339_ms(e.revoked_at_ms)])
        .collect();
    print_table(&["REVOKED", "REASON", "AT"], &rows);
}
