#![no_main]
// Harness: vssl::fuzzing::cache_index (shared with the replay test).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vssl::fuzzing::cache_index(data);
});
