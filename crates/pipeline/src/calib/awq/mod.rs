//! AWQ as a calibration method (`--method awq`), and AWQ followed by GPTQ (`--method awq+gptq`).
//!
//! Per decoder layer, on the layer's calibration inputs (the float layer, as AutoAWQ searches):
//! 1. For each group of linears that share an input — input_layernorm → q, k, v (loss on the
//!    attention output), v → o (only when v's rows equal o's columns: not under grouped-query
//!    attention), post_attention_layernorm → gate, up (loss on the MLP output), up → down —
//!    try the grid's per-input-channel scales s ([`qs_numeric::awq::candidates`], plus s = 1):
//!    quantize W·diag(s) with the tensor's own planned quantizer (its layout or ggml type, with
//!    the importance matrix if one is given), use Q(W·diag(s))·diag(1/s), run the block and keep
//!    the scales with the least mean squared output error.
//! 2. Fold them: the previous op (norm weight, or rows of v / up and v's bias) is divided by s,
//!    the group's columns multiplied (so the float model computes the same function).
//! 3. Clip (not q and k): per row and group of the scaled weight, try max = amax·(1 − i/20),
//!    i < 10, quantize with the planned quantizer, and keep the clip whose output error on the
//!    scaled inputs is least.
//!
//! The result is a [`Transform`] per changed tensor, applied again when the run writes it; the
//! planned layout's round to nearest then stores it (`awq`), or GPTQ chooses its codes on the
//! transformed weights and inputs (`awq+gptq`). A fused checkpoint's (Phi-3) transforms are
//! stacked into its `qkv_proj` / `gate_up_proj` ([`Transform::stack`]); a mixture of experts'
//! MLP is searched by [`moe`], latent attention (DeepSeek-V3) by [`mla`].

mod mla;
mod moe;

use super::{
    fake_quant, gptq::Gptq, rows_of, to_mat, CodeSet, LayerCtx, LinearJob, Method, Target,
};
use crate::config::QuantizeConfig;
use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use qs_model::{attention_out, linear, mlp_out, Layer, Linear, Norms};
use qs_numeric::awq::{self, Clip, Transform};
use qs_numeric::layout::CodeGrid;
use qs_numeric::Scheme;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct Awq;

#[derive(Debug)]
pub struct AwqGptq;

/// Tensors of layer `l` AWQ may change besides the linears (the previous ops it folds into):
/// the model's norms before attention and before the MLP (Gemma's MLP input norm is
/// `pre_feedforward_layernorm`; the llama names when the model lacks one, which the
/// calibration refuses) and v's bias.
pub fn folded_tensors(l: usize, norms: &Norms) -> [String; 3] {
    let norm =
        |n: Option<&str>, llama: &str| format!("model.layers.{l}.{}.weight", n.unwrap_or(llama));
    [
        norm(norms.attn_in, "input_layernorm"),
        norm(norms.mlp_in, "post_attention_layernorm"),
        format!("model.layers.{l}.self_attn.v_proj.bias"),
    ]
}

/// Every tensor of layer `l` AWQ may rewrite: the folded ones and all seven linears, or the
/// fused tensors holding them (a linear kept in float still carries its group's scales).
fn rewritten(l: usize, norms: &Norms) -> Vec<String> {
    let mut v = folded_tensors(l, norms).to_vec();
    v.extend(Linear::ALL.iter().map(|lin| lin.weight_name(l)));
    v.extend(
        Linear::FUSED
            .iter()
            .map(|(m, _)| format!("model.layers.{l}.{m}.weight")),
    );
    v
}

/// The transforms by linear as the checkpoint stores them: a fused model's (Phi-3) q/k/v and
/// gate/up transforms stacked into their fused tensor's, in its row order.
fn as_stored(
    l: usize,
    layer: &Layer,
    mut tf: BTreeMap<String, Transform>,
) -> Result<BTreeMap<String, Transform>> {
    for (module, parts) in Linear::FUSED {
        let names: Vec<String> = parts.iter().map(|p| p.weight_name(l)).collect();
        if !names.iter().any(|n| tf.contains_key(n)) {
            continue;
        }
        let cols = parts[0].weight(layer).ncols();
        let each: Vec<(Option<Transform>, usize)> = parts
            .iter()
            .zip(&names)
            .map(|(p, n)| (tf.remove(n), p.weight(layer).nrows()))
            .collect();
        let refs: Vec<(Option<&Transform>, usize)> =
            each.iter().map(|(t, n)| (t.as_ref(), *n)).collect();
        let name = format!("model.layers.{l}.{module}.weight");
        let t = Transform::stack(&refs, cols).map_err(|m| Error::Config(format!("{name}: {m}")))?;
        tf.insert(name, t);
    }
    Ok(tf)
}

fn check_awq(cfg: &QuantizeConfig) -> Result<()> {
    if cfg.awq_tokens == 0 {
        return Err(Error::Config(
            "--awq-tokens 0: the scale search needs tokens".into(),
        ));
    }
    Ok(())
}

fn supports_awq(scheme: &Scheme) -> std::result::Result<(), String> {
    match scheme {
        Scheme::Float(_) => Err("float targets are not quantized".into()),
        _ => Ok(()),
    }
}

impl Method for Awq {
    fn name(&self) -> &'static str {
        "awq"
    }
    fn check_options(&self, cfg: &QuantizeConfig) -> Result<()> {
        check_awq(cfg)
    }
    fn supports(
        &self,
        scheme: &Scheme,
        _grid: Option<&CodeGrid>,
    ) -> std::result::Result<(), String> {
        supports_awq(scheme)
    }
    fn chooses_codes(&self) -> bool {
        false
    }
    fn folded_tensors(&self, l: usize, norms: &Norms) -> Vec<String> {
        rewritten(l, norms)
    }
    fn transform_layer(&self, ctx: &mut LayerCtx<'_>) -> Result<Vec<(String, Transform)>> {
        search_layer(ctx, |_| true)
    }
    fn quantize(&self, _job: &LinearJob<'_>) -> Result<CodeSet> {
        unreachable!("AWQ leaves the codes to the layout's round to nearest")
    }
}

