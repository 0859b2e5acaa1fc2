//! GGUF tokenizer metadata from a Hugging Face folder (`tokenizer.model`, `tokenizer.json`,
//! `tokenizer_config.json`, `config.json`), as llama.cpp's converter writes it: SentencePiece
//! ("llama") and byte-level BPE ("gpt2") vocabularies.

use crate::arch::VocabStyle;
use crate::error::{Error, Result};
use qs_formats::gguf::Value;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// llama.cpp token types (the same numbers as SentencePiece piece types).
use qs_formats::spm::{BYTE, CONTROL, NORMAL, UNUSED, USER_DEFINED};

fn read_json(p: &Path) -> Result<Option<Json>> {
    if !p.is_file() {
        return Ok(None);
    }
    let bad = |msg: String| Error::Input {
        path: p.to_path_buf(),
        msg,
    };
    let t = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&t)
        .map(Some)
        .map_err(|e| bad(format!("not valid JSON: {e}")))
}

/// The parts of tokenizer.json the converter reads. The vocabulary and the merges (nearly all of
/// the file) are read straight into lists, without a JSON map per entry; the rest stays JSON.
#[derive(Deserialize, Default)]
#[serde(default)]
struct TokFile {
    model: TokModel,
    added_tokens: Json,
    pre_tokenizer: Json,
    decoder: Json,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokModel {
    #[serde(rename = "type")]
    ty: Json,
    byte_fallback: Json,
    vocab: Entries,
    merges: Json,
}

/// `model.vocab`: an object's entries in file order (BPE), or just the length of an array
/// (Unigram); `pairs` is `None` for anything but an object.
#[derive(Default)]
struct Entries {
    pairs: Option<Vec<(String, Json)>>,
    len: usize,
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Json>()? {
                    v.push(e);
                }
                Ok(Entries {
                    len: v.len(),
                    pairs: Some(v),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut len = 0;
                while s.next_element::<IgnoredAny>()?.is_some() {
                    len += 1;
                }
                Ok(Entries { pairs: None, len })
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_unit<E>(self) -> std::result::Result<Entries, E> {
                Ok(Entries::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// tokenizer.json, when the folder has one.
fn read_tokenizer(p: &Path) -> Result<Option<TokFile>> {
    if !p.is_file() {
        return Ok(None);
    }
    let bad = |msg: String| Error::Input {
        path: p.to_path_buf(),
        msg,
    };
    let t = std::fs::read(p).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&t)
        .map(Some)
        .map_err(|e| bad(format!("not a tokenizer.json: {e}")))
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `tokenizer.ggml.pre` name llama.cpp uses for a pre-tokenizer, recognised from the
/// pre-tokenizer definition in tokenizer.json. Unrecognised ones need `--tokenizer-pre`.
fn detect_pre(tok: &TokFile) -> Option<&'static str> {
    let pre = &tok.pre_tokenizer;
    let ty = pre.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if ty == "ByteLevel"
        && pre
            .get("use_regex")
            .and_then(|v| v.as_bool())
            .unwrap_or(true)
    {
        return Some("gpt-2");
    }
    let s = pre.to_string();
    // Digits split one by one, then byte level: SmolLM / StarCoder style
    if ty == "Sequence"
        && s.contains("\"Digits\"")
        && s.contains("\"individual_digits\":true")
        && s.contains("ByteLevel")
        && !s.contains("Split")
    {
        return Some("smollm");
    }
    if s.contains(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}",
    ) {
        return Some("llama-bpe");
    }
    if s.contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}|")
    {
        return Some("qwen2");
    }
    None
}

/// The tokenizer keys, or `None` when the folder has neither tokenizer.model nor
/// tokenizer.json. Chosen the way llama.cpp's converter chooses: a SentencePiece
/// `tokenizer.model` first ("llama" vocabulary), then a tokenizer.json that is SentencePiece-style
/// BPE (byte fallback, `Sequence` decoder; llama architecture only), then byte-level BPE ("gpt2").
pub fn gguf_tokenizer(
    dir: &Path,
    config: &Json,
    arch: &crate::arch::Arch,
    pre_override: Option<&str>,
) -> Result<Option<Vec<(String, Value)>>> {
    let mut tok = read_tokenizer(&dir.join("tokenizer.json"))?;
    let tcfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let spm_path = dir.join("tokenizer.model");
    let mut kv = Vec::new();
    let llama = arch.vocab == VocabStyle::Llama;
    if llama {
        if let Some(b) = tcfg.get("add_prefix_space").and_then(|v| v.as_bool()) {
            kv.push((
                "tokenizer.ggml.add_space_prefix".to_string(),
                Value::Bool(b),
            ));
        }
    }
    // Phi-4 names GPT2Tokenizer: byte-level BPE whatever else the folder holds
    let gpt2_class = tcfg.get("tokenizer_class").and_then(|v| v.as_str()) == Some("GPT2Tokenizer");
    let (vocab, merges) = if arch.vocab == VocabStyle::Phi3 && gpt2_class {
        match &mut tok {
            Some(tok) => (bpe_vocab(dir, tok, config, pre_override)?, true),
            None => return Ok(None),
        }
    } else if spm_path.is_file() {
        (spm_vocab(&spm_path, dir, config, &tcfg)?, false)
    } else if let Some(tok) = &mut tok {
        if llama && is_llama_hf(tok) {
            (llama_hf_vocab(dir, tok, config, &tcfg)?, false)
        } else {
            (bpe_vocab(dir, tok, config, pre_override)?, true)
        }
    } else {
        return Ok(None);
    };
    let n = vocab.n;
    kv.extend(vocab.kv);
    kv.extend(special_vocab(dir, tok.as_mut(), &tcfg, config, n, merges)?);
    if arch.vocab == VocabStyle::Gemma && spm_path.is_file() {
        kv.push((
            "tokenizer.ggml.add_space_prefix".to_string(),
            Value::Bool(false),
        ));
    }
    Ok(Some(kv))
}

/// Gemma 3's converter keeps as many token embedding rows as the tokenizer has tokens: the
/// SentencePiece vocabulary as padded to `vocab_size`, else tokenizer.json's `model.vocab`
/// entries plus its `added_tokens` entries (counted as listed).
pub fn tokenizer_rows(dir: &Path, config: &Json) -> Result<Option<usize>> {
    let spm_path = dir.join("tokenizer.model");
    if spm_path.is_file() {
        let tcfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        return Ok(Some(spm_vocab(&spm_path, dir, config, &tcfg)?.n as usize));
    }
    let Some(tok) = read_tokenizer(&dir.join("tokenizer.json"))? else {
        return Ok(None);
    };
    let added = match &tok.added_tokens {
        Json::Object(m) => m.len(),
        Json::Array(a) => a.len(),
        _ => 0,
    };
    Ok(Some(tok.model.vocab.len + added))
}

struct Vocab {
    kv: Vec<(String, Value)>,
    n: u64,
}

fn vocab_kv(model: &str, tokens: Vec<String>, scores: Option<Vec<f32>>, types: Vec<i32>) -> Vocab {
    let n = tokens.len() as u64;
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String(model.into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("default".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(8, tokens.into_iter().map(Value::String).collect()),
        ),
    ];
    if let Some(s) = scores {
        kv.push((
            "tokenizer.ggml.scores".to_string(),
            Value::Array(6, s.into_iter().map(Value::F32).collect()),
        ));
    }
    kv.push((
        "tokenizer.ggml.token_type".to_string(),
        Value::Array(5, types.into_iter().map(Value::I32).collect()),
    ));
    Vocab { kv, n }
}

/// The model's vocab size: config.json's `vocab_size`, else `fallback` (what the tokenizer file
/// `from` holds), within `qs_numeric::limits::MAX_VOCAB` either way.
fn vocab_size(dir: &Path, config: &Json, fallback: u64, from: &str) -> Result<u64> {
    let max = qs_numeric::limits::MAX_VOCAB;
    let n = qs_model::hparams::int(config, &["vocab_size"], max)
        .map_err(|msg| Error::Input {
            path: dir.join("config.json"),
            msg,
        })?
        .unwrap_or(fallback);
    if n > max {
        return Err(Error::Input {
            path: dir.join(from),
            msg: format!("a vocabulary of {n} tokens (at most {max} accepted)"),
        });
    }
    Ok(n)
}

/// llama.cpp's `_create_vocab_sentencepiece`: pieces with their scores and types, padded to
/// the model's vocab size with `[PADn]`, then added_tokens.json and tokenizer_config's
/// `added_tokens_decoder` on top.
fn spm_vocab(path: &Path, dir: &Path, config: &Json, tcfg: &Json) -> Result<Vocab> {
    let m = qs_formats::spm::read_model(path)?;
    let n = vocab_size(dir, config, m.pieces.len() as u64, "tokenizer.model")? as usize;
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (i, p) in m.pieces.iter().enumerate().take(n) {
        tokens[i] = p.piece.clone();
        scores[i] = p.score;
        types[i] = p.kind;
    }
    if let Some(Json::Object(added)) = read_json(&dir.join("added_tokens.json"))? {
        for (t, id) in added {
            if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < n) {
                tokens[id] = t.clone();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    if let Some(Json::Object(dec)) = tcfg.get("added_tokens_decoder") {
        for (id, d) in dec {
            let (Ok(id), Some(content)) = (
                id.parse::<usize>(),
                d.get("content").and_then(|c| c.as_str()),
            ) else {
                continue;
            };
            if id >= n {
                continue;
            }
            let special = d.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
            if special || looks_special(content) {
                types[id] = CONTROL;
                tokens[id] = content.to_string();
            } else {
                types[id] = USER_DEFINED;
                tokens[id] = content.replace('\u{2581}', " ");
            }
            scores[id] = -1000.0;
        }
    }
    Ok(vocab_kv("llama", tokens, Some(scores), types))
}

/// A tokenizer.json that llama.cpp converts with `LlamaHfVocab`: BPE with byte fallback and a
/// `Sequence` decoder (Llama 2 / Mistral "fast" tokenizers without tokenizer.model).
fn is_llama_hf(tok: &TokFile) -> bool {
    let m = &tok.model;
    m.ty == "BPE" && m.byte_fallback.as_bool().unwrap_or(false) && tok.decoder["type"] == "Sequence"
}

/// Token ids the tokenizer treats as special: the `*_token` entries of tokenizer_config.json
/// and its `additional_special_tokens` (transformers' `all_special_ids`).
fn special_ids(tcfg: &Json, ids: &HashMap<String, u64>) -> Vec<u64> {
    let content = |e: &Json| {
        e.as_str()
            .or_else(|| e.get("content").and_then(|c| c.as_str()))
            .map(str::to_string)
    };
    let mut names: Vec<String> = [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ]
    .iter()
    .filter_map(|k| tcfg.get(*k).and_then(content))
    .collect();
    if let Some(a) = tcfg
        .get("additional_special_tokens")
        .and_then(|a| a.as_array())
    {
        names.extend(a.iter().filter_map(content));
    }
    names.iter().filter_map(|n| ids.get(n).copied()).collect()
}

/// llama.cpp's `LlamaHfVocab`: the base vocab in id order (`<0xXX>` pieces are BYTE, special
/// ids CONTROL), then added tokens beyond it; every score is -1000.
fn llama_hf_vocab(dir: &Path, tok: &TokFile, config: &Json, tcfg: &Json) -> Result<Vocab> {
    let bad = |m: &str| Error::Input {
        path: dir.join("tokenizer.json"),
        msg: m.to_string(),
    };
    let vocab = tok
        .model
        .vocab
        .pairs
        .as_ref()
        .ok_or_else(|| bad("BPE model without a vocab"))?;
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut by_id: HashMap<u64, String> = HashMap::new();
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad("non-integer token id"))?;
        ids.insert(t.clone(), id);
        by_id.insert(id, t.clone());
    }
    let base = vocab.len() as u64;
    let mut extra: Vec<(u64, String)> = Vec::new();
    for a in tok.added_tokens.as_array().into_iter().flatten() {
        if let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
            ids.entry(c.to_string()).or_insert(id);
            if id >= base {
                extra.push((id, c.to_string()));
            }
        }
    }
    extra.sort();
    let specials = special_ids(tcfg, &ids);
    let is_byte = |t: &str| {
        t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
    };
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    for id in 0..base {
        let t = by_id
            .get(&id)
            .ok_or_else(|| bad(&format!("vocab has no token with id {id}")))?;
        types.push(if is_byte(t) {
            BYTE
        } else if specials.contains(&id) {
            CONTROL
        } else {
            NORMAL
        });
        tokens.push(t.clone());
    }
    for (id, t) in extra {
        if id != tokens.len() as u64 {
            return Err(bad(&format!(
                "added token '{t}' has id {id}, expected {}",
                tokens.len()
            )));
        }
        types.push(if specials.contains(&id) {
            CONTROL
        } else {
            USER_DEFINED
        });
        tokens.push(t);
    }
    let n = vocab_size(dir, config, tokens.len() as u64, "tokenizer.json")?;
    if (tokens.len() as u64) > n {
        return Err(bad(&format!(
            "{} tokens but the model's vocab_size is {n}",
            tokens.len()
        )));
    }
    while (tokens.len() as u64) < n {
        tokens.push(format!("[PAD{}]", tokens.len()));
        types.push(UNUSED);
    }
    let scores = vec![-1000.0; tokens.len()];
    Ok(vocab_kv("llama", tokens, Some(scores), types))
}

/// Byte-level BPE ("gpt2"): vocab and added tokens by id, `[PADn]` holes, the pre-tokenizer name.
/// Takes the vocabulary's strings out of `tok`.
fn bpe_vocab(
    dir: &Path,
    tok: &mut TokFile,
    config: &Json,
    pre_override: Option<&str>,
) -> Result<Vocab> {
    let bad = |m: &str| Error::Input {
        path: dir.join("tokenizer.json"),
        msg: m.to_string(),
    };
    let mtype = tok.model.ty.as_str().unwrap_or("");
    if mtype != "BPE" {
        return Err(bad(&format!(
            "tokenizer model '{mtype}' is not supported (BPE is, and SentencePiece via tokenizer.model)"
        )));
    }
    let vocab = tok
        .model
        .vocab
        .pairs
        .take()
        .ok_or_else(|| bad("BPE model without a vocab"))?;
    // (id, token, type) in the order a map by id would see its inserts: vocab, then added tokens
    let mut entries: Vec<(u64, String, i32)> = Vec::with_capacity(vocab.len());
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad("non-integer token id"))?;
        entries.push((id, t, NORMAL));
    }
    for a in tok.added_tokens.as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        let special = a["special"].as_bool().unwrap_or(false);
        let ty = if special || looks_special(content) {
            CONTROL
        } else {
            USER_DEFINED
        };
        entries.push((id, content.to_string(), ty));
    }
    let max_id = entries.iter().map(|e| e.0).max().unwrap_or(0);
    let n = vocab_size(dir, config, max_id.saturating_add(1), "tokenizer.json")?;
    if max_id >= n {
        return Err(bad(&format!(
            "token id {max_id} is beyond the model's vocab_size {n}"
        )));
    }
    // n is within limits::MAX_VOCAB (vocab_size); a later entry for an id replaces an earlier one
    let mut by_id: Vec<Option<(String, i32)>> = vec![None; n as usize];
    for (id, t, ty) in entries {
        by_id[id as usize] = Some((t, ty));
    }
    let (mut tokens, mut types) = (
        Vec::with_capacity(by_id.len()),
        Vec::with_capacity(by_id.len()),
    );
    for (i, e) in by_id.into_iter().enumerate() {
        let (t, ty) = e.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
        tokens.push(t);
        types.push(ty);
    }
    let pre = match pre_override {
        Some(p) => p.to_string(),
        None => detect_pre(tok)
            .ok_or_else(|| bad("pre-tokenizer not recognised: pass --tokenizer-pre NAME (llama.cpp's name, e.g. llama-bpe, qwen2, smollm, gpt-2)"))?
            .to_string(),
    };
    let mut v = vocab_kv("gpt2", tokens, None, types);
    v.kv[1].1 = Value::String(pre);
    Ok(v)
}

