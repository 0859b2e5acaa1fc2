//! `quantize export model.gguf -o folder/`: the reverse path. A llama.cpp GGUF of a known
//! architecture becomes a Hugging Face folder: tensors dequantized (F32 by default), names
//! mapped back and the llama q/k permutation undone, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json` rebuilt from the metadata.

use crate::arch::{self, Arch, ARCHS};
use crate::error::{Error, Result};
use crate::jobs::{chunk_rows, pool, run_jobs, CHUNK_ELEMS};
use crate::Progress;
use qs_formats::gguf::{GgufFile, GgufTensor, Value};
use qs_formats::output::{check_not_input, AtomicDir};
use qs_formats::safetensors::{plan_layout, StEntry};
use qs_numeric::layout::rows_cols;
use qs_numeric::{DType, Scheme};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;

/// Options of an export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Element type of the written tensors (F32, F16 or BF16).
    pub dtype: DType,
    pub force: bool,
    pub threads: Option<usize>,
}

fn err(g: &GgufFile, m: impl std::fmt::Display) -> Error {
    Error::Input {
        path: g.path.clone(),
        msg: m.to_string(),
    }
}

fn tensor_err(g: &GgufFile, t: &str, m: impl std::fmt::Display) -> Error {
    Error::Tensor {
        file: g.path.clone(),
        tensor: t.to_string(),
        msg: m.to_string(),
    }
}

fn u(g: &GgufFile, k: &str) -> Option<u64> {
    g.get(k).and_then(|v| v.as_u64())
}

fn f(g: &GgufFile, k: &str) -> Option<f64> {
    match g.get(k)? {
        Value::F32(v) => Some(*v as f64),
        Value::F64(v) => Some(*v),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        v => v.as_u64().map(|x| x as f64),
    }
}

fn s<'a>(g: &'a GgufFile, k: &str) -> Option<&'a str> {
    match g.get(k)? {
        Value::String(v) => Some(v),
        _ => None,
    }
}

