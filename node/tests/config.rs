//! Tests of the node configuration: real certificate files minted with
//! `shoal_pki` into a temporary directory, config text parsed and validated
//! through the public API, and every bad input checked for the field it names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shoal_node::config::{
    Config, ConfigErrors, HealthKind, Overrides, Policy, Protocol, RawConfig, RawHealth, RawNode,
    RawService, RawTls,
};
use shoal_pki::{CertificateAuthority, IssuedCert, Validity};
use tempfile::TempDir;
use time::OffsetDateTime;

const TD: &str = "mesh.test";

/// A temporary directory holding `tls/{node.crt,node.key,ca.crt}` for node
/// `web-1` (services web, api, cache) and a `data` directory.
struct Fixture {
    dir: TempDir,
    ca: CertificateAuthority,
}

fn new_ca(td: &str) -> CertificateAuthority {
    CertificateAuthority::create(td, Validity::days_from_now(30).unwrap()).unwrap()
}

fn node_cert(ca: &CertificateAuthority, node: &str, services: &[&str]) -> IssuedCert {
    let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    ca.issue_node(node, &services, Validity::days_from_now(10).unwrap())
        .unwrap()
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(TD);
        let f = Fixture { dir, ca };
        std::fs::create_dir(f.path().join("tls")).unwrap();
        f.write_cert(&node_cert(&f.ca, "web-1", &["web", "api", "cache"]));
        f.write("tls/ca.crt", f.ca.cert_pem());
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, contents: &str) {
        std::fs::write(self.path().join(rel), contents).unwrap();
    }

    fn write_cert(&self, cert: &IssuedCert) {
        self.write("tls/node.crt", &cert.cert_pem);
        self.write("tls/node.key", &cert.key_pem);
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, self.path(), &Overrides::default())
    }

    fn errors(&self, text: &str) -> ConfigErrors {
        match self.parse(text) {
            Ok(c) => panic!("expected errors, got a config: {c:#?}"),
            Err(e) => e,
        }
    }

    fn ok(&self, text: &str) -> Config {
        match self.parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }
}

/// The smallest valid file.
const MINIMAL: &str = r#"
[node]
listen = "127.0.0.1:7100"
data_dir = "data"

[tls]
cert = "tls/node.crt"
key = "tls/node.key"
ca = "tls/ca.crt"
"#;

/// `MINIMAL` plus `extra` appended.
fn minimal_with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}\n")
}

/// Asserts that some error names `field` and its reason contains every one of
/// `needles`.
#[track_caller]
fn assert_error(errors: &ConfigErrors, field: &str, needles: &[&str]) {
    let Some(e) = errors.find(field) else {
        panic!("no error for field {field:?}; errors:\n{errors}");
    };
    for n in needles {
        assert!(
            e.reason.contains(n),
            "error for {field} should mention {n:?}: {e}\nall errors:\n{errors}"
        );
    }
}

// ---------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------

