//! A model folder as `ModelSource::open` reads it: a sharded set (`model.safetensors.index.json`
//! and its shards) or one safetensors file, and config.json. Input: files joined by
//! `crate::SEP`: index.json, config.json, then up to three shards named
//! `model-0000K-of-00003.safetensors` (an empty index or config part: that file is absent; with
//! no index, the folder holds the shards, so one shard opens as a single file and more are
//! refused). Then `inspect` on the folder, and every tensor's bytes of what opened.

use crate::{split_files, Scratch};
use qs_formats::source::{ModelSource, INDEX_NAME};

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let parts = split_files(data, 5);
    let dir = Scratch::new();
    let get = |i: usize| parts.get(i).copied().unwrap_or(&[]);
    if !get(0).is_empty() {
        dir.write(INDEX_NAME, get(0));
    }
    if !get(1).is_empty() {
        dir.write("config.json", get(1));
    }
    for (k, shard) in parts.iter().skip(2).enumerate() {
        dir.write(&format!("model-{:05}-of-00003.safetensors", k + 1), shard);
    }
    let _ = quantsmith::inspect(dir.path());
    let Ok(src) = ModelSource::open(dir.path()) else {
        return;
    };
    for t in &src.tensors {
        let b = src.bytes(t);
        assert_eq!(
            b.len(),
            t.info.numel() * t.info.dtype.size(),
            "{}",
            t.info.name
        );
        let _ = src.row_bytes(t);
        let _ = src.path_of(t);
    }
    let _ = src.total_bytes();
    let _ = src.side_files();
    let _ = quantsmith::meta::model_name(&src);
}
