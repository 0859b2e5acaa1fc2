//! AWQ on a layer's mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3; gpt-oss's
//! take the first scale only), as AutoAWQ's and llm-compressor's mappings for them do:
//! - one scale for the MLP input norm → every expert's gate and up (and the shared expert's),
//!   searched on the whole sparse block's output, its weight statistic over all of them;
//! - per expert (and for the shared expert) one scale for its up rows → its down columns,
//!   searched on the inner activations of the tokens the float router sends it;
//! - clipping of every expert matrix on its own tokens (gate and up on the normed inputs the
//!   router sends it, down on its inner activations).
//!
//! The router and the shared expert's gate read the same normed input: they take the MLP
//! scale on their columns in float, so the routing is the float model's up to their rounding
//! to the stored dtype. In a GGUF
//! a projection's experts are one stacked tensor: their transforms are stacked
//! ([`Transform::stack`]; down's column factors one row per expert). The experts stay in
//! (transformed) float in the layer the next layer's inputs come from, as AutoAWQ computes
//! them from the float layer.

use super::{best_scale, clip_group, clip_search, input_blocks, mse};
use crate::calib::experts::{gather, part_target, routed};
use crate::calib::{rows_of, to_mat, LayerCtx, Target};
use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use qs_model::{expert_inner, linear, moe_out, Expert, Layer, Linear, MoeNames};
use qs_numeric::awq::Transform;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A matrix of the sparse block: expert `e`'s projection, or the shared expert's.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Expert(usize, Linear),
    Shared(Linear),
}

fn proj(e: &mut Expert, lin: Linear) -> &mut Mat<f32> {
    match lin {
        Linear::Gate => &mut e.gate,
        Linear::Up => &mut e.up,
        _ => &mut e.down,
    }
}

/// A projection's module name in the family's experts (Mixtral's w1/w3/w2).
fn proj_name(names: &MoeNames, lin: Linear) -> &'static str {
    match lin {
        Linear::Gate => names.gate,
        Linear::Up => names.up,
        _ => names.down,
    }
}

/// The sparse block's output for normed inputs `h2` (zeros for a layer without one).
fn sparse_out(c: &qs_model::Config, layer: &Layer, h2: MatRef<'_, f32>) -> Mat<f32> {
    match &layer.moe {
        Some(m) => moe_out(c, m, h2),
        None => Mat::zeros(h2.nrows(), c.hidden),
    }
}

fn weight_mut(layer: &mut Layer, slot: Slot) -> Option<&mut Mat<f32>> {
    let moe = layer.moe.as_mut()?;
    match slot {
        Slot::Expert(e, lin) => moe.experts.get_mut(e).map(|x| proj(x, lin)),
        Slot::Shared(lin) => moe.shared.as_mut().map(|(x, _)| proj(x, lin)),
    }
}

/// [`best_scale`] for matrices of the sparse block, each candidate's weights put in the layer
/// for `loss`.
fn best_scale_in(
    ctx: &mut LayerCtx<'_>,
    x: MatRef<'_, f32>,
    slots: &[(Slot, Option<Target>)],
    loss: &dyn Fn(&Layer) -> f64,
) -> Option<Arc<[f32]>> {
    let mats: Vec<(Mat<f32>, Option<Target>)> = slots
        .iter()
        .filter_map(|(s, t)| weight_mut(ctx.layer, *s).map(|w| (w.clone(), t.clone())))
        .collect();
    if mats.len() != slots.len() {
        return None;
    }
    best_scale(
        ctx.cfg.awq_scaling,
        x,
        &mats,
        &mut *ctx.layer,
        &|layer, i, q| {
            if let Some(m) = weight_mut(layer, slots[i].0) {
                *m = q;
            }
        },
        loss,
    )
}

