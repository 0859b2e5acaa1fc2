//! Calibrating multi-head latent attention (DeepSeek-V3) in llama.cpp's absorbed form: the
//! query bottleneck (`q_a_proj`) and `kv_a_proj_with_mqa` read the normed attention input,
//! `q_b_proj` the normed bottleneck, and per head `k_b` (the key half of `kv_b_proj`,
//! transposed) the head's query without rope, `v_b` the head's attention output in the
//! compressed space. Each gets GPTQ from its own input's Hessian (per head for the 3-D
//! `k_b`/`v_b`, their codes joined in head order as the GGUF stores them), from the float
//! layer's inputs as the other linears are. The safetensors layouts keep `kv_b_proj` whole:
//! it is quantized as one linear from the normed compressed vectors' Hessian.
//!
//! Memory: the Hessians (hidden², q_lora², heads × (nope² + kv_lora²)) and one batch's
//! attention inputs.

use super::{file_of, CodeSet, LayerOutputError, Member, Target};
use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use qs_formats::source::ModelSource;
use qs_model::hparams::MlaParams;
use qs_model::{mla_heads, rms_norm, Config, Layer, MlaLayer};
use qs_numeric::gptq::Hessian;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A latent attention tensor of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MlaPart {
    /// `q_a_proj`: the query bottleneck.
    QA,
    /// `q_b_proj` (or `q_proj` without a bottleneck).
    Q,
    /// `kv_a_proj_with_mqa`: the compressed key/value and the rope key.
    KvA,
    /// Per head, the key half of `kv_b_proj` transposed (`k_b_proj`, 3-D).
    KB,
    /// Per head, the value half of `kv_b_proj` (`v_b_proj`, 3-D).
    VB,
    /// `kv_b_proj` whole, as the safetensors layouts keep it: the normed compressed vectors
    /// to every head's key (no rope) and value.
    KvB,
}

impl MlaPart {
    /// (layer, part) of an HF weight name (`model.layers.N.self_attn.<module>.weight`).
    pub fn parse(name: &str) -> Option<(usize, MlaPart)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (l, module) = rest.split_once('.')?;
        let part = match module.strip_suffix(".weight")? {
            "self_attn.q_a_proj" => MlaPart::QA,
            "self_attn.q_b_proj" | "self_attn.q_proj" => MlaPart::Q,
            "self_attn.kv_a_proj_with_mqa" => MlaPart::KvA,
            "self_attn.k_b_proj" => MlaPart::KB,
            "self_attn.v_b_proj" => MlaPart::VB,
            "self_attn.kv_b_proj" => MlaPart::KvB,
            _ => return None,
        };
        Some((l.parse().ok()?, part))
    }
}

/// The Hessians of one layer's latent attention inputs.
struct Stats {
    /// The normed attention input (q_a, kv_a, q without a bottleneck).
    h: Hessian,
    /// q_b's input.
    q_b: Option<Hessian>,
    /// Per head: k_b's and v_b's inputs.
    k_b: Vec<Hessian>,
    v_b: Vec<Hessian>,
    /// The whole kv_b_proj's input.
    kv_b: Hessian,
}

/// Accumulates `cols`-wide head blocks of `x` into per-head Hessians.
fn add_heads(hs: &mut [Hessian], x: MatRef<'_, f32>) {
    let w = x.ncols() / hs.len().max(1);
    for (i, h) in hs.iter_mut().enumerate() {
        h.add_mat(x.subcols(i * w, w));
    }
}

/// The inputs latent attention reads for rows `x` of the float layer (`ml` its attention):
/// the normed attention input and [`qs_model::MlaInputs`] (the layer's feed-forward block is
/// not run).
fn inputs(
    c: &Config,
    p: MlaParams,
    (layer, ml): (&Layer, &MlaLayer),
    x: MatRef<'_, f32>,
    seq_len: usize,
) -> (Mat<f32>, qs_model::MlaInputs) {
    let h = match &layer.input_norm {
        Some(g) => rms_norm(x, g, c.eps),
        None => x.to_owned(),
    };
    let (_, i) = mla_heads(c, p, ml, layer, h.as_ref(), seq_len);
    (h, i)
}

