//! The deployment files under `deploy/` against what the node actually reads:
//! the Kubernetes manifests (their config loads, the node it starts answers
//! the probes' paths on the probes' port, ports and paths agree across the
//! manifests), the Grafana dashboard (every metric it queries is registered by
//! the node, whose /metrics exports each once it has a sample) and the container image's file (its health check and ports).
//! The systemd units are checked with `systemd-analyze` in `node/tests/cli.rs`,
//! which has the `shoal` binary at hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shoal_node::StartOptions;
use shoal_node::app::Node;
use shoal_node::config::{Config, Overrides};
use shoal_tests::Pki;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Every document of every manifest of `deploy/kubernetes`, with its file.
fn manifests() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = read(&format!("kubernetes/{file}"));
        for doc in YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}")) {
            out.push((file.clone(), doc));
        }
    }
    out
}

/// The one manifest of `kind` (and `name`, if given).
fn manifest<'a>(all: &'a [(String, Yaml)], kind: &str, name: Option<&str>) -> &'a Yaml {
    let found: Vec<&Yaml> = all
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"].as_str() == Some(kind))
        .filter(|d| name.is_none_or(|n| d["metadata"]["name"].as_str() == Some(n)))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name:?}");
    found[0]
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn list(y: &Yaml) -> &Vec<Yaml> {
    y.as_vec().unwrap_or_else(|| panic!("not a list: {y:?}"))
}

/// The ConfigMap's node config, made runnable here: its TLS files and data
/// directory moved to a temporary directory, no seeds, listeners on free
/// ports. Nothing else is changed.
struct LocalConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    text: String,
}

fn local_config(pki: &Pki, text: &str, services: &[&str]) -> LocalConfig {
    let dir = tempfile::tempdir().unwrap();
    let certs = pki.node_dir("k8s-node-1", services);
    let seeds_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("seeds"))
        .expect("the config names seeds");
    let text = text
        .replace("/etc/shoal/tls/", &format!("{}/", certs.display()))
        .replace(
            "/var/lib/shoal",
            &dir.path().join("data").display().to_string(),
        )
        .replace(seeds_line, "seeds = []")
        .replace("127.0.0.1:9080", "127.0.0.1:0");
    let path = dir.path().join("shoal.toml");
    std::fs::write(&path, &text).unwrap();
    LocalConfig {
        _dir: dir,
        path,
        text,
    }
}

