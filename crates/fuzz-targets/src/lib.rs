//! The fuzz targets' bodies, one module per parser or planner entry (docs/RELIABILITY.md):
//! `fuzz/` wraps each `run` for libFuzzer (nightly), and `tests/replay.rs` runs them on stable
//! over the committed seeds (`fuzz/corpus/`), the reproducers of past findings
//! (`fuzz/artifacts/*/repro-*`) and a bounded number of seeded mutations of each seed: the CI
//! smoke run. Also the helpers they share: several files in one input, and a scratch folder to
//! write them into (the readers take paths).
//!
//! A multi-file input is the files' bytes joined by [`SEP`], in the order the target documents
//! (missing trailing files are absent; an empty part is an absent file unless the target says
//! otherwise). fuzz/seeds.py writes seeds in this form.

pub mod config;
pub mod gguf;
pub mod imatrix;
pub mod plan;
pub mod safetensors_header;
pub mod safetensors_source;
pub mod spm;
pub mod tokenizer;

use std::path::{Path, PathBuf};

/// A target's name and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name `fuzz/` and its corpus folders use.
pub const TARGETS: &[Target] = &[
    ("config", config::run),
    ("gguf", gguf::run),
    ("imatrix", imatrix::run),
    ("plan", plan::run),
    ("safetensors_header", safetensors_header::run),
    ("safetensors_source", safetensors_source::run),
    ("spm", spm::run),
    ("tokenizer", tokenizer::run),
];

/// Separates the files of a multi-file fuzz input.
pub const SEP: &[u8] = b"\n--qsfuzz-file--\n";

/// The files of a multi-file input (see the module doc), at most `max` of them: anything after
/// the `max`-th separator stays in the last part.
pub fn split_files(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < max {
        match find(rest, SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// The inverse of [`split_files`] (seed writers, tests).
pub fn join_files(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SEP)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A fresh folder for one fuzz input, removed when dropped; in /dev/shm when there is one
/// (no disk I/O per execution).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("qsfuzz").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("qsfuzz").tempdir()
        }
        .expect("a scratch folder");
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `bytes` to `name` inside the folder and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("writing a scratch file");
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inverts_join() {
        let parts: [&[u8]; 4] = [b"{}", b"", b"abc", b"\x00\x01"];
        let joined = join_files(&parts);
        assert_eq!(split_files(&joined, 8), parts.to_vec());
        // at most `max` parts: the rest stays in the last one
        let two = split_files(&joined, 2);
        assert_eq!(two.len(), 2);
        assert_eq!(two[0], b"{}");
        assert_eq!(two[1], &joined[2 + SEP.len()..]);
        assert_eq!(split_files(b"no separator", 3), vec![&b"no separator"[..]]);
    }
}