#[test]
fn a_full_file_parses_to_the_expected_config() {
    let f = Fixture::new();
    let text = r#"
[node]
name = "web-1"
cluster = "prod"
zone = "zone-b"
listen = "0.0.0.0:7200"
advertise = "10.1.2.3:7300"
admin = "127.0.0.1:9901"
data_dir = "state/shoal"
seeds = ["10.1.2.4:7200", "seed.example.org:7200"]
ready_alone = true
drain_timeout = "45s"
admin_header_timeout = "3s"
admin_max_connections = 16

[tls]
cert = "tls/node.crt"
key = "tls/node.key"
ca = "tls/ca.crt"

[gossip]
interval = "100ms"
probe_timeout = "300ms"
suspicion_timeout = "4s"
suspicion_timeout_min = "1s"
dead_node_grace = "10m"
max_clock_skew = "30s"
rings = 3
max_members = 5000
max_services_per_member = 8
max_state_bytes = 16777216
max_documents = 50

[[service]]
name = "web"
address = "127.0.0.1:8080"
protocol = "http"
weight = 250
tags = ["frontend", "v2"]

[service.health]
kind = "http"
path = "/healthz?full=1"
interval = "3s"
timeout = "750ms"
healthy_threshold = 4
unhealthy_threshold = 5

[[service]]
name = "api"
address = "[::1]:9000"
protocol = "tcp"
weight = 1

[service.health]
kind = "none"
"#;
    std::fs::create_dir(f.path().join("state")).unwrap();
    let c = f.ok(text);

    let n = &c.node;
    assert_eq!(n.name, "web-1");
    assert_eq!(n.cluster, "prod");
    assert_eq!(n.zone, "zone-b");
    assert_eq!(n.listen, "0.0.0.0:7200".parse::<SocketAddr>().unwrap());
    assert_eq!(n.advertise, Some("10.1.2.3:7300".parse().unwrap()));
    assert_eq!(n.admin, "127.0.0.1:9901".parse::<SocketAddr>().unwrap());
    assert_eq!(n.data_dir, f.path().join("state/shoal"));
    assert_eq!(n.seeds, ["10.1.2.4:7200", "seed.example.org:7200"]);
    assert!(n.ready_alone);
    assert_eq!(n.drain_timeout, Duration::from_secs(45));
    assert_eq!(n.admin_header_timeout, Duration::from_secs(3));
    assert_eq!(n.admin_max_connections, 16);
    assert_eq!(
        c.advertise_for("0.0.0.0:7200".parse().unwrap()),
        "10.1.2.3:7300".parse::<SocketAddr>().unwrap()
    );

    let t = &c.tls;
    assert_eq!(t.cert, f.path().join("tls/node.crt"));
    assert_eq!(t.key, f.path().join("tls/node.key"));
    assert_eq!(t.ca, f.path().join("tls/ca.crt"));
    assert!(t.cert.is_absolute());
    assert_eq!(t.trust_domain, TD);
    assert_eq!(t.node_name, "web-1");
    assert_eq!(t.allowed_services, ["api", "cache", "web"]);
    let left = t.cert_not_after - OffsetDateTime::now_utc();
    assert!(left > time::Duration::days(9) && left <= time::Duration::days(10));

    let g = &c.gossip;
    assert_eq!(g.interval, Duration::from_millis(100));
    assert_eq!(g.probe_timeout, Duration::from_millis(300));
    assert_eq!(g.suspicion_timeout, Duration::from_secs(4));
    assert_eq!(g.suspicion_timeout_min, Duration::from_secs(1));
    assert_eq!(g.dead_node_grace, Duration::from_secs(600));
    assert_eq!(g.max_clock_skew, Duration::from_secs(30));
    assert_eq!(
        (
            g.max_members,
            g.max_services_per_member,
            g.max_state_bytes,
            g.max_documents
        ),
        (5000, 8, 16 << 20, 50)
    );
    let t = g.timing();
    assert_eq!(t.probe_timeout, Duration::from_millis(300));
    assert_eq!(t.suspicion_max, Duration::from_secs(4));
    assert_eq!(t.suspicion_min, Duration::from_secs(1));
    assert_eq!(t.dead_grace, Duration::from_secs(600));
    assert_eq!(t.max_clock_skew, Duration::from_secs(30));
    assert_eq!((g.rings, t.rings), (3, 3));
    let l = g.limits();
    assert_eq!((l.max_members, l.max_documents), (5000, 50));

    assert_eq!(c.services.len(), 2);
    let web = &c.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.address, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(web.protocol, Protocol::Http);
    assert_eq!(web.weight, 250);
    assert_eq!(web.tags, ["frontend", "v2"]);
    assert_eq!(web.health.kind, HealthKind::Http);
    assert_eq!(web.health.path, "/healthz?full=1");
    assert_eq!(web.health.interval, Duration::from_secs(3));
    assert_eq!(web.health.timeout, Duration::from_millis(750));
    assert_eq!(web.health.healthy_threshold, 4);
    assert_eq!(web.health.unhealthy_threshold, 5);
    let api = &c.services[1];
    assert_eq!(api.address, "[::1]:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(api.protocol, Protocol::Tcp);
    assert_eq!(api.weight, 1);
    assert_eq!(api.health.kind, HealthKind::None);
}

#[test]
fn defaults_fill_every_optional_field() {
    let f = Fixture::new();
    let c = f.ok(&minimal_with(
        r#"
[[service]]
name = "web"
address = "127.0.0.1:8080"
protocol = "http"

[[service]]
name = "cache"
address = "127.0.0.1:6379"
"#,
    ));
    let n = &c.node;
    assert_eq!(n.name, "web-1", "taken from the certificate");
    assert_eq!(n.cluster, "shoal");
    assert_eq!(n.zone, "default");
    assert_eq!(n.advertise, None);
    assert_eq!(n.admin, "127.0.0.1:7101".parse::<SocketAddr>().unwrap());
    assert_eq!(n.data_dir, f.path().join("data"));
    assert!(n.seeds.is_empty());
    assert!(n.ready_alone, "no seeds: the first node is ready alone");
    assert_eq!(n.drain_timeout, Duration::from_secs(30));
    assert_eq!(n.admin_header_timeout, Duration::from_secs(10));
    assert_eq!(n.admin_max_connections, 64);
    assert_eq!(
        n.max_streams_per_connection, None,
        "derived from the services at start"
    );

    let g = &c.gossip;
    assert_eq!(g.interval, Duration::from_millis(250));
    assert_eq!(g.probe_timeout, Duration::from_secs(1));
    assert_eq!(g.suspicion_timeout, Duration::from_secs(5));
    assert_eq!(g.suspicion_timeout_min, Duration::from_millis(1500));
    assert_eq!(g.dead_node_grace, Duration::from_secs(300));
    assert_eq!(g.max_clock_skew, Duration::from_secs(60));
    assert_eq!(g.rings, 4);
    assert_eq!(g.max_members, 16_384);
    assert_eq!(g.max_services_per_member, 64);
    assert_eq!(g.max_state_bytes, 64 << 20);
    assert_eq!(g.max_documents, 1024);

    let web = &c.services[0];
    assert_eq!(web.weight, 100);
    assert_eq!(web.max_connections, 10_000);
    assert_eq!(
        web.max_connections_per_caller, 7_500,
        "three quarters of max_connections"
    );
    assert!(web.tags.is_empty());
    assert_eq!(web.http_idle_timeout, Duration::from_secs(4));
    assert_eq!(
        web.idle_timeout,
        Duration::from_secs(600),
        "the serving side bounds idle tunnels to ten minutes"
    );
    assert_eq!(
        web.health.kind,
        HealthKind::Http,
        "http protocol: http check"
    );
    assert_eq!(web.health.path, "/");
    assert_eq!(web.health.interval, Duration::from_secs(2));
    assert_eq!(web.health.timeout, Duration::from_secs(1));
    assert_eq!(web.health.healthy_threshold, 2);
    assert_eq!(web.health.unhealthy_threshold, 3);
    let cache = &c.services[1];
    assert_eq!(cache.protocol, Protocol::Tcp);
    assert_eq!(
        cache.health.kind,
        HealthKind::Tcp,
        "tcp protocol: tcp check"
    );
}

#[test]
fn gossip_timeouts_follow_the_interval() {
    let f = Fixture::new();
    let c = f.ok(&minimal_with("[gossip]\ninterval = \"400ms\""));
    assert_eq!(c.gossip.probe_timeout, Duration::from_millis(1600));
    assert_eq!(c.gossip.suspicion_timeout, Duration::from_secs(8));
    assert_eq!(c.gossip.suspicion_timeout_min, Duration::from_millis(2400));
}

#[test]
fn ready_alone_defaults_to_whether_there_are_other_seeds() {
    let f = Fixture::new();
    let with_seeds = MINIMAL.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nseeds = [\"10.0.0.1:7100\"]",
    );
    assert!(!f.ok(&with_seeds).node.ready_alone);

    let explicit = with_seeds.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nready_alone = true",
    );
    assert!(f.ok(&explicit).node.ready_alone);

    // Seeds given only on the command line count too.
    let overrides = Overrides {
        seeds: vec!["10.0.0.1:7100".into()],
        ..Overrides::default()
    };
    let c = Config::from_toml(MINIMAL, f.path(), &overrides).unwrap();
    assert!(!c.node.ready_alone);

    // A seed list naming only this node itself: still the first node.
    let only_self = MINIMAL.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nseeds = [\"127.0.0.1:7100\"]",
    );
    let c = f.ok(&only_self);
    assert!(c.node.ready_alone);
    assert_eq!(c.node.seeds, ["127.0.0.1:7100"], "kept; the node skips it");
}

