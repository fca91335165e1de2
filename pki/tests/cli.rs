//! `shoal-pki` end to end: the real binary in a temporary directory, its files
//! checked with OpenSSL and with the library.

#![allow(clippy::unwrap_used)]
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use shoal_pki::{CertificateAuthority, Validity};
use time::{Duration, OffsetDateTime};

fn pki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-pki"))
        .args(args)
        .output()
        .expect("run shoal-pki")
}

fn ok(args: &[&str]) -> String {
    let out = pki(args);
    assert!(
        out.status.success(),
        "shoal-pki {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns stdout + stderr.
fn fails(args: &[&str]) -> String {
    let out = pki(args);
    assert!(!out.status.success(), "shoal-pki {args:?} should fail");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (apt-get install openssl)")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

#[test]
fn ca_init_writes_a_p256_ca_that_openssl_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--out",
        p(&ca),
        "--days",
        "30",
    ]);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    let text = openssl(&["x509", "-in", p(&ca.join("ca.crt")), "-noout", "-text"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    assert!(text.contains("URI:spiffe://example.org"), "{text}");
    let key = openssl(&["pkey", "-in", p(&ca.join("ca.key")), "-noout", "-text"]);
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );

    let info = json(&["inspect", "--json", p(&ca.join("ca.crt"))]);
    assert_eq!(info["kind"], "ca");
    assert_eq!(info["trust_domain"], "example.org");
    assert!(
        (29..=30).contains(&info["days_left"].as_i64().unwrap()),
        "{info}"
    );
    // the CA verifies against itself
    ok(&["verify", "--ca", p(&ca), p(&ca.join("ca.crt"))]);
}

#[test]
fn node_certificate_chains_and_names_its_services() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("web-1");
    ok(&["ca", "init", "--trust-domain", "mesh.test", "--out", p(&ca)]);
    ok(&[
        "issue",
        "--ca",
        p(&ca),
        "--node",
        "web-1",
        "--service",
        "web",
        "--service",
        "api",
        "--days",
        "10",
        "--out",
        p(&out),
    ]);
    assert_eq!(mode(&out.join("node.key")), 0o600);
    assert_eq!(
        fs::read(out.join("ca.crt")).unwrap(),
        fs::read(ca.join("ca.crt")).unwrap()
    );

    let v = openssl(&[
        "verify",
        "-CAfile",
        p(&ca.join("ca.crt")),
        p(&out.join("node.crt")),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // both TLS purposes
    for purpose in ["sslserver", "sslclient"] {
        let v = openssl(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            p(&ca.join("ca.crt")),
            p(&out.join("node.crt")),
        ]);
        assert!(
            v.status.success(),
            "{purpose}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let text = openssl(&["x509", "-in", p(&out.join("node.crt")), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for uri in [
        "URI:spiffe://mesh.test/node/web-1",
        "URI:spiffe://mesh.test/service/web",
        "URI:spiffe://mesh.test/service/api",
    ] {
        assert!(text.contains(uri), "{uri} missing in {text}");
    }
    assert!(!text.contains("CA:TRUE"));

    let info = json(&["inspect", "--json", p(&out.join("node.crt"))]);
    assert_eq!(info["kind"], "node");
    assert_eq!(info["node"], "web-1");
    assert_eq!(info["services"], serde_json::json!(["api", "web"]));
    assert_eq!(info["trust_domain"], "mesh.test");
    assert_eq!(info["spiffe_ids"].as_array().unwrap().len(), 3);
    assert_eq!(info["expired"], false);
    assert!((9..=10).contains(&info["days_left"].as_i64().unwrap()));
    assert!(
        info["issuer"]
            .as_str()
            .unwrap()
            .contains("mesh.test mesh CA")
    );
    // fingerprint agrees with OpenSSL's
    let fp = openssl(&[
        "x509",
        "-in",
        p(&out.join("node.crt")),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    let fp = String::from_utf8_lossy(&fp.stdout);
    let fp = fp.trim().rsplit('=').next().unwrap();
    assert_eq!(info["sha256_fingerprint"], fp);

    let text = ok(&["inspect", p(&out.join("node.crt"))]);
    assert!(text.contains("services:     api, web"), "{text}");
    assert!(text.contains("days left"), "{text}");

    let said = ok(&["verify", "--ca", p(&ca), p(&out.join("node.crt"))]);
    assert!(said.contains("ok (node web-1"), "{said}");
    // --ca may also name the CA certificate file itself
    ok(&[
        "verify",
        "--ca",
        p(&ca.join("ca.crt")),
        p(&out.join("node.crt")),
    ]);
}

#[test]
fn operator_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("alice");
    ok(&["ca", "init", "--trust-domain", "mesh.test", "--out", p(&ca)]);
    ok(&[
        "issue",
        "--ca",
        p(&ca),
        "--operator",
        "alice",
        "--out",
        p(&out),
    ]);
    assert_eq!(mode(&out.join("operator.key")), 0o600);
    assert!(!out.join("node.crt").exists());
    let v = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        p(&ca.join("ca.crt")),
        p(&out.join("operator.crt")),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let info = json(&["inspect", "--json", p(&out.join("operator.crt"))]);
    assert_eq!(info["kind"], "operator");
    assert_eq!(info["operator"], "alice");
    assert_eq!(
        info["spiffe_ids"],
        serde_json::json!(["spiffe://mesh.test/operator/alice"])
    );
    assert!(
        ok(&["verify", "--ca", p(&ca), p(&out.join("operator.crt"))])
            .contains("ok (operator alice")
    );
    // --service makes no sense for an operator
    fails(&[
        "issue",
        "--ca",
        p(&ca),
        "--operator",
        "bob",
        "--service",
        "x",
        "--out",
        p(&tmp.path().join("bob")),
    ]);
    // exactly one of --node / --operator
    fails(&[
        "issue",
        "--ca",
        p(&ca),
        "--node",
        "a",
        "--operator",
        "b",
        "--out",
        p(&tmp.path().join("ab")),
    ]);
    fails(&[
        "issue",
        "--ca",
        p(&ca),
        "--out",
        p(&tmp.path().join("none")),
    ]);
}

#[test]
fn verify_names_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_a = tmp.path().join("ca-a");
    let ca_b = tmp.path().join("ca-b");
    let ca_a2 = tmp.path().join("ca-a2");
    ok(&["ca", "init", "--trust-domain", "a.test", "--out", p(&ca_a)]);
    ok(&["ca", "init", "--trust-domain", "b.test", "--out", p(&ca_b)]);
    // a second CA with the SAME trust domain (and so the same subject name)
    ok(&["ca", "init", "--trust-domain", "a.test", "--out", p(&ca_a2)]);
    let node_b = tmp.path().join("node-b");
    let node_a2 = tmp.path().join("node-a2");
    ok(&[
        "issue",
        "--ca",
        p(&ca_b),
        "--node",
        "n1",
        "--out",
        p(&node_b),
    ]);
    ok(&[
        "issue",
        "--ca",
        p(&ca_a2),
        "--node",
        "n1",
        "--out",
        p(&node_a2),
    ]);

    for other in [&node_b, &node_a2] {
        let said = fails(&["verify", "--ca", p(&ca_a), p(&other.join("node.crt"))]);
        assert!(said.contains("another CA"), "{said}");
        assert_eq!(said.lines().count(), 1, "one line: {said}");
        // OpenSSL agrees
        let v = openssl(&[
            "verify",
            "-CAfile",
            p(&ca_a.join("ca.crt")),
            p(&other.join("node.crt")),
        ]);
        assert!(!v.status.success());
    }

    // expired and not-yet-valid certificates, minted through the library
    let ca = CertificateAuthority::load(&ca_a).unwrap();
    let now = OffsetDateTime::now_utc();
    let expired = ca
        .issue_node(
            "old",
            &[],
            Validity::between(now - Duration::days(10), now - Duration::days(1)).unwrap(),
        )
        .unwrap();
    let future = ca
        .issue_node(
            "new",
            &[],
            Validity::between(now + Duration::days(1), now + Duration::days(10)).unwrap(),
        )
        .unwrap();
    let exp_path = tmp.path().join("expired.crt");
    let fut_path = tmp.path().join("future.crt");
    fs::write(&exp_path, &expired.cert_pem).unwrap();
    fs::write(&fut_path, &future.cert_pem).unwrap();
    let said = fails(&["verify", "--ca", p(&ca_a), p(&exp_path)]);
    assert!(said.contains("expired on"), "{said}");
    let said = fails(&["verify", "--ca", p(&ca_a), p(&fut_path)]);
    assert!(said.contains("not yet valid"), "{said}");
    let info = json(&["inspect", "--json", p(&exp_path)]);
    assert_eq!(info["expired"], true);
    assert!(info["days_left"].as_i64().unwrap() < 0);
    assert!(ok(&["inspect", p(&exp_path)]).contains("EXPIRED"));

    // garbage and truncated files
    let junk = tmp.path().join("junk.crt");
    fs::write(&junk, b"hello, not a certificate").unwrap();
    let said = fails(&["verify", "--ca", p(&ca_a), p(&junk)]);
    assert!(said.contains("malformed"), "{said}");
    assert!(fails(&["inspect", p(&junk)]).contains("malformed"));
    let pem = fs::read_to_string(node_b.join("node.crt")).unwrap();
    let cut = tmp.path().join("cut.crt");
    fs::write(&cut, &pem[..pem.len() / 2]).unwrap();
    assert!(fails(&["verify", "--ca", p(&ca_a), p(&cut)]).contains("malformed"));
    // a missing file
    assert!(
        fails(&["verify", "--ca", p(&ca_a), p(&tmp.path().join("nope.crt"))]).contains("nope.crt")
    );
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--trust-domain", "t.test", "--out", p(&ca)]);
    let before = fs::read(ca.join("ca.key")).unwrap();
    let said = fails(&["ca", "init", "--trust-domain", "t.test", "--out", p(&ca)]);
    assert!(
        said.contains("already exist") && said.contains("--force"),
        "{said}"
    );
    assert_eq!(
        fs::read(ca.join("ca.key")).unwrap(),
        before,
        "key must be untouched"
    );
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "t.test",
        "--out",
        p(&ca),
        "--force",
    ]);
    assert_ne!(fs::read(ca.join("ca.key")).unwrap(), before);

    let out = tmp.path().join("n");
    ok(&["issue", "--ca", p(&ca), "--node", "n", "--out", p(&out)]);
    let before = fs::read(out.join("node.crt")).unwrap();
    // only one of the three files present still blocks the whole set
    fs::remove_file(out.join("node.key")).unwrap();
    fs::remove_file(out.join("ca.crt")).unwrap();
    let said = fails(&["issue", "--ca", p(&ca), "--node", "n", "--out", p(&out)]);
    assert!(said.contains("node.crt"), "{said}");
    assert!(!out.join("node.key").exists(), "no partial set written");
    assert_eq!(fs::read(out.join("node.crt")).unwrap(), before);
    ok(&[
        "issue",
        "--ca",
        p(&ca),
        "--node",
        "n",
        "--out",
        p(&out),
        "--force",
    ]);
    assert!(out.join("node.key").exists());
    // nothing but the three files (no temporaries)
    assert_eq!(fs::read_dir(&out).unwrap().count(), 3);
}

