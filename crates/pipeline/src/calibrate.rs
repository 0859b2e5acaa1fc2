//! `--method gptq`: run the model layer by layer on calibration text, and quantize each
//! layer's linears with GPTQ on the inputs they see. Layer L+1's inputs come from layer L run
//! with its already-quantized weights. Only one layer's weights, the activations between
//! layers (tokens × hidden) and one batch of ~4096 tokens' intermediate values are in memory.
//!
//! A tenth of the calibration sequences (at least one) is held out: the report compares RTN
//! and GPTQ on them by the layer-output error ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖².

use crate::config::QuantizeConfig;
use crate::error::{Error, Result};
use crate::plan::{Action, Plan};
use faer::{Mat, MatRef};
use qs_formats::calib::{self, CalibConfig};
use qs_formats::source::ModelSource;
use qs_model::{layer_forward, linear, Captured, Model};
use qs_numeric::gptq::{gptq, GptqConfig, GptqOutput, Grid, Hessian};
use qs_numeric::rtn::{self, IntSpec};
use qs_numeric::{GgmlType, Granularity, Scheme};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// What GPTQ produced for one weight, and how it compares with RTN on held-out tokens.
#[derive(Debug, Clone)]
pub struct Calibrated {
    pub out: Arc<GptqOutput>,
    pub error: LayerOutputError,
}

/// The calibration data a GPTQ run used.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CalibSummary {
    pub text_tokens: usize,
    pub seq_len: usize,
    /// Sequences asked for (`--calib-samples`).
    pub requested: usize,
    /// Disjoint sequences GPTQ fitted on (fewer than requested when the text is short).
    pub fit_sequences: usize,
    /// Sequences from the end of the text, held out for the layer-output error.
    pub held_sequences: usize,
}

/// ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on held-out calibration tokens.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LayerOutputError {
    pub rtn: f64,
    pub gptq: f64,
}

/// The file a tensor of `src` is in (the input itself for a name it does not have).
fn file_of(src: &ModelSource, name: &str) -> std::path::PathBuf {
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

fn to_mat(v: &[f32], rows: usize, cols: usize) -> Mat<f32> {
    Mat::from_fn(rows, cols, |r, c| v[r * cols + c])
}

fn rtn_dequant(w: &Mat<f32>, cfg: &GptqConfig) -> Mat<f32> {
    let (rows, cols) = (w.nrows(), w.ncols());
    let v: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| w[(r, c)]))
        .collect();
    let ggml = match cfg.grid {
        Grid::Int => None,
        Grid::Q4_0 => Some(GgmlType::Q4_0),
        Grid::Q4_1 => Some(GgmlType::Q4_1),
        Grid::Q8_0 => Some(GgmlType::Q8_0),
    };
    if let Some(ty) = ggml {
        // llama.cpp's own round-to-nearest for the type
        let mut out = vec![0f32; v.len()];
        let mut bytes = vec![0u8; ty.row_bytes(cols)];
        for (x, y) in v.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            qs_numeric::ggml::quantize_row(ty, x, &mut bytes);
            qs_numeric::ggml::dequantize_row(ty, &bytes, y);
        }
        return to_mat(&out, rows, cols);
    }
    let group = cfg.group.unwrap_or(cols);
    let q = rtn::quantize_rows(cfg.spec, &v, cols, group, cfg.scale_dtype, None);
    let mut out = vec![0f32; v.len()];
    for (g, p) in q.params.iter().enumerate() {
        rtn::dequantize(
            *p,
            &q.codes[g * group..(g + 1) * group],
            &mut out[g * group..(g + 1) * group],
        );
    }
    to_mat(&out, rows, cols)
}

