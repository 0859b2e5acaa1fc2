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

/// Calibration sequences cut from a text: disjoint windows, so no token is counted twice and
/// the held-out windows share no text with the fitted ones.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibSet {
    /// Windows GPTQ fits on (seeded choice among the windows of the text's first 90 %).
    pub fit: Vec<Vec<u32>>,
    /// Windows from the text's last 10 % (at least one), for the held-out error.
    pub held: Vec<Vec<u32>>,
    /// Tokens in the whole text.
    pub text_tokens: usize,
}

/// Tokenizes `text` with the model's tokenizer.json and cuts it into windows of `seq_len`
/// tokens: the last tenth of the windows (at least one) is held out; `samples` of the others
/// (all of them when the text has fewer) are chosen with the seed.
pub fn sequences(tokenizer_json: &Path, text: &str, cfg: &CalibConfig) -> Result<CalibSet> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json)
        .map_err(|e| file_err(tokenizer_json, format!("cannot load tokenizer: {e}")))?;
    let enc = tok.encode(text, false).map_err(|e| {
        file_err(
            tokenizer_json,
            format!("tokenizing the calibration text: {e}"),
        )
    })?;
    let ids = enc.get_ids();
    let seq = cfg.seq_len.max(1);
    let windows = ids.len() / seq;
    if windows < 2 {
        return Err(file_err(
            tokenizer_json,
            format!(
                "calibration text is {} tokens: calibration needs at least two sequences of {seq} (one is held out; a longer text or a smaller --calib-seq-len)",
                ids.len()
            ),
        ));
    }
    let held_n = (windows / 10).max(1);
    let fit_n = windows - held_n;
    let window = |w: usize| ids[w * seq..(w + 1) * seq].to_vec();
    // a seeded partial shuffle of the fit windows, first `samples` kept, in text order
    let mut order: Vec<usize> = (0..fit_n).collect();
    let mut rng = Rng::new(cfg.seed);
    let take = cfg.samples.min(fit_n);
    for i in 0..take {
        let j = i + (rng.next_u64() % (fit_n - i) as u64) as usize;
        order.swap(i, j);
    }
    let mut chosen = order[..take].to_vec();
    chosen.sort_unstable();
    let held_take = (take / 10).max(1).min(held_n);
    Ok(CalibSet {
        fit: chosen.into_iter().map(window).collect(),
        held: (fit_n..fit_n + held_take).map(window).collect(),
        text_tokens: ids.len(),
    })
}

/// The tokens that follow BOS in self-generated calibration text: `n` ids drawn with the seed,
/// uniformly over the model's `vocab` (capped at the tokenizer's), skipping the tokenizer's
/// special tokens, so the sequences start across the vocabulary rather than all at the same
/// most likely opening.
pub fn first_tokens(tokenizer_json: &Path, n: usize, vocab: usize, seed: u64) -> Result<Vec<u32>> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json)
        .map_err(|e| file_err(tokenizer_json, format!("cannot load tokenizer: {e}")))?;
    let special: std::collections::HashSet<u32> = tok
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&id, _)| id)
        .collect();
    let range = vocab.min(tok.get_vocab_size(true)) as u64;
    if range as usize <= special.len() {
        return Err(file_err(
            tokenizer_json,
            format!("no ordinary token among the first {range} ids"),
        ));
    }
    let mut rng = Rng::new(seed ^ 0x5eed_f125_7700_0001);
    Ok((0..n)
        .map(|_| loop {
            let id = (rng.next_u64() % range) as u32;
            if !special.contains(&id) {
                break id;
            }
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
    fn sequences_are_disjoint_seeded_windows_with_a_held_out_tail() {
        let cfg = CalibConfig {
            samples: 8,
            seq_len: 64,
            seed: 3,
        };
        let a = sequences(&tokenizer(), DEFAULT_TEXT, &cfg).unwrap();
        let all = tokenizers::Tokenizer::from_file(tokenizer())
            .unwrap()
            .encode(DEFAULT_TEXT, false)
            .unwrap()
            .get_ids()
            .to_vec();
        let windows = all.len() / 64;
        assert!(windows > 12, "{windows}");
        assert_eq!(a.fit.len(), 8);
        assert_eq!(a.held.len(), 1);
        assert_eq!(a.text_tokens, all.len());
        // every sequence is a distinct aligned window; held-out ones come after all fit ones
        let pos = |s: &Vec<u32>| {
            (0..windows)
                .find(|w| &all[w * 64..(w + 1) * 64] == s.as_slice())
                .expect("an aligned window of the text")
        };
        let fp: Vec<usize> = a.fit.iter().map(pos).collect();
        assert!(fp.windows(2).all(|p| p[0] < p[1]), "distinct, in order");
        assert!(a
            .held
            .iter()
            .map(pos)
            .all(|h| h >= windows - (windows / 10).max(1)));
        assert!(fp.iter().all(|&p| p < windows - (windows / 10).max(1)));
        assert_eq!(
            a,
            sequences(&tokenizer(), DEFAULT_TEXT, &cfg).unwrap(),
            "deterministic"
        );
        let b = sequences(&tokenizer(), DEFAULT_TEXT, &CalibConfig { seed: 4, ..cfg }).unwrap();
        assert_ne!(a.fit, b.fit, "the seed picks the windows");
        // asking for more than the text holds gives every fit window once
        let many = sequences(
            &tokenizer(),
            DEFAULT_TEXT,
            &CalibConfig {
                samples: 10_000,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(many.fit.len(), windows - (windows / 10).max(1));
        assert!(sequences(&tokenizer(), "too short", &cfg)
            .unwrap_err()
            .to_string()
            .contains("at least two sequences"));
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