#[test]
fn bad_names_and_arguments_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    for (td, word) in [
        ("Example.org", "trust domain"),
        ("exa_mple", "trust domain"),
        ("-bad", "trust domain"),
        ("a..b", "trust domain"),
    ] {
        let flag = format!("--trust-domain={td}");
        let said = fails(&["ca", "init", &flag, "--out", p(&ca)]);
        assert!(said.contains(word), "{td}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
        assert!(!ca.exists(), "nothing written for {td}");
    }
    assert!(
        fails(&[
            "ca",
            "init",
            "--trust-domain",
            "ok.test",
            "--out",
            p(&ca),
            "--days",
            "0"
        ])
        .contains("--days")
    );
    assert!(!ca.exists());
    ok(&["ca", "init", "--trust-domain", "ok.test", "--out", p(&ca)]);

    let out = tmp.path().join("out");
    for (args, word) in [
        (vec!["--node", "Web1"], "node name"),
        (vec!["--node", "web/1"], "node name"),
        (vec!["--node", "w", "--service", "My_Svc"], "service name"),
        (
            vec!["--node", "w", "--service", "a", "--service", "a"],
            "twice",
        ),
        (vec!["--operator", "Alice"], "operator name"),
        (vec!["--node", ""], "empty"),
    ] {
        let mut all = vec!["issue", "--ca", p(&ca), "--out", p(&out)];
        all.extend(args.iter().copied());
        let said = fails(&all);
        assert!(said.contains(word), "{args:?}: {said}");
        assert!(!out.exists(), "nothing written for {args:?}");
    }
    // a certificate may not outlive its CA
    let short = tmp.path().join("short");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "ok.test",
        "--out",
        p(&short),
        "--days",
        "5",
    ]);
    let said = fails(&[
        "issue",
        "--ca",
        p(&short),
        "--node",
        "n",
        "--days",
        "6",
        "--out",
        p(&out),
    ]);
    assert!(said.contains("outlive the CA"), "{said}");
    // a CA directory that is not one
    let said = fails(&[
        "issue",
        "--ca",
        p(&tmp.path().join("missing")),
        "--node",
        "n",
        "--out",
        p(&out),
    ]);
    assert!(
        said.contains("ca.crt") && said.contains("shoal-pki ca init"),
        "{said}"
    );
    let node_dir = tmp.path().join("nd");
    ok(&[
        "issue",
        "--ca",
        p(&ca),
        "--node",
        "n",
        "--out",
        p(&node_dir),
    ]);
    fs::copy(node_dir.join("node.key"), node_dir.join("ca.key")).unwrap();
    let said = fails(&[
        "issue",
        "--ca",
        p(&node_dir),
        "--node",
        "x",
        "--out",
        p(&out),
    ]);
    assert!(
        said.contains("does not match") || said.contains("not a Shoal mesh CA"),
        "{said}"
    );
    assert!(!out.exists());
}

