//! AWQ on multi-head latent attention (DeepSeek-V3), as AutoAWQ's DeepSeek mappings scale it:
//! - input_layernorm → `q_a_proj` (`q_proj` without a query bottleneck) and
//!   `kv_a_proj_with_mqa`, searched on the attention block's output;
//! - `q_a_layernorm` → `q_b_proj`, on its output;
//! - `kv_a_layernorm` → `kv_b_proj`, on its output. In a GGUF `kv_b_proj` is split per head:
//!   the scale multiplies the rows of `k_b` (its key half, transposed) and the columns of
//!   `v_b`; in the safetensors layouts the columns of `kv_b_proj` whole.
//!
//! Clipping, as AutoAWQ's (which spares queries and keys): `kv_a_proj_with_mqa` and the value
//! half (`v_b` per head on its head's compressed attention output, or `kv_b_proj` whole).

use super::{best_scale, clip_group, clip_search, input_blocks, mse};
use crate::calib::experts::part_target;
use crate::calib::mla::MlaPart;
use crate::calib::{fake_quant, rows_of, to_mat, LayerCtx, Target};
use faer::{Mat, MatRef};
use qs_model::{attention_out, join_kv_b, linear, mla_heads, split_kv_b, MlaLayer};
use qs_numeric::awq::Transform;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Multiplies each column of `w` by `s` (`div`: divides).
fn scale_cols(w: &Mat<f32>, s: &[f32], div: bool) -> Mat<f32> {
    Mat::from_fn(w.nrows(), w.ncols(), |i, j| match div {
        true => w[(i, j)] / s[j],
        false => w[(i, j)] * s[j],
    })
}