#[test]
fn advertise_resolves_against_the_bound_address() {
    let f = Fixture::new();
    let bound: SocketAddr = "127.0.0.1:45678".parse().unwrap();

    let port0 = MINIMAL.replace("127.0.0.1:7100", "127.0.0.1:0");
    assert_eq!(f.ok(&port0).advertise_for(bound), bound);

    let any = MINIMAL.replace(
        "listen = \"127.0.0.1:7100\"",
        "listen = \"0.0.0.0:0\"\nadvertise = \"10.0.0.7:0\"",
    );
    assert_eq!(
        f.ok(&any).advertise_for("0.0.0.0:45678".parse().unwrap()),
        "10.0.0.7:45678".parse::<SocketAddr>().unwrap()
    );

    let fixed = MINIMAL.replace(
        "listen = \"127.0.0.1:7100\"",
        "listen = \"0.0.0.0:7100\"\nadvertise = \"203.0.113.9:17100\"",
    );
    assert_eq!(
        f.ok(&fixed).advertise_for("0.0.0.0:7100".parse().unwrap()),
        "203.0.113.9:17100".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn command_line_overrides_apply_on_top_of_the_file() {
    let f = Fixture::new();
    let text = MINIMAL.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nseeds = [\"10.0.0.1:7100\"]\nadmin = \"127.0.0.1:1\"",
    );
    let overrides = Overrides {
        seeds: vec!["10.0.0.2:7100".into(), "10.0.0.1:7100".into()],
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
    };
    let c = Config::from_toml(&text, f.path(), &overrides).unwrap();
    assert_eq!(c.node.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    assert_eq!(c.node.admin, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    assert_eq!(c.node.seeds, ["10.0.0.1:7100", "10.0.0.2:7100"]);

    // A bad --seed is reported as the flag.
    let overrides = Overrides {
        seeds: vec!["nowhere".into()],
        ..Overrides::default()
    };
    let e = Config::from_toml(&text, f.path(), &overrides).unwrap_err();
    assert_error(&e, "--seed", &["\"nowhere\" is not HOST:PORT"]);
}

#[test]
fn load_reads_a_file_and_resolves_paths_from_its_directory() {
    let f = Fixture::new();
    let file = f.path().join("node.toml");
    std::fs::write(&file, MINIMAL).unwrap();
    let c = Config::load(&file, &Overrides::default()).unwrap();
    assert_eq!(c.tls.cert, f.path().join("tls/node.crt"));
    assert_eq!(c.node.data_dir, f.path().join("data"));

    let missing = f.path().join("nope.toml");
    let e = Config::load(&missing, &Overrides::default()).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e.errors()[0].field, missing.display().to_string());
    assert!(e.errors()[0].reason.starts_with("cannot read: "), "{e}");
    assert!(e.to_string().contains("No such file"), "{e}");
}

#[test]
fn validate_accepts_a_raw_config_built_in_code() {
    let f = Fixture::new();
    let raw = RawConfig {
        node: RawNode {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(f.path().join("data")),
            ..RawNode::default()
        },
        tls: Some(RawTls {
            cert: Some(f.path().join("tls/node.crt")),
            key: Some(f.path().join("tls/node.key")),
            ca: Some(f.path().join("tls/ca.crt")),
        }),
        services: vec![RawService {
            name: Some("web".into()),
            address: Some("127.0.0.1:8080".into()),
            health: Some(RawHealth {
                kind: Some("none".into()),
                ..RawHealth::default()
            }),
            ..RawService::default()
        }],
        ..RawConfig::default()
    };
    // Round trip through TOML, as the simulator writes node files.
    let text = raw.to_toml().unwrap();
    assert_eq!(RawConfig::from_toml(&text).unwrap(), raw);
    let c = Config::validate(raw, Path::new("/nonexistent-base")).unwrap();
    assert_eq!(c.services[0].health.kind, HealthKind::None);
}

#[test]
fn the_config_serializes_to_json_for_the_admin_api() {
    let f = Fixture::new();
    let c = f.ok(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"",
    ));
    let json: serde_json::Value = serde_json::to_value(&c).unwrap();
    assert_eq!(json["node"]["listen"], "127.0.0.1:7100");
    assert_eq!(json["node"]["drain_timeout"], "30s");
    assert_eq!(json["gossip"]["interval"], "250ms");
    assert_eq!(json["services"][0]["protocol"], "http");
    assert_eq!(json["services"][0]["health"]["kind"], "http");
    assert_eq!(json["tls"]["trust_domain"], TD);
    assert!(
        json["tls"]["cert_not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[test]
fn the_example_file_validates() {
    let f = Fixture::new();
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/node.toml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    // The example's data_dir is /var/lib/shoal; point it at the fixture.
    let data_line = "data_dir = \"/var/lib/shoal\"";
    assert!(example.contains(data_line));
    let data_dir = f.path().join("data");
    let text = example.replace(
        data_line,
        &format!("data_dir = {:?}", data_dir.display().to_string()),
    );
    f.write_cert(&node_cert(&f.ca, "web-1", &["web", "cache"]));
    let file = f.path().join("node.toml");
    std::fs::write(&file, text).unwrap();

    let c = Config::load(&file, &Overrides::default()).unwrap();
    assert_eq!(c.node.name, "web-1");
    assert_eq!(c.node.data_dir, data_dir);
    assert!(!c.node.ready_alone);
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "cache"]);
    assert_eq!(c.services[0].protocol, Protocol::Http);
    assert_eq!(c.services[0].health.kind, HealthKind::Http);
    assert_eq!(c.services[1].protocol, Protocol::Tcp);
    assert_eq!(c.services[1].health.kind, HealthKind::Tcp);
    // The [gossip] table spells out the defaults.
    let defaults = f.ok(MINIMAL).gossip;
    assert_eq!(c.gossip, defaults);
}

// ---------------------------------------------------------------------------
// Parse errors: unknown fields, wrong types, syntax
// ---------------------------------------------------------------------------

#[test]
fn unknown_fields_are_named_with_their_path() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nservise = \"x\"",
    ));
    assert_error(
        &e,
        "listener[0].servise",
        &["unknown field `servise`", "line"],
    );

    let e = f.errors(&minimal_with("[[upstream]]\nname = \"x\""));
    assert_error(&e, "upstream", &["unknown field `upstream`", "line"]);

    let e = f.errors(&MINIMAL.replace("[node]", "[node]\nlisen = \"x\""));
    assert_error(
        &e,
        "node.lisen",
        &["unknown field `lisen`", "expected one of", "line 3"],
    );

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\nadress = \"x\"",
    ));
    assert_error(&e, "service[0].adress", &["unknown field `adress`"]);

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\n[[service]]\nname = \"api\"\naddress = \"127.0.0.1:2\"\n[service.health]\nhelth = 1",
    ));
    assert_error(&e, "service[1].health.helth", &["unknown field `helth`"]);

    let e = f.errors(&minimal_with("[gossip]\nfanout = 3"));
    assert_error(&e, "gossip.fanout", &["unknown setting"]);
}

