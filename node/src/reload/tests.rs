//! The reload plan on real validated configs: what changes live, what is
//! refused by name.

use std::path::Path;

use shoal_pki::{CertificateAuthority, Validity};

use super::plan;
use crate::config::{Config, Overrides};

/// A validated config for node `n1` allowed to host `web` and `api`, from
/// `body` (services and listeners) after a fixed `[node]` and `[tls]`.
fn config(dir: &Path, node_extra: &str, body: &str) -> Config {
    let listen = if node_extra.contains("listen") {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    let text = format!(
        "[node]\nname = \"n1\"\n{listen}admin = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{node_extra}\n[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n{body}"
    );
    Config::from_toml(&text, dir, &Overrides::default()).unwrap()
}

fn certified() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        CertificateAuthority::create("mesh.test", Validity::days_from_now(30).unwrap()).unwrap();
    let services = vec!["web".to_string(), "api".to_string()];
    let cert = ca
        .issue_node("n1", &services, Validity::days_from_now(10).unwrap())
        .unwrap();
    cert.save(dir.path(), false).unwrap();
    dir
}

const WEB: &str = "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n";
const API: &str = "[[service]]\nname = \"api\"\naddress = \"127.0.0.1:8081\"\n";
const FRONT: &str = "[[listener]]\nname = \"front\"\nservice = \"web\"\nbind = \"127.0.0.1:0\"\n";

fn allowed() -> Vec<String> {
    vec!["api".to_string(), "web".to_string()]
}

fn changes(p: &super::Plan) -> Vec<String> {
    p.changes
        .iter()
        .map(|c| format!("{} {} {}", c.what, c.name, c.how))
        .collect()
}

#[test]
fn services_and_listeners_are_added_changed_and_removed_by_name() {
    let dir = certified();
    let old = config(dir.path(), "", &format!("{WEB}{FRONT}"));
    let web_moved = WEB.replace("8080", "9090");
    let new = config(dir.path(), "", &format!("{web_moved}{API}"));
    let p = plan(&old, &new, &allowed());
    assert_eq!(
        changes(&p),
        [
            "service web changed",
            "service api added",
            "listener front removed"
        ]
    );
    assert!(p.refused.is_empty(), "{:?}", p.refused);
    assert_eq!(p.config.services.len(), 2);
    assert!(p.config.listeners.is_empty());
    assert_eq!(p.config.node, old.node, "the rest as before");
    let same = plan(&old, &old.clone(), &allowed());
    assert!(same.changes.is_empty() && same.refused.is_empty());
}

#[test]
fn fields_that_need_a_restart_are_refused_by_name_and_kept() {
    let dir = certified();
    let old = config(dir.path(), "", WEB);
    let new = config(
        dir.path(),
        "zone = \"zone-b\"\nlisten = \"127.0.0.1:7555\"\n",
        &format!("[gossip]\ninterval = \"2s\"\n{WEB}"),
    );
    let p = plan(&old, &new, &allowed());
    let fields: Vec<&str> = p.refused.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields[..3], ["node.listen", "node.zone", "gossip.interval"]);
    // Fields derived from the interval changed with it, and are named too.
    assert!(
        fields[3..].iter().all(|f| f.starts_with("gossip.")),
        "{fields:?}"
    );
    assert!(p.refused[0].reason.contains("restart"));
    assert_eq!(p.config.node.zone, old.node.zone, "kept as it runs");
    assert_eq!(p.config.gossip, old.gossip);
    assert!(p.changes.is_empty());
}

#[test]
fn a_service_the_certificate_in_force_does_not_allow_is_refused() {
    let dir = certified();
    let old = config(dir.path(), "", WEB);
    let new = config(dir.path(), "", &format!("{WEB}{API}"));
    // The file's certificate allows api; the one in force does not (yet).
    let p = plan(&old, &new, &["web".to_string()]);
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].field, "service[api].name");
    assert!(
        p.refused[0].reason.contains("certificate"),
        "{}",
        p.refused[0].reason
    );
    assert!(changes(&p).is_empty(), "api is not added");
    assert_eq!(p.config.services.len(), 1);
}
