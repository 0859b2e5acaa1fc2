//! Calibrated quantization (`--method NAME`): run the model layer by layer on calibration
//! text and let a method choose each linear's codes from the inputs it sees. Layer L+1's
//! inputs come from layer L run with its already-quantized weights (`--calib-inputs float`:
//! with its float weights, which lets several jobs share the pass). One layer's weights, the
//! activations between layers (tokens × hidden) and one batch of ~4096 tokens' intermediate
//! values are in memory, and the codes chosen in that layer: each layer's results go to a
//! [`LayerSink`] as it is done, and a run writes them there and then (a batch's shared pass
//! keeps every job's codes on disk until its turn to write: [`spill`]).
//!
//! The loop (calibration sequences, forward pass, capture, statistics per input, propagation,
//! held-out comparison with round-to-nearest) is written once here; a method is one module
//! implementing [`Method`] — [`gptq`], [`awq`] — registered once in [`METHODS`]. A method may
//! first rewrite a layer's float weights ([`Method::transform_layer`]: AWQ's scales and clips,
//! kept as [`Transform`]s the run applies again when it writes the tensors), then choose codes
//! per linear ([`Method::quantize`]) that go to the planned layout's encoder
//! ([`qs_numeric::Layout::encode_codes`]) on the grid it asks for
//! ([`qs_numeric::Layout::code_grid`]); a method that chooses no codes leaves the transformed
//! weights to the layout's own round to nearest.
//!
//! A tenth of the calibration sequences (at least one) is held out: the report compares RTN
//! and the method on them by the layer-output error ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖².

pub mod awq;
pub mod experts;
pub mod gptq;
pub mod mla;
pub mod signround;
pub mod spill;

use crate::config::QuantizeConfig;
use crate::error::{Error, Result};
use crate::plan::{Action, Plan};
use crate::Progress;
use faer::Mat;
use qs_formats::calib::{self, CalibConfig};
use qs_formats::source::ModelSource;
use qs_model::{layer_forward, linear, Input, Layer, Linear, Model};
use qs_numeric::awq::Transform;
use qs_numeric::gptq::Hessian;
use qs_numeric::layout::CodeGrid;
pub(crate) use qs_numeric::linalg::{rows_of, to_mat};
use qs_numeric::rtn::QParams;
use qs_numeric::{Scheme, TensorStats};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The registered methods, one line each (`--method NAME`; `rtn` means none).
pub static METHODS: [&dyn Method; 4] =
    [&gptq::Gptq, &awq::Awq, &awq::AwqGptq, &signround::SIGNROUND];

/// `--method NAME`: a registered method's name, or `rtn` for round to nearest.
pub fn parse_method(name: &str) -> std::result::Result<crate::config::Method, String> {
    Ok(crate::config::Method(method(name)?.map(|m| m.name())))
}

/// The registered method a configuration names (`None`: round to nearest).
pub fn method_of(m: crate::config::Method) -> Option<&'static dyn Method> {
    m.0.and_then(|n| method(n).ok().flatten())
}

/// The method called `name`, `None` for round to nearest.
pub fn method(name: &str) -> std::result::Result<Option<&'static dyn Method>, String> {
    let l = name.to_ascii_lowercase();
    if l == "rtn" || l == "minmax" {
        return Ok(None);
    }
    METHODS
        .iter()
        .copied()
        .find(|m| m.name() == l)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
            format!("unknown method '{name}' (rtn, {})", names.join(", "))
        })
}

/// Statistics of a linear's captured inputs that a method asks for.
pub struct InputStats<'a> {
    /// `H = (2/n) Σ xᵀx` over the calibration tokens, when the method reads it
    /// ([`Method::reads_hessians`]).
    pub hessian: Option<&'a Hessian>,
}

/// One linear for a method to quantize.
pub struct LinearJob<'a> {
    /// HF weight name, and the file it is in.
    pub name: &'a str,
    pub file: &'a std::path::Path,
    /// `rows × cols` weights (`[out, in]`), as the layer holds them.
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// The grid the planned layout stores.
    pub grid: CodeGrid,
    pub stats: InputStats<'a>,
    pub cfg: &'a QuantizeConfig,
}

/// What a method chose for one weight: method-neutral codes and parameters in the original
/// row and column order (`rows × cols` codes, `rows × groups` parameters and offsets, each
/// column's group).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeSet {
    pub codes: Vec<i8>,
    pub params: Vec<QParams>,
    pub offsets: Vec<f32>,
    pub g_idx: Vec<u32>,
}

impl CodeSet {
    /// The codes as a layout's encoder takes them.
    pub fn as_codes(&self) -> qs_numeric::layout::Codes<'_> {
        qs_numeric::layout::Codes {
            codes: &self.codes,
            params: &self.params,
            offsets: &self.offsets,
            g_idx: &self.g_idx,
        }
    }

    /// The values the codes stand for, `rows × cols`.
    pub fn dequantize(&self, rows: usize, cols: usize) -> Vec<f32> {
        debug_assert_eq!(self.codes.len(), rows * cols);
        self.as_codes().values(cols)
    }
}

