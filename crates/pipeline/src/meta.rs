//! Metadata that travels with the weights: GGUF `general.*` keys, compressed-tensors, GPTQ and
//! AWQ `quantization_config`, and the HF side files of a safetensors output folder.

use crate::config::{QuantizeConfig, Target};
use crate::error::{Error, Result};
use crate::plan::{is_embedding, Action, Plan};
use qs_formats::gguf::Value;
use qs_formats::source::ModelSource;
use qs_numeric::layout::CheckpointMeta;
use qs_numeric::{DType, Scheme};
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// llama.cpp's `llama_ftype` for a uniform target (from the block type's codec).
pub fn file_type(t: Target) -> Option<u32> {
    match t {
        Target::Float(d) => crate::plan::ggml_float(d)?.file_type(),
        Target::Ggml(g) => g.file_type(),
        _ => None,
    }
}

/// GGUF metadata: what llama.cpp's converter writes for the folder (general keys,
/// hyper-parameters, tokenizer), in its order; for quantized outputs and GGUF inputs, laid out
/// as llama-quantize leaves it.
pub fn gguf_metadata(
    src: &ModelSource,
    plan: &Plan,
    cfg: &QuantizeConfig,
) -> Result<Vec<(String, Value)>> {
    let mut kvs: Vec<(String, Value)> = Vec::new();
    let converter_style = crate::plan::converter_layout(src, cfg);
    // a float conversion of a checkpoint with MXFP4 experts, which it keeps, is llama.cpp's
    // MXFP4_MOE (as its converter records it)
    let keeps_mxfp4 = plan.tensors.iter().any(|tp| {
        matches!(tp.action, Action::Copy) && src.native_blocks(&src.tensors[tp.source]).is_some()
    });
    let ft = plan.mixture.map(|m| m.id()).or_else(|| match cfg.target {
        Target::Float(_) if keeps_mxfp4 && src.gguf.is_none() => {
            Some(crate::mixture::Ftype::Mix(crate::mixture::Mix::MXFP4_MOE).id())
        }
        t => file_type(t),
    });
    if let Some(g) = &src.gguf {
        // a GGUF input keeps its metadata (architecture, tokenizer, provenance); what this run
        // decides is written below
        let regenerated = |k: &str| {
            matches!(
                k,
                "general.file_type" | "general.quantization_version" | "general.alignment"
            ) || k.starts_with("quantize.")
                || k.starts_with("split.")
        };
        kvs.extend(g.kvs.iter().filter(|(k, _)| !regenerated(k)).cloned());
    } else {
        let arch_name = match plan.arch {
            Some(a) => a.name.to_string(),
            None => src
                .config
                .as_ref()
                .and_then(|c| c.get("model_type"))
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string(),
        };
        kvs.push(("general.architecture".to_string(), Value::String(arch_name)));
        if let (Some(a), Some(c)) = (plan.arch, &src.config) {
            kvs.extend(crate::arch::early_keys(a, c)?);
        }
        // what llama.cpp's converter writes from the folder (its model-card heuristics for
        // basename/finetune/version/license are not reproduced)
        kvs.push(("general.type".to_string(), Value::String("model".into())));
        let (name, org) = general_name(src);
        kvs.push(("general.name".to_string(), Value::String(name)));
        if let Some(org) = org {
            kvs.push(("general.organization".to_string(), Value::String(org)));
        }
        if let Some(label) = plan_size_label(plan) {
            kvs.push(("general.size_label".to_string(), Value::String(label)));
        }
        // as llama.cpp's converter orders them: shared hyper-parameters, file type, the
        // architecture's own, quantization version, tokenizer
        let (base, own) = match (plan.arch, &src.config) {
            (Some(a), Some(c)) => crate::arch::hparams(a, c)?,
            _ => (vec![], vec![]),
        };
        kvs.extend(base);
        if converter_style {
            kvs.extend(ft.map(|f| ("general.file_type".to_string(), Value::U32(f))));
        }
        kvs.extend(own);
        if converter_style {
            kvs.push(("general.quantization_version".to_string(), Value::U32(2)));
        }
        if let (Some(a), Some(dir), Some(c)) = (plan.arch, &src.hf_dir, &src.config) {
            if let Some(tk) =
                crate::tokenizer::gguf_tokenizer(dir, c, a, cfg.tokenizer_pre.as_deref())?
            {
                kvs.extend(tk);
            }
        }
    }
    if !converter_style {
        // llama-quantize re-sets these two on the converted metadata, so they move to the end
        kvs.push(("general.quantization_version".to_string(), Value::U32(2)));
        kvs.extend(ft.map(|f| ("general.file_type".to_string(), Value::U32(f))));
    }
    if let Some((path, im)) = &plan.imatrix {
        // the keys llama-quantize records
        kvs.push((
            "quantize.imatrix.file".to_string(),
            Value::String(path.display().to_string()),
        ));
        if let Some(ds) = im.datasets.first() {
            kvs.push((
                "quantize.imatrix.dataset".to_string(),
                Value::String(ds.clone()),
            ));
        }
        kvs.push((
            "quantize.imatrix.entries_count".to_string(),
            Value::U32(im.entries.len() as u32),
        ));
        kvs.push((
            "quantize.imatrix.chunks_count".to_string(),
            Value::U32(im.chunk_count),
        ));
    }
    Ok(kvs)
}

