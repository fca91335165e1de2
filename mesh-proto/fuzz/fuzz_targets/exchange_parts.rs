#![no_main]

// An HTTP exchange's parts as either end of a tunnel stream reads them: the
// input arrives in pieces of any size (the first byte sets the piece size).
// Reading piece by piece must agree with reading everything at once (the same
// parts, then the same refusal or the same leftover), nothing may panic, and
// every accepted part must re-encode to bytes that decode to it again.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    mesh_proto_fuzz::check_exchange(stream, usize::from(step % 64) + 1);
});