impl Method for AwqGptq {
    fn name(&self) -> &'static str {
        "awq+gptq"
    }
    fn check_options(&self, cfg: &QuantizeConfig) -> Result<()> {
        check_awq(cfg)?;
        Gptq.check_options(cfg)
    }
    fn supports(
        &self,
        scheme: &Scheme,
        grid: Option<&CodeGrid>,
    ) -> std::result::Result<(), String> {
        supports_awq(scheme)?;
        match grid {
            // scaled and clipped by AWQ, then rounded to nearest by the ggml type
            None if matches!(scheme, Scheme::Ggml(_)) => Ok(()),
            _ => Gptq.supports(scheme, grid),
        }
    }
    fn leaves_gridless(&self) -> bool {
        false
    }
    fn chooses_codes(&self) -> bool {
        true
    }
    fn folded_tensors(&self, l: usize, norms: &Norms) -> Vec<String> {
        rewritten(l, norms)
    }
    fn transform_layer(&self, ctx: &mut LayerCtx<'_>) -> Result<Vec<(String, Transform)>> {
        // GPTQ fits each group's range itself: clipping first would only add error it cannot
        // undo (llm-compressor's AWQ, run before its GPTQ, does not clip either); the linears
        // GPTQ cannot reach (ggml types without a code grid) are clipped as plain AWQ does
        search_layer(ctx, |t| t.grid.is_none())
    }
    fn quantize(&self, job: &LinearJob<'_>) -> Result<CodeSet> {
        Gptq.quantize(job)
    }
}

fn mse(a: &Mat<f32>, b: &Mat<f32>) -> f64 {
    let mut s = 0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let d = (a[(i, j)] - b[(i, j)]) as f64;
            s += d * d;
        }
    }
    s / (a.nrows() * a.ncols()).max(1) as f64
}

/// The clipping group for a stored form: the layout's group, 32 for ggml blocks (their
/// sub-block), `None` (no clipping) for a whole row wider than 256 (per-channel scales).
fn clip_group(t: &Target, cols: usize) -> Option<usize> {
    let g = match t.grid {
        Some(CodeGrid::Int { group, .. }) => group.unwrap_or(cols),
        _ => match t.scheme {
            Scheme::Ggml(_) => 32,
            _ => cols,
        },
    };
    (g <= 256).then_some(g)
}

/// One group of the search: the linears reading one input and the block its loss is on.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    Attention,
    O,
    Mlp,
    Down,
}

struct Group {
    block: Block,
    linears: &'static [Linear],
}

const GROUPS: [Group; 4] = [
    Group {
        block: Block::Attention,
        linears: &[Linear::Q, Linear::K, Linear::V],
    },
    Group {
        block: Block::O,
        linears: &[Linear::O],
    },
    Group {
        block: Block::Mlp,
        linears: &[Linear::Gate, Linear::Up],
    },
    Group {
        block: Block::Down,
        linears: &[Linear::Down],
    },
];

