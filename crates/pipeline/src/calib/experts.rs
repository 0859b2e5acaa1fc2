//! Calibrating a mixture of experts: each expert's input statistics come from the calibration
//! tokens the float router sends it (or from every token with `--calib-all-experts`, as
//! llm-compressor's `calibrate_all_experts` offers), and the method quantizes its gate, up and
//! down projections from them. A layer's experts are one stacked tensor in a GGUF (their codes
//! are joined in expert order) and one tensor each in the safetensors layouts.
//!
//! Memory: the layer's normed MLP inputs for the calibration tokens (one more matrix the size
//! of the layer's inputs) and one expert's two Hessians at a time.

use super::{file_of, CodeSet, LayerOutputError, Member, Target};
use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use qs_formats::source::ModelSource;
use qs_model::{layer_forward, route, Config, Layer, Linear};
use qs_numeric::gptq::Hessian;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An expert that sees fewer calibration tokens than this keeps round to nearest on the same
/// grid (its Hessian is the identity), as GPTQModel's fail-safe does, and is reported.
pub const MIN_EXPERT_TOKENS: usize = 16;

/// What calibrating one layer's experts produced: per tensor (stacked: its experts' codes
/// joined; or one expert's), its codes and error; the experts that fell back to round to
/// nearest, with their token counts.
pub(super) struct ExpertsDone {
    pub tensors: Vec<(String, super::Calibrated)>,
    pub starved: Vec<(usize, usize)>,
}

/// The normed MLP inputs of `layer` for the rows of `x`, in `batches`.
fn mlp_inputs(
    c: &Config,
    layer: &Layer,
    x: MatRef<'_, f32>,
    batches: &[(usize, usize)],
    seq_len: usize,
) -> Mat<f32> {
    let mut h2 = Mat::<f32>::zeros(x.nrows(), x.ncols());
    for &(r0, r1) in batches {
        let (_, cap) = layer_forward(c, layer, x.subrows(r0, r1 - r0), seq_len, true);
        let cap = cap.expect("captured");
        h2.as_mut().subrows_mut(r0, r1 - r0).copy_from(&cap.mlp_in);
    }
    h2
}

/// The rows of `h2` routed to each expert by `layer`'s router (all rows for each expert when
/// `all`).
pub(super) fn routed(c: &Config, layer: &Layer, h2: MatRef<'_, f32>, all: bool) -> Vec<Vec<usize>> {
    let (Some(mc), Some(moe)) = (&c.moe, &layer.moe) else {
        return vec![];
    };
    if all {
        return vec![(0..h2.nrows()).collect(); moe.experts.len()];
    }
    let mut by: Vec<Vec<usize>> = vec![Vec::new(); moe.experts.len()];
    for (t, r) in route(
        mc,
        moe.router_logits(h2).as_ref(),
        moe.choice_bias.as_deref(),
    )
    .into_iter()
    .enumerate()
    {
        for (e, _) in r {
            if let Some(v) = by.get_mut(e) {
                v.push(t);
            }
        }
    }
    by
}

pub(super) fn gather(h2: MatRef<'_, f32>, rows: &[usize]) -> Mat<f32> {
    Mat::from_fn(rows.len(), h2.ncols(), |i, j| h2[(rows[i], j)])
}

