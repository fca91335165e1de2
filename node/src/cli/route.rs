//! `shoal route`: sign, apply, list and delete route documents through a node's admin API.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use mesh_proto::route::RouteSpec;
use shoal_node::routes::{ApplyRequest, ApplyResponse, RejectedView, RouteView, rfc3339_ms};
use shoal_pki::OperatorKey;

use super::admin::{admin_request, get_json};
use super::table::print_table;
use crate::{OperatorArgs, RouteCommand};

pub(crate) async fn route(command: RouteCommand) -> Result<()> {
    match command {
        RouteCommand::Apply {
            file,
            operator,
            admin,
        } => {
            let spec = load_route_file(&file, unix_ms())?;
            let key = operator.load()?;
            apply_signed(admin, &key, &spec).await
        }
        RouteCommand::Delete {
            name,
            operator,
            admin,
        } => {
            let spec = RouteSpec::tombstone(name.clone(), unix_ms());
            spec.validate()
                .map_err(|e| anyhow!("route name {name:?}: {e}"))?;
            let key = operator.load()?;
            apply_signed(admin, &key, &spec).await
        }
        RouteCommand::List { admin, json } => {
            if json {
                let routes: serde_json::Value = get_json(admin, "/routes").await?;
                say!("{}", serde_json::to_string_pretty(&routes)?);
                return Ok(());
            }
            let routes: Vec<RouteView> = get_json(admin, "/routes").await?;
            let rejected: Vec<RejectedView> = get_json(admin, "/routes/rejected").await?;
            print_routes(&routes, &rejected);
            Ok(())
        }
    }
}

impl OperatorArgs {
    /// Reads and checks the operator certificate and key.
    fn load(&self) -> Result<OperatorKey> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
        };
        let cert = read(&self.operator_cert)?;
        let key = read(&self.operator_key)?;
        OperatorKey::from_pem(&cert, &key).map_err(|e| {
            let file = match e {
                shoal_pki::KeyError::Key(_) => self.operator_key.display().to_string(),
                shoal_pki::KeyError::KeyMismatch => format!(
                    "{} and {}",
                    self.operator_cert.display(),
                    self.operator_key.display()
                ),
                _ => self.operator_cert.display().to_string(),
            };
            anyhow!("{file}: {e}")
        })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads a route file (TOML or JSON), sets `issued_at_ms` to `now_ms` unless the
/// file sets it, and validates it; errors name the file and the field.
fn load_route_file(path: &Path, now_ms: u64) -> Result<RouteSpec> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
    let json = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let mut value: serde_json::Value = if json {
        serde_json::from_str(&text).map_err(|e| anyhow!("{shown}: not valid JSON: {e}"))?
    } else {
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line} column {column}")
                })
                .unwrap_or_default();
            anyhow!("{shown}: not valid TOML{at}: {}", e.message().trim())
        })?
    };
    let Some(fields) = value.as_object_mut() else {
        bail!("{shown}: a route is a table with name, hosts and rules (see docs/routing.md)");
    };
    fields
        .entry("issued_at_ms")
        .or_insert_with(|| serde_json::Value::from(now_ms));
    shoal_node::routes::durations_as_written(&mut value).map_err(|e| anyhow!("{shown}: {e}"))?;
    let spec: RouteSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            anyhow!("{shown}: {}", e.inner())
        } else {
            anyhow!("{shown}: {field}: {}", e.inner())
        }
    })?;
    spec.validate().map_err(|e| anyhow!("{shown}: {e}"))?;
    Ok(spec)
}

/// Signs `spec` (its canonical body) and posts it to the node; prints the outcome.
async fn apply_signed(admin: SocketAddr, key: &OperatorKey, spec: &RouteSpec) -> Result<()> {
    let signed = key.sign_route(spec)?;
    let body = serde_json::to_vec(&ApplyRequest::new(&signed))?;
    let (status, answer) = admin_request(admin, hyper::Method::POST, "/routes", body).await?;
    if status == hyper::StatusCode::NOT_FOUND && spec.deleted {
        // Deleting what is not there (never was, or already deleted) leaves
        // it as asked: nothing to do, not an error.
        say!("route {}: not in force; nothing to delete", spec.name);
        return Ok(());
    }
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
        bail!(
            "the node refused route {:?} ({status}): {message}",
            spec.name
        );
    }
    let applied: ApplyResponse = serde_json::from_slice(&answer)
        .with_context(|| format!("POST /routes answered {status} with an unexpected body"))?;
    if !spec.deleted {
        warn_of_unknown_services(admin, spec).await;
    }
    let r = &applied.route;
    say!(
        "route {} {}: document {}, issued {}, signed by {}",
        r.name,
        applied.result,
        r.id,
        rfc3339_ms(r.issued_at_ms),
        r.signer
    );
    Ok(())
}

/// Warns (stderr) of each service `spec` sends traffic to that no node
/// offers in `admin`'s routing table: a typo, or a service not deployed yet —
/// requests for it would be answered 503 until one is.
async fn warn_of_unknown_services(admin: SocketAddr, spec: &RouteSpec) {
    let Ok(offered) =
        get_json::<std::collections::BTreeMap<String, serde_json::Value>>(admin, "/services").await
    else {
        return;
    };
    let named: std::collections::BTreeSet<&str> = spec
        .rules
        .iter()
        .flat_map(|r| r.backends.iter().map(|b| b.service.as_str()))
        .collect();
    for service in named.into_iter().filter(|s| !offered.contains_key(*s)) {
        eprintln!(
            "warning: route {} sends requests to service {service:?}, which no node offers now (a typo, or not deployed yet?); they are answered 503 until a node does",
            spec.name
        );
    }
}

fn print_routes(routes: &[RouteView], rejected: &[RejectedView]) {
    say!("ROUTES");
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.deleted { "deleted" } else { "active" }.to_string(),
                r.spec.hosts.join(","),
                r.spec.rules.len().to_string(),
                rfc3339_ms(r.issued_at_ms),
                if r.signer_expired {
                    format!("{} (expired)", r.signer)
                } else {
                    r.signer.clone()
                },
                r.id.clone(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "STATE", "HOSTS", "RULES", "ISSUED", "SIGNER", "ID"],
        &rows,
    );
    if rejected.is_empty() {
        return;
    }
    say!();
    say!("REJECTED");
    let rows: Vec<Vec<String>> = rejected
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.reason.clone(),
                r.published_by.join(","),
                r.error.clone(),
            ]
        })
        .collect();
    print_table(&["NAME", "REASON", "PUBLISHED BY", "ERROR"], &rows);
}
