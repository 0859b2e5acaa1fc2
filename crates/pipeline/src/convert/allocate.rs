//! Size-targeted mixtures (`--target-bpw`, `--target-size`): a storage type for each
//! quantizable tensor, among candidates, so that the predicted model error is least within a
//! byte budget.
//!
//! The predicted error of a tensor stored as a type is measured, not modelled: its rows are
//! encoded by that type's own encoder (with the importance matrix, as the run will) and
//! decoded, and the squared error is weighted by what the layer's output loses: for a linear,
//! Σᵢⱼ E[xⱼ²]·(wᵢⱼ − ŵᵢⱼ)², the expected squared error its output gains per token, with E[xⱼ²]
//! from the importance matrix (1 without one); for an embedding table, the mean over rows of
//! ‖w − ŵ‖², the error one lookup adds (a table tied to the output head is weighted as that
//! head, a linear). The output head has no entry in llama-imatrix's files: with an importance
//! matrix its E[xⱼ²] is the final norm's gain squared, in the same units as the others. [`qs_numeric::alloc::choose`] then picks one type per
//! tensor. The result is a list of per-tensor overrides the plan is made again with, so every
//! other rule (names, fallbacks, importance) is the plan's own.

use crate::config::{QuantizeConfig, Target};
use crate::error::{Error, Result};
use crate::jobs::{chunk_rows, pool, CHUNK_ELEMS};
use crate::plan::{is_embedding, make_plan, Action, Plan};
use qs_formats::source::ModelSource;
use qs_numeric::alloc::{choose, Choice};
use qs_numeric::layout::rows_cols;
use qs_numeric::{GgmlType, Scheme};
use rayon::prelude::*;
use serde::Serialize;

/// What the budget is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeTarget {
    /// Bits per weight over every tensor of the output (llama-quantize's "BPW": tensor bytes
    /// × 8 / weights).
    Bpw(f64),
    /// Bytes of the whole output file (header included).
    Bytes(u64),
}

/// The default candidates: llama-quantize's K types and Q8_0 and IQ4_XS for GGUF; 2, 3, 4 and
/// 8 bits at the run's group size for compressed-tensors.
pub fn default_candidates(gguf: bool) -> Vec<Target> {
    if gguf {
        [
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
            GgmlType::IQ4_XS,
        ]
        .into_iter()
        .map(Target::Ggml)
        .collect()
    } else {
        [2, 3, 4, 8].into_iter().map(Target::Int).collect()
    }
}

/// The chosen plan, as the report and `--dry-run` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Allocation {
    pub target: String,
    pub candidates: Vec<String>,
    /// Bytes the allocated tensors may take.
    pub budget_bytes: u64,
    /// Bytes they take.
    pub allocated_bytes: u64,
    /// Bytes of everything else (tensors kept or not allocated, header).
    pub fixed_bytes: u64,
    /// Σ of the chosen predicted errors.
    pub predicted_error: f64,
    pub tensors: Vec<AllocatedTensor>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocatedTensor {
    pub tensor: String,
    pub storage: String,
    pub bytes: u64,
    pub predicted_error: f64,
}

/// A tensor the allocation chooses for: it is quantized in the base plan.
fn allocatable(tp: &crate::plan::TensorPlan) -> bool {
    match (&tp.action, tp.target) {
        (Action::Encode(Scheme::Ggml(_)), Target::Ggml(t)) => {
            t.can_quantize() && tp.src_ggml.is_none()
        }
        (Action::Encode(_), Target::Int(_)) => true,
        _ => false,
    }
}

/// What candidate `t` becomes for rows of `cols` values: a ggml type whose blocks do not fit
/// steps down as llama-quantize's does ([`qs_numeric::ggml::fallback_for`]); an int target
/// needs rows of whole groups. `None`: it cannot store them.
fn effective(t: Target, cols: usize, cfg: &QuantizeConfig) -> Option<Target> {
    match t {
        Target::Ggml(g) => {
            let f = qs_numeric::ggml::fallback_for(g, cols);
            f.can_quantize().then_some(Target::Ggml(f))
        }
        Target::Int(_) => {
            let group = cfg.group.unwrap_or(128).max(1);
            cols.is_multiple_of(group).then_some(t)
        }
        _ => None,
    }
}

fn regex_for(name: &str) -> regex::Regex {
    regex::Regex::new(&format!("^{}$", regex::escape(name))).expect("an escaped name is a regex")
}

/// The final norm's gains squared, E[xⱼ²] of the output head's input as far as the weights
/// tell (the normalised hidden state has mean square 1 per channel on average): the head's
/// weighting when an importance matrix weights the other linears but has no entry for it
/// (llama-imatrix records none for the output head, nor for a tied embedding table).
fn head_gains_squared(src: &ModelSource, cols: usize) -> Option<Vec<f32>> {
    let st = src.tensors.iter().find(|t| {
        matches!(
            t.info.name.as_str(),
            "model.norm.weight" | "output_norm.weight"
        ) && t.info.shape == [cols]
    })?;
    let g = crate::run::source_rows(src, st, None, false, 0, 1);
    g.iter()
        .all(|v| v.is_finite())
        .then(|| g.iter().map(|v| v * v).collect())
}

