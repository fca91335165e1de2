#![no_main]

// The route body is JSON, not a frame: it gets its own check. Whatever the bytes,
// `parse_body` must not panic, and a body it accepts must be valid and survive the
// canonical form unchanged.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use mesh_proto::route::RouteSpec;
    if let Ok(spec) = RouteSpec::parse_body(data) {
        assert_eq!(spec.validate(), Ok(()));
        let body = spec.to_body();
        let again = RouteSpec::parse_body(&body).expect("a canonical body parses");
        assert_eq!(again, spec);
        assert_eq!(again.to_body(), body);
    }
});