/// A calibration method.
pub trait Method: std::fmt::Debug + Sync {
    /// Its `--method` name.
    fn name(&self) -> &'static str;
    /// Checks the options before any work starts (the CLI's method-specific options).
    fn check_options(&self, cfg: &QuantizeConfig) -> Result<()>;
    /// Whether it can quantize a linear stored as `scheme` (`grid`: the codes its layout
    /// takes, if it takes any); `Err` says why not.
    fn supports(&self, scheme: &Scheme, grid: Option<&CodeGrid>)
        -> std::result::Result<(), String>;
    /// Whether it chooses codes ([`Method::quantize`]); otherwise the layout's round to nearest
    /// stores the (transformed) weights.
    fn chooses_codes(&self) -> bool {
        true
    }
    /// Whether [`Method::quantize`] reads its linear's input Hessian ([`InputStats::hessian`]);
    /// the calibration loop computes them only for a method that does (by default one that
    /// chooses codes). For a 7B-shaped layer they are 1.4 GB of f64 and a pass over every
    /// calibration token.
    fn reads_hessians(&self) -> bool {
        self.chooses_codes()
    }
    /// Whether a linear whose planned ggml type takes no chosen codes (MXFP4) is
    /// left to llama.cpp's own quantizer, untouched by the method. By default a method that
    /// chooses codes leaves it; one that also transforms (AWQ+GPTQ) still scales it.
    fn leaves_gridless(&self) -> bool {
        self.chooses_codes()
    }
    /// Tensors of layer `l` besides its linears that [`Method::transform_layer`] folds into
    /// (the norms before attention and the MLP, v's bias). None by default; a method with some
    /// may change any float tensor of the decoder layers (a mixture's router, latent
    /// attention's norms): [`prepare_plan`] re-encodes them all.
    fn folded_tensors(&self, _l: usize, _norms: &qs_model::Norms) -> Vec<String> {
        vec![]
    }
    /// Whether [`Method::transform_layer`] reads every calibration sequence (learned rounding)
    /// rather than about `--awq-tokens` tokens of them (AWQ's search).
    fn transforms_on_all_inputs(&self) -> bool {
        false
    }
    /// Whether [`Method::transform_layer`] reads the float model's outputs of the layer
    /// ([`LayerCtx::float_out`]).
    fn wants_float_model_outputs(&self, cfg: &QuantizeConfig) -> bool {
        let _ = cfg;
        false
    }
    /// Rewrites a layer's float weights before its linears are quantized, returning the
    /// transform of every tensor it changed (by HF name). None by default.
    fn transform_layer(&self, _ctx: &mut LayerCtx<'_>) -> Result<Vec<(String, Transform)>> {
        Ok(vec![])
    }
    /// Quantizes one linear from the statistics of its input.
    fn quantize(&self, job: &LinearJob<'_>) -> Result<CodeSet>;
}

/// A linear the run quantizes, as planned: its HF name, how it is stored, the code grid of
/// that layout (if any) and its importance weights (GGUF with `--imatrix`).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub scheme: Scheme,
    pub grid: Option<CodeGrid>,
    pub imatrix: Option<Arc<Vec<f32>>>,
    /// The tensor is fused (Phi-3's `qkv_proj`, `gate_up_proj`): the linears whose rows it
    /// holds, in order; each is calibrated as its own target and their codes are joined.
    pub fused: Option<&'static [Linear]>,
    /// A mixture of experts' projection (the key's `Gate`, `Up` or `Down`) for this many
    /// experts, stacked in this tensor or one tensor each ([`Target::per_expert`]), calibrated
    /// by [`experts`] on the tokens routed to each.
    pub experts: Option<usize>,
    /// The experts are stored one tensor each (safetensors layouts): each expert's own target,
    /// or none for an expert the run leaves unquantized. Their codes stay apart.
    pub per_expert: Option<Vec<Option<Target>>>,
}

/// One layer for [`Method::transform_layer`].
pub struct LayerCtx<'a> {
    pub model: &'a qs_model::Config,
    pub index: usize,
    pub layer: &'a mut Layer,
    /// The layer's inputs to search on (whole sequences of `seq_len` tokens).
    pub x: faer::MatRef<'a, f32>,
    /// The float model's outputs of the layer on the same tokens as `x`, when the method wants
    /// them ([`Method::wants_float_model_outputs`]) and `x` is not the float model's inputs
    /// (`--calib-inputs quantized`; with `float`, they are the float layer's outputs on `x`).
    pub float_out: Option<faer::MatRef<'a, f32>>,
    pub seq_len: usize,
    pub targets: &'a Targets,
    pub cfg: &'a QuantizeConfig,
    /// The checkpoint fuses q/k/v and gate/up (Phi-3): transforms are returned for the
    /// fused tensors.
    pub fused: bool,
}

/// `w` (rows × cols, transformed by `t`) as the planned quantizer stores and decodes it: the
/// layout's own round to nearest (a ggml type's search, with importance weights adjusted to the
/// transform), the very values the run will write for these weights.
///
/// Row chunks run in parallel: a layout encodes any aligned row range as that range of the
/// whole tensor (tested), so the values do not depend on the split.
pub fn fake_quant(target: &Target, t: &Transform, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let shape = [rows, cols];
    let imp = target.imatrix.as_ref().map(|m| t.importance(m));
    let align = target.scheme.row_align().max(1);
    let per = (65536 / cols.max(1)).max(1).div_ceil(align) * align;
    let chunks: Vec<(usize, usize)> = (0..rows)
        .step_by(per)
        .map(|r0| (r0, (r0 + per).min(rows)))
        .collect();
    let parts: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|&(r0, r1)| {
            let x = &w[r0 * cols..r1 * cols];
            let enc = target.scheme.encode_weighted(
                &shape,
                r0,
                x,
                TensorStats::default(),
                imp.as_deref(),
            );
            let parts: Vec<&[u8]> = enc.pieces.iter().map(|p| p.bytes.as_slice()).collect();
            let mut y = vec![0f32; x.len()];
            target.scheme.decode(&shape, r0, r1, &parts, &mut y);
            y
        })
        .collect();
    parts.concat()
}

/// What a method produced for one tensor: the transform to apply to its source values (AWQ),
/// the codes to store (GPTQ), and for a linear how it compares with RTN on held-out tokens.
#[derive(Debug, Clone, Default)]
pub struct Calibrated {
    pub transform: Option<Arc<Transform>>,
    pub out: Option<Arc<CodeSet>>,
    pub error: Option<LayerOutputError>,
}

/// One fused tensor's result from its parts' (in any order): codes joined in the fused
/// tensor's row order, errors averaged over its rows.
fn join_parts(
    order: &[Linear],
    mut parts: Vec<(Linear, Option<Arc<CodeSet>>, LayerOutputError, usize)>,
) -> Calibrated {
    parts.sort_by_key(|p| order.iter().position(|l| *l == p.0));
    let rows: usize = parts.iter().map(|p| p.3).sum::<usize>().max(1);
    let mean = |f: fn(&LayerOutputError) -> f64| {
        parts.iter().map(|p| f(&p.2) * p.3 as f64).sum::<f64>() / rows as f64
    };
    let error = LayerOutputError {
        rtn: mean(|e| e.rtn),
        calibrated: mean(|e| e.calibrated),
    };
    let out = if parts.iter().all(|p| p.1.is_some()) {
        let mut joined = CodeSet::default();
        for p in &parts {
            let c = p.1.as_ref().expect("checked");
            joined.codes.extend_from_slice(&c.codes);
            joined.params.extend_from_slice(&c.params);
            joined.offsets.extend_from_slice(&c.offsets);
            // one input, one Hessian: every part orders its columns alike
            joined.g_idx.clone_from(&c.g_idx);
        }
        Some(Arc::new(joined))
    } else {
        None
    };
    Calibrated {
        transform: None,
        out,
        error: Some(error),
    }
}

/// The calibration data a run used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CalibSummary {
    /// The method's `--method` name.
    pub method: &'static str,
    /// `"text"` (`--calib FILE`) or `"self-generated"` (no `--calib`: sampled from the model).
    pub source: &'static str,
    /// Seconds the model took to write its calibration text (self-generated, and made by this
    /// run).
    pub generation_secs: Option<f64>,
    /// The set was made by an earlier job of the batch (same model and calibration options)
    /// and reused.
    pub shared: bool,
    /// Where each layer's inputs came from (`--calib-inputs`).
    pub inputs: crate::config::CalibInputs,
    /// Jobs that shared this pass over the layers (1: the job's own pass).
    pub pass_jobs: usize,
    pub text_tokens: usize,
    pub seq_len: usize,
    /// Sequences asked for (`--calib-samples`).
    pub requested: usize,
    /// Disjoint sequences the method fitted on (fewer than requested when the text is short).
    pub fit_sequences: usize,
    /// Sequences from the end of the text, held out for the layer-output error.
    pub held_sequences: usize,
    /// Whether the method fits statistics to every calibration token (GPTQ's Hessians), so a
    /// short text risks overfitting (AWQ reads a fixed `--awq-tokens` sample on purpose).
    #[serde(skip)]
    pub fits_all_tokens: bool,
    /// Experts that saw fewer than [`experts::MIN_EXPERT_TOKENS`] calibration tokens and were
    /// rounded to nearest instead.
    pub starved_experts: Vec<StarvedExpert>,
}

