//! What the user asked for, parsed into types the planner understands.

use qs_numeric::{DType, GgmlType, Granularity};
use regex::Regex;
use std::path::PathBuf;

/// A storage target named on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Plain float storage: f32, f16, bf16.
    Float(DType),
    /// Integer RTN codes (compressed-tensors pack-quantized), 2..8 bits.
    Int(u32),
    /// FP8 (compressed-tensors float-quantized).
    Fp8(DType),
    /// A ggml block type (GGUF only).
    Ggml(GgmlType),
    /// Leave the tensor as it is (only in `--tensor-type`).
    Keep,
}

impl Target {
    /// Parses `--to`: a target, plus the llama-quantize mixture for names like `q4_k_m`.
    pub fn parse_main(s: &str) -> Result<(Target, Option<crate::mixture::Ftype>), String> {
        match crate::mixture::Ftype::parse(s) {
            Some(f) => Ok((Target::Ggml(f.default_type()), Some(f))),
            None => Ok((Target::parse(s)?, None)),
        }
    }

    pub fn parse(s: &str) -> Result<Target, String> {
        let l = s.to_ascii_lowercase();
        Ok(match l.as_str() {
            "f32" | "fp32" | "float32" => Target::Float(DType::F32),
            "f16" | "fp16" | "float16" | "half" => Target::Float(DType::F16),
            "bf16" | "bfloat16" => Target::Float(DType::BF16),
            "int8" | "w8a16" => Target::Int(8),
            "int4" | "w4a16" => Target::Int(4),
            "int3" => Target::Int(3),
            "int2" => Target::Int(2),
            "fp8" | "fp8-e4m3" | "e4m3" | "f8_e4m3" => Target::Fp8(DType::F8E4M3),
            "fp8-e5m2" | "e5m2" | "f8_e5m2" => Target::Fp8(DType::F8E5M2),
            "keep" | "none" | "skip" => Target::Keep,
            _ => match GgmlType::from_name(&l) {
                Some(t) if t.can_quantize() => match t {
                    GgmlType::F32 => Target::Float(DType::F32),
                    GgmlType::F16 => Target::Float(DType::F16),
                    GgmlType::BF16 => Target::Float(DType::BF16),
                    t => Target::Ggml(t),
                },
                Some(t) => return Err(format!("{t} is a ggml type we cannot write yet (supported: {})", qs_numeric::ggml::quantized_type_names())),
                None => {
                    return Err(format!(
                        "unknown target '{s}' (expected f32, f16, bf16, int8, int4, int3, int2, fp8, fp8-e5m2, {})",
                        crate::mixture::Ftype::names()
                    ))
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            Target::Float(d) => d.to_string().to_lowercase(),
            Target::Int(b) => format!("int{b}"),
            Target::Fp8(DType::F8E5M2) => "fp8-e5m2".into(),
            Target::Fp8(_) => "fp8".into(),
            Target::Ggml(t) => t.name().to_lowercase(),
            Target::Keep => "keep".into(),
        }
    }

    /// True for targets that quantize (as opposed to float conversion or keeping).
    pub fn is_quantized(&self) -> bool {
        matches!(self, Target::Int(_) | Target::Fp8(_) | Target::Ggml(_))
    }
}

/// Where the output goes and in which container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Gguf,
    /// One `.safetensors` file.
    SafetensorsFile,
    /// A folder: `model.safetensors`, `config.json`, tokenizer files.
    SafetensorsDir,
}

/// Granularity the user asked for, before it is resolved per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GranularityArg {
    Tensor,
    Channel,
    Group,
    Block,
}

impl GranularityArg {
    pub fn parse(s: &str) -> Result<GranularityArg, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "tensor" => GranularityArg::Tensor,
            "channel" | "row" => GranularityArg::Channel,
            "group" => GranularityArg::Group,
            "block" => GranularityArg::Block,
            _ => {
                return Err(format!(
                    "unknown granularity '{s}' (tensor, channel, group, block)"
                ))
            }
        })
    }
}