/// AWQ's search on one layer: finds and folds the scales, and searches the clipping of the
/// targets `clip` accepts;
/// rewrites `ctx.layer` to the transformed weights (the linears still in float) and returns the
/// transforms by tensor name.
pub fn search_layer(
    ctx: &mut LayerCtx<'_>,
    clip: impl Fn(&Target) -> bool,
) -> Result<Vec<(String, Transform)>> {
    let l = ctx.index;
    let mc = ctx.model;
    let seq_len = ctx.seq_len;
    // (a mixture's experts are searched by [`moe::search`])
    let targeted = |lin: Linear| ctx.targets.get(&(l, lin)).filter(|t| t.experts.is_none());
    let (_, cap) = qs_model::layer_forward(mc, ctx.layer, ctx.x, seq_len, true);
    let cap = cap.expect("captured");
    let inputs: [MatRef<'_, f32>; 4] = [
        cap.qkv_in.as_ref(),
        cap.o_in.as_ref(),
        cap.mlp_in.as_ref(),
        cap.down_in.as_ref(),
    ];

    // 1. scales per group, every search on the float layer
    let mut scales: [Option<Arc<[f32]>>; 4] = [None, None, None, None];
    for (gi, g) in GROUPS.iter().enumerate() {
        if !g.linears.iter().any(|&lin| targeted(lin).is_some()) {
            continue;
        }
        if g.block == Block::O && ctx.layer.v.nrows() != ctx.layer.o.ncols() {
            // v's rows cannot carry o's column scales (grouped-query attention)
            continue;
        }
        let x = inputs[gi];
        let y0 = block_out(ctx, g.block, x);
        let mats: Vec<(Mat<f32>, Option<Target>)> = g
            .linears
            .iter()
            .map(|&lin| (lin.weight(ctx.layer).clone(), targeted(lin).cloned()))
            .collect();
        let (mc, seq_len, scaling) = (ctx.model, ctx.seq_len, ctx.cfg.awq_scaling);
        scales[gi] = best_scale(
            scaling,
            x,
            &mats,
            &mut *ctx.layer,
            &|layer, i, q| *g.linears[i].weight_mut(layer) = q,
            &|layer| mse(&y0, &block_out_of(mc, layer, g.block, x, seq_len)),
        );
    }

    // 2. the transforms that fold the scales
    let mut tf: BTreeMap<String, Transform> = BTreeMap::new();
    let [s_attn, s_o, s_mlp, s_down] = scales;
    let [in_norm, post_norm, v_bias] = folded_tensors(l, &mc.norms);
    // (norm gains stored as w and applied as w + offset: Gemma's 1 + w)
    let norm_div = |s: &Arc<[f32]>| norm_div(s, mc.norm_offset);
    if let Some(s) = &s_attn {
        tf.insert(in_norm, norm_div(s));
        for lin in [Linear::Q, Linear::K, Linear::V] {
            tf.entry(lin.weight_name(l)).or_default().col_mul = Some(s.clone());
        }
    }
    if let Some(s) = &s_o {
        tf.entry(Linear::V.weight_name(l)).or_default().row_div = Some(s.clone());
        if ctx.layer.v_bias.is_some() {
            tf.entry(v_bias).or_default().col_div = Some(s.clone());
        }
        tf.entry(Linear::O.weight_name(l)).or_default().col_mul = Some(s.clone());
    }
    if let Some(s) = &s_mlp {
        tf.insert(post_norm, norm_div(s));
        for lin in [Linear::Gate, Linear::Up] {
            tf.entry(lin.weight_name(l)).or_default().col_mul = Some(s.clone());
        }
    }
    if let Some(s) = &s_down {
        tf.entry(Linear::Up.weight_name(l)).or_default().row_div = Some(s.clone());
        tf.entry(Linear::Down.weight_name(l)).or_default().col_mul = Some(s.clone());
    }

    // 3. clipping of the scaled weights, on the scaled inputs
    let input_scale = |lin: Linear| -> Option<&Arc<[f32]>> {
        match lin.input() {
            qs_model::Input::Attention => s_attn.as_ref(),
            qs_model::Input::AttentionOut => s_o.as_ref(),
            qs_model::Input::Mlp => s_mlp.as_ref(),
            qs_model::Input::MlpInner => s_down.as_ref(),
        }
    };
    let mut block_cache: BTreeMap<(usize, usize), Vec<Vec<f32>>> = BTreeMap::new();
    for (gi, g) in GROUPS.iter().enumerate() {
        for &lin in g.linears {
            if matches!(lin, Linear::Q | Linear::K) {
                continue;
            }
            let Some(tg) = targeted(lin).filter(|t| clip(t)) else {
                continue;
            };
            let w = lin.weight(ctx.layer);
            let (rows, cols) = (w.nrows(), w.ncols());
            let Some(group) = clip_group(tg, cols) else {
                continue;
            };
            let name = lin.weight_name(l);
            let t = tf.get(&name).cloned().unwrap_or_default();
            let mut sw = rows_of(w);
            t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut sw);
            // one block per group, once per input (gate and up share theirs)
            let blocks = block_cache
                .entry((gi, group))
                .or_insert_with(|| input_blocks(inputs[gi], input_scale(lin), group));
            if let Some(c) = clip_search(tg, &t, &sw, (rows, cols), group, blocks) {
                tf.entry(name).or_default().clip = Some(c);
            }
        }
    }
    if ctx.layer.mla.is_some() {
        mla::search(ctx, inputs[0], &clip, &mut tf)?;
    }
    if ctx.layer.moe.is_some() {
        moe::search(ctx, inputs[2], &clip, &mut tf)?;
    }

    // the layer as it will be quantized: transformed float weights, folded norms and bias
    let layer: &mut Layer = ctx.layer;
    for lin in Linear::ALL {
        if let Some(t) = tf.get(&lin.weight_name(l)) {
            let w = lin.weight_mut(layer);
            let (rows, cols) = (w.nrows(), w.ncols());
            let mut v = rows_of(w);
            t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
            *w = to_mat(&v, rows, cols);
        }
    }
    let [in_norm, post_norm, v_bias] = folded_tensors(l, &mc.norms);
    for (name, vec) in [
        (in_norm, layer.input_norm.as_mut()),
        (post_norm, layer.post_norm.as_mut()),
        (v_bias, layer.v_bias.as_mut()),
    ] {
        if let (Some(t), Some(v)) = (tf.get(&name), vec) {
            // the layer holds the gains as applied
            let n = v.len();
            t.on_applied().apply(&[0], n, v);
        }
    }
    let tf = match ctx.fused {
        true => as_stored(l, layer, tf)?,
        false => tf,
    };
    Ok(tf.into_iter().filter(|(_, t)| !t.is_identity()).collect())
}

/// AWQ's scale search for the matrices `mats` (the float weights, each with its planned
/// quantizer if quantized) reading input `x`: of the candidates
/// ([`qs_numeric::awq::candidates`] from `x`'s mean magnitude and the matrices' weight
/// statistic over all of them, plus s = 1), the one whose `loss` of `state` is least, after
/// `put` has placed each matrix in `state` as the candidate would store it, back in input
/// scale (Q(W·diag(s))·diag(1/s)). The float weights are put back at the end. `None` when
/// s = 1 wins. One matrix's temporaries at a time: memory is `state` and `mats`.
fn best_scale<S>(
    scaling: awq::Scaling,
    x: MatRef<'_, f32>,
    mats: &[(Mat<f32>, Option<Target>)],
    state: &mut S,
    put: &dyn Fn(&mut S, usize, Mat<f32>),
    loss: &dyn Fn(&S) -> f64,
) -> Option<Arc<[f32]>> {
    let cols = x.ncols();
    if x.nrows() == 0 || mats.is_empty() || mats.iter().any(|(w, _)| w.ncols() != cols) {
        return None;
    }
    let group = mats
        .iter()
        .find_map(|(_, t)| t.as_ref())
        .and_then(|t| clip_group(t, cols))
        .unwrap_or(cols);
    let x_mean = awq::act_mean(x.nrows(), cols, |r, c| x[(r, c)]);
    let mut w_mean = awq::WeightMean::new(cols, group);
    for (w, _) in mats {
        w_mean.add(&rows_of(w));
    }
    let w_mean = w_mean.finish();
    let mut cands = vec![awq::Candidate {
        ratio: 0.0,
        duo: false,
        scales: vec![1.0; cols],
    }];
    cands.extend(awq::candidates(&x_mean, &w_mean, scaling));
    let mut best: Option<(f64, usize)> = None;
    for (ci, cand) in cands.iter().enumerate() {
        let t = Transform {
            col_mul: Some(cand.scales.clone().into()),
            ..Default::default()
        };
        for (i, (w, tg)) in mats.iter().enumerate() {
            let rows = w.nrows();
            let mut sw = rows_of(w);
            t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut sw);
            let mut q = match tg {
                Some(tg) => fake_quant(tg, &t, &sw, rows, cols),
                None => sw,
            };
            for row in q.chunks_exact_mut(cols) {
                for (v, s) in row.iter_mut().zip(&cand.scales) {
                    *v /= s;
                }
            }
            put(state, i, to_mat(&q, rows, cols));
        }
        let l = loss(state);
        if best.is_none_or(|(b, _)| l < b) {
            best = Some((l, ci));
        }
    }
    for (i, (w, _)) in mats.iter().enumerate() {
        put(state, i, w.clone());
    }
    match best {
        Some((_, ci)) if ci > 0 => Some(cands.swap_remove(ci).scales.into()),
        _ => None,
    }
}