/// The compressed-tensors config group arguments and format a scheme contributes.
fn scheme_json(s: &Scheme, actorder: Option<&'static str>) -> Option<(Json, &'static str)> {
    match s.checkpoint_meta(actorder)? {
        CheckpointMeta::CompressedTensors { weights, format } => Some((weights, format)),
        CheckpointMeta::AutoGptq { .. } | CheckpointMeta::Awq { .. } => None,
    }
}

fn module_of(name: &str) -> String {
    name.strip_suffix(".weight").unwrap_or(name).to_string()
}

/// A model name for metadata: the HF folder's name, else the input file's stem.
/// gguf-py's `Metadata.id_to_title`: words of a model id, lower-case words title-cased
/// (Python's `str.title`: a letter after a non-letter is upper-cased) unless they look like a
/// version (`v1.2`) or start with a digit.
fn id_to_title(id: &str) -> String {
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(|c| c.is_lowercase()) && !w.chars().any(|c| c.is_uppercase());
            let version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.len() > 1
                    && w.starts_with('v')
                    && w[1..]
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
            if !lower || version {
                return w.to_string();
            }
            let mut out = String::with_capacity(w.len());
            let mut prev_letter = false;
            for c in w.chars() {
                if prev_letter {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_letter = c.is_alphabetic();
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `general.name` (and `general.organization`) as llama.cpp's converter derives them: from
/// config.json's `_name_or_path` when it is a Hub id (`org/name`), else the folder's name.
fn general_name(src: &ModelSource) -> (String, Option<String>) {
    let hub = src
        .config
        .as_ref()
        .and_then(|c| c.get("_name_or_path"))
        .and_then(|v| v.as_str())
        .filter(|s| s.matches('/').count() <= 1 && !s.is_empty());
    let id = hub.map(str::to_string).unwrap_or_else(|| model_name(src));
    if id.contains(' ') {
        return (id, None);
    }
    let (org, name) = match id.split_once('/') {
        Some((o, n)) if !o.starts_with('.') && !o.is_empty() => (Some(id_to_title(o)), n),
        Some((_, n)) => (None, n),
        None => (None, id.as_str()),
    };
    (id_to_title(name), org)
}

/// gguf-py's size label of a plan's tensors (`None` without parameters): the parameter count,
/// or for a mixture of experts "{experts}x{parameters one token meets with one expert}" (the
/// stacked `_exps` tensors count one expert's share, everything else in full).
fn plan_size_label(plan: &Plan) -> Option<String> {
    let (mut total, mut shared, mut expert) = (0usize, 0usize, 0usize);
    let (mut expert_sum, mut expert_tensors) = (0usize, 0usize);
    for t in &plan.tensors {
        let size: usize = t.shape.iter().product();
        let name = t
            .outputs
            .first()
            .map_or(t.name.as_str(), |o| o.name.as_str());
        match t.shape.first() {
            Some(&n) if name.contains("_exps.") && t.shape.len() >= 3 && n > 0 => {
                expert += size / n;
                expert_sum += n;
                expert_tensors += 1;
            }
            _ => shared += size,
        }
        total += size;
    }
    if total == 0 {
        return None;
    }
    Some(match expert_sum.checked_div(expert_tensors) {
        Some(n) if n > 0 => format!("{n}x{}", size_label(shared + expert)),
        _ => size_label(total),
    })
}

/// gguf-py's `size_label`: parameter count in K/M/B/T with at least two significant digits.
pub fn size_label(n: usize) -> String {
    let n = n as f64;
    let (v, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python: max(2 - len(str(round(v)).lstrip('0')), 0) decimals
    let int_digits = {
        let r = v.round_ties_even() as u64;
        if r == 0 {
            0
        } else {
            r.to_string().len()
        }
    };
    let decimals = 2usize.saturating_sub(int_digits);
    format!("{v:.decimals$}{suffix}")
}

pub fn model_name(src: &ModelSource) -> String {
    let base = match &src.hf_dir {
        Some(d) => d.canonicalize().unwrap_or(d.clone()),
        None => src.input.clone(),
    };
    base.file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".safetensors")
                .trim_end_matches(".index.json")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".into())
}

/// compressed-tensors `quantization_config` for the quantized tensors of a plan, or `None`
/// when nothing is quantized. One config group per distinct scheme (a single one targets
/// `Linear`, several target their modules by name); every linear module left unquantized,
/// tied ones included, is in `ignore` by module name, as llm-compressor writes it: a loader
/// applying the scheme to a `Linear` it finds no quantized weight for fails (transformers:
/// "Linear has no attribute `weight`") or leaves it uninitialised.
pub fn quantization_config(plan: &Plan) -> Option<Json> {
    if let Some(g) = gptq_config(plan).or_else(|| awq_config(plan)) {
        return Some(g);
    }
    let mut groups: Vec<(Json, &'static str, Vec<String>)> = Vec::new();
    for t in &plan.tensors {
        let sj = match &t.action {
            Action::Encode(s) => scheme_json(s, plan.actorder),
            Action::Copy => None,
        };
        if let Some((w, fmt)) = sj {
            match groups.iter_mut().find(|(gw, gf, _)| *gw == w && *gf == fmt) {
                Some(g) => g.2.push(module_of(&t.name)),
                None => groups.push((w, fmt, vec![module_of(&t.name)])),
            }
        }
    }
    if groups.is_empty() {
        return None;
    }
    let quantized: Vec<&String> = groups.iter().flat_map(|g| &g.2).collect();
    let ignore = unquantized_linears(plan, |m| quantized.contains(&m));
    let single = groups.len() == 1;
    let formats: Vec<&str> = groups.iter().map(|g| g.1).collect();
    let uniform = formats.iter().all(|f| *f == formats[0]);
    let mut cg = Map::new();
    for (i, (w, fmt, modules)) in groups.into_iter().enumerate() {
        let targets = if single {
            json!(["Linear"])
        } else {
            json!(modules)
        };
        cg.insert(
            format!("group_{i}"),
            json!({"targets": targets, "weights": w, "input_activations": null, "output_activations": null, "format": fmt}),
        );
    }
    Some(json!({
        "quant_method": "compressed-tensors",
        "format": if uniform { formats[0] } else { "mixed-precision" },
        "quantization_status": "compressed",
        "config_groups": cg,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "global_compression_ratio": null,
    }))
}

/// A linear layer's weight: 2-D `.weight`, not an embedding table.
fn is_linear(t: &crate::plan::TensorPlan) -> bool {
    t.shape.len() == 2 && t.name.ends_with(".weight") && !is_embedding(&t.name)
}

/// Module names of the linear layers a loader must leave unquantized: those the plan stores
/// as they are (or as floats), in plan order, then the plan's tied modules.
fn unquantized_linears(plan: &Plan, quantized: impl Fn(&String) -> bool) -> Vec<String> {
    let mut v: Vec<String> = plan
        .tensors
        .iter()
        .filter(|t| is_linear(t))
        .map(|t| module_of(&t.name))
        .filter(|m| !quantized(m))
        .collect();
    for m in &plan.tied_modules {
        if !v.contains(m) && !quantized(m) {
            v.push(m.clone());
        }
    }
    v
}

/// A module inside a repeated block, split after the block index:
/// `model.layers.3.self_attn.q_proj` → (`model.layers.3`, `self_attn.q_proj`).
fn in_block(module: &str) -> Option<(&str, &str)> {
    let mut pos = 0;
    for seg in module.split('.') {
        let end = pos + seg.len();
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) && end < module.len() {
            return Some((&module[..end], &module[end + 1..]));
        }
        pos = end + 1;
    }
    None
}

/// What loaders of the GPTQ layout need to be told when some linear inside the decoder blocks
/// is left unquantized (`None` when every one is quantized):
///
/// - `modules_in_block_to_quantize` for transformers, which hands the config to optimum:
///   optimum replaces every `nn.Linear` of every block with a GPTQ layer unless this list is
///   given, and keeps a layer when its full name ends with one of the entries. The same linears
///   quantized in every block are listed by their name in the block (`self_attn.q_proj`),
///   otherwise every quantized one by its full module name;
/// - `dynamic` for GPTQModel's own loader (which ignores that list and refuses a checkpoint
///   without the `qweight` of every block linear): a negative rule (`-:^name$`, an exact
///   module name) per unquantized one.
fn partly_quantized_blocks(plan: &Plan) -> Option<(Json, Json)> {
    let mut blocks: Vec<&str> = Vec::new();
    let mut quantized: Vec<(&str, &str)> = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    let modules: Vec<(String, bool)> = plan
        .tensors
        .iter()
        .filter(|t| is_linear(t))
        .map(|t| {
            let q = matches!(&t.action, Action::Encode(s)
                if matches!(s.checkpoint_meta(None), Some(CheckpointMeta::AutoGptq { .. })));
            (module_of(&t.name), q)
        })
        .collect();
    for (m, q) in &modules {
        let Some((b, rel)) = in_block(m) else {
            continue;
        };
        if !blocks.contains(&b) {
            blocks.push(b);
        }
        if *q {
            quantized.push((b, rel));
        } else {
            kept.push(m);
        }
    }
    if kept.is_empty() {
        return None;
    }
    let names_in = |b: &str| {
        let mut v: Vec<&str> = quantized
            .iter()
            .filter(|(qb, _)| *qb == b)
            .map(|(_, r)| *r)
            .collect();
        v.sort_unstable();
        v
    };
    let first = names_in(blocks[0]);
    let list: Vec<String> = if blocks.iter().all(|b| names_in(b) == first) {
        first.iter().map(|r| r.to_string()).collect()
    } else {
        quantized.iter().map(|(b, r)| format!("{b}.{r}")).collect()
    };
    let dynamic: Map<String, Json> = kept
        .iter()
        .map(|m| (format!("-:^{}$", regex::escape(m)), json!({})))
        .collect();
    Some((json!([list]), Json::Object(dynamic)))
}

/// The GPTQ (AutoGPTQ v1) `quantization_config` / quantize_config.json of a plan that stores
/// its linears in the AutoGPTQ layout, as GPTQModel writes it; `None` otherwise.
pub fn gptq_config(plan: &Plan) -> Option<Json> {
    let (bits, group, cols) = plan.tensors.iter().find_map(|t| match &t.action {
        Action::Encode(s) => match s.checkpoint_meta(None)? {
            CheckpointMeta::AutoGptq { bits, group } => {
                Some((bits, group, t.shape.last().copied().unwrap_or(0)))
            }
            _ => None,
        },
        Action::Copy => None,
    })?;
    let mut c = json!({
        "bits": bits,
        "group_size": if group == cols { -1 } else { group as i64 },
        // act-order GPTQ writes its g_idx (groups in activation order)
        "desc_act": plan.actorder == Some("group"),
        "static_groups": false,
        "sym": true,
        "true_sequential": true,
        "damp_percent": plan.damp,
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "model_file_base_name": "model",
    });
    if let (Some((m, d)), Some(obj)) = (partly_quantized_blocks(plan), c.as_object_mut()) {
        obj.insert("modules_in_block_to_quantize".into(), m);
        obj.insert("dynamic".into(), d);
    }
    Some(c)
}

/// The AutoAWQ `quantization_config` of a plan that stores its linears in the AWQ GEMM layout,
/// as AutoAWQ writes it (transformers' `AwqConfig`); `None` otherwise. `modules_to_not_convert`
/// lists every linear left in float (tied `lm_head` included) by module name, or is null when
/// there is none: transformers skips a module whose name starts with or ends with an entry
/// (at a module boundary), vLLM one whose name contains an entry.
pub fn awq_config(plan: &Plan) -> Option<Json> {
    let mut group = None;
    let mut quantized: Vec<String> = Vec::new();
    for t in &plan.tensors {
        if let Action::Encode(s) = &t.action {
            if let Some(CheckpointMeta::Awq { group: g }) = s.checkpoint_meta(None) {
                let cols = t.shape.last().copied().unwrap_or(0);
                group.get_or_insert(if g == cols { -1 } else { g as i64 });
                quantized.push(module_of(&t.name));
            }
        }
    }
    let group = group?;
    let kept = unquantized_linears(plan, |m| quantized.contains(m));
    Some(json!({
        "quant_method": "awq",
        "bits": 4,
        "group_size": group,
        "zero_point": true,
        "version": "gemm",
        "modules_to_not_convert": if kept.is_empty() { Json::Null } else { json!(kept) },
    }))
}

/// Writes `config.json` (with `quantization_config`, or the new `torch_dtype` for a float
/// conversion) and copies tokenizer and generation files into `dir`.
pub fn write_side_files(
    src: &ModelSource,
    plan: &Plan,
    cfg: &QuantizeConfig,
    dir: &Path,
) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::Output {
            path: p,
            msg: e.to_string(),
        }
    };
    for f in src.side_files() {
        if f.file_name().is_some_and(|n| n == "config.json") {
            continue;
        }
        let dst = dir.join(f.file_name().expect("file name"));
        std::fs::copy(&f, &dst).map_err(io(&dst))?;
    }
    let mut config = src.config.clone().unwrap_or_else(|| json!({}));
    if let Some(obj) = config.as_object_mut() {
        match quantization_config(plan) {
            Some(qc) => {
                obj.insert("quantization_config".into(), qc);
            }
            None => {
                obj.remove("quantization_config");
                if let Target::Float(d) = cfg.target {
                    let name = match d {
                        DType::F16 => "float16",
                        DType::BF16 => "bfloat16",
                        _ => "float32",
                    };
                    obj.insert("torch_dtype".into(), json!(name));
                }
            }
        }
    }
    let dst = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    std::fs::write(&dst, text).map_err(io(&dst))?;
    if let Some(g) = gptq_config(plan) {
        let dst = dir.join("quantize_config.json");
        let text = serde_json::to_string_pretty(&g).expect("json") + "\n";
        std::fs::write(&dst, text).map_err(io(&dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn titles_and_size_labels_follow_gguf_py() {
        assert_eq!(id_to_title("tiny-llama"), "Tiny Llama");
        assert_eq!(
            id_to_title("SmolLM2-135M-Instruct"),
            "SmolLM2 135M Instruct"
        );
        assert_eq!(id_to_title("llama-2-7b-hf"), "Llama 2 7b Hf");
        assert_eq!(id_to_title("mistral-v0.3-gpt2x"), "Mistral v0.3 Gpt2X");
        assert_eq!(size_label(1_835_264), "1.8M");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(999), "1.0K");
        assert_eq!(size_label(70_553_706_496), "71B");
    }

    #[test]
    fn block_modules_split_after_the_block_index() {
        assert_eq!(
            in_block("model.layers.3.self_attn.q_proj"),
            Some(("model.layers.3", "self_attn.q_proj"))
        );
        assert_eq!(
            in_block("transformer.h.12.mlp.c_fc"),
            Some(("transformer.h.12", "mlp.c_fc"))
        );
        assert_eq!(in_block("lm_head"), None);
        assert_eq!(in_block("model.layers.3"), None);
    }
}