/// Searches, folds and clips layer `ctx.index`'s latent attention on its normed attention
/// input `h`: adds the transforms of every changed tensor to `tf` (input_layernorm's too) and
/// leaves the layer transformed (its matrices still in float). `clip` says which targets
/// clipping applies to.
pub(super) fn search(
    ctx: &mut LayerCtx<'_>,
    h: MatRef<'_, f32>,
    clip: &dyn Fn(&Target) -> bool,
    tf: &mut BTreeMap<String, Transform>,
) -> crate::error::Result<()> {
    let l = ctx.index;
    let (mc, seq_len, scaling) = (ctx.model, ctx.seq_len, ctx.cfg.awq_scaling);
    let (Some(p), Some(ml)) = (mc.mla, ctx.layer.mla.clone()) else {
        return Ok(());
    };
    let targets = ctx.targets;
    let tg = |part: MlaPart| targets.mla.get(&(l, part)).cloned();
    let parts = [
        MlaPart::QA,
        MlaPart::Q,
        MlaPart::KvA,
        MlaPart::KB,
        MlaPart::VB,
        MlaPart::KvB,
    ];
    if parts.iter().all(|&p| tg(p).is_none()) {
        return Ok(());
    }
    let (heads, nope, vh) = (mc.heads, p.qk_nope as usize, p.v_head as usize);
    let kv = p.kv_lora as usize;
    let name = |m: &str| format!("model.layers.{l}.self_attn.{m}.weight");
    // the float layer's inputs of the bottleneck and the compressed vectors
    let (_, inp) = mla_heads(mc, p, &ml, ctx.layer, h, seq_len);
    // kv_b_proj as stored: split per head in a GGUF, whole in the safetensors layouts
    let split = tg(MlaPart::KvB).is_none();

    // 1. input_layernorm → q_a (or q) and kv_a, on the attention output
    let first = match &ml.q_a {
        Some((a, _)) => (a.clone(), tg(MlaPart::QA), "q_a_proj"),
        None => (ml.q.clone(), tg(MlaPart::Q), "q_proj"),
    };
    let mats = vec![(first.0, first.1), (ml.kv_a.clone(), tg(MlaPart::KvA))];
    let y0 = attention_out(mc, ctx.layer, h, seq_len);
    let bottleneck = ml.q_a.is_some();
    let s1 = best_scale(
        scaling,
        h,
        &mats,
        &mut *ctx.layer,
        &|layer, i, q| {
            if let Some(m) = layer.mla.as_mut() {
                match (i, m.q_a.as_mut()) {
                    (0, Some(a)) => a.0 = q,
                    (0, None) => m.q = q,
                    _ => m.kv_a = q,
                }
            }
        },
        &|layer| mse(&y0, &attention_out(mc, layer, h, seq_len)),
    );

    // 2. q_a_layernorm → q_b, on its output
    let s2 = match (&inp.q_b, bottleneck) {
        (Some(xq), true) => {
            let y = linear(xq.as_ref(), &ml.q, None);
            best_scale(
                scaling,
                xq.as_ref(),
                &[(ml.q.clone(), tg(MlaPart::Q))],
                &mut ml.q.clone(),
                &|w, _, q| *w = q,
                &|w| mse(&y, &linear(xq.as_ref(), w, None)),
            )
        }
        _ => None,
    };

    // 3. kv_a_layernorm → kv_b, on its output (per head in a GGUF: k_b's rows, v_b's columns)
    let ckv = inp.ckv.as_ref();
    let kvb = join_kv_b(&ml.k_b, &ml.v_b);
    let y3 = linear(ckv, &kvb, None);
    let s3 = match split {
        false => best_scale(
            scaling,
            ckv,
            &[(kvb.clone(), tg(MlaPart::KvB))],
            &mut kvb.clone(),
            &|w, _, q| *w = q,
            &|w| mse(&y3, &linear(ckv, w, None)),
        ),
        true => {
            // the scale multiplies k_b's rows, which its quantizer treats alike at any scale
            // (one scale per block along a row): its quantized values do not depend on the
            // candidate, so they are computed once; its float rows still count in the weight
            // statistic, as kv_b_proj's key rows do in AutoAWQ's
            let kq: Vec<Mat<f32>> = ml
                .k_b
                .iter()
                .enumerate()
                .map(
                    |(i, k)| match tg(MlaPart::KB).and_then(|t| part_target(&t, i, heads, nope)) {
                        Some(t) => {
                            let q = fake_quant(&t, &Transform::default(), &rows_of(k), kv, nope);
                            to_mat(&q, kv, nope)
                        }
                        None => k.clone(),
                    },
                )
                .collect();
            let mut mats = Vec::with_capacity(2 * heads);
            for (i, (k, v)) in ml.k_b.iter().zip(&ml.v_b).enumerate() {
                let vt = tg(MlaPart::VB).and_then(|t| part_target(&t, i, heads, kv));
                mats.push((k.transpose().to_owned(), None));
                mats.push((v.clone(), vt));
            }
            // (the candidate's v_b per head; k_b's quantized values stand for its rows)
            let mut v_b = ml.v_b.clone();
            best_scale(
                scaling,
                ckv,
                &mats,
                &mut v_b,
                &|v_b, i, q| {
                    if i % 2 == 1 {
                        v_b[i / 2] = q;
                    }
                },
                &|v_b| mse(&y3, &linear(ckv, &join_kv_b(&kq, v_b), None)),
            )
        }
    };

    // the transforms
    let col = |s: &Arc<[f32]>| Transform {
        col_mul: Some(s.clone()),
        ..Default::default()
    };
    let norm = super::norm_div;
    if let Some(s) = &s1 {
        let [in_norm, _, _] = super::folded_tensors(l, &mc.norms);
        tf.insert(in_norm, norm(s, mc.norm_offset));
        tf.insert(name(first.2), col(s));
        tf.insert(name("kv_a_proj_with_mqa"), col(s));
    }
    if let Some(s) = &s2 {
        tf.insert(name("q_a_layernorm"), norm(s, 0.0));
        tf.insert(name("q_b_proj"), col(s));
    }
    if let Some(s) = &s3 {
        tf.insert(name("kv_a_layernorm"), norm(s, 0.0));
        match split {
            true => {
                // k_b's rows (the compressed dimension) multiplied, head after head
                let inv: Vec<f32> = (0..heads).flat_map(|_| s.iter().map(|v| 1.0 / v)).collect();
                tf.insert(
                    name("k_b_proj"),
                    Transform {
                        row_div: Some(inv.into()),
                        ..Default::default()
                    },
                );
                tf.insert(name("v_b_proj"), col(s));
            }
            false => {
                tf.insert(name("kv_b_proj"), col(s));
            }
        }
    }

    // clipping: kv_a on the scaled normed inputs; the value half on its scaled inputs
    let mut clipped = |key: String, tg: Option<Target>, w: &Mat<f32>, x: MatRef<'_, f32>, s| {
        let Some(tg) = tg.filter(|t| clip(t)) else {
            return;
        };
        let (rows, cols) = (w.nrows(), w.ncols());
        let Some(group) = clip_group(&tg, cols) else {
            return;
        };
        let t = tf.get(&key).cloned().unwrap_or_default();
        let mut sw = rows_of(w);
        t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut sw);
        let blocks = input_blocks(x, s, group);
        if let Some(c) = clip_search(&tg, &t, &sw, (rows, cols), group, &blocks) {
            tf.entry(key).or_default().clip = Some(c);
        }
    };
    clipped(
        name("kv_a_proj_with_mqa"),
        tg(MlaPart::KvA),
        &ml.kv_a,
        h,
        s1.as_ref(),
    );
    if !split {
        clipped(name("kv_b_proj"), tg(MlaPart::KvB), &kvb, ckv, s3.as_ref());
    } else if let Some(vt) = tg(MlaPart::VB).filter(|t| clip(t)) {
        // per head on its compressed attention output; the steps joined in head order
        let key = name("v_b_proj");
        let mut steps: Vec<u8> = Vec::new();
        let mut group = None;
        for (i, v) in ml.v_b.iter().enumerate() {
            let Some(t) = part_target(&vt, i, heads, kv) else {
                continue;
            };
            let Some(g) = clip_group(&t, kv) else {
                break;
            };
            let own = tf.get(&key).cloned().unwrap_or_default();
            let mut sw = rows_of(v);
            own.apply(&(0..vh).collect::<Vec<_>>(), kv, &mut sw);
            let x = inp.latent.as_ref().subcols(i * kv, kv);
            let blocks = input_blocks(x, s3.as_ref(), g);
            let ng = qs_numeric::awq::groups(kv, g);
            match clip_search(&t, &own, &sw, (vh, kv), g, &blocks) {
                Some(c) => steps.extend_from_slice(&c.steps),
                None => steps.extend(std::iter::repeat_n(0, vh * ng)),
            }
            group = Some(g);
        }
        if let Some(group) = group.filter(|_| steps.iter().any(|&s| s != 0)) {
            tf.entry(key).or_default().clip = Some(qs_numeric::awq::Clip {
                group,
                steps: steps.into(),
            });
        }
    }

    // the layer as it will be quantized (its matrices still in float)
    let apply = |t: Option<&Transform>, w: &Mat<f32>| -> Mat<f32> {
        let Some(t) = t else {
            return w.clone();
        };
        let (rows, cols) = (w.nrows(), w.ncols());
        let mut v = rows_of(w);
        t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
        to_mat(&v, rows, cols)
    };
    let mut m: MlaLayer = ml;
    if let Some((a, gains)) = m.q_a.as_mut() {
        *a = apply(tf.get(&name("q_a_proj")), a);
        if let Some(s) = &s2 {
            gains.iter_mut().zip(s.iter()).for_each(|(g, s)| *g /= s);
        }
    }
    m.q = apply(
        tf.get(&name(if bottleneck { "q_b_proj" } else { "q_proj" })),
        &m.q,
    );
    m.kv_a = apply(tf.get(&name("kv_a_proj_with_mqa")), &m.kv_a);
    if let Some(s) = &s3 {
        m.kv_a_norm
            .iter_mut()
            .zip(s.iter())
            .for_each(|(g, s)| *g /= s);
    }
    match split {
        true => {
            // the joined kv_b_proj's columns scaled, back to the heads' matrices, each head's
            // v_b clipped with its own steps
            let kvb = match &s3 {
                Some(s) => scale_cols(&kvb, s, false),
                None => kvb,
            };
            let (k_b, v_b) = split_kv_b(kvb.as_ref(), heads, nope, vh);
            m.k_b = k_b;
            let vt = tf.get(&name("v_b_proj")).cloned().unwrap_or_default();
            m.v_b = v_b
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let t = Transform {
                        col_mul: None,
                        ..vt.rows(i * vh, vh, kv)
                    };
                    apply(Some(&t), v)
                })
                .collect();
        }
        false => {
            let w = apply(tf.get(&name("kv_b_proj")), &kvb);
            (m.k_b, m.v_b) = split_kv_b(w.as_ref(), heads, nope, vh);
        }
    }
    ctx.layer.mla = Some(m);
    Ok(())
}
