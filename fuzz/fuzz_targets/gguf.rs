//! libFuzzer entry of `qs_fuzz_targets::gguf` (crates/fuzz-targets/src/gguf.rs holds the body,
//! which tests/replay.rs also runs on stable over the committed seeds and reproducers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| qs_fuzz_targets::gguf::run(data));
