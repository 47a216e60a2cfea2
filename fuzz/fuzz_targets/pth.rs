#![no_main]
// Harness: vssl::fuzzing::pth (shared with the replay test).
//
// libfuzzer-sys's panic hook aborts on every panic, even a caught one. `read_pth`
// catches panics of candle's pickle and zip readers on purpose (and reports "not a
// readable PyTorch checkpoint"), so this target puts the default, printing hook back:
// a caught panic is then what it is for a user, and an uncaught one still aborts
// (libfuzzer-sys aborts when a panic leaves the target).
libfuzzer_sys::fuzz_target!(
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| {
        let _ = vssl::fuzzing::pth(data);
    }
);