/// config.json from the GGUF hyper-parameters.
pub(crate) fn config_json(
    g: &GgufFile,
    a: &Arch,
    vocab: usize,
    tied: bool,
    dtype: DType,
) -> Result<Json> {
    let p = a.name;
    let need =
        |k: &str| u(g, &format!("{p}.{k}")).ok_or_else(|| err(g, format!("missing {p}.{k}")));
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let mut c = Map::new();
    c.insert("architectures".into(), json!([a.hf_class]));
    c.insert("model_type".into(), json!(a.model_types[0].name));
    c.insert("hidden_size".into(), json!(hidden));
    if let Some(ff) = u(g, &format!("{p}.feed_forward_length")) {
        c.insert("intermediate_size".into(), json!(ff));
    }
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(u(g, &format!("{p}.attention.head_count_kv")).unwrap_or(heads)),
    );
    if let Some(hd) = u(g, &format!("{p}.attention.key_length")).or(hidden.checked_div(heads)) {
        c.insert("head_dim".into(), json!(hd));
    }
    if let Some(ctx) = u(g, &format!("{p}.context_length")) {
        c.insert("max_position_embeddings".into(), json!(ctx));
    }
    if let Some(e) = f(g, &format!("{p}.attention.layer_norm_rms_epsilon")) {
        // f32 in GGUF: print the shortest decimal that reads back to it
        c.insert(
            "rms_norm_eps".into(),
            json!((e as f32).to_string().parse::<f64>().unwrap_or(e)),
        );
    }
    if let Some(t) = f(g, &format!("{p}.rope.freq_base")) {
        c.insert(
            "rope_theta".into(),
            json!((t as f32).to_string().parse::<f64>().unwrap_or(t)),
        );
    }
    if let (Some(long), Some(short)) = (f32_values(g, GENERATED[0]), f32_values(g, GENERATED[1])) {
        // LongRoPE: the factors the converter wrote as tensors, over the rotary dimensions
        let mut r = Map::new();
        r.insert("rope_type".into(), json!("longrope"));
        r.insert("long_factor".into(), json!(long));
        r.insert("short_factor".into(), json!(short));
        if let (Some(dims), Some(hd)) = (
            u(g, &format!("{p}.rope.dimension_count")),
            u(g, &format!("{p}.attention.key_length")).or(hidden.checked_div(heads)),
        ) {
            if dims < hd {
                r.insert(
                    "partial_rotary_factor".into(),
                    json!(dims as f64 / hd as f64),
                );
            }
        }
        if let Some(o) = u(g, &format!("{p}.rope.scaling.original_context_length")) {
            r.insert("original_max_position_embeddings".into(), json!(o));
            c.insert("original_max_position_embeddings".into(), json!(o));
        }
        c.insert("rope_scaling".into(), Json::Object(r));
    } else {
        match s(g, &format!("{p}.rope.scaling.type")) {
            Some(ty @ ("linear" | "yarn")) => {
                let mut r = Map::new();
                r.insert("rope_type".into(), json!(ty));
                if let Some(fa) = f(g, &format!("{p}.rope.scaling.factor")) {
                    r.insert("factor".into(), json!(fa));
                }
                if let Some(o) = u(g, &format!("{p}.rope.scaling.original_context_length")) {
                    r.insert("original_max_position_embeddings".into(), json!(o));
                }
                c.insert("rope_scaling".into(), Json::Object(r));
            }
            _ => {
                c.insert("rope_scaling".into(), Json::Null);
            }
        }
    }
    if let Some(m) = a.moe {
        for (key, gk) in [
            (m.count_key, "expert_count"),
            ("num_experts_per_tok", "expert_used_count"),
            ("moe_intermediate_size", "expert_feed_forward_length"),
            (
                "shared_expert_intermediate_size",
                "expert_shared_feed_forward_length",
            ),
        ] {
            if let Some(n) = u(g, &format!("{p}.{gk}")) {
                c.insert(key.into(), json!(n));
            }
        }
        if let Some(r) = m.renormalize {
            c.insert("norm_topk_prob".into(), json!(r));
        }
    }
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("tie_word_embeddings".into(), json!(tied));
    let layers = u(g, &format!("{p}.block_count")).filter(|&l| l <= qs_numeric::limits::MAX_LAYERS);
    if let (Some(n), Some(layers)) = (a.nope_every, layers) {
        // the layers llama.cpp runs without rope, as transformers lists them (1: rope)
        let l: Vec<u8> = (0..layers as usize)
            .map(|l| u8::from((l + 1) % n != 0))
            .collect();
        c.insert("no_rope_layers".into(), json!(l));
    }
    c.insert(
        "attention_bias".into(),
        json!(g.tensors.iter().any(|t| t.name.ends_with("attn_q.bias"))),
    );
    c.insert("mlp_bias".into(), json!(false));
    for (k, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(v) = u(g, key) {
            c.insert(k.into(), json!(v));
        }
    }
    if let (Some(keys), Some(layers)) = (a.hf_keys, layers) {
        let key = |k: &str| {
            let k = format!("{p}.{k}");
            u(g, &k).map(|v| v as f64).or_else(|| f(g, &k))
        };
        keys(&key, layers, &mut c);
    }
    let td = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    c.insert("torch_dtype".into(), json!(td));
    Ok(Json::Object(c))
}

/// Tensors llama.cpp's converter generates from config.json (LongRoPE's factors): read back
/// into config.json, not exported as weights.
pub(crate) const GENERATED: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// The f32 values of a 1-D F32 GGUF tensor.
fn f32_values(g: &GgufFile, name: &str) -> Option<Vec<f64>> {
    let t = g.tensors.iter().find(|t| t.name == name)?;
    if t.ty != qs_numeric::GgmlType::F32 {
        return None;
    }
    Some(
        g.bytes(t)
            .chunks_exact(4)
            .map(|b| {
                // the shortest decimal that reads back to the f32
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                v.to_string().parse::<f64>().unwrap_or(v as f64)
            })
            .collect(),
    )
}

/// The pre-tokenizer definition llama.cpp's pre name stands for.
fn pre_tokenizer(pre: &str) -> Json {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let byte_level_noregex = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    match pre {
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
            byte_level_noregex]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
            byte_level_noregex]}),
        _ => byte_level,
    }
}

/// The tokenizer files an HF folder needs, rebuilt from GGUF metadata.
pub(crate) struct TokenizerFiles {
    /// tokenizer.json (byte-level BPE).
    pub json: Option<Json>,
    /// tokenizer.model (SentencePiece).
    pub model: Option<Vec<u8>>,
    pub config: Json,
}

