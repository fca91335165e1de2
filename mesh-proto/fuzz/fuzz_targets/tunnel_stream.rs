#![no_main]

// A tunnel stream as the serving node reads it: the caller's request frame (a
// `StreamHeader`) arrives in pieces of any size, followed by payload; the
// caller then reads the answer frame (a `StreamStatus`) the same way. Reading
// piece by piece must agree with reading everything at once: `Incomplete`
// (asking for at least one byte that is not there yet) until the frame is
// whole, the same refusal as soon as the bytes are bad, and the same value and
// length once it is whole. The first input byte sets the piece size.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    mesh_proto_fuzz::check_incremental::<mesh_proto::tunnel::StreamHeader>(stream, step);
    mesh_proto_fuzz::check_incremental::<mesh_proto::tunnel::StreamStatus>(stream, step);
});