/// A norm's transform for scales `s` folded after it: its gains divided (stored as `w`,
/// applied as `w + offset`).
fn norm_div(s: &Arc<[f32]>, offset: f32) -> Transform {
    Transform {
        col_div: Some(s.clone()),
        offset,
        ..Default::default()
    }
}

/// The second moment's diagonal blocks of inputs `x` divided by `s` (AWQ's scales), one per
/// `group` columns, in parallel: what [`clip_search`] weighs a change of weights with.
fn input_blocks(x: MatRef<'_, f32>, s: Option<&Arc<[f32]>>, group: usize) -> Vec<Vec<f32>> {
    let cols = x.ncols();
    (0..cols)
        .step_by(group)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&c0| {
            let n = group.min(cols - c0);
            awq::hessian_blocks(x.nrows(), n, n, |r, c| {
                x[(r, c0 + c)] / s.map_or(1.0, |s| s[c0 + c])
            })
            .remove(0)
        })
        .collect()
}

/// AWQ's clipping of a scaled weight `sw` (`t` already applied) for the quantizer of `tg`:
/// per (row, group), of max = amax·(1 − i/20), i < 10, the one whose quantized output error on
/// the inputs (`blocks`, [`input_blocks`]) is least. None when no row clips.
fn clip_search(
    tg: &Target,
    t: &Transform,
    sw: &[f32],
    (rows, cols): (usize, usize),
    group: usize,
    blocks: &[Vec<f32>],
) -> Option<Clip> {
    let ng = awq::groups(cols, group);
    let mut best_err = vec![f32::INFINITY; rows * ng];
    let mut steps = vec![0u8; rows * ng];
    for i in 0..awq::CLIP_STEPS as u8 {
        let mut cw = sw.to_vec();
        let st = vec![i; ng];
        for row in cw.chunks_exact_mut(cols) {
            awq::clip_row(row, group, &st);
        }
        let q = fake_quant(tg, t, &cw, rows, cols);
        let d: Vec<f32> = q.iter().zip(sw).map(|(a, b)| a - b).collect();
        let err: Vec<f32> = d
            .par_chunks(cols * 256)
            .flat_map_iter(|rows| awq::group_errors(rows, cols, group, blocks))
            .collect();
        for (k, e) in err.into_iter().enumerate() {
            if e < best_err[k] {
                best_err[k] = e;
                steps[k] = i;
            }
        }
    }
    steps.iter().any(|&s| s != 0).then(|| Clip {
        group,
        steps: steps.into(),
    })
}

/// The output of the block a group's loss is on, for that group's input `x`.
fn block_out(ctx: &LayerCtx<'_>, block: Block, x: MatRef<'_, f32>) -> Mat<f32> {
    block_out_of(ctx.model, ctx.layer, block, x, ctx.seq_len)
}

