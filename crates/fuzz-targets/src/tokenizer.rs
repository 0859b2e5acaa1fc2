//! tokenizer.json (and its companions) → GGUF vocabulary (`tokenizer::gguf_tokenizer`).
//! Input: one byte choosing the architecture (`arch::ARCHS`, low bits) and `--tokenizer-pre
//! llama-bpe` (bit 7), then files joined by
//! `crate::SEP`: tokenizer.json, tokenizer_config.json, config.json,
//! tokenizer.model (an empty part: that file is absent; no config part: `{}`).

use crate::{split_files, Scratch};
use quantsmith::arch::ARCHS;

const FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "tokenizer.model",
];

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let arch = &ARCHS[(sel & 127) as usize % ARCHS.len()];
    let parts = split_files(rest, FILES.len());
    let dir = Scratch::new();
    for (name, bytes) in FILES.iter().zip(&parts) {
        if !bytes.is_empty() {
            dir.write(name, bytes);
        }
    }
    let config = parts
        .get(2)
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let pre = (sel & 128 != 0).then_some("llama-bpe");
    let _ = quantsmith::tokenizer::gguf_tokenizer(dir.path(), &config, arch, pre);
}
