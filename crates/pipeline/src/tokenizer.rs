//! GGUF tokenizer metadata from a Hugging Face folder (`tokenizer.json`,
//! `tokenizer_config.json`, `config.json`), as llama.cpp's converter writes it for byte-level
//! BPE ("gpt2") vocabularies.

use crate::error::{Error, Result};
use qs_formats::gguf::Value;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// llama.cpp token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(p: &Path) -> Result<Option<Json>> {
    if !p.is_file() {
        return Ok(None);
    }
    let t =
        std::fs::read_to_string(p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&t)
        .map(Some)
        .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", p.display())))
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
fn detect_pre(tok: &Json) -> Option<&'static str> {
    let pre = tok.get("pre_tokenizer")?;
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

/// The tokenizer keys, or `None` when the folder has no tokenizer.json.
pub fn gguf_tokenizer(
    dir: &Path,
    config: &Json,
    pre_override: Option<&str>,
) -> Result<Option<Vec<(String, Value)>>> {
    let Some(tok) = read_json(&dir.join("tokenizer.json"))? else {
        return Ok(None);
    };
    let tcfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let bad = |m: &str| Error::Config(format!("{}: {m}", dir.join("tokenizer.json").display()));
    let model = tok.get("model").ok_or_else(|| bad("no \"model\""))?;
    let mtype = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if mtype != "BPE" {
        return Err(bad(&format!(
            "tokenizer model '{mtype}' is not supported yet (byte-level BPE is)"
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("BPE model without a vocab"))?;
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad("non-integer token id"))?;
        by_id.insert(id, (t.clone(), NORMAL));
    }
    let added = tok
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    for a in &added {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(|v| v.as_u64()),
            a.get("content").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let special = a.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
        let ty = if special || looks_special(content) {
            CONTROL
        } else {
            USER_DEFINED
        };
        by_id.insert(id, (content.to_string(), ty));
    }
    let max_id = by_id.keys().max().copied().unwrap_or(0);
    let n = config
        .get("vocab_size")
        .and_then(|v| v.as_u64())
        .unwrap_or(max_id + 1);
    if max_id >= n {
        return Err(bad(&format!(
            "token id {max_id} is beyond the model's vocab_size {n}"
        )));
    }
    let (mut tokens, mut types) = (
        Vec::with_capacity(n as usize),
        Vec::with_capacity(n as usize),
    );
    for i in 0..n {
        match by_id.get(&i) {
            Some((t, ty)) => {
                tokens.push(Value::String(t.clone()));
                types.push(Value::I32(*ty));
            }
            None => {
                tokens.push(Value::String(format!("[PAD{i}]")));
                types.push(Value::I32(UNUSED));
            }
        }
    }
    let merges: Vec<Value> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    Json::String(s) => Some(s.clone()),
                    Json::Array(p) => Some(
                        p.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    _ => None,
                })
                .map(Value::String)
                .collect()
        })
        .unwrap_or_default();
    let pre = match pre_override {
        Some(p) => p.to_string(),
        None => detect_pre(&tok)
            .ok_or_else(|| bad("pre-tokenizer not recognised: pass --tokenizer-pre NAME (llama.cpp's name, e.g. llama-bpe, qwen2, smollm, gpt-2)"))?
            .to_string(),
    };
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre)),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(8, tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(5, types),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(8, merges)),
    ];
    // Special tokens: tokenizer_config's strings resolved through added_tokens, then
    // config.json's *_token_id for the rest (as gguf-py's SpecialVocab does).
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
                .find(|a| a.get("content").and_then(|v| v.as_str()) == Some(c.as_str()))
                .and_then(|a| a.get("id"))
                .and_then(|v| v.as_u64())
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
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    if let Some(t) = template {
        kv.push(("tokenizer.chat_template".to_string(), Value::String(t)));
    }
    Ok(Some(kv))
}
