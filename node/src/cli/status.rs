//! `shoal status`: the members and services a node sees, the golden metrics
//! of its traffic (the dashboard's figures, from `/stats`), and what it
//! refused (every limit's refusals, by reason), as tables or one JSON object.

use std::net::SocketAddr;

use anyhow::Result;
use shoal_node::admin::{EndpointView, MemberView};
use shoal_node::golden::{EdgeView, GoldenView};

use super::admin::get_json;
use super::table::print_table;

/// What `shoal status` shows: members, services and refusals.
#[derive(Debug, serde::Serialize)]
struct Status {
    members: Vec<MemberView>,
    services: std::collections::BTreeMap<String, Vec<EndpointView>>,
    /// The golden metrics (`/stats`).
    traffic: GoldenView,
    /// Non-zero refusal counters: what, reason, other labels, count.
    refused: Vec<Refused>,
}

/// One row of REFUSED.
#[derive(Debug, serde::Serialize)]
struct Refused {
    what: String,
    reason: String,
    #[serde(rename = "where")]
    place: String,
    count: f64,
}

pub(crate) async fn status(admin: SocketAddr, json: bool) -> Result<()> {
    let members: Vec<MemberView> = get_json(admin, "/members").await?;
    let services = get_json(admin, "/services").await?;
    let traffic = get_json(admin, "/stats").await?;
    let (code, metrics) =
        super::admin::admin_request(admin, hyper::Method::GET, "/metrics", Vec::new()).await?;
    let refused = if code.is_success() {
        refusals(&String::from_utf8_lossy(&metrics))
    } else {
        Vec::new()
    };
    let status = Status {
        members,
        services,
        traffic,
        refused: refused
            .into_iter()
            .map(|r| Refused {
                what: r[0].clone(),
                reason: r[1].clone(),
                place: r[2].clone(),
                count: r[3].parse().unwrap_or(0.0),
            })
            .collect(),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_tables(&status);
    }
    Ok(())
}

fn print_tables(status: &Status) {
    print_members(status);
    say!();
    print_services(status);
    say!();
    print_traffic(&status.traffic);
    say!();
    print_refused(status);
}

/// The MEMBERS table: every member as this node sees it.
fn print_members(status: &Status) {
    say!("MEMBERS");
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.name, if m.is_self { " *" } else { "" }),
                if m.accused_by.is_empty() {
                    m.state.clone()
                } else {
                    format!("{} (accused by {})", m.state, m.accused_by.join(","))
                },
                m.address.clone(),
                m.zone.clone(),
                m.generation.to_string(),
                m.last_heard_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATE",
            "ADDRESS",
            "ZONE",
            "GENERATION",
            "LAST HEARD",
        ],
        &rows,
    );
}

/// The SERVICES table: every endpoint of every service.
fn print_services(status: &Status) {
    say!("SERVICES");
    let rows: Vec<Vec<String>> = status
        .services
        .iter()
        .flat_map(|(name, eps)| {
            eps.iter().map(move |e| {
                vec![
                    name.clone(),
                    e.node.clone(),
                    e.zone.clone(),
                    e.protocol.clone(),
                    e.health.clone(),
                    e.weight.to_string(),
                    e.inflight.to_string(),
                ]
            })
        })
        .collect();
    print_table(
        &[
            "SERVICE",
            "NODE",
            "ZONE",
            "PROTOCOL",
            "HEALTH",
            "WEIGHT",
            "IN FLIGHT",
        ],
        &rows,
    );
}

/// The REFUSED table: what this node refused, by reason and place.
fn print_refused(status: &Status) {
    say!("REFUSED");
    if status.refused.is_empty() {
        say!("nothing refused since the node started");
    } else {
        let rows: Vec<Vec<String>> = status
            .refused
            .iter()
            .map(|r| {
                vec![
                    r.what.clone(),
                    r.reason.clone(),
                    r.place.clone(),
                    r.count.to_string(),
                ]
            })
            .collect();
        print_table(&["WHAT", "REASON", "WHERE", "COUNT"], &rows);
    }
}

/// The TRAFFIC and SERVED tables: the dashboard's golden figures.
fn print_traffic(t: &GoldenView) {
    say!("TRAFFIC (last {:.0} s)", t.window_s);
    let figure =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}{unit}"));
    let row = |e: &EdgeView| {
        vec![
            format!("{} -> {}", e.caller, e.service),
            e.listener.clone(),
            e.protocol.clone(),
            format!("{:.1}", e.requests_per_s),
            e.success_rate
                .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0)),
            figure(e.p50_ms, " ms"),
            figure(e.p95_ms, " ms"),
            figure(e.p99_ms, " ms"),
            format!("{:.0}", e.active),
            format!("{:.2}", e.retries_per_s),
            format!("{:.0}", e.ejections),
        ]
    };
    if t.edges.is_empty() {
        say!("no calls through this node's listeners yet");
    } else {
        let rows: Vec<Vec<String>> = t.edges.iter().map(row).collect();
        print_table(
            &[
                "EDGE",
                "LISTENER",
                "PROTOCOL",
                "REQ/S",
                "SUCCESS",
                "P50",
                "P95",
                "P99",
                "CONNS",
                "RETRIES/S",
                "EJECTIONS",
            ],
            &rows,
        );
    }
    say!();
    say!("SERVED");
    if t.served.is_empty() {
        say!("no tunnelled streams served yet");
    } else {
        let rows: Vec<Vec<String>> = t
            .served
            .iter()
            .map(|s| {
                vec![
                    s.service.clone(),
                    format!("{:.1}", s.streams_per_s),
                    format!("{:.2}", s.refused_per_s),
                    format!("{:.0}", s.active),
                ]
            })
            .collect();
        print_table(&["SERVICE", "STREAMS/S", "REFUSED/S", "OPEN"], &rows);
    }
}

/// Rows (what, reason, other labels, count) of every non-zero refusal counter
/// in a `/metrics` text.
fn refusals(metrics: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in metrics.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((_, what)) = shoal_node::golden::sample::REFUSAL_FAMILIES
            .iter()
            .find(|(f, _)| *f == name)
        else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let count = value.split_whitespace().next().unwrap_or("0");
        if count.parse::<f64>().map_or(true, |v| v == 0.0) {
            continue;
        }
        let mut reason = "-".to_string();
        let mut other = Vec::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.trim_matches('"');
            if k == "reason" {
                reason = v.to_string();
            } else {
                other.push(format!("{k}={v}"));
            }
        }
        let place = if other.is_empty() {
            "-".to_string()
        } else {
            other.join(",")
        };
        rows.push(vec![what.to_string(), reason, place, count.to_string()]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_zero_refusal_counters_become_rows() {
        let text = "\
# TYPE shoal_quic_incoming_refused_total counter
shoal_quic_incoming_refused_total{reason=\"too_many_from_address\"} 3
shoal_quic_incoming_refused_total{reason=\"too_many_connections\"} 0
shoal_inbound_refusals_total{service=\"web\",reason=\"overloaded\"} 7
shoal_http_retry_budget_exhausted_total{listener=\"front\"} 2
shoal_listener_connections_total{listener=\"front\"} 9
shoal_gossip_messages_total{direction=\"sent\"} 100
# EOF
";
        assert_eq!(
            refusals(text),
            vec![
                vec!["quic_connections", "too_many_from_address", "-", "3"],
                vec!["inbound_streams", "overloaded", "service=web", "7"],
                vec!["http_retries", "-", "listener=front", "2"],
            ]
        );
    }
}
