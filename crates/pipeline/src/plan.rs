//! The plan: for every input tensor, how it is stored and under which names, decided before
//! any data is read. Output sizes (and hence every file offset) follow from the plan.

use crate::arch::{self, Arch, Mapped};
use crate::config::{OutputKind, QuantizeConfig, Target};
use crate::error::{Error, Result};
use crate::mixture::{self, Ftype};
use qs_formats::source::ModelSource;
use qs_numeric::layout::{
    AutoAwq, AutoGptq, FloatLayout, FloatQuantized, GgmlBlocks, PackQuantized,
};
use qs_numeric::rtn::IntSpec;
use qs_numeric::{DType, GgmlType, Scheme, SchemeError, SlotType};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What happens to one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Bytes copied unchanged.
    Copy,
    /// Decoded to f32 and stored with a scheme.
    Encode(Scheme),
}

/// One stored output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub ty: SlotType,
    pub shape: Vec<usize>,
    pub nbytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Index into the source's tensors.
    pub source: usize,
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub action: Action,
    /// The target this tensor ended up with (for reports and config groups).
    pub target: Target,
    pub outputs: Vec<OutTensor>,
    pub note: Option<String>,
    /// Output row r comes from source row `arch::permuted_source_row(r, rows, heads)`.
    pub permute: Option<usize>,
    /// 1 is added to every value (Gemma's norms in a GGUF, [`arch::Arch::norm_shift`]).
    pub shift: bool,
    /// Importance weights (one per column) for a ggml type.
    pub imatrix: Option<std::sync::Arc<Vec<f32>>>,
    /// The ggml type of a quantized GGUF input tensor (`dtype` is then F32, what it decodes to).
    pub src_ggml: Option<GgmlType>,
    /// Bytes the tensor takes in the input.
    pub src_bytes: usize,
}