/// An expert the router sent too few calibration tokens to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StarvedExpert {
    pub layer: usize,
    pub expert: usize,
    pub tokens: usize,
}

/// ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on held-out calibration tokens, for round to nearest and for the
/// method (serialised as `gptq`, the report schema's name for it).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LayerOutputError {
    pub rtn: f64,
    #[serde(rename = "gptq")]
    pub calibrated: f64,
}

/// The file a tensor of `src` is in (the input itself for a name it does not have).
pub(crate) fn file_of(src: &ModelSource, name: &str) -> std::path::PathBuf {
    src.tensors
        .iter()
        .find(|t| t.info.name == name)
        .map_or(src.input.clone(), |t| src.path_of(t).to_path_buf())
}

fn relative_error(y: &Mat<f32>, yq: &Mat<f32>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for j in 0..y.ncols() {
        for i in 0..y.nrows() {
            let (a, b) = (y[(i, j)] as f64, yq[(i, j)] as f64);
            num += (a - b) * (a - b);
            den += a * a;
        }
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// One matrix `w` (`[out, in]`) of target `tg` (`label` names it in messages: the tensor, or
/// one expert or head of it) quantized by the job's method from `hess`: its codes, their
/// dequantized weights, and its error on held-out inputs `xin` against round to nearest with
/// `rtn_target`'s importance (no error without held-out inputs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn calibrate_matrix(
    src: &ModelSource,
    m: &Member<'_>,
    tg: &Target,
    rtn_target: &Target,
    label: &str,
    w: &Mat<f32>,
    hess: &Hessian,
    xin: faer::MatRef<'_, f32>,
) -> Result<(CodeSet, Mat<f32>, LayerOutputError)> {
    let (rows, cols) = (w.nrows(), w.ncols());
    let file = file_of(src, &tg.name);
    let grid = tg.grid.ok_or_else(|| Error::Tensor {
        file: file.clone(),
        tensor: tg.name.clone(),
        msg: format!("--method {} needs a code grid", m.method.name()),
    })?;
    let wv = rows_of(w);
    let q = m.method.quantize(&LinearJob {
        name: label,
        file: &file,
        w: &wv,
        rows,
        cols,
        grid,
        stats: InputStats {
            hessian: Some(hess),
        },
        cfg: m.cfg,
    })?;
    let wq = to_mat(&q.dequantize(rows, cols), rows, cols);
    let error = if xin.nrows() == 0 {
        LayerOutputError::default()
    } else {
        let rtn = to_mat(
            &fake_quant(rtn_target, &Transform::default(), &wv, rows, cols),
            rows,
            cols,
        );
        let y = linear(xin, w, None);
        LayerOutputError {
            rtn: relative_error(&y, &linear(xin, &rtn, None)),
            calibrated: relative_error(&y, &linear(xin, &wq, None)),
        }
    };
    Ok((q, wq, error))
}

/// The linears a calibrated run quantizes, by (layer, linear), from the plan. Every check
/// that can fail does so here, before any work.
pub fn targets(
    method: &dyn Method,
    src: &ModelSource,
    plan: &Plan,
    cfg: &QuantizeConfig,
) -> Result<Targets> {
    method.check_options(cfg)?;
    if src.hf_dir.is_none() {
        return Err(Error::Input {
            path: src.input.clone(),
            msg: format!(
                "--method {} needs a Hugging Face folder (config.json, tokenizer.json)",
                method.name()
            ),
        });
    }
    // the forward pass sizes everything from config.json: checked against the weights first
    crate::arch::checked_model(src)?;
    let layers = crate::arch::hparams_of(src.config.as_ref().unwrap_or(&serde_json::Value::Null))?
        .n_layer as usize;
    // a method that folds its scales into the norms before attention and the MLP (AWQ) needs
    // them: OLMo 2 norms the blocks' outputs instead
    let norms = model_norms(src);
    let folds = !method.folded_tensors(0, &norms).is_empty();
    if folds && (norms.attn_in.is_none() || norms.mlp_in.is_none()) {
        return Err(Error::Input {
            path: src.input.clone(),
            msg: format!(
                "--method {} folds its scales into the norms before attention and MLP (llama's input_layernorm, post_attention_layernorm), which this model does not have (it norms the blocks' outputs); use --method gptq",
                method.name()
            ),
        });
    }
    if let Some(norm) = method
        .folded_tensors(0, &norms)
        .into_iter()
        .find(|n| n.ends_with("layernorm.weight") && !src.tensors.iter().any(|t| &t.info.name == n))
    {
        return Err(Error::Input {
            path: src.input.clone(),
            msg: format!(
                "--method {} folds its scales into the norm before each block ({norm}), which this model does not have; use --method gptq",
                method.name()
            ),
        });
    }
    // latent attention (DeepSeek): its tensors are targets of their own (calib::mla)
    let mla = src
        .config
        .as_ref()
        .and_then(|c| crate::arch::hparams_of(c).ok())
        .is_some_and(|hp| hp.mla.is_some());
    let mut mla_targets = BTreeMap::new();
    let mut shared_targets = BTreeMap::new();
    // a mixture of experts: its experts' names and count
    let moe = src.config.as_ref().and_then(|c| {
        let names = qs_model::family_of(c).ok()?.moe?;
        let n = crate::arch::hparams_of(c).ok()?.moe?.experts as usize;
        Some((names, n))
    });
    let mut out = BTreeMap::new();
    // experts stored apart, by (layer, projection): each expert's target
    let mut apart: BTreeMap<(usize, Linear), Vec<Option<Target>>> = BTreeMap::new();
    for t in &plan.tensors {
        let Action::Encode(scheme) = &t.action else {
            continue;
        };
        if !matches!(
            scheme,
            Scheme::Int(_) | Scheme::Ggml(_) | Scheme::Gptq(_) | Scheme::Awq(_)
        ) {
            // float and fp8 targets: no method applies (an empty set is refused below)
            continue;
        }
        let name = &src.tensors[t.source].info.name;
        let grid = scheme.code_grid(&t.shape);
        if grid.is_none() && matches!(scheme, Scheme::Int(_)) {
            return Err(Error::Tensor {
                file: file_of(src, &t.name),
                tensor: t.name.clone(),
                msg: format!(
                    "--method {} needs channel or group scales, not per-tensor",
                    method.name()
                ),
            });
        }
        if grid.is_none() && matches!(scheme, Scheme::Ggml(_)) && method.leaves_gridless() {
            // a ggml type without a code grid keeps llama.cpp's own quantizer
            continue;
        }
        // a fused tensor is one target per linear it holds
        #[allow(clippy::type_complexity)]
        let keys: Option<(Vec<(usize, Linear)>, Option<&'static [Linear]>)> =
            // (latent attention's q_proj is one of its own tensors, not llama's q)
            match Linear::parse(name)
                .filter(|(l, _)| *l < layers && !(mla && mla::MlaPart::parse(name).is_some()))
            {
                Some(key) => Some((vec![key], None)),
                None => Linear::parse_fused(name)
                    .filter(|(l, _)| *l < layers)
                    .map(|(l, parts)| (parts.iter().map(|&lin| (l, lin)).collect(), Some(parts))),
            };
        // a GGUF's stacked experts: one target per projection, its experts calibrated apart
        let stacked = moe.and_then(|(names, n)| {
            qs_model::parse_stacked(&names, name)
                .filter(|(l, _)| *l < layers)
                .map(|key| (key, n))
        });
        let experts = stacked.map(|(_, n)| n);
        // one expert's tensor of a checkpoint that stores them apart
        let expert = moe
            .and_then(|(names, _)| qs_model::parse_expert(&names, name))
            .filter(|(l, _, _)| *l < layers);
        let keys = keys.or(stacked.map(|(key, _)| (vec![key], None)));
        // the tensor as a target, once the method is known to store its layout
        let target = || -> Result<Target> {
            method
                .supports(scheme, grid.as_ref())
                .map_err(|m| Error::Tensor {
                    file: file_of(src, name),
                    tensor: name.clone(),
                    msg: format!(
                        "--method {} cannot store {}: {m}",
                        method.name(),
                        scheme.label()
                    ),
                })?;
            Ok(Target {
                name: name.clone(),
                scheme: *scheme,
                grid,
                imatrix: t.imatrix.clone(),
                fused: None,
                experts: None,
                per_expert: None,
            })
        };
        match keys {
            Some((keys, fused)) => {
                let tg = Target {
                    fused,
                    experts,
                    ..target()?
                };
                for key in keys {
                    out.insert(key, tg.clone());
                }
            }
            None if mla && mla::MlaPart::parse(name).is_some_and(|(l, _)| l < layers) => {
                if let Some(key) = mla::MlaPart::parse(name) {
                    mla_targets.insert(key, target()?);
                }
            }
            None if shared_expert(src, name).is_some_and(|(l, _)| l < layers) => {
                if let Some(key) = shared_expert(src, name) {
                    shared_targets.insert(key, target()?);
                }
            }
            // experts stored one tensor each (safetensors layouts, or a GGUF with --keep-names):
            // gathered per projection below
            None if expert.is_some() => {
                if let Some(((l, e, lin), (_, n))) = expert.zip(moe) {
                    let tg = target()?;
                    let slot = apart.entry((l, lin)).or_insert_with(|| vec![None; n]);
                    match slot.get_mut(e) {
                        Some(s) => *s = Some(tg),
                        None => {
                            return Err(Error::Tensor {
                                file: file_of(src, name),
                                tensor: name.clone(),
                                msg: format!("expert {e} of a model with {n} experts"),
                            })
                        }
                    }
                }
            }
            // in a GGUF, embeddings and the output head keep llama.cpp's own quantizer
            None if matches!(scheme, Scheme::Ggml(_)) => {}
            // layers after the decoder's (DeepSeek-V3's multi-token prediction), which the
            // forward pass does not run: round to nearest
            None if name
                .strip_prefix("model.layers.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(l, _)| l.parse::<usize>().ok())
                .is_some_and(|l| l >= layers) => {}
            None => {
                return Err(Error::Tensor {
                    file: file_of(src, name),
                    tensor: name.clone(),
                    msg: format!(
                    "--method {} covers the decoder layers' linears only (exclude it or keep it)",
                    method.name()
                ),
                })
            }
        }
    }
    // each projection's experts as one target, calibrated together, written apart
    for (key, each) in apart {
        let Some(first) = each.iter().flatten().next().cloned() else {
            continue;
        };
        out.insert(
            key,
            Target {
                experts: Some(each.len()),
                per_expert: Some(each),
                ..first
            },
        );
    }
    if out.is_empty() && mla_targets.is_empty() && shared_targets.is_empty() {
        return Err(Error::Config(format!(
            "--method {} applies to integer targets (int8, int4, int3, int2) and GGUF quantized types{}, not {}",
            method.name(),
            if method.chooses_codes() {
                format!(
                    " with a code grid ({})",
                    qs_numeric::GgmlType::quantized_types()
                        .filter(|t| t.grid().is_some())
                        .map(|t| t.name().to_ascii_lowercase())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            },
            cfg.target.name()
        )));
    }
    Ok(Targets {
        linears: out,
        mla: mla_targets,
        shared: shared_targets,
    })
}

/// (layer, projection) of a mixture's shared-expert weight (`model.layers.N.{shared}.{gate,up,
/// down}_proj.weight`, the family's [`qs_model::MoeNames::shared`] module).
fn shared_expert(src: &ModelSource, name: &str) -> Option<(usize, Linear)> {
    let (module, _) = qs_model::family_of(src.config.as_ref()?)
        .ok()?
        .moe?
        .shared?;
    let rest = name.strip_prefix("model.layers.")?;
    let (l, part) = rest.split_once('.')?;
    let proj = part
        .strip_prefix(module)?
        .strip_prefix('.')?
        .strip_suffix(".weight")?;
    let lin = [
        ("gate_proj", Linear::Gate),
        ("up_proj", Linear::Up),
        ("down_proj", Linear::Down),
    ]
    .into_iter()
    .find(|(p, _)| *p == proj)?
    .1;
    Some((l.parse().ok()?, lin))
}

/// The norms of the model's decoder layers (its family's; llama's when unknown), whose names a
/// method that folds scales (AWQ) rewrites.
fn model_norms(src: &ModelSource) -> qs_model::Norms {
    src.config
        .as_ref()
        .and_then(|c| qs_model::family_of(c).ok())
        .map_or(qs_model::PRE_NORMS, |f| f.norms)
}

/// For a method that folds scales into other tensors (AWQ): those tensors must be re-encoded,
/// not copied, so a copy becomes a float encode in the same dtype (same bytes when unchanged).
pub fn prepare_plan(method: &dyn Method, src: &ModelSource, plan: &mut Plan, layers: usize) {
    let norms = model_norms(src);
    let folded: std::collections::HashSet<String> = (0..layers)
        .flat_map(|l| method.folded_tensors(l, &norms))
        .collect();
    // besides those, a mixture's router, shared-expert gate and experts kept in float, and
    // latent attention's bottleneck norms take scales too: every float tensor of the decoder
    // layers is re-encoded (the same bytes where nothing changed)
    let layered = !folded.is_empty();
    for t in &mut plan.tensors {
        let name = &src.tensors[t.source].info.name;
        if matches!(t.action, Action::Copy)
            && t.dtype.is_float()
            && t.src_ggml.is_none()
            && (folded.contains(name) || (layered && name.starts_with("model.layers.")))
        {
            t.action = Action::Encode(Scheme::float(t.dtype));
        }
    }
}

/// Calibration text the model writes itself (no `--calib`): `samples` sequences to fit and a
/// tenth more (at least one) held out, each `seq_len` tokens: the BOS token (else EOS, else
/// token 0), one ordinary token drawn over the whole vocabulary (a spread of openings, as
/// LLM-QAT's data-free generation starts), then tokens sampled at temperature 1, seeded by
/// `--seed`. Its own distribution, so what the statistics see is what the model computes
/// (docs/QUALITY.md measures how well it serves).
fn self_generated(
    model: &Model<'_>,
    src: &ModelSource,
    tokenizer_json: &std::path::Path,
    ccfg: &CalibConfig,
    progress: &dyn Progress,
) -> std::result::Result<calib::CalibSet, qs_model::ModelError> {
    let c = src.config.as_ref();
    let id = |k: &str| c.and_then(|c| c.get(k)).and_then(|v| v.as_u64());
    let start = id("bos_token_id")
        .or_else(|| id("eos_token_id"))
        .unwrap_or(0)
        .min(model.cfg.vocab.saturating_sub(1) as u64) as u32;
    let samples = ccfg.samples.max(1);
    let held = (samples / 10).max(1);
    let len = ccfg.seq_len.max(2);
    progress.stage(
        "the model writes its calibration text (tokens)",
        ((samples + held) * len) as u64,
    );
    let firsts = calib::first_tokens(tokenizer_json, samples + held, model.cfg.vocab, ccfg.seed)
        .map_err(qs_model::ModelError::Format)?;
    let prefixes: Vec<Vec<u32>> = firsts.iter().map(|&f| vec![start, f]).collect();
    let seqs = qs_model::generate(
        model,
        &prefixes,
        len,
        qs_model::generation_batch(&model.cfg, len, GENERATION_CACHE),
        ccfg.seed,
        &mut |n| progress.step(n as u64),
    )?;
    progress.finish();
    let tokens = seqs.iter().map(|s| s.len()).sum();
    let mut fit = seqs;
    let held = fit.split_off(samples);
    Ok(calib::CalibSet {
        fit,
        held,
        text_tokens: tokens,
    })
}

/// Calibration shared by the runs of one process (a batch manifest). The same model, text (or
/// self-generation), sequence count, length and seed give the same tokens, so they are cut or
/// written once. An importance matrix (`--imatrix-from`: statistics of the float model) is
/// computed once per model and text. Layer statistics (GPTQ's Hessians) are shared only by a
/// batch's `--calib-inputs float` jobs, through one pass over the layers
/// ([`calibrate_together`]), not through this cache: by default each layer's inputs come from
/// the layers before it as that run quantized them.
#[derive(Default)]
pub struct CalibCache(
    std::sync::Mutex<HashMap<CalibKey, Arc<MadeSet>>>,
    std::sync::Mutex<HashMap<(PathBuf, PathBuf), Arc<qs_formats::imatrix::Imatrix>>>,
);

/// A calibration set and, when the model wrote it, the seconds that took.
type MadeSet = (calib::CalibSet, Option<f64>);

impl std::fmt::Debug for CalibCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "CalibCache({n} sets)")
    }
}

impl CalibCache {
    /// The importance matrix of `model` on `text` (chunks of
    /// [`crate::config::IMATRIX_FROM_CTX`] tokens): computed on first use, then the same one
    /// (`true`: it was). The lock is held while it is computed, so it is never computed twice.
    pub fn imatrix(
        &self,
        model: &Path,
        text: &Path,
        threads: Option<usize>,
    ) -> Result<(Arc<qs_formats::imatrix::Imatrix>, bool)> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let key = (canon(model), canon(text));
        let mut m = self
            .1
            .lock()
            .map_err(|_| Error::Config("calibration cache poisoned".into()))?;
        if let Some(im) = m.get(&key) {
            return Ok((im.clone(), true));
        }
        let im = Arc::new(compute_imatrix(model, text, threads)?);
        m.insert(key, im.clone());
        Ok((im, false))
    }

    /// Sets made so far (each was made once).
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `--imatrix-from`'s matrix: the float model on the text, as `quantize imatrix` computes it.
pub fn compute_imatrix(
    model: &Path,
    text: &Path,
    threads: Option<usize>,
) -> Result<qs_formats::imatrix::Imatrix> {
    Ok(crate::imatrix::compute(
        model,
        Some(text),
        crate::config::IMATRIX_FROM_CTX,
        None,
        threads,
    )?
    .to_imatrix())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CalibKey {
    model: std::path::PathBuf,
    text: Option<std::path::PathBuf>,
    samples: usize,
    seq_len: usize,
    seed: u64,
}

/// Bytes of KV cache when the model writes its calibration text (the sequences written at once
/// follow from it).
const GENERATION_CACHE: usize = 1 << 30;

/// What a calibrated run quantizes: the decoder layers' linears by (layer, linear) (the map
/// it derefs to), and latent attention's tensors by (layer, part).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub linears: BTreeMap<(usize, Linear), Target>,
    pub mla: BTreeMap<(usize, mla::MlaPart), Target>,
    /// A mixture's shared expert (Qwen2-MoE, DeepSeek), by (layer, its projection: `Gate`,
    /// `Up` or `Down`), calibrated on every token ([`experts::calibrate_shared`]).
    pub shared: BTreeMap<(usize, Linear), Target>,
}

impl std::ops::Deref for Targets {
    type Target = BTreeMap<(usize, Linear), Target>;
    fn deref(&self) -> &Self::Target {
        &self.linears
    }
}

/// One job of a calibration pass: its method, the linears it quantizes (from [`targets`]) and
/// its options.
pub struct Member<'a> {
    pub method: &'a dyn Method,
    pub targets: &'a Targets,
    pub cfg: &'a QuantizeConfig,
}