#[test]
fn wrong_types_are_named_with_their_path() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\nweight = \"heavy\"",
    ));
    assert_error(&e, "service[0].weight", &["invalid type", "line"]);

    let e = f.errors(&MINIMAL.replace("\"127.0.0.1:7100\"", "7100"));
    assert_error(&e, "node.listen", &["invalid type: integer"]);

    let e = f.errors(&minimal_with("[gossip]\ninterval = \"fast\""));
    assert_error(&e, "gossip.interval", &[]);

    let e = f.errors(&minimal_with("[gossip]\nmax_members = -5"));
    assert_error(&e, "gossip.max_members", &[]);
}

#[test]
fn syntax_errors_name_the_field_and_the_line() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace("\"127.0.0.1:7100\"", "\"127.0.0.1:7100"));
    assert_eq!(e.len(), 1, "{e}");
    assert_error(&e, "node.listen", &["TOML syntax error at line 3"]);

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\n[service.health]\ninterval = 2s",
    ));
    assert_error(
        &e,
        "service[0].health.interval",
        &["TOML syntax error", "line 14"],
    );
}

// ---------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------

#[test]
fn missing_required_fields() {
    let f = Fixture::new();
    let e = f.errors("[node]\n");
    assert_error(&e, "node.listen", &["required"]);
    assert_error(&e, "node.data_dir", &["required"]);
    assert_error(&e, "tls", &["required"]);

    let e = f.errors(
        "[node]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"data\"\n[tls]\ncert = \"tls/node.crt\"\n",
    );
    assert_error(&e, "tls.key", &["required"]);
    assert_error(&e, "tls.ca", &["required"]);

    let e = f.errors(&minimal_with("[[service]]\nprotocol = \"tcp\""));
    assert_error(&e, "service[0].name", &["required"]);
    assert_error(&e, "service[0].address", &["required"]);
}

#[test]
fn unparseable_addresses() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace("127.0.0.1:7100", "localhost:7100"));
    assert_error(&e, "node.listen", &["\"localhost:7100\" is not an IP:PORT"]);

    let e = f.errors(&MINIMAL.replace("127.0.0.1:7100", "::1:7100"));
    assert_error(&e, "node.listen", &["brackets"]);

    let e = f.errors(&MINIMAL.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nadmin = \"127.0.0.1\"\nadvertise = \"nope\"",
    ));
    assert_error(&e, "node.admin", &["port is missing"]);
    assert_error(&e, "node.advertise", &["\"nope\""]);

    let e = f.errors(&MINIMAL.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nseeds = [\"10.0.0.1:7100\", \"seed_1:7100\", \"host\", \"h:99999\", \"10.0.0.2:0\"]",
    ));
    assert!(e.find("node.seeds[0]").is_none(), "{e}");
    assert_error(&e, "node.seeds[1]", &["not a valid host name"]);
    assert_error(&e, "node.seeds[2]", &["port is missing"]);
    assert_error(&e, "node.seeds[3]", &["not a port"]);
    assert_error(&e, "node.seeds[4]", &["port 0"]);

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"web:80\"",
    ));
    assert_error(&e, "service[0].address", &["is not an IP:PORT"]);

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:0\"",
    ));
    assert_error(&e, "service[0].address", &["port 0"]);
}

#[test]
fn the_admin_api_listens_on_loopback_only_and_its_limits_have_ranges() {
    let f = Fixture::new();
    let with = |line: &str| {
        MINIMAL.replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"data\"\n{line}"),
        )
    };
    for exposed in ["0.0.0.0:7101", "10.0.0.5:7101", "[::]:7101"] {
        let e = f.errors(&with(&format!("admin = \"{exposed}\"")));
        assert_error(
            &e,
            "node.admin",
            &["not a loopback address", "without authentication"],
        );
    }
    f.ok(&with("admin = \"127.0.0.9:7101\""));
    f.ok(&with("admin = \"[::1]:7101\""));
    let e = f.errors(&with("admin_header_timeout = \"10ms\""));
    assert_error(&e, "node.admin_header_timeout", &["out of range", "100ms"]);
    let e = f.errors(&with("admin_max_connections = 0"));
    assert_error(&e, "node.admin_max_connections", &["out of range"]);
}

#[test]
fn an_unspecified_listen_address_needs_advertise() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace("127.0.0.1:7100", "0.0.0.0:7100"));
    assert_error(&e, "node.advertise", &["required", "0.0.0.0:7100"]);

    let e = f.errors(&MINIMAL.replace("127.0.0.1:7100", "[::]:7100"));
    assert_error(&e, "node.advertise", &["required"]);

    let e = f.errors(&MINIMAL.replace(
        "listen = \"127.0.0.1:7100\"",
        "listen = \"0.0.0.0:7100\"\nadvertise = \"0.0.0.0:7100\"",
    ));
    assert_error(&e, "node.advertise", &["unspecified"]);

    let e = f.errors(&MINIMAL.replace(
        "listen = \"127.0.0.1:7100\"",
        "listen = \"0.0.0.0:7100\"\nadvertise = \"10.0.0.1:0\"",
    ));
    assert_error(&e, "node.advertise", &["port 0"]);
}

#[test]
fn bad_names() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace(
        "[node]",
        "[node]\ncluster = \"Prod\"\nzone = \"zone_a\"\nname = \"-x\"",
    ));
    assert_error(&e, "node.cluster", &["cluster name \"Prod\"", "lowercase"]);
    assert_error(&e, "node.zone", &["zone", "'_'"]);
    assert_error(&e, "node.name", &["node name"]);

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"Web\"\naddress = \"127.0.0.1:1\"\ntags = [\"ok\", \"not ok\"]",
    ));
    assert_error(&e, "service[0].name", &["service name \"Web\""]);
    assert!(e.find("service[0].tags[0]").is_none(), "{e}");
    assert_error(&e, "service[0].tags[1]", &["tag \"not ok\""]);

    let many: Vec<String> = (0..17).map(|i| format!("\"t{i}\"")).collect();
    let e = f.errors(&minimal_with(&format!(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\ntags = [{}]",
        many.join(", ")
    )));
    assert_error(&e, "service[0].tags", &["17 tags", "at most 16"]);
}

#[test]
fn duplicate_services_name_both_entries() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\n[[service]]\nname = \"api\"\naddress = \"127.0.0.1:2\"\n[[service]]\nname = \"web\"\naddress = \"127.0.0.1:3\"",
    ));
    assert_eq!(e.len(), 1, "{e}");
    assert_error(&e, "service[2].name", &["\"web\"", "service[0]"]);
}

