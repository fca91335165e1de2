#![no_main]

// The revocation list body is JSON, like a route body: whatever the bytes,
// `parse_body` must not panic, and a list it accepts must be valid, survive the
// canonical form unchanged, and never revoke a certificate no entry names.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use mesh_proto::revocation::{CertFacts, RevocationList};
    if let Ok(list) = RevocationList::parse_body(data) {
        assert_eq!(list.validate(), Ok(()));
        let body = list.to_body();
        let again = RevocationList::parse_body(&body).expect("a canonical body parses");
        assert_eq!(again, list);
        assert_eq!(again.to_body(), body);
        let stranger = CertFacts {
            serial: "not-a-hex-serial",
            node: None,
            not_before_ms: u64::MAX,
        };
        assert!(list.revokes(&stranger).is_none());
    }
});
