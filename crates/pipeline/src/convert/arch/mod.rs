//! Per-architecture conversion of a Hugging Face model to what llama.cpp reads: tensor names,
//! hyper-parameter keys, and the q/k row permutation of the "llama" architecture.
//!
//! One module per architecture family (`llama.rs`, `qwen2.rs`, `qwen3.rs`) describes it as an
//! [`Arch`] value, registered once in [`ARCHS`]; everything else reads the table.

use crate::error::{Error, Result};
use qs_formats::gguf::Value;
use qs_formats::source::ModelSource;
use qs_model::hparams::{self, HParams};
use qs_model::Linear;
use qs_numeric::limits::{MAX_CONTEXT, MAX_WIDTH};
use serde_json::Value as Json;

mod deepseek2;
mod gemma2;
mod gemma3;
mod gpt_oss;
mod llama;
mod mixtral;
mod olmo2;
mod phi3;
mod qwen2;
mod qwen2moe;
mod qwen3;
mod qwen3moe;
mod smollm3;

/// The architectures we convert, one line each; each is described in its own module.
pub const ARCHS: &[Arch] = &[
    llama::ARCH,
    qwen2::ARCH,
    qwen3::ARCH,
    smollm3::ARCH,
    olmo2::ARCH,
    gemma2::ARCH,
    gemma3::ARCH,
    phi3::ARCH,
    mixtral::ARCH,
    qwen2moe::ARCH,
    qwen3moe::ARCH,
    gpt_oss::ARCH,
    deepseek2::ARCH,
];

/// What differs between the architectures we convert.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// `general.architecture` and key prefix.
    pub name: &'static str,
    /// HF `model_type`s that convert to it, with their transformers config defaults.
    pub model_types: &'static [ModelType],
    /// The HF class `export` writes in `architectures`.
    pub hf_class: &'static str,
    /// llama.cpp's converter permutes q/k rows (rotate-half → interleaved rope).
    pub permute_qk: bool,
    /// The hyper-parameter keys the converter writes before `general.file_type`.
    pub keys: Keys,
    /// The architecture's own keys, written after `general.file_type`, in this order.
    pub own_keys: &'static [OwnKey],
    /// Llama 3 rope scaling becomes a generated `rope_freqs` tensor.
    pub llama3_rope_freqs: bool,
    /// How the converter reads the vocabulary.
    pub vocab: VocabStyle,
    /// Gemma: an RMSNorm multiplies by `1 + w`; the converter stores `1 + w` (every HF tensor
    /// named `*norm.weight`), so llama.cpp multiplies by what is stored.
    pub norm_shift: bool,
    /// HF tensors the converter leaves out (Gemma 2's `lm_head.weight`, tied anyway).
    pub dropped: &'static [&'static str],
    /// Gemma 3: token embedding rows beyond the tokenizer's vocabulary are dropped.
    pub embeddings_to_vocab: bool,
    /// llama.cpp's fixed sliding-window pattern: every this-many-th layer attends to the whole
    /// context, the others to `sliding_window` tokens (nothing in the file says which).
    pub swa_every: Option<usize>,
    /// Gemma: llama.cpp scales queries by head_dim^-½, or by (hidden / heads)^-½ for the model
    /// with this many layers (27B), whatever `query_pre_attn_scalar` says; a config that
    /// disagrees is refused for GGUF.
    pub query_scale_27b_layers: Option<u64>,
    /// `export`: the architecture's own config.json keys from the GGUF's (read by key name
    /// without the architecture prefix, as numbers), over the common ones.
    pub hf_keys: Option<HfKeys>,
    /// Layer count of llama.cpp's LLM_TYPE_70B, which llama-quantize's mixtures single out.
    pub layers_70b: Option<u64>,
    /// llama.cpp leaves rope out of every this-many-th layer (its fixed `n_no_rope_layer_step`;
    /// nothing in the file says so), so a model whose layers differ cannot be converted.
    pub nope_every: Option<usize>,
    /// A decoder layer's norms: HF name under `model.layers.N.` → llama.cpp name under `blk.N.`
    /// ([`LLAMA_NORMS`] for the llama-style layers).
    pub layer_norms: &'static [(&'static str, &'static str)],
    /// Fused linears (Phi-3's `qkv_proj`, `gate_up_proj`): HF module → llama.cpp name, kept
    /// fused.
    pub fused: &'static [(&'static str, &'static str)],
    /// Attention linears other than llama's q/k/v/o (DeepSeek's latent attention): HF module →
    /// llama.cpp name.
    pub attention: &'static [(&'static str, &'static str)],
    /// The only expert scoring function (`scoring_func`) transformers computes for the model
    /// type, which llama.cpp reads from the file (softmax when absent): a config giving
    /// another, or none, is refused.
    pub scoring: Option<&'static str>,
    /// A mixture of experts in every layer's feed-forward block.
    pub moe: Option<Moe>,
    /// Layer tensors stored without a `.weight` suffix: HF name under `model.layers.N.` →
    /// llama.cpp's under `blk.N.` (gpt-oss's attention sinks).
    pub bare: &'static [(&'static str, &'static str)],
    /// Tensors the checkpoint stores rearranged (gpt-oss's fused, transposed or MXFP4
    /// experts) or the converter splits (DeepSeek's `kv_b_proj`): the views read as the
    /// tensors [`map_tensor`] names ([`ModelSource::view`]).
    pub views: Option<Views>,
    /// Config values llama.cpp's graph hard-codes for the architecture (key, its value,
    /// transformers' default when absent): a config that differs is refused.
    pub fixed: &'static [(&'static str, f64, f64)],
}

/// See [`Arch::views`]: the checkpoint and its hyper-parameters → the views to make.
pub type Views = fn(&ModelSource, &HParams) -> Result<Vec<qs_formats::source::ViewSpec>>;

/// A mixture-of-experts layer as the converter writes it: each projection's per-expert
/// matrices (`model.layers.N.{experts}.E.{proj}.weight`) stacked into one 3-D tensor, read
/// as `model.layers.N.{experts}.{proj}.weight` ([`ModelSource::stack`]).
#[derive(Debug, Clone, Copy)]
pub struct Moe {
    /// The module holding the experts, under `model.layers.N.`.
    pub experts: &'static str,
    /// Each expert's projections: HF name → llama.cpp name of the stacked tensor.
    pub projs: &'static [(&'static str, &'static str)],
    /// The layer's other modules: router, shared expert and its gate (HF → llama.cpp).
    pub modules: &'static [(&'static str, &'static str)],
    /// llama.cpp renormalises the chosen experts' weights to sum to 1 (Mixtral, Qwen3-MoE) or
    /// not (Qwen2-MoE), whatever `norm_topk_prob` says; a config that disagrees is refused.
    /// `None`: as the file says (`expert_weights_norm`, DeepSeek).
    pub renormalize: Option<bool>,
    /// The config.json key of the number of experts (what `export` and `eval` write back).
    pub count_key: &'static str,
    /// The checkpoint stores each layer's experts already stacked (gpt-oss), read through
    /// [`Arch::views`], not stacked from per-expert tensors.
    pub stored_stacked: bool,
}