/// Everything `quantize` needs.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub target: Target,
    /// `--group N`: group-wise scales along each row.
    pub group: Option<usize>,
    pub granularity: Option<GranularityArg>,
    /// Tile edge for fp8 block scales (default 128).
    pub block: usize,
    pub asymmetric: bool,
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    /// `REGEX=TARGET` overrides, first match wins.
    pub tensor_types: Vec<(Regex, Target)>,
    pub clamp: bool,
    pub allow_nonfinite: bool,
    pub force: bool,
    pub dry_run: bool,
    /// Where the caller will write the report once the run is done (`--report`): checked
    /// before any work (writable, not an input, not the output) so that a run does not fail
    /// after its output was written.
    pub report: Option<PathBuf>,
    /// Worker threads (None: rayon's default, one per core).
    pub threads: Option<usize>,
    /// GGUF: keep the input's tensor names and write only `general.*` keys, instead of
    /// converting a known architecture the way llama.cpp's converter does.
    pub keep_names: bool,
    /// GGUF: `tokenizer.ggml.pre` to write when it cannot be recognised.
    pub tokenizer_pre: Option<String>,
    /// GGUF of a converted model: llama-quantize's file type (mixture). `None` with a ggml
    /// target means the type's own mixture (`q4_k` → Q4_K_M, `q4_0` → Q4_0, …).
    pub mixture: Option<crate::mixture::Ftype>,
    /// GGUF of a converted model: one type for every quantizable tensor (llama-quantize --pure).
    pub pure: bool,
    /// GGUF: importance matrix (llama-imatrix output, GGUF or legacy .dat).
    pub imatrix: Option<PathBuf>,
    /// GGUF input: re-quantize tensors that are already quantized.
    pub allow_requantize: bool,
    /// GGUF: split into files of at most this many bytes of tensor data (llama.cpp's
    /// `{stem}-00001-of-0000N.gguf` convention).
    pub split_max_bytes: Option<u64>,
    /// GGUF of a converted model: type of `output.weight` (and of tied embeddings).
    pub output_tensor_type: Option<GgmlType>,
    /// GGUF of a converted model: type of `token_embd.weight`.
    pub token_embedding_type: Option<GgmlType>,
    /// GGUF: compute the importance matrix from this text (as `quantize imatrix` does, chunks
    /// of [`IMATRIX_FROM_CTX`] tokens) instead of reading one; once per model and text in a
    /// batch.
    pub imatrix_from: Option<PathBuf>,
    /// Round-to-nearest, or GPTQ on calibration activations.
    pub method: Method,
    /// Calibration text (plain or JSONL with "text"); when `None` the model writes its own.
    pub calib: Option<PathBuf>,
    pub calib_samples: usize,
    pub calib_seq_len: usize,
    pub seed: u64,
    /// Where each layer's calibration inputs come from (`--calib-inputs`).
    pub calib_inputs: CalibInputs,
    /// A mixture of experts: every calibration token feeds every expert's statistics, not only
    /// the tokens the router sends it (`--calib-all-experts`).
    pub calib_all_experts: bool,
    /// GPTQ: quantize columns by decreasing activation energy (static groups).
    pub act_order: bool,
    /// With `act_order`: groups follow the activation order and each column's group is stored
    /// (compressed-tensors `actorder: "group"` + `weight_g_idx`; GPTQ layout `desc_act`).
    pub act_order_group: bool,
    /// GPTQ: relative damping of the Hessian.
    pub damp: f64,
    /// signround: steps per layer (`--iters`), learning rate (`--lr`, default 1/iters) and
    /// calibration sequences per step (`--batch`).
    pub signround_iters: usize,
    pub signround_lr: Option<f64>,
    pub signround_batch: usize,
    /// signround: the rounding the tuning starts from (`--init`).
    pub signround_init: SignRoundInit,
    /// signround: what a tuned layer's output is compared with (`--tune-target`).
    pub signround_target: SignRoundTarget,
    /// Layout of integer safetensors outputs.
    pub int_format: IntFormat,
    /// GPTQ on integer grids: search each group's clipping for the least |x - q|^2.4.
    pub mse_clip: bool,
    /// AWQ: how candidate scales are formed.
    pub awq_scaling: qs_numeric::awq::Scaling,
    /// AWQ: calibration tokens (whole sequences, at least this many) the scale and clipping
    /// searches run on, per layer.
    pub awq_tokens: usize,
    /// Calibration sets already made in this process (a batch), reused when they match.
    pub calib_cache: Option<std::sync::Arc<crate::calib::CalibCache>>,
    /// A split GGUF: write only this slice of its files (`--shard i/N`).
    pub shard: Option<Shard>,
    /// `--target-bpw` / `--target-size`: a type per tensor chosen to fit (see
    /// [`crate::allocate`]).
    pub size_target: Option<crate::allocate::SizeTarget>,
    /// The types a size target chooses among (empty: [`crate::allocate::default_candidates`]).
    pub candidates: Vec<Target>,
}