/// gguf-py's `SpecialVocab`: merges (byte-level BPE only), special token ids (tokenizer_config's
/// strings resolved through tokenizer.json's added tokens, then config.json's `*_token_id`),
/// add_bos/add_eos, chat template.
fn special_vocab(
    dir: &Path,
    mut tok: Option<&mut TokFile>,
    tcfg: &Json,
    config: &Json,
    n: u64,
    with_merges: bool,
) -> Result<Vec<(String, Value)>> {
    let mut kv = Vec::new();
    if with_merges {
        let merges = match tok.as_deref_mut().map(|t| t.model.merges.take()) {
            Some(Json::Array(m)) => m,
            _ => Vec::new(),
        };
        let merges: Vec<Value> = merges
            .into_iter()
            .filter_map(|x| match x {
                Json::String(s) => Some(s),
                // [a, b] pairs: spaces inside a part become U+0120 as gguf-py does
                Json::Array(p) => Some(
                    p.iter()
                        .filter_map(|v| v.as_str())
                        .map(|s| s.replace(' ', "\u{120}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            })
            .map(Value::String)
            .collect();
        kv.push(("tokenizer.ggml.merges".to_string(), Value::Array(8, merges)));
    }
    let added: &[Json] = tok
        .as_deref()
        .and_then(|t| t.added_tokens.as_array())
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    for (typ, key) in [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
        ("cls", "cls_token_id"),
        ("mask", "mask_token_id"),
    ] {
        let content = tcfg.get(format!("{typ}_token")).and_then(|e| {
            e.as_str().map(str::to_string).or_else(|| {
                e.get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
        });
        let from_tok = content.and_then(|c| {
            added
                .iter()
                .find(|a| a["content"].as_str() == Some(c.as_str()))
                .and_then(|a| a["id"].as_u64())
        });
        let id = from_tok.or_else(|| {
            config
                .get(format!("{typ}_token_id"))
                .and_then(|v| v.as_u64())
        });
        if let Some(id) = id.filter(|&i| i < n) {
            kv.push((format!("tokenizer.ggml.{key}"), Value::U32(id as u32)));
        }
    }
    for (k, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = tcfg.get(k).and_then(|v| v.as_bool()) {
            kv.push((key.to_string(), Value::Bool(b)));
        }
    }
    let template = match tcfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        _ => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(_) => read_json(&dir.join("chat_template.json"))?.and_then(|j| {
                j.get("chat_template")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            }),
        },
    };
    if let Some(t) = template {
        kv.push(("tokenizer.chat_template".to_string(), Value::String(t)));
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv<'a>(kv: &'a [(String, Value)], k: &str) -> &'a Value {
        &kv.iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .1
    }

    #[test]
    fn llama_hf_vocab_types_and_added_tokens() {
        let dir = std::env::temp_dir().join(format!("qs-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = json!({
            "model": {"type": "BPE", "byte_fallback": true, "vocab":
                {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "\u{2581}a": 4, "b": 5}},
            "decoder": {"type": "Sequence", "decoders": []},
            "added_tokens": [
                {"id": 1, "content": "<s>", "special": true},
                {"id": 6, "content": "<tool>", "special": true},
                {"id": 7, "content": "hello", "special": false}
            ]
        });
        std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
        let tcfg = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "additional_special_tokens": ["<tool>"], "add_bos_token": true});
        std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
        let config = json!({"vocab_size": 9, "bos_token_id": 1, "eos_token_id": 2});
        let kvs = gguf_tokenizer(&dir, &config, &crate::arch::ARCHS[0], None)
            .unwrap()
            .unwrap();
        let strs = |v: &Value| match v {
            Value::Array(_, a) => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::I32(i) => i.to_string(),
                    Value::F32(f) => f.to_string(),
                    _ => panic!(),
                })
                .collect::<Vec<_>>(),
            _ => panic!(),
        };
        assert_eq!(
            kv(&kvs, "tokenizer.ggml.model"),
            &Value::String("llama".into())
        );
        assert_eq!(
            strs(kv(&kvs, "tokenizer.ggml.tokens")),
            [
                "<unk>",
                "<s>",
                "</s>",
                "<0x0A>",
                "\u{2581}a",
                "b",
                "<tool>",
                "hello",
                "[PAD8]"
            ]
        );
        assert_eq!(
            strs(kv(&kvs, "tokenizer.ggml.token_type")),
            ["3", "3", "3", "6", "1", "1", "3", "4", "5"]
        );
        assert!(strs(kv(&kvs, "tokenizer.ggml.scores"))
            .iter()
            .all(|s| s == "-1000"));
        assert_eq!(kv(&kvs, "tokenizer.ggml.bos_token_id"), &Value::U32(1));
        assert_eq!(kv(&kvs, "tokenizer.ggml.add_bos_token"), &Value::Bool(true));
        assert!(!kvs.iter().any(|(k, _)| k == "tokenizer.ggml.merges"));
        // another architecture converts the same file as byte-level BPE
        let err = gguf_tokenizer(&dir, &config, &crate::arch::ARCHS[1], None).unwrap_err();
        assert!(
            err.to_string().contains("pre-tokenizer not recognised"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
