//! `shoal status`: the members and services a node sees, as tables.

use std::net::SocketAddr;

use anyhow::Result;
use shoal_node::admin::{EndpointView, MemberView};

use super::admin::get_json;
use super::table::print_table;

pub(crate) async fn status(admin: SocketAddr) -> Result<()> {
    let members: Vec<MemberView> = get_json(admin, "/members").await?;
    let services: std::collections::BTreeMap<String, Vec<EndpointView>> =
        get_json(admin, "/services").await?;
    say!("MEMBERS");
    let rows: Vec<Vec<String>> = members
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
    say!();
    say!("SERVICES");
    let rows: Vec<Vec<String>> = services
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
    Ok(())
}