/// Tokens per chunk of `--imatrix-from` (llama-imatrix's default context).
pub const IMATRIX_FROM_CTX: usize = 512;

/// Slice `index` (from 0) of `count` disjoint slices of some work: batch jobs, or the files of
/// one split GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `i/N` with 0 ≤ i < N (numbered from 0, as a GitHub Actions matrix index or Kubernetes'
    /// JOB_COMPLETION_INDEX).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}': a shard is i/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("'{i}' is not a shard index"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("'{n}' is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: shards are numbered from 0 to N-1 (0/{count} … {}/{count})",
                count.max(1) - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

/// Where a calibrated run's layer inputs come from (`--calib-inputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibInputs {
    /// The layers before it as this run quantized them (GPTQ's reference, AutoGPTQ,
    /// llm-compressor's sequential pipeline): each layer corrects what the earlier ones lost.
    #[default]
    Quantized,
    /// The float model's layers (llm-compressor's basic pipeline): every job of a model with
    /// the same calibration tokens sees the same inputs, so a batch computes them once.
    Float,
}

impl CalibInputs {
    pub fn parse(s: &str) -> Result<CalibInputs, String> {
        match s.to_ascii_lowercase().as_str() {
            "quantized" => Ok(CalibInputs::Quantized),
            "float" => Ok(CalibInputs::Float),
            _ => Err(format!(
                "unknown calibration inputs '{s}' (quantized, float)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CalibInputs::Quantized => "quantized",
            CalibInputs::Float => "float",
        }
    }
}

/// How integer weights are laid out in a safetensors output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntFormat {
    /// compressed-tensors pack-quantized (`weight_packed`, `weight_scale`, ...).
    CompressedTensors,
    /// AutoGPTQ "v1" (`qweight`, `qzeros`, `scales`, `g_idx`, quantize_config.json).
    Gptq,
    /// AutoAWQ GEMM (`qweight`, `qzeros`, `scales`; 4 bits with zero points).
    Awq,
}

impl IntFormat {
    pub fn parse(s: &str) -> Result<IntFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "compressed-tensors" | "ct" => Ok(IntFormat::CompressedTensors),
            "gptq" => Ok(IntFormat::Gptq),
            "awq" => Ok(IntFormat::Awq),
            _ => Err(format!(
                "unknown format '{s}' (compressed-tensors, gptq, awq)"
            )),
        }
    }
}

/// The rounding learned rounding starts from (and, with `--iters 0`, writes): the
/// importance-weighted search of each group's scale and minimum ([`qs_numeric::search`],
/// AutoRound's `iters=0` mode; the default), round to nearest on the layout's plain grid (as
/// AutoRound's tuned mode starts), GPTQ's codes for the same inputs (each offset then moves
/// a code by at most one step from GPTQ's), or GPTQ's error feedback on the search's grid
/// (`search+gptq`: each group keeps the search's scale and minimum while GPTQ chooses the
/// codes; GPTQ's own grids are fitted by min and max).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignRoundInit {
    #[default]
    Search,
    Rtn,
    Gptq,
    SearchGptq,
}

impl SignRoundInit {
    /// Starts from the importance-weighted search's grid.
    pub fn searches(self) -> bool {
        matches!(self, SignRoundInit::Search | SignRoundInit::SearchGptq)
    }
    pub fn parse(s: &str) -> Result<SignRoundInit, String> {
        match s.to_ascii_lowercase().as_str() {
            "search" => Ok(SignRoundInit::Search),
            "rtn" => Ok(SignRoundInit::Rtn),
            "gptq" => Ok(SignRoundInit::Gptq),
            "search+gptq" => Ok(SignRoundInit::SearchGptq),
            _ => Err(format!(
                "unknown start '{s}' (search, rtn, gptq, search+gptq)"
            )),
        }
    }
}

/// What learned rounding compares a tuned layer's output with: the float model's own output at
/// that layer (`model`: the float layer on the float model's inputs, AutoRound's target — a
/// layer then also makes up for what the quantized layers before it lost), or the float layer
/// on the inputs the quantized layer sees (`layer`: as GPTQ measures its error; no second
/// stream of activations). `model` is the default: on SmolLM2 it gave 20–33 % less KL
/// divergence than `layer` at each of Q4_0, Q4_K_M, Q3_K_M and Q2_K (docs/QUALITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignRoundTarget {
    Layer,
    #[default]
    Model,
}