/// tokenizer.json + tokenizer_config.json for a "gpt2" (byte-level BPE) vocabulary,
/// tokenizer.model + tokenizer_config.json for a "llama" (SentencePiece) one.
pub(crate) fn tokenizer_files(g: &GgufFile) -> Result<Option<TokenizerFiles>> {
    let model = s(g, "tokenizer.ggml.model");
    if !matches!(model, Some("gpt2" | "llama")) {
        return Ok(None);
    }
    let tokens: Vec<&str> = match g.get("tokenizer.ggml.tokens") {
        Some(Value::Array(_, v)) => v
            .iter()
            .filter_map(|t| {
                if let Value::String(s) = t {
                    Some(s.as_str())
                } else {
                    None
                }
            })
            .collect(),
        _ => return Err(err(g, "tokenizer.ggml.tokens missing")),
    };
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(_, v)) => v
            .iter()
            .map(|t| if let Value::I32(x) = t { *x as i64 } else { 1 })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let spm = if model == Some("llama") {
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
            Some(Value::Array(_, v)) => v
                .iter()
                .map(|t| if let Value::F32(x) = t { *x } else { 0.0 })
                .collect(),
            _ => vec![0.0; tokens.len()],
        };
        use qs_formats::spm::{Piece, SpmModel, BYTE};
        let pieces: Vec<Piece> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| Piece {
                piece: t.to_string(),
                score: scores.get(i).copied().unwrap_or(0.0),
                kind: types.get(i).copied().unwrap_or(1) as i32,
            })
            .collect();
        let byte_fallback = pieces.iter().any(|p| p.kind == BYTE);
        Some(qs_formats::spm::encode_model(&SpmModel {
            pieces,
            model_type: 2,
            byte_fallback,
            add_dummy_prefix: !matches!(
                g.get("tokenizer.ggml.add_space_prefix"),
                Some(Value::Bool(false))
            ),
        }))
    } else {
        None
    };
    let merges: Vec<Json> = match g.get("tokenizer.ggml.merges") {
        Some(Value::Array(_, v)) => v
            .iter()
            .filter_map(|t| {
                if let Value::String(s) = t {
                    Some(json!(s))
                } else {
                    None
                }
            })
            .collect(),
        _ => vec![],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let ty = types.get(i).copied().unwrap_or(1);
        if ty == 5 && t.starts_with("[PAD") {
            continue; // padding the converter invented
        }
        vocab.insert(t.to_string(), json!(i));
        if ty == 3 || ty == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == 4, "special": ty == 3}));
        }
    }
    let pre = s(g, "tokenizer.ggml.pre").unwrap_or("default");
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    let mut tc = Map::new();
    let tok_at = |k: &str| {
        u(g, k)
            .and_then(|i| tokens.get(i as usize))
            .map(|t| json!(t))
    };
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = tok_at(key) {
            tc.insert(name.into(), t);
        }
    }
    for (name, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(Value::Bool(b)) = g.get(key) {
            tc.insert(name.into(), json!(b));
        }
    }
    if let Some(t) = s(g, "tokenizer.chat_template") {
        tc.insert("chat_template".into(), json!(t));
    }
    if let Some(Value::Bool(b)) = g.get("tokenizer.ggml.add_space_prefix") {
        tc.insert("add_prefix_space".into(), json!(b));
    }
    tc.insert(
        "tokenizer_class".into(),
        json!(if spm.is_some() {
            "LlamaTokenizer"
        } else {
            "GPT2Tokenizer"
        }),
    );
    tc.insert(
        "model_max_length".into(),
        json!(u(
            g,
            &format!(
                "{}.context_length",
                s(g, "general.architecture").unwrap_or("")
            )
        )
        .unwrap_or(2048)),
    );
    Ok(Some(TokenizerFiles {
        json: spm.is_none().then_some(tok),
        model: spm,
        config: Json::Object(tc),
    }))
}

/// Where a GGUF tensor came from in the HF model.
#[derive(Debug, Clone)]
pub(crate) struct HfOf {
    pub hf: String,
    /// llama's q/k row permutation (heads).
    pub permute: Option<usize>,
    /// Stored as 1 + the HF value (Gemma's norms).
    pub shift: bool,
}

/// GGUF name → where it came from.
pub(crate) type NameMap = BTreeMap<String, HfOf>;

