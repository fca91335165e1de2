use std::time::Duration;

use super::RawConfig;
use super::raw::{field_at_line, line_col};
use super::validate::section_rank;

#[test]
fn field_at_line_resolves_array_tables() {
    let text = "[node]\nlisten = 1\n[[service]]\nname = 'a'\n[[service]]\nname = 'b'\n[service.health]\nkind = x\n";
    assert_eq!(field_at_line(text, 1).as_deref(), Some("node.listen"));
    assert_eq!(field_at_line(text, 3).as_deref(), Some("service[0].name"));
    assert_eq!(field_at_line(text, 4).as_deref(), Some("service[1]"));
    assert_eq!(
        field_at_line(text, 7).as_deref(),
        Some("service[1].health.kind")
    );
    assert_eq!(field_at_line("x = 1\n", 0).as_deref(), Some("x"));
    assert_eq!(field_at_line("\n", 0), None);
}

#[test]
fn raw_config_accepts_integers_for_floats() {
    let raw = RawConfig::from_toml("[gossip]\nprobe_timeout = \"2s\"\n").unwrap();
    assert_eq!(raw.gossip.probe_timeout, Some(Duration::from_secs(2)));
}

#[test]
fn errors_are_ordered_by_section() {
    assert!(section_rank("node.listen") < section_rank("tls.cert"));
    assert!(section_rank("tls") < section_rank("gossip.interval"));
    assert!(section_rank("gossip.interval") < section_rank("service[3].name"));
    assert!(section_rank("service[0]") < section_rank("--seed"));
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
}