fn block_out_of(
    c: &qs_model::Config,
    layer: &Layer,
    block: Block,
    x: MatRef<'_, f32>,
    seq_len: usize,
) -> Mat<f32> {
    match block {
        Block::Attention => attention_out(c, layer, x, seq_len),
        Block::O => linear(x, &layer.o, layer.o_bias.as_deref()),
        Block::Mlp => mlp_out(c, layer, x),
        Block::Down => linear(x, &layer.down, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_model::{layer_forward, Config};
    use qs_numeric::layout::{GgmlBlocks, PackQuantized};
    use qs_numeric::rtn::IntSpec;
    use qs_numeric::synth::Rng;
    use qs_numeric::{DType, GgmlType, Granularity};

    const HIDDEN: usize = 256;
    const INTER: usize = 256;
    const SEQ: usize = 32;

    fn config(kv_heads: usize) -> Config {
        Config::llama(HIDDEN, 4, kv_heads, 64, 1)
    }

    fn matrix(rng: &mut Rng, rows: usize, cols: usize) -> Mat<f32> {
        let std = 1.0 / (cols as f64).sqrt();
        Mat::from_fn(rows, cols, |_, _| (rng.normal() * std) as f32)
    }

    fn layer(c: &Config, seed: u64) -> Layer {
        let mut rng = Rng::new(seed);
        let kd = c.kv_heads * c.head_dim;
        Layer {
            rope: true,
            window: None,
            input_norm: Some(
                (0..HIDDEN)
                    .map(|_| 1.0 + 0.2 * rng.normal() as f32)
                    .collect(),
            ),
            attn_out_norm: None,
            mlp_out_norm: None,
            q: matrix(&mut rng, HIDDEN, HIDDEN),
            k: matrix(&mut rng, kd, HIDDEN),
            v: matrix(&mut rng, kd, HIDDEN),
            o: matrix(&mut rng, HIDDEN, HIDDEN),
            q_bias: None,
            k_bias: None,
            v_bias: Some((0..kd).map(|_| 0.1 * rng.normal() as f32).collect()),
            o_bias: None,
            sinks: None,
            q_norm: None,
            k_norm: None,
            post_norm: Some(
                (0..HIDDEN)
                    .map(|_| 1.0 + 0.2 * rng.normal() as f32)
                    .collect(),
            ),
            gate: matrix(&mut rng, INTER, HIDDEN),
            up: matrix(&mut rng, INTER, HIDDEN),
            down: matrix(&mut rng, HIDDEN, INTER),
            moe: None,
            mla: None,
        }
    }

    /// Layer inputs with a few loud channels, as real activations have.
    fn inputs(tokens: usize, seed: u64, loud: bool) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        Mat::from_fn(tokens, HIDDEN, |_, c| {
            let v = rng.normal() as f32;
            if loud && c % 37 == 5 {
                v * 30.0
            } else {
                v
            }
        })
    }

    fn targets(scheme: Scheme) -> BTreeMap<(usize, Linear), Target> {
        Linear::ALL
            .into_iter()
            .map(|lin| {
                let shape = match lin {
                    Linear::Gate | Linear::Up => [INTER, HIDDEN],
                    Linear::Down => [HIDDEN, INTER],
                    _ => [HIDDEN, HIDDEN],
                };
                (
                    (0, lin),
                    Target {
                        name: lin.weight_name(0),
                        scheme,
                        grid: scheme.code_grid(&shape),
                        imatrix: None,
                        fused: None,
                        experts: None,
                        per_expert: None,
                    },
                )
            })
            .collect()
    }

    /// Every linear of `layer` replaced by its planned quantizer's values.
    fn quantized(layer: &mut Layer, t: &BTreeMap<(usize, Linear), Target>) {
        for lin in Linear::ALL {
            let w = lin.weight_mut(layer);
            let (rows, cols) = (w.nrows(), w.ncols());
            let q = fake_quant(
                &t[&(0, lin)],
                &Transform::default(),
                &rows_of(w),
                rows,
                cols,
            );
            *w = to_mat(&q, rows, cols);
        }
    }

    fn rel(a: &Mat<f32>, b: &Mat<f32>) -> f64 {
        let den = mse(a, &Mat::zeros(a.nrows(), a.ncols()));
        mse(a, b) / den
    }

    fn int(bits: u32, symmetric: bool, granularity: Granularity) -> Scheme {
        Scheme::Int(PackQuantized {
            spec: IntSpec { bits, symmetric },
            granularity,
            scale_dtype: DType::BF16,
            g_idx: false,
        })
    }

    fn run(
        c: &Config,
        cfg: &QuantizeConfig,
        tg: &BTreeMap<(usize, Linear), Target>,
        x: &Mat<f32>,
        l: &mut Layer,
    ) -> Vec<(String, Transform)> {
        let targets = crate::calib::Targets {
            linears: tg.clone(),
            ..Default::default()
        };
        run_on(c, cfg, &targets, x, l)
    }

    /// AWQ's search on layer 0 `l` with all of `targets` (experts, latent attention too).
    fn run_on(
        c: &Config,
        cfg: &QuantizeConfig,
        targets: &crate::calib::Targets,
        x: &Mat<f32>,
        l: &mut Layer,
    ) -> Vec<(String, Transform)> {
        search_layer(
            &mut LayerCtx {
                model: c,
                index: 0,
                layer: l,
                x: x.as_ref(),
                float_out: None,
                seq_len: SEQ,
                targets,
                cfg,
                fused: false,
            },
            |_| true,
        )
        .unwrap()
    }

    #[test]
    fn awq_beats_round_to_nearest_on_loud_channels_for_every_target() {
        let schemes = [
            int(4, false, Granularity::Group(32)),
            int(4, true, Granularity::Group(64)),
            int(3, false, Granularity::Group(32)),
            int(4, true, Granularity::Channel),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q4_0)),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q4_1)),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q4_K)),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q6_K)),
            Scheme::Ggml(GgmlBlocks(GgmlType::IQ4_NL)),
        ];
        // every target with v → o scaling, two of them under grouped-query attention
        let cases = schemes
            .iter()
            .map(|&s| (4, s))
            .chain([(2, schemes[0]), (2, schemes[4])]);
        for (kv, scheme) in cases {
            let c = config(kv);
            let fit = inputs(2 * SEQ, 1, true);
            let held = inputs(2 * SEQ, 2, true);
            let float = layer(&c, 3);
            let y = layer_forward(&c, &float, held.as_ref(), SEQ, false).0;
            {
                let tg = targets(scheme);
                let cfg = QuantizeConfig::new("x", crate::config::Target::Int(4));
                let mut rtn = layer(&c, 3);
                quantized(&mut rtn, &tg);
                let e_rtn = rel(&y, &layer_forward(&c, &rtn, held.as_ref(), SEQ, false).0);
                let mut l = layer(&c, 3);
                let tf = run(&c, &cfg, &tg, &fit, &mut l);
                assert!(!tf.is_empty());
                if kv < 4 {
                    // grouped-query attention: no v → o scaling
                    assert!(tf
                        .iter()
                        .all(|(n, t)| !(n.contains("o_proj") && t.col_mul.is_some())));
                }
                quantized(&mut l, &tg);
                let e_awq = rel(&y, &layer_forward(&c, &l, held.as_ref(), SEQ, false).0);
                assert!(
                    e_awq < e_rtn,
                    "{} (kv {kv}): AWQ {e_awq:.3e} vs RTN {e_rtn:.3e}",
                    scheme.label()
                );
            }
        }
    }

    #[test]
    fn folding_keeps_the_float_layer() {
        let c = config(4);
        folding_keeps(&c, layer(&c, 5));
    }

    /// Gemma: the MLP's input norm is `pre_feedforward_layernorm`, the blocks' outputs are normed
    /// too, and gains are stored as `w`, applied as `1 + w`: the folded stored gains still give
    /// the same function.
    #[test]
    fn folding_into_gemma_norms_keeps_the_float_layer() {
        let mut c = config(4);
        c.norms = qs_model::Norms {
            attn_in: Some("input_layernorm"),
            attn_out: Some("post_attention_layernorm"),
            mlp_in: Some("pre_feedforward_layernorm"),
            mlp_out: Some("post_feedforward_layernorm"),
        };
        c.norm_offset = 1.0;
        c.act = qs_model::Act::GeluTanh;
        let mut l = layer(&c, 5);
        let mut rng = Rng::new(9);
        let mut gains = || {
            Some(
                (0..HIDDEN)
                    .map(|_| 1.0 + 0.2 * rng.normal() as f32)
                    .collect(),
            )
        };
        l.attn_out_norm = gains();
        l.mlp_out_norm = gains();
        folding_keeps(&c, l);
    }

    /// With scales on every group and clipping off, the layer with every transform applied to its
    /// stored tensors computes what the float layer does.
    fn folding_keeps(c: &Config, float: Layer) {
        let x = inputs(4 * SEQ, 4, true);
        let y = layer_forward(c, &float, x.as_ref(), SEQ, false).0;
        let tg = targets(int(4, false, Granularity::Group(32)));
        let cfg = QuantizeConfig::new("x", crate::config::Target::Int(4));
        let mut l = float.clone();
        let tf = run(c, &cfg, &tg, &x, &mut l);
        let [in_norm, mlp_norm, _] = folded_tensors(0, &c.norms);
        assert!(tf.iter().any(|(n, _)| n == &in_norm));
        assert!(tf.iter().any(|(n, _)| n == &mlp_norm));
        let mut scaled = float.clone();
        for (name, t) in &tf {
            let t = Transform {
                clip: None,
                ..t.clone()
            };
            let lin = Linear::parse(name).map(|(_, lin)| lin);
            match lin {
                Some(lin) => {
                    let w = lin.weight_mut(&mut scaled);
                    let (rows, cols) = (w.nrows(), w.ncols());
                    let mut v = rows_of(w);
                    t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
                    *w = to_mat(&v, rows, cols);
                }
                None => {
                    let v = if name == &in_norm {
                        scaled.input_norm.as_mut().unwrap()
                    } else if name == &mlp_norm {
                        scaled.post_norm.as_mut().unwrap()
                    } else {
                        scaled.v_bias.as_mut().unwrap()
                    };
                    // as stored (w), transformed, then applied again (w + offset)
                    let n = v.len();
                    let off = if name == &in_norm || name == &mlp_norm {
                        c.norm_offset
                    } else {
                        0.0
                    };
                    v.iter_mut().for_each(|g| *g -= off);
                    t.apply(&[0], n, v);
                    v.iter_mut().for_each(|g| *g += off);
                }
            }
        }
        let ys = layer_forward(c, &scaled, x.as_ref(), SEQ, false).0;
        let e = rel(&y, &ys);
        assert!(e < 1e-10, "folded float layer differs: {e:e}");
    }

    /// A mixture of experts (Qwen2-MoE's: a shared expert behind a sigmoid gate), its experts
    /// stacked as in a GGUF: with every transform applied to the stored tensors by name (the
    /// stacked experts', the router's and the shared gate's columns, the MLP norm), clipping
    /// off, the layer computes what the float layer does — the routing included.
    #[test]
    fn folding_into_experts_keeps_the_float_layer() {
        const EXPERTS: usize = 4;
        let mut c = config(4);
        let names = qs_model::MoeNames {
            experts: "mlp.experts",
            gate: "gate_proj",
            up: "up_proj",
            down: "down_proj",
            router: "mlp.gate",
            shared: Some(("mlp.shared_expert", Some("mlp.shared_expert_gate"))),
            sigmoid: false,
            choice_bias: None,
            renorm_default: false,
            renorm_key: None,
        };
        c.moe = Some(qs_model::MoeConfig {
            names,
            experts: EXPERTS,
            used: 2,
            renormalize: false,
            scale: 1.0,
            groups: None,
        });
        let mut rng = Rng::new(21);
        let expert = |rng: &mut Rng| qs_model::Expert {
            gate: matrix(rng, INTER, HIDDEN),
            up: matrix(rng, INTER, HIDDEN),
            down: matrix(rng, HIDDEN, INTER),
            gate_bias: None,
            up_bias: None,
            down_bias: None,
        };
        let mut float = layer(&c, 5);
        float.moe = Some(qs_model::MoeLayer {
            router: matrix(&mut rng, EXPERTS, HIDDEN),
            router_bias: None,
            experts: (0..EXPERTS).map(|_| expert(&mut rng)).collect(),
            shared: Some((
                expert(&mut rng),
                Some((0..HIDDEN).map(|_| 0.1 * rng.normal() as f32).collect()),
            )),
            choice_bias: None,
        });
        let x = inputs(4 * SEQ, 4, true);
        let y = layer_forward(&c, &float, x.as_ref(), SEQ, false).0;
        // the experts stacked, the shared expert apart
        let scheme = int(4, false, Granularity::Group(32));
        let mut tg = targets(scheme);
        let mut shared = BTreeMap::new();
        for (lin, proj) in [
            (Linear::Gate, "gate_proj"),
            (Linear::Up, "up_proj"),
            (Linear::Down, "down_proj"),
        ] {
            let t = tg.get_mut(&(0, lin)).unwrap();
            t.name = format!("model.layers.0.mlp.experts.{proj}.weight");
            t.experts = Some(EXPERTS);
            shared.insert(
                (0, lin),
                Target {
                    name: format!("model.layers.0.mlp.shared_expert.{proj}.weight"),
                    experts: None,
                    ..t.clone()
                },
            );
        }
        let cfg = QuantizeConfig::new("x", crate::config::Target::Int(4));
        let mut l = float.clone();
        let targets = crate::calib::Targets {
            linears: tg,
            shared,
            ..Default::default()
        };
        let tf = run_on(&c, &cfg, &targets, &x, &mut l);
        let by: BTreeMap<&str, Transform> = tf
            .iter()
            .map(|(n, t)| {
                (
                    n.as_str(),
                    Transform {
                        clip: None,
                        ..t.clone()
                    },
                )
            })
            .collect();
        for n in [
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.gate.weight",
            "model.layers.0.mlp.shared_expert_gate.weight",
            "model.layers.0.mlp.experts.up_proj.weight",
            "model.layers.0.mlp.experts.down_proj.weight",
            "model.layers.0.mlp.shared_expert.down_proj.weight",
        ] {
            assert!(by.contains_key(n), "{n}: {:?}", by.keys());
        }
        let apply = |t: &Transform, w: &mut Mat<f32>| {
            let (rows, cols) = (w.nrows(), w.ncols());
            let mut v = rows_of(w);
            t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
            *w = to_mat(&v, rows, cols);
        };
        let mut scaled = float.clone();
        for (name, t) in &by {
            if let Some((_, lin)) = Linear::parse(name) {
                apply(t, lin.weight_mut(&mut scaled));
            }
        }
        let gains = |v: &mut Vec<f32>, n: &str| {
            let k = v.len();
            by[n].apply(&[0], k, v);
        };
        gains(
            scaled.input_norm.as_mut().unwrap(),
            "model.layers.0.input_layernorm.weight",
        );
        gains(
            scaled.post_norm.as_mut().unwrap(),
            "model.layers.0.post_attention_layernorm.weight",
        );
        if by.contains_key("model.layers.0.self_attn.v_proj.bias") {
            gains(
                scaled.v_bias.as_mut().unwrap(),
                "model.layers.0.self_attn.v_proj.bias",
            );
        }
        let m = scaled.moe.as_mut().unwrap();
        apply(&by["model.layers.0.mlp.gate.weight"], &mut m.router);
        let (se, sg) = m.shared.as_mut().unwrap();
        gains(
            sg.as_mut().unwrap(),
            "model.layers.0.mlp.shared_expert_gate.weight",
        );
        for (lin, proj) in [
            (Linear::Gate, "gate_proj"),
            (Linear::Up, "up_proj"),
            (Linear::Down, "down_proj"),
        ] {
            fn pick(e: &mut qs_model::Expert, lin: Linear) -> &mut Mat<f32> {
                match lin {
                    Linear::Gate => &mut e.gate,
                    Linear::Up => &mut e.up,
                    _ => &mut e.down,
                }
            }
            // the shared expert's own tensor
            let name = format!("model.layers.0.mlp.shared_expert.{proj}.weight");
            if let Some(t) = by.get(name.as_str()) {
                apply(t, pick(se, lin));
            }
            // the experts' stacked one: rows of each expert in turn
            let Some(t) = by.get(format!("model.layers.0.mlp.experts.{proj}.weight").as_str())
            else {
                continue;
            };
            let (rows, cols) = {
                let w = pick(&mut m.experts[0], lin);
                (w.nrows(), w.ncols())
            };
            let mut stacked = Mat::<f32>::zeros(EXPERTS * rows, cols);
            for (k, e) in m.experts.iter_mut().enumerate() {
                stacked
                    .as_mut()
                    .subrows_mut(k * rows, rows)
                    .copy_from(&*pick(e, lin));
            }
            apply(t, &mut stacked);
            for (k, e) in m.experts.iter_mut().enumerate() {
                *pick(e, lin) = stacked.as_ref().subrows(k * rows, rows).to_owned();
            }
        }
        let ys = layer_forward(&c, &scaled, x.as_ref(), SEQ, false).0;
        let e = rel(&y, &ys);
        assert!(e < 1e-10, "folded float layer differs: {e:e}");
        // and the search changed something: the experts are scaled
        assert!(by["model.layers.0.mlp.experts.gate_proj.weight"]
            .col_mul
            .is_some());
    }

    /// Latent attention (DeepSeek-V3) as a GGUF stores it (kv_b_proj split per head into
    /// k_b, v_b): with every transform applied to the stored tensors by name (k_b's rows,
    /// v_b's columns, the bottleneck norms, q_a/q_b/kv_a), clipping off, the layer computes
    /// what the float layer does.
    #[test]
    fn folding_into_latent_attention_keeps_the_float_layer() {
        use crate::calib::mla::MlaPart;
        let (heads, nope, rope, vh, kv, ql) = (4, 32, 16, 32, 64, 64);
        let mut c = config(4);
        c.mla = Some(qs_model::hparams::MlaParams {
            q_lora: Some(ql as u64),
            kv_lora: kv as u64,
            qk_nope: nope as u64,
            qk_rope: rope as u64,
            v_head: vh as u64,
        });
        let mut rng = Rng::new(33);
        let gains = |n: usize, rng: &mut Rng| -> Vec<f32> {
            (0..n).map(|_| 1.0 + 0.2 * rng.normal() as f32).collect()
        };
        let mut float = layer(&c, 7);
        let q_a = (matrix(&mut rng, ql, HIDDEN), gains(ql, &mut rng));
        float.mla = Some(qs_model::MlaLayer {
            q_a: Some(q_a),
            q: matrix(&mut rng, heads * (nope + rope), ql),
            kv_a: matrix(&mut rng, kv + rope, HIDDEN),
            kv_a_norm: gains(kv, &mut rng),
            k_b: (0..heads).map(|_| matrix(&mut rng, kv, nope)).collect(),
            v_b: (0..heads).map(|_| matrix(&mut rng, vh, kv)).collect(),
        });
        float.q = Mat::zeros(0, HIDDEN);
        float.k = Mat::zeros(0, HIDDEN);
        float.v = Mat::zeros(0, HIDDEN);
        float.v_bias = None;
        float.o = matrix(&mut rng, HIDDEN, heads * vh);
        let x = inputs(4 * SEQ, 4, true);
        let y = layer_forward(&c, &float, x.as_ref(), SEQ, false).0;
        let scheme = int(4, false, Granularity::Group(32));
        let mut tg = targets(scheme);
        for lin in [Linear::Q, Linear::K, Linear::V] {
            tg.remove(&(0, lin));
        }
        let name = |m: &str| format!("model.layers.0.self_attn.{m}.weight");
        let shapes = [
            (MlaPart::QA, "q_a_proj", [ql, HIDDEN]),
            (MlaPart::Q, "q_b_proj", [heads * (nope + rope), ql]),
            (MlaPart::KvA, "kv_a_proj_with_mqa", [kv + rope, HIDDEN]),
            (MlaPart::KB, "k_b_proj", [heads * kv, nope]),
            (MlaPart::VB, "v_b_proj", [heads * vh, kv]),
        ];
        let mla: BTreeMap<(usize, MlaPart), Target> = shapes
            .iter()
            .map(|&(part, m, shape)| {
                (
                    (0, part),
                    Target {
                        name: name(m),
                        scheme,
                        grid: scheme.code_grid(&shape),
                        imatrix: None,
                        fused: None,
                        experts: None,
                        per_expert: None,
                    },
                )
            })
            .collect();
        let cfg = QuantizeConfig::new("x", crate::config::Target::Int(4));
        let mut l = float.clone();
        let targets = crate::calib::Targets {
            linears: tg,
            mla,
            ..Default::default()
        };
        let tf = run_on(&c, &cfg, &targets, &x, &mut l);
        let by: BTreeMap<String, Transform> = tf
            .into_iter()
            .map(|(n, t)| (n, Transform { clip: None, ..t }))
            .collect();
        for m in ["kv_a_layernorm", "v_b_proj", "k_b_proj", "q_a_proj"] {
            assert!(by.contains_key(&name(m)), "{m}: {:?}", by.keys());
        }
        let apply = |n: &str, w: &mut Mat<f32>| {
            if let Some(t) = by.get(n) {
                let (rows, cols) = (w.nrows(), w.ncols());
                let mut v = rows_of(w);
                t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut v);
                *w = to_mat(&v, rows, cols);
            }
        };
        // a stacked 3-D tensor: its heads' rows one after another
        let apply_heads = |n: &str, ws: &mut [Mat<f32>]| {
            let (rows, cols) = (ws[0].nrows(), ws[0].ncols());
            let mut all = Mat::<f32>::zeros(ws.len() * rows, cols);
            for (i, w) in ws.iter().enumerate() {
                all.as_mut().subrows_mut(i * rows, rows).copy_from(w);
            }
            apply(n, &mut all);
            for (i, w) in ws.iter_mut().enumerate() {
                *w = all.as_ref().subrows(i * rows, rows).to_owned();
            }
        };
        let gain = |n: &str, v: &mut Vec<f32>| {
            if let Some(t) = by.get(n) {
                let k = v.len();
                t.apply(&[0], k, v);
            }
        };
        let mut scaled = float.clone();
        gain(
            "model.layers.0.input_layernorm.weight",
            scaled.input_norm.as_mut().unwrap(),
        );
        apply(&name("o_proj"), &mut scaled.o);
        let m = scaled.mla.as_mut().unwrap();
        let (a, g) = m.q_a.as_mut().unwrap();
        apply(&name("q_a_proj"), a);
        gain(&name("q_a_layernorm"), g);
        apply(&name("q_b_proj"), &mut m.q);
        apply(&name("kv_a_proj_with_mqa"), &mut m.kv_a);
        gain(&name("kv_a_layernorm"), &mut m.kv_a_norm);
        apply_heads(&name("k_b_proj"), &mut m.k_b);
        apply_heads(&name("v_b_proj"), &mut m.v_b);
        let ys = layer_forward(&c, &scaled, x.as_ref(), SEQ, false).0;
        let e = rel(&y, &ys);
        assert!(e < 1e-10, "folded float layer differs: {e:e}");
    }

    #[test]
    fn flat_activations_keep_unit_scales_with_plain_scaling() {
        let c = config(4);
        // every channel the same magnitude: x_mean is flat, so every plain candidate is s = 1
        let x = Mat::from_fn(
            2 * SEQ,
            HIDDEN,
            |r, c| if (r + c) % 2 == 0 { 1.0 } else { -1.0 },
        );
        let tg = targets(int(4, false, Granularity::Group(32)));
        let mut cfg = QuantizeConfig::new("x", crate::config::Target::Int(4));
        cfg.awq_scaling = awq::Scaling::Plain;
        let mut l = layer(&c, 6);
        // the attention group reads the normed input: flat with a unit norm weight
        l.input_norm = Some(vec![1.0; HIDDEN]);
        let tf = run(&c, &cfg, &tg, &x, &mut l);
        let q = Linear::Q.weight_name(0);
        assert!(
            tf.iter().all(|(n, t)| n != &q || t.col_mul.is_none()),
            "scales chosen on flat activations"
        );
        // with loud channels the same search does scale
        let loud = inputs(2 * SEQ, 7, true);
        let mut l = layer(&c, 6);
        l.input_norm = Some(vec![1.0; HIDDEN]);
        let tf = run(&c, &cfg, &tg, &loud, &mut l);
        assert!(tf.iter().any(|(n, t)| n == &q && t.col_mul.is_some()));
    }
}