/// The architecture of a GGUF's `general.architecture`: one with experts when the file has
/// `{arch}.expert_count` (Mixtral is llama.cpp's "llama" with experts).
pub fn of_gguf(g: &qs_formats::gguf::GgufFile) -> Option<&'static Arch> {
    let name = match g.get("general.architecture") {
        Some(Value::String(s)) => s.as_str(),
        _ => "",
    };
    let experts = g.get(&format!("{name}.expert_count")).is_some();
    let mut of_name = ARCHS.iter().filter(|a| a.name == name);
    let first = of_name.clone().next();
    of_name.find(|a| a.moe.is_some() == experts).or(first)
}

/// llama.cpp's names of the stacked experts of a Qwen-MoE layer (`mlp.experts`).
pub const QWEN_EXPERTS: &[(&str, &str)] = &[
    ("down_proj", "ffn_down_exps"),
    ("gate_proj", "ffn_gate_exps"),
    ("up_proj", "ffn_up_exps"),
];

/// A plain text model as llama.cpp's converter treats one: llama-style layer norms, its
/// generic keys, byte-level BPE, no transform. An architecture module writes what differs and
/// takes the rest from here (`..TEXT`).
pub const TEXT: Arch = Arch {
    name: "",
    model_types: &[],
    hf_class: "",
    permute_qk: false,
    keys: Keys::Text,
    own_keys: &[],
    llama3_rope_freqs: false,
    vocab: VocabStyle::Bpe,
    layers_70b: None,
    nope_every: None,
    norm_shift: false,
    dropped: &[],
    embeddings_to_vocab: false,
    swa_every: None,
    query_scale_27b_layers: None,
    hf_keys: None,
    layer_norms: LLAMA_NORMS,
    fused: &[],
    attention: &[],
    scoring: None,
    moe: None,
    bare: &[],
    views: None,
    fixed: &[],
};

/// See [`Arch::hf_keys`]: GGUF key lookup, block count, config.json to complete.
pub type HfKeys = fn(&dyn Fn(&str) -> Option<f64>, u64, &mut serde_json::Map<String, Json>);

/// A Hugging Face `model_type` and the defaults its transformers (5.x) config class fills in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelType {
    pub name: &'static str,
    pub max_position_embeddings: u64,
    pub head_dim: HeadDim,
}

/// Which list of hyper-parameter keys the converter writes before `general.file_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Its generic text-model list (`TextModel.set_gguf_parameters`).
    Text,
    /// Gemma 2's own list: no rope keys.
    Gemma2,
    /// Phi-3's own list: the original context and the rotary dimensions among them.
    Phi3,
}

/// A key of the architecture's own, after `general.file_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnKey {
    /// `{arch}.vocab_size`.
    VocabSize,
    /// `{arch}.rope.dimension_count` (the head dimension).
    RopeDim,
    /// `{arch}.attn_logit_softcapping` (always written).
    AttnSoftcap,
    /// `{arch}.final_logit_softcapping`, when set and not 0.
    FinalSoftcap,
    /// `{arch}.attention.sliding_window`, unless `sliding_window_pattern` is 1.
    SlidingWindow,
    /// `{arch}.attention.sliding_window`, 0 when the model has none (Phi-3).
    SlidingWindowOrZero,
    /// `{arch}.expert_feed_forward_length` (`moe_intermediate_size`), when given.
    ExpertFf,
    /// `{arch}.expert_shared_feed_forward_length`, when given.
    ExpertSharedFf,
    /// `{arch}.expert_feed_forward_length` from `intermediate_size` (gpt-oss: its experts'
    /// width).
    ExpertFfIsFf,
    /// `{arch}.leading_dense_block_count` (`first_k_dense_replace`).
    LeadingDense,
    /// `{arch}.attention.q_lora_rank`, when the queries have a bottleneck.
    QLoraRank,
    /// `{arch}.attention.kv_lora_rank`.
    KvLoraRank,
    /// `{arch}.attention.key_length_mla` (a head's query/key size) and `value_length_mla`.
    KeyLengthMla,
    ValueLengthMla,
    /// `{arch}.expert_shared_count` (`n_shared_experts`, 0 when absent).
    ExpertSharedCount,
    /// `{arch}.expert_weights_scale` (`routed_scaling_factor`), when given.
    ExpertWeightsScale,
    /// `{arch}.expert_weights_norm`, written (true) only when `norm_topk_prob` is true.
    ExpertWeightsNorm,
    /// `{arch}.rope.dimension_count` from `qk_rope_head_dim`.
    RopeDimQkRope,
    /// `{arch}.rope.scaling.yarn_log_multiplier`: 0.1 × the rope parameters' `mscale_all_dim`.
    YarnLogMul,
}

/// How the converter reads a model's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabStyle {
    /// Byte-level BPE from tokenizer.json ("gpt2"), or tokenizer.model when present.
    Bpe,
    /// Llama's: tokenizer.model, or a SentencePiece-style tokenizer.json, with
    /// `add_prefix_space` written first.
    Llama,
    /// Gemma's: tokenizer.model with `add_space_prefix` false written last, else byte-level BPE.
    Gemma,
    /// Phi-3's: byte-level BPE when tokenizer_config.json names `GPT2Tokenizer` (Phi-4), else
    /// tokenizer.model.
    Phi3,
}

/// How transformers fills in a missing `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadDim {
    /// Left out (the config class has no such attribute).
    Absent,
    /// hidden_size / num_attention_heads.
    FromHidden,
    Fixed(u64),
    /// The value of another key (DeepSeek-V3: `qk_rope_head_dim`).
    FromKey(&'static str),
}

impl Arch {
    /// Whether a model of `layers` layers is llama.cpp's LLM_TYPE_70B.
    pub fn is_70b(&self, layers: u64) -> bool {
        self.layers_70b == Some(layers)
    }
}

/// The README's table of supported architectures, from [`ARCHS`] and the model types the
/// forward pass runs ([`qs_model::FAMILIES`]); a test keeps the README equal to it.
pub fn support_table() -> String {
    let mut s = String::from(
        "| HF class | `model_type` | llama.cpp architecture | GGUF conversion | `export` | `--method`, `eval`, `imatrix` |\n|---|---|---|---|---|---|\n",
    );
    for a in ARCHS {
        let types: Vec<&str> = a.model_types.iter().map(|m| m.name).collect();
        let runs = types
            .iter()
            .all(|t| qs_model::FAMILIES.iter().any(|f| f.model_type == *t));
        s.push_str(&format!(
            "| {} | {} | `{}` | yes | {} | {} |\n",
            a.hf_class,
            types
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
            a.name,
            if a.moe.is_none() { "yes" } else { "no" },
            if runs { "yes" } else { "no" }
        ));
    }
    s
}

/// The model type entry of an HF `model_type`, across every architecture.
pub fn model_type(name: &str) -> Option<&'static ModelType> {
    ARCHS
        .iter()
        .flat_map(|a| a.model_types.iter())
        .find(|m| m.name == name)
}