/// config.json for a GGUF's hyper-parameters, checked ([`qs_model::HParams`]) against each
/// other and the GGUF's tensors, and the GGUF name → (HF name, permutation heads) map.
pub(crate) fn gguf_config(
    g: &GgufFile,
    a: &Arch,
    vocab: usize,
    tied: bool,
    dtype: DType,
) -> Result<(Json, NameMap)> {
    let config = config_json(g, a, vocab, tied, dtype)?;
    let hp = qs_model::HParams::from_config(&config)
        .map_err(|m| err(g, format!("hyper-parameters (as config.json): {m}")))?;
    let names = inverse_names(a, &config, g)?;
    let shapes: Vec<(String, Vec<usize>)> = g
        .tensors
        .iter()
        .filter(|t| !GENERATED.contains(&t.name.as_str()))
        .map(|t| (names[&t.name].hf.clone(), t.shape()))
        .collect();
    hp.check_tensors(shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
        .map_err(|(hf, m)| match names.iter().find(|(_, h)| h.hf == hf) {
            Some((gg, _)) => tensor_err(g, gg, format!("{m} (the GGUF's hyper-parameters)")),
            None => err(g, format!("{m} (the GGUF's hyper-parameters)")),
        })?;
    Ok((config, names))
}

/// GGUF name → where it came from, by running the forward map over every HF name the
/// architecture can have.
pub(crate) fn inverse_names(a: &Arch, cfg: &Json, g: &GgufFile) -> Result<NameMap> {
    let n_layer = cfg["num_hidden_layers"].as_u64().unwrap_or(0);
    let mut hf = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
        "lm_head.weight".to_string(),
    ];
    for l in 0..n_layer {
        for (part, _) in arch::layer_names(a) {
            for sfx in ["weight", "bias"] {
                hf.push(format!("model.layers.{l}.{part}.{sfx}"));
            }
        }
        if let Some(m) = &a.moe {
            for (proj, _) in m.projs {
                for sfx in ["weight", "bias"] {
                    hf.push(format!("model.layers.{l}.{}.{proj}.{sfx}", m.experts));
                }
            }
        }
        for (part, _) in a.bare {
            hf.push(format!("model.layers.{l}.{part}"));
        }
    }
    let mut m = BTreeMap::new();
    for h in hf {
        if let arch::Mapped::Tensor {
            name,
            permute_heads,
            shift,
        } = arch::map_tensor(a, cfg, &h)?
        {
            m.insert(
                name,
                HfOf {
                    hf: h,
                    permute: permute_heads,
                    shift,
                },
            );
        }
    }
    for t in g
        .tensors
        .iter()
        .filter(|t| !GENERATED.contains(&t.name.as_str()))
    {
        if t.name == "rope_freqs.weight" {
            return Err(err(
                g,
                "rope_freqs.weight (Llama 3 rope scaling computed by the converter) cannot be turned back into config.json's rope_scaling parameters; export does not support this file",
            ));
        }
        if !m.contains_key(&t.name) {
            return Err(tensor_err(
                g,
                &t.name,
                format!("has no Hugging Face name for architecture {}", a.name),
            ));
        }
    }
    Ok(m)
}

