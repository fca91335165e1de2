//! Delta application: whatever a member with a valid certificate sends, a node
//! never panics and never changes another node's signed state. The input is
//! decoded as a gossip message and handed to a node of a small simulated mesh as
//! if a hostile member had sent it (see `mesh_proto_fuzz::apply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::apply(data);
});