#[test]
fn a_service_must_be_allowed_by_the_certificate() {
    let f = Fixture::new();
    f.write_cert(&node_cert(&f.ca, "web-1", &["web", "api"]));
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"payments\"\naddress = \"127.0.0.1:1\"",
    ));
    let err = e.find("service[0].name").unwrap();
    assert_eq!(
        err.reason,
        "\"payments\" is not in the node certificate (it allows: api, web); issue a certificate with --service payments"
    );
}

#[test]
fn missing_tls_files_name_the_field_and_the_os_error() {
    let f = Fixture::new();
    for (file, field) in [
        ("tls/node.crt", "tls.cert"),
        ("tls/node.key", "tls.key"),
        ("tls/ca.crt", "tls.ca"),
    ] {
        let text = MINIMAL.replace(file, &format!("{file}.missing"));
        let e = f.errors(&text);
        assert_error(&e, field, &["cannot read", "No such file or directory"]);
    }
    // All three at once.
    let e = f.errors(&MINIMAL.replace("tls/", "gone/"));
    assert_error(&e, "tls.cert", &["cannot read"]);
    assert_error(&e, "tls.key", &["cannot read"]);
    assert_error(&e, "tls.ca", &["cannot read"]);
}

#[test]
fn files_of_the_wrong_kind() {
    let f = Fixture::new();
    // Key and certificate swapped.
    let e = f.errors(
        &MINIMAL
            .replace("tls/node.crt", "X")
            .replace("tls/node.key", "tls/node.crt")
            .replace("X", "tls/node.key"),
    );
    assert_error(&e, "tls.cert", &["not a PEM certificate"]);
    assert_error(&e, "tls.key", &["not a usable PEM private key"]);

    // The node certificate given as the CA.
    let e = f.errors(&MINIMAL.replace("tls/ca.crt", "tls/node.crt"));
    assert_error(
        &e,
        "tls.ca",
        &["not a Shoal mesh CA certificate", "node certificate"],
    );

    // The CA given as the node certificate.
    let e = f.errors(&MINIMAL.replace("tls/node.crt", "tls/ca.crt"));
    assert_error(&e, "tls.cert", &["is a CA certificate"]);
}

#[test]
fn a_key_that_does_not_match_the_certificate() {
    let f = Fixture::new();
    let other = node_cert(&f.ca, "web-1", &["web"]);
    f.write("tls/node.key", &other.key_pem);
    let e = f.errors(MINIMAL);
    assert_eq!(e.len(), 1, "{e}");
    assert_error(
        &e,
        "tls.key",
        &["does not match the public key of tls.cert"],
    );
}

#[test]
fn a_certificate_from_another_ca() {
    let f = Fixture::new();
    let other_ca = new_ca(TD);
    f.write_cert(&node_cert(&other_ca, "web-1", &["web"]));
    let e = f.errors(MINIMAL);
    assert_eq!(e.len(), 1, "{e}");
    assert_error(
        &e,
        "tls.cert",
        &["not signed by the CA in tls.ca", "another CA"],
    );
}

#[test]
fn an_expired_certificate() {
    let f = Fixture::new();
    let now = OffsetDateTime::now_utc();
    let validity = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    let cert = f.ca.issue_node("web-1", &["web".into()], validity).unwrap();
    f.write_cert(&cert);
    let e = f.errors(MINIMAL);
    assert_error(&e, "tls.cert", &["expired on"]);
    // the name and the services are still checked against it: one run reports all
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"payments\"\naddress = \"127.0.0.1:9\"",
    ));
    assert_error(&e, "tls.cert", &["expired on"]);
    assert_error(&e, "service[0].name", &["not in the node certificate"]);
}

#[test]
fn a_certificate_not_yet_valid() {
    let f = Fixture::new();
    let now = OffsetDateTime::now_utc();
    let validity =
        Validity::between(now + time::Duration::days(1), now + time::Duration::days(2)).unwrap();
    let cert = f.ca.issue_node("web-1", &["web".into()], validity).unwrap();
    f.write_cert(&cert);
    let e = f.errors(MINIMAL);
    assert_error(&e, "tls.cert", &["not yet valid", "clock"]);
}

#[test]
fn an_operator_certificate_is_refused_with_a_hint() {
    let f = Fixture::new();
    let op =
        f.ca.issue_operator("alice", Validity::days_from_now(1).unwrap())
            .unwrap();
    f.write_cert(&op);
    let e = f.errors(MINIMAL);
    assert_error(
        &e,
        "tls.cert",
        &[
            "operator certificate",
            "spiffe://mesh.test/operator/alice",
            "--node",
        ],
    );
}

#[test]
fn a_certificate_of_another_trust_domain() {
    // The CA of a.test as tls.ca, a node certificate of b.test (from b.test's CA).
    let f = Fixture::new();
    let ca_a = new_ca("a.test");
    let ca_b = new_ca("b.test");
    f.write("tls/ca.crt", ca_a.cert_pem());
    f.write_cert(&node_cert(&ca_b, "web-1", &["web"]));
    let e = f.errors(MINIMAL);
    assert_error(
        &e,
        "tls.cert",
        &["another trust domain", "b.test", "a.test"],
    );

    // A certificate signed by a.test's own key that claims b.test (shoal-pki
    // never issues one; rcgen can): refused as well.
    let key = rcgen::KeyPair::from_pem(&ca_a.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_a.cert_pem(), key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://b.test/node/web-1".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    f.write("tls/node.crt", &leaf.pem());
    f.write("tls/node.key", &leaf_key.serialize_pem());
    let e = f.errors(MINIMAL);
    assert_error(&e, "tls.cert", &["another trust domain"]);
}

#[test]
fn a_node_name_that_differs_from_the_certificate() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace("[node]", "[node]\nname = \"web-2\""));
    assert_eq!(e.len(), 1, "{e}");
    assert_error(
        &e,
        "node.name",
        &["\"web-2\" does not match the certificate's node name \"web-1\""],
    );
}

