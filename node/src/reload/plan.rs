//! What a config reload changes: the config in force against the one just
//! read, as a [`Plan`] — services and listeners added, removed or changed (what
//! can change while the node runs), and every other field that differs,
//! refused by name (it needs a restart). Pure: no I/O, tested on configs.

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, ListenerConfig, ServiceConfig};

/// One service or listener that a reload adds, removes or changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `service` or `listener`.
    pub what: &'static str,
    /// Its name.
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub how: &'static str,
}

/// A field a reload cannot apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The field, as the config file names it (`node.listen`, `service[web].name`).
    pub field: String,
    /// Why, and what to do.
    pub reason: String,
}

/// What a reload does.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Services and listeners to add, remove or change.
    pub changes: Vec<Change>,
    /// Fields left as they are, by name.
    pub refused: Vec<Refused>,
    /// The config in force once the plan is applied: the new file's services
    /// and listeners (without refused ones), everything else as before.
    #[serde(skip)]
    pub config: Config,
}

/// Why a field needs a restart.
const NEEDS_RESTART: &str = "cannot change while the node runs; restart the node to apply it";

/// The plan from `old` (in force) to `new` (just read); `allowed`: the
/// services the certificate in force lets this node host.
pub fn plan(old: &Config, new: &Config, allowed: &[String]) -> Plan {
    let mut refused = fixed_fields(old, new);
    let mut config = old.clone();
    config.services = new
        .services
        .iter()
        .filter(|s| {
            let ok = allowed.contains(&s.name);
            if !ok {
                refused.push(Refused {
                    field: format!("service[{}].name", s.name),
                    reason: format!(
                        "the certificate in force does not allow this node to host it (it allows: {}); issue one that does, then reload",
                        allowed.join(", ")
                    ),
                });
            }
            ok
        })
        .cloned()
        .collect();
    config.listeners = new.listeners.clone();
    let mut changes = changed(
        "service",
        &old.services,
        &config.services,
        |s: &ServiceConfig| &s.name,
    );
    changes.extend(changed(
        "listener",
        &old.listeners,
        &config.listeners,
        |l: &ListenerConfig| &l.name,
    ));
    Plan {
        changes,
        refused,
        config,
    }
}

/// The items of `new` added or changed since `old`, and those removed, by name.
fn changed<T: PartialEq>(
    what: &'static str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
) -> Vec<Change> {
    let find = |list: &[T], n: &String| list.iter().find(|x| name(x) == n).is_some();
    let mut out = Vec::new();
    for n in new {
        let how = match old.iter().find(|o| name(o) == name(n)) {
            None => "added",
            Some(o) if o != n => "changed",
            Some(_) => continue,
        };
        out.push(Change {
            what,
            name: name(n).clone(),
            how,
        });
    }
    for o in old.iter().filter(|o| !find(new, name(o))) {
        out.push(Change {
            what,
            name: name(o).clone(),
            how: "removed",
        });
    }
    out
}

/// Every field outside services and listeners that differs: `[node]`,
/// `[gossip]`, and the `[tls]` file paths (new contents of the same files are
/// a certificate reload, which SIGHUP also does).
fn fixed_fields(old: &Config, new: &Config) -> Vec<Refused> {
    let mut fields = Vec::new();
    diff("node", &json(&old.node), &json(&new.node), &mut fields);
    diff(
        "gossip",
        &json(&old.gossip),
        &json(&new.gossip),
        &mut fields,
    );
    for (key, a, b) in [
        ("tls.cert", &old.tls.cert, &new.tls.cert),
        ("tls.key", &old.tls.key, &new.tls.key),
        ("tls.ca", &old.tls.ca, &new.tls.ca),
    ] {
        if a != b {
            fields.push(key.to_string());
        }
    }
    fields
        .into_iter()
        .map(|field| Refused {
            field,
            reason: NEEDS_RESTART.to_string(),
        })
        .collect()
}

/// The paths (under `path`) where `a` and `b` differ: tables are walked, any
/// other value is compared whole.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff(&format!("{path}.{k}"), va, vb, out);
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

/// A config section as JSON, for [`diff`] (sections are plain data: this
/// cannot fail; a failure compares as `null`).
fn json<T: Serialize>(section: &T) -> Value {
    serde_json::to_value(section).unwrap_or_default()
}
