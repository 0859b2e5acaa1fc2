//! libFuzzer entry of `qs_fuzz_targets::imatrix` (crates/fuzz-targets/src/imatrix.rs holds the body,
//! which tests/replay.rs also runs on stable over the committed seeds and reproducers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qs_fuzz_targets::imatrix::run(data));
