#![no_main]
// Harness: vssl::fuzzing::checkpoint (shared with the replay test).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vssl::fuzzing::checkpoint(data);
});
