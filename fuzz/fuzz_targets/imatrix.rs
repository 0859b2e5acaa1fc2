//! The importance-matrix reader `imatrix::load` (GGUF or legacy .dat, chosen by the magic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quantsmith_fuzz::Scratch;

fuzz_target!(|data: &[u8]| {
    let dir = Scratch::new();
    let path = dir.write("imatrix.dat", data);
    if let Ok(im) = qs_formats::imatrix::load(&path) {
        for v in im.entries.values() {
            assert!(!v.is_empty());
        }
    }
});