/// Starts the node of `config` as the DaemonSet runs it (`--listen` given),
/// with its admin API on a free port.
async fn start(config: &LocalConfig) -> Node {
    let overrides = Overrides {
        seeds: Vec::new(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
    };
    let cfg = Config::load(&config.path, &overrides).unwrap_or_else(|e| {
        panic!(
            "the ConfigMap's config does not load:\n{e}\n{}",
            config.text
        )
    });
    Node::start(cfg, StartOptions::default()).await.unwrap()
}

/// `node.admin` and `node.listen` of the ConfigMap's config, as written.
fn addresses(toml_text: &str) -> (SocketAddr, SocketAddr) {
    let v: toml::Table = toml::from_str(toml_text).unwrap();
    let addr = |key: &str| {
        v["node"][key]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap()
    };
    (addr("admin"), addr("listen"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifests_agree_with_what_the_node_reads() {
    let all = manifests();
    let config_map = manifest(&all, "ConfigMap", Some("shoal-config"));
    let toml_text = s(&config_map["data"]["shoal.toml"]);
    let services: Vec<&str> = s(&config_map["data"]["services"])
        .split_whitespace()
        .collect();
    let daemon_set = manifest(&all, "DaemonSet", Some("shoal"));
    let pod = &daemon_set["spec"]["template"]["spec"];
    let (admin, listen) = addresses(toml_text);

    // The config loads (every key known, every value valid) and the node it
    // starts answers the probes' paths.
    let pki = Pki::new("prod.example");
    let local = local_config(&pki, toml_text, &services);
    let node = start(&local).await;
    let shoal = &list(&pod["containers"])[0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &shoal[probe]["httpGet"];
        assert_eq!(
            s(&get["host"]),
            "127.0.0.1",
            "{probe}: the admin API is loopback only"
        );
        assert_eq!(
            get["port"].as_i64(),
            Some(i64::from(admin.port())),
            "{probe} port"
        );
        let (status, body) = shoal_tests::http_get(node.bound().admin, s(&get["path"])).await;
        assert_eq!(status, 200, "{probe} {}: {body}", s(&get["path"]));
    }
    node.kill().await;
    assert!(
        pod["hostNetwork"].as_bool() == Some(true),
        "probes reach the host's loopback"
    );

    // The container runs the config the ConfigMap volume holds, listening on
    // the port it declares.
    let args: Vec<&str> = list(&shoal["args"]).iter().map(s).collect();
    assert_eq!(&args[..2], ["run", "--config"]);
    let config_mount = mount(shoal, "config");
    assert_eq!(args[2], format!("{config_mount}/shoal.toml"));
    assert_eq!(
        s(&volume(pod, "config")["configMap"]["name"]),
        "shoal-config"
    );
    let i = args
        .iter()
        .position(|a| *a == "--listen")
        .expect("--listen");
    assert_eq!(args[i + 1], format!("$(HOST_IP):{}", listen.port()));
    let port = &list(&shoal["ports"])[0];
    assert_eq!(
        port["containerPort"].as_i64(),
        Some(i64::from(listen.port()))
    );
    assert_eq!(s(&port["protocol"]), "UDP");

    // The seeds are the headless Service's name and port.
    let service = manifest(&all, "Service", Some("shoal-seeds"));
    assert_eq!(s(&service["spec"]["clusterIP"]), "None");
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let service_port = &list(&service["spec"]["ports"])[0];
    assert_eq!(
        service_port["port"].as_i64(),
        Some(i64::from(listen.port()))
    );
    assert_eq!(s(&service_port["protocol"]), "UDP");
    let seed = format!(
        "{}.{}.svc.cluster.local:{}",
        s(&service["metadata"]["name"]),
        s(&service["metadata"]["namespace"]),
        listen.port()
    );
    let v: toml::Table = toml::from_str(toml_text).unwrap();
    assert_eq!(v["node"]["seeds"][0].as_str(), Some(seed.as_str()));
    assert_eq!(
        service["spec"]["selector"],
        daemon_set["spec"]["template"]["metadata"]["labels"]
    );

    // The init container issues the certificate where the config reads it,
    // for the services the config hosts.
    let tls_mount = mount(shoal, "tls");
    for key in ["cert", "key", "ca"] {
        let file = v["tls"][key].as_str().unwrap();
        assert!(
            file.starts_with(&format!("{tls_mount}/")),
            "tls.{key} = {file}"
        );
    }
    let issue = list(&pod["initContainers"])
        .iter()
        .find(|c| s(&c["name"]) == "issue-certificate")
        .expect("the init container issuing the certificate");
    let script = s(&list(&issue["args"])[0]);
    assert!(script.contains(&format!("--out {tls_mount}")), "{script}");
    assert!(
        script.contains(&format!("--ca {}", mount(issue, "ca"))),
        "{script}"
    );
    let hosted: BTreeSet<&str> = v["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|svc| svc["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosted,
        services.iter().copied().collect(),
        "certified services"
    );
    let data_mount = mount(shoal, "data");
    assert_eq!(v["node"]["data_dir"].as_str(), Some(data_mount));

    // kustomization.yaml lists every manifest.
    let kustomization = read("kubernetes/kustomization.yaml");
    for (file, _) in &all {
        if file != "kustomization.yaml" {
            assert!(
                kustomization.contains(file.as_str()),
                "{file} not in kustomization.yaml"
            );
        }
    }
}

/// The mount path of volume `name` in `container`.
fn mount<'a>(container: &'a Yaml, name: &str) -> &'a str {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| s(&m["name"]) == name)
        .map(|m| s(&m["mountPath"]))
        .unwrap_or_else(|| panic!("no mount of {name}"))
}

/// Volume `name` of the pod.
fn volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod["volumes"])
        .iter()
        .find(|v| s(&v["name"]) == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Every `shoal_` metric a PromQL expression names, as its family (without
/// `_total`, `_bucket`, `_sum` or `_count`).
fn families_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("shoal_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        out.push(family.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_one_the_node_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana/shoal.json")).unwrap();
    let mut queried = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs += 1;
            queried.extend(families_in(target["expr"].as_str().unwrap()));
        }
    }
    let variable = dashboard["templating"]["list"][1]["query"]
        .as_str()
        .unwrap();
    queried.extend(families_in(variable));
    assert!(exprs >= 20, "{exprs} queries");

    // The families a node registers (what its /metrics exports, each once it
    // has a sample), checked against a running node's export.
    let registered: BTreeSet<String> = shoal_node::metrics::Metrics::new()
        .family_names()
        .iter()
        .cloned()
        .collect();
    let missing: Vec<&String> = queried.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "queried but not registered: {missing:?}"
    );
    let config_map_text = read("kubernetes/configmap.yaml");
    let doc = &YamlLoader::load_from_str(&config_map_text).unwrap()[0];
    let pki = Pki::new("prod.example");
    let local = local_config(&pki, s(&doc["data"]["shoal.toml"]), &["web"]);
    let node = start(&local).await;
    let (status, metrics) = shoal_tests::http_get(node.bound().admin, "/metrics").await;
    assert_eq!(status, 200);
    node.kill().await;
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(exported.len() >= 10, "{metrics}");
    let unknown: Vec<&String> = exported.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "exported but not in the list: {unknown:?}"
    );
    assert!(
        queried.iter().any(|q| exported.contains(q)),
        "some queried family has samples"
    );

    // The scrape example targets the admin API where the config puts it.
    let (admin, _) = addresses(s(&doc["data"]["shoal.toml"]));
    assert!(read("grafana/prometheus.yml").contains(&format!("\"{admin}\"")));
}

#[test]
fn the_container_image_runs_as_a_user_and_checks_readiness_where_the_node_serves_it() {
    let containerfile = read("container/Containerfile");
    let config_map_text = read("kubernetes/configmap.yaml");
    let doc = &YamlLoader::load_from_str(&config_map_text).unwrap()[0];
    let (admin, listen) = addresses(s(&doc["data"]["shoal.toml"]));
    let line = |prefix: &str| {
        containerfile
            .lines()
            .rfind(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line"))
            .to_string()
    };
    assert_eq!(line("USER "), "USER 65532:65532", "not root");
    assert_eq!(line("EXPOSE "), format!("EXPOSE {}/udp", listen.port()));
    assert!(
        containerfile.contains(&format!(
            "CMD [\"shoal\", \"ready\", \"--admin\", \"{admin}\"]"
        )),
        "the health check asks the node's admin API"
    );
    assert_eq!(line("ENTRYPOINT "), "ENTRYPOINT [\"shoal\"]");
    assert!(line("CMD ").contains("\"run\", \"--config\""));
    // Two stages: a build, then a small runtime with the three binaries.
    assert_eq!(
        containerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2
    );
    for binary in ["shoal", "shoal-pki", "shoal-sim"] {
        assert!(containerfile.contains(&format!("target/release/{binary} ")));
    }
}
