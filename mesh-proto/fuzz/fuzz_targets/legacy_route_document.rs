#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::check::<mesh_proto::gossip::LegacyRouteDocument>(data);
});