impl SignRoundTarget {
    pub fn parse(s: &str) -> Result<SignRoundTarget, String> {
        match s.to_ascii_lowercase().as_str() {
            "layer" => Ok(SignRoundTarget::Layer),
            "model" => Ok(SignRoundTarget::Model),
            _ => Err(format!("unknown target '{s}' (model, layer)")),
        }
    }
}

/// How integer codes are chosen: round to nearest (`None`), or the calibration method of that
/// name in the registry ([`crate::calib::METHODS`], which [`crate::calib::parse_method`]
/// checks names against).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Method(pub Option<&'static str>);

impl QuantizeConfig {
    pub fn new(input: impl Into<PathBuf>, target: Target) -> QuantizeConfig {
        QuantizeConfig {
            input: input.into(),
            output: None,
            target,
            group: None,
            granularity: None,
            block: 128,
            asymmetric: false,
            include: vec![],
            exclude: vec![],
            tensor_types: vec![],
            clamp: false,
            allow_nonfinite: false,
            force: false,
            dry_run: false,
            report: None,
            threads: None,
            keep_names: false,
            tokenizer_pre: None,
            mixture: None,
            pure: false,
            imatrix: None,
            imatrix_from: None,
            allow_requantize: false,
            split_max_bytes: None,
            output_tensor_type: None,
            token_embedding_type: None,
            method: Method(None),
            int_format: IntFormat::CompressedTensors,
            mse_clip: false,
            calib: None,
            calib_samples: 128,
            calib_seq_len: 512,
            seed: 0,
            calib_inputs: CalibInputs::Quantized,
            calib_all_experts: false,
            act_order: false,
            act_order_group: false,
            damp: 0.01,
            signround_iters: 200,
            signround_lr: None,
            signround_batch: 8,
            signround_init: SignRoundInit::Search,
            signround_target: SignRoundTarget::Model,
            awq_scaling: qs_numeric::awq::Scaling::Duo,
            awq_tokens: 2048,
            calib_cache: None,
            shard: None,
            size_target: None,
            candidates: vec![],
        }
    }

    /// Resolves the granularity for an integer or fp8 target.
    pub fn granularity_for(&self, target: Target) -> Result<Granularity, String> {
        let g = match (self.granularity, self.group) {
            (Some(GranularityArg::Group), None)
            | (None, Some(_))
            | (Some(GranularityArg::Group), Some(_)) => {
                Granularity::Group(self.group.unwrap_or(128))
            }
            (Some(GranularityArg::Tensor), _) => Granularity::Tensor,
            (Some(GranularityArg::Channel), _) => Granularity::Channel,
            (Some(GranularityArg::Block), _) => Granularity::Block(self.block, self.block),
            (None, None) => match target {
                // vLLM's presets: W4A16 is group 128, W8A16 per channel; FP8 per channel.
                Target::Int(b) if b <= 4 => Granularity::Group(128),
                _ => Granularity::Channel,
            },
        };
        match (target, g) {
            (Target::Int(_), Granularity::Block(..)) => {
                Err("block scales are only for fp8 targets".into())
            }
            (Target::Fp8(_), Granularity::Group(_)) => {
                Err("fp8 supports tensor, channel or block scales (not --group)".into())
            }
            (_, g) => Ok(g),
        }
    }
}

/// Parses `REGEX=TARGET`.
pub fn parse_tensor_type(s: &str) -> Result<(Regex, Target), String> {
    let (re, t) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("'{s}': expected REGEX=TARGET"))?;
    let re = Regex::new(re).map_err(|e| format!("'{re}': {e}"))?;
    Ok((re, Target::parse(t)?))
}

/// Parses a size like llama.cpp's gguf-split: `500M`, `2G` (decimal units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('M') | Some('m') => (&t[..t.len() - 1], 1_000_000u64),
        Some('G') | Some('g') => (&t[..t.len() - 1], 1_000_000_000u64),
        Some('K') | Some('k') => (&t[..t.len() - 1], 1_000u64),
        _ => (t, 1u64),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}': expected a size like 500M or 2G"))?;
    if n == 0 {
        return Err("split size must be positive".into());
    }
    Ok(n * mul)
}

/// Parses a ggml type we can write (`q6_k`, `q8_0`, `f16`, …).
pub fn parse_ggml_type(s: &str) -> Result<GgmlType, String> {
    match GgmlType::from_name(s) {
        Some(t) if t.can_quantize() => Ok(t),
        _ => Err(format!("'{s}' is not a ggml type we can write")),
    }
}