/// What a calibration pass gives one job: its per-layer results (codes on disk, [`spill`]) and
/// the summary.
pub type Calibration = (spill::Spill, CalibSummary);

/// The calibration set a method reads: a method that only rewrites layers (AWQ) searches on
/// about `awq_tokens` tokens and reads nothing more, so no more sequences are drawn or written.
fn calib_config(method: &dyn Method, cfg: &QuantizeConfig) -> CalibConfig {
    let search_seqs = search_seqs(cfg);
    CalibConfig {
        samples: if method.chooses_codes() {
            cfg.calib_samples
        } else {
            cfg.calib_samples.min(search_seqs)
        },
        seq_len: cfg.calib_seq_len,
        seed: cfg.seed,
    }
}

/// Whole calibration sequences a layer rewrite (AWQ) searches on: about `--awq-tokens` tokens.
fn search_seqs(cfg: &QuantizeConfig) -> usize {
    cfg.awq_tokens.div_ceil(cfg.calib_seq_len.max(1)).max(1)
}

impl CalibKey {
    fn new(method: &dyn Method, cfg: &QuantizeConfig) -> CalibKey {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let ccfg = calib_config(method, cfg);
        CalibKey {
            model: canon(&cfg.input),
            text: cfg.calib.as_deref().map(canon),
            samples: ccfg.samples,
            seq_len: ccfg.seq_len,
            seed: ccfg.seed,
        }
    }
}