/// Runs calibration and GPTQ for every linear the plan stores with an integer scheme.
pub fn gptq_model(
    src: &ModelSource,
    plan: &Plan,
    cfg: &QuantizeConfig,
) -> Result<(HashMap<String, Calibrated>, CalibSummary)> {
    let model_err = |err| Error::Model {
        stage: "calibration",
        path: src.input.clone(),
        err,
    };
    let model = Model::new(src).map_err(model_err)?;
    let dir = src.hf_dir.as_ref().ok_or_else(|| {
        Error::Config(
            "--method gptq needs a Hugging Face folder (config.json, tokenizer.json)".into(),
        )
    })?;
    let text = calib::load_text(cfg.calib.as_deref())?;
    let ccfg = CalibConfig {
        samples: cfg.calib_samples,
        seq_len: cfg.calib_seq_len,
        seed: cfg.seed,
    };
    let set = calib::sequences(&dir.join("tokenizer.json"), &text, &ccfg)?;
    let summary = CalibSummary {
        text_tokens: set.text_tokens,
        seq_len: ccfg.seq_len,
        requested: ccfg.samples,
        fit_sequences: set.fit.len(),
        held_sequences: set.held.len(),
    };
    let (fit_seqs, held_seqs) = (&set.fit[..], &set.held[..]);
    let seq_len = ccfg.seq_len;
    let ids = |s: &[Vec<u32>]| s.iter().flatten().copied().collect::<Vec<u32>>();
    let mut x = model.embed(&ids(fit_seqs)).map_err(model_err)?;
    let mut xh = model.embed(&ids(held_seqs)).map_err(model_err)?;

    // GPTQ settings of each weight (by HF name) the plan stores on an integer grid:
    // compressed-tensors integers, or ggml's Q4_0 / Q4_1 / Q8_0 blocks
    let int_scheme: HashMap<&str, GptqConfig> = plan
        .tensors
        .iter()
        .filter_map(|t| match t.action {
            Action::Encode(Scheme::Gptq { bits, group }) => Some((
                src.tensors[t.source].info.name.as_str(),
                GptqConfig {
                    spec: IntSpec {
                        bits,
                        symmetric: true,
                    },
                    group: Some(group),
                    block: 128,
                    percdamp: cfg.damp,
                    act_order: cfg.act_order,
                    // `--act-order group`: groups follow the activation order (g_idx stored)
                    static_groups: !cfg.act_order_group,
                    scale_dtype: qs_numeric::DType::F16,
                    grid: Grid::Int,
                    mse_clip: cfg.mse_clip,
                },
            )),
            Action::Encode(Scheme::Ggml(ty)) => {
                // in a GGUF, embeddings and the output head keep llama.cpp's own quantizer
                let n = &src.tensors[t.source].info.name;
                if !(n.starts_with("model.layers.") && n.ends_with("_proj.weight")) {
                    return None;
                }
                let grid = match ty {
                    GgmlType::Q4_0 => Grid::Q4_0,
                    GgmlType::Q4_1 => Grid::Q4_1,
                    GgmlType::Q8_0 => Grid::Q8_0,
                    _ => return None,
                };
                Some((
                    src.tensors[t.source].info.name.as_str(),
                    GptqConfig {
                        spec: IntSpec {
                            bits: if ty == GgmlType::Q8_0 { 8 } else { 4 },
                            symmetric: ty != GgmlType::Q4_1,
                        },
                        group: Some(32),
                        block: 128,
                        percdamp: cfg.damp,
                        act_order: cfg.act_order,
                        static_groups: cfg.act_order,
                        scale_dtype: qs_numeric::DType::F16,
                        grid,
                        mse_clip: false,
                    },
                ))
            }
            Action::Encode(Scheme::Int {
                spec,
                granularity,
                scale_dtype,
                g_idx,
            }) => {
                let group = match granularity {
                    Granularity::Group(n) => Some(n),
                    Granularity::Channel => None,
                    _ => return None,
                };
                // act-order: static groups (the identity grouping, which every loader reads
                // without a g_idx tensor) unless the scheme stores a g_idx
                Some((
                    src.tensors[t.source].info.name.as_str(),
                    GptqConfig {
                        spec,
                        group,
                        block: 128,
                        percdamp: cfg.damp,
                        act_order: cfg.act_order,
                        static_groups: cfg.act_order && !g_idx,
                        scale_dtype,
                        grid: Grid::Int,
                        mse_clip: cfg.mse_clip,
                    },
                ))
            }
            _ => None,
        })
        .collect();
    for t in &plan.tensors {
        if let Action::Encode(Scheme::Int {
            granularity: Granularity::Tensor,
            ..
        }) = t.action
        {
            return Err(Error::Tensor {
                file: file_of(src, &t.name),
                tensor: t.name.clone(),
                msg: "GPTQ needs channel or group scales, not per-tensor".into(),
            });
        }
    }
    let mut done = HashMap::new();
    // Calibration tokens go through each layer in batches of whole sequences (about 4096
    // tokens), so only one batch's intermediate activations exist at a time; the Hessians
    // accumulate batch by batch (running mean, as the reference does over its batches).
    let batch = (4096 / seq_len.max(1)).max(1) * seq_len;
    let kinds = ["qkv", "o", "mlp", "down"];
    let members_of = |kind: &str| -> &'static [&'static str] {
        match kind {
            "qkv" => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            "o" => &["self_attn.o_proj"],
            "mlp" => &["mlp.gate_proj", "mlp.up_proj"],
            _ => &["mlp.down_proj"],
        }
    };
    fn input_of<'c>(cap: &'c Captured, kind: &str) -> MatRef<'c, f32> {
        match kind {
            "qkv" => cap.qkv_in.as_ref(),
            "o" => cap.o_in.as_ref(),
            "mlp" => cap.mlp_in.as_ref(),
            _ => cap.down_in.as_ref(),
        }
    }
    // row ranges of the fitted tokens, one batch each
    let batches: Vec<(usize, usize)> = (0..x.nrows())
        .step_by(batch)
        .map(|r0| (r0, (r0 + batch).min(x.nrows())))
        .collect();
    for l in 0..model.cfg.layers {
        let mut layer = model.layer(l).map_err(model_err)?;
        let p = format!("model.layers.{l}.");
        // which input groups have a linear to quantize
        let wanted: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| {
                members_of(k)
                    .iter()
                    .any(|m| int_scheme.contains_key(format!("{p}{m}.weight").as_str()))
            })
            .collect();
        let mut hess: HashMap<&str, Hessian> = HashMap::new();
        for &(r0, r1) in batches.iter().filter(|_| !wanted.is_empty()) {
            let (_, cap) = layer_forward(
                &model.cfg,
                &layer,
                x.as_ref().subrows(r0, r1 - r0),
                seq_len,
                true,
            );
            let cap = cap.expect("captured");
            for k in &wanted {
                let xin = input_of(&cap, k);
                hess.entry(k)
                    .or_insert_with(|| Hessian::new(xin.ncols()))
                    .add_mat(xin);
            }
        }
        let (_, caph) = layer_forward(&model.cfg, &layer, xh.as_ref(), seq_len, true);
        let caph: Captured = caph.expect("captured");
        for kind in &wanted {
            let xheld = input_of(&caph, kind);
            let hm = &hess[kind];
            for part in members_of(kind) {
                let name = format!("{p}{part}.weight");
                let Some(gc) = int_scheme.get(name.as_str()) else {
                    continue;
                };
                let w: &mut Mat<f32> = match *part {
                    "self_attn.q_proj" => &mut layer.q,
                    "self_attn.k_proj" => &mut layer.k,
                    "self_attn.v_proj" => &mut layer.v,
                    "self_attn.o_proj" => &mut layer.o,
                    "mlp.gate_proj" => &mut layer.gate,
                    "mlp.up_proj" => &mut layer.up,
                    _ => &mut layer.down,
                };
                let (rows, cols) = (w.nrows(), w.ncols());
                let wv: Vec<f32> = (0..rows)
                    .flat_map(|r| (0..cols).map(|c| w[(r, c)]).collect::<Vec<_>>())
                    .collect();
                let out = gptq(&wv, rows, cols, &hm.h, gc).map_err(|err| Error::Gptq {
                    file: file_of(src, &name),
                    tensor: name.clone(),
                    err,
                })?;
                let wq = to_mat(&out.dequantize(rows, cols), rows, cols);
                let y = linear(xheld.as_ref(), w, None);
                let error = LayerOutputError {
                    rtn: relative_error(&y, &linear(xheld.as_ref(), &rtn_dequant(w, gc), None)),
                    gptq: relative_error(&y, &linear(xheld.as_ref(), &wq, None)),
                };
                *w = wq;
                done.insert(
                    name,
                    Calibrated {
                        out: Arc::new(out),
                        error,
                    },
                );
            }
        }
        drop(caph);
        // next layer's inputs: this layer with its quantized weights, batch by batch
        let mut next = Mat::<f32>::zeros(x.nrows(), x.ncols());
        for &(r0, r1) in &batches {
            let (y, _) = layer_forward(
                &model.cfg,
                &layer,
                x.as_ref().subrows(r0, r1 - r0),
                seq_len,
                false,
            );
            next.as_mut().subrows_mut(r0, r1 - r0).copy_from(&y);
        }
        x = next;
        xh = layer_forward(&model.cfg, &layer, xh.as_ref(), seq_len, false).0;
    }
    let missing: Vec<&&str> = int_scheme
        .keys()
        .filter(|n| !done.contains_key(**n))
        .collect();
    if let Some(n) = missing.first() {
        return Err(Error::Tensor {
            file: file_of(src, n),
            tensor: n.to_string(),
            msg: "GPTQ covers the decoder layers' linears only (exclude it or keep it)".into(),
        });
    }
    Ok((done, summary))
}