/// The token embedding table (which a model without an output head of its own computes its
/// logits with), not a table of positions.
fn is_token_embedding(name: &str) -> bool {
    is_embedding(name) && !name.contains("wpe.") && !name.contains("embed_positions")
}

/// The predicted error of `tp` (as planned with some type): rows encoded and decoded,
/// weighted as the module says. `tied`: the embedding table is also the output head.
/// `weighted`: an importance matrix weights the plan's linears.
fn predicted_error(
    src: &ModelSource,
    tp: &crate::plan::TensorPlan,
    tied: bool,
    weighted: bool,
) -> f64 {
    let Action::Encode(scheme) = &tp.action else {
        return 0.0;
    };
    let (rows, cols) = rows_cols(&tp.shape);
    let st = &src.tensors[tp.source];
    let head = crate::plan::is_output_head(&tp.name) || (tied && is_token_embedding(&tp.name));
    let gains = match (&tp.imatrix, weighted && head) {
        (None, true) => head_gains_squared(src, cols),
        _ => None,
    };
    // encoded as the run will encode it (with the plan's importance, if any); the error is
    // weighted by that importance or, for the head, by the final norm's gains
    let enc_imp = tp.imatrix.as_deref();
    let imp = enc_imp.or(gains.as_ref());
    let mut sum = 0f64;
    for (r0, r1) in chunk_rows(rows, cols, scheme.row_align(), CHUNK_ELEMS) {
        let x = crate::run::source_rows(src, st, tp.permute, tp.shift, r0, r1);
        let enc = scheme.encode_weighted(
            &tp.shape,
            r0,
            &x,
            Default::default(),
            enc_imp.map(|v| v.as_slice()),
        );
        let parts: Vec<&[u8]> = enc.pieces.iter().map(|p| p.bytes.as_slice()).collect();
        let mut y = vec![0f32; x.len()];
        scheme.decode(&tp.shape, r0, r1, &parts, &mut y);
        for (xr, yr) in x.chunks_exact(cols.max(1)).zip(y.chunks_exact(cols.max(1))) {
            for (j, (a, b)) in xr.iter().zip(yr).enumerate() {
                let d = (*a as f64) - (*b as f64);
                sum += imp.map_or(1.0, |w| w[j] as f64) * d * d;
            }
        }
    }
    if is_embedding(&tp.name) && !head {
        sum / rows.max(1) as f64
    } else {
        // a linear, or a tied embedding table, which is the output head too: its logits lose
        // this per token (a lookup's error, a row's, is small beside it)
        sum
    }
}