/// The architecture of an HF `config.json`, or an error naming the unsupported one.
pub fn detect(config: &Json) -> Result<&'static Arch> {
    if !config.is_object() {
        return Err(Error::Config(
            "config.json is not a JSON object".to_string(),
        ));
    }
    let mt = match config.get("model_type") {
        Some(Json::String(s)) => s.as_str(),
        None | Some(Json::Null) => {
            return Err(Error::Config(
                "config.json has no model_type: cannot tell the architecture".to_string(),
            ))
        }
        Some(v) => {
            return Err(Error::Config(format!(
                "config.json: model_type {v} is not a string"
            )))
        }
    };
    ARCHS
        .iter()
        .find(|a| a.model_types.iter().any(|m| m.name == mt))
        .ok_or_else(|| {
            let names: Vec<&str> = ARCHS
                .iter()
                .flat_map(|a| a.model_types.iter().map(|m| m.name))
                .collect();
            Error::Config(format!(
                "config.json: unsupported architecture '{}' for GGUF conversion (supported: {})",
                qs_formats::error::shown(mt),
                names.join(", ")
            ))
        })
}

fn cfg_err(m: String) -> Error {
    Error::Config(format!("config.json: {m}"))
}

/// The validated hyper-parameters of a config.json (completed with transformers' defaults).
pub fn hparams_of(c: &Json) -> Result<HParams> {
    HParams::from_config(&with_defaults(c)).map_err(cfg_err)
}

fn get_u64(c: &Json, keys: &[&str], max: u64) -> Result<Option<u64>> {
    hparams::int(c, keys, max).map_err(cfg_err)
}

fn get_f64(c: &Json, keys: &[&str]) -> Result<Option<f64>> {
    hparams::num(c, keys).map_err(cfg_err)
}

/// config.json completed with the defaults of the model type's transformers config class
/// (5.x), which is what llama.cpp's converter reads (`AutoConfig.from_pretrained(..).to_dict()`):
/// a key the file leaves out still gets written, with transformers' value.
pub fn with_defaults(c: &Json) -> Json {
    let before = c;
    let mut c = c.clone();
    let mt = c
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let Some(m) = model_type(&mt) else {
        return c;
    };
    let (max_pos, head_dim) = (m.max_position_embeddings, m.head_dim);
    let theta_in_rope = qs_model::rope_params(&c).is_some_and(|r| r.get("rope_theta").is_some());
    let hidden = c.get("hidden_size").and_then(|v| v.as_u64());
    let heads = c.get("num_attention_heads").and_then(|v| v.as_u64());
    let Some(obj) = c.as_object_mut() else {
        return c;
    };
    let mut put = |k: &str, v: Json| {
        if obj.get(k).is_none_or(|x| x.is_null()) {
            obj.insert(k.to_string(), v);
        }
    };
    put("max_position_embeddings", max_pos.into());
    let family = qs_model::FAMILIES.iter().find(|f| f.model_type == mt);
    if let Some(f) = family {
        for &(k, v) in f.defaults {
            put(k, qs_model::default_value(v));
        }
    }
    put(
        "rms_norm_eps",
        family.map_or(1e-6, |f| f.rms_norm_eps).into(),
    );
    // Gemma 3 keeps rope parameters by layer type, as its transformers config class does
    let by_type = family.and_then(|f| qs_model::rope_by_layer_type(before, f));
    if by_type.is_none() && !theta_in_rope {
        let theta = family.map_or(10000.0, |f| f.rope_theta);
        put("rope_theta", theta.into());
    }
    match (head_dim, hidden, heads) {
        (HeadDim::FromHidden, Some(h), Some(n)) if n > 0 && h >= n => {
            put("head_dim", (h / n).into())
        }
        (HeadDim::Fixed(d), _, _) => put("head_dim", d.into()),
        (HeadDim::FromKey(k), _, _) => {
            if let Some(v) = before.get(k).filter(|v| !v.is_null()).cloned().or_else(|| {
                family
                    .and_then(|f| f.defaults.iter().find(|(d, _)| *d == k))
                    .map(|&(_, v)| qs_model::default_value(v))
            }) {
                put("head_dim", v)
            }
        }
        _ => {}
    }
    if let Some(r) = by_type {
        for k in ["rope_theta", "rope_local_base_freq", "rope_scaling"] {
            obj.remove(k);
        }
        obj.insert("rope_parameters".into(), r);
    }
    c
}

/// The architecture and hyper-parameters of an HF folder's model, checked against each other
/// and against the weights present before anything is sized from them. Errors name
/// config.json (or the tensor that does not fit it).
pub fn checked_model(src: &ModelSource) -> Result<&'static Arch> {
    let dir = src.hf_dir.as_deref().unwrap_or(&src.input);
    let cfg_path = dir.join("config.json");
    let Some(c) = &src.config else {
        return Err(Error::Input {
            path: cfg_path,
            msg: "missing".into(),
        });
    };
    let at_config = |e: Error| match e {
        Error::Config(m) => Error::Input {
            path: cfg_path.clone(),
            msg: m.strip_prefix("config.json: ").unwrap_or(&m).to_string(),
        },
        e => e,
    };
    let arch = detect(c).map_err(at_config)?;
    let hp = hparams_of(c).map_err(at_config)?;
    let real = src.tensors.iter().filter(|t| !t.generated);
    hp.check_tensors(real.map(|t| (t.info.name.as_str(), t.info.shape.as_slice())))
        .map_err(
            |(tensor, msg)| match src.tensors.iter().find(|t| t.info.name == tensor) {
                Some(t) => Error::Tensor {
                    file: src.path_of(t).to_path_buf(),
                    tensor,
                    msg: format!("{msg} in {}", cfg_path.display()),
                },
                None => Error::Input {
                    path: cfg_path.clone(),
                    msg,
                },
            },
        )?;
    Ok(arch)
}

/// Attention head counts (q, kv) from config.json.
pub fn heads(c: &Json) -> Result<(u64, u64)> {
    let hp = hparams_of(c)?;
    Ok((hp.n_head, hp.n_head_kv))
}

