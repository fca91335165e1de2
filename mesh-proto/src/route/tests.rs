//! Tests of the route schema, its validation, request matching, the traffic split
//! and the merge, with property tests for the body round trip, hostile bodies and
//! the merge's independence from input order.

use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::table::normalize_host;
use super::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn backend(service: &str, weight: u32) -> Backend {
    Backend {
        service: service.to_string(),
        weight,
    }
}

fn rule(path_prefix: &str, backends: &[(&str, u32)]) -> Rule {
    Rule {
        r#match: Match {
            path_prefix: path_prefix.to_string(),
            ..Match::default()
        },
        backends: backends.iter().map(|(s, w)| backend(s, *w)).collect(),
        lb: None,
        session: None,
        timeout_ms: None,
        per_try_timeout_ms: None,
        retry: None,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        allow_services: Vec::new(),
    }
}

fn route(name: &str, hosts: &[&str], rules: Vec<Rule>) -> RouteSpec {
    RouteSpec {
        name: name.to_string(),
        issued_at_ms: 1_000,
        deleted: false,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

/// A valid spec using every feature, for the validation cases to break.
fn full() -> RouteSpec {
    let mut canary = rule("/api", &[("api-canary", 1)]);
    canary.r#match.headers.insert("x-canary".into(), "1".into());
    canary.r#match.methods = vec!["GET".into(), "HEAD".into()];
    let mut api = rule("/api", &[("api", 90), ("api-v2", 10)]);
    api.lb = Some(Policy::LeastRequest);
    api.timeout_ms = Some(5_000);
    api.per_try_timeout_ms = Some(1_500);
    api.retry = Some(Retry {
        on: vec![
            RetryOn::ConnectFailure,
            RetryOn::ServerError,
            RetryOn::Reset,
        ],
        attempts: 3,
        all_methods: false,
    });
    api.request_headers
        .add
        .insert("x-via".into(), "shoal".into());
    api.request_headers.remove.push("x-debug".into());
    api.allow_services = vec!["web".into(), "mobile-bff".into()];
    let mut store = rule("/", &[("storefront", 1)]);
    store.session = Some(Session::Cookie {
        name: DEFAULT_COOKIE_NAME.into(),
        ttl_s: Some(3_600),
    });
    store.response_headers.add.insert(
        "strict-transport-security".into(),
        "max-age=31536000".into(),
    );
    let mut sticky = rule("/cart", &[("cart", 1)]);
    sticky.session = Some(Session::Header {
        name: "x-session-id".into(),
    });
    RouteSpec {
        name: "shop".into(),
        issued_at_ms: 1_767_225_600_000,
        deleted: false,
        hosts: vec!["shop.example.org".into(), "*.shop.example.org".into()],
        rules: vec![canary, api, sticky, store],
    }
}

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

/// A deterministic stream of well-mixed u64s (splitmix64).
fn randoms(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

// ---------------------------------------------------------------------------
// Schema and body
// ---------------------------------------------------------------------------

#[test]
fn the_full_example_is_valid_and_round_trips() {
    let spec = full();
    spec.validate().unwrap();
    let body = spec.to_body();
    assert_eq!(RouteSpec::parse_body(&body).unwrap(), spec);
    assert_eq!(RouteSpec::parse_body(&body).unwrap().to_body(), body);
}

#[test]
fn defaults_fill_everything_but_name_issue_time_and_backends() {
    let spec = RouteSpec::parse_body(
        br#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}]}]}"#,
    )
    .unwrap();
    assert_eq!(spec.hosts, vec!["*".to_string()]);
    assert!(!spec.deleted);
    let r = &spec.rules[0];
    assert_eq!(r.r#match, Match::default());
    assert_eq!(r.r#match.path_prefix, "/");
    assert_eq!(r.backends, vec![backend("s", 1)]);
    assert_eq!(r.lb, None);
    assert_eq!(r.policy(), Policy::RoundRobin);
    assert_eq!(r.max_attempts(), 1);
    assert!(r.request_headers.is_empty() && r.response_headers.is_empty());
    assert!(r.allow_services.is_empty());

    for missing in [
        r#"{"issued_at_ms":7,"rules":[{"backends":[{"service":"s"}]}]}"#,
        r#"{"name":"a","rules":[{"backends":[{"service":"s"}]}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"weight":2}]}]}"#,
    ] {
        assert!(
            matches!(
                RouteSpec::parse_body(missing.as_bytes()),
                Err(RouteError::Syntax { .. })
            ),
            "{missing}"
        );
    }
}

#[test]
fn unknown_fields_are_refused_everywhere() {
    let base = r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}]}]}"#;
    RouteSpec::parse_body(base.as_bytes()).unwrap();
    for bad in [
        r#"{"name":"a","issued_at_ms":7,"extra":1,"rules":[{"backends":[{"service":"s"}]}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"extra":1,"backends":[{"service":"s"}]}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"match":{"path":"/"},"backends":[{"service":"s"}]}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s","zone":"z"}]}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}],"retry":{"on":["5xx"],"attempts":2,"budget":1}}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}],"request_headers":{"set":{}}}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}],"session":{"type":"source_ip","bits":24}}]}"#,
        r#"{"name":"a","issued_at_ms":7,"rules":[{"backends":[{"service":"s"}],"session":{"type":"cookie","path":"/"}}]}"#,
    ] {
        let err = RouteSpec::parse_body(bad.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, RouteError::Syntax { message } if message.contains("unknown field")),
            "{bad}: {err}"
        );
    }
    // A field of another session kind is refused, by name.
    for (bad, says) in [
        (r#"{"type":"source_ip","name":"x"}"#, "source_ip"),
        (r#"{"type":"header","name":"x","ttl_s":5}"#, "ttl_s"),
        (r#"{"type":"header"}"#, "name"),
    ] {
        let body = format!(
            r#"{{"name":"a","issued_at_ms":7,"rules":[{{"backends":[{{"service":"s"}}],"session":{bad}}}]}}"#
        );
        let err = RouteSpec::parse_body(body.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, RouteError::Syntax { message } if message.contains(says)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn enums_use_their_snake_case_names() {
    let body = |rule_json: &str| {
        format!(
            r#"{{"name":"a","issued_at_ms":7,"rules":[{{"backends":[{{"service":"s"}}],{rule_json}}}]}}"#
        )
    };
    let parse = |rule_json: &str| RouteSpec::parse_body(body(rule_json).as_bytes());
    for policy in Policy::ALL {
        let spec = parse(&format!(r#""lb":"{}""#, policy.as_str())).unwrap();
        assert_eq!(spec.rules[0].lb, Some(policy));
    }
    let err = parse(r#""lb":"fastest""#).unwrap_err();
    assert!(err.to_string().contains("fastest"), "{err}");

    let spec = parse(r#""session":{"type":"cookie"}"#).unwrap();
    assert_eq!(
        spec.rules[0].session,
        Some(Session::Cookie {
            name: "shoal-session".into(),
            ttl_s: None
        })
    );
    let spec = parse(r#""session":{"type":"header","name":"x-user"}"#).unwrap();
    assert_eq!(spec.rules[0].policy(), Policy::RingHash);
    let spec = parse(r#""session":{"type":"source_ip"}"#).unwrap();
    assert_eq!(spec.rules[0].session, Some(Session::SourceIp));
    assert_eq!(spec.rules[0].policy(), Policy::RingHash);
    assert!(parse(r#""session":{"type":"sticky"}"#).is_err());

    let spec = parse(r#""retry":{"on":["connect_failure","5xx","reset"],"attempts":2}"#).unwrap();
    let retry = spec.rules[0].retry.as_ref().unwrap();
    assert_eq!(
        retry.on,
        vec![
            RetryOn::ConnectFailure,
            RetryOn::ServerError,
            RetryOn::Reset
        ]
    );
    assert!(!retry.all_methods);
    for bad in ["5XX", "connect-failure", "timeout"] {
        assert!(parse(&format!(r#""retry":{{"on":["{bad}"],"attempts":2}}"#)).is_err());
    }
    for on in [
        RetryOn::ConnectFailure,
        RetryOn::ServerError,
        RetryOn::Reset,
    ] {
        assert_eq!(
            serde_json::to_string(&on).unwrap(),
            format!("\"{}\"", on.as_str())
        );
    }
}

#[test]
fn the_body_is_canonical() {
    // Keys in any order, with whitespace: the same spec, and the same canonical body.
    let a = br#"{ "rules": [ { "backends": [ { "weight": 2, "service": "s" } ],
                 "request_headers": { "add": { "x-b": "2", "x-a": "1" } } } ],
                 "issued_at_ms": 7, "name": "a" }"#;
    let b = br#"{"name":"a","issued_at_ms":7,"rules":[{"request_headers":{"add":{"x-a":"1","x-b":"2"}},"backends":[{"service":"s","weight":2}]}]}"#;
    let sa = RouteSpec::parse_body(a).unwrap();
    let sb = RouteSpec::parse_body(b).unwrap();
    assert_eq!(sa, sb);
    assert_eq!(sa.to_body(), sb.to_body());
    let text = String::from_utf8(sa.to_body()).unwrap();
    assert_eq!(
        text,
        r#"{"name":"a","issued_at_ms":7,"deleted":false,"hosts":["*"],"rules":[{"match":{"path_prefix":"/","headers":{},"methods":[]},"backends":[{"service":"s","weight":2}],"request_headers":{"add":{"x-a":"1","x-b":"2"},"remove":[]},"response_headers":{"add":{},"remove":[]},"allow_services":[]}]}"#
    );
}

#[test]
fn parse_body_checks_the_size_before_parsing() {
    let mut body = vec![b' '; RouteDocument::MAX_DOCUMENT_LEN + 1];
    body[0] = b'{';
    assert_eq!(
        RouteSpec::parse_body(&body),
        Err(RouteError::TooLarge {
            len: RouteDocument::MAX_DOCUMENT_LEN + 1,
            max: RouteDocument::MAX_DOCUMENT_LEN
        })
    );
    for junk in [&b""[..], b"null", b"[]", b"{", b"\xff\xfe", b"{\"name\":1}"] {
        assert!(matches!(
            RouteSpec::parse_body(junk),
            Err(RouteError::Syntax { .. })
        ));
    }
}

#[test]
fn parse_document_requires_the_document_name() {
    let spec = route("b", &["*"], vec![rule("/", &[("s", 1)])]);
    let doc = document("a", &spec.to_body(), "n1", true);
    let err = RouteSpec::parse_document(&doc).unwrap_err();
    assert_eq!(err.field(), Some("name"));
    assert!(matches!(
        err,
        RouteError::Invalid {
            problem: Problem::NameMismatch { .. },
            ..
        }
    ));
    let doc = document("b", &spec.to_body(), "n1", true);
    assert_eq!(RouteSpec::parse_document(&doc).unwrap(), spec);
}

#[test]
fn a_tombstone_needs_no_rules() {
    let t = RouteSpec::tombstone("shop", 99);
    t.validate().unwrap();
    assert_eq!(RouteSpec::parse_body(&t.to_body()).unwrap(), t);
    let t = RouteSpec::parse_body(br#"{"name":"shop","issued_at_ms":99,"deleted":true}"#).unwrap();
    assert!(t.deleted && t.rules.is_empty());
}

// ---------------------------------------------------------------------------
// Validation: every error names its field
// ---------------------------------------------------------------------------

type Case = (&'static str, fn(&mut RouteSpec), fn(&Problem) -> bool);

#[test]
fn every_validation_error_names_its_field() {
    let cases: Vec<Case> = vec![
        (
            "name",
            |s| s.name = "Shop".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "name",
            |s| s.name = String::new(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "hosts",
            |s| s.hosts.clear(),
            |p| matches!(p, Problem::Empty { .. }),
        ),
        (
            "hosts",
            |s| s.hosts = (0..33).map(|i| format!("h{i}.org")).collect(),
            |p| matches!(p, Problem::TooMany { count: 33, max: 32 }),
        ),
        (
            "hosts[1]",
            |s| s.hosts[1] = "Shop.example.org".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "hosts[0]",
            |s| s.hosts[0] = "shop.example.org:443".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "hosts[0]",
            |s| s.hosts[0] = "a.*.org".into(),
            |p| matches!(p, Problem::BadWildcard { .. }),
        ),
        (
            "hosts[0]",
            |s| s.hosts[0] = "*example.org".into(),
            |p| matches!(p, Problem::BadWildcard { .. }),
        ),
        (
            "hosts[0]",
            |s| s.hosts[0] = "*.".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "hosts[1]",
            |s| s.hosts[1] = s.hosts[0].clone(),
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules",
            |s| s.rules.clear(),
            |p| matches!(p, Problem::Empty { .. }),
        ),
        (
            "rules",
            |s| s.rules = vec![rule("/", &[("s", 1)]); 65],
            |p| matches!(p, Problem::TooMany { count: 65, max: 64 }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = "api".into(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = String::new(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = "/api/".into(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = "/api?x=1".into(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = "/a b".into(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = "/é".into(),
            |p| matches!(p, Problem::BadPathPrefix { .. }),
        ),
        (
            "rules[1].match.path_prefix",
            |s| s.rules[1].r#match.path_prefix = format!("/{}", "a".repeat(1024)),
            |p| {
                matches!(
                    p,
                    Problem::TooLong {
                        len: 1025,
                        max: 1024
                    }
                )
            },
        ),
        (
            "rules[0].match.headers[\"X-Canary\"]",
            |s| {
                s.rules[0].r#match.headers.clear();
                s.rules[0]
                    .r#match
                    .headers
                    .insert("X-Canary".into(), "1".into());
            },
            |p| matches!(p, Problem::BadHeaderName { .. }),
        ),
        (
            "rules[0].match.headers[\"x canary\"]",
            |s| {
                s.rules[0]
                    .r#match
                    .headers
                    .insert("x canary".into(), "1".into());
            },
            |p| matches!(p, Problem::BadHeaderName { .. }),
        ),
        (
            "rules[0].match.headers[\"x-canary\"]",
            |s| {
                s.rules[0]
                    .r#match
                    .headers
                    .insert("x-canary".into(), "a\u{7f}".into());
            },
            |p| matches!(p, Problem::BadHeaderValue { ch: '\u{7f}' }),
        ),
        (
            "rules[0].match.headers[\"x-canary\"]",
            |s| {
                s.rules[0]
                    .r#match
                    .headers
                    .insert("x-canary".into(), "v".repeat(1025));
            },
            |p| matches!(p, Problem::TooLong { .. }),
        ),
        (
            "rules[0].match.headers",
            |s| {
                for i in 0..17 {
                    s.rules[0]
                        .r#match
                        .headers
                        .insert(format!("x-{i}"), "1".into());
                }
            },
            |p| matches!(p, Problem::TooMany { max: 16, .. }),
        ),
        (
            "rules[0].match.methods[1]",
            |s| s.rules[0].r#match.methods[1] = "head".into(),
            |p| matches!(p, Problem::BadMethod { .. }),
        ),
        (
            "rules[0].match.methods[0]",
            |s| s.rules[0].r#match.methods[0] = "GE T".into(),
            |p| matches!(p, Problem::BadMethod { .. }),
        ),
        (
            "rules[0].match.methods[1]",
            |s| s.rules[0].r#match.methods[1] = "GET".into(),
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules[0].match.methods",
            |s| s.rules[0].r#match.methods = (0..17).map(|i| format!("M{i}")).collect(),
            |p| matches!(p, Problem::TooMany { .. }),
        ),
        (
            "rules[1].backends",
            |s| s.rules[1].backends.clear(),
            |p| matches!(p, Problem::Empty { .. }),
        ),
        (
            "rules[1].backends",
            |s| s.rules[1].backends = (0..17).map(|i| backend(&format!("s{i}"), 1)).collect(),
            |p| matches!(p, Problem::TooMany { count: 17, max: 16 }),
        ),
        (
            "rules[1].backends[1].service",
            |s| s.rules[1].backends[1].service = "Api".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "rules[1].backends[1].service",
            |s| s.rules[1].backends[1].service = "api".into(),
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules[1].backends[0].weight",
            |s| s.rules[1].backends[0].weight = 0,
            |p| {
                matches!(
                    p,
                    Problem::OutOfRange {
                        value: 0,
                        min: 1,
                        max: 10_000
                    }
                )
            },
        ),
        (
            "rules[1].backends[1].weight",
            |s| s.rules[1].backends[1].weight = 10_001,
            |p| matches!(p, Problem::OutOfRange { value: 10_001, .. }),
        ),
        (
            "rules[3].session.name",
            |s| {
                s.rules[3].session = Some(Session::Cookie {
                    name: "my cookie".into(),
                    ttl_s: None,
                })
            },
            |p| matches!(p, Problem::BadCookieName { .. }),
        ),
        (
            "rules[3].session.name",
            |s| {
                s.rules[3].session = Some(Session::Cookie {
                    name: String::new(),
                    ttl_s: None,
                })
            },
            |p| matches!(p, Problem::BadCookieName { .. }),
        ),
        (
            "rules[3].session.ttl_s",
            |s| {
                s.rules[3].session = Some(Session::Cookie {
                    name: "sid".into(),
                    ttl_s: Some(0),
                })
            },
            |p| matches!(p, Problem::OutOfRange { value: 0, .. }),
        ),
        (
            "rules[2].session.name",
            |s| {
                s.rules[2].session = Some(Session::Header {
                    name: "X-Session".into(),
                })
            },
            |p| matches!(p, Problem::BadHeaderName { .. }),
        ),
        (
            "rules[2].lb",
            |s| s.rules[2].lb = Some(Policy::RoundRobin),
            |p| {
                matches!(
                    p,
                    Problem::PolicyConflict {
                        session: "header",
                        ..
                    }
                )
            },
        ),
        (
            "rules[2].lb",
            |s| {
                s.rules[2].session = Some(Session::SourceIp);
                s.rules[2].lb = Some(Policy::LeastRequest);
            },
            |p| {
                matches!(
                    p,
                    Problem::PolicyConflict {
                        session: "source_ip",
                        ..
                    }
                )
            },
        ),
        (
            "rules[1].timeout_ms",
            |s| s.rules[1].timeout_ms = Some(0),
            |p| matches!(p, Problem::OutOfRange { value: 0, .. }),
        ),
        (
            "rules[1].timeout_ms",
            |s| s.rules[1].timeout_ms = Some(MAX_TIMEOUT_MS + 1),
            |p| matches!(p, Problem::OutOfRange { .. }),
        ),
        (
            "rules[1].per_try_timeout_ms",
            |s| s.rules[1].per_try_timeout_ms = Some(0),
            |p| matches!(p, Problem::OutOfRange { value: 0, .. }),
        ),
        (
            "rules[1].per_try_timeout_ms",
            |s| s.rules[1].per_try_timeout_ms = Some(5_001),
            |p| {
                matches!(
                    p,
                    Problem::PerTryAboveTimeout {
                        per_try_ms: 5_001,
                        timeout_ms: 5_000
                    }
                )
            },
        ),
        (
            "rules[1].retry.on",
            |s| s.rules[1].retry.as_mut().unwrap().on.clear(),
            |p| matches!(p, Problem::Empty { .. }),
        ),
        (
            "rules[1].retry.on[2]",
            |s| s.rules[1].retry.as_mut().unwrap().on[2] = RetryOn::ConnectFailure,
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules[1].retry.attempts",
            |s| s.rules[1].retry.as_mut().unwrap().attempts = 0,
            |p| {
                matches!(
                    p,
                    Problem::OutOfRange {
                        value: 0,
                        min: 1,
                        max: 10
                    }
                )
            },
        ),
        (
            "rules[1].retry.attempts",
            |s| s.rules[1].retry.as_mut().unwrap().attempts = 11,
            |p| matches!(p, Problem::OutOfRange { value: 11, .. }),
        ),
        (
            "rules[1].request_headers.add[\"X-Via\"]",
            |s| {
                s.rules[1]
                    .request_headers
                    .add
                    .insert("X-Via".into(), "x".into());
            },
            |p| matches!(p, Problem::BadHeaderName { .. }),
        ),
        (
            "rules[1].request_headers.add[\"x-via\"]",
            |s| {
                s.rules[1]
                    .request_headers
                    .add
                    .insert("x-via".into(), "a\r\nb".into());
            },
            |p| matches!(p, Problem::BadHeaderValue { ch: '\r' }),
        ),
        (
            "rules[1].request_headers.add[\"proxy-authorization\"]",
            |s| {
                s.rules[1]
                    .request_headers
                    .add
                    .insert("proxy-authorization".into(), "x".into());
            },
            |p| matches!(p, Problem::NotAddable { .. }),
        ),
        (
            "rules[1].request_headers.remove[0]",
            |s| s.rules[1].request_headers.remove[0] = "X-Debug".into(),
            |p| matches!(p, Problem::BadHeaderName { .. }),
        ),
        (
            "rules[1].request_headers.remove[1]",
            |s| s.rules[1].request_headers.remove.push("x-debug".into()),
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules[1].request_headers.remove[1]",
            |s| s.rules[1].request_headers.remove.push("x-via".into()),
            |p| matches!(p, Problem::AddedAndRemoved { .. }),
        ),
        (
            "rules[1].request_headers.add",
            |s| {
                for i in 0..16 {
                    s.rules[1]
                        .request_headers
                        .add
                        .insert(format!("x-{i}"), "1".into());
                }
            },
            |p| matches!(p, Problem::TooMany { count: 17, max: 16 }),
        ),
        (
            "rules[3].response_headers.remove",
            |s| s.rules[3].response_headers.remove = (0..17).map(|i| format!("x-{i}")).collect(),
            |p| matches!(p, Problem::TooMany { .. }),
        ),
        (
            "rules[1].allow_services[1]",
            |s| s.rules[1].allow_services[1] = "Mobile".into(),
            |p| matches!(p, Problem::BadName(_)),
        ),
        (
            "rules[1].allow_services[1]",
            |s| s.rules[1].allow_services[1] = "web".into(),
            |p| matches!(p, Problem::Duplicate { .. }),
        ),
        (
            "rules[1].allow_services",
            |s| s.rules[1].allow_services = (0..65).map(|i| format!("svc{i}")).collect(),
            |p| matches!(p, Problem::TooMany { count: 65, max: 64 }),
        ),
    ];
    for (field, break_it, expected) in cases {
        let mut spec = full();
        break_it(&mut spec);
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field(), Some(field), "{err}");
        let RouteError::Invalid { problem, .. } = &err else {
            unreachable!()
        };
        assert!(expected(problem), "{field}: unexpected {problem:?}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
        // parse_body refuses the same body with the same error.
        assert_eq!(RouteSpec::parse_body(&spec.to_body()), Err(err));
    }
}

#[test]
fn the_weight_error_reads_as_documented() {
    let mut spec = full();
    spec.rules[2].backends[0].weight = 0;
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "rules[2].backends[0].weight: 0 is out of range 1..=10000"
    );
}

#[test]
fn no_hop_by_hop_header_can_be_added() {
    for name in NOT_ADDABLE_HEADERS
        .iter()
        .copied()
        .chain(["proxy-connection", "proxy-authenticate"])
    {
        assert!(!is_addable(name), "{name}");
        for response in [false, true] {
            let mut spec = full();
            let ops = if response {
                &mut spec.rules[0].response_headers
            } else {
                &mut spec.rules[0].request_headers
            };
            ops.add.insert(name.to_string(), "x".into());
            let err = spec.validate().unwrap_err();
            let list = if response { "response" } else { "request" };
            assert_eq!(
                err.field(),
                Some(format!("rules[0].{list}_headers.add[{name:?}]").as_str())
            );
            // Removing them is fine: the proxy strips them anyway.
            let mut spec = full();
            spec.rules[0].request_headers.remove.push(name.to_string());
            spec.validate().unwrap();
        }
    }
    assert!(is_addable("x-forwarded-for") && is_addable("set-cookie"));
}

#[test]
fn an_oversize_spec_is_refused_as_a_whole() {
    let mut spec = full();
    let mut big = rule("/", &[("s", 1)]);
    for i in 0..16 {
        big.r#match
            .headers
            .insert(format!("x-{i}"), "v".repeat(MAX_HEADER_VALUE_LEN));
    }
    spec.rules = vec![big; 4];
    assert!(matches!(
        spec.validate(),
        Err(RouteError::TooLarge { max, .. }) if max == RouteDocument::MAX_DOCUMENT_LEN
    ));
}

// ---------------------------------------------------------------------------
// Rule helpers
// ---------------------------------------------------------------------------

#[test]
fn idempotent_methods_are_the_rfc_ones() {
    for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        assert!(is_idempotent(m), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT", "get", ""] {
        assert!(!is_idempotent(m), "{m}");
    }
}

#[test]
fn retries_follow_the_policy_and_the_method() {
    let spec = full();
    let api = &spec.rules[1]; // connect_failure, 5xx, reset; 3 attempts
    assert_eq!(api.max_attempts(), 3);
    assert!(api.may_retry("GET", RetryOn::ServerError, 1));
    assert!(api.may_retry("PUT", RetryOn::Reset, 2));
    assert!(
        !api.may_retry("GET", RetryOn::ServerError, 3),
        "attempts used up"
    );
    assert!(!api.may_retry("POST", RetryOn::ServerError, 1));
    assert!(!api.may_retry("POST", RetryOn::Reset, 1));
    assert!(
        api.may_retry("POST", RetryOn::ConnectFailure, 1),
        "never sent: always safe"
    );
    let mut all = api.clone();
    if let Some(r) = all.retry.as_mut() {
        r.all_methods = true;
        r.on = vec![RetryOn::Reset];
    }
    assert!(all.may_retry("POST", RetryOn::Reset, 1));
    assert!(!all.may_retry("GET", RetryOn::ServerError, 1), "not listed");
    let none = &spec.rules[0];
    assert_eq!(none.max_attempts(), 1);
    assert!(!none.may_retry("GET", RetryOn::ConnectFailure, 1));
}

#[test]
fn callers_are_checked_against_the_allow_list() {
    let spec = full();
    let api = &spec.rules[1];
    assert!(api.allows_caller(Some("web")));
    assert!(!api.allows_caller(Some("batch")));
    assert!(!api.allows_caller(None), "ingress clients have no service");
    let open = &spec.rules[0];
    assert!(open.allows_caller(Some("batch")) && open.allows_caller(None));
}

#[test]
fn policy_defaults_follow_the_session() {
    let spec = full();
    assert_eq!(spec.rules[0].policy(), Policy::RoundRobin);
    assert_eq!(spec.rules[1].policy(), Policy::LeastRequest);
    assert_eq!(spec.rules[2].policy(), Policy::RingHash, "header session");
    assert_eq!(spec.rules[3].policy(), Policy::RoundRobin, "cookie session");
}

#[test]
fn cookie_values_are_found_by_name() {
    let h = "a=1; shoal-session=abc.def ; b=\"q\";c";
    assert_eq!(cookie_value(h, "shoal-session"), Some("abc.def"));
    assert_eq!(cookie_value(h, "a"), Some("1"));
    assert_eq!(cookie_value(h, "b"), Some("\"q\""));
    assert_eq!(cookie_value(h, "c"), None);
    assert_eq!(cookie_value(h, "shoal"), None);
    assert_eq!(cookie_value("", "a"), None);
    assert_eq!(cookie_value("a=1;a=2", "a"), Some("1"));
}

#[test]
fn the_split_follows_the_weights_within_two_percent() {
    let r = rule("/", &[("a", 70), ("b", 20), ("c", 10)]);
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for random in randoms(42).take(10_000) {
        let b = r.pick_backend(random).unwrap();
        *counts.entry(&b.service).or_default() += 1;
    }
    for (service, share) in [("a", 7_000), ("b", 2_000), ("c", 1_000)] {
        let got = counts.get(service).copied().unwrap_or(0);
        assert!(
            got.abs_diff(share) <= 200,
            "{service}: {got} of 10000, expected {share} ± 200"
        );
    }
    // Consecutive numbers split exactly.
    let mut exact: BTreeMap<&str, u32> = BTreeMap::new();
    for random in 0..10_000u64 {
        *exact
            .entry(&r.pick_backend(random).unwrap().service)
            .or_default() += 1;
    }
    assert_eq!(
        exact.values().copied().collect::<Vec<_>>(),
        [7_000, 2_000, 1_000]
    );
    // Deterministic.
    for random in randoms(7).take(100) {
        assert_eq!(r.pick_backend(random), r.pick_backend(random));
    }
    let single = rule("/", &[("only", 3)]);
    assert!(
        randoms(1)
            .take(100)
            .all(|x| single.pick_backend(x).unwrap().service == "only")
    );
    let mut empty = single.clone();
    empty.backends.clear();
    assert_eq!(empty.pick_backend(5), None);
    let zero = rule("/", &[("z", 0), ("y", 0)]);
    assert_eq!(zero.pick_backend(5).unwrap().service, "z");
}

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

fn pick<'a>(table: &'a RouteTable, authority: &str, path: &str) -> Option<(&'a str, usize)> {
    table
        .route(authority, path, "GET", no_headers)
        .map(|m| (m.route.name.as_str(), m.rule_index))
}

#[test]
fn prefixes_match_whole_segments() {
    for (prefix, path, expected) in [
        ("/api", "/api", true),
        ("/api", "/api/", true),
        ("/api", "/api/x/y", true),
        ("/api", "/api?x=1", true),
        ("/api", "/api#frag", true),
        ("/api", "/apix", false),
        ("/api", "/ap", false),
        ("/api", "/", false),
        ("/api", "/API", false),
        ("/api", "/x/api", false),
        ("/api", "/apix?/api", false),
        ("/api/v1", "/api/v1/x", true),
        ("/api/v1", "/api/v10", false),
        ("/", "/", true),
        ("/", "/anything/at/all", true),
        ("/", "", true),
        ("/", "*", true),
    ] {
        assert_eq!(path_matches(prefix, path), expected, "{prefix} vs {path}");
    }
}

#[test]
fn hosts_are_normalized() {
    for (authority, host) in [
        ("shop.example.org", "shop.example.org"),
        ("Shop.Example.ORG:8443", "shop.example.org"),
        ("shop.example.org.", "shop.example.org"),
        ("shop.example.org.:80", "shop.example.org"),
        ("user@shop.example.org:80", "shop.example.org"),
        ("shop.example.org:", "shop.example.org"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("", ""),
        ("[", "["),
    ] {
        assert_eq!(normalize_host(authority), host, "{authority}");
    }
}

#[test]
fn exact_hosts_beat_wildcards_beat_any() {
    let table = RouteTable::new([
        route("any", &["*"], vec![rule("/", &[("s", 1)])]),
        route("wild", &["*.example.org"], vec![rule("/", &[("s", 1)])]),
        route(
            "deeper",
            &["*.shop.example.org"],
            vec![rule("/", &[("s", 1)])],
        ),
        route(
            "exact",
            &["shop.example.org"],
            vec![rule("/api", &[("s", 1)])],
        ),
    ]);
    assert_eq!(
        pick(&table, "shop.example.org", "/api/x"),
        Some(("exact", 0))
    );
    assert_eq!(
        pick(&table, "SHOP.example.org:8443", "/api"),
        Some(("exact", 0))
    );
    assert_eq!(
        pick(&table, "shop.example.org.", "/api"),
        Some(("exact", 0))
    );
    // The exact route has no rule for this path: the wildcard takes it.
    assert_eq!(pick(&table, "shop.example.org", "/cart"), Some(("wild", 0)));
    assert_eq!(pick(&table, "a.b.example.org", "/"), Some(("wild", 0)));
    assert_eq!(pick(&table, "x.shop.example.org", "/"), Some(("deeper", 0)));
    assert_eq!(
        pick(&table, "x.y.shop.example.org:1", "/"),
        Some(("deeper", 0))
    );
    // A wildcard does not match its bare domain.
    assert_eq!(pick(&table, "example.org", "/"), Some(("any", 0)));
    assert_eq!(pick(&table, ".example.org", "/"), Some(("any", 0)));
    assert_eq!(pick(&table, "other.net", "/"), Some(("any", 0)));
    assert_eq!(pick(&table, "", "/"), Some(("any", 0)));
    assert_eq!(pick(&table, "[::1]:80", "/"), Some(("any", 0)));

    let no_any = RouteTable::new([route(
        "exact",
        &["shop.example.org"],
        vec![rule("/api", &[("s", 1)])],
    )]);
    assert_eq!(pick(&no_any, "shop.example.org", "/cart"), None);
    assert_eq!(pick(&no_any, "other.org", "/api"), None);
}

#[test]
fn a_route_counts_at_its_most_specific_host() {
    let table = RouteTable::new([
        route(
            "a",
            &["*", "shop.example.org"],
            vec![rule("/", &[("s", 1)])],
        ),
        route(
            "b",
            &["*.example.org"],
            vec![rule("/long/prefix", &[("s", 1)])],
        ),
    ]);
    assert_eq!(
        pick(&table, "shop.example.org", "/long/prefix"),
        Some(("a", 0))
    );
    assert_eq!(
        pick(&table, "x.example.org", "/long/prefix"),
        Some(("b", 0))
    );
}

#[test]
fn longer_prefix_then_more_headers_then_name_decide() {
    let mut canary = rule("/api", &[("canary", 1)]);
    canary.r#match.headers.insert("x-canary".into(), "1".into());
    let mut two = rule("/api", &[("two", 1)]);
    two.r#match.headers.insert("x-canary".into(), "1".into());
    two.r#match.headers.insert("x-user".into(), "bob".into());
    let specs = vec![
        route("root", &["*"], vec![rule("/", &[("s", 1)])]),
        route("api", &["*"], vec![rule("/api", &[("s", 1)])]),
        route("api-b", &["*"], vec![rule("/api", &[("s", 1)])]),
        route("canary", &["*"], vec![canary]),
        route("two", &["*"], vec![two]),
        route("v1", &["*"], vec![rule("/api/v1", &[("s", 1)])]),
    ];
    // Independent of the input order.
    for rotation in 0..specs.len() {
        let mut input = specs.clone();
        input.rotate_left(rotation);
        input.reverse();
        let table = RouteTable::new(input);
        let with = |headers: &'static [(&'static str, &'static str)], path: &str| {
            table
                .route("h", path, "GET", |name: &str| {
                    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
                })
                .map(|m| m.route.name.clone())
        };
        assert_eq!(with(&[], "/x").as_deref(), Some("root"));
        assert_eq!(with(&[], "/apix").as_deref(), Some("root"));
        assert_eq!(
            with(&[], "/api/x").as_deref(),
            Some("api"),
            "name breaks the tie"
        );
        assert_eq!(with(&[], "/api/v1/x").as_deref(), Some("v1"));
        assert_eq!(
            with(&[("x-canary", "1"), ("x-user", "bob")], "/api/v1").as_deref(),
            Some("v1"),
            "a longer prefix beats more headers"
        );
        assert_eq!(
            with(&[("x-canary", "1")], "/api").as_deref(),
            Some("canary")
        );
        assert_eq!(with(&[("x-canary", "2")], "/api").as_deref(), Some("api"));
        assert_eq!(
            with(&[("x-canary", "1"), ("x-user", "bob")], "/api").as_deref(),
            Some("two")
        );
    }
}

#[test]
fn rules_of_one_route_are_tried_in_order() {
    let mut post = rule("/api", &[("writer", 1)]);
    post.r#match.methods = vec!["POST".into()];
    let table = RouteTable::new([route(
        "r",
        &["*"],
        vec![
            post,
            rule("/", &[("root", 1)]),
            rule("/api", &[("never", 1)]),
        ],
    )]);
    let go = |method: &str, path: &str| {
        table
            .route("h", path, method, no_headers)
            .map(|m| (m.rule_index, m.rule.backends[0].service.clone()))
    };
    assert_eq!(go("POST", "/api/x"), Some((0, "writer".into())));
    assert_eq!(
        go("GET", "/api/x"),
        Some((1, "root".into())),
        "first match wins"
    );
    assert_eq!(go("POST", "/other"), Some((1, "root".into())));
}

#[test]
fn deleted_routes_are_not_in_the_table() {
    let mut gone = route("gone", &["*"], vec![rule("/", &[("s", 1)])]);
    gone.deleted = true;
    let table = RouteTable::new([gone, RouteSpec::tombstone("t", 5)]);
    assert!(table.is_empty());
    assert_eq!(table.len(), 0);
    assert_eq!(pick(&table, "h", "/"), None);
    let table = RouteTable::new([full(), route("a", &["*"], vec![rule("/", &[("s", 1)])])]);
    assert_eq!(table.len(), 2);
    assert_eq!(
        table.get("shop").map(|r| r.issued_at_ms),
        Some(full().issued_at_ms)
    );
    assert!(table.get("nope").is_none());
    assert_eq!(
        table
            .routes()
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "shop"]
    );
}

#[test]
fn the_full_example_routes_as_documented() {
    let table = RouteTable::new([full()]);
    let headers = |canary: bool| move |n: &str| (canary && n == "x-canary").then_some("1");
    let go = |host: &str, path: &str, method: &str, canary: bool| {
        table
            .route(host, path, method, headers(canary))
            .map(|m| m.rule_index)
    };
    assert_eq!(go("shop.example.org", "/api/orders", "GET", true), Some(0));
    assert_eq!(go("shop.example.org", "/api/orders", "POST", true), Some(1));
    assert_eq!(go("shop.example.org", "/api/orders", "GET", false), Some(1));
    assert_eq!(go("eu.shop.example.org", "/cart/1", "GET", false), Some(2));
    assert_eq!(go("shop.example.org:443", "/", "GET", false), Some(3));
    assert_eq!(go("example.org", "/", "GET", false), None);
}

// ---------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------

/// A document; `tag` makes its signature (and so the document) distinct.
fn document(name: &str, body: &[u8], tag: &str, signed: bool) -> RouteDocument {
    let mut signature = if signed {
        b"good-".to_vec()
    } else {
        b"forged-".to_vec()
    };
    signature.extend_from_slice(tag.as_bytes());
    RouteDocument {
        name: name.to_string(),
        body: body.to_vec(),
        signature,
        signer_cert_der: b"operator".to_vec(),
    }
}

/// A document for `spec`, under its own name.
fn doc_for(spec: &RouteSpec, tag: &str) -> RouteDocument {
    document(&spec.name, &spec.to_body(), tag, true)
}

fn verified(d: &RouteDocument) -> bool {
    d.signature.starts_with(b"good-")
}

fn issued(name: &str, issued_at_ms: u64, service: &str) -> RouteSpec {
    RouteSpec {
        issued_at_ms,
        ..route(name, &["*"], vec![rule("/", &[(service, 1)])])
    }
}

fn winner_service(merged: &Merged, name: &str) -> Option<String> {
    merged
        .winners
        .get(name)
        .map(|w| w.spec.rules[0].backends[0].service.clone())
}

#[test]
fn the_latest_issued_document_wins() {
    let old = doc_for(&issued("r", 100, "old"), "z-old");
    let new = doc_for(&issued("r", 200, "new"), "a-new");
    let merged = merge([&old, &new], verified);
    assert_eq!(winner_service(&merged, "r").as_deref(), Some("new"));
    assert!(merged.rejected.is_empty());
    assert_eq!(merged.winners["r"].document, new);
}

#[test]
fn equal_issue_times_are_broken_by_the_signed_bytes_the_same_everywhere() {
    let spec_a = issued("r", 100, "a");
    let spec_b = issued("r", 100, "b");
    let a = doc_for(&spec_a, "n1");
    let b = doc_for(&spec_b, "n1");
    let ab = merge([&a, &b], verified);
    let ba = merge([&b, &a], verified);
    assert_eq!(ab, ba);
    // The bodies differ only in the service name: "b" sorts after "a".
    assert_eq!(winner_service(&ab, "r").as_deref(), Some("b"));
    // Same body: the signature bytes decide.
    let a1 = doc_for(&spec_a, "1");
    let a2 = doc_for(&spec_a, "2");
    assert_eq!(merge([&a1, &a2], verified).winners["r"].document, a2);
    assert_eq!(merge([&a2, &a1], verified).winners["r"].document, a2);
}

#[test]
fn a_replayed_old_document_loses() {
    let current = doc_for(&issued("r", 200, "current"), "n1");
    let old_body = issued("r", 100, "rolled-back").to_body();
    // A member sends an old, validly signed body again, with any signature bytes.
    let replay = document("r", &old_body, "zzzz", true);
    let merged = merge([&replay, &current], verified);
    assert_eq!(winner_service(&merged, "r").as_deref(), Some("current"));
    assert!(
        merged.rejected.is_empty(),
        "the replay is valid, it just loses"
    );
}

#[test]
fn unverified_and_misnamed_documents_are_rejected_and_never_win() {
    let good = doc_for(&issued("r", 100, "good"), "n1");
    let forged = document("r", &issued("r", 999, "forged").to_body(), "n2", false);
    let misnamed = document("r", &issued("other", 999, "x").to_body(), "n3", true);
    let garbage = document("r", b"{not json", "n4", true);
    let invalid = {
        let mut s = issued("r", 999, "x");
        s.rules[0].backends[0].weight = 0;
        document("r", &s.to_body(), "n5", true)
    };
    let merged = merge([&forged, &misnamed, &good, &garbage, &invalid], verified);
    assert_eq!(winner_service(&merged, "r").as_deref(), Some("good"));
    assert_eq!(merged.winners.len(), 1);
    let reasons: Vec<&RejectReason> = merged.rejected.iter().map(|r| &r.reason).collect();
    assert_eq!(reasons.len(), 4);
    assert!(reasons.contains(&&RejectReason::Unverified));
    assert!(reasons.iter().any(|r| matches!(
        r,
        RejectReason::Invalid(RouteError::Invalid { field, problem: Problem::NameMismatch { .. } }) if field == "name"
    )));
    assert!(
        reasons
            .iter()
            .any(|r| matches!(r, RejectReason::Invalid(RouteError::Syntax { .. })))
    );
    assert!(reasons.iter().any(|r| matches!(
        r,
        RejectReason::Invalid(RouteError::Invalid { field, .. }) if field == "rules[0].backends[0].weight"
    )));
    for r in &merged.rejected {
        assert_eq!(r.name, "r");
        assert!(!r.reason.to_string().is_empty());
    }

    // Alone, a forged document leaves no winner at all.
    let merged = merge([&forged], verified);
    assert!(merged.winners.is_empty());
    assert_eq!(merged.rejected.len(), 1);
    assert_eq!(
        check_document(&forged, verified),
        Err(RejectReason::Unverified)
    );
    assert_eq!(
        check_document(&good, verified).map(|s| s.issued_at_ms),
        Ok(100)
    );
}

#[test]
fn a_tombstone_wins_hides_the_route_and_keeps_beating_older_versions() {
    let v1 = doc_for(&issued("r", 100, "v1"), "n1");
    let other = doc_for(&issued("keep", 100, "k"), "n1");
    let tomb = doc_for(&RouteSpec::tombstone("r", 200), "n2");
    let merged = merge([&v1, &tomb, &other], verified);
    assert!(merged.winners["r"].spec.deleted);
    assert_eq!(merged.live().count(), 1);
    let table = merged.table();
    assert!(table.get("r").is_none());
    assert!(table.get("keep").is_some());

    // An old version sent again later, with other signature bytes, still loses.
    let replay = document("r", &v1.body, "n3", true);
    let merged = merge([&tomb, &replay], verified);
    assert!(merged.winners["r"].spec.deleted);

    // Re-creating the route takes a newer issue time.
    let v2 = doc_for(&issued("r", 300, "v2"), "n1");
    let merged = merge([&tomb, &v2, &replay], verified);
    assert_eq!(winner_service(&merged, "r").as_deref(), Some("v2"));
    assert!(merged.table().get("r").is_some());
}

#[test]
fn identical_documents_are_verified_once() {
    let d = doc_for(&issued("r", 100, "s"), "n1");
    let e = doc_for(&issued("q", 100, "s"), "n1");
    let calls = Cell::new(0);
    let merged = merge([&d, &d, &e, &d, &e, &d], |doc: &RouteDocument| {
        calls.set(calls.get() + 1);
        verified(doc)
    });
    assert_eq!(calls.get(), 2);
    assert_eq!(merged.winners.len(), 2);
    let forged = document("r", &d.body, "n1", false);
    let merged = merge([&forged, &forged, &forged], verified);
    assert_eq!(merged.rejected.len(), 1);
}

#[test]
fn precedence_orders_issue_time_first() {
    let a_spec = issued("r", 100, "a");
    let b_spec = issued("r", 101, "b");
    let a = doc_for(&a_spec, "n");
    let b = doc_for(&b_spec, "n");
    assert!(Precedence::of(&b, &b_spec) > Precedence::of(&a, &a_spec));
    let merged = merge([&a], verified);
    assert_eq!(
        merged.winners["r"].precedence(),
        Precedence::of(&a, &a_spec)
    );

    // The issue time beats the bytes: "99" sorts after "100", yet 100 wins.
    let late_spec = issued("r", 100, "a");
    let early_spec = issued("r", 99, "z");
    let late = doc_for(&late_spec, "a");
    let early = doc_for(&early_spec, "z");
    assert!(early.body > late.body && early.signature > late.signature);
    assert!(Precedence::of(&late, &late_spec) > Precedence::of(&early, &early_spec));
    assert_eq!(merge([&early, &late], verified).winners["r"].document, late);
}

#[test]
fn precedence_is_a_total_order_over_the_signed_parts_only() {
    let spec = issued("r", 100, "a");
    let doc = doc_for(&spec, "n");
    fn of(d: &RouteDocument) -> Precedence<'_> {
        Precedence::of(d, &RouteSpec::parse_document(d).unwrap())
    }
    // Equal issue times: the body bytes, then the signature, then the certificate.
    let other_body = doc_for(&issued("r", 100, "b"), "a");
    assert!(other_body.body > doc.body);
    assert!(of(&other_body) > of(&doc));
    let mut other_sig = doc.clone();
    other_sig.signature.push(0);
    assert!(of(&other_sig) > of(&doc));
    let mut other_cert = doc.clone();
    other_cert.signer_cert_der.push(0);
    assert!(of(&other_cert) > of(&doc));
    // Nothing but the document decides: equal documents, equal precedence.
    let copy = doc.clone();
    assert_eq!(of(&copy), of(&doc));
    assert_eq!(
        Precedence::of(&doc, &spec),
        Precedence {
            issued_at_ms: 100,
            body: &doc.body,
            signature: &doc.signature,
            signer_cert_der: &doc.signer_cert_der,
        }
    );
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

mod props {
    use proptest::collection::{btree_map, btree_set, vec};

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,8}[a-z0-9]"
    }

    fn header_name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,10}"
    }

    fn header_value() -> impl Strategy<Value = String> {
        "[ -~]{0,20}"
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            name().prop_map(|n| format!("*.{n}.org")),
            name().prop_map(|n| format!("{n}.example.org")),
        ]
    }

    fn path_prefix() -> impl Strategy<Value = String> {
        prop_oneof![Just("/".to_string()), "(/[a-zA-Z0-9._~%-]{1,8}){1,3}"]
    }

    fn header_ops() -> impl Strategy<Value = HeaderOps> {
        (
            btree_map(
                header_name().prop_filter("addable", |n| is_addable(n)),
                header_value(),
                0..3,
            ),
            btree_set(header_name(), 0..3),
        )
            .prop_map(|(add, remove)| HeaderOps {
                remove: remove
                    .into_iter()
                    .filter(|r| !add.contains_key(r))
                    .collect(),
                add,
            })
    }

    fn session() -> impl Strategy<Value = Option<Session>> {
        proptest::option::of(prop_oneof![
            (
                "[A-Za-z0-9_-]{1,12}",
                proptest::option::of(1..=MAX_COOKIE_TTL_S)
            )
                .prop_map(|(name, ttl_s)| Session::Cookie { name, ttl_s }),
            header_name().prop_map(|name| Session::Header { name }),
            Just(Session::SourceIp),
        ])
    }

    fn retry() -> impl Strategy<Value = Option<Retry>> {
        proptest::option::of(
            (
                btree_set(
                    prop_oneof![
                        Just(RetryOn::ConnectFailure),
                        Just(RetryOn::ServerError),
                        Just(RetryOn::Reset)
                    ],
                    1..=3,
                ),
                1..=MAX_ATTEMPTS,
                any::<bool>(),
            )
                .prop_map(|(on, attempts, all_methods)| Retry {
                    on: on.into_iter().collect(),
                    attempts,
                    all_methods,
                }),
        )
    }

    prop_compose! {
        fn rule_strategy()(
            path_prefix in path_prefix(),
            headers in btree_map(header_name(), header_value(), 0..3),
            methods in btree_set(prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PURGE")], 0..3),
            backends in btree_map(name(), MIN_WEIGHT..=MAX_WEIGHT, 1..4),
            lb in proptest::option::of(prop_oneof![Just(Policy::RoundRobin), Just(Policy::LeastRequest), Just(Policy::RingHash)]),
            session in session(),
            timeouts in (proptest::option::of(1..=MAX_TIMEOUT_MS), proptest::option::of(1..=MAX_TIMEOUT_MS)),
            retry in retry(),
            request_headers in header_ops(),
            response_headers in header_ops(),
            allow_services in btree_set(name(), 0..3),
        ) -> Rule {
            let hashed = matches!(session, Some(Session::Header { .. } | Session::SourceIp));
            let (timeout_ms, per_try) = timeouts;
            Rule {
                r#match: Match {
                    path_prefix,
                    headers,
                    methods: methods.into_iter().map(String::from).collect(),
                },
                backends: backends
                    .into_iter()
                    .map(|(service, weight)| Backend { service, weight })
                    .collect(),
                lb: if hashed { lb.filter(|p| *p == Policy::RingHash) } else { lb },
                session,
                timeout_ms,
                per_try_timeout_ms: match (timeout_ms, per_try) {
                    (Some(t), Some(p)) => Some(p.min(t)),
                    (_, p) => p,
                },
                retry,
                request_headers,
                response_headers,
                allow_services: allow_services.into_iter().collect(),
            }
        }
    }

    prop_compose! {
        fn spec_strategy()(
            name in name(),
            issued_at_ms in any::<u64>(),
            deleted in any::<bool>(),
            hosts in btree_set(host(), 1..4),
            rules in vec(rule_strategy(), 1..4),
        ) -> RouteSpec {
            RouteSpec { name, issued_at_ms, deleted, hosts: hosts.into_iter().collect(), rules }
        }
    }

    proptest! {
        #[test]
        fn valid_specs_round_trip_through_the_body(spec in spec_strategy()) {
            prop_assert_eq!(spec.validate(), Ok(()));
            let body = spec.to_body();
            prop_assert!(body.len() <= RouteDocument::MAX_DOCUMENT_LEN);
            let back = RouteSpec::parse_body(&body).unwrap();
            prop_assert_eq!(&back, &spec);
            prop_assert_eq!(back.to_body(), body);
        }

        #[test]
        fn parse_body_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
            if let Ok(spec) = RouteSpec::parse_body(&bytes) {
                prop_assert_eq!(spec.validate(), Ok(()));
                prop_assert_eq!(RouteSpec::parse_body(&spec.to_body()).unwrap(), spec);
            }
        }

        #[test]
        fn parse_body_never_panics_on_mutated_bodies(
            spec in spec_strategy(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut body = spec.to_body();
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            if let Ok(parsed) = RouteSpec::parse_body(&body) {
                prop_assert_eq!(parsed.validate(), Ok(()));
                prop_assert_eq!(RouteSpec::parse_body(&parsed.to_body()).unwrap(), parsed);
            }
        }

        #[test]
        fn matching_never_panics_and_agrees_with_the_rules(
            specs in vec(spec_strategy(), 0..5),
            authority in "[a-zA-Z0-9.*:@\\[\\]-]{0,30}",
            path in "[/a-zA-Z0-9._~%?#-]{0,30}",
            method in prop_oneof![Just("GET"), Just("POST"), Just("PURGE")],
        ) {
            let table = RouteTable::new(specs);
            if let Some(m) = table.route(&authority, &path, method, no_headers) {
                prop_assert!(!m.route.deleted);
                prop_assert!(m.rule.r#match.headers.is_empty());
                prop_assert!(path_matches(&m.rule.r#match.path_prefix, &path));
                prop_assert_eq!(&m.route.rules[m.rule_index], m.rule);
                // No earlier rule of the same route matched.
                for earlier in &m.route.rules[..m.rule_index] {
                    prop_assert!(!earlier.r#match.matches(&path, method, no_headers));
                }
            }
        }
    }

    /// A document for the merge property: one of three names, an issue time and a
    /// signature tag from small ranges (so ties happen), signed or not, sometimes
    /// with a body for another name.
    fn merge_doc() -> impl Strategy<Value = RouteDocument> {
        (
            0..3usize,
            0..3usize,
            0..4u64,
            0..3usize,
            any::<bool>(),
            0..4u8,
            any::<bool>(),
        )
            .prop_map(|(n, body_n, issued_at, tag, signed, service, deleted)| {
                let names = ["a", "b", "c"];
                // Mostly the document's own name; sometimes another.
                let body_name = if body_n == 0 {
                    names[(n + 1) % 3]
                } else {
                    names[n]
                };
                let mut spec = issued(body_name, issued_at, &format!("s{service}"));
                spec.deleted = deleted && service == 0;
                document(names[n], &spec.to_body(), ["t1", "t2", "t3"][tag], signed)
            })
    }

    proptest! {
        #[test]
        fn the_merge_is_independent_of_input_order(
            (docs, shuffled) in vec(merge_doc(), 0..12)
                .prop_flat_map(|docs| (Just(docs.clone()), Just(docs).prop_shuffle())),
        ) {
            let merged = merge(&docs, verified);
            prop_assert_eq!(&merge(&shuffled, verified), &merged);

            // Every winner is valid, verified and beats every other valid document
            // of its name; no rejected document is a winner.
            for (name, w) in &merged.winners {
                prop_assert_eq!(&w.document.name, name);
                prop_assert!(verified(&w.document));
                for d in docs.iter().filter(|d| &d.name == name) {
                    if let Ok(spec) = check_document(d, verified) {
                        prop_assert!(Precedence::of(d, &spec) <= w.precedence());
                    }
                }
            }
            // Each distinct failing document is reported once, and never wins.
            let mut distinct: Vec<&RouteDocument> = Vec::new();
            for d in &docs {
                if !distinct.contains(&d) {
                    distinct.push(d);
                }
            }
            let failing: Vec<&RouteDocument> = distinct
                .into_iter()
                .filter(|d| check_document(d, verified).is_err())
                .collect();
            prop_assert_eq!(merged.rejected.len(), failing.len());
            for d in failing {
                prop_assert!(merged.rejected.iter().any(|r| r.name == d.name));
                prop_assert!(merged.winners.get(&d.name).is_none_or(|w| &w.document != d));
            }
        }
    }
}