/// Searches, folds and clips layer `ctx.index`'s mixture of experts on its normed MLP inputs
/// `h2`: adds every changed tensor's transform to `tf` (the MLP norm's included) and leaves
/// the layer transformed (its linears still in float). `clip` says which targets clipping
/// applies to.
pub(super) fn search(
    ctx: &mut LayerCtx<'_>,
    h2: MatRef<'_, f32>,
    clip: &dyn Fn(&Target) -> bool,
    tf: &mut BTreeMap<String, Transform>,
) -> Result<()> {
    let l = ctx.index;
    let mc = ctx.model;
    let (Some(moe_cfg), Some(moe)) = (&mc.moe, ctx.layer.moe.as_ref()) else {
        return Ok(());
    };
    let names = moe_cfg.names;
    let n = moe.experts.len();
    let shared = moe.shared.is_some();
    let down_cols: Vec<usize> = moe.experts.iter().map(|e| e.down.ncols()).collect();
    // (gpt-oss's experts add 1 to their clamped up projection and carry biases: dividing its
    // rows by a scale is not undone by down's columns, so they take the MLP scale only)
    let biased = moe
        .experts
        .iter()
        .any(|e| e.up_bias.is_some() || e.gate_bias.is_some());
    let hidden = h2.ncols();
    let projections = [Linear::Gate, Linear::Up, Linear::Down];
    // the targets: each expert's own, and the shared expert's
    let targets = ctx.targets;
    let stacked_tg = |lin: Linear| targets.get(&(l, lin)).filter(|t| t.experts.is_some());
    if projections.iter().all(|&p| stacked_tg(p).is_none()) {
        // no expert is quantized: nothing to protect
        return Ok(());
    }
    // a GGUF's experts are one stacked tensor per projection; the safetensors layouts', one each
    let stacked = projections
        .iter()
        .any(|&p| stacked_tg(p).is_some_and(|t| t.per_expert.is_none()));
    let target = |slot: Slot| -> Option<Target> {
        match slot {
            Slot::Expert(e, lin) => {
                let cols = match lin {
                    Linear::Down => *down_cols.get(e)?,
                    _ => hidden,
                };
                part_target(stacked_tg(lin)?, e, n, cols)
            }
            Slot::Shared(lin) => targets.shared.get(&(l, lin)).cloned(),
        }
    };
    let name = |slot: Slot| -> String {
        match slot {
            Slot::Expert(e, lin) => format!(
                "model.layers.{l}.{}.{e}.{}.weight",
                names.experts,
                proj_name(&names, lin)
            ),
            // (shared experts are named as a dense MLP's)
            Slot::Shared(lin) => format!(
                "model.layers.{l}.{}.{}.weight",
                names.shared.map_or("", |(m, _)| m),
                lin.hf_name().trim_start_matches("mlp.")
            ),
        }
    };
    let mut slots_in: Vec<(Slot, Option<Target>)> = Vec::new();
    for e in 0..n {
        for lin in [Linear::Gate, Linear::Up] {
            slots_in.push((Slot::Expert(e, lin), target(Slot::Expert(e, lin))));
        }
    }
    if shared {
        for lin in [Linear::Gate, Linear::Up] {
            slots_in.push((Slot::Shared(lin), target(Slot::Shared(lin))));
        }
    }

    // 1. the MLP input's scale, on the sparse block's output
    // (a projection the run does not encode, such as gpt-oss's MXFP4 experts kept as they
    // are, cannot take a scale: then none is searched for its input)
    let encoded = |lin: Linear| stacked_tg(lin).is_some();
    let y0 = sparse_out(mc, ctx.layer, h2);
    let s_mlp = match encoded(Linear::Gate) && encoded(Linear::Up) {
        true => best_scale_in(ctx, h2, &slots_in, &|layer| {
            mse(&y0, &sparse_out(mc, layer, h2))
        }),
        false => None,
    };

    // 2. per expert (and the shared one): its up rows → its down columns, on its own tokens
    let routes = routed(mc, ctx.layer, h2, false);
    // (k < n: expert k; k == n: the shared expert)
    let expert_of = |layer: &Layer, k: usize| -> Option<Expert> {
        let m = layer.moe.as_ref()?;
        match k < n {
            true => m.experts.get(k).cloned(),
            false => m.shared.as_ref().map(|(x, _)| x.clone()),
        }
    };
    let down_of = |layer: &Layer, k: usize| -> Mat<f32> {
        let m = layer.moe.as_ref();
        let w = match k < n {
            true => m.and_then(|m| m.experts.get(k)).map(|e| &e.down),
            false => m.and_then(|m| m.shared.as_ref()).map(|(e, _)| &e.down),
        };
        w.cloned().unwrap_or_else(|| Mat::zeros(0, 0))
    };
    let mut acts: Vec<Option<Mat<f32>>> = vec![None; n + 1];
    let mut s_down: Vec<Option<Arc<[f32]>>> = vec![None; n + 1];
    for k in 0..n + usize::from(shared) {
        let (slot, xin) = match k < n {
            true => (Slot::Expert(k, Linear::Down), gather(h2, &routes[k])),
            false => (Slot::Shared(Linear::Down), h2.to_owned()),
        };
        let Some(expert) = expert_of(ctx.layer, k) else {
            continue;
        };
        let act = expert_inner(mc, &expert, xin.as_ref());
        let tg = target(slot);
        let encodes = k == n || (encoded(Linear::Up) && encoded(Linear::Down));
        if tg.is_some() && !biased && encodes {
            let y = linear(act.as_ref(), &expert.down, None);
            let a = act.as_ref();
            s_down[k] = best_scale_in(ctx, a, &[(slot, tg)], &|layer| {
                mse(&y, &linear(a, &down_of(layer, k), None))
            });
        }
        acts[k] = Some(act);
    }

    // 3. the transforms: the norm, the router and shared gate (columns, in float), and each
    // expert's projections
    if let Some(s) = &s_mlp {
        let [_, post_norm, _] = super::folded_tensors(l, &mc.norms);
        tf.insert(post_norm, super::norm_div(s, mc.norm_offset));
        let mut floats = vec![format!("model.layers.{l}.{}.weight", names.router)];
        if let Some((_, Some(gate))) = names.shared {
            floats.push(format!("model.layers.{l}.{gate}.weight"));
        }
        for f in floats {
            tf.insert(
                f,
                Transform {
                    col_mul: Some(s.clone()),
                    ..Default::default()
                },
            );
        }
    }
    let mut own: BTreeMap<usize, [Transform; 3]> = BTreeMap::new();
    for (k, sd) in s_down.iter().enumerate().take(n + usize::from(shared)) {
        let t = own.entry(k).or_default();
        if let Some(s) = &s_mlp {
            t[0].col_mul = Some(s.clone());
            t[1].col_mul = Some(s.clone());
        }
        if let Some(s) = sd {
            t[1].row_div = Some(s.clone());
            t[2].col_mul = Some(s.clone());
        }
    }

    // 4. clipping, on each matrix's own (scaled) inputs
    for k in 0..n + usize::from(shared) {
        let slot_of = |lin: Linear| match k < n {
            true => Slot::Expert(k, lin),
            false => Slot::Shared(lin),
        };
        let xin = match k < n {
            true => gather(h2, &routes[k]),
            false => h2.to_owned(),
        };
        for (i, lin) in projections.into_iter().enumerate() {
            let slot = slot_of(lin);
            let Some(tg) = target(slot).filter(|t| clip(t)) else {
                continue;
            };
            let (x, s) = match lin {
                Linear::Down => match &acts[k] {
                    Some(a) => (a.as_ref(), s_down[k].as_ref()),
                    None => continue,
                },
                _ => (xin.as_ref(), s_mlp.as_ref()),
            };
            if x.nrows() == 0 {
                continue;
            }
            let Some(w) = weight_mut(ctx.layer, slot) else {
                continue;
            };
            let (rows, cols) = (w.nrows(), w.ncols());
            let Some(group) = clip_group(&tg, cols) else {
                continue;
            };
            let t = own.get(&k).map(|t| t[i].clone()).unwrap_or_default();
            let mut sw = rows_of(w);
            t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut sw);
            let blocks = input_blocks(x, s, group);
            if let Some(c) = clip_search(&tg, &t, &sw, (rows, cols), group, &blocks) {
                if let Some(t) = own.get_mut(&k) {
                    t[i].clip = Some(c);
                }
            }
        }
    }

    // 5. the layer as it will be quantized: transformed float weights, router and shared gate
    for (&k, ts) in &own {
        for (i, lin) in projections.into_iter().enumerate() {
            let slot = match k < n {
                true => Slot::Expert(k, lin),
                false => Slot::Shared(lin),
            };
            if let Some(w) = weight_mut(ctx.layer, slot) {
                let (rows, cols) = (w.nrows(), w.ncols());
                let mut v = rows_of(w);
                ts[i].apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
                *w = to_mat(&v, rows, cols);
            }
        }
    }
    if let (Some(s), Some(m)) = (&s_mlp, ctx.layer.moe.as_mut()) {
        let cols = m.router.ncols();
        m.router = Mat::from_fn(m.router.nrows(), cols, |i, j| m.router[(i, j)] * s[j]);
        if let Some((_, Some(g))) = m.shared.as_mut() {
            g.iter_mut().zip(s.iter()).for_each(|(v, s)| *v *= s);
        }
    }

    // 6. by tensor as stored: experts apart, or stacked per projection
    let rows = |k: usize, lin: Linear| -> usize {
        ctx.layer
            .moe
            .as_ref()
            .and_then(|m| m.experts.get(k))
            .map_or(0, |e| match lin {
                Linear::Gate => e.gate.nrows(),
                Linear::Up => e.up.nrows(),
                _ => e.down.nrows(),
            })
    };
    for (i, lin) in projections.into_iter().enumerate() {
        if stacked {
            let parts: Vec<(Option<&Transform>, usize)> = (0..n)
                .map(|k| (own.get(&k).map(|t| &t[i]), rows(k, lin)))
                .collect();
            let cols = match lin {
                Linear::Down => down_cols.first().copied().unwrap_or(0),
                _ => hidden,
            };
            let sname = stacked_tg(lin).map_or_else(
                || {
                    format!(
                        "model.layers.{l}.{}.{}.weight",
                        names.experts,
                        proj_name(&names, lin)
                    )
                },
                |t| t.name.clone(),
            );
            let t = Transform::stack(&parts, cols)
                .map_err(|m| Error::Config(format!("{sname}: {m}")))?;
            tf.insert(sname, t);
        } else {
            for k in 0..n {
                if let Some(t) = own.get(&k) {
                    tf.insert(name(Slot::Expert(k, lin)), t[i].clone());
                }
            }
        }
        if let Some(t) = own.get(&n).filter(|_| shared) {
            tf.insert(name(Slot::Shared(lin)), t[i].clone());
        }
    }
    Ok(())
}