/// Renewal keeps the node's name and services (or the operator's name), with a
/// new key, and node certificates default to 30 days.
#[test]
fn renewal_keeps_the_name_and_services_with_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let first = tmp.path().join("first");
    let renewed = tmp.path().join("renewed");
    ok(&["ca", "init", "--trust-domain", "mesh.test", "--out", p(&ca)]);
    let web_1 = ["--node", "web-1", "--service", "web", "--service", "api"];
    ok(&[
        &["issue", "--ca", p(&ca)][..],
        &web_1,
        &["--out", p(&first)],
    ]
    .concat());
    let info = json(&["inspect", "--json", p(&first.join("node.crt"))]);
    assert!(
        (29..=30).contains(&info["days_left"].as_i64().unwrap()),
        "{info}"
    );

    // From the directory (or the file), into another directory.
    let said = ok(&renew_args(&ca, &first, &renewed, &["--days", "10"]));
    assert!(said.contains("renewed node certificate"), "{said}");
    let again = json(&["inspect", "--json", p(&renewed.join("node.crt"))]);
    assert_eq!(again["node"], "web-1");
    assert_eq!(again["services"], serde_json::json!(["api", "web"]));
    assert!((9..=10).contains(&again["days_left"].as_i64().unwrap()));
    assert_ne!(
        fs::read(first.join("node.key")).unwrap(),
        fs::read(renewed.join("node.key")).unwrap(),
        "a new key"
    );
    // In place, with --force, from the certificate file.
    ok(&renew_args(
        &ca,
        &first.join("node.crt"),
        &first,
        &["--force"],
    ));
    assert_eq!(
        json(&["inspect", "--json", p(&first.join("node.crt"))])["services"],
        serde_json::json!(["api", "web"])
    );

    // An operator keeps its name and gets a year by default.
    let op = tmp.path().join("alice");
    ok(&[
        "issue",
        "--ca",
        p(&ca),
        "--operator",
        "alice",
        "--out",
        p(&op),
    ]);
    let op2 = tmp.path().join("alice2");
    ok(&renew_args(&ca, &op, &op2, &[]));
    let info = json(&["inspect", "--json", p(&op2.join("operator.crt"))]);
    assert_eq!(info["kind"], "operator");
    assert!(
        (364..=365).contains(&info["days_left"].as_i64().unwrap()),
        "{info}"
    );

    // Renewal cannot add services, and refuses another mesh's certificate.
    let err = fails(&renew_args(&ca, &first, &op2, &["--service", "db"]));
    assert!(err.contains("--service"), "{err}");
    let other = tmp.path().join("other-ca");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "other.test",
        "--out",
        p(&other),
    ]);
    let err = fails(&renew_args(&other, &first, &op2, &["--force"]));
    assert!(err.contains("trust domain \"mesh.test\""), "{err}");
}