#[test]
fn health_check_rules() {
    let f = Fixture::new();
    let svc = |health: &str| {
        minimal_with(&format!(
            "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\nprotocol = \"http\"\n[service.health]\n{health}"
        ))
    };
    let e = f.errors(&svc("interval = \"1s\"\ntimeout = \"2s\""));
    assert_error(
        &e,
        "service[0].health.timeout",
        &["longer than the check interval"],
    );

    let e = f.errors(&svc("timeout = \"0s\""));
    assert_error(&e, "service[0].health.timeout", &["greater than 0"]);

    let e = f.errors(&svc("interval = \"10ms\""));
    assert_error(&e, "service[0].health.interval", &["out of range"]);

    let e = f.errors(&svc("healthy_threshold = 0\nunhealthy_threshold = 101"));
    assert_error(
        &e,
        "service[0].health.healthy_threshold",
        &["between 1 and 100"],
    );
    assert_error(
        &e,
        "service[0].health.unhealthy_threshold",
        &["between 1 and 100"],
    );

    let e = f.errors(&svc("path = \"healthz\""));
    assert_error(&e, "service[0].health.path", &["must start with '/'"]);

    let e = f.errors(&svc("kind = \"grpc\""));
    assert_error(&e, "service[0].health.kind", &["\"grpc\"", "\"none\""]);

    let e = f.errors(&svc("kind = \"tcp\"\npath = \"/healthz\""));
    assert_error(&e, "service[0].health.path", &["only used by HTTP checks"]);
}

#[test]
fn service_value_rules() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\nweight = 0\nprotocol = \"udp\"",
    ));
    assert_error(&e, "service[0].weight", &["between 1 and 10000"]);
    assert_error(
        &e,
        "service[0].protocol",
        &["\"udp\"", "\"tcp\" or \"http\""],
    );

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\nweight = 10001",
    ));
    assert_error(&e, "service[0].weight", &["10001"]);
}

#[test]
fn gossip_rules() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with("[gossip]\ninterval = \"5ms\""));
    assert_error(&e, "gossip.interval", &["5ms", "between 10ms and 10s"]);
    let e = f.errors(&minimal_with("[gossip]\ninterval = \"11s\""));
    assert_error(&e, "gossip.interval", &["out of range"]);
    let e = f.errors(&minimal_with(
        "[gossip]\nmax_members = 1\nmax_documents = 0\ndead_node_grace = \"0s\"\nmax_clock_skew = \"2h\"",
    ));
    assert_error(&e, "gossip.max_members", &["between 2 and 1000000"]);
    assert_error(&e, "gossip.max_documents", &["between 1 and 100000"]);
    assert_error(&e, "gossip.dead_node_grace", &["at least 1s"]);
    assert_error(&e, "gossip.max_clock_skew", &["out of range"]);
    let e = f.errors(&minimal_with("[gossip]\nrings = 0"));
    assert_error(&e, "gossip.rings", &["between 1 and 8"]);
    let e = f.errors(&minimal_with("[gossip]\nrings = 9"));
    assert_error(&e, "gossip.rings", &["between 1 and 8"]);
    let e = f.errors(&minimal_with(
        "[gossip]\ninterval = \"1s\"\nprobe_timeout = \"500ms\"",
    ));
    assert_error(&e, "gossip.probe_timeout", &["out of range"]);
    let e = f.errors(&minimal_with(
        "[gossip]\nsuspicion_timeout = \"1s\"\nsuspicion_timeout_min = \"2s\"",
    ));
    assert_error(&e, "gossip.suspicion_timeout", &["out of range"]);
    // Settings of the chitchat-based membership say what replaced them.
    let e = f.errors(&minimal_with(
        "[gossip]\nphi_threshold = 8.0\ndeletion_grace = \"1m\"",
    ));
    assert_error(
        &e,
        "gossip.phi_threshold",
        &["no longer exists", "suspicion_timeout"],
    );
    assert_error(&e, "gossip.deletion_grace", &["no longer exists"]);
    let e = f.errors(&minimal_with("[gossip]\nfanout = 3"));
    assert_error(&e, "gossip.fanout", &["unknown setting"]);
}

#[test]
fn a_data_dir_that_is_a_file_or_has_no_parent() {
    let f = Fixture::new();
    f.write("data", "not a directory");
    let e = f.errors(MINIMAL);
    assert_error(&e, "node.data_dir", &["not a directory"]);

    let e = f.errors(&MINIMAL.replace("data_dir = \"data\"", "data_dir = \"a/b/c\""));
    assert_error(&e, "node.data_dir", &["parent"]);
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let f = Fixture::new();
    let text = r#"
[node]
name = "web-9"
zone = "Zone A"
listen = "0.0.0.0:7100"
seeds = ["bad seed"]

[tls]
cert = "tls/node.crt"
key = "tls/missing.key"
ca = "tls/ca.crt"

[gossip]
interval = "1ms"

[[service]]
name = "payments"
address = "127.0.0.1"
weight = 0

[service.health]
interval = "1s"
timeout = "5s"
healthy_threshold = 0

[[service]]
name = "payments"
address = "127.0.0.1:9000"
"#;
    let e = f.errors(text);
    let fields: Vec<&str> = e.errors().iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "tls.key",
        "node.name",
        "node.zone",
        "node.advertise",
        "node.data_dir",
        "node.seeds[0]",
        "gossip.interval",
        "service[0].name",
        "service[0].address",
        "service[0].weight",
        "service[0].health.timeout",
        "service[0].health.healthy_threshold",
        "service[1].name",
    ] {
        assert!(fields.contains(&expected), "{expected} missing from:\n{e}");
    }
    // One error per line, each "field: reason".
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), e.len());
    assert!(shown.lines().all(|l| l.contains(": ")), "{shown}");
}