/// Calibrates layer `l`'s experts (`targets`: the projection each target holds, stacked or
/// one tensor per expert)
/// for one job: `x` / `xh` are the layer's fit / held-out inputs. With `own`, its experts'
/// weights become the quantized ones (the next layer's inputs come from them).
#[allow(clippy::too_many_arguments)]
pub(super) fn calibrate(
    src: &ModelSource,
    m: &Member<'_>,
    c: &Config,
    float_layer: &Layer,
    mut own: Option<&mut Layer>,
    x: MatRef<'_, f32>,
    xh_mlp: MatRef<'_, f32>,
    batches: &[(usize, usize)],
    seq_len: usize,
    targets: &[(Linear, &Target)],
) -> Result<ExpertsDone> {
    let Some(moe) = &float_layer.moe else {
        return Ok(ExpertsDone {
            tensors: vec![],
            starved: vec![],
        });
    };
    let h2 = mlp_inputs(c, float_layer, x, batches, seq_len);
    let fit = routed(c, float_layer, h2.as_ref(), m.cfg.calib_all_experts);
    let held = routed(c, float_layer, xh_mlp, false);
    #[allow(clippy::type_complexity)]
    let mut parts: Vec<(
        Linear,
        &Target,
        Vec<CodeSet>,
        Vec<(LayerOutputError, usize)>,
    )> = targets
        .iter()
        .map(|&(lin, t)| (lin, t, Vec::new(), Vec::new()))
        .collect();
    let mut starved = Vec::new();
    // experts stored apart: each one's own tensor
    let mut written = Vec::new();
    for (e, expert) in moe.experts.iter().enumerate() {
        let xe = gather(h2.as_ref(), &fit[e]);
        let xhe = gather(xh_mlp, &held[e]);
        let few = fit[e].len() < MIN_EXPERT_TOKENS;
        if few {
            starved.push((e, fit[e].len()));
        }
        let hessian = |x: MatRef<'_, f32>, cols: usize| {
            let mut h = Hessian::new(cols);
            if few {
                h.h = Mat::identity(cols, cols);
                h.n = 1;
            } else {
                h.add_mat(x);
            }
            h
        };
        let act = qs_model::expert_inner(c, expert, xe.as_ref());
        let act_held = qs_model::expert_inner(c, expert, xhe.as_ref());
        let h_in = hessian(xe.as_ref(), xe.ncols());
        let h_down = hessian(act.as_ref(), act.ncols());
        for (lin, tg, codes, errors) in parts.iter_mut() {
            let (w, hess, xin) = match lin {
                Linear::Gate => (&expert.gate, &h_in, xhe.as_ref()),
                Linear::Up => (&expert.up, &h_in, xhe.as_ref()),
                _ => (&expert.down, &h_down, act_held.as_ref()),
            };
            let cols = w.ncols();
            // stored apart: the expert's own tensor (kept in float when it is no target)
            let apart = tg
                .per_expert
                .as_ref()
                .map(|each| each.get(e).and_then(|t| t.as_ref()));
            let Some(own_tg) = part_target(tg, e, moe.experts.len(), cols) else {
                continue;
            };
            let name = match apart.flatten() {
                Some(t) => t.name.clone(),
                None => format!("{} (expert {e})", tg.name),
            };
            let (out, wq, error) = super::calibrate_matrix(
                src,
                m,
                apart.flatten().unwrap_or(tg),
                &own_tg,
                &name,
                w,
                hess,
                xin,
            )?;
            if let Some(layer) = own.as_deref_mut() {
                if let Some(om) = layer.moe.as_mut() {
                    let oe = &mut om.experts[e];
                    *match lin {
                        Linear::Gate => &mut oe.gate,
                        Linear::Up => &mut oe.up,
                        _ => &mut oe.down,
                    } = wq;
                }
            }
            if apart.is_some() {
                written.push((
                    name,
                    super::Calibrated {
                        transform: None,
                        out: Some(Arc::new(out)),
                        error: Some(error),
                    },
                ));
                continue;
            }
            if codes
                .first()
                .is_some_and(|f: &CodeSet| f.g_idx != out.g_idx)
            {
                return Err(Error::Tensor {
                    file: file_of(src, &tg.name),
                    tensor: tg.name.clone(),
                    msg: "experts stacked in one tensor share one column order: --act-order group is not supported for them".into(),
                });
            }
            codes.push(out);
            errors.push((error, xin.nrows()));
        }
    }
    let tensors = parts
        .into_iter()
        .filter(|(_, tg, _, _)| tg.per_expert.is_none())
        .map(|(_, tg, codes, errors)| {
            let mut joined = CodeSet::default();
            for c in codes {
                joined.codes.extend(c.codes);
                joined.params.extend(c.params);
                joined.offsets.extend(c.offsets);
                // every expert's columns in one order (checked above)
                joined.g_idx = c.g_idx;
            }
            // errors weighted by the held-out tokens each expert saw
            let n: usize = errors.iter().map(|(_, n)| n).sum::<usize>().max(1);
            let mean = |f: fn(&LayerOutputError) -> f64| {
                errors.iter().map(|(e, k)| f(e) * *k as f64).sum::<f64>() / n as f64
            };
            let error = LayerOutputError {
                rtn: mean(|e| e.rtn),
                calibrated: mean(|e| e.calibrated),
            };
            (
                tg.name.clone(),
                super::Calibrated {
                    transform: None,
                    out: Some(Arc::new(joined)),
                    error: Some(error),
                },
            )
        })
        .chain(written)
        .collect();
    Ok(ExpertsDone { tensors, starved })
}