impl TensorPlan {
    pub fn bytes_in(&self) -> usize {
        self.src_bytes
    }
    pub fn bytes_out(&self) -> usize {
        self.outputs.iter().map(|o| o.nbytes).sum()
    }
    pub fn label(&self) -> String {
        match &self.action {
            Action::Copy => format!(
                "{} (copy)",
                self.src_ggml
                    .map_or(self.dtype.to_string(), |t| t.to_string())
            ),
            Action::Encode(s) => s.label(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: OutputKind,
    pub output: PathBuf,
    pub tensors: Vec<TensorPlan>,
    /// The architecture a GGUF output is converted for (llama.cpp names and keys).
    pub arch: Option<&'static Arch>,
    /// The llama-quantize file type a converted GGUF is written as (`general.file_type`).
    pub mixture: Option<Ftype>,
    /// The importance matrix in use, and where it came from.
    pub imatrix: Option<(PathBuf, qs_formats::imatrix::Imatrix)>,
    /// GPTQ with act-order: "static" (consecutive groups) or "group" (groups in activation
    /// order, a g_idx stored), as compressed-tensors names them.
    pub actorder: Option<&'static str>,
    /// GPTQ: the Hessian damping asked for (`--damp`), recorded as the GPTQ layout's
    /// `damp_percent`.
    pub damp: f64,
    /// Linear modules a loader creates that hold no weight of their own in the input: the
    /// `lm_head` of a causal LM whose output head is tied to the embeddings. They stay
    /// unquantized, and a safetensors output's `quantization_config` says so (`ignore`).
    pub tied_modules: Vec<String>,
}

/// One row of `--dry-run` output.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub tensor: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub storage: String,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub note: Option<String>,
}

impl Plan {
    pub fn rows(&self) -> Vec<PlanRow> {
        self.tensors
            .iter()
            .map(|t| PlanRow {
                tensor: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.src_ggml.map_or(t.dtype.to_string(), |g| g.to_string()),
                storage: t.label(),
                bytes_in: t.bytes_in(),
                bytes_out: t.bytes_out(),
                note: t.note.clone(),
            })
            .collect()
    }
}

/// Embedding tables by their usual HF / GGUF names.
pub fn is_embedding(name: &str) -> bool {
    [
        "embed_tokens",
        "wte.",
        "word_embeddings",
        "tok_embeddings",
        "embed_in",
        "token_embd",
        "wpe.",
        "embed_positions",
    ]
    .iter()
    .any(|p| name.contains(p))
}

/// Output heads by their usual names.
pub fn is_output_head(name: &str) -> bool {
    name.starts_with("lm_head")
        || name.contains(".lm_head")
        || name.contains("embed_out")
        || name == "output.weight"
}

/// A mixture of experts' router or shared-expert gate by its usual HF names: kept unquantized
/// unless asked (`--include`, `--tensor-type`), as llm-compressor's MoE recipes ignore them.
pub fn is_router(name: &str) -> bool {
    [
        ".mlp.gate.weight",
        ".block_sparse_moe.gate.weight",
        ".shared_expert_gate.weight",
        ".mlp.router.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// The default rule: 2-D float `.weight` matrices of linear layers (not routers).
pub fn is_linear_weight(name: &str, shape: &[usize], dtype: DType) -> bool {
    dtype.is_float()
        && shape.len() == 2
        && name.ends_with(".weight")
        && !is_embedding(name)
        && !is_output_head(name)
        && !is_router(name)
}

/// Decides the container from the output path (or the default output name).
pub fn output_for(cfg: &QuantizeConfig) -> Result<(OutputKind, PathBuf)> {
    let path = match &cfg.output {
        Some(p) => p.clone(),
        None => default_output(&cfg.input, cfg),
    };
    let s = path.to_string_lossy();
    let kind = if s.ends_with(".gguf") {
        OutputKind::Gguf
    } else if s.ends_with(".safetensors") {
        OutputKind::SafetensorsFile
    } else {
        OutputKind::SafetensorsDir
    };
    let path = PathBuf::from(s.trim_end_matches('/').to_string());
    Ok((kind, path))
}

fn default_output(input: &Path, cfg: &QuantizeConfig) -> PathBuf {
    let base = if input.is_dir() {
        input.canonicalize().unwrap_or(input.to_path_buf())
    } else {
        input.to_path_buf()
    };
    let stem = base
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".safetensors")
                .trim_end_matches(".index.json")
                .to_string()
        })
        .unwrap_or_else(|| "model".into());
    let dir = if input.is_dir() {
        base.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        input.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut label = cfg.target.name();
    if let Some(g) = cfg.group {
        label.push_str(&format!("-g{g}"));
    }
    match cfg.target {
        Target::Ggml(_) => dir.join(format!("{stem}-{label}.gguf")),
        _ => dir.join(format!("{stem}-{label}")),
    }
}

/// Builds the plan. Errors name the tensor that cannot be stored as asked.
/// Whether a GGUF output is laid out as llama.cpp's converter writes it (a float conversion of
/// an HF folder) rather than as llama-quantize writes it (anything quantized, any GGUF input):
/// tensor order and the position of the file-type keys differ.
pub fn converter_layout(src: &ModelSource, cfg: &QuantizeConfig) -> bool {
    src.gguf.is_none() && matches!(cfg.target, Target::Float(_))
}

/// Readies `src` for a conversion to GGUF: adds the tensors the conversion computes (see
/// [`arch::generated_tensors`]) and stacks a mixture of experts' per-expert weights into the
/// 3-D tensors GGUF holds ([`arch::expert_groups`]).
pub fn prepare_conversion(src: &mut ModelSource, cfg: &QuantizeConfig) -> Result<()> {
    let (kind, _) = output_for(cfg)?;
    if kind != OutputKind::Gguf || cfg.keep_names || src.gguf.is_some() {
        return Ok(());
    }
    let (Some(c), Some(dir)) = (src.config.clone(), src.hf_dir.clone()) else {
        return Ok(());
    };
    let arch = arch::checked_model(src)?;
    for (name, shape, data) in arch::generated_tensors(arch, &c)? {
        src.add_generated(&name, dir.join("config.json"), shape, &data);
    }
    let groups = arch::expert_groups(arch, src)?;
    src.stack(groups)?;
    let views = arch::expert_views(arch, src)?;
    src.view(views)?;
    Ok(())
}

/// The importance matrix `--imatrix` names, loaded, or the one `--imatrix-from` computes (from
/// the batch's cache when one is given: `true` then says it was computed before). GGUF outputs
/// only.
pub fn load_imatrix(cfg: &QuantizeConfig) -> Result<(Option<qs_formats::imatrix::Imatrix>, bool)> {
    let (kind, _) = output_for(cfg)?;
    if (cfg.imatrix.is_some() || cfg.imatrix_from.is_some()) && kind != OutputKind::Gguf {
        return Err(Error::Config(
            "--imatrix and --imatrix-from apply to GGUF outputs".into(),
        ));
    }
    match (&cfg.imatrix, &cfg.imatrix_from) {
        (Some(_), Some(_)) => Err(Error::Config(
            "--imatrix reads an importance matrix, --imatrix-from computes one: give one".into(),
        )),
        (Some(p), None) => Ok((Some(qs_formats::imatrix::load(p)?), false)),
        (None, Some(text)) => match &cfg.calib_cache {
            Some(c) => {
                let (im, shared) = c.imatrix(&cfg.input, text, cfg.threads)?;
                Ok((Some((*im).clone()), shared))
            }
            None => Ok((
                Some(crate::calib::compute_imatrix(
                    &cfg.input,
                    text,
                    cfg.threads,
                )?),
                false,
            )),
        },
        (None, None) => Ok((None, false)),
    }
}

/// Builds the plan from the source, the options and the loaded importance matrix
/// ([`load_imatrix`]). Errors name the tensor that cannot be stored as asked.
pub fn make_plan(
    src: &ModelSource,
    cfg: &QuantizeConfig,
    imatrix: Option<qs_formats::imatrix::Imatrix>,
) -> Result<Plan> {
    let (kind, output) = output_for(cfg)?;
    match (kind, cfg.target) {
        (OutputKind::Gguf, Target::Int(_) | Target::Fp8(_)) => {
            return Err(Error::Config(format!(
            "{} is a safetensors (compressed-tensors) target; for GGUF use f32, f16, bf16 or {}",
            cfg.target.name(),
            crate::mixture::Ftype::names()
        )))
        }
        (OutputKind::SafetensorsFile | OutputKind::SafetensorsDir, Target::Ggml(t)) => {
            return Err(Error::Config(format!(
                "{t} is a GGUF type: give an output path ending in .gguf"
            )))
        }
        _ => {}
    }
    if matches!(cfg.target, Target::Ggml(_) | Target::Float(_))
        && (cfg.group.is_some() || cfg.granularity.is_some())
    {
        return Err(Error::Config(format!(
            "--group and --granularity apply to int and fp8 targets; {} has fixed blocks",
            cfg.target.name()
        )));
    }
    // block-scaled FP8 is dequantized as it is read (`ModelSource::apply_scale`), packed
    // layouts are unpacked, MXFP4 experts are read as ggml blocks; other quantized checkpoints
    // are refused
    if let Some(qc) = src
        .config
        .as_ref()
        .and_then(|c| c.get("quantization_config"))
        .filter(|_| {
            !src.block_scaled()
                && !src
                    .tensors
                    .iter()
                    .any(|t| t.packed.is_some() || src.native_blocks(t).is_some())
        })
    {
        let method = qc
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("unknown");
        return Err(Error::Config(format!(
            "{} is already quantized (quantization_config, quant_method \"{method}\" in config.json): quantize from the original weights",
            src.input.display()
        )));
    }
    let conv = match kind {
        OutputKind::Gguf if !cfg.keep_names => Conv::of(src)?,
        _ => None,
    };
    // experts stored fused and transposed (gpt-oss) have no per-expert linears for the
    // safetensors layouts to hold
    if kind != OutputKind::Gguf {
        if let Some(a) = src.config.as_ref().and_then(|c| arch::detect(c).ok()) {
            if a.moe.is_some_and(|m| m.stored_stacked) && cfg.target.is_quantized() {
                return Err(Error::Config(format!(
                    "{}: {} is a mixture of experts stored fused (experts.gate_up_proj): its experts are not written to safetensors layouts yet; quantize to GGUF",
                    src.input.display(),
                    a.hf_class
                )));
            }
        }
    }
    let arch = conv.as_ref().map(|c| c.arch);
    // a converted model's embeddings are tied when it has no output.weight (llama-quantize's
    // --output-tensor-type then covers token_embd.weight), whatever the target
    let tied = conv.as_ref().map(|cv| {
        !src.tensors.iter().any(|t| {
            matches!(cv.map(&t.info.name), Ok(Mapped::Tensor { name, .. }) if name == "output.weight")
        })
    });
    // A converted model with a ggml target gets llama-quantize's choices: its mixture for the
    // file type (None: --pure, one type for every quantizable tensor).
    let default_ggml = match cfg.target {
        Target::Ggml(t) => t,
        _ => GgmlType::F16,
    };
    let llama_mix = match (&conv, cfg.target) {
        (Some(cv), Target::Ggml(_)) => {
            let a = cv.arch;
            let (h, kv) = cv.heads()?;
            let names: Vec<String> = src
                .tensors
                .iter()
                .filter_map(|t| match cv.map(&t.info.name) {
                    Ok(Mapped::Tensor { name, .. }) => Some(name),
                    _ => None,
                })
                .collect();
            let n_layer = cv.n_layer();
            let info = mixture::ModelInfo {
                n_gqa: h / kv.max(1),
                tied_embeddings: tied == Some(true),
                is_70b: a.is_70b(n_layer),
                n_attention_wv: names
                    .iter()
                    .filter(|n| n.contains("attn_v.weight") || n.contains("attn_qkv.weight"))
                    .count(),
                n_ffn_down: names.iter().filter(|n| n.contains("ffn_down")).count(),
                has_imatrix: imatrix.is_some(),
                n_expert: cv.n_expert()?,
                n_layer: n_layer as usize,
            };
            let f = if cfg.pure {
                None
            } else {
                Some(cfg.mixture.unwrap_or(mixture_for(default_ggml)))
            };
            Some((f, info))
        }
        _ => None,
    };
    let mut counters = mixture::Counters::default();
    let order = tensor_order(src, conv.as_ref(), converter_layout(src, cfg));
    let squeeze = conv.is_some() && !converter_layout(src, cfg);
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for i in order {
        let st = &src.tensors[i];
        let name = &st.info.name;
        let (out_name, permute, shift) = match &conv {
            Some(cv) => match cv.map(name)? {
                Mapped::Skip => continue,
                Mapped::Tensor {
                    name,
                    permute_heads,
                    shift,
                } => (name, permute_heads, shift),
            },
            _ => (name.clone(), None, false),
        };
        // Gemma 3: the converter keeps only the tokenizer's rows of the embeddings
        let kept_rows = match &conv {
            Some(cv) if cv.arch.embeddings_to_vocab && out_name == "token_embd.weight" => cv
                .tokenizer_rows(src)?
                .filter(|&n| st.info.shape.len() == 2 && n < st.info.shape[0]),
            _ => None,
        };
        let mut shape = match kept_rows {
            Some(n) => vec![n, st.info.shape[1]],
            None => st.info.shape.clone(),
        };
        if squeeze {
            // a model quantized as llama-quantize writes it has `ggml_n_dims` dimensions: outer
            // dimensions of 1 go (Qwen2-MoE's [1, hidden] shared-expert gate becomes 1-D)
            while shape.len() > 1 && shape[0] == 1 {
                shape.remove(0);
            }
        }
        let shape = &shape;
        let dtype = st.info.dtype;
        let file = src.path_of(st);
        let terr = |msg: String| Error::Tensor {
            file: file.to_path_buf(),
            tensor: name.clone(),
            msg,
        };

        let target = choose_target(
            cfg,
            name,
            &out_name,
            arch.is_some(),
            dtype,
            shape,
            llama_mix,
            tied,
            default_ggml,
            &mut counters,
        );
        if target != Target::Keep && !dtype.is_float() {
            return Err(terr(format!(
                "is {dtype}, not a float tensor: it can only be kept as is"
            )));
        }
        let (action, mut target, mut note) = choose_action(kind, target, dtype, shape, cfg, &terr)?;
        // blocks GGUF stores natively in the checkpoint (gpt-oss's MXFP4 experts) stay as they
        // are, as llama.cpp's converter keeps them, unless re-quantizing is asked for
        let forced = cfg
            .tensor_types
            .iter()
            .any(|(re, _)| re.is_match(name) || re.is_match(&out_name));
        let action = match (src.native_blocks(st), action) {
            // --allow-requantize: re-encoded as planned (another block type, or a float type
            // --tensor-type asks for)
            (Some(q), a @ Action::Encode(Scheme::Ggml(GgmlBlocks(t))))
                if kind == OutputKind::Gguf && t != q && cfg.allow_requantize =>
            {
                a
            }
            (Some(_), a @ Action::Encode(Scheme::Float(_)))
                if kind == OutputKind::Gguf && cfg.allow_requantize && forced =>
            {
                a
            }
            (Some(q), Action::Encode(_)) if kind == OutputKind::Gguf => {
                target = Target::Ggml(q);
                note = Some(format!("{q} in the checkpoint: kept"));
                Action::Copy
            }
            (_, a) => a,
        };
        // a tensor already quantized (GGUF input): kept as is, decoded to float, or (only when
        // asked) re-quantized
        let action = match (st.ggml, action) {
            (None, a) => a,
            (Some(_), Action::Copy) if kind == OutputKind::Gguf => Action::Copy,
            (Some(_), Action::Copy) => Action::Encode(Scheme::Float(FloatLayout {
                dtype: DType::F32,
                clamp: false,
            })),
            (Some(q), Action::Encode(Scheme::Ggml(GgmlBlocks(t)))) if t == q => Action::Copy,
            (Some(_), a @ Action::Encode(Scheme::Float(FloatLayout { .. }))) => a,
            (Some(q), a) => {
                if !cfg.allow_requantize {
                    return Err(terr(format!("is already {q}: re-quantizing it loses quality; pass --allow-requantize to do it anyway")));
                }
                a
            }
        };
        // a permuted, shifted, decoded or stacked tensor is re-encoded (exactly, in its own float type) rather
        // than copied
        // (blocks a view rearranges are copied as blocks: `ModelSource::ggml_rows`)
        let rearranged = !src.copyable(st) && st.ggml.is_none();
        let action = match (action, permute.is_some() || shift || rearranged) {
            (Action::Copy, true) if dtype.is_float() => {
                Action::Encode(Scheme::Float(FloatLayout {
                    dtype: gguf_float(dtype),
                    clamp: false,
                }))
            }
            (a, _) => a,
        };
        let outputs = output_tensors(&action, &out_name, kind, st, shape);
        let imatrix_of = match (&action, &imatrix) {
            (Action::Encode(Scheme::Ggml(_)), Some(im)) => match im.entries.get(&out_name) {
                // one value per column, or (stacked experts) per column of each matrix
                Some(v)
                    if v.len() == *shape.last().unwrap_or(&0)
                        || (shape.len() == 3 && v.len() == shape[0] * shape[2]) =>
                {
                    Some(std::sync::Arc::new(v.clone()))
                }
                Some(v) => {
                    return Err(terr(format!(
                        "importance matrix has {} values, the row has {}",
                        v.len(),
                        shape.last().unwrap_or(&0)
                    )))
                }
                None => None,
            },
            _ => None,
        };
        tensors.push(TensorPlan {
            source: i,
            name: name.clone(),
            dtype,
            shape: shape.clone(),
            action,
            target,
            outputs,
            note,
            permute,
            shift,
            imatrix: imatrix_of,
            src_ggml: st.ggml,
            src_bytes: st.info.end - st.info.start,
        });
    }
    one_file_wide_scheme(src, &tensors)?;
    let mixture = llama_mix.map(|_| cfg.mixture.unwrap_or(mixture_for(default_ggml)));
    Ok(Plan {
        kind,
        output,
        tensors,
        arch,
        mixture,
        // llama-quantize records the matrix's file; a computed one records its text
        imatrix: imatrix.map(|im| {
            let p = cfg.imatrix.as_ref().or(cfg.imatrix_from.as_ref());
            (p.cloned().unwrap_or_default(), im)
        }),
        actorder: (cfg.method.0.is_some() && cfg.act_order).then_some(if cfg.act_order_group {
            "group"
        } else {
            "static"
        }),
        damp: cfg.damp,
        tied_modules: tied_modules(src),
    })
}

/// The Linear modules transformers creates for `src` without a weight of their own in it: a
/// `*ForCausalLM` checkpoint without an output head ties `lm_head` to the embeddings.
fn tied_modules(src: &ModelSource) -> Vec<String> {
    let causal_lm = src
        .config
        .as_ref()
        .and_then(|c| c.get("architectures"))
        .and_then(|a| a.as_array())
        .is_some_and(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .any(|x| x.ends_with("ForCausalLM"))
        });
    let has_head = src.tensors.iter().any(|t| is_output_head(&t.info.name));
    if src.gguf.is_none() && causal_lm && !has_head {
        vec!["lm_head".to_string()]
    } else {
        vec![]
    }
}

/// The GPTQ and AWQ layouts describe every quantized linear with one `bits` and one
/// `group_size` (quantize_config.json / `quantization_config`, what transformers, optimum and
/// vLLM read): a plan that stores a GPTQ or AWQ tensor stores every quantized tensor with that
/// same scheme (group -1: each row whole).
fn one_file_wide_scheme(src: &ModelSource, tensors: &[TensorPlan]) -> Result<()> {
    let key = |t: &TensorPlan| {
        let cols = t.shape.last().copied().unwrap_or(0);
        let g = |group: usize| if group == cols { None } else { Some(group) };
        match t.action {
            Action::Encode(Scheme::Gptq(AutoGptq { bits, group })) => {
                Some(("gptq", bits, g(group)))
            }
            Action::Encode(Scheme::Awq(AutoAwq { group })) => Some(("awq", 4, g(group))),
            _ => None,
        }
    };
    let Some(first) = tensors.iter().find(|t| key(t).is_some()) else {
        return Ok(());
    };
    let describe = |t: &TensorPlan| match key(t) {
        Some((_, bits, None)) => format!("int{bits} with channel scales"),
        Some((_, bits, Some(g))) => format!("int{bits} in groups of {g}"),
        None => t.label(),
    };
    let format = key(first).map_or("gptq", |k| k.0);
    let other = tensors.iter().find(|t| {
        let quantized =
            matches!(&t.action, Action::Encode(s) if !matches!(s, Scheme::Float(FloatLayout { .. })));
        quantized && key(t) != key(first)
    });
    match other {
        None => Ok(()),
        Some(t) => Err(Error::Tensor {
            file: src.path_of(&src.tensors[t.source]).to_path_buf(),
            tensor: t.name.clone(),
            msg: format!(
                "would be {}, but --format {format} describes every quantized linear with one bit width and group size ({} for '{}'): use compressed-tensors for mixed schemes",
                describe(t),
                describe(first),
                first.name
            ),
        }),
    }
}

/// The target of one tensor: `--tensor-type` (and llama-quantize's
/// `--token-embedding-type` / `--output-tensor-type`) first; for a converted GGUF,
/// llama-quantize's mixture (`counters` advance in file order); otherwise the main target for
/// linear weights (and `--include`d matrices), everything float for a float conversion, minus
/// `--exclude`.
#[allow(clippy::too_many_arguments)]
fn choose_target(
    cfg: &QuantizeConfig,
    name: &str,
    out_name: &str,
    converted: bool,
    dtype: DType,
    shape: &[usize],
    llama_mix: Option<(Option<Ftype>, mixture::ModelInfo)>,
    tied: Option<bool>,
    default_ggml: GgmlType,
    counters: &mut mixture::Counters,
) -> Target {
    let forced = cfg
        .tensor_types
        .iter()
        .find(|(re, _)| re.is_match(name) || (converted && re.is_match(out_name)))
        .map(|(_, t)| *t);
    // --token-embedding-type / --output-tensor-type come first, as in llama-quantize (the
    // output type also covers tied embeddings), for every target of a converted model (a
    // float one too: llama-quantize's F16 file type takes them)
    let special = match (out_name, tied) {
        ("token_embd.weight", Some(tied)) => cfg
            .token_embedding_type
            .or(cfg.output_tensor_type.filter(|_| tied)),
        ("output.weight", Some(_)) => cfg.output_tensor_type,
        _ => None,
    };
    let forced = special
        .map(|t| match t {
            GgmlType::F32 => Target::Float(DType::F32),
            GgmlType::F16 => Target::Float(DType::F16),
            GgmlType::BF16 => Target::Float(DType::BF16),
            t => Target::Ggml(t),
        })
        .or(forced);
    // llama.cpp's converter writes routers F32 whatever the output type, and llama-quantize
    // keeps them so
    // (and every tensor whose name does not end in `.weight`: biases, even 2-D ones)
    let router = converted
        && (out_name.ends_with("ffn_gate_inp.weight")
            || out_name.ends_with("ffn_gate_inp_shexp.weight")
            || !out_name.ends_with(".weight"));
    match (forced, llama_mix) {
        (Some(t), _) => t,
        (None, _) if router && dtype.is_float() => Target::Float(DType::F32),
        (None, Some((f, info))) => {
            // llama-quantize's selection: its quantizable tensors, its per-tensor types
            let excluded = cfg
                .exclude
                .iter()
                .any(|re| re.is_match(name) || re.is_match(out_name));
            if !excluded && dtype.is_float() && mixture::allows_quantization(out_name, shape.len())
            {
                Target::Ggml(match f {
                    Some(f) => {
                        let experts = shape.len() == 3 && shape[0] > 1;
                        mixture::tensor_type(f, out_name, experts, &info, counters)
                    }
                    None => default_ggml,
                })
            } else {
                Target::Keep
            }
        }
        (None, None) => {
            let excluded = cfg.exclude.iter().any(|re| re.is_match(name));
            let included = cfg.include.iter().any(|re| re.is_match(name));
            let quantizable = dtype.is_float() && shape.len() == 2;
            if !cfg.target.is_quantized() {
                // conversion: every float tensor, unless excluded
                if dtype.is_float() && !excluded {
                    cfg.target
                } else {
                    Target::Keep
                }
            } else if !excluded
                && (is_linear_weight(name, shape, dtype) || (included && quantizable))
            {
                cfg.target
            } else {
                Target::Keep
            }
        }
    }
}

/// Tensor order of the output. A float conversion of an HF folder (`converter`) is what
/// llama.cpp's converter writes: shard by shard (sorted file names), each shard's tensors
/// sorted by HF name, generated tensors first, dequantized packed weights last. Anything else converted is what llama-quantize
/// writes: its loader's order, by layer then GGUF name, which also makes the mixture's
/// per-layer counters independent of the input. Without a conversion: the input's order.
fn tensor_order(src: &ModelSource, conv: Option<&Conv<'_>>, converter: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..src.tensors.len()).collect();
    if let Some(cv) = conv {
        if converter {
            // generated tensors come first, as the converter yields them first (and the
            // MXFP4 experts it repacks before reading the rest); weights it dequantizes from a
            // GPTQ or compressed-tensors layout come last; a view sorts as the stored tensor
            // the converter makes it from
            let key = |i: usize| {
                let t = &src.tensors[i];
                let early = t.view.as_ref().is_some_and(|v| v.early);
                let rank = if t.generated {
                    0
                } else if early {
                    1
                } else {
                    2
                };
                let name = t.view.as_ref().map_or(&t.info.name, |v| &v.sort_name);
                (rank, t.packed.is_some(), t.file, name.clone())
            };
            order.sort_by_cached_key(|&i| key(i));
        } else {
            let key = |i: usize| match cv.map(&src.tensors[i].info.name) {
                Ok(Mapped::Tensor { name, .. }) => (layer_of(&name), name),
                _ => (-1, String::new()),
            };
            order.sort_by_cached_key(|&i| key(i));
        }
    }
    order
}

/// The layout a tensor gets for its target in this container (with the note the report
/// shows), or an error naming the tensor: GGUF keeps 1-D tensors F32 and falls back as
/// llama-quantize does; integer targets become compressed-tensors, AutoGPTQ or AutoAWQ layouts.
fn choose_action(
    kind: OutputKind,
    target: Target,
    dtype: DType,
    shape: &[usize],
    cfg: &QuantizeConfig,
    terr: &dyn Fn(String) -> Error,
) -> Result<(Action, Target, Option<String>)> {
    let mut note = None;
    if shape.contains(&0) {
        // nothing to quantize; GGUF cannot hold it (llama.cpp's reader divides by every
        // dimension), safetensors keeps it as it is
        return match kind {
            OutputKind::Gguf => Err(terr(format!(
                "has no elements (shape {shape:?}): GGUF files cannot hold empty tensors"
            ))),
            _ => Ok((Action::Copy, Target::Keep, Some("empty: kept".to_string()))),
        };
    }
    let (action, target) = match (kind, target) {
        (OutputKind::Gguf, t @ (Target::Int(_) | Target::Fp8(_)))
        | (OutputKind::SafetensorsFile | OutputKind::SafetensorsDir, t @ Target::Ggml(_)) => {
            return Err(terr(format!(
                "target {} cannot be written to this output format",
                t.name()
            )))
        }
        (OutputKind::Gguf, Target::Keep) => {
            (gguf_keep(dtype, shape).map_err(terr)?, Target::Keep)
        }
        (_, Target::Keep) => (Action::Copy, Target::Keep),
        (OutputKind::Gguf, Target::Float(dt)) => {
            // ggml reads norms and other 1-D tensors as F32, as llama.cpp's converter writes them
            let dt = if shape.len() <= 1 { DType::F32 } else { dt };
            (float_action(dtype, dt, cfg.clamp), Target::Float(dt))
        }
        (_, Target::Float(dt)) => (float_action(dtype, dt, cfg.clamp), target),
        (OutputKind::Gguf, Target::Ggml(t)) => {
            if shape.len() < 2 {
                // ggml reads 1-D tensors (norms, biases) as F32
                note = Some("1-D: kept F32".to_string());
                (
                    float_action(dtype, DType::F32, cfg.clamp),
                    Target::Float(DType::F32),
                )
            } else {
                let cols = *shape.last().unwrap_or(&0);
                let ft = qs_numeric::ggml::fallback_for(t, cols);
                if ft != t {
                    note = Some(format!("row length {cols} is not a multiple of {}: {ft} fallback (as llama-quantize)", t.block().0));
                }
                match ft {
                    GgmlType::F16 => (
                        float_action(dtype, DType::F16, cfg.clamp),
                        Target::Float(DType::F16),
                    ),
                    ft => {
                        let s = Scheme::Ggml(GgmlBlocks(ft));
                        check(&s, shape, &terr)?;
                        (Action::Encode(s), Target::Ggml(ft))
                    }
                }
            }
        }
        (_, Target::Int(bits)) if cfg.int_format == crate::config::IntFormat::Gptq => {
            let g = cfg.granularity_for(target).map_err(Error::Config)?;
            let group = match g {
                qs_numeric::Granularity::Group(n) => n,
                qs_numeric::Granularity::Channel => shape.last().copied().unwrap_or(1),
                _ => {
                    return Err(Error::Config(
                        "--format gptq needs group or channel scales".into(),
                    ))
                }
            };
            if cfg.asymmetric {
                return Err(Error::Config(
                    "--format gptq writes symmetric checkpoints (sym=true); use compressed-tensors for --asym".into(),
                ));
            }
            if !(cfg.damp > 0.0 && cfg.damp < 1.0) {
                return Err(Error::Config(format!(
                    "--damp {}: the GPTQ layout records it as damp_percent, which transformers and optimum only load between 0 and 1 (exclusive)",
                    cfg.damp
                )));
            }
            let s = Scheme::Gptq(AutoGptq { bits, group });
            check(&s, shape, &terr)?;
            (Action::Encode(s), target)
        }
        (_, Target::Int(bits)) if cfg.int_format == crate::config::IntFormat::Awq => {
            if bits != 4 {
                return Err(terr(format!(
                    "int{bits} cannot be stored with --format awq: AutoAWQ's GEMM layout is 4-bit only (use compressed-tensors or --format gptq)"
                )));
            }
            if cfg.act_order_group {
                return Err(Error::Config(
                    "--act-order group stores each column's group (a g_idx), which the AWQ layout has no place for: use --act-order (static groups) or --format gptq".into(),
                ));
            }
            // always zero points (AutoAWQ's GEMM layout has no symmetric form); `--asym` is
            // what it is anyway
            let group = match cfg.granularity_for(target).map_err(Error::Config)? {
                qs_numeric::Granularity::Group(n) => n,
                qs_numeric::Granularity::Channel => shape.last().copied().unwrap_or(1),
                _ => {
                    return Err(Error::Config(
                        "--format awq needs group or channel scales".into(),
                    ))
                }
            };
            let s = Scheme::Awq(AutoAwq { group });
            check(&s, shape, &terr)?;
            (Action::Encode(s), target)
        }
        (_, Target::Int(_)) if cfg.act_order_group => {
            return Err(Error::Config(
                "--act-order group (groups in activation order, stored as a g_idx) needs --format gptq: compressed-tensors 0.20 removed that ordering (\"group\"); use --act-order (static) for compressed-tensors".into(),
            ))
        }
        (_, Target::Int(bits)) => {
            let g = cfg.granularity_for(target).map_err(Error::Config)?;
            let s = Scheme::Int(PackQuantized {
                spec: IntSpec {
                    bits,
                    symmetric: !cfg.asymmetric,
                },
                granularity: g,
                scale_dtype: scale_dtype(dtype),
                // written without: compressed-tensors 0.20 removed dynamic act-order
                // ("group", weight_g_idx); older checkpoints with one are still read
                g_idx: false,
            });
            check(&s, shape, &terr)?;
            (Action::Encode(s), target)
        }
        (_, Target::Fp8(format)) => {
            let g = cfg.granularity_for(target).map_err(Error::Config)?;
            let s = Scheme::Fp8(FloatQuantized {
                format,
                granularity: g,
                scale_dtype: scale_dtype(dtype),
            });
            check(&s, shape, &terr)?;
            (Action::Encode(s), target)
        }
    };
    Ok((action, target, note))
}

/// The stored tensors of one planned tensor, named after `out_name`: a copy keeps its bytes;
/// an encoded tensor gets its layout's slots (a suffix starting with '.' replaces the last
/// name component: GPTQ's `q_proj.qweight` for `q_proj.weight`).
fn output_tensors(
    action: &Action,
    out_name: &str,
    kind: OutputKind,
    st: &qs_formats::source::SourceTensor,
    shape: &[usize],
) -> Vec<OutTensor> {
    let dtype = st.info.dtype;
    match action {
        Action::Copy => vec![OutTensor {
            name: out_name.to_string(),
            ty: if kind == OutputKind::Gguf {
                SlotType::Ggml(st.ggml.unwrap_or(ggml_of(dtype)))
            } else {
                SlotType::Dtype(dtype)
            },
            shape: shape.to_vec(),
            // the first rows, when not all are kept
            nbytes: (st.info.end - st.info.start)
                / st.info.shape.first().copied().unwrap_or(1).max(1)
                * shape.first().copied().unwrap_or(1),
        }],
        Action::Encode(s) => s
            .slots(shape)
            .into_iter()
            .map(|sl| OutTensor {
                // a suffix starting with '.' replaces the last name component
                // (GPTQ's `q_proj.qweight` for `q_proj.weight`)
                name: slot_name(out_name, sl.suffix),
                ty: match (kind, sl.ty) {
                    (OutputKind::Gguf, SlotType::Dtype(d)) => SlotType::Ggml(ggml_of(d)),
                    (_, t) => t,
                },
                shape: sl.shape,
                nbytes: sl.nbytes,
            })
            .collect(),
    }
}

fn check(s: &Scheme, shape: &[usize], terr: &dyn Fn(String) -> Error) -> Result<()> {
    s.check(shape).map_err(|e| {
        let hint = match e {
            SchemeError::NotMultiple {
                cols,
                what: "the group size",
                ..
            } => {
                let alt: Vec<String> = [128usize, 64, 32, 16]
                    .iter()
                    .filter(|g| cols % **g == 0)
                    .map(|g| g.to_string())
                    .collect();
                if alt.is_empty() {
                    " (use --granularity channel)".to_string()
                } else {
                    format!(" (try --group {} or --granularity channel)", alt[0])
                }
            }
            _ => String::new(),
        };
        terr(format!("{e}{hint}"))
    })
}

/// Scales are stored in the weight's own float type (f32 for anything wider or narrower).
fn scale_dtype(src: DType) -> DType {
    match src {
        DType::F16 | DType::BF16 | DType::F32 => src,
        _ => DType::F32,
    }
}

fn float_action(src: DType, dst: DType, clamp: bool) -> Action {
    if src == dst {
        Action::Copy
    } else {
        Action::Encode(Scheme::Float(FloatLayout { dtype: dst, clamp }))
    }
}

/// Unquantized tensors in GGUF: 1-D as F32 (llama.cpp's convention), others in their own float
/// type when ggml has it, else F32.
fn gguf_keep(src: DType, shape: &[usize]) -> std::result::Result<Action, String> {
    if !src.is_float() {
        return match src {
            DType::I8 | DType::I16 | DType::I32 | DType::I64 => Ok(Action::Copy),
            _ => Err(format!("{src} tensors cannot be stored in GGUF")),
        };
    }
    let dst = if shape.len() <= 1 {
        DType::F32
    } else {
        match src {
            DType::F16 | DType::BF16 | DType::F32 => src,
            _ => DType::F32,
        }
    };
    Ok(float_action(src, dst, false))
}

/// What a GGUF conversion reads: an HF config.json, or (GGUF input) the file's own keys, whose
/// tensors already have llama.cpp's names and layout.
struct Conv<'a> {
    arch: &'static Arch,
    config: Option<&'a serde_json::Value>,
    gguf: Option<&'a qs_formats::gguf::GgufFile>,
}

