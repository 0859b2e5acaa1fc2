//! Calibration text for GPTQ/AWQ: a plain-text or JSONL (`"text"` field) file, or the shipped
//! public-domain default, tokenized with the model's own `tokenizer.json` (the `tokenizers`
//! crate) and cut into `samples` sequences of `seq_len` tokens at seed-chosen offsets.

use crate::error::{file_err, io_err, Result};
use qs_numeric::synth::Rng;
use std::path::Path;

/// Public-domain English (Lincoln, the Declaration of Independence, Genesis (KJV), Shakespeare,
/// Dickens, Austen, Melville), used when no `--calib` file is given.
pub const DEFAULT_TEXT: &str = include_str!("../data/calib-default.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibConfig {
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            samples: 128,
            seq_len: 512,
            seed: 0,
        }
    }
}

/// The calibration text: a file (JSONL when every non-empty line is a JSON object with a
/// "text" string) or the default.
pub fn load_text(path: Option<&Path>) -> Result<String> {
    let Some(p) = path else {
        return Ok(DEFAULT_TEXT.to_string());
    };
    let raw = std::fs::read_to_string(p).map_err(io_err(p))?;
    let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    let jsonl = !lines.is_empty() && lines.iter().all(|l| l.trim_start().starts_with('{'));
    if !jsonl {
        return Ok(raw);
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l)
            .map_err(|e| file_err(p, format!("line {}: not JSON: {e}", i + 1)))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| file_err(p, format!("line {}: no \"text\" string", i + 1)))?;
        out.push_str(t);
        out.push_str("\n\n");
    }
    Ok(out)
}

/// Token sequences for calibration.
pub fn sequences(tokenizer_json: &Path, text: &str, cfg: &CalibConfig) -> Result<Vec<Vec<u32>>> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json)
        .map_err(|e| file_err(tokenizer_json, format!("cannot load tokenizer: {e}")))?;
    let enc = tok.encode(text, false).map_err(|e| {
        file_err(
            tokenizer_json,
            format!("tokenizing the calibration text: {e}"),
        )
    })?;
    let ids = enc.get_ids();
    if ids.len() < cfg.seq_len.max(1) {
        return Err(file_err(
            tokenizer_json,
            format!(
                "calibration text is {} tokens, shorter than one sequence of {}",
                ids.len(),
                cfg.seq_len
            ),
        ));
    }
    let mut rng = Rng::new(cfg.seed);
    let span = ids.len() - cfg.seq_len + 1;
    Ok((0..cfg.samples)
        .map(|_| {
            let start = (rng.next_u64() % span as u64) as usize;
            ids[start..start + cfg.seq_len].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama/tokenizer.json")
    }

    #[test]
    fn sequences_are_seeded_windows_of_the_text() {
        let cfg = CalibConfig {
            samples: 8,
            seq_len: 64,
            seed: 3,
        };
        let a = sequences(&tokenizer(), DEFAULT_TEXT, &cfg).unwrap();
        assert_eq!(a.len(), 8);
        assert!(a
            .iter()
            .all(|s| s.len() == 64 && s.iter().all(|&t| t < 512)));
        assert_eq!(
            a,
            sequences(&tokenizer(), DEFAULT_TEXT, &cfg).unwrap(),
            "deterministic"
        );
        let b = sequences(&tokenizer(), DEFAULT_TEXT, &CalibConfig { seed: 4, ..cfg }).unwrap();
        assert_ne!(a, b, "the seed picks the windows");
        assert!(sequences(&tokenizer(), "too short", &cfg)
            .unwrap_err()
            .to_string()
            .contains("shorter"));
    }

    #[test]
    fn jsonl_and_plain_text() {
        let d = std::env::temp_dir().join(format!("qs-calib-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let j = d.join("c.jsonl");
        std::fs::write(
            &j,
            "{\"text\": \"alpha\"}\n\n{\"text\": \"beta\", \"id\": 2}\n",
        )
        .unwrap();
        assert_eq!(load_text(Some(&j)).unwrap(), "alpha\n\nbeta\n\n");
        let t = d.join("c.txt");
        std::fs::write(&t, "plain {text}\n").unwrap();
        assert_eq!(load_text(Some(&t)).unwrap(), "plain {text}\n");
        std::fs::write(&j, "{\"text\": 1}\n").unwrap();
        assert!(load_text(Some(&j)).is_err());
        std::fs::remove_dir_all(&d).ok();
    }
}