#[test]
fn errors_display_as_field_colon_reason() {
    let f = Fixture::new();
    let e = f.errors(&MINIMAL.replace("127.0.0.1:7100", "nowhere"));
    assert!(
        e.to_string()
            .starts_with("node.listen: \"nowhere\" is not an IP:PORT address"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// [[listener]] and the proxy fields of [[service]]
// ---------------------------------------------------------------------------

#[test]
fn listeners_parse_with_defaults_and_overrides() {
    let f = Fixture::new();
    let c = f.ok(&minimal_with(
        r#"
[[service]]
name = "web"
address = "127.0.0.1:8080"
allow_nodes = ["edge-1"]
allow_services = ["api"]
max_connections = 50
connect_timeout = "250ms"
http_idle_timeout = "30s"
idle_timeout = "1h"

[[listener]]
bind = "127.0.0.1:9000"
service = "db"

[[listener]]
name = "cache-sticky"
bind = "127.0.0.1:9001"
service = "cache"
lb = "ring_hash"
source_service = "web"
max_connections = 10
connect_timeout = "2s"
idle_timeout = "10m"
attempts = 5
zone_aware = false
[listener.outlier]
consecutive_failures = 5
base_ejection = "1s"
max_ejection = "30s"
"#,
    ));
    let web = &c.services[0];
    assert_eq!(web.allow_nodes, ["edge-1"]);
    assert_eq!(web.allow_services, ["api"]);
    assert_eq!(web.max_connections, 50);
    assert_eq!(web.connect_timeout, Duration::from_millis(250));
    assert_eq!(web.http_idle_timeout, Duration::from_secs(30));
    assert!(web.allows("edge-1", None));
    assert!(web.allows("other", Some("api")));
    assert!(!web.allows("other", Some("web")));
    assert!(!web.allows("other", None));

    let db = &c.listeners[0];
    assert_eq!(db.name, "db", "the name defaults to the service");
    assert_eq!(db.lb, Policy::RoundRobin);
    assert_eq!(db.attempts, 3);
    assert_eq!(db.max_connections, 10_000);
    assert_eq!(db.connect_timeout, Duration::from_secs(2));
    assert_eq!(db.idle_timeout, Duration::from_secs(600), "ten minutes");
    assert!(db.zone_aware);
    assert_eq!(db.source_service, None);
    assert_eq!(db.outlier.consecutive_failures, 3);

    assert_eq!(web.idle_timeout, Duration::from_secs(3600));

    let cache = &c.listeners[1];
    assert_eq!(cache.name, "cache-sticky");
    assert_eq!(cache.lb, Policy::RingHash);
    assert_eq!(cache.source_service.as_deref(), Some("web"));
    assert_eq!(cache.attempts, 5);
    assert!(!cache.zone_aware);
    assert_eq!(cache.idle_timeout, Duration::from_secs(600));
    assert_eq!(cache.outlier.base_ejection, Duration::from_secs(1));
    assert_eq!(cache.outlier.max_ejection, Duration::from_secs(30));
}

#[test]
fn bad_listeners_name_their_field() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        r#"
[[listener]]
bind = "localhost:9000"
service = "Web"
lb = "random"
protocol = "udp"
attempts = 0
max_connections = 0
source_service = "payments"

[[listener]]
service = "db"
idle_timeout = "0s"
[listener.outlier]
base_ejection = "10s"
max_ejection = "1s"

[[listener]]
name = "a"
bind = "127.0.0.1:9100"
service = "x"

[[listener]]
name = "a"
bind = "127.0.0.1:9100"
service = "y"
kind = "edge"
access_log = "stdout"
[listener.tls]
cert = "ingress.crt"
key = "ingress.key"

[[listener]]
name = "web"
bind = "127.0.0.1:9101"
protocol = "http"
kind = "mesh"
[listener.tls]
cert = "ingress.crt"
key = "ingress.key"

[[listener]]
bind = "127.0.0.1:9102"
protocol = "http"
"#,
    ));
    assert_error(&e, "listener[0].bind", &["not an IP:PORT"]);
    assert_error(&e, "listener[0].service", &["lowercase"]);
    assert_error(&e, "listener[0].lb", &["round_robin", "ring_hash"]);
    assert_error(&e, "listener[0].protocol", &["\"udp\""]);
    assert_error(&e, "listener[0].attempts", &["between 1 and"]);
    assert_error(&e, "listener[0].max_connections", &["between 1 and"]);
    assert_error(
        &e,
        "listener[0].source_service",
        &["not in the node certificate"],
    );
    assert_error(&e, "listener[1].bind", &["required"]);
    assert_error(&e, "listener[1].idle_timeout", &["out of range"]);
    assert_error(&e, "listener[1].outlier.max_ejection", &["base_ejection"]);
    assert_error(&e, "listener[3].kind", &["\"edge\"", "ingress"]);
    assert_error(&e, "listener[3].access_log", &["only http listeners"]);
    assert_error(&e, "listener[3].tls", &["ingress"]);
    assert_error(&e, "listener[4].tls", &["ingress"]);
    assert_error(&e, "listener[5].name", &["required for an http listener"]);

    let e = f.errors(&minimal_with(
        r#"
[[listener]]
name = "a"
bind = "127.0.0.1:9100"
service = "x"

[[listener]]
name = "a"
bind = "127.0.0.1:9100"
service = "y"
"#,
    ));
    assert_error(&e, "listener[1].name", &["already the name of listener[0]"]);
    assert_error(&e, "listener[1].bind", &["already bound by listener[0]"]);
}

#[test]
fn bad_service_proxy_fields_name_their_field() {
    let f = Fixture::new();
    let e = f.errors(&minimal_with(
        r#"
[[service]]
name = "web"
address = "127.0.0.1:8080"
allow_nodes = ["Edge"]
allow_services = ["api_v2"]
max_connections = 0
connect_timeout = "0s"
http_idle_timeout = "2h"
"#,
    ));
    assert_error(&e, "service[0].allow_nodes[0]", &["lowercase"]);
    assert_error(&e, "service[0].allow_services[0]", &["'_'"]);
    assert_error(&e, "service[0].max_connections", &["between 1 and"]);
    assert_error(&e, "service[0].connect_timeout", &["out of range"]);
    assert_error(&e, "service[0].http_idle_timeout", &["out of range"]);
}

#[test]
fn http2_backends_are_for_http_services_only() {
    let f = Fixture::new();
    let c = f.ok(&minimal_with(
        "[[service]]\nname = \"api\"\naddress = \"127.0.0.1:9090\"\nprotocol = \"http\"\nhttp2 = true\n\n[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"",
    ));
    assert!(c.services[0].http2);
    assert!(!c.services[1].http2, "HTTP/1.1 unless asked");
    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"cache\"\naddress = \"127.0.0.1:5432\"\nhttp2 = true",
    ));
    assert_error(
        &e,
        "service[0].http2",
        &["only an HTTP service", "protocol = \"http\""],
    );
}