/// The hyper-parameter keys llama.cpp reads for `arch`, from config.json.
/// Hyper-parameter keys: those llama.cpp's converter writes for every text model, then the
/// architecture's own (vocab size, rope dimensions).
#[allow(clippy::type_complexity)]
pub fn hparams(arch: &Arch, c: &Json) -> Result<(Vec<(String, Value)>, Vec<(String, Value)>)> {
    let hp = hparams_of(c)?;
    check_rope_layers(arch, c, hp.n_layer as usize)?;
    check_window_layers(arch, c, hp.n_layer as usize)?;
    check_moe(arch, c, &hp)?;
    for &(key, value, default) in arch.fixed {
        let v = get_f64(c, &[key])?.unwrap_or(default);
        if (v - value).abs() > 1e-6 * value.abs() {
            return Err(cfg_err(format!(
                "{key} = {v}, but llama.cpp's {} computes with {value}: a GGUF would compute another model",
                arch.name
            )));
        }
    }
    let c = &with_defaults(c);
    let a = arch.name;
    let mut kv: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| kv.push((format!("{a}.{k}"), v));
    // every integer below is within qs_numeric::limits, so it fits the u32 it is written as
    if arch.keys == Keys::Phi3 {
        let ctx = hp
            .context
            .ok_or_else(|| cfg_err("lacks max_position_embeddings".into()))?;
        let rope = qs_model::rope_params(c);
        let key = ["original_max_position_embeddings"];
        let orig = match rope
            .map(|r| get_u64(r, &key, MAX_CONTEXT))
            .transpose()?
            .flatten()
        {
            Some(o) => o,
            None => get_u64(c, &key, MAX_CONTEXT)?
                .ok_or_else(|| cfg_err("lacks original_max_position_embeddings".into()))?,
        };
        let ff = hp
            .n_ff
            .ok_or_else(|| cfg_err("lacks intermediate_size".into()))?;
        let eps =
            get_f64(c, &["rms_norm_eps"])?.ok_or_else(|| cfg_err("lacks rms_norm_eps".into()))?;
        let dims = qs_model::rotary_dims(
            c,
            hp.n_embd as usize,
            hp.n_head as usize,
            hp.head_dim as usize,
        );
        let theta = match rope
            .map(|r| get_f64(r, &["rope_theta"]))
            .transpose()?
            .flatten()
        {
            Some(t) => t,
            None => get_f64(c, &["rope_theta"])?.unwrap_or(10000.0),
        };
        put("context_length", Value::U32(ctx as u32));
        put(
            "rope.scaling.original_context_length",
            Value::U32(orig as u32),
        );
        put("embedding_length", Value::U32(hp.n_embd as u32));
        put("feed_forward_length", Value::U32(ff as u32));
        put("block_count", Value::U32(hp.n_layer as u32));
        put("attention.head_count", Value::U32(hp.n_head as u32));
        put("attention.head_count_kv", Value::U32(hp.n_head_kv as u32));
        put("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
        put("rope.dimension_count", Value::U32(dims as u32));
        put("rope.freq_base", Value::F32(theta as f32));
        return Ok((kv, own_keys(arch, c, &hp)?));
    }
    if arch.keys == Keys::Gemma2 {
        let ctx = hp
            .context
            .ok_or_else(|| cfg_err("lacks max_position_embeddings".into()))?;
        let ff = hp
            .n_ff
            .ok_or_else(|| cfg_err("lacks intermediate_size".into()))?;
        let eps =
            get_f64(c, &["rms_norm_eps"])?.ok_or_else(|| cfg_err("lacks rms_norm_eps".into()))?;
        put("context_length", Value::U32(ctx as u32));
        put("embedding_length", Value::U32(hp.n_embd as u32));
        put("block_count", Value::U32(hp.n_layer as u32));
        put("feed_forward_length", Value::U32(ff as u32));
        put("attention.head_count", Value::U32(hp.n_head as u32));
        put("attention.head_count_kv", Value::U32(hp.n_head_kv as u32));
        put("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
        put("attention.key_length", Value::U32(hp.head_dim as u32));
        put("attention.value_length", Value::U32(hp.head_dim as u32));
        return Ok((kv, own_keys(arch, c, &hp)?));
    }
    put("block_count", Value::U32(hp.n_layer as u32));
    if let Some(n) = hp.context {
        put("context_length", Value::U32(n as u32));
    }
    put("embedding_length", Value::U32(hp.n_embd as u32));
    if let Some(n) = hp.n_ff {
        put("feed_forward_length", Value::U32(n as u32));
    }
    put("attention.head_count", Value::U32(hp.n_head as u32));
    // latent attention runs as one key/value head (its compressed vector) in llama.cpp
    let kv_heads = if hp.mla.is_some() { 1 } else { hp.n_head_kv };
    put("attention.head_count_kv", Value::U32(kv_heads as u32));
    // rope of the layers that attend to everything (Gemma 3 gives sliding-window layers their own)
    let rope = c
        .get("rope_parameters")
        .or_else(|| c.get("rope_scaling"))
        .filter(|v| !v.is_null())
        .map(|r| r.get("full_attention").unwrap_or(r));
    if let Some(r) = rope {
        let ty = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let factor = get_f64(r, &["factor"])?;
        match (ty, factor) {
            ("default", _) => {}
            ("linear", Some(f)) => {
                put("rope.scaling.type", Value::String("linear".into()));
                put("rope.scaling.factor", Value::F32(f as f32));
            }
            ("yarn", Some(f)) => {
                put("rope.scaling.type", Value::String("yarn".into()));
                put("rope.scaling.factor", Value::F32(f as f32));
                let key = ["original_max_position_embeddings"];
                let orig = get_u64(r, &key, MAX_CONTEXT)?
                    .or(get_u64(c, &key, MAX_CONTEXT)?)
                    .ok_or_else(|| {
                        Error::Config(
                            "yarn rope scaling without original_max_position_embeddings".into(),
                        )
                    })?;
                put(
                    "rope.scaling.original_context_length",
                    Value::U32(orig as u32),
                );
                let f = |k: &str| r.get(k).and_then(|v| v.as_f64());
                for (key, v) in [
                    ("rope.scaling.yarn_ext_factor", f("extrapolation_factor")),
                    (
                        "rope.scaling.yarn_attn_factor",
                        f("attention_factor").or_else(|| f("attn_factor")),
                    ),
                    ("rope.scaling.yarn_beta_fast", f("beta_fast")),
                    ("rope.scaling.yarn_beta_slow", f("beta_slow")),
                ] {
                    if let Some(v) = v {
                        put(key, Value::F32(v as f32));
                    }
                }
            }
            // llama.cpp reads Llama 3's frequency scaling from a generated `rope_freqs` tensor
            ("llama3", _) if arch.llama3_rope_freqs => {}
            (t, _) => {
                return Err(Error::Config(format!(
                    "rope scaling type '{t}' is not supported yet"
                )))
            }
        }
    }
    let theta = match get_f64(c, &["rope_theta"])? {
        Some(t) => Some(t),
        None => match rope {
            Some(r) => get_f64(r, &["rope_theta"])?,
            None => None,
        },
    };
    if let Some(t) = theta {
        put("rope.freq_base", Value::F32(t as f32));
    }
    let swa = qs_model::rope_params(c).and_then(|r| r.get("sliding_attention"));
    if let Some(t) = swa
        .map(|r| get_f64(r, &["rope_theta"]))
        .transpose()?
        .flatten()
    {
        put("rope.freq_base_swa", Value::F32(t as f32));
    }
    if let Some(e) = get_f64(c, &["rms_norm_eps", "norm_eps"])? {
        put("attention.layer_norm_rms_epsilon", Value::F32(e as f32));
    }
    if let Some(m) = hp.moe {
        put("expert_count", Value::U32(m.experts as u32));
        put("expert_used_count", Value::U32(m.used as u32));
    }
    for (key, gk) in [
        ("n_group", "expert_group_count"),
        ("topk_group", "expert_group_used_count"),
    ] {
        if let Some(n) = get_u64(c, &[key], qs_numeric::limits::MAX_EXPERTS)? {
            put(gk, Value::U32(n as u32));
        }
    }
    if let Some(f) = scoring_func(c)? {
        put("expert_gating_func", Value::U32(f));
    }
    if c.get("head_dim").is_some_and(|v| !v.is_null()) {
        // latent attention's cached key: the compressed vector and the rope part; its value:
        // the compressed vector (the converter overwrites head_dim's values in place)
        let (k, v) = match hp.mla {
            Some(m) => (m.kv_lora + m.qk_rope, m.kv_lora),
            None => (hp.head_dim, hp.head_dim),
        };
        put("attention.key_length", Value::U32(k as u32));
        put("attention.value_length", Value::U32(v as u32));
    }
    Ok((kv, own_keys(arch, c, &hp)?))
}

/// llama.cpp's expert gating function of a config's scoring function (`None`: not given).
fn scoring_func(c: &Json) -> Result<Option<u32>> {
    // (the first key present, as the converter's find_hparam takes it, even when null)
    let Some(v) = qs_model::SCORING_KEYS
        .iter()
        .find_map(|k| c.get(*k))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    match v.as_str() {
        Some("softmax") => Ok(Some(1)),
        Some("sigmoid") => Ok(Some(2)),
        Some("sqrtsoftplus") => Ok(Some(3)),
        _ => Err(cfg_err(format!(
            "expert scoring function {} is not one llama.cpp computes (softmax, sigmoid, sqrtsoftplus)",
            qs_formats::error::shown(&v.to_string())
        ))),
    }
}

/// The architecture's own keys ([`Arch::own_keys`]) from config.json completed with defaults.
fn own_keys(arch: &Arch, c: &Json, hp: &HParams) -> Result<Vec<(String, Value)>> {
    let a = arch.name;
    let mut own: Vec<(String, Value)> = Vec::new();
    for k in arch.own_keys {
        let (key, v) = match k {
            OwnKey::VocabSize => {
                let v = hp
                    .vocab
                    .ok_or_else(|| cfg_err("lacks vocab_size".to_string()))?;
                ("vocab_size", Value::U32(v as u32))
            }
            OwnKey::RopeDim => ("rope.dimension_count", Value::U32(hp.head_dim as u32)),
            OwnKey::AttnSoftcap => match get_f64(c, &["attn_logit_softcapping"])? {
                Some(x) => ("attn_logit_softcapping", Value::F32(x as f32)),
                None => return Err(cfg_err("lacks attn_logit_softcapping".into())),
            },
            OwnKey::FinalSoftcap => match get_f64(c, &["final_logit_softcapping"])? {
                Some(x) if x != 0.0 => ("final_logit_softcapping", Value::F32(x as f32)),
                _ => continue,
            },
            OwnKey::ExpertFf => match get_u64(c, &["moe_intermediate_size"], MAX_WIDTH)? {
                Some(n) => ("expert_feed_forward_length", Value::U32(n as u32)),
                None => continue,
            },
            OwnKey::ExpertSharedFf => {
                match get_u64(c, &["shared_expert_intermediate_size"], MAX_WIDTH)? {
                    Some(n) => ("expert_shared_feed_forward_length", Value::U32(n as u32)),
                    None => continue,
                }
            }
            OwnKey::ExpertFfIsFf => match hp.n_ff {
                Some(n) => ("expert_feed_forward_length", Value::U32(n as u32)),
                None => return Err(cfg_err("lacks intermediate_size".into())),
            },
            // the config's value, as the converter writes it (the forward pass clamps it)
            OwnKey::LeadingDense => (
                "leading_dense_block_count",
                Value::U32(
                    get_u64(
                        c,
                        &["first_k_dense_replace"],
                        qs_numeric::limits::MAX_LAYERS,
                    )?
                    .unwrap_or(0) as u32,
                ),
            ),
            OwnKey::QLoraRank => match hp.mla.and_then(|m| m.q_lora) {
                Some(q) => ("attention.q_lora_rank", Value::U32(q as u32)),
                None => continue,
            },
            OwnKey::KvLoraRank => (
                "attention.kv_lora_rank",
                Value::U32(mla(hp)?.kv_lora as u32),
            ),
            OwnKey::KeyLengthMla => (
                "attention.key_length_mla",
                Value::U32(mla(hp)?.qk_head() as u32),
            ),
            OwnKey::ValueLengthMla => (
                "attention.value_length_mla",
                Value::U32(mla(hp)?.v_head as u32),
            ),
            OwnKey::ExpertSharedCount => (
                "expert_shared_count",
                Value::U32(hp.moe.map_or(0, |m| m.shared) as u32),
            ),
            OwnKey::ExpertWeightsScale => match get_f64(c, &["routed_scaling_factor"])? {
                Some(x) => ("expert_weights_scale", Value::F32(x as f32)),
                None => continue,
            },
            // (transformers' default when absent, as the converter reads it)
            OwnKey::ExpertWeightsNorm => {
                match qs_model::renormalizes_experts(c).map_err(model_err)? {
                    true => ("expert_weights_norm", Value::Bool(true)),
                    false => continue,
                }
            }
            OwnKey::RopeDimQkRope => ("rope.dimension_count", Value::U32(mla(hp)?.qk_rope as u32)),
            OwnKey::YarnLogMul => {
                match qs_model::rope_params(c)
                    .map(|r| get_f64(r, &["mscale_all_dim"]))
                    .transpose()?
                    .flatten()
                {
                    // the converter multiplies in f64 and stores the f32 of the product
                    Some(m) => (
                        "rope.scaling.yarn_log_multiplier",
                        Value::F32((0.1 * m) as f32),
                    ),
                    None => continue,
                }
            }
            OwnKey::SlidingWindowOrZero => {
                let w = get_u64(c, &["sliding_window"], MAX_CONTEXT)?.unwrap_or(0);
                ("attention.sliding_window", Value::U32(w as u32))
            }
            OwnKey::SlidingWindow => {
                if get_f64(c, &["sliding_window_pattern"])? == Some(1.0) {
                    continue;
                }
                match get_u64(c, &["sliding_window"], MAX_CONTEXT)? {
                    Some(w) => ("attention.sliding_window", Value::U32(w as u32)),
                    None => continue,
                }
            }
        };
        own.push((format!("{a}.{key}"), v));
    }
    Ok(own)
}

/// The latent attention sizes of a model whose architecture has them.
fn mla(hp: &HParams) -> Result<qs_model::hparams::MlaParams> {
    hp.mla
        .ok_or_else(|| cfg_err("lacks kv_lora_rank (multi-head latent attention)".into()))
}

/// The sliding-window layers must be where llama.cpp puts them for `arch` (every layer but each
/// [`Arch::swa_every`]-th), and the attention scale llama.cpp assumes must be the model's.
fn check_window_layers(arch: &Arch, c: &Json, layers: usize) -> Result<()> {
    if let Some(l27) = arch.query_scale_27b_layers {
        let c = &with_defaults(c);
        let hp = hparams_of(c)?;
        let assumed = if hp.n_layer == l27 {
            hp.n_embd / hp.n_head.max(1)
        } else {
            hp.head_dim
        };
        if let Some(q) = get_f64(c, &["query_pre_attn_scalar"])? {
            if q != assumed as f64 {
                return Err(cfg_err(format!(
                    "query_pre_attn_scalar = {q}, but llama.cpp's {} scales queries by {assumed}^-1/2 for this model: a GGUF would compute another model",
                    arch.name
                )));
            }
        }
    }
    let Some(n) = arch.swa_every else {
        return Ok(());
    };
    let Ok(family) = qs_model::family_of(c) else {
        return Ok(());
    };
    let have = qs_model::sliding_layers(c, family, layers).map_err(model_err)?;
    let want: Vec<bool> = (0..layers).map(|l| (l + 1) % n != 0).collect();
    if c.get("sliding_window").is_some_and(|v| !v.is_null()) {
        check_pattern(arch, &have, &want, "layers attending to the whole context")?;
    }
    Ok(())
}

/// llama.cpp's MoE architectures route every layer's tokens through experts, renormalising
/// the chosen experts' weights or not as the architecture fixes it ([`Moe::renormalize`]): a
/// config that says otherwise (dense layers among the sparse ones, `norm_topk_prob`) is
/// refused, as is a MoE config for an architecture without experts.
fn check_moe(arch: &Arch, c: &Json, hp: &HParams) -> Result<()> {
    let c = &with_defaults(c);
    let Some(moe) = arch.moe else {
        if hp.moe.is_some() {
            return Err(cfg_err(format!(
                "gives experts ({}), but {} has none",
                hparams::EXPERT_KEYS.join("/"),
                arch.name
            )));
        }
        return Ok(());
    };
    if hp.moe.is_none() {
        return Err(cfg_err(format!(
            "lacks the number of experts ({})",
            hparams::EXPERT_KEYS.join(" or ")
        )));
    }
    if get_u64(c, &["decoder_sparse_step"], u64::MAX)?.is_some_and(|s| s != 1) {
        return Err(cfg_err(format!(
            "decoder_sparse_step is not 1, but llama.cpp's {} has experts in every layer: a GGUF would compute another model",
            arch.name
        )));
    }
    if c.get("mlp_only_layers")
        .and_then(|v| v.as_array())
        .is_some_and(|a| !a.is_empty())
    {
        return Err(cfg_err(format!(
            "mlp_only_layers lists dense layers, but llama.cpp's {} has experts in every layer: a GGUF would compute another model",
            arch.name
        )));
    }
    if let Some(want) = arch.scoring {
        let have = qs_model::scoring_func(c);
        if have != Some(want) {
            return Err(cfg_err(format!(
                "scoring_func is {}, but transformers scores {}'s experts with a {want} (llama.cpp reads the function from the file, softmax when absent): a GGUF would compute another model",
                have.map_or("absent".to_string(), |h| format!("'{}'", qs_formats::error::shown(h))),
                arch.hf_class
            )));
        }
    }
    if hp.mla.is_some() {
        qs_model::mla_supported(c).map_err(model_err)?;
    }
    // llama.cpp's checks as it loads expert groups
    if let (Some(n), Some(k)) = (
        get_u64(c, &["n_group"], u64::MAX)?,
        get_u64(c, &["topk_group"], u64::MAX)?,
    ) {
        let experts = hp.moe.map_or(0, |m| m.experts);
        if n > 1 && (n >= experts || !experts.is_multiple_of(n) || k >= n || k == 0) {
            return Err(cfg_err(format!(
                "n_group = {n}, topk_group = {k} for {experts} experts: llama.cpp needs fewer groups than experts, dividing them, and fewer groups used than groups"
            )));
        }
    }
    let Some(fixed) = moe.renormalize else {
        return Ok(());
    };
    let renorm = qs_model::renormalizes_experts(c).map_err(model_err)?;
    if renorm != fixed {
        return Err(cfg_err(format!(
            "norm_topk_prob = {renorm}, but llama.cpp's {} {} the chosen experts' weights: a GGUF would compute another model",
            arch.name,
            if fixed { "renormalises" } else { "does not renormalise" }
        )));
    }
    Ok(())
}

/// The layers without rope must be where llama.cpp puts them for `arch` (none, or every
/// [`Arch::nope_every`]-th).
fn check_rope_layers(arch: &Arch, c: &Json, layers: usize) -> Result<()> {
    let Ok(family) = qs_model::family_of(c) else {
        return Ok(());
    };
    let have = qs_model::rope_layers(c, family, layers).map_err(model_err)?;
    let want: Vec<bool> = (0..layers)
        .map(|l| arch.nope_every.is_none_or(|n| (l + 1) % n != 0))
        .collect();
    check_pattern(arch, &have, &want, "layers without rope")
}

/// A per-layer pattern of the config (`have`) must be the one llama.cpp assumes (`want`); the
/// error lists the layers where each is false (`what` names them).
fn check_pattern(arch: &Arch, have: &[bool], want: &[bool], what: &str) -> Result<()> {
    if have == want {
        return Ok(());
    }
    let list = |v: &[bool]| {
        v.iter()
            .enumerate()
            .filter(|(_, f)| !**f)
            .map(|(l, _)| l.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(cfg_err(format!(
        "{what} [{}], but llama.cpp's {} has [{}]: a GGUF would compute another model",
        list(have),
        arch.name,
        list(want)
    )))
}

/// A qs-model configuration error as one of config.json.
fn model_err(e: qs_model::ModelError) -> Error {
    match e {
        qs_model::ModelError::Config(m) => cfg_err(m),
        e => Error::Config(e.to_string()),
    }
}

/// A generated tensor: HF-style name, shape, f32 values.
pub type Generated = (String, Vec<usize>, Vec<f32>);

/// Tensors llama.cpp's converter computes rather than copies (named as [`map_tensor`] expects):
/// Llama 3 rope scaling becomes a `rope_freqs` tensor of per-pair frequency divisors.
pub fn generated_tensors(arch: &Arch, c: &Json) -> Result<Vec<Generated>> {
    if let Some(lr) = longrope(c)? {
        return Ok(vec![
            (
                "rope_factors_long.weight".into(),
                vec![lr.long.len()],
                lr.long,
            ),
            (
                "rope_factors_short.weight".into(),
                vec![lr.short.len()],
                lr.short,
            ),
        ]);
    }
    let Some(r) = qs_model::rope_params(c) else {
        return Ok(vec![]);
    };
    if !arch.llama3_rope_freqs || !qs_model::rope_type(r).eq_ignore_ascii_case("llama3") {
        return Ok(vec![]);
    }
    let theta = match get_f64(c, &["rope_theta"])? {
        Some(t) => t,
        None => get_f64(r, &["rope_theta"])?.unwrap_or(10000.0),
    };
    let dim = hparams_of(c)?.head_dim as usize;
    let f = qs_model::llama3_rope_factors(r, theta, dim);
    Ok(vec![("rope_freqs.weight".to_string(), vec![f.len()], f)])
}

/// LongRoPE's factors of a config.json completed with defaults (Phi-3), checked: one per
/// rotary pair.
fn longrope(c: &Json) -> Result<Option<qs_model::LongRope>> {
    let c = &with_defaults(c);
    let hp = hparams_of(c)?;
    let dims = qs_model::rotary_dims(
        c,
        hp.n_embd as usize,
        hp.n_head as usize,
        hp.head_dim as usize,
    );
    qs_model::longrope(c, dims).map_err(model_err)
}

/// Keys written before the common metadata: the converter adds LongRoPE's attention factor
/// while it generates the factor tensors, before anything else.
pub fn early_keys(arch: &Arch, c: &Json) -> Result<Vec<(String, Value)>> {
    Ok(match longrope(c)? {
        Some(lr) => vec![(
            format!("{}.rope.scaling.attn_factor", arch.name),
            Value::F32(lr.attn_factor as f32),
        )],
        None => vec![],
    })
}

/// What happens to one HF tensor in the GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Stored under this GGUF name; rows permuted with this head count when `Some`; 1 added to
    /// every value when `shift` (Gemma's norms, see [`Arch::norm_shift`]).
    Tensor {
        name: String,
        permute_heads: Option<usize>,
        shift: bool,
    },
    /// Not stored (e.g. `rotary_emb.inv_freq`, recomputed by llama.cpp).
    Skip,
}

/// The norms of a llama-style decoder layer (norm before attention and before the MLP,
/// optional per-head q/k norms): HF name under `model.layers.N.` → llama.cpp name under `blk.N.`.
pub const LLAMA_NORMS: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Gemma's norms: before and after attention, before and after the MLP, per-head q/k norms.
pub const GEMMA_NORMS: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
];

/// llama.cpp's name (under `blk.N.`) of a decoder layer's linear.
pub fn gguf_linear(l: Linear) -> &'static str {
    match l {
        Linear::Q => "attn_q",
        Linear::K => "attn_k",
        Linear::V => "attn_v",
        Linear::O => "attn_output",
        Linear::Gate => "ffn_gate",
        Linear::Up => "ffn_up",
        Linear::Down => "ffn_down",
    }
}

/// Every module of a decoder layer, HF name → llama.cpp name: the architecture's norms, the
/// linears of `qs_model::Linear` (the one list of them), then its fused linears. `export`
/// inverts it, the later of two HF names for one llama.cpp name winning (Phi-3's
/// `gate_up_proj` over `up_proj`).
pub(crate) fn layer_names(arch: &Arch) -> impl Iterator<Item = (&'static str, &'static str)> {
    arch.layer_norms
        .iter()
        .copied()
        .chain(
            Linear::ALL
                .into_iter()
                .map(|l| (l.hf_name(), gguf_linear(l))),
        )
        .chain(arch.fused.iter().copied())
        .chain(arch.attention.iter().copied())
        .chain(arch.moe.map_or(&[][..], |m| m.modules).iter().copied())
}

/// The stacked expert tensors of an MoE model, per layer and projection: (the stacked name
/// [`map_tensor`] reads, the shard it counts as being in, its per-expert parts in expert
/// order). The shard is the last one holding any of the layer's experts: the converter writes
/// a layer's stacked tensors once it has read all of them.
pub fn expert_groups(arch: &Arch, src: &ModelSource) -> Result<Vec<(String, usize, Vec<String>)>> {
    let Some(moe) = arch.moe else {
        return Ok(vec![]);
    };
    let c = src.config.as_ref().unwrap_or(&Json::Null);
    let hp = hparams_of(c)?;
    // (a config llama.cpp would not honour is refused before its experts are looked for)
    check_moe(arch, c, &hp)?;
    if moe.stored_stacked {
        return Ok(vec![]);
    }
    let Some(m) = hp.moe else {
        return Ok(vec![]);
    };
    let file_of: std::collections::HashMap<&str, usize> = src
        .tensors
        .iter()
        .map(|t| (t.info.name.as_str(), t.file))
        .collect();
    let mut groups = Vec::new();
    // (leading dense layers have no experts)
    for l in hp.dense_layers..hp.n_layer {
        let prefix = format!("model.layers.{l}.{}", moe.experts);
        let parts = |p: &str| -> Vec<String> {
            (0..m.experts)
                .map(|x| format!("{prefix}.{x}.{p}.weight"))
                .collect()
        };
        let file = moe
            .projs
            .iter()
            .flat_map(|(p, _)| parts(p))
            .filter_map(|n| file_of.get(n.as_str()).copied())
            .max()
            .unwrap_or(0);
        for (p, _) in moe.projs {
            groups.push((format!("{prefix}.{p}.weight"), file, parts(p)));
        }
    }
    Ok(groups)
}

/// The views of a checkpoint that stores tensors rearranged ([`Arch::views`]); none for
/// another.
pub fn expert_views(arch: &Arch, src: &ModelSource) -> Result<Vec<qs_formats::source::ViewSpec>> {
    let Some(views) = arch.views else {
        return Ok(vec![]);
    };
    let c = src.config.as_ref().unwrap_or(&Json::Null);
    views(src, &hparams_of(c)?)
}

/// HF tensor name → GGUF name (and permutation), or an error naming the tensor.
pub fn map_tensor(arch: &Arch, c: &Json, hf: &str) -> Result<Mapped> {
    if hf.ends_with("rotary_emb.inv_freq") || arch.dropped.contains(&hf) {
        return Ok(Mapped::Skip);
    }
    let shift = arch.norm_shift && hf.ends_with("norm.weight");
    let unknown = || {
        Error::Config(format!(
            "tensor '{hf}' has no GGUF name for architecture {}",
            arch.name
        ))
    };
    if let Some((bid, part)) = hf
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
    {
        // layers past num_hidden_layers: multi-token prediction, which the converter leaves out
        if let (Ok(l), Some(n)) = (
            bid.parse::<u64>(),
            get_u64(c, hparams::LAYER_KEYS, qs_numeric::limits::MAX_LAYERS)?,
        ) {
            if l >= n {
                return Ok(Mapped::Skip);
            }
        }
        if let (Some((_, gg)), Ok(bid)) = (
            arch.bare.iter().find(|(h, _)| *h == part),
            bid.parse::<usize>(),
        ) {
            return Ok(Mapped::Tensor {
                name: format!("blk.{bid}.{gg}"),
                permute_heads: None,
                shift,
            });
        }
    }
    let (stem, suffix) = match hf.rsplit_once('.') {
        Some((s, x @ ("weight" | "bias"))) => (s, x),
        _ => return Err(unknown()),
    };
    let plain = |n: &str| {
        Ok(Mapped::Tensor {
            name: format!("{n}.{suffix}"),
            permute_heads: None,
            shift,
        })
    };
    match stem {
        "model.embed_tokens" => return plain("token_embd"),
        "model.norm" => return plain("output_norm"),
        "lm_head" => return plain("output"),
        "rope_freqs" => return plain("rope_freqs"),
        "rope_factors_long" => return plain("rope_factors_long"),
        "rope_factors_short" => return plain("rope_factors_short"),
        _ => {}
    }
    let rest = stem.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (bid, part) = rest.split_once('.').ok_or_else(unknown)?;
    let bid: usize = bid.parse().map_err(|_| unknown())?;
    if let Some(moe) = arch.moe {
        let stacked = part
            .strip_prefix(moe.experts)
            .and_then(|p| p.strip_prefix('.'))
            .and_then(|p| moe.projs.iter().find(|(h, _)| *h == p));
        if let Some((_, gg)) = stacked {
            return Ok(Mapped::Tensor {
                name: format!("blk.{bid}.{gg}.{suffix}"),
                permute_heads: None,
                shift,
            });
        }
    }
    let (_, gg) = layer_names(arch)
        .find(|(h, _)| *h == part)
        .ok_or_else(unknown)?;
    let permute_heads = if arch.permute_qk && matches!(gg, "attn_q" | "attn_k") {
        let (h, kv) = heads(c)?;
        Some(if gg == "attn_k" { kv } else { h } as usize)
    } else {
        None
    };
    Ok(Mapped::Tensor {
        name: format!("blk.{bid}.{gg}.{suffix}"),
        permute_heads,
        shift,
    })
}

/// Source row of output row `r` under llama.cpp's q/k permutation of a tensor with `rows` rows:
/// rows viewed as `(n_head, 2, rows/n_head/2)`, axes 1 and 2 swapped.
#[inline]
pub fn permuted_source_row(r: usize, rows: usize, n_head: usize) -> usize {
    let half = rows / n_head / 2;
    let (h, rem) = (r / (2 * half), r % (2 * half));
    let (i, j) = (rem / 2, rem % 2);
    h * 2 * half + j * half + i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn permutation_matches_reshape_swapaxes() {
        // numpy: w.reshape(2, 2, 3, cols).swapaxes(1, 2).reshape(12, cols) for 2 heads
        let src: Vec<usize> = (0..12).map(|r| permuted_source_row(r, 12, 2)).collect();
        assert_eq!(src, vec![0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
        let mut seen = src.clone();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn names_and_keys() {
        let c = json!({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 768, "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048});
        let a = detect(&c).unwrap();
        assert_eq!(
            map_tensor(a, &c, "model.layers.1.self_attn.k_proj.weight").unwrap(),
            Mapped::Tensor {
                name: "blk.1.attn_k.weight".into(),
                permute_heads: Some(2),
                shift: false
            }
        );
        assert_eq!(
            map_tensor(a, &c, "model.layers.0.mlp.down_proj.weight").unwrap(),
            Mapped::Tensor {
                name: "blk.0.ffn_down.weight".into(),
                permute_heads: None,
                shift: false
            }
        );
        assert_eq!(
            map_tensor(a, &c, "lm_head.weight").unwrap(),
            Mapped::Tensor {
                name: "output.weight".into(),
                permute_heads: None,
                shift: false
            }
        );
        assert!(map_tensor(a, &c, "model.vision.x.weight").is_err());
        let (base, own) = hparams(a, &c).unwrap();
        let kv: Vec<_> = base.into_iter().chain(own).collect();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("llama.rope.dimension_count"), Some(Value::U32(64)));
        assert_eq!(get("llama.attention.head_count_kv"), Some(Value::U32(2)));
        assert_eq!(get("llama.vocab_size"), Some(Value::U32(512)));
        let q = json!({"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2});
        let aq = detect(&q).unwrap();
        assert_eq!(
            map_tensor(aq, &q, "model.layers.0.self_attn.q_proj.bias").unwrap(),
            Mapped::Tensor {
                name: "blk.0.attn_q.bias".into(),
                permute_heads: None,
                shift: false
            }
        );
        assert!(detect(&json!({"model_type": "gpt_neox"}))
            .unwrap_err()
            .to_string()
            .contains("unsupported architecture 'gpt_neox'"));
    }

    /// A DeepSeek-V3 config llama.cpp would compute otherwise is refused before anything is
    /// written: rope pairs not interleaved, projection biases, no sigmoid scoring, expert groups
    /// llama.cpp rejects as it loads them; the released shape converts.
    #[test]
    fn deepseek_configs_llama_cpp_computes_otherwise_are_refused() {
        let c = json!({"model_type": "deepseek_v3", "num_hidden_layers": 3, "hidden_size": 256,
            "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
            "moe_intermediate_size": 128, "vocab_size": 512, "q_lora_rank": 128, "kv_lora_rank": 64,
            "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32, "n_routed_experts": 8,
            "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1,
            "scoring_func": "sigmoid", "norm_topk_prob": true});
        let a = detect(&c).unwrap();
        assert_eq!(a.name, "deepseek2");
        let (base, own) = hparams(a, &c).unwrap();
        let kv: Vec<_> = base.into_iter().chain(own).collect();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("deepseek2.attention.head_count_kv"),
            Some(Value::U32(1))
        );
        assert_eq!(get("deepseek2.attention.key_length"), Some(Value::U32(96)));
        assert_eq!(get("deepseek2.expert_gating_func"), Some(Value::U32(2)));
        assert_eq!(
            get("deepseek2.expert_weights_norm"),
            Some(Value::Bool(true))
        );
        // norm_topk_prob left out: transformers' default (true), as the converter writes it
        let mut d = c.clone();
        d.as_object_mut().unwrap().remove("norm_topk_prob");
        let (_, own) = hparams(a, &d).unwrap();
        assert!(own
            .iter()
            .any(|(k, v)| k == "deepseek2.expert_weights_norm" && *v == Value::Bool(true)));
        for (k, v, msg) in [
            ("rope_interleave", json!(false), "rope_interleave"),
            ("attention_bias", json!(true), "attention_bias"),
            ("scoring_func", json!("softmax"), "scoring_func"),
            ("scoring_func", Json::Null, "absent"),
            ("topk_group", json!(4), "n_group"),
            ("n_group", json!(3), "n_group"),
        ] {
            let mut d = c.clone();
            d[k] = v.clone();
            let e = hparams(a, &d).unwrap_err().to_string();
            assert!(e.contains(msg), "{k} = {v}: {e}");
        }
    }

    /// README.md's architecture table is the one [`support_table`] makes from the registry.
    #[test]
    fn readme_lists_the_registered_architectures() {
        let readme = include_str!("../../../../../README.md");
        let (start, end) = (
            "<!-- architectures: start -->\n",
            "<!-- architectures: end -->",
        );
        let a = readme.find(start).expect("README marks the table") + start.len();
        let b = readme[a..].find(end).expect("README marks the table's end") + a;
        assert_eq!(
            &readme[a..b],
            support_table(),
            "README.md's architecture table is stale; the current one:\n{}",
            support_table()
        );
    }
}
