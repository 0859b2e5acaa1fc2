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
//! transformed weights and inputs (`awq+gptq`).

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

/// Every tensor of layer `l` AWQ may rewrite: the folded ones and all seven linears (a linear
/// kept in float still carries its group's scales).
fn rewritten(l: usize, norms: &Norms) -> Vec<String> {
    let mut v = folded_tensors(l, norms).to_vec();
    v.extend(Linear::ALL.iter().map(|lin| lin.weight_name(l)));
    v
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
    let targeted = |lin: Linear| ctx.targets.get(&(l, lin));
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
        let cols = x.ncols();
        let x_mean = awq::act_mean(x.nrows(), cols, |r, c| x[(r, c)]);
        let ws: Vec<Vec<f32>> = g
            .linears
            .iter()
            .map(|&lin| rows_of(lin.weight(ctx.layer)))
            .collect();
        let wgroup = g
            .linears
            .iter()
            .find_map(|&lin| targeted(lin))
            .and_then(|t| clip_group(t, cols))
            .unwrap_or(cols);
        let refs: Vec<&[f32]> = ws.iter().map(|w| w.as_slice()).collect();
        let w_mean = awq::weight_mean(&refs, cols, wgroup);
        let y0 = block_out(ctx, g.block, x);
        let mut cands = vec![awq::Candidate {
            ratio: 0.0,
            duo: false,
            scales: vec![1.0; cols],
        }];
        cands.extend(awq::candidates(&x_mean, &w_mean, ctx.cfg.awq_scaling));
        let mut best: Option<(f64, usize)> = None;
        for (ci, cand) in cands.iter().enumerate() {
            // the group's linears as the candidate would store them, back in input scale
            for (&lin, w) in g.linears.iter().zip(&ws) {
                let rows = w.len() / cols;
                let mut sw = w.clone();
                let t = Transform {
                    col_mul: Some(cand.scales.clone().into()),
                    ..Default::default()
                };
                t.apply(&(0..rows).collect::<Vec<_>>(), cols, &mut sw);
                let mut q = match targeted(lin) {
                    Some(tg) => fake_quant(tg, &t, &sw, rows, cols),
                    None => sw,
                };
                for row in q.chunks_exact_mut(cols) {
                    for (v, s) in row.iter_mut().zip(&cand.scales) {
                        *v /= s;
                    }
                }
                *lin.weight_mut(ctx.layer) = to_mat(&q, rows, cols);
            }
            let loss = mse(&y0, &block_out(ctx, g.block, x));
            if best.is_none_or(|(b, _)| loss < b) {
                best = Some((loss, ci));
            }
        }
        // restore the float weights
        for (&lin, w) in g.linears.iter().zip(&ws) {
            *lin.weight_mut(ctx.layer) = to_mat(w, w.len() / cols, cols);
        }
        let (_, ci) = best.expect("at least the identity");
        if ci > 0 {
            scales[gi] = Some(cands.swap_remove(ci).scales.into());
        }
    }

    // 2. the transforms that fold the scales
    let mut tf: BTreeMap<String, Transform> = BTreeMap::new();
    let [s_attn, s_o, s_mlp, s_down] = scales;
    let [in_norm, post_norm, v_bias] = folded_tensors(l, &mc.norms);
    // (norm gains stored as w and applied as w + offset: Gemma's 1 + w)
    let norm_div = |s: &Arc<[f32]>| Transform {
        col_div: Some(s.clone()),
        offset: mc.norm_offset,
        ..Default::default()
    };
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
            let all_rows: Vec<usize> = (0..rows).collect();
            t.apply(&all_rows, cols, &mut sw);
            let x = inputs[gi];
            let s = input_scale(lin);
            // one block per group, in parallel, once per input (gate and up share theirs)
            let blocks = block_cache.entry((gi, group)).or_insert_with(|| {
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
                    .collect::<Vec<Vec<f32>>>()
            });
            let blocks = &*blocks;
            let ng = awq::groups(cols, group);
            let mut best_err = vec![f32::INFINITY; rows * ng];
            let mut steps = vec![0u8; rows * ng];
            for i in 0..awq::CLIP_STEPS as u8 {
                let mut cw = sw.clone();
                let st = vec![i; ng];
                for row in cw.chunks_exact_mut(cols) {
                    awq::clip_row(row, group, &st);
                }
                let q = fake_quant(tg, &t, &cw, rows, cols);
                let d: Vec<f32> = q.iter().zip(&sw).map(|(a, b)| a - b).collect();
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
            if steps.iter().any(|&s| s != 0) {
                tf.entry(name).or_default().clip = Some(Clip {
                    group,
                    steps: steps.into(),
                });
            }
        }
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
    Ok(tf.into_iter().filter(|(_, t)| !t.is_identity()).collect())
}

/// The output of the block a group's loss is on, for that group's input `x`.
fn block_out(ctx: &LayerCtx<'_>, block: Block, x: MatRef<'_, f32>) -> Mat<f32> {
    match block {
        Block::Attention => attention_out(ctx.model, ctx.layer, x, ctx.seq_len),
        Block::O => linear(x, &ctx.layer.o, ctx.layer.o_bias.as_deref()),
        Block::Mlp => mlp_out(ctx.model, ctx.layer, x),
        Block::Down => linear(x, &ctx.layer.down, None),
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
        search_layer(
            &mut LayerCtx {
                model: c,
                index: 0,
                layer: l,
                x: x.as_ref(),
                seq_len: SEQ,
                targets: tg,
                cfg,
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
