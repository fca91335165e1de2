//! Process-level tests of the real `shoal` binary: `check`, `run` and `status` as
//! an operator uses them, signals (SIGTERM drain, SIGHUP reload) and the JSON log
//! format. Everything runs on loopback with ports chosen by the OS, certificates
//! minted with `shoal_pki` into a temporary directory, and every wait is a bounded
//! poll ([`eventually`]). Each child process lives in a [`Shoal`] guard that kills
//! it when the test ends, passed or failed, and prints its log if the test failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use shoal_pki::{CertificateAuthority, IssuedCert, Validity};
use tempfile::TempDir;
use time::OffsetDateTime;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const TRUST_DOMAIN: &str = "mesh.test";
/// How long [`eventually`] polls before it gives up.
const EVENTUALLY: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Polls `check` every 50 ms until it returns `Ok`; after [`EVENTUALLY`] panics
/// naming `what` and the last `Err` it returned (what was seen instead).
#[track_caller]
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {EVENTUALLY:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A temporary directory with a mesh CA; certificates and config files go in it.
struct Fixture {
    dir: TempDir,
    ca: CertificateAuthority,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            ca: CertificateAuthority::create(TRUST_DOMAIN, Validity::days_from_now(30).unwrap())
                .unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A node certificate valid for 10 days.
    fn issue(&self, node: &str, services: &[&str]) -> IssuedCert {
        self.issue_valid(node, services, Validity::days_from_now(10).unwrap())
    }

    fn issue_valid(&self, node: &str, services: &[&str], validity: Validity) -> IssuedCert {
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        self.ca.issue_node(node, &services, validity).unwrap()
    }

    /// Writes node.crt, node.key and ca.crt into the new directory `sub`.
    fn save(&self, sub: &str, cert: &IssuedCert) {
        cert.save(&self.path().join(sub), false).unwrap();
    }

    /// Replaces node.crt and node.key in `sub` the way an operator should: each
    /// file written under a temporary name, then renamed over the old one.
    fn replace(&self, sub: &str, cert: &IssuedCert) {
        let dir = self.path().join(sub);
        for (name, contents) in [("node.key", &cert.key_pem), ("node.crt", &cert.cert_pem)] {
            let tmp = dir.join(format!(".{name}.new"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A config for node `name` whose TLS files are in the directory `name`, on
/// loopback with OS-chosen ports and fast gossip, followed by `extra`.
fn node_config(name: &str, extra: &str) -> String {
    format!(
        r#"
[node]
name = "{name}"
cluster = "cli-test"
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{name}-data"
drain_timeout = "2s"

[tls]
cert = "{name}/node.crt"
key = "{name}/node.key"
ca = "{name}/ca.crt"

[gossip]
interval = "100ms"
{extra}
"#
    )
}

/// Runs a `shoal` command to completion (bounded).
/// `shoal route VERB ARG` signed with the operator files, against `admin`.
fn signed_route(verb: &str, arg: &str, cert: &str, key: &str, admin: &str) -> Output {
    shoal(&[
        "route",
        verb,
        arg,
        "--operator-cert",
        cert,
        "--operator-key",
        key,
        "--admin",
        admin,
    ])
}

fn shoal(args: &[&str]) -> Output {
    shoal_env(args, &[])
}

/// [`shoal`] with extra environment variables.
fn shoal_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let child = Command::new(SHOAL)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SHOAL_OPERATOR_CERT")
        .env_remove("SHOAL_OPERATOR_KEY")
        .env_remove("SHOAL_ADMIN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `wait_with_output` cannot be bounded; a watchdog kills the child if it
    // outlives the bound.
    let pid = child.id();
    let done = Arc::new(Mutex::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + EVENTUALLY;
            while Instant::now() < deadline {
                if *done.lock().unwrap() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL);
        })
    };
    let out = child.wait_with_output().unwrap();
    *done.lock().unwrap() = true;
    watchdog.join().unwrap();
    assert!(
        out.status.code().is_some(),
        "`shoal {}` did not finish within {EVENTUALLY:?}",
        args.join(" ")
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One plain HTTP/1.1 GET; returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A TCP backend that accepts and closes connections, for TCP health checks.
/// Dropping it stops it.
struct Backend {
    addr: SocketAddr,
    stop: Arc<Mutex<bool>>,
}

impl Backend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(Mutex::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if *flag.lock().unwrap() {
                    return;
                }
                drop(conn);
            }
        });
        Backend { addr, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        *self.stop.lock().unwrap() = true;
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A `shoal` child process and its stderr, read line by line by a thread so the
/// child never blocks on a full pipe. Dropping it kills the child; if the test
/// is failing, the child's log is printed first.
struct Shoal {
    label: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    quic: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Shoal {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("---- log of {} ({} lines) ----", self.label, lines.len());
            for line in lines.iter().rev().take(200).rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Shoal {
    fn guard(label: String, child: Child) -> Shoal {
        let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
        Shoal {
            label,
            child: Some(child),
            lines: Arc::default(),
            reader: None,
            quic: unset,
            admin: unset,
        }
    }

    /// Starts `shoal --log-format json run --config CONFIG ARGS...` and waits for
    /// its "node started" line, which gives the addresses it bound.
    fn run(label: &str, config: &Path, args: &[&str], rust_log: Option<&str>) -> Shoal {
        let mut cmd = Command::new(SHOAL);
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut node = Shoal::guard(label.to_string(), child);
        let lines = node.lines.clone();
        node.reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                lines.lock().unwrap().push(line);
            }
        }));
        let started = node.wait_for_log(0, "the \"node started\" line", |v| {
            v["fields"]["message"] == "node started"
        });
        let field = |name: &str| {
            started["fields"][name]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        node.quic = field("advertise").parse().unwrap();
        node.admin = field("admin")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        node
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32).unwrap()
    }

    fn signal(&self, signal: Signal) {
        kill_process(self.pid(), signal).unwrap();
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a JSON log line at index `from` or later satisfies `pred`, and
    /// returns it. Fails at once if the process exits first.
    #[track_caller]
    fn wait_for_log(&mut self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let label = self.label.clone();
        eventually(&format!("{what} in the log of {label}"), || {
            let found = self
                .lines()
                .iter()
                .skip(from)
                .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| pred(v)));
            if let Some(v) = found {
                return Ok(v);
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{label} exited with {status} before logging {what}");
            }
            Err(format!("{} lines so far", self.lines().len()))
        })
    }

    /// Waits (bounded) for the process to exit; then every line it wrote has been
    /// read.
    #[track_caller]
    fn wait_exit(&mut self) -> ExitStatus {
        let label = self.label.clone();
        let status = eventually(&format!("{label} to exit"), || {
            match self.child.as_mut().unwrap().try_wait().unwrap() {
                Some(status) => Ok(status),
                None => Err("still running".into()),
            }
        });
        self.child = None;
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin, path)
    }

    fn get_json(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            return Err(format!("GET {path} answered {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
    }

    /// `name`'s state (`alive`, `draining`, `dead`) in this node's `/members`,
    /// newest generation first.
    fn member_state(&self, name: &str) -> Result<String, String> {
        let members = self.get_json("/members")?;
        members
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == name)
            .max_by_key(|m| m["generation"].as_u64())
            .and_then(|m| m["state"].as_str().map(str::to_string))
            .ok_or_else(|| format!("{name} is not in /members: {members}"))
    }

    /// The value of a counter or gauge sample in `/metrics` (0 if absent).
    fn metric(&self, sample: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics")?;
        Ok(body
            .lines()
            .filter_map(|l| l.strip_prefix(sample))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum())
    }
}

/// The rows of table `title` in `shoal status` output, split on whitespace.
fn status_table(stdout: &str, title: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| l.trim() != title && !l.starts_with(&format!("{title} (")))
        .skip(2) // the title and the header line
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

// ---------------------------------------------------------------------------
// shoal check, and shoal run with a bad config
// ---------------------------------------------------------------------------

#[test]
fn check_accepts_a_valid_config_and_prints_the_effective_config() {
    let f = Fixture::new();
    f.save("web-1", &f.issue("web-1", &["web"]));
    let config = f.write(
        "node.toml",
        &node_config(
            "web-1",
            "[[service]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n",
        ),
    );
    let out = shoal(&["check", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let (first, json) = stdout.split_once('\n').unwrap();
    assert_eq!(first, format!("{}: ok", config.display()));
    let effective: Value = serde_json::from_str(json).expect("the effective config is JSON");
    assert_eq!(effective["node"]["name"], "web-1");
    assert_eq!(effective["tls"]["trust_domain"], TRUST_DOMAIN);
    assert_eq!(effective["services"][0]["name"], "web");
    assert_eq!(
        effective["node"]["data_dir"],
        f.path().join("web-1-data").to_str().unwrap(),
        "relative paths are resolved against the config file's directory"
    );
}

/// `shoal check --pre` before starting a node: a busy admin port fails, a
/// key readable by others warns, a seed that is a live node of the mesh
/// answers by name and tells its clock, and one where nothing listens fails
/// with what to check.
#[test]
fn check_pre_finds_what_would_stop_a_node_before_it_starts() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    f.save("a", &f.issue("a", &[]));
    let a = Shoal::run("a", &f.write("a.toml", &node_config("a", "")), &[], None);
    f.save("web-1", &f.issue("web-1", &["web"]));
    let key = f.path().join("web-1/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = nobody.local_addr().unwrap();
    drop(nobody);
    let config = node_config("web-1", "").replace(
        "admin = \"127.0.0.1:0\"",
        &format!(
            "admin = \"{}\"\nseeds = [\"{}\", \"{closed}\"]",
            busy.local_addr().unwrap(),
            a.quic
        ),
    );
    let path = f.write("web-1.toml", &config);
    let out = shoal(&["check", "--config", path.to_str().unwrap(), "--pre"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stdout}"))
            .to_string()
    };
    assert!(line("ok    node.listen:").contains("is free"));
    assert!(line("fail  node.admin:").contains("cannot be bound"));
    assert!(line("warn  tls.key:").contains("mode 0644"));
    assert!(line("ok    tls.cert:").contains("days left"));
    assert!(line("ok    node.seeds[0]:").contains("answered: node a"));
    // The live seed told its time (the same machine's clock: within a second).
    let clock = line("ok    node.seeds[0] clock:");
    assert!(clock.contains("this machine's (±"), "{clock}");
    assert!(line("fail  node.seeds[1]:").contains("node.listen, not node.admin"));
    // JSON, the same findings.
    let out = shoal(&[
        "check",
        "--config",
        path.to_str().unwrap(),
        "--pre",
        "--json",
    ]);
    let json: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let levels: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels.iter().filter(|l| **l == "fail").count(), 2, "{json}");
    drop(busy);
    drop(a);
}

#[test]
fn check_names_an_unknown_field_by_its_path() {
    let f = Fixture::new();
    f.save("web-1", &f.issue("web-1", &["web"]));
    let extra = r#"
[[service]]
name = "web"
address = "127.0.0.1:8080"

[service.health]
intervall = "2s"
"#;
    let config = f.write("node.toml", &node_config("web-1", extra));
    let out = shoal(&["check", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("service[0].health.intervall: unknown field")),
        "stderr: {stderr}"
    );
}

/// A file with three independent problems (an unparseable listen address, a
/// service the certificate does not name, an expired certificate): each is
/// reported on its own line with its field, by `check` and identically by `run`,
/// which starts nothing.
#[test]
fn check_and_run_report_every_problem_with_its_field() {
    let f = Fixture::new();
    let now = OffsetDateTime::now_utc();
    let expired = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    f.save("web-1", &f.issue_valid("web-1", &["web"], expired));
    let text_with_problems = node_config(
        "web-1",
        "[[service]]\nname = \"payments\"\naddress = \"127.0.0.1:8080\"\n",
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"localhost:7100\"");
    let config = f.write("node.toml", &text_with_problems);
    let config = config.to_str().unwrap();
    let has_line = |stderr: &str, field: &str, needle: &str| {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{field}: ")) && l.contains(needle)),
            "no line `{field}: ...{needle}...` in:\n{stderr}"
        );
    };

    let check = shoal(&["check", "--config", config]);
    let stderr = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "stderr: {stderr}");
    assert!(check.stdout.is_empty());
    assert!(stderr.starts_with(&format!("{config}: invalid configuration:\n")));
    has_line(&stderr, "node.listen", "not an IP:PORT address");
    has_line(&stderr, "tls.cert", "expired on");
    // An expired certificate is still read for the node name and services, so
    // one run reports the service problem too.
    has_line(
        &stderr,
        "service[0].name",
        "\"payments\" is not in the node certificate (it allows: web)",
    );

    let run = shoal(&["--log-format", "json", "run", "--config", config]);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        text(&run.stderr),
        stderr,
        "run reports exactly what check reports"
    );
    assert!(
        !f.path().join("web-1-data").exists(),
        "a node that refused its config must not have started (it created its data dir)"
    );

    f.replace("web-1", &f.issue("web-1", &["web"]));
    for args in [
        vec!["check", "--config", config],
        vec!["run", "--config", config],
    ] {
        let out = shoal(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        has_line(&stderr, "node.listen", "not an IP:PORT address");
        has_line(
            &stderr,
            "service[0].name",
            "\"payments\" is not in the node certificate (it allows: web)",
        );
        assert!(!stderr.contains("tls.cert"), "{args:?}: {stderr}");
    }
    assert!(!f.path().join("web-1-data").exists());
}

#[test]
fn check_and_run_name_a_missing_config_file() {
    let f = Fixture::new();
    let missing = f.path().join("nowhere.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["check", "--config", missing],
        vec!["run", "--config", missing],
    ] {
        let out = shoal(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{missing}: cannot read"))),
            "{args:?}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// Two running nodes
// ---------------------------------------------------------------------------

/// Two `shoal run` processes, a (hosting `echo`) and b (seeded with a), go
/// through a node's life as an operator sees it: they converge, `shoal status`
/// shows both and a's healthy service, a's certificate is rotated by SIGHUP
/// without breaking connections, a bad certificate is refused on SIGHUP while a
/// keeps running, SIGTERM drains b and exits 0, and a sees b draining, then dead.
/// Every line either wrote to stderr is JSON.
#[test]
fn two_nodes_converge_reload_certificates_and_drain() {
    let f = Fixture::new();
    let backend = Backend::start();
    f.save("a", &f.issue("a", &["echo"]));
    f.save("b", &f.issue("b", &[]));
    let echo = format!(
        r#"
[[service]]
name = "echo"
address = "{}"
protocol = "tcp"

[service.health]
kind = "tcp"
interval = "200ms"
timeout = "200ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#,
        backend.addr
    );
    let a_config = f.write("a.toml", &node_config("a", &echo));
    let to_echo_listener =
        "[[listener]]\nname = \"to-echo\"\nservice = \"echo\"\nbind = \"127.0.0.1:0\"\n";
    let b_config = f.write("b.toml", &node_config("b", to_echo_listener));

    let mut a = Shoal::run("a", &a_config, &[], None);
    let seed = a.quic.to_string();
    // b logs at debug level, so the JSON check covers every crate's records.
    let mut b = Shoal::run("b", &b_config, &["--seed", &seed], Some("debug"));

    // --- convergence --------------------------------------------------------
    for (node, label) in [(&a, "a"), (&b, "b")] {
        eventually(&format!("{label} to see a and b alive"), || {
            let states = (node.member_state("a")?, node.member_state("b")?);
            match states {
                (x, y) if x == "alive" && y == "alive" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    eventually("b to be ready once it has joined", || {
        match b.get("/readyz")? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let admin_b = b.admin.to_string();
    // `shoal ready` (the container health check) says so by its exit status,
    // and fails for an admin address where no node answers.
    let ready = shoal(&["ready", "--admin", &admin_b]);
    assert!(ready.status.success(), "{}", text(&ready.stderr));
    let nobody = Backend::start();
    let closed = nobody.addr.to_string();
    drop(nobody);
    let not_ready = shoal(&["ready", "--admin", &closed]);
    assert_eq!(
        not_ready.status.code(),
        Some(1),
        "{}",
        text(&not_ready.stderr)
    );
    assert!(text(&not_ready.stderr).contains("not ready"));
    let status = eventually("shoal status to show a's echo healthy", || {
        let out = shoal(&["status", "--admin", &admin_b]);
        let stdout = text(&out.stdout);
        if !out.status.success() {
            return Err(format!("{}: {}", out.status, text(&out.stderr)));
        }
        let healthy = status_table(&stdout, "SERVICES")
            .iter()
            .any(|r| r.len() >= 5 && r[0] == "echo" && r[1] == "a" && r[4] == "healthy");
        if healthy { Ok(stdout) } else { Err(stdout) }
    });
    let members = status_table(&status, "MEMBERS");
    assert!(members.iter().any(|r| r[..2] == ["a", "alive"]), "{status}");
    assert!(
        members.iter().any(|r| r[..3] == ["b", "*", "alive"]),
        "b is marked as the answering node: {status}"
    );
    // What a node refuses shows in the REFUSED table: here a request to b's
    // admin API naming another host (DNS rebinding).
    let mut evil = TcpStream::connect(b.admin).unwrap();
    write!(
        evil,
        "GET /members HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    evil.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let out = shoal(&["status", "--admin", &admin_b]);
    let stdout = text(&out.stdout);
    assert!(
        status_table(&stdout, "REFUSED")
            .iter()
            .any(|r| r[..] == ["admin_api", "bad_host", "-", "1"]),
        "{stdout}"
    );
    // b's calls through its listener show in TRAFFIC: the edge b -> echo, its
    // rate and success (the dashboard's golden figures, from /stats).
    let listening = b.wait_for_log(0, "b's listener", |v| v["fields"]["message"] == "listening");
    let to_echo: SocketAddr = listening["fields"]["bind"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually("TRAFFIC to show b calling echo", || {
        for _ in 0..5 {
            let mut s = TcpStream::connect(to_echo).map_err(|e| e.to_string())?;
            let _ = s.read(&mut [0u8; 1]);
        }
        let out = shoal(&["status", "--admin", &admin_b]);
        let stdout = text(&out.stdout);
        let called = status_table(&stdout, "TRAFFIC").iter().any(|r| {
            r.len() >= 7
                && r[..6] == ["b", "->", "echo", "to-echo", "tcp", r[5].as_str()]
                && r[5].parse::<f64>().is_ok_and(|rps| rps > 0.0)
                && r[6] == "100.0%"
        });
        if called { Ok(()) } else { Err(stdout) }
    });
    // --- config reload: `shoal reload` adds a listener written into b's file,
    // SIGHUP removes it again; a field that needs a restart is named.
    let second = "[[listener]]\nname = \"second\"\nservice = \"echo\"\nbind = \"127.0.0.1:0\"\n";
    std::fs::write(
        &b_config,
        node_config("b", &format!("{to_echo_listener}{second}")),
    )
    .unwrap();
    let from = b.lines().len();
    let out = shoal(&["reload", "--admin", &admin_b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("applied: listener second added"),
        "{}",
        text(&out.stdout)
    );
    let listening = b.wait_for_log(from, "the second listener", |v| {
        v["fields"]["message"] == "listening" && v["fields"]["listener"] == "second"
    });
    let second_addr: SocketAddr = listening["fields"]["bind"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(TcpStream::connect(second_addr).is_ok(), "it accepts");
    std::fs::write(
        &b_config,
        node_config("b", to_echo_listener).replace("[node]", "[node]\nzone = \"elsewhere\""),
    )
    .unwrap();
    let from = b.lines().len();
    b.signal(Signal::HUP);
    b.wait_for_log(from, "the second listener removed", |v| {
        v["fields"]["message"] == "config reload applied"
            && v["fields"]["name"] == "second"
            && v["fields"]["how"] == "removed"
    });
    b.wait_for_log(from, "node.zone refused", |v| {
        v["fields"]["message"] == "config reload: field not applied"
            && v["fields"]["field"] == "node.zone"
    });
    let out = shoal(&["reload", "--admin", &admin_b]);
    assert_eq!(out.status.code(), Some(1), "a refused field is exit 1");
    assert!(
        text(&out.stdout).contains("not applied: node.zone"),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(&b_config, node_config("b", to_echo_listener)).unwrap();
    // The same as one JSON object, the admin API named by $SHOAL_ADMIN as a URL.
    let url = format!("http://{admin_b}/");
    let out = shoal_env(&["status", "--json"], &[("SHOAL_ADMIN", Path::new(&url))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert!(
        json["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "a")
    );
    assert_eq!(json["services"]["echo"][0]["node"], "a");
    assert_eq!(json["traffic"]["edges"][0]["service"], "echo");
    assert!(
        json["traffic"]["edges"][0]["requests_per_s"]
            .as_f64()
            .is_some()
    );
    assert!(
        json["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["what"] == "admin_api" && r["reason"] == "bad_host" && r["count"] == 1.0),
        "{json}"
    );
    let bad = shoal(&["status", "--admin", "https://127.0.0.1:1"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("plain HTTP"),
        "{}",
        text(&bad.stderr)
    );

    // --- SIGHUP: a new certificate for the same node ---------------------------
    let opened = |n: &Shoal| -> f64 {
        n.metric("shoal_quic_connections_opened_total").unwrap()
            + n.metric("shoal_quic_connections_accepted_total").unwrap()
    };
    let connections_before = (opened(&a), opened(&b));
    let gossip_received = "shoal_gossip_messages_total{direction=\"received\"}";
    let from = a.lines().len();
    f.replace("a", &f.issue("a", &["echo"]));
    a.signal(Signal::HUP);
    a.wait_for_log(from, "\"reloaded TLS\"", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reloaded TLS"))
    });
    // Gossip keeps flowing both ways over the connections it had.
    let a_received = a.metric(gossip_received).unwrap();
    let b_received = b.metric(gossip_received).unwrap();
    eventually("gossip to flow after the reload", || {
        let now = (a.metric(gossip_received)?, b.metric(gossip_received)?);
        if now.0 >= a_received + 10.0 && now.1 >= b_received + 10.0 {
            Ok(())
        } else {
            Err(format!("received (a, b): {now:?}"))
        }
    });
    assert_eq!(a.member_state("b").unwrap(), "alive");
    assert_eq!(b.member_state("a").unwrap(), "alive");
    // Nothing was closed: a only stopped handing out its pooled connections, so
    // new streams use fresh handshakes with its new certificate.
    for n in [&a, &b] {
        for reason in ["peer_cert_expired", "peer_no_longer_trusted"] {
            let closed = n
                .metric(&format!(
                    "shoal_quic_connections_recycled_total{{reason=\"{reason}\"}}"
                ))
                .unwrap_or(0.0);
            assert_eq!(closed, 0.0, "no connection closed for {reason}");
        }
    }
    assert!(
        a.metric("shoal_quic_connections_recycled_total{reason=\"own_cert_changed\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "a retired its pooled connections after taking its new certificate"
    );
    let (a_now, b_now) = (opened(&a), opened(&b));
    assert!(
        a_now <= connections_before.0 + 2.0 && b_now <= connections_before.1 + 2.0,
        "only fresh handshakes for new streams: {connections_before:?} -> {:?}",
        (a_now, b_now)
    );
    let services = b.get_json("/services").unwrap();
    assert_eq!(
        services["echo"][0]["node"], "a",
        "b still accepts a's service under a's new certificate: {services}"
    );

    // --- SIGHUP: a certificate for another node is refused ----------------------
    let from = a.lines().len();
    f.replace("a", &f.issue("intruder", &["echo"]));
    a.signal(Signal::HUP);
    let refused = a.wait_for_log(from, "an error about the SIGHUP reload", |v| {
        v["level"] == "ERROR"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot reload"))
    });
    let reason = refused["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("tls.cert") && reason.contains("intruder"),
        "the error says what is wrong with which file: {refused}"
    );
    assert_eq!(a.get("/healthz").unwrap(), (200, "ok\n".to_string()));
    assert!(
        a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "a keeps running"
    );
    eventually("b to keep seeing a alive", || {
        match b.member_state("a")? {
            s if s == "alive" => Ok(()),
            s => Err(s),
        }
    });

    // --- SIGTERM: b drains, leaves and exits 0 ------------------------------
    b.signal(Signal::TERM);
    let mut seen: Vec<String> = Vec::new();
    eventually("a to see b left", || {
        let state = a.member_state("b")?;
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "left" {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    let exit = b.wait_exit();
    assert!(exit.success(), "b exits 0 after SIGTERM, got {exit}");
    let allowed = [vec!["draining", "left"], vec!["alive", "draining", "left"]];
    assert!(
        allowed.contains(&seen.iter().map(String::as_str).collect()),
        "a sees b draining, then left (a clean stop, not dead): {seen:?}"
    );
    a.signal(Signal::TERM);
    let exit = a.wait_exit();
    assert!(exit.success(), "a exits 0 after SIGTERM, got {exit}");

    // --- --log-format json: every line is a JSON event -----------------------
    for node in [&a, &b] {
        let lines = node.lines();
        assert!(lines.len() > 3, "{} logged: {lines:?}", node.label);
        for line in &lines {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a log line is not JSON ({e}): {line}", node.label));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string() && v["fields"].is_object(),
                "{}: not a tracing event: {line}",
                node.label
            );
        }
        let last = lines.last().unwrap();
        assert!(last.contains("node stopped"), "{}: {last}", node.label);
    }
}

// ---------------------------------------------------------------------------
// shoal route
// ---------------------------------------------------------------------------

const SHOP_TOML: &str = r#"
name = "shop"
hosts = ["shop.example.org", "*.shop.example.org"]

[[rules]]
match = { path_prefix = "/api", methods = ["GET"] }
backends = [{ service = "api", weight = 90 }, { service = "api-v2", weight = 10 }]
timeout = "5s"
retry = { on = ["connect_failure", "5xx"], attempts = 3 }

[[rules]]
backends = [{ service = "web" }]
session = { type = "cookie", ttl = "1h" }
"#;

/// One running node and an operator certificate (`alice/operator.crt`, `.key`).
fn route_fixture() -> (Fixture, Shoal) {
    let f = Fixture::new();
    f.save("a", &f.issue("a", &[]));
    let alice =
        f.ca.issue_operator("alice", Validity::days_from_now(10).unwrap())
            .unwrap();
    alice.save(&f.path().join("alice"), false).unwrap();
    let config = f.write("a.toml", &node_config("a", ""));
    let node = Shoal::run("a", &config, &[], None);
    (f, node)
}

/// The rows of `shoal route list`'s ROUTES table.
fn route_rows(stdout: &str) -> Vec<Vec<String>> {
    status_table(stdout, "ROUTES")
}

/// An operator applies a TOML route, updates it from a JSON file without an
/// extension, lists it (table and JSON) and deletes it with the key given by
/// environment variables; each step prints one line saying what happened.
#[test]
fn route_apply_list_and_delete_through_the_cli() {
    let (f, node) = route_fixture();
    let admin = node.admin.to_string();
    let cert = f.path().join("alice/operator.crt");
    let key = f.path().join("alice/operator.key");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let file = f.write("shop.toml", SHOP_TOML);

    let out = signed_route("apply", file.to_str().unwrap(), cert_s, key_s, &admin);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        stdout.starts_with("route shop created: document ") && stdout.contains("signed by alice"),
        "{stdout}"
    );
    // No node offers web here: applied, with a warning naming it.
    assert!(
        text(&out.stderr).contains(
            "warning: route shop sends requests to service \"web\", which no node offers now"
        ),
        "{}",
        text(&out.stderr)
    );
    // Applying the same file again (a new issue time, the same route) changes nothing.
    let out = signed_route("apply", file.to_str().unwrap(), cert_s, key_s, &admin);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("route shop unchanged: "),
        "{}",
        text(&out.stdout)
    );

    let out = shoal(&["route", "list", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows = route_rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(
        rows[0][..4],
        ["shop", "active", "shop.example.org,*.shop.example.org", "2"],
        "{stdout}"
    );
    assert_eq!(rows[0][5], "alice", "{stdout}");
    assert!(!stdout.contains("REJECTED"), "{stdout}");

    let out = shoal(&["route", "list", "--admin", &admin, "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "shop");
    assert_eq!(listed[0]["spec"]["rules"][0]["backends"][1]["weight"], 10);
    assert_eq!(
        listed[0]["spec"]["rules"][1]["session"]["name"],
        "shoal-session"
    );
    // Durations written as in the config are signed as the document's fields.
    assert_eq!(listed[0]["spec"]["rules"][0]["timeout_ms"], 5000);
    assert_eq!(listed[0]["spec"]["rules"][1]["session"]["ttl_s"], 3600);
    let first_issue = listed[0]["issued_at_ms"].as_u64().unwrap();
    assert!(first_issue > 0, "the CLI stamped issued_at_ms: {listed}");

    let update = f.write(
        "shop-update",
        r#"{"name": "shop", "rules": [{"backends": [{"service": "web-v2"}]}]}"#,
    );
    let out = signed_route("apply", update.to_str().unwrap(), cert_s, key_s, &admin);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("route shop updated: "));

    let env = [
        ("SHOAL_OPERATOR_CERT", cert.as_path()),
        ("SHOAL_OPERATOR_KEY", key.as_path()),
    ];
    let out = shoal_env(&["route", "delete", "shop", "--admin", &admin], &env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("route shop deleted: "));
    let out = shoal(&["route", "list", "--admin", &admin]);
    let rows = route_rows(&text(&out.stdout));
    assert_eq!(rows[0][..2], ["shop", "deleted"], "{rows:?}");
    // Deleting it again, or a route that never was, leaves things as asked:
    // exit 0, saying there was nothing to do.
    for name in ["shop", "never-was"] {
        let out = shoal_env(&["route", "delete", name, "--admin", &admin], &env);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("not in force; nothing to delete"),
            "{}",
            text(&out.stdout)
        );
    }
}

/// Every refusal is one line on stderr, exit status 1, naming what to fix: a
/// field of the file, the file itself, the operator files, the node's reason.
#[test]
fn route_apply_reports_each_problem_on_one_line() {
    let (f, node) = route_fixture();
    let admin = node.admin.to_string();
    let alice = f.path().join("alice");
    let apply_with = |file: &Path, cert: &Path, key: &Path, admin: &str| {
        let out = shoal(&[
            "route",
            "apply",
            file.to_str().unwrap(),
            "--operator-cert",
            cert.to_str().unwrap(),
            "--operator-key",
            key.to_str().unwrap(),
            "--admin",
            admin,
        ]);
        let stderr = text(&out.stderr);
        (out.status.code(), stderr)
    };
    let (cert, key) = (alice.join("operator.crt"), alice.join("operator.key"));
    let refused = |file: &Path, needles: &[&str]| {
        let (code, stderr) = apply_with(file, &cert, &key, &admin);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("shoal: error: "), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
        }
    };

    let zero = f.write("zero.toml", &SHOP_TOML.replace("weight = 10", "weight = 0"));
    refused(
        &zero,
        &[
            zero.to_str().unwrap(),
            "rules[0].backends[1].weight: 0 is out of range 1..=10000",
        ],
    );
    let unknown = f.write("unknown.toml", &SHOP_TOML.replace("timeout =", "timeot ="));
    refused(&unknown, &["rules[0]", "unknown field `timeot`"]);
    let bare = f.write("bare.toml", &SHOP_TOML.replace("\"5s\"", "5000"));
    refused(
        &bare,
        &["rules[0].timeout: a duration with a unit, such as \"5s\""],
    );
    let both = f.write(
        "both.toml",
        &SHOP_TOML.replace("timeout = \"5s\"", "timeout = \"5s\"\ntimeout_ms = 5000"),
    );
    refused(&both, &["rules[0]: give timeout or timeout_ms, not both"]);
    let broken = f.write("broken.toml", "name = \"shop\"\n[[rules]\n");
    refused(&broken, &["broken.toml: not valid TOML at line 2"]);
    let broken_json = f.write("broken.json", "{\"name\": ");
    refused(&broken_json, &["broken.json: not valid JSON"]);
    let no_rules = f.write("no-rules.json", r#"{"name": "shop"}"#);
    refused(&no_rules, &["rules: is empty"]);

    // Operator files that do not fit.
    let shop = f.write("shop.toml", SHOP_TOML);
    let (code, stderr) = apply_with(
        &shop,
        &f.path().join("a/node.crt"),
        &f.path().join("a/node.key"),
        &admin,
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("node.crt: ") && stderr.contains("not an operator certificate"),
        "{stderr}"
    );
    let bob =
        f.ca.issue_operator("bob", Validity::days_from_now(10).unwrap())
            .unwrap();
    bob.save(&f.path().join("bob"), false).unwrap();
    let (code, stderr) = apply_with(&shop, &cert, &f.path().join("bob/operator.key"), &admin);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("does not belong to the operator certificate"),
        "{stderr}"
    );

    // Refusals by the node.
    let other = CertificateAuthority::create(TRUST_DOMAIN, Validity::days_from_now(30).unwrap())
        .unwrap()
        .issue_operator("mallory", Validity::days_from_now(10).unwrap())
        .unwrap();
    other.save(&f.path().join("mallory"), false).unwrap();
    let (code, stderr) = apply_with(
        &shop,
        &f.path().join("mallory/operator.crt"),
        &f.path().join("mallory/operator.key"),
        &admin,
    );
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the node refused route \"shop\" (400 Bad Request)")
            && stderr.contains("not issued by this mesh's CA"),
        "{stderr}"
    );
    let (code, stderr) = apply_with(&shop, &cert, &key, &admin);
    assert_eq!(code, Some(0), "{stderr}");
    let old = f.write(
        "old.toml",
        &format!(
            "issued_at_ms = 1000\n{}",
            SHOP_TOML.replace("service = \"web\"", "service = \"web-old\"")
        ),
    );
    refused(&old, &["409 Conflict", "issued later", "clock"]);
    let (code, stderr) = apply_with(&shop, &cert, &key, "127.0.0.1:1");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot reach the admin API at 127.0.0.1:1"),
        "{stderr}"
    );

    // No operator key at all: a usage error.
    let out = shoal(&[
        "route",
        "apply",
        shop.to_str().unwrap(),
        "--operator-cert",
        cert.to_str().unwrap(),
        "--admin",
        &admin,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--operator-key"));
    // A bad name for delete.
    let out = shoal(&[
        "route",
        "delete",
        "Not_A_Name",
        "--operator-cert",
        cert.to_str().unwrap(),
        "--operator-key",
        key.to_str().unwrap(),
        "--admin",
        &admin,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("route name \"Not_A_Name\""));
}

/// A CA-signed revocation list written to `name` in the fixture.
fn revocation_file(f: &Fixture, name: &str, version: u64, node: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let list = mesh_proto::revocation::RevocationList {
        trust_domain: TRUST_DOMAIN.into(),
        version,
        issued_at_ms: now,
        entries: vec![mesh_proto::revocation::Revocation::of_node(
            node,
            now,
            "key_compromise",
            now,
        )],
    };
    let doc = f.ca.sign_revocations(&list).unwrap();
    f.write(name, &shoal_pki::RevocationFile::of(&doc).to_json())
}

/// An operator publishes a revocation list through `shoal revoke apply`, sees
/// it with `shoal revoke list`; the same list again changes nothing, an older
/// one is refused with the version in force, and a file that is not a list
/// is named before any request.
#[test]
fn revoke_apply_and_list_through_the_cli() {
    let (f, node) = route_fixture();
    let admin = node.admin.to_string();
    let out = shoal(&["revoke", "list", "--admin", &admin]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no revocation list is in force"));

    let v2 = revocation_file(&f, "revoked-2.json", 2, "stolen");
    let out = shoal(&["revoke", "apply", v2.to_str().unwrap(), "--admin", &admin]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("revocation list version 2 (1 entries) is in force"),
        "{}",
        text(&out.stdout)
    );
    let out = shoal(&["revoke", "apply", v2.to_str().unwrap(), "--admin", &admin]);
    assert!(
        text(&out.stdout).contains("already in force"),
        "{}",
        text(&out.stdout)
    );

    let out = shoal(&["revoke", "list", "--admin", &admin]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("revocation list version 2"), "{stdout}");
    assert!(
        stdout.contains("every certificate of node stolen"),
        "{stdout}"
    );
    assert!(stdout.contains("key_compromise"), "{stdout}");

    let v1 = revocation_file(&f, "revoked-1.json", 1, "other");
    let out = shoal(&["revoke", "apply", v1.to_str().unwrap(), "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("409") && err.contains("version 2"), "{err}");
    let not_a_list = f.write("route.json", "{\"name\": \"shop\"}");
    let out = shoal(&[
        "revoke",
        "apply",
        not_a_list.to_str().unwrap(),
        "--admin",
        &admin,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("route.json"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        node.metric("shoal_revocation_lists_refused_total{reason=\"not_newer\"}")
            .unwrap(),
        1.0
    );
    assert_eq!(node.get_json("/revocations").unwrap()["version"], 2);
    // Kept in the data directory, for the next start, in the file's own form.
    let stored = std::fs::read(f.path().join("a-data").join("revocations.json")).unwrap();
    assert_eq!(stored, std::fs::read(&v2).unwrap());
}

/// A TCP backend that greets each connection with `greeting` and closes it.
fn greeting_backend(greeting: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(greeting.as_bytes());
        }
    });
    addr
}

/// The greeting read through a TCP listener; the read is bounded, so a caller
/// stalled on a silent endpoint fails the test.
fn greeting_through(listener: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(listener).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(EVENTUALLY))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

/// Nodes a and b serving `echo` (greeting backends saying their name), and c
/// with a TCP listener to it, on the given addresses; gossip slow to call a
/// node dead (a minute) and a listener connect timeout of a minute, so only
/// the caller's hedges and suspicions route around a silent node. Returns the
/// nodes and c's listener, once both a and b have served through it.
fn failover_trio(f: &Fixture, ips: [&str; 3]) -> (Vec<Shoal>, SocketAddr) {
    let slow_gossip = "suspicion_timeout = \"60s\"\nsuspicion_timeout_min = \"60s\"\n";
    let service = |addr: SocketAddr| {
        format!(
            "{slow_gossip}\n[[service]]\nname = \"echo\"\naddress = \"{addr}\"\nprotocol = \"tcp\"\n"
        )
    };
    let listener = format!(
        "{slow_gossip}\n[[listener]]\nservice = \"echo\"\nbind = \"{}:0\"\nconnect_timeout = \"60s\"\n",
        ips[2]
    );
    let mut nodes: Vec<Shoal> = Vec::new();
    for (name, ip, config) in [
        ("a", ips[0], service(greeting_backend("a\n"))),
        ("b", ips[1], service(greeting_backend("b\n"))),
        ("c", ips[2], listener),
    ] {
        f.save(name, &f.issue(name, &["echo"]));
        let config = node_config(name, &config).replace("127.0.0.1:0", &format!("{ip}:0"));
        let path = f.write(&format!("{name}.toml"), &config);
        let seed = nodes.first().map(|n| n.quic.to_string());
        let args: Vec<&str> = seed.as_deref().map_or(vec![], |s| vec!["--seed", s]);
        nodes.push(Shoal::run(name, &path, &args, None));
    }
    let listening =
        nodes[2].wait_for_log(0, "the listener", |v| v["fields"]["message"] == "listening");
    let listener: SocketAddr = listening["fields"]["bind"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually("both a and b to serve through c", || {
        let seen: std::collections::BTreeSet<String> = (0..6)
            .filter_map(|_| greeting_through(listener).ok())
            .collect();
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    (nodes, listener)
}

/// Real processes: the node serving a caller is stopped (SIGSTOP), resumed,
/// then killed (SIGKILL). Gossip is made slow to call it dead (a minute), so
/// only the caller's hedges and its own suspicion of the silent peer keep
/// connections flowing; every connection succeeds, and the opens that went to
/// the silent node stay few. The listener's connect timeout is a minute: a
/// connection that waited for it would miss the bounded read.
#[test]
fn a_stopped_then_killed_serving_process_costs_the_caller_a_hedge() {
    let f = Fixture::new();
    let (nodes, listener) = failover_trio(&f, ["127.0.0.1", "127.0.0.1", "127.0.0.1"]);
    let c = &nodes[2];
    let hedges = || {
        c.metric("shoal_hedged_attempts_total{listener=\"echo\"}")
            .unwrap()
    };
    let most = 6.0;
    // Client connections failed, by reason (some did before c knew the endpoints).
    let failures = || {
        let (_, metrics) = c.get("/metrics").unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with("shoal_listener_connection_failures_total{listener=\"echo\""))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let failed_before = failures();

    // SIGSTOP: a neither answers nor closes anything.
    nodes[0].signal(Signal::STOP);
    for i in 0..30 {
        assert_eq!(greeting_through(listener), Ok("b".into()), "connection {i}");
    }
    let after_stop = hedges();
    assert!((1.0..=most).contains(&after_stop), "{after_stop} hedges");
    assert!(
        c.metric("shoal_peer_suspicions_total{node=\"a\"}").unwrap() >= 1.0,
        "c suspects a"
    );
    // SIGCONT: a serves again once its suspicion lapses.
    nodes[0].signal(Signal::CONT);
    eventually("a to serve again", || match greeting_through(listener)? {
        g if g == "a" => Ok(()),
        g => Err(g),
    });

    // SIGKILL: a's socket is gone; nothing tells c.
    nodes[0].signal(Signal::KILL);
    let before = hedges();
    for i in 0..30 {
        assert_eq!(greeting_through(listener), Ok("b".into()), "connection {i}");
    }
    let retries = c
        .metric("shoal_upstream_retries_total{listener=\"echo\"}")
        .unwrap();
    let after_kill = hedges() - before;
    assert!(
        after_kill <= most && retries <= 2.0 * most,
        "{after_kill} hedges, {retries} retries in all"
    );
    assert_eq!(failures(), failed_before, "no client connection failed");
}

/// A network namespace of its own for the calling test thread — and so for
/// every socket it opens and process it starts from then on (a thread's
/// namespace is inherited by what it creates) — deleted when dropped.
struct NetNs {
    name: String,
}

impl NetNs {
    /// Moves this thread into a new namespace with loopback up; `None` (and says
    /// so) without the privilege or the tools (`ip`, `nft`).
    fn enter(label: &str) -> Option<NetNs> {
        let skip = |why: &str| {
            eprintln!("SKIPPED: this test needs {why} (network namespaces and nftables)");
            None
        };
        if !rustix::process::geteuid().is_root() {
            return skip("root");
        }
        for tool in ["ip", "nft"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return skip(&format!("`{tool}` (iproute2, nftables)"));
            }
        }
        let name = format!("shoal-{label}-{}", std::process::id());
        let added = Command::new("ip").args(["netns", "add", &name]).status();
        if !added.is_ok_and(|s| s.success()) {
            return skip("`ip netns add` to work");
        }
        let ns = NetNs { name };
        let handle = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&handle),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        ns.run("ip", &["link", "set", "lo", "up"], "");
        Some(ns)
    }

    /// Runs `tool ARGS` in the namespace with `input` on stdin; panics if it fails.
    fn run(&self, tool: &str, args: &[&str], input: &str) {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            text(&out.stderr)
        );
    }

    /// Drops every packet between the two addresses, both ways, until
    /// [`NetNs::heal`].
    fn cut(&self, a: &str, b: &str) {
        let rules = format!(
            "table inet shoal_cut {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             ip saddr {a} ip daddr {b} drop\n    ip saddr {b} ip daddr {a} drop\n  }}\n}}\n"
        );
        self.run("nft", &["-f", "-"], &rules);
    }

    fn heal(&self) {
        self.run("nft", &["delete", "table", "inet", "shoal_cut"], "");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Real processes on three loopback addresses of a network namespace of their
/// own; nftables then drops every packet between the caller's node and one
/// serving node (a partition the nodes cannot tell from a dead peer). Every
/// connection succeeds through the other serving node, the opens that went to
/// the cut-off one stay few, and it serves again once the rule is deleted.
#[test]
fn a_serving_node_cut_off_by_nftables_costs_the_caller_a_hedge() {
    let Some(ns) = NetNs::enter("failover") else {
        return;
    };
    let f = Fixture::new();
    let (a_ip, c_ip) = ("127.0.0.2", "127.0.0.4");
    let (nodes, listener) = failover_trio(&f, [a_ip, "127.0.0.3", c_ip]);
    let c = &nodes[2];
    ns.cut(a_ip, c_ip);
    for i in 0..30 {
        assert_eq!(greeting_through(listener), Ok("b".into()), "connection {i}");
    }
    let hedges = c
        .metric("shoal_hedged_attempts_total{listener=\"echo\"}")
        .unwrap();
    assert!((1.0..=6.0).contains(&hedges), "{hedges} hedges");
    // The silent peer is suspected once its silence outlasts the acknowledgement
    // delay, decided in a task of its own: maybe just after the last connection.
    eventually("c to suspect a", || {
        match c.metric("shoal_peer_suspicions_total{node=\"a\"}")? {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} suspicions")),
        }
    });
    ns.heal();
    eventually("a to serve again", || match greeting_through(listener)? {
        g if g == "a" => Ok(()),
        g => Err(g),
    });
    drop(nodes);
}

/// The systemd units of `deploy/systemd` pass `systemd-analyze verify` (every
/// directive known, every command executable — the binaries built here stand
/// in for `/usr/local/bin`), when systemd-analyze is installed.
#[test]
fn the_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    let shoal = Path::new(SHOAL);
    // shoal-pki is built next to shoal by `cargo test --workspace`; alone,
    // shoal stands in (only the path's executability is checked).
    let pki = shoal.with_file_name("shoal-pki");
    let pki = if pki.exists() {
        pki
    } else {
        shoal.to_path_buf()
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/shoal-pki", &pki.display().to_string())
            .replace("/usr/local/bin/shoal ", &format!("{} ", shoal.display()));
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(format!("./{name}"));
    }
    names.sort();
    assert!(names.contains(&"./shoal.service".to_string()), "{names:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {names:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The unit runs what `shoal check` and `shoal run` accept, and reloads
    // with SIGHUP (the node's certificate reload).
    let unit = std::fs::read_to_string(units.join("shoal.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/shoal run --config /etc/shoal/shoal.toml",
        "ExecStartPre=/usr/local/bin/shoal check --config /etc/shoal/shoal.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=shoal",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}