/// Writes the HF folder; returns the number of tensors written.
pub fn export(
    input: &Path,
    output: &Path,
    cfg: &ExportConfig,
    progress: &dyn Progress,
) -> Result<usize> {
    // the folder replaces what is there with --force: never the GGUF being read
    check_not_input(output, true, &[input.to_path_buf()])?;
    let g = GgufFile::open(input)?;
    let an = s(&g, "general.architecture").unwrap_or("");
    let a = arch::of_gguf(&g).ok_or_else(|| {
        err(
            &g,
            format!(
                "cannot export architecture '{}' (supported: {})",
                qs_formats::error::shown(an),
                ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if a.moe.is_some() {
        return Err(err(
            &g,
            format!(
                "is a mixture of experts ({}): export does not write its stacked experts back as Hugging Face per-expert tensors yet",
                a.hf_class
            ),
        ));
    }
    if !matches!(cfg.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::Config(format!(
            "export writes F32, F16 or BF16, not {}",
            cfg.dtype
        )));
    }
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let vocab = match g.get("tokenizer.ggml.tokens") {
        Some(Value::Array(_, v)) => v.len(),
        _ => g
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .map(|t| t.ne[1] as usize)
            .unwrap_or(0),
    };
    let (config, names) = gguf_config(&g, a, vocab, tied, cfg.dtype)?;
    struct Out<'a> {
        t: &'a GgufTensor,
        hf: String,
        permute: Option<usize>,
        shift: bool,
        scheme: Scheme,
    }
    let mut outs = Vec::new();
    for t in g
        .tensors
        .iter()
        .filter(|t| !GENERATED.contains(&t.name.as_str()))
    {
        let HfOf { hf, permute, shift } = names[&t.name].clone();
        let scheme = Scheme::for_ggml(t.ty).ok_or_else(|| {
            let ty = t.ty;
            tensor_err(
                &g,
                &t.name,
                format!("dequantizing {ty} is not supported yet"),
            )
        })?;
        outs.push(Out {
            t,
            hf,
            permute,
            shift,
            scheme,
        });
    }
    // norms and other 1-D tensors stay F32, as transformers keeps them in the checkpoint dtype
    let entries: Vec<StEntry> = outs
        .iter()
        .map(|o| StEntry {
            name: o.hf.clone(),
            dtype: cfg.dtype,
            shape: o.t.shape(),
        })
        .collect();
    let layout = plan_layout(
        &entries,
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
    );
    let dir = AtomicDir::create(output, cfg.force)?;
    let file = dir.file("model.safetensors")?;
    file.write_at(0, &layout.header)?;
    file.set_len(layout.total_len)?;

    struct Job {
        o: usize,
        r0: usize,
        r1: usize,
    }
    let mut jobs = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let (rows, cols) = rows_cols(&o.t.shape());
        for (r0, r1) in chunk_rows(rows, cols, 1, CHUNK_ELEMS) {
            jobs.push(Job { o: i, r0, r1 });
        }
    }
    progress.start(outs.iter().map(|o| (o.t.end - o.t.start) as u64).sum());
    let pool = pool(cfg.threads)?;
    run_jobs(&pool, &jobs, |j| {
        let o = &outs[j.o];
        let shape = o.t.shape();
        let (rows, cols) = rows_cols(&shape);
        let all = g.bytes(o.t);
        let rb = all.len() / rows.max(1);
        let mut y = vec![0f32; (j.r1 - j.r0) * cols];
        for (k, out) in y.chunks_mut(cols.max(1)).enumerate() {
            // HF row r is the GGUF row q with permuted_source_row(q) == r
            let r = j.r0 + k;
            let q = match o.permute {
                None => r,
                Some(h) => inverse_row(r, rows, h),
            };
            o.scheme
                .decode(&shape, q, q + 1, &[&all[q * rb..(q + 1) * rb]], out);
            if o.shift {
                out.iter_mut().for_each(|v| *v -= 1.0);
            }
        }
        let mut bytes = vec![0u8; y.len() * cfg.dtype.size()];
        qs_numeric::dtype::encode_float(cfg.dtype, &y, &mut bytes);
        file.write_at(
            layout.offsets[j.o] + (j.r0 * cols * cfg.dtype.size()) as u64,
            &bytes,
        )?;
        progress.inc(((j.r1 - j.r0) * rb) as u64);
        Ok(())
    })?;
    progress.finish();
    file.commit()?;
    // messages name the file where it will be, not inside the temporary folder
    let io = |p: &Path, e: std::io::Error| Error::Output {
        path: dir.shown(p),
        msg: e.to_string(),
    };
    let write_json = |name: &str, v: &Json| -> Result<()> {
        let p = dir.path().join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("json") + "\n")
            .map_err(|e| io(&p, e))
    };
    write_json("config.json", &config)?;
    let mut gen = Map::new();
    for k in ["bos_token_id", "eos_token_id"] {
        if let Some(v) = config.get(k) {
            gen.insert(k.into(), v.clone());
        }
    }
    write_json("generation_config.json", &Json::Object(gen))?;
    if let Some(tf) = tokenizer_files(&g)? {
        if let Some(tok) = &tf.json {
            write_json("tokenizer.json", tok)?;
        }
        if let Some(m) = &tf.model {
            let p = dir.path().join("tokenizer.model");
            std::fs::write(&p, m).map_err(|e| io(&p, e))?;
        }
        write_json("tokenizer_config.json", &tf.config)?;
    }
    dir.commit()?;
    Ok(outs.len())
}

/// The GGUF row holding HF row `r` under the q/k permutation (inverse of
/// [`arch::permuted_source_row`]).
pub fn inverse_row(r: usize, rows: usize, heads: usize) -> usize {
    let half = rows / heads / 2;
    let (h, rem) = (r / (2 * half), r % (2 * half));
    let (j, i) = (rem / half, rem % half);
    h * 2 * half + i * 2 + j
}

#[cfg(test)]
mod tests {
    #[test]
    fn inverse_permutation() {
        for (rows, heads) in [(12, 2), (576, 9), (192, 3)] {
            for q in 0..rows {
                assert_eq!(
                    super::inverse_row(
                        crate::arch::permuted_source_row(q, rows, heads),
                        rows,
                        heads
                    ),
                    q
                );
            }
        }
    }
}