/// Part `e`'s own target among `experts` parts (experts, or a 3-D tensor's heads) of `tg`
/// (`cols` wide): its tensor's when the experts are stored apart (none when it is kept in
/// float); else the stacked tensor's, with this part's importance (a matrix has one per part).
pub(super) fn part_target(tg: &Target, e: usize, experts: usize, cols: usize) -> Option<Target> {
    match &tg.per_expert {
        Some(each) => each.get(e).cloned().flatten(),
        None => {
            let mut own = tg.clone();
            own.imatrix = tg
                .imatrix
                .as_ref()
                .map(|m| match m.len() == experts * cols {
                    true => Arc::new(m[e * cols..(e + 1) * cols].to_vec()),
                    false => m.clone(),
                });
            Some(own)
        }
    }
}

/// The shared-expert targets of layer `l` among `all`.
pub(super) fn shared_of_layer(
    all: &BTreeMap<(usize, Linear), Target>,
    l: usize,
) -> Vec<(Linear, &Target)> {
    [Linear::Gate, Linear::Up, Linear::Down]
        .into_iter()
        .filter_map(|lin| all.get(&(l, lin)).map(|t| (lin, t)))
        .collect()
}

/// Calibrates layer `l`'s shared expert (`targets`: its projections) for one job on every
/// calibration token, as a dense MLP: gate and up from the normed MLP inputs' Hessian, down
/// from its own inner activation's. `x` / `xh_mlp`: the layer's fit inputs and held-out normed
/// MLP inputs. With `own`, the layer's shared expert becomes the quantized one.
#[allow(clippy::too_many_arguments)]
pub(super) fn calibrate_shared(
    src: &ModelSource,
    m: &Member<'_>,
    c: &Config,
    float_layer: &Layer,
    mut own: Option<&mut Layer>,
    (x, xh_mlp): (MatRef<'_, f32>, MatRef<'_, f32>),
    batches: &[(usize, usize)],
    seq_len: usize,
    targets: &[(Linear, &Target)],
) -> Result<Vec<(String, super::Calibrated)>> {
    let Some((shared, _)) = float_layer.moe.as_ref().and_then(|m| m.shared.as_ref()) else {
        return Ok(vec![]);
    };
    let h2 = mlp_inputs(c, float_layer, x, batches, seq_len);
    let act = qs_model::expert_inner(c, shared, h2.as_ref());
    let act_held = qs_model::expert_inner(c, shared, xh_mlp);
    let mut h_in = Hessian::new(h2.ncols());
    h_in.add_mat(h2.as_ref());
    let mut h_down = Hessian::new(act.ncols());
    h_down.add_mat(act.as_ref());
    let mut out = Vec::new();
    for &(lin, tg) in targets {
        let (w, hess, xin) = match lin {
            Linear::Gate => (&shared.gate, &h_in, xh_mlp),
            Linear::Up => (&shared.up, &h_in, xh_mlp),
            _ => (&shared.down, &h_down, act_held.as_ref()),
        };
        let (q, wq, error) = super::calibrate_matrix(src, m, tg, tg, &tg.name, w, hess, xin)?;
        if let Some((oe, _)) = own
            .as_deref_mut()
            .and_then(|l| l.moe.as_mut())
            .and_then(|om| om.shared.as_mut())
        {
            *match lin {
                Linear::Gate => &mut oe.gate,
                Linear::Up => &mut oe.up,
                _ => &mut oe.down,
            } = wq;
        }
        out.push((
            tg.name.clone(),
            super::Calibrated {
                transform: None,
                out: Some(Arc::new(q)),
                error: Some(error),
            },
        ));
    }
    Ok(out)
}
