#![no_main]
// Harness: vssl::fuzzing::recipe (shared with the replay test).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vssl::fuzzing::recipe(data);
});