/// Chooses a type for every allocatable tensor of `base` and returns the overrides (for
/// `cfg.tensor_types`, ahead of the user's) with what was chosen. `overhead` is the output's
/// bytes beyond its tensor data (header, alignment) in `base`.
pub fn allocate(
    src: &ModelSource,
    base: &Plan,
    cfg: &QuantizeConfig,
    target: SizeTarget,
    overhead: u64,
) -> Result<(Vec<(regex::Regex, Target)>, Allocation)> {
    let gguf = base.kind == crate::OutputKind::Gguf;
    let candidates = if cfg.candidates.is_empty() {
        default_candidates(gguf)
    } else {
        cfg.candidates.clone()
    };
    for c in &candidates {
        let ok = match c {
            Target::Ggml(g) => gguf && g.can_quantize(),
            Target::Int(_) => !gguf,
            _ => false,
        };
        if !ok {
            return Err(Error::Config(format!(
                "--candidates: {} is not a quantized type of this output ({})",
                c.name(),
                if gguf {
                    "a GGUF block type"
                } else {
                    "int2 … int8"
                }
            )));
        }
    }
    // tensors the user typed (--tensor-type) keep their type
    let typed = |name: &str| cfg.tensor_types.iter().any(|(re, _)| re.is_match(name));
    let items: Vec<usize> = (0..base.tensors.len())
        .filter(|&i| allocatable(&base.tensors[i]) && !typed(&base.tensors[i].name))
        .collect();
    if items.is_empty() {
        return Err(Error::Config(
            "--target-bpw/--target-size: no tensor of this plan is quantized".into(),
        ));
    }
    // each candidate planned for every tensor that can store it: the plan's own encoder,
    // importance and sizes
    let mut options: Vec<Vec<(Choice, Target)>> = vec![vec![]; items.len()];
    // (item, type, the tensor planned as that type): each distinct type once per tensor
    let mut tps: Vec<(usize, Target, crate::plan::TensorPlan)> = Vec::new();
    for &c in &candidates {
        let mut cc = cfg.clone();
        cc.size_target = None;
        let eff: Vec<Option<Target>> = items
            .iter()
            .map(|&i| effective(c, rows_cols(&base.tensors[i].shape).1, cfg))
            .collect();
        let forced: Vec<(regex::Regex, Target)> = items
            .iter()
            .zip(&eff)
            .filter_map(|(&i, e)| Some((regex_for(&base.tensors[i].name), (*e)?)))
            .collect();
        if forced.is_empty() {
            continue;
        }
        cc.tensor_types = forced;
        cc.tensor_types.extend(cfg.tensor_types.iter().cloned());
        let imatrix = base.imatrix.as_ref().map(|(_, im)| im.clone());
        let p = make_plan(src, &cc, imatrix)?;
        for (k, &i) in items.iter().enumerate() {
            let Some(e) = eff[k] else { continue };
            if tps.iter().any(|(kk, t, _)| *kk == k && *t == e) {
                continue;
            }
            let source = base.tensors[i].source;
            if let Some(tp) = p
                .tensors
                .iter()
                .find(|t| t.source == source && t.target == e && t.note.is_none())
            {
                tps.push((k, e, tp.clone()));
            }
        }
    }
    // no output head of its own: the embedding table computes the logits (tied)
    let tied = !base
        .tensors
        .iter()
        .any(|t| crate::plan::is_output_head(&t.name));
    let errors: Vec<f64> = pool(cfg.threads)?.install(|| {
        tps.par_iter()
            .map(|(_, _, tp)| predicted_error(src, tp, tied, base.imatrix.is_some()))
            .collect()
    });
    for ((k, c, tp), e) in tps.iter().zip(errors) {
        options[*k].push((
            Choice {
                bytes: tp.bytes_out() as u64,
                error: e,
            },
            *c,
        ));
    }
    if let Some(k) = options.iter().position(|o| o.is_empty()) {
        let tp = &base.tensors[items[k]];
        return Err(Error::Config(format!(
            "tensor '{}' (rows of {}): no candidate type stores it",
            tp.name,
            rows_cols(&tp.shape).1
        )));
    }
    let fixed_tensors: u64 = base
        .tensors
        .iter()
        .enumerate()
        .filter(|(i, _)| !items.contains(i))
        .map(|(_, t)| t.bytes_out() as u64)
        .sum();
    // alignment: each tensor may gain up to 32 bytes of padding when its size changes
    let slack = 32 * base.tensors.len() as u64;
    let (budget, what) = match target {
        SizeTarget::Bytes(b) => (
            b.checked_sub(fixed_tensors + overhead + slack),
            format!("{b} bytes"),
        ),
        SizeTarget::Bpw(bpw) => {
            let n: u64 = base
                .tensors
                .iter()
                .map(|t| t.shape.iter().product::<usize>() as u64)
                .sum();
            (
                ((bpw * n as f64 / 8.0).floor() as u64).checked_sub(fixed_tensors),
                format!("{bpw} bits per weight"),
            )
        }
    };
    let min: u64 = options
        .iter()
        .map(|o| o.iter().map(|c| c.0.bytes).min().unwrap_or(0))
        .sum();
    let chosen = budget.and_then(|b| {
        let choices: Vec<Vec<Choice>> = options
            .iter()
            .map(|o| o.iter().map(|c| c.0).collect())
            .collect();
        choose(&choices, b)
    });
    let Some(chosen) = chosen else {
        let least = match target {
            SizeTarget::Bytes(_) => format!("{} bytes", min + fixed_tensors + overhead + slack),
            SizeTarget::Bpw(_) => {
                let n: u64 = base
                    .tensors
                    .iter()
                    .map(|t| t.shape.iter().product::<usize>() as u64)
                    .sum();
                format!(
                    "{:.3} bits per weight",
                    (min + fixed_tensors) as f64 * 8.0 / n.max(1) as f64
                )
            }
        };
        return Err(Error::Config(format!(
            "a target of {what} is below the smallest candidates' size ({least})"
        )));
    };
    let mut overrides = Vec::new();
    let mut tensors = Vec::new();
    let mut allocated = 0;
    let mut err = 0.0;
    for (k, &i) in items.iter().enumerate() {
        let (c, t) = options[k][chosen[k]];
        let tp = &base.tensors[i];
        overrides.push((regex_for(&tp.name), t));
        allocated += c.bytes;
        err += c.error;
        tensors.push(AllocatedTensor {
            tensor: tp.name.clone(),
            storage: t.name(),
            bytes: c.bytes,
            predicted_error: c.error,
        });
    }
    Ok((
        overrides,
        Allocation {
            target: what,
            candidates: candidates.iter().map(|c| c.name()).collect(),
            budget_bytes: budget.unwrap_or(0),
            allocated_bytes: allocated,
            fixed_bytes: fixed_tensors + overhead,
            predicted_error: err,
            tensors,
        },
    ))
}