#[test]
fn tls_to_a_backend_reads_its_cas_with_the_config_and_names_what_is_wrong() {
    let f = Fixture::new();
    // The mesh CA's file serves as the backend's CA here: any PEM CA will do.
    let service = |extra: &str| {
        minimal_with(&format!(
            "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8443\"\nprotocol = \"http\"\n{extra}"
        ))
    };
    let c = f.ok(&service("tls = true\ntls_ca = \"tls/ca.crt\""));
    let tls = c.services[0].tls.as_ref().expect("tls configured");
    assert_eq!(tls.server_name, "127.0.0.1", "the address's IP by default");
    assert_eq!(
        tls.ca.as_deref(),
        Some(f.path().join("tls/ca.crt").as_path())
    );
    assert_eq!(tls.roots.len(), 1, "the CA file's certificate is read now");
    let c = f.ok(&service(
        "tls = true\ntls_ca = \"tls/ca.crt\"\ntls_server_name = \"web.internal\"\nhttp2 = true",
    ));
    let tls = c.services[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name, "web.internal");
    assert!(c.services[0].http2);
    assert!(
        f.ok(&service("")).services[0].tls.is_none(),
        "plain by default"
    );

    let e = f.errors(&minimal_with(
        "[[service]]\nname = \"cache\"\naddress = \"127.0.0.1:5432\"\ntls = true\ntls_ca = \"tls/ca.crt\"",
    ));
    assert_error(
        &e,
        "service[0].tls",
        &["only an HTTP service", "protocol = \"http\""],
    );
    let e = f.errors(&service("tls_ca = \"tls/ca.crt\"\ntls_server_name = \"x\""));
    assert_error(&e, "service[0].tls_ca", &["only with tls = true"]);
    assert_error(&e, "service[0].tls_server_name", &["only with tls = true"]);
    let e = f.errors(&service("tls = true\ntls_ca = \"tls/missing.pem\""));
    assert_error(&e, "service[0].tls_ca", &["cannot read", "missing.pem"]);
    f.write("tls/empty.pem", "not a certificate\n");
    let e = f.errors(&service("tls = true\ntls_ca = \"tls/empty.pem\""));
    assert_error(&e, "service[0].tls_ca", &["holds no PEM certificate"]);
    f.write(
        "tls/garbage.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let e = f.errors(&service("tls = true\ntls_ca = \"tls/garbage.pem\""));
    assert_error(&e, "service[0].tls_ca", &["cannot be a trust anchor"]);
    let e = f.errors(&service(
        "tls = true\ntls_ca = \"tls/ca.crt\"\ntls_server_name = \"not a name\"",
    ));
    assert_error(
        &e,
        "service[0].tls_server_name",
        &["not a DNS name or an IP address"],
    );
}

#[test]
fn a_client_certificate_for_a_backend_is_read_with_its_key_and_only_with_tls() {
    let f = Fixture::new();
    let other = node_cert(&f.ca, "web-2", &["web"]);
    f.write("tls/other.key", &other.key_pem);
    let service = |extra: &str| {
        minimal_with(&format!(
            "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8443\"\nprotocol = \"http\"\n{extra}"
        ))
    };
    let with_ca = |extra: &str| service(&format!("tls = true\ntls_ca = \"tls/ca.crt\"\n{extra}"));
    // Any certificate with its key serves: the node's own files here.
    let c = f.ok(&with_ca(
        "tls_cert = \"tls/node.crt\"\ntls_key = \"tls/node.key\"",
    ));
    let id = c.services[0]
        .tls
        .as_ref()
        .unwrap()
        .client
        .as_ref()
        .expect("a client identity");
    assert_eq!(id.cert, f.path().join("tls/node.crt"));
    assert_eq!(id.key, f.path().join("tls/node.key"));
    assert_eq!(id.chain.len(), 1, "the chain is read now");
    assert!(
        format!("{id:?}").contains("secret key elided"),
        "no key in logs: {id:?}"
    );
    assert!(
        f.ok(&with_ca("")).services[0]
            .tls
            .as_ref()
            .unwrap()
            .client
            .is_none(),
        "no client certificate unless given"
    );

    let e = f.errors(&with_ca("tls_cert = \"tls/node.crt\""));
    assert_error(&e, "service[0].tls_key", &["required with tls_cert"]);
    let e = f.errors(&with_ca("tls_key = \"tls/node.key\""));
    assert_error(&e, "service[0].tls_cert", &["required with tls_key"]);
    let e = f.errors(&service(
        "tls_cert = \"tls/node.crt\"\ntls_key = \"tls/node.key\"",
    ));
    assert_error(&e, "service[0].tls_cert", &["only with tls = true"]);
    assert_error(&e, "service[0].tls_key", &["only with tls = true"]);
    let e = f.errors(&with_ca(
        "tls_cert = \"tls/node.crt\"\ntls_key = \"tls/other.key\"",
    ));
    assert_error(
        &e,
        "service[0].tls_key",
        &[
            "other.key does not match the first certificate of",
            "node.crt",
        ],
    );
    let e = f.errors(&with_ca(
        "tls_cert = \"tls/node.crt\"\ntls_key = \"tls/ca.crt\"",
    ));
    assert_error(
        &e,
        "service[0].tls_key",
        &["is not a usable PEM private key"],
    );
    let e = f.errors(&with_ca(
        "tls_cert = \"tls/missing.crt\"\ntls_key = \"tls/node.key\"",
    ));
    assert_error(&e, "service[0].tls_cert", &["cannot read", "missing.crt"]);
}

#[test]
fn a_callers_share_defaults_to_three_quarters_and_cannot_exceed_the_service() {
    let f = Fixture::new();
    let service = |extra: &str| {
        minimal_with(&format!(
            "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n{extra}"
        ))
    };
    let c = f.ok(&service("max_connections = 3"));
    assert_eq!(c.services[0].max_connections_per_caller, 2);
    let c = f.ok(&service("max_connections = 1"));
    assert_eq!(c.services[0].max_connections_per_caller, 1, "at least one");
    let c = f.ok(&service(
        "max_connections = 8\nmax_connections_per_caller = 8",
    ));
    assert_eq!(c.services[0].max_connections_per_caller, 8, "no share kept");
    let e = f.errors(&service(
        "max_connections = 8\nmax_connections_per_caller = 9",
    ));
    assert_error(
        &e,
        "service[0].max_connections_per_caller",
        &["9 is out of range", "max_connections (8)"],
    );
    let e = f.errors(&service("max_connections_per_caller = 0"));
    assert_error(
        &e,
        "service[0].max_connections_per_caller",
        &["out of range"],
    );
}

#[test]
fn max_streams_per_connection_is_bounded_by_the_protocol() {
    let f = Fixture::new();
    let node = |v: u32| {
        MINIMAL.replace(
            "[tls]",
            &format!("max_streams_per_connection = {v}\n\n[tls]"),
        )
    };
    assert_eq!(
        f.ok(&node(4096)).node.max_streams_per_connection,
        Some(4096)
    );
    for bad in [10, 70_000] {
        let e = f.errors(&node(bad));
        assert_error(
            &e,
            "node.max_streams_per_connection",
            &["out of range", "256", "65536"],
        );
    }
}