impl<'a> Conv<'a> {
    fn of(src: &'a ModelSource) -> Result<Option<Conv<'a>>> {
        if let Some(g) = &src.gguf {
            return Ok(arch::of_gguf(g).map(|arch| Conv {
                arch,
                config: None,
                gguf: Some(g),
            }));
        }
        let Some(c) = &src.config else {
            return Err(Error::Input {
                path: src.input.clone(),
                msg: "no config.json beside the weights: a llama.cpp model needs the architecture and hyper-parameters (give the Hugging Face folder, or pass --keep-names to store the tensors under their own names)".into(),
            });
        };
        let dir = src.hf_dir.as_deref().unwrap_or(&src.input);
        let arch = arch::checked_model(src)?;
        if !["tokenizer.json", "tokenizer.model"]
            .iter()
            .any(|f| dir.join(f).is_file())
        {
            return Err(Error::Input {
                path: dir.to_path_buf(),
                msg: "no tokenizer.json or tokenizer.model: llama.cpp needs the model's vocabulary in the GGUF".into(),
            });
        }
        Ok(Some(Conv {
            arch,
            config: Some(c),
            gguf: None,
        }))
    }

    fn map(&self, name: &str) -> Result<Mapped> {
        match self.config {
            Some(c) => arch::map_tensor(self.arch, c, name),
            None => Ok(Mapped::Tensor {
                name: name.to_string(),
                permute_heads: None,
                shift: false,
            }),
        }
    }

    /// The token embedding rows the converter keeps (the tokenizer's token count).
    fn tokenizer_rows(&self, src: &ModelSource) -> Result<Option<usize>> {
        match (self.config, src.hf_dir.as_deref()) {
            (Some(c), Some(dir)) => crate::tokenizer::tokenizer_rows(dir, c),
            _ => Ok(None),
        }
    }

    fn gguf_u64(&self, key: &str) -> Option<u64> {
        self.gguf?
            .get(&format!("{}.{key}", self.arch.name))?
            .as_u64()
    }

    fn heads(&self) -> Result<(u64, u64)> {
        match self.config {
            Some(c) => arch::heads(c),
            None => {
                let h = self
                    .gguf_u64("attention.head_count")
                    .ok_or_else(|| Error::Config("GGUF input lacks attention.head_count".into()))?;
                Ok((h, self.gguf_u64("attention.head_count_kv").unwrap_or(h)))
            }
        }
    }

    /// Experts per layer (0 without).
    fn n_expert(&self) -> Result<u64> {
        Ok(match self.config {
            Some(c) => arch::hparams_of(c)?.moe.map_or(0, |m| m.experts),
            None => self.gguf_u64("expert_count").unwrap_or(0),
        })
    }

    fn n_layer(&self) -> u64 {
        match self.config {
            Some(c) => c
                .get("num_hidden_layers")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
            None => self.gguf_u64("block_count").unwrap_or(0),
        }
    }
}

/// The stored name of a layout slot of tensor `name`: the suffix appended, or (a suffix
/// starting with '.') replacing the last name component.
fn slot_name(name: &str, suffix: &str) -> String {
    match (suffix.starts_with('.'), name.rsplit_once('.')) {
        (true, Some((stem, _))) => format!("{stem}{suffix}"),
        _ => format!("{name}{suffix}"),
    }
}

/// The block number of a GGUF tensor name (`blk.N.…`), -1 for the others.
fn layer_of(gguf_name: &str) -> i64 {
    gguf_name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// The llama-quantize file type whose default type is `t` (`q4_k` means Q4_K_M there).
fn mixture_for(t: GgmlType) -> Ftype {
    Ftype::parse(t.name()).unwrap_or(Ftype::Pure(GgmlType::Q8_0))
}

fn gguf_float(d: DType) -> DType {
    match d {
        DType::F16 | DType::BF16 | DType::F32 => d,
        _ => DType::F32,
    }
}

/// The ggml type of a float storage type (F32, F16, BF16).
pub(crate) fn ggml_float(d: DType) -> Option<GgmlType> {
    match d {
        DType::F32 => Some(GgmlType::F32),
        DType::F16 => Some(GgmlType::F16),
        DType::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

fn ggml_of(d: DType) -> GgmlType {
    match d {
        DType::F32 => GgmlType::F32,
        DType::F16 => GgmlType::F16,
        DType::BF16 => GgmlType::BF16,
        DType::I8 => GgmlType::I8,
        DType::I16 => GgmlType::I16,
        DType::I32 => GgmlType::I32,
        DType::I64 => GgmlType::I64,
        DType::F64 => GgmlType::F64,
        // not reachable: GGUF keeps are mapped to float types above
        _ => GgmlType::F32,
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use crate::config::parse_tensor_type;
    use qs_numeric::layout::{AutoAwq, AutoGptq, GgmlBlocks, PackQuantized};

    fn cfg(target: Target) -> QuantizeConfig {
        QuantizeConfig::new("in", target)
    }

    fn target_of(c: &QuantizeConfig, name: &str, shape: &[usize]) -> Target {
        choose_target(
            c,
            name,
            name,
            false,
            DType::BF16,
            shape,
            None,
            None,
            GgmlType::F16,
            &mut mixture::Counters::default(),
        )
    }

    #[test]
    fn target_choice_follows_linear_rule_include_exclude_and_overrides() {
        let mut c = cfg(Target::Int(4));
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert_eq!(target_of(&c, q, &[8, 8]), Target::Int(4));
        assert_eq!(
            target_of(&c, "model.embed_tokens.weight", &[8, 8]),
            Target::Keep
        );
        assert_eq!(target_of(&c, "lm_head.weight", &[8, 8]), Target::Keep);
        assert_eq!(target_of(&c, "model.norm.weight", &[8]), Target::Keep);
        c.include.push(regex::Regex::new("embed_tokens").unwrap());
        assert_eq!(
            target_of(&c, "model.embed_tokens.weight", &[8, 8]),
            Target::Int(4)
        );
        c.exclude.push(regex::Regex::new("q_proj").unwrap());
        assert_eq!(target_of(&c, q, &[8, 8]), Target::Keep);
        c.tensor_types
            .push(parse_tensor_type("q_proj=int8").unwrap());
        assert_eq!(target_of(&c, q, &[8, 8]), Target::Int(8));
        // a float conversion takes every float tensor, 1-D ones too
        let f = cfg(Target::Float(DType::F16));
        assert_eq!(
            target_of(&f, "model.norm.weight", &[8]),
            Target::Float(DType::F16)
        );
    }

    fn action_of(
        c: &QuantizeConfig,
        kind: OutputKind,
        t: Target,
        shape: &[usize],
    ) -> Result<(Action, Target, Option<String>)> {
        let terr = |m: String| Error::Config(m);
        choose_action(kind, t, DType::BF16, shape, c, &terr)
    }

    #[test]
    fn scheme_choice_per_container_and_format() {
        let mut c = cfg(Target::Int(4));
        c.group = Some(64);
        let (a, _, _) =
            action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 128]).unwrap();
        assert!(matches!(
            a,
            Action::Encode(Scheme::Int(PackQuantized { spec, granularity: qs_numeric::Granularity::Group(64), scale_dtype: DType::BF16, .. })) if spec.bits == 4 && spec.symmetric
        ));
        c.int_format = crate::config::IntFormat::Gptq;
        let (a, _, _) =
            action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 128]).unwrap();
        assert_eq!(
            a,
            Action::Encode(Scheme::Gptq(AutoGptq { bits: 4, group: 64 }))
        );
        // a group that does not divide the row names the alternatives
        let e = action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 96]).unwrap_err();
        assert!(e.to_string().contains("group size"), "{e}");
        // AWQ: int4 only, with zero points whatever --asym says; channel scales are one group
        c.int_format = crate::config::IntFormat::Awq;
        let (a, _, _) =
            action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 128]).unwrap();
        assert_eq!(a, Action::Encode(Scheme::Awq(AutoAwq { group: 64 })));
        let e = action_of(&c, OutputKind::SafetensorsDir, Target::Int(8), &[8, 128]).unwrap_err();
        assert!(e.to_string().contains("4-bit only"), "{e}");
        let e = action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[12, 128]).unwrap_err();
        assert!(e.to_string().contains("packs 8 per int32"), "{e}");
        c.act_order_group = true;
        let e = action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 128]).unwrap_err();
        assert!(e.to_string().contains("g_idx"), "{e}");
        c.act_order_group = false;
        c.group = None;
        c.granularity = Some(crate::config::GranularityArg::Channel);
        let (a, _, _) =
            action_of(&c, OutputKind::SafetensorsDir, Target::Int(4), &[8, 96]).unwrap();
        assert_eq!(a, Action::Encode(Scheme::Awq(AutoAwq { group: 96 })));
        // GGUF: 1-D tensors stay F32; a row the blocks do not divide falls back as llama-quantize
        let g = cfg(Target::Ggml(GgmlType::Q4_K));
        let (a, t, _) =
            action_of(&g, OutputKind::Gguf, Target::Ggml(GgmlType::Q4_K), &[64]).unwrap();
        assert_eq!(t, Target::Float(DType::F32));
        assert!(matches!(a, Action::Encode(Scheme::Float(_))));
        let (a, _, note) = action_of(
            &g,
            OutputKind::Gguf,
            Target::Ggml(GgmlType::Q4_K),
            &[8, 576],
        )
        .unwrap();
        assert_eq!(a, Action::Encode(Scheme::Ggml(GgmlBlocks(GgmlType::Q5_0))));
        assert!(note.unwrap().contains("Q5_0 fallback"));
        // a safetensors target in a GGUF, and the other way round, are refused
        assert!(action_of(&g, OutputKind::Gguf, Target::Int(4), &[8, 128]).is_err());
        assert!(action_of(
            &g,
            OutputKind::SafetensorsFile,
            Target::Ggml(GgmlType::Q4_0),
            &[8, 128]
        )
        .is_err());
    }

    #[test]
    fn tensor_order_is_llama_quantizes_loader_order() {
        let names = [
            "blk.10.attn_q.weight",
            "output.weight",
            "blk.2.ffn_down.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        let mut v: Vec<(i64, String)> =
            names.iter().map(|n| (layer_of(n), n.to_string())).collect();
        v.sort();
        let sorted: Vec<&str> = v.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            sorted,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_down.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn output_names_append_or_replace_the_last_component() {
        assert_eq!(
            slot_name("m.q_proj.weight", "_packed"),
            "m.q_proj.weight_packed"
        );
        assert_eq!(slot_name("m.q_proj.weight", ".qweight"), "m.q_proj.qweight");
        assert_eq!(slot_name("blk.0.attn_q.weight", ""), "blk.0.attn_q.weight");
    }
}