/// `shoal-pki issue --ca CA --renew FROM --out OUT`, then `extra`.
fn renew_args<'a>(ca: &'a Path, from: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["issue", "--ca", p(ca), "--renew", p(from), "--out", p(out)];
    args.extend_from_slice(extra);
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn revoke_adds_entries_to_a_ca_signed_list_with_a_new_version_each_time() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let n1 = tmp.path().join("n1");
    let list = tmp.path().join("revoked.json");
    ok(&["ca", "init", "--trust-domain", "mesh.test", "--out", p(&ca)]);
    ok(&["issue", "--ca", p(&ca), "--node", "n1", "--out", p(&n1)]);
    let revoke = |what: &[&str]| -> Vec<String> {
        [
            &["revoke", "--ca", p(&ca), "--list", p(&list)][..],
            what,
            &["--reason", "key_compromise"],
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };

    // By certificate: the serial `inspect` prints, the node named.
    let said = ok(&strs(&revoke(&["--cert", p(&n1)])));
    assert!(said.contains("version 1 with 1 entries"), "{said}");
    let (parsed, document) = shoal_pki::RevocationFile::parse(&fs::read(&list).unwrap()).unwrap();
    let serial = json(&["inspect", "--json", p(&n1.join("node.crt"))])["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        parsed.entries[0].serial.as_deref(),
        Some(
            mesh_proto::revocation::normalize_serial(&serial)
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(parsed.entries[0].node.as_deref(), Some("n1"));
    let bundle = shoal_pki::CaBundle::from_pem(&fs::read(ca.join("ca.crt")).unwrap()).unwrap();
    shoal_pki::RevocationVerifier::from_bundle(&bundle)
        .verify(&document, rustls_pki_types::UnixTime::now())
        .expect("signed by the mesh CA");

    // The same certificate again by serial: nothing changes.
    let said = ok(&strs(&revoke(&["--serial", &serial])));
    assert!(said.contains("already revoked"), "{said}");
    // A whole node: version 2, two entries.
    let said = ok(&strs(&revoke(&["--node", "n2"])));
    assert!(said.contains("version 2 with 2 entries"), "{said}");

    // Another CA cannot extend this list, and bad input writes nothing.
    let other = tmp.path().join("other");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.test",
        "--out",
        p(&other),
    ]);
    let before = fs::read(&list).unwrap();
    let by_other = [
        "revoke",
        "--ca",
        p(&other),
        "--list",
        p(&list),
        "--node",
        "n3",
        "--reason",
        "x",
    ];
    let err = fails(&by_other);
    assert!(err.contains("not a list this CA signed"), "{err}");
    let err = fails(&strs(&revoke(&["--serial", "xyz"])));
    assert!(err.contains("not a hex serial"), "{err}");
    let err = fails(&strs(&revoke(&["--node", "Bad_Name"])));
    assert!(err.contains("node name"), "{err}");
    let err = fails(&strs(&revoke(&["--cert", p(&ca.join("ca.crt"))])));
    assert!(err.contains("only node certificates"), "{err}");
    let err = fails(&["revoke", "--ca", p(&ca), "--list", p(&list)]);
    assert!(err.contains("say what to revoke"), "{err}");
    let err = fails(&["revoke", "--ca", p(&ca), "--list", p(&list), "--node", "n3"]);
    assert!(err.contains("--reason is required"), "{err}");
    assert_eq!(fs::read(&list).unwrap(), before);

    // A CA rollover: the new CA carries the list over (every entry kept, the
    // next version), then extends it on its own.
    let carry = [
        "revoke",
        "--ca",
        p(&other),
        "--list",
        p(&list),
        "--previous-ca",
        p(&ca),
    ];
    // Naming a list file that does not exist is a mistake, not a new list.
    let missing = tmp.path().join("nowhere.json");
    let err = fails(&[
        "revoke",
        "--ca",
        p(&other),
        "--list",
        p(&missing),
        "--previous-ca",
        p(&ca),
    ]);
    assert!(err.contains("no such list"), "{err}");
    assert!(!missing.exists());
    let said = ok(&carry);
    let old_ca = json(&["inspect", "--json", p(&ca.join("ca.crt"))]);
    let fingerprint = old_ca["sha256_fingerprint"].as_str().unwrap();
    assert!(
        said.contains(&format!(
            "carrying over version 2 with 2 entries, signed by --previous-ca (sha256 {fingerprint})"
        )),
        "{said}"
    );
    assert!(said.contains("version 3 with 2 entries"), "{said}");
    let (carried, document) = shoal_pki::RevocationFile::parse(&fs::read(&list).unwrap()).unwrap();
    assert_eq!(carried.entries, parsed_v2(&before));
    let new_ca = shoal_pki::CaBundle::from_pem(&fs::read(other.join("ca.crt")).unwrap()).unwrap();
    shoal_pki::RevocationVerifier::from_bundle(&new_ca)
        .verify(&document, rustls_pki_types::UnixTime::now())
        .expect("signed by the new CA");
    let said = ok(&by_other);
    assert!(said.contains("version 4 with 3 entries"), "{said}");
}

fn parsed_v2(file: &[u8]) -> Vec<mesh_proto::revocation::Revocation> {
    shoal_pki::RevocationFile::parse(file).unwrap().0.entries
}