/// Calibrates layer `l`'s latent attention tensors (`targets`) for one job: `x` / `xh` are
/// the layer's fit / held-out inputs. With `own`, the layer's weights become the quantized
/// ones (the next layer's inputs come from them).
#[allow(clippy::too_many_arguments)]
pub(super) fn calibrate(
    src: &ModelSource,
    m: &Member<'_>,
    c: &Config,
    float_layer: &Layer,
    mut own: Option<&mut Layer>,
    (x, xh): (MatRef<'_, f32>, MatRef<'_, f32>),
    batches: &[(usize, usize)],
    seq_len: usize,
    targets: &[(MlaPart, &Target)],
) -> Result<Vec<(String, super::Calibrated)>> {
    let (Some(p), Some(ml)) = (c.mla, float_layer.mla.as_ref()) else {
        return Ok(vec![]);
    };
    let heads = c.heads;
    let (nope, kv) = (p.qk_nope as usize, p.kv_lora as usize);
    let mut st = Stats {
        h: Hessian::new(c.hidden),
        q_b: ml.q_a.as_ref().map(|(a, _)| Hessian::new(a.nrows())),
        k_b: (0..heads).map(|_| Hessian::new(nope)).collect(),
        v_b: (0..heads).map(|_| Hessian::new(kv)).collect(),
        kv_b: Hessian::new(kv),
    };
    let whole = targets.iter().any(|(p, _)| *p == MlaPart::KvB);
    let kv_b = whole.then(|| qs_model::join_kv_b(&ml.k_b, &ml.v_b));
    for &(r0, r1) in batches {
        let (h, i) = inputs(c, p, (float_layer, ml), x.subrows(r0, r1 - r0), seq_len);
        st.h.add_mat(h.as_ref());
        if let (Some(hq), Some(q)) = (st.q_b.as_mut(), i.q_b.as_ref()) {
            hq.add_mat(q.as_ref());
        }
        add_heads(&mut st.k_b, i.q_nope.as_ref());
        add_heads(&mut st.v_b, i.latent.as_ref());
        if whole {
            st.kv_b.add_mat(i.ckv.as_ref());
        }
    }
    let (held_h, held) = inputs(c, p, (float_layer, ml), xh, seq_len);
    let mut out = Vec::new();
    for &(part, tg) in targets {
        let file = file_of(src, &tg.name);
        // the matrices (one, or one per head), each with its Hessian and held-out input
        let held_head = |x: &Mat<f32>, i: usize, w: usize| x.as_ref().subcols(i * w, w).to_owned();
        let mats: Vec<(&Mat<f32>, &Hessian, Mat<f32>)> = match part {
            MlaPart::QA => match &ml.q_a {
                Some((a, _)) => vec![(a, &st.h, held_h.clone())],
                None => vec![],
            },
            MlaPart::Q => match (&st.q_b, &held.q_b) {
                (Some(hq), Some(xq)) => vec![(&ml.q, hq, xq.clone())],
                _ => vec![(&ml.q, &st.h, held_h.clone())],
            },
            MlaPart::KvA => vec![(&ml.kv_a, &st.h, held_h.clone())],
            MlaPart::KB => ml
                .k_b
                .iter()
                .zip(&st.k_b)
                .enumerate()
                .map(|(i, (w, h))| (w, h, held_head(&held.q_nope, i, nope)))
                .collect(),
            MlaPart::VB => ml
                .v_b
                .iter()
                .zip(&st.v_b)
                .enumerate()
                .map(|(i, (w, h))| (w, h, held_head(&held.latent, i, kv)))
                .collect(),
            MlaPart::KvB => kv_b
                .iter()
                .map(|w| (w, &st.kv_b, held.ckv.clone()))
                .collect(),
        };
        let n = mats.len();
        let mut joined = CodeSet::default();
        let (mut num_rtn, mut num_cal) = (0f64, 0f64);
        let mut quantized = Vec::with_capacity(n);
        for (i, (w, hess, xin)) in mats.into_iter().enumerate() {
            let cols = w.ncols();
            let name = if n > 1 {
                format!("{} (head {i})", tg.name)
            } else {
                tg.name.clone()
            };
            // round to nearest with this matrix's own importance (a 3-D tensor has one per head)
            let own_tg = super::experts::part_target(tg, i, n, cols).unwrap_or_else(|| tg.clone());
            let (q, wq, error) =
                super::calibrate_matrix(src, m, tg, &own_tg, &name, w, hess, xin.as_ref())?;
            if n > 1 && i > 0 && joined.g_idx != q.g_idx {
                return Err(Error::Tensor {
                    file: file.clone(),
                    tensor: tg.name.clone(),
                    msg: "a head's matrices stacked in one tensor share one column order: --act-order group is not supported for them".into(),
                });
            }
            num_rtn += error.rtn;
            num_cal += error.calibrated;
            joined.codes.extend(q.codes);
            joined.params.extend(q.params);
            joined.offsets.extend(q.offsets);
            joined.g_idx = q.g_idx;
            quantized.push(wq);
        }
        if quantized.is_empty() {
            continue;
        }
        if let Some(om) = own.as_deref_mut().and_then(|l| l.mla.as_mut()) {
            let mut qz = quantized.into_iter();
            match part {
                MlaPart::QA => {
                    if let (Some(a), Some(w)) = (om.q_a.as_mut(), qz.next()) {
                        a.0 = w;
                    }
                }
                MlaPart::Q => om.q = qz.next().unwrap_or_else(|| om.q.clone()),
                MlaPart::KvA => om.kv_a = qz.next().unwrap_or_else(|| om.kv_a.clone()),
                MlaPart::KB => om.k_b = qz.collect(),
                MlaPart::VB => om.v_b = qz.collect(),
                MlaPart::KvB => {
                    if let Some(w) = qz.next() {
                        (om.k_b, om.v_b) =
                            qs_model::split_kv_b(w.as_ref(), heads, nope, p.v_head as usize);
                    }
                }
            }
        }
        out.push((
            tg.name.clone(),
            super::Calibrated {
                transform: None,
                out: Some(Arc::new(joined)),
                // (per head: the mean over the heads, which see the same tokens)
                error: Some(LayerOutputError {
                    rtn: num_rtn / n as f64,
                    calibrated: num_cal / n as f64,
                }),
            },
        ));
    }
    Ok(out)
}

/// The latent attention targets of layer `l` among `all`.
pub(super) fn of_layer(
    all: &BTreeMap<(usize, MlaPart), Target>,
    l: usize,
) -> Vec<(MlaPart, &Target)> {
    all.range((l, MlaPart::QA)..=(l, MlaPart::KvB))
        .map(|(&(_, p), t)| (p, t))
        .collect()
}