/// Which jobs can share one calibration pass ([`calibrate_together`]): those with equal keys.
/// `None` for a job that cannot share one (its layer inputs come from its own quantized layers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PassKey(CalibKey);

impl PassKey {
    pub fn of(method: &dyn Method, cfg: &QuantizeConfig) -> Option<PassKey> {
        (cfg.calib_inputs == crate::config::CalibInputs::Float)
            .then(|| PassKey(CalibKey::new(method, cfg)))
    }
}

/// What a calibration pass hands over after each layer: every tensor one job calibrated in that
/// layer, by HF name (each name once in a pass).
pub type LayerDone = HashMap<String, Calibrated>;

/// Where a pass's per-layer results go: `sink(job, layer, its tensors)`, called once per job
/// and layer in layer order. The run writes them there and then ([`crate::exec::quantize`]),
/// so a run holds one layer's codes, not the model's; a batch's shared pass keeps them on disk
/// ([`spill::Spill`]).
pub type LayerSink<'s> = dyn FnMut(usize, usize, LayerDone) -> Result<()> + 's;

/// One pass over the layers of `src` for several jobs (a batch's jobs of one model with
/// `--calib-inputs float` and one [`PassKey`]): each layer's inputs are computed once, and so
/// are the Hessians of every job whose method does not rewrite the layer first (GPTQ); each
/// job's method then runs on them. A job that rewrites the layer (AWQ) searches on the same
/// inputs and computes its own statistics of the layer it rewrote. Memory: one float layer,
/// its statistics, and what each job has chosen so far; the calibration activations, twice
/// when a method compares with the float model's outputs
/// ([`Method::wants_float_model_outputs`]: the float model's own stream beside the run's).
///
/// With one job and `--calib-inputs quantized` (the default), the next layer's inputs come
/// from this layer as the job quantized it.
///
/// Each layer's results go to `sink` as soon as the layer is done ([`LayerSink`]); the pass
/// returns each job's summary.
pub fn calibrate_together(
    src: &ModelSource,
    members: &[Member<'_>],
    progress: &dyn Progress,
    sink: &mut LayerSink<'_>,
) -> Result<Vec<CalibSummary>> {
    let first = members
        .first()
        .ok_or_else(|| Error::Config("a calibration pass needs a job".into()))?;
    let float_inputs = first.cfg.calib_inputs == crate::config::CalibInputs::Float;
    let key = CalibKey::new(first.method, first.cfg);
    if members.len() > 1
        && members
            .iter()
            .any(|m| PassKey::of(m.method, m.cfg) != Some(PassKey(key.clone())))
    {
        return Err(Error::Config(
            "jobs share a calibration pass only with --calib-inputs float and the same model, calibration text, samples, length and seed".into(),
        ));
    }
    let model_err = |err| Error::Model {
        stage: "calibration",
        path: src.input.clone(),
        err,
    };
    let model = Model::new(src).map_err(model_err)?;
    let dir = src.hf_dir.as_ref().ok_or_else(|| Error::Input {
        path: src.input.clone(),
        msg: "calibration needs a Hugging Face folder (config.json, tokenizer.json)".into(),
    })?;
    let cfg = first.cfg;
    let seq_len = cfg.calib_seq_len;
    let ccfg = calib_config(first.method, cfg);
    let cached = cfg
        .calib_cache
        .as_ref()
        .and_then(|c| c.0.lock().ok()?.get(&key).cloned());
    let shared = cached.is_some();
    let made = match cached {
        Some(c) => c,
        None => {
            let made = match &cfg.calib {
                Some(p) => {
                    let text = calib::load_text(Some(p))?;
                    (
                        calib::sequences(&dir.join("tokenizer.json"), &text, &ccfg)?,
                        None,
                    )
                }
                None => {
                    let t0 = std::time::Instant::now();
                    let set =
                        self_generated(&model, src, &dir.join("tokenizer.json"), &ccfg, progress)
                            .map_err(model_err)?;
                    (set, Some(t0.elapsed().as_secs_f64()))
                }
            };
            let made = Arc::new(made);
            if let Some(Ok(mut m)) = cfg.calib_cache.as_ref().map(|c| c.0.lock()) {
                m.insert(key, made.clone());
            }
            made
        }
    };
    let set = &made.0;
    let summary = |k: usize, m: &Member<'_>, starved: Vec<StarvedExpert>| CalibSummary {
        method: m.method.name(),
        source: if cfg.calib.is_none() {
            "self-generated"
        } else {
            "text"
        },
        generation_secs: made.1.filter(|_| !shared && k == 0),
        shared: shared || k > 0,
        inputs: cfg.calib_inputs,
        pass_jobs: members.len(),
        text_tokens: set.text_tokens,
        seq_len: ccfg.seq_len,
        requested: ccfg.samples,
        fit_sequences: set.fit.len(),
        held_sequences: set.held.len(),
        fits_all_tokens: m.method.chooses_codes(),
        starved_experts: starved,
    };
    let ids = |s: &[Vec<u32>]| s.iter().flatten().copied().collect::<Vec<u32>>();
    let mut x = model.embed(&ids(&set.fit)).map_err(model_err)?;
    let mut xh = model.embed(&ids(&set.held)).map_err(model_err)?;
    // the float model's inputs of each layer beside `x`, for a method that compares with the
    // float model's outputs (when `x` is the quantized layers' outputs)
    let mut xf = (!float_inputs
        && members
            .iter()
            .any(|m| m.method.wants_float_model_outputs(m.cfg)))
    .then(|| x.clone());

    let mut starved: Vec<Vec<StarvedExpert>> = vec![Vec::new(); members.len()];
    // Calibration tokens go through each layer in batches of whole sequences (about 4096
    // tokens), so only one batch's intermediate activations exist at a time; the statistics
    // accumulate batch by batch (running mean, as the reference does over its batches).
    let batch = (4096 / seq_len.max(1)).max(1) * seq_len;
    let batches: Vec<(usize, usize)> = (0..x.nrows())
        .step_by(batch)
        .map(|r0| (r0, (r0 + batch).min(x.nrows())))
        .collect();
    // the Hessians of `wanted` inputs of `layer`, batch by batch
    let hessians = |layer: &Layer, x: faer::MatRef<'_, f32>, wanted: &[Input]| {
        let mut hess: HashMap<Input, Hessian> = HashMap::new();
        for &(r0, r1) in batches.iter().filter(|_| !wanted.is_empty()) {
            let (_, cap) = layer_forward(&model.cfg, layer, x.subrows(r0, r1 - r0), seq_len, true);
            let cap = cap.expect("captured");
            for &i in wanted {
                let xin = i.of(&cap);
                hess.entry(i)
                    .or_insert_with(|| Hessian::new(xin.ncols()))
                    .add_mat(xin);
            }
        }
        hess
    };
    // a checkpoint with fused q/k/v and gate/up tensors (Phi-3)
    let fused = src
        .tensors
        .iter()
        .any(|t| Linear::parse_fused(&t.info.name).is_some());
    // a layer's outputs on whole-sequence batches of `x`
    let advance = |layer: &Layer, x: &Mat<f32>| {
        let mut next = Mat::<f32>::zeros(x.nrows(), x.ncols());
        for &(r0, r1) in &batches {
            let (y, _) = layer_forward(
                &model.cfg,
                layer,
                x.as_ref().subrows(r0, r1 - r0),
                seq_len,
                false,
            );
            next.as_mut().subrows_mut(r0, r1 - r0).copy_from(&y);
        }
        next
    };
    progress.stage("calibration (layers)", model.cfg.layers as u64);
    for l in 0..model.cfg.layers {
        // what each job chose in this layer, handed to `sink` at its end
        let mut done: Vec<LayerDone> = vec![HashMap::new(); members.len()];
        let float_layer = model.layer(l).map_err(model_err)?;
        // the float model's outputs of this layer (its next inputs), when a method wants them
        let xf_next = xf.as_ref().map(|f| advance(&float_layer, f));
        // the float layer on held-out tokens: the baseline every error is measured against
        let (_, cap0) = layer_forward(&model.cfg, &float_layer, xh.as_ref(), seq_len, true);
        let cap0 = cap0.expect("captured");
        // each job's layer: its own copy when it rewrites the layer, or when the next layer's
        // inputs come from its quantized weights
        let mut own: Vec<Option<Layer>> = Vec::with_capacity(members.len());
        let mut transforms: Vec<HashMap<String, Arc<Transform>>> = Vec::new();
        let mut wanted: Vec<Vec<Input>> = Vec::new();
        // the last job takes the float layer itself and the others copies of it (it is read
        // again below): one f32 copy of the layer fewer while a method transforms or tunes it
        // (0.8 GB for a 7B-shaped layer)
        let mut float_slot = Some(float_layer);
        for (k, m) in members.iter().enumerate() {
            // the inputs that feed a linear to quantize
            let w: Vec<Input> = Input::ALL
                .into_iter()
                .filter(|i| {
                    i.linears().any(|lin| {
                        m.targets
                            .get(&(l, lin))
                            .is_some_and(|t| t.experts.is_none())
                    })
                })
                .collect();
            // (latent attention's tensors are calibrated apart, as the experts are)
            let experts = Linear::ALL.iter().any(|&lin| {
                m.targets
                    .get(&(l, lin))
                    .is_some_and(|t| t.experts.is_some())
            }) || !mla::of_layer(&m.targets.mla, l).is_empty()
                || !experts::shared_of_layer(&m.targets.shared, l).is_empty();
            let needs_layer = !w.is_empty() || experts || !float_inputs;
            let mut layer = if !needs_layer {
                None
            } else if k + 1 == members.len() {
                float_slot.take()
            } else {
                float_slot.clone()
            };
            let t = match layer.as_mut() {
                Some(layer) if !w.is_empty() || experts => {
                    let search_rows = if m.method.transforms_on_all_inputs() {
                        x.nrows()
                    } else {
                        (search_seqs(m.cfg) * seq_len).clamp(1, x.nrows().max(1))
                    };
                    m.method.transform_layer(&mut LayerCtx {
                        model: &model.cfg,
                        index: l,
                        layer,
                        x: x.as_ref().subrows(0, search_rows.min(x.nrows())),
                        float_out: xf_next
                            .as_ref()
                            .filter(|_| m.method.wants_float_model_outputs(m.cfg))
                            .map(|f| f.as_ref().subrows(0, search_rows.min(f.nrows()))),
                        seq_len,
                        targets: m.targets,
                        cfg: m.cfg,
                        fused,
                    })?
                }
                _ => vec![],
            };
            if t.is_empty() && float_inputs {
                // the float layer serves
                layer = None;
            }
            own.push(layer);
            transforms.push(t.into_iter().map(|(n, t)| (n, Arc::new(t))).collect());
            wanted.push(w);
        }
        let float_layer = match float_slot {
            Some(layer) => layer,
            None => model.layer(l).map_err(model_err)?,
        };
        // Hessians of the float layer's inputs, once for every job that reads them
        let mut shared_wanted: Vec<Input> = vec![];
        for (k, m) in members.iter().enumerate() {
            if m.method.reads_hessians() && transforms[k].is_empty() {
                for &i in &wanted[k] {
                    if !shared_wanted.contains(&i) {
                        shared_wanted.push(i);
                    }
                }
            }
        }
        shared_wanted.sort_by_key(|i| Input::ALL.iter().position(|a| a == i));
        let shared_hess = hessians(&float_layer, x.as_ref(), &shared_wanted);
        for (k, m) in members.iter().enumerate() {
            let transforms = &transforms[k];
            let own_hess = match &own[k] {
                Some(layer) if m.method.reads_hessians() && !transforms.is_empty() => {
                    Some(hessians(layer, x.as_ref(), &wanted[k]))
                }
                _ => None,
            };
            let hess = own_hess.as_ref().unwrap_or(&shared_hess);
            // held-out inputs of the (transformed) layer the method quantizes
            let caph = match &own[k] {
                Some(layer) if !transforms.is_empty() => {
                    layer_forward(&model.cfg, layer, xh.as_ref(), seq_len, true).1
                }
                _ => None,
            };
            let caph = caph.as_ref().unwrap_or(&cap0);
            // GPTQ after AWQ: latent attention and the experts, calibrated apart below, read
            // the layer as AWQ transformed it, before its linears are quantized
            let apart = !transforms.is_empty()
                && m.method.chooses_codes()
                && (!mla::of_layer(&m.targets.mla, l).is_empty()
                    || !experts::shared_of_layer(&m.targets.shared, l).is_empty()
                    || Linear::ALL.iter().any(|&lin| {
                        m.targets
                            .get(&(l, lin))
                            .is_some_and(|t| t.experts.is_some())
                    }));
            let base: Option<Layer> = match &own[k] {
                Some(layer) if apart => Some(layer.clone()),
                _ => None,
            };
            let base_layer = base.as_ref().unwrap_or(&float_layer);
            let held_mlp = match base {
                Some(_) => caph.mlp_in.as_ref(),
                None => cap0.mlp_in.as_ref(),
            };
            // their transforms go with their codes
            let with_transforms = |v: Vec<(String, Calibrated)>| -> Vec<(String, Calibrated)> {
                v.into_iter()
                    .map(|(n, c)| {
                        let transform = transforms.get(&n).cloned();
                        (n, Calibrated { transform, ..c })
                    })
                    .collect()
            };
            // the parts of fused tensors calibrated so far
            #[allow(clippy::type_complexity)]
            let mut pending: BTreeMap<
                String,
                Vec<(Linear, Option<Arc<CodeSet>>, LayerOutputError, usize)>,
            > = BTreeMap::new();
            for &input in &wanted[k] {
                let xheld = input.of(caph);
                let x0 = input.of(&cap0);
                for lin in input.linears() {
                    let Some(tg) = m.targets.get(&(l, lin)).filter(|t| t.experts.is_none()) else {
                        continue;
                    };
                    let name = &tg.name;
                    let w0 = lin.weight(&float_layer);
                    let wv = rows_of(own[k].as_ref().map_or(w0, |layer| lin.weight(layer)));
                    let (rows, cols) = (w0.nrows(), w0.ncols());
                    // (a fused tensor's transform: this linear's rows of it)
                    let transform = transforms.get(name).map(|t| match tg.fused {
                        Some(parts) => {
                            let start: usize = parts
                                .iter()
                                .take_while(|p| **p != lin)
                                .map(|p| p.weight(&float_layer).nrows())
                                .sum();
                            Arc::new(t.rows(start, rows, cols))
                        }
                        None => t.clone(),
                    });
                    let identity = Transform::default();
                    let t = transform.as_deref().unwrap_or(&identity);
                    let file = file_of(src, name);
                    // codes where the method chooses them and the layout takes them; else the
                    // layout's round to nearest of the (transformed) weights
                    let (out, wq) = if m.method.chooses_codes() && tg.grid.is_some() {
                        let grid = tg.grid.ok_or_else(|| Error::Tensor {
                            file: file.clone(),
                            tensor: name.clone(),
                            msg: format!("--method {} needs a code grid", m.method.name()),
                        })?;
                        let out = m.method.quantize(&LinearJob {
                            name,
                            file: &file,
                            w: &wv,
                            rows,
                            cols,
                            grid,
                            stats: InputStats {
                                hessian: hess.get(&input),
                            },
                            cfg: m.cfg,
                        })?;
                        let wq = to_mat(&out.dequantize(rows, cols), rows, cols);
                        (Some(Arc::new(out)), wq)
                    } else {
                        (
                            None,
                            to_mat(&fake_quant(tg, t, &wv, rows, cols), rows, cols),
                        )
                    };
                    let w0v = rows_of(w0);
                    let y = linear(x0, w0, None);
                    let rtn = to_mat(&fake_quant(tg, &identity, &w0v, rows, cols), rows, cols);
                    // the method's error against the same function: the float weights with the
                    // transform's scales (rows of v and up carry the next group's divisors), not
                    // its clipping, which is part of the error
                    let yt = match &transform {
                        Some(t) => {
                            let mut v = w0v.clone();
                            for (r, row) in v.chunks_exact_mut(cols).enumerate() {
                                t.scale_row(r, row);
                            }
                            linear(xheld, &to_mat(&v, rows, cols), None)
                        }
                        None => y.clone(),
                    };
                    let error = LayerOutputError {
                        rtn: relative_error(&y, &linear(x0, &rtn, None)),
                        calibrated: relative_error(&yt, &linear(xheld, &wq, None)),
                    };
                    if let Some(layer) = own[k].as_mut() {
                        *lin.weight_mut(layer) = wq;
                    }
                    match tg.fused {
                        None => {
                            done[k].insert(
                                name.clone(),
                                Calibrated {
                                    transform,
                                    out,
                                    error: Some(error),
                                },
                            );
                        }
                        Some(parts) => {
                            let have = pending.entry(name.clone()).or_default();
                            have.push((lin, out, error, rows));
                            if have.len() == parts.len() {
                                let have = pending.remove(name).unwrap_or_default();
                                done[k].insert(
                                    name.clone(),
                                    Calibrated {
                                        transform: transforms.get(name).cloned(),
                                        ..join_parts(parts, have)
                                    },
                                );
                            }
                        }
                    }
                }
            }
            // latent attention: its tensors from their own inputs
            let mla_parts = mla::of_layer(&m.targets.mla, l);
            if !mla_parts.is_empty() && m.method.chooses_codes() {
                done[k].extend(with_transforms(mla::calibrate(
                    src,
                    m,
                    &model.cfg,
                    base_layer,
                    own[k].as_mut(),
                    (x.as_ref(), xh.as_ref()),
                    &batches,
                    seq_len,
                    &mla_parts,
                )?));
            }
            // a mixture's shared expert: from every token
            let shared_parts = experts::shared_of_layer(&m.targets.shared, l);
            if !shared_parts.is_empty() && m.method.chooses_codes() {
                done[k].extend(with_transforms(experts::calibrate_shared(
                    src,
                    m,
                    &model.cfg,
                    base_layer,
                    own[k].as_mut(),
                    (x.as_ref(), held_mlp),
                    &batches,
                    seq_len,
                    &shared_parts,
                )?));
            }
            // a mixture of experts: each expert from the tokens routed to it
            let stacked: Vec<(Linear, &Target)> = [Linear::Gate, Linear::Up, Linear::Down]
                .into_iter()
                .filter_map(|lin| {
                    m.targets
                        .get(&(l, lin))
                        .filter(|t| t.experts.is_some())
                        .map(|t| (lin, t))
                })
                .collect();
            if !stacked.is_empty() && m.method.chooses_codes() {
                let r = experts::calibrate(
                    src,
                    m,
                    &model.cfg,
                    base_layer,
                    own[k].as_mut(),
                    x.as_ref(),
                    held_mlp,
                    &batches,
                    seq_len,
                    &stacked,
                )?;
                done[k].extend(with_transforms(r.tensors));
                starved[k].extend(r.starved.into_iter().map(|(expert, tokens)| StarvedExpert {
                    layer: l,
                    expert,
                    tokens,
                }));
            }
            // the folded tensors that are no linear (norms, biases)
            for (name, t) in transforms {
                done[k].entry(name.clone()).or_insert_with(|| Calibrated {
                    transform: Some(t.clone()),
                    ..Default::default()
                });
            }
        }
        // next layer's inputs: the float layer, or this one as the job quantized it
        let next_layer = match (float_inputs, own.first()) {
            (false, Some(Some(layer))) => layer,
            _ => &float_layer,
        };
        x = advance(next_layer, &x);
        if xf_next.is_some() {
            xf = xf_next;
        }
        xh = layer_forward(&model.cfg, next_layer, xh.as_ref(), seq_len, false).0;
        for (k, d) in done.into_iter().enumerate() {
            sink(k, l, d)?;
        }
        progress.step(1);
    }
    progress.finish();
    Ok(members
        .iter()
        .enumerate()
        .zip(starved)
        .map(|((k, m), st)| summary(k, m, st))
        .collect())
}
