//! Learned rounding (`--method signround`, Intel AutoRound's SignRound) as a calibration
//! method: per decoder layer, the rounding offsets and clipping factors of every linear it
//! quantizes ([`qs_numeric::signround`]) are tuned together by signed gradient steps on the
//! layer's output error, through the layer's own backward pass ([`qs_model::grad`]).
//!
//! As the reference: the target is the float layer's output; the layer's inputs are the
//! calibration inputs of this run (by default the outputs of the layers before it as already
//! quantized); each step takes `--batch` sequences at random (seeded by `--seed` and the layer),
//! the loss is their output's mean squared error, the learning rate (`--lr`, default
//! 1/`--iters`) decays linearly to 0 over `--iters` steps (default 200), offsets stay in
//! [−0.5, 0.5] and factors in [0, 1], and the state with the lowest loss is kept, not the last.
//! Unlike the reference, which compares each step's loss on that step's own sequences, the
//! state is checked on one fixed draw of sequences (`--batch` of them, or [`CHECK_TOKENS`]
//! tokens when that is more; every [`CHECK_EVERY`] steps and after the last), so a state is
//! kept for being better, not for meeting easier sequences. The target (`--tune-target`): by
//! default (`model`, the reference's) the float model's own outputs of the layer (the
//! calibration loop then carries the float model's activations beside the run's and hands them
//! over, [`super::LayerCtx::float_out`]);
//! `layer`, the float layer on the same inputs the quantized layer sees (as GPTQ measures its
//! error; no second stream of activations).
//!
//! Start (`--init`): by default each group's scale and minimum from the importance-weighted
//! search ([`qs_numeric::search`], AutoRound's `iters=0` mode; the importance of a column is its
//! input's mean square over this layer's calibration tokens); `rtn`, the layout's plain round to
//! nearest (as AutoRound's tuned mode starts); `gptq`, GPTQ's codes; `search+gptq`, GPTQ's
//! codes on the search's grid (each group's scale and minimum from the search, fixed; GPTQ's
//! error feedback chooses the codes). With `--iters 0` the start
//! is what is written (no tuning, no target). One float pass over the calibration tokens gives
//! both the importance and the tuning's target (the latter from the loop with `--tune-target
//! model`).
//!
//! Grids: compressed-tensors integer grids (and the AutoGPTQ / AutoAWQ layouts, which take the
//! same codes), offsets and clipping tuned; every ggml type with a code grid (the legacy types,
//! all K-quants and the IQ4 types: as GPTQ), each block's scales and minimums from the start,
//! fixed, offsets tuned, and every [`REFIT_EVERY`] steps each block's scales and minimums
//! searched again for the current offsets (as AutoRound re-runs its scale/min search on the
//! offset weights; the scales take no gradient). On IQ4's non-linear grid an offset rounds
//! between the two levels around a weight in that segment's own units
//! ([`qs_numeric::ggml::iq4::Levels::code`]). Dense Llama-family layers.

use super::{rows_of, to_mat, CodeSet, InputStats, LayerCtx, LinearJob, Method};
use crate::config::{QuantizeConfig, SignRoundInit, SignRoundTarget};
use crate::error::{Error, Result};
use faer::Mat;
use qs_model::{grad, layer_forward, Input, Linear};
use qs_numeric::awq::Transform;
use qs_numeric::gptq::Hessian;
use qs_numeric::layout::CodeGrid;
use qs_numeric::signround::IntRounding;
use qs_numeric::Scheme;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The most steps `--iters` accepts.
pub const MAX_ITERS: usize = 100_000;

/// Steps between checks of the tuned state on the check batch (a fixed draw of `--batch`
/// sequences, or of [`CHECK_TOKENS`] tokens when that is more): the state kept is the one with
/// the lowest loss there. The steps' own losses are on different sequences each, so comparing
/// them would pick an easy batch, not a better state.
pub const CHECK_EVERY: usize = 5;

/// The fewest tokens the check batch holds (all the calibration sequences when they are fewer):
/// a few sequences alone would choose the state that suits them.
pub const CHECK_TOKENS: usize = 4096;

/// Sequences of `seq` tokens in the check batch: `batch`, or enough for [`CHECK_TOKENS`].
fn check_seqs(batch: usize, seq: usize) -> usize {
    batch.max(CHECK_TOKENS.div_ceil(seq.max(1)))
}

/// Mixed into a layer's seed for its check batch.
const CHECK_SEED: u64 = 0xc4ec_6b0f_5eed_0001;

/// Steps between refits of a ggml type's scales and minimums to the current rounding offsets
/// (AutoRound's 10).
pub const REFIT_EVERY: usize = 10;

/// The method, with the codes each layer's tuning chose until the run asks for them
/// ([`Method::quantize`]), by run (the address of its configuration: the jobs of a batch that
/// share one calibration pass each have their own) and tensor name.
#[derive(Debug)]
pub struct SignRound {
    chosen: Mutex<BTreeMap<(usize, String), CodeSet>>,
}

fn run_key(cfg: &QuantizeConfig) -> usize {
    cfg as *const QuantizeConfig as usize
}

pub static SIGNROUND: SignRound = SignRound {
    chosen: Mutex::new(BTreeMap::new()),
};

/// The options of one run.
pub struct Opts {
    pub iters: usize,
    pub lr: f32,
    pub batch: usize,
}

fn opts(cfg: &QuantizeConfig) -> Opts {
    let iters = cfg.signround_iters;
    Opts {
        iters,
        lr: cfg.signround_lr.unwrap_or(1.0 / iters.max(1) as f64) as f32,
        batch: cfg.signround_batch,
    }
}

/// `k` distinct indices of `0..n` (all of them when `k >= n`), by a seeded partial shuffle.
fn pick(n: usize, k: usize, rng: &mut qs_numeric::synth::Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k);
    all.sort_unstable();
    all
}

/// The rows of whole sequences `seqs` (each `seq_len` rows) of `m`, in order.
fn gather(m: faer::MatRef<'_, f32>, seqs: &[usize], seq_len: usize) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(seqs.len() * seq_len, m.ncols());
    for (k, &s) in seqs.iter().enumerate() {
        out.as_mut()
            .subrows_mut(k * seq_len, seq_len)
            .copy_from(m.subrows(s * seq_len, seq_len));
    }
    out
}

/// One linear being tuned: which, the weights its parameters round (row-major: the float
/// weights, or GPTQ's before rounding) and its parameters; `float`, the float weights when `w`
/// is not them; `importance`, its input columns' importance (the refits on ggml grids weigh by
/// it; plain least squares without).
pub struct Tuned {
    pub lin: Linear,
    pub w: Vec<f32>,
    pub r: IntRounding,
    pub float: Option<Vec<f32>>,
    pub importance: Option<Vec<f32>>,
}

impl Tuned {
    pub fn new(lin: Linear, w: Vec<f32>, r: IntRounding) -> Tuned {
        Tuned {
            lin,
            w,
            r,
            float: None,
            importance: None,
        }
    }
}

/// One linear's codes on its grids (per group: scale and zero point, value added after scaling).
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub codes: Vec<i8>,
    pub params: Vec<qs_numeric::rtn::QParams>,
    pub offsets: Vec<f32>,
}

impl Chosen {
    /// The codes `r` gives the weights `w` it rounds.
    pub fn of(r: &IntRounding, w: &[f32]) -> Chosen {
        let (codes, params) = r.codes(w);
        Chosen {
            codes,
            params,
            offsets: r.offsets(),
        }
    }

    /// The weights the codes stand for (row-major), in groups of `group`.
    pub fn values(&self, group: usize) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let p = self.params[k / group];
                (c as i32 - p.zero) as f32 * p.scale + self.offsets[k / group]
            })
            .collect()
    }
}

/// What [`tune`] found: the codes of the checked state with the lowest loss on the check batch
/// (kept as codes, a byte per weight, not as a second copy of the parameters), that loss, and
/// the start's loss there.
pub struct Outcome {
    pub best: Vec<Chosen>,
    pub best_loss: f64,
    pub first_loss: f64,
}

/// `loss`, or the error naming step `it` when it is not finite.
fn finite(loss: f64, it: usize) -> std::result::Result<f64, String> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(format!(
            "the tuning loss became {loss} at step {it} (non-finite activations)"
        ))
    }
}

/// The mean squared error of `y` against `t` and its gradient with respect to `y`.
fn mse_and_grad(y: &Mat<f32>, t: &Mat<f32>) -> (f64, Mat<f32>) {
    let n = (y.nrows() * y.ncols()).max(1) as f64;
    let mut dy = Mat::<f32>::zeros(y.nrows(), y.ncols());
    let mut loss = 0f64;
    for j in 0..y.ncols() {
        for i in 0..y.nrows() {
            let d = y[(i, j)] as f64 - t[(i, j)] as f64;
            loss += d * d;
            dy[(i, j)] = (2.0 * d / n) as f32;
        }
    }
    (loss / n, dy)
}

/// Tunes the parameters of `parts` (linears of `layer`) on inputs `x` (whole sequences of
/// `seq` tokens) so that the layer with their fake-quantized weights gives `target` (the float
/// layer's outputs on `x`, from [`float_pass`]): `o.iters` signed steps, each on `o.batch`
/// sequences drawn by `seed`, the state kept the lowest in loss on the check batch (also drawn
/// by `seed`, [`CHECK_EVERY`]). Deterministic; `Err` names a non-finite loss. The steps run on
/// `layer` itself with their fake-quantized weights in a [`grad::Weights`]; the layer's copies
/// of the tuned linears are dropped meanwhile (no second copy of the block) and it ends as it
/// started, float weights restored from `parts`.
#[allow(clippy::too_many_arguments)]
pub fn tune(
    c: &qs_model::Config,
    layer: &mut qs_model::Layer,
    x: faer::MatRef<'_, f32>,
    seq: usize,
    target: faer::MatRef<'_, f32>,
    parts: &mut [Tuned],
    o: &Opts,
    seed: u64,
) -> std::result::Result<Outcome, String> {
    let nseq = x.nrows() / seq.max(1);
    if nseq == 0 {
        return Err(format!("no whole calibration sequence of {seq} tokens"));
    }
    if target.nrows() < nseq * seq || target.ncols() != x.ncols() {
        return Err(format!(
            "a target of {} × {} for {} × {} inputs",
            target.nrows(),
            target.ncols(),
            nseq * seq,
            x.ncols()
        ));
    }
    let x = x.subrows(0, nseq * seq);
    let out = steps(
        c,
        layer,
        x,
        seq,
        target.subrows(0, nseq * seq),
        parts,
        o,
        seed,
    );
    for t in parts.iter() {
        *t.lin.weight_mut(layer) = to_mat(t.float.as_ref().unwrap_or(&t.w), t.r.rows, t.r.cols);
    }
    out
}

/// [`tune`]'s steps on `work`, against `target` (the float layer's outputs on `x`).
#[allow(clippy::too_many_arguments)]
fn steps(
    c: &qs_model::Config,
    work: &mut qs_model::Layer,
    x: faer::MatRef<'_, f32>,
    seq: usize,
    target: faer::MatRef<'_, f32>,
    parts: &mut [Tuned],
    o: &Opts,
    seed: u64,
) -> std::result::Result<Outcome, String> {
    let nseq = x.nrows() / seq;
    let mut rng = qs_numeric::synth::Rng::new(seed);
    // the check batch: fixed for the whole tuning, drawn apart from the steps' batches
    let check = pick(
        nseq,
        check_seqs(o.batch, seq),
        &mut qs_numeric::synth::Rng::new(seed ^ CHECK_SEED),
    );
    let (xc, tc) = (gather(x, &check, seq), gather(target, &check, seq));
    let mut best = Outcome {
        best: parts.iter().map(|t| Chosen::of(&t.r, &t.w)).collect(),
        best_loss: f64::INFINITY,
        first_loss: f64::NAN,
    };
    // the steps' weights, row-major as the rounding writes them; the layer's own copies of the
    // tuned linears are not read meanwhile (`tune` puts their float weights back)
    let mut lw = grad::Weights::of(work);
    for t in parts.iter() {
        *t.lin.weight_mut(work) = Mat::zeros(0, 0);
    }
    // the current state's loss on the check batch; kept when it is the lowest so far
    let mut checked = |work: &qs_model::Layer,
                       lw: &grad::Weights,
                       parts: &[Tuned],
                       it: usize|
     -> std::result::Result<(), String> {
        let (y, tape) = grad::forward(c, work, lw, xc.as_ref(), seq);
        drop(tape);
        let loss = finite(mse_and_grad(&y, &tc).0, it)?;
        if it == 0 {
            best.first_loss = loss;
        }
        if loss < best.best_loss {
            best.best_loss = loss;
            for (b, t) in best.best.iter_mut().zip(parts) {
                *b = Chosen::of(&t.r, &t.w);
            }
        }
        Ok(())
    };
    for it in 0..o.iters {
        if it > 0 && it % REFIT_EVERY == 0 {
            for t in parts.iter_mut().filter(|t| t.r.is_ggml()) {
                t.r.refit(&t.w, t.importance.as_deref())?;
            }
        }
        for t in parts.iter() {
            t.r.qdq(&t.w, lw.rows_mut(t.lin));
        }
        if it % CHECK_EVERY == 0 {
            checked(work, &lw, parts, it)?;
        }
        let seqs = pick(nseq, o.batch, &mut rng);
        let xb = gather(x, &seqs, seq);
        let tb = gather(target, &seqs, seq);
        let (y, tape) = grad::forward(c, work, &lw, xb.as_ref(), seq);
        let (loss, dy) = mse_and_grad(&y, &tb);
        drop((xb, tb, y));
        finite(loss, it)?;
        let lr = o.lr * (1.0 - it as f32 / o.iters as f32);
        // each weight's gradient is used for its step as soon as the backward pass has it, and
        // dropped (the forward used `work`, which the steps do not touch)
        grad::backward_each(c, work, &lw, tape, dy.as_ref(), |lin, g| {
            if let Some(t) = parts.iter_mut().find(|t| t.lin == lin) {
                let pg = t.r.grads(&t.w, g);
                t.r.step(&pg, lr, lr);
            }
        });
    }
    // the state after the last step
    for t in parts.iter() {
        t.r.qdq(&t.w, lw.rows_mut(t.lin));
    }
    checked(work, &lw, parts, o.iters)?;
    Ok(best)
}

/// The inputs (attention, its output projection, MLP, its down projection) `parts` read.
fn inputs_of(parts: &[Tuned]) -> Vec<Input> {
    Input::ALL
        .into_iter()
        .filter(|i| parts.iter().any(|t| t.lin.input() == *i))
        .collect()
}

/// Runs the float layer on `x` (whole sequences of `seq` tokens, in batches of about 4096
/// tokens, so one batch's intermediate values exist at a time) and hands `f` each batch's first
/// row, its outputs and, when `capture`, its captured inputs.
fn each_batch(
    c: &qs_model::Config,
    layer: &qs_model::Layer,
    x: faer::MatRef<'_, f32>,
    seq: usize,
    capture: bool,
    mut f: impl FnMut(usize, &Mat<f32>, Option<&qs_model::Captured>),
) {
    let batch = (4096 / seq).max(1) * seq;
    let rows = x.nrows() / seq * seq;
    for r0 in (0..rows).step_by(batch) {
        let n = batch.min(rows - r0);
        let (y, cap) = layer_forward(c, layer, x.subrows(r0, n), seq, capture);
        f(r0, &y, cap.as_ref());
    }
}

/// What one float pass over the calibration tokens gives: the float layer's outputs (the
/// tuning's target), and per input, each column's mean square over the tokens (the importance
/// the search weighs errors by: AutoRound's and llama-imatrix's importance matrix).
struct FloatPass {
    target: Option<Mat<f32>>,
    importance: Vec<(Input, Vec<f32>)>,
}

/// One pass of the float layer over `x` (whole sequences of `seq` tokens): the target when
/// `target`, the importance of the inputs `wanted`.
fn float_pass(
    c: &qs_model::Config,
    layer: &qs_model::Layer,
    x: faer::MatRef<'_, f32>,
    seq: usize,
    wanted: &[Input],
    target: bool,
) -> FloatPass {
    let rows = x.nrows() / seq.max(1) * seq;
    if wanted.is_empty() && !target {
        return FloatPass {
            target: None,
            importance: Vec::new(),
        };
    }
    let mut out = target.then(|| Mat::<f32>::zeros(rows, x.ncols()));
    let mut sums: Vec<(Input, Vec<f64>)> = Vec::new();
    each_batch(c, layer, x, seq, !wanted.is_empty(), |r0, y, cap| {
        if let Some(t) = &mut out {
            t.as_mut().subrows_mut(r0, y.nrows()).copy_from(y);
        }
        let Some(cap) = cap else { return };
        for &i in wanted {
            let xin = i.of(cap);
            let at = match sums.iter().position(|(k, _)| *k == i) {
                Some(at) => at,
                None => {
                    sums.push((i, vec![0f64; xin.ncols()]));
                    sums.len() - 1
                }
            };
            for (j, sj) in sums[at].1.iter_mut().enumerate() {
                *sj += xin
                    .col(j)
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>();
            }
        }
    });
    FloatPass {
        target: out,
        importance: sums
            .into_iter()
            .map(|(i, s)| {
                (
                    i,
                    s.iter().map(|&v| (v / rows.max(1) as f64) as f32).collect(),
                )
            })
            .collect(),
    }
}

/// Replaces each part's starting point by GPTQ's codes for it (its weights become the values
/// GPTQ rounded, after its error feedback, and its grids GPTQ's): each linear by [`Gptq`] on the Hessian of its
/// input in the float layer on `x`, groups in column order.
#[allow(clippy::too_many_arguments)]
fn start_from_gptq(
    c: &qs_model::Config,
    layer: &qs_model::Layer,
    x: faer::MatRef<'_, f32>,
    seq: usize,
    parts: &mut [Tuned],
    names: &[String],
    grids: &[CodeGrid],
    cfg: &QuantizeConfig,
    on_start: bool,
) -> Result<()> {
    let mut cfg = cfg.clone();
    // column-ordered groups: the tuned grids are contiguous groups
    cfg.act_order = false;
    cfg.act_order_group = false;
    let mut hess: Vec<(Input, Hessian)> = Vec::new();
    let wanted = inputs_of(parts);
    each_batch(c, layer, x, seq, true, |_, _, cap| {
        let Some(cap) = cap else { return };
        for &i in &wanted {
            let xin = i.of(cap);
            match hess.iter_mut().find(|(k, _)| *k == i) {
                Some((_, h)) => h.add_mat(xin),
                None => {
                    let mut h = Hessian::new(xin.ncols());
                    h.add_mat(xin);
                    hess.push((i, h));
                }
            }
        }
    });
    // the input each linear reads, to drop a Hessian after the last linear that reads it
    // (a 7B-shaped down_proj's alone is 0.97 GB of f64)
    let inputs: Vec<Input> = parts.iter().map(|t| t.lin.input()).collect();
    for (i, ((t, name), grid)) in parts.iter_mut().zip(names).zip(grids).enumerate() {
        // the Hessians of inputs no linear from here on reads
        hess.retain(|(k, _)| inputs[i..].contains(k));
        let Some((_, h)) = hess.iter().find(|(k, _)| *k == t.lin.input()) else {
            continue;
        };
        let (rows, cols) = (t.r.rows, t.r.cols);
        let start = on_start.then(|| (t.r.codes(&t.w).1, t.r.offsets()));
        let out = super::gptq::run_on(
            &LinearJob {
                name,
                file: std::path::Path::new(name),
                w: &t.w,
                rows,
                cols,
                grid: *grid,
                stats: InputStats { hessian: Some(h) },
                cfg: &cfg,
            },
            start.as_ref().map(|(p, o)| (&p[..], &o[..])),
        )?;
        let group = match *grid {
            CodeGrid::Int { group, .. } => group.unwrap_or(cols).max(1),
            CodeGrid::Ggml(ty) => ty.grid().map_or(cols, |g| g.group()),
        };
        if out
            .g_idx
            .iter()
            .enumerate()
            .any(|(j, &k)| k as usize != j / group)
        {
            return Err(Error::Config(format!(
                "{name}: GPTQ's groups are not in column order"
            )));
        }
        // GPTQ's codes are its pre-rounding weights rounded on its grids: the start
        t.r = match *grid {
            CodeGrid::Int {
                spec, scale_dtype, ..
            } => IntRounding::on_grid(spec, Some(group), scale_dtype, &out.params, rows, cols),
            CodeGrid::Ggml(ty) => {
                IntRounding::on_ggml_grid(ty, &out.params, &out.offsets, rows, cols)
                    .map_err(|m| Error::Config(format!("{name}: {m}")))?
            }
        };
        t.float = Some(std::mem::replace(&mut t.w, out.pre_rounding));
    }
    Ok(())
}

/// The rounding a linear's tuning starts from on `grid` (`w`: `rows × cols`, row-major): the
/// layout's round to nearest, or with `importance` (per input column) each group's scale and
/// minimum from the importance-weighted search (the zero-step mode; ggml's own fit without).
/// `Err` says why the weights do not fit the grid.
pub(crate) fn start_rounding(
    grid: CodeGrid,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> std::result::Result<IntRounding, String> {
    match grid {
        CodeGrid::Int {
            spec,
            group,
            scale_dtype,
            ..
        } => {
            if group.is_some_and(|g| g == 0 || !cols.is_multiple_of(g)) {
                return Err(format!("{cols} columns are not whole groups of {group:?}"));
            }
            Ok(match importance {
                Some(q) => {
                    let g = group.unwrap_or(cols);
                    let ps = qs_numeric::search::int_params(spec, g, scale_dtype, w, cols, q);
                    IntRounding::on_grid(spec, Some(g), scale_dtype, &ps, rows, cols)
                }
                None => IntRounding::new(spec, group, scale_dtype, w, rows, cols),
            })
        }
        CodeGrid::Ggml(ty) => IntRounding::on_ggml_fit(ty, w, rows, cols, importance),
    }
}

impl Method for SignRound {
    fn name(&self) -> &'static str {
        "signround"
    }

    fn check_options(&self, cfg: &QuantizeConfig) -> Result<()> {
        if cfg.signround_iters > MAX_ITERS {
            return Err(Error::Config(format!(
                "--iters {}: at most {MAX_ITERS} steps",
                cfg.signround_iters
            )));
        }
        if let Some(lr) = cfg.signround_lr {
            if !(lr > 0.0 && lr <= 1.0) {
                return Err(Error::Config(format!(
                    "--lr {lr}: the learning rate must be in (0, 1] (offsets move within ±0.5, factors within [0, 1])"
                )));
            }
        }
        if cfg.signround_batch == 0 || cfg.signround_batch > 4096 {
            return Err(Error::Config(format!(
                "--batch {}: between 1 and 4096 calibration sequences per step",
                cfg.signround_batch
            )));
        }
        Ok(())
    }

    fn supports(
        &self,
        scheme: &Scheme,
        grid: Option<&CodeGrid>,
    ) -> std::result::Result<(), String> {
        // the grids GPTQ chooses codes on
        super::gptq::Gptq.supports(scheme, grid)
    }

    /// The codes come from the tuning (`--init gptq` takes its own Hessians there).
    fn reads_hessians(&self) -> bool {
        false
    }
    fn transforms_on_all_inputs(&self) -> bool {
        true
    }

    fn wants_float_model_outputs(&self, cfg: &QuantizeConfig) -> bool {
        cfg.signround_target == SignRoundTarget::Model && cfg.signround_iters > 0
    }

    fn transform_layer(&self, ctx: &mut LayerCtx<'_>) -> Result<Vec<(String, Transform)>> {
        let c = ctx.model;
        let l = ctx.index;
        let layer = &*ctx.layer;
        grad::supported(c, layer).map_err(|m| Error::Config(format!("layer {l}: {m}")))?;
        let seq = ctx.seq_len.max(1);
        let x = ctx.x;
        if x.nrows() / seq == 0 {
            return Err(Error::Config(format!(
                "layer {l}: no whole calibration sequence of {seq} tokens to tune on"
            )));
        }
        let init = ctx.cfg.signround_init;
        let o = opts(ctx.cfg);
        // one float pass: the importance of each input's columns (for the search start and the
        // refits of ggml grids) and the tuning's target
        let refits = o.iters > REFIT_EVERY
            && Linear::ALL.iter().any(|&lin| {
                matches!(
                    ctx.targets.get(&(l, lin)).and_then(|t| t.grid),
                    Some(CodeGrid::Ggml(_))
                )
            });
        let wanted: &[Input] = if init.searches() || refits {
            &Input::ALL
        } else {
            &[]
        };
        // the target: the float model's outputs (`--tune-target model`, AutoRound's) when the
        // loop hands them over (with `--calib-inputs float` they are the float layer's on `x`)
        let model_out = ctx.float_out.filter(|_| o.iters > 0);
        let pass = float_pass(c, layer, x, seq, wanted, o.iters > 0 && model_out.is_none());
        let target = model_out.or(pass.target.as_ref().map(|t| t.as_ref()));
        let imp = &pass.importance;
        let imp_of = |lin: Linear| {
            imp.iter()
                .find(|(i, _)| *i == lin.input())
                .map(|v| &v.1[..])
        };
        let start_imp = |lin: Linear| imp_of(lin).filter(|_| init.searches());
        // the linears of this layer to tune, with their tensor names
        let mut names: Vec<String> = Vec::new();
        let mut parts: Vec<Tuned> = Vec::new();
        let mut grids = Vec::new();
        for lin in Linear::ALL {
            let Some(t) = ctx.targets.get(&(l, lin)) else {
                continue;
            };
            if t.fused.is_some() || t.experts.is_some() {
                return Err(Error::Config(format!(
                    "{}: signround tunes plain linears (not fused or expert tensors)",
                    t.name
                )));
            }
            let m = lin.weight(layer);
            let (rows, cols) = (m.nrows(), m.ncols());
            let w = rows_of(m);
            let grid = t
                .grid
                .ok_or_else(|| Error::Config(format!("{}: signround needs a code grid", t.name)))?;
            let r = start_rounding(grid, &w, rows, cols, start_imp(lin))
                .map_err(|m| Error::Config(format!("{}: {m}", t.name)))?;
            names.push(t.name.clone());
            grids.push(grid);
            parts.push(Tuned {
                importance: imp_of(lin).map(<[f32]>::to_vec),
                ..Tuned::new(lin, w, r)
            });
        }
        if parts.is_empty() {
            return Ok(vec![]);
        }
        if matches!(init, SignRoundInit::Gptq | SignRoundInit::SearchGptq) {
            let on_start = init == SignRoundInit::SearchGptq;
            start_from_gptq(
                c, layer, x, seq, &mut parts, &names, &grids, ctx.cfg, on_start,
            )?;
        }
        let seed = ctx.cfg.seed ^ (l as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let best = match target {
            Some(target) if o.iters > 0 => {
                tune(c, ctx.layer, x, seq, target, &mut parts, &o, seed)
                    .map_err(|m| Error::Config(format!("layer {l}: {m}")))?
                    .best
            }
            // the start alone (the zero-step search)
            _ => parts.iter().map(|t| Chosen::of(&t.r, &t.w)).collect(),
        };
        let mut chosen = self
            .chosen
            .lock()
            .map_err(|_| Error::Config("signround: a tuning thread panicked".into()))?;
        for ((t, name), b) in parts.iter().zip(names).zip(best) {
            let g_idx = (0..t.r.cols).map(|j| (j / t.r.group) as u32).collect();
            chosen.insert(
                (run_key(ctx.cfg), name),
                CodeSet {
                    codes: b.codes,
                    offsets: b.offsets,
                    params: b.params,
                    g_idx,
                },
            );
        }
        // the float weights stay (tune restored them): the codes are the method's output
        Ok(vec![])
    }

    fn quantize(&self, job: &LinearJob<'_>) -> Result<CodeSet> {
        let mut chosen = self
            .chosen
            .lock()
            .map_err(|_| Error::Config("signround: a tuning thread panicked".into()))?;
        let out = chosen
            .remove(&(run_key(job.cfg), job.name.to_string()))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: signround has no tuned codes for this tensor (its layer was not tuned)",
                    job.name
                ))
            })?;
        if out.codes.len() != job.rows * job.cols {
            return Err(Error::Config(format!(
                "{}: tuned codes for {} values, the tensor has {}",
                job.name,
                out.codes.len(),
                job.rows * job.cols
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use qs_model::grad::{random_layer, random_mat};
    use qs_model::{Config, Layer};
    use qs_numeric::dtype::DType;
    use qs_numeric::rtn::IntSpec;

    fn block_mse(c: &Config, a: &Layer, b: &Layer, x: faer::MatRef<'_, f32>, seq: usize) -> f64 {
        let (ya, _) = layer_forward(c, a, x, seq, false);
        let (yb, _) = layer_forward(c, b, x, seq, false);
        mse_and_grad(&yb, &ya).0
    }

    fn with_weights(layer: &Layer, ws: &[(Linear, Vec<f32>)]) -> Layer {
        let mut l = layer.clone();
        for (lin, w) in ws {
            let m = lin.weight_mut(&mut l);
            *m = to_mat(w, m.nrows(), m.ncols());
        }
        l
    }

    /// On a random GQA layer with biases, tuning from round to nearest lowers the layer's
    /// output error on held-out sequences by at least 30 % (measured: 44–75 %), int4 groups of
    /// 16 symmetric and asymmetric, int3 per channel, ggml's Q4_0, Q4_1 and IQ4_NL blocks;
    /// started from GPTQ (each linear on its float inputs' Hessian, as the calibration loop runs
    /// it) it starts at exactly GPTQ's codes and ends no worse. The codes it returns decode to
    /// the tuned weights, and the loss it reports is theirs on the check batch. (On these inputs
    /// — low-rank with loud channels — GPTQ's error feedback beats signed steps from round to
    /// nearest, 2.1e-2 against 3.3e-2 at int4; on SmolLM2 both starts beat GPTQ end to end:
    /// docs/QUALITY.md.)
    #[test]
    fn tuning_lowers_a_layers_held_out_error() {
        let c = Config::llama(64, 4, 2, 16, 1);
        let layer = random_layer(&c, 96, false, 5);
        let seq = 16;
        let mut rng = qs_numeric::synth::Rng::new(3);
        // activations as real ones are: correlated (a low-rank part) with a few loud channels
        let mix = random_mat(&mut rng, 8, c.hidden, 1.0);
        let loud: Vec<f32> = (0..c.hidden)
            .map(|j| if j % 13 == 5 { 8.0 } else { 1.0 })
            .collect();
        let mut acts = |n: usize| {
            let z = random_mat(&mut rng, n, 8, 1.0);
            let noise = random_mat(&mut rng, n, c.hidden, 0.3);
            let low = qs_model::linear(z.as_ref(), &mix.transpose().to_owned(), None);
            Mat::from_fn(n, c.hidden, |i, j| (low[(i, j)] + noise[(i, j)]) * loud[j])
        };
        let x = acts(32 * seq);
        let held = acts(8 * seq);
        let qcfg = crate::config::QuantizeConfig::new("x", crate::config::Target::Int(4));
        let e = |ws: &[(Linear, Vec<f32>)]| {
            block_mse(&c, &layer, &with_weights(&layer, ws), held.as_ref(), seq)
        };
        let o = Opts {
            iters: 150,
            lr: 1.0 / 150.0,
            batch: 8,
        };
        let int = |bits, symmetric, group| CodeGrid::Int {
            spec: IntSpec { bits, symmetric },
            group,
            scale_dtype: DType::F32,
            stores_g_idx: false,
        };
        for grid in [
            int(4, true, Some(16)),
            int(4, false, Some(16)),
            int(3, true, None),
            CodeGrid::Ggml(qs_numeric::GgmlType::Q4_0),
            CodeGrid::Ggml(qs_numeric::GgmlType::Q4_1),
            CodeGrid::Ggml(qs_numeric::GgmlType::IQ4_NL),
        ] {
            let fresh = || started(&layer, grid, |_| None);
            let names: Vec<String> = Linear::ALL.iter().map(|l| format!("{l:?}")).collect();
            let grids = vec![grid; names.len()];
            let decoded = |parts: &[Tuned], rs: &[IntRounding]| -> Vec<(Linear, Vec<f32>)> {
                parts
                    .iter()
                    .zip(rs)
                    .map(|(t, r)| {
                        let mut q = vec![0f32; t.w.len()];
                        r.qdq(&t.w, &mut q);
                        // the stored codes stand for exactly these weights
                        let (codes, params) = r.codes(&t.w);
                        let offsets = r.offsets();
                        for (k, (&code, &want)) in codes.iter().zip(&q).enumerate() {
                            let p = params[k / r.group];
                            let m = offsets[k / r.group];
                            assert_eq!((code as i32 - p.zero) as f32 * p.scale + m, want);
                        }
                        (t.lin, q)
                    })
                    .collect()
            };
            let start = |parts: &[Tuned]| {
                decoded(
                    parts,
                    &parts.iter().map(|t| t.r.clone()).collect::<Vec<_>>(),
                )
            };
            let mut from_rtn = fresh();
            let rtn = start(&from_rtn);
            let mut from_gptq = fresh();
            start_from_gptq(
                &c,
                &layer,
                x.as_ref(),
                seq,
                &mut from_gptq,
                &names,
                &grids,
                &qcfg,
                false,
            )
            .unwrap();
            let gptq = start(&from_gptq);
            // the start is GPTQ's own codes
            for (lin, q) in &gptq {
                let i = Input::ALL.into_iter().find(|i| *i == lin.input()).unwrap();
                let (_, cap) = layer_forward(&c, &layer, x.as_ref(), seq, true);
                let mut h = qs_numeric::gptq::Hessian::new(i.of(cap.as_ref().unwrap()).ncols());
                h.add_mat(i.of(cap.as_ref().unwrap()));
                let m = lin.weight(&layer);
                let want = super::super::gptq::Gptq
                    .quantize(&LinearJob {
                        name: "w",
                        file: std::path::Path::new("x"),
                        w: &rows_of(m),
                        rows: m.nrows(),
                        cols: m.ncols(),
                        grid,
                        stats: InputStats { hessian: Some(&h) },
                        cfg: &qcfg,
                    })
                    .unwrap()
                    .dequantize(m.nrows(), m.ncols());
                assert_eq!(q, &want, "{lin:?}");
            }
            let mut work = layer.clone();
            let t = float_pass(&c, &layer, x.as_ref(), seq, &[], true)
                .target
                .unwrap();
            let a = tune(
                &c,
                &mut work,
                x.as_ref(),
                seq,
                t.as_ref(),
                &mut from_rtn,
                &o,
                1,
            )
            .unwrap();
            let b = tune(
                &c,
                &mut work,
                x.as_ref(),
                seq,
                t.as_ref(),
                &mut from_gptq,
                &o,
                1,
            )
            .unwrap();
            // the layer is given back as it was
            assert!(Linear::ALL
                .iter()
                .all(|l| l.weight(&work) == l.weight(&layer)));
            assert!(a.best_loss < a.first_loss && b.best_loss <= b.first_loss);
            let (e_rtn, e_gptq) = (e(&rtn), e(&gptq));
            let values = |parts: &[Tuned], o: &Outcome| -> Vec<(Linear, Vec<f32>)> {
                parts
                    .iter()
                    .zip(&o.best)
                    .map(|(t, b)| (t.lin, b.values(t.r.group)))
                    .collect()
            };
            // the loss kept is the kept codes' own on the check batch (the layer with those
            // weights, through the float layer's forward pass)
            let check = pick(
                x.nrows() / seq,
                check_seqs(o.batch, seq),
                &mut qs_numeric::synth::Rng::new(1 ^ CHECK_SEED),
            );
            let (xc, tc) = (
                gather(x.as_ref(), &check, seq),
                gather(t.as_ref(), &check, seq),
            );
            for (parts, out) in [(&from_rtn, &a), (&from_gptq, &b)] {
                let kept = with_weights(&layer, &values(parts, out));
                let (y, _) = layer_forward(&c, &kept, xc.as_ref(), seq, false);
                let l = mse_and_grad(&y, &tc).0;
                assert!(
                    (l - out.best_loss).abs() <= 1e-5 * l,
                    "{grid:?}: {l} vs {}",
                    out.best_loss
                );
            }
            let e_a = e(&values(&from_rtn, &a));
            let e_b = e(&values(&from_gptq, &b));
            eprintln!(
                "{grid:?}: rtn {e_rtn:.3e} gptq {e_gptq:.3e} signround from rtn {e_a:.3e} from gptq {e_b:.3e}"
            );
            assert!(e_a < 0.7 * e_rtn, "{grid:?}: rtn {e_rtn}, tuned {e_a}");
            assert!(e_b <= e_gptq, "{grid:?}: gptq {e_gptq}, tuned {e_b}");
        }
    }

    /// Every linear of `layer` started on `grid` ([`start_rounding`]). `importance` gives a
    /// linear's input importance (kept on the part, for the refits) and whether its start is the
    /// search by it; `None`: round to nearest, no importance.
    fn started(
        layer: &Layer,
        grid: CodeGrid,
        importance: impl Fn(Linear) -> Option<(Vec<f32>, bool)>,
    ) -> Vec<Tuned> {
        Linear::ALL
            .iter()
            .map(|&lin| {
                let m = lin.weight(layer);
                let w = rows_of(m);
                let (rows, cols) = (m.nrows(), m.ncols());
                let imp = importance(lin);
                let search = imp.as_ref().and_then(|(q, s)| s.then_some(&q[..]));
                let r = start_rounding(grid, &w, rows, cols, search).unwrap();
                Tuned {
                    importance: imp.map(|(q, _)| q),
                    ..Tuned::new(lin, w, r)
                }
            })
            .collect()
    }

    /// Per input channel, a gain for synthetic activations: every 13th channel loud (6), the
    /// others between 0.5 and 1.5.
    fn loud_channels(rng: &mut qs_numeric::synth::Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|j| {
                if j % 13 == 5 {
                    6.0
                } else {
                    0.5 + rng.uniform() as f32
                }
            })
            .collect()
    }

    /// The zero-step search (`--iters 0`: each group's scale and minimum by the importance of
    /// its input columns) against round to nearest on every grid it writes, and for the ggml
    /// types against ggml's own importance-matrix quantizer given the same importance
    /// (llama-quantize `--imatrix`'s bytes): on a random layer whose inputs have loud channels,
    /// the layer's output error on held-out inputs is lower than both.
    #[test]
    fn zero_step_search_beats_round_to_nearest_and_ggmls_imatrix() {
        let c = Config::llama(256, 4, 2, 64, 1);
        let layer = random_layer(&c, 512, false, 8);
        let seq = 16;
        let mut rng = qs_numeric::synth::Rng::new(4);
        let loud = loud_channels(&mut rng, 512);
        let mut acts = |n: usize| {
            let z = random_mat(&mut rng, n, c.hidden, 1.0);
            Mat::from_fn(n, c.hidden, |i, j| z[(i, j)] * loud[j])
        };
        let x = acts(16 * seq);
        let held = acts(8 * seq);
        let imp = float_pass(&c, &layer, x.as_ref(), seq, &Input::ALL, false).importance;
        let imp_of = |lin: Linear| &imp.iter().find(|(i, _)| *i == lin.input()).unwrap().1;
        let e = |ws: &[(Linear, Vec<f32>)]| {
            block_mse(&c, &layer, &with_weights(&layer, ws), held.as_ref(), seq)
        };
        let decode = |w: &[f32], r: &IntRounding| {
            let mut q = vec![0f32; w.len()];
            r.qdq(w, &mut q);
            q
        };
        let int = |bits, symmetric, group| CodeGrid::Int {
            spec: IntSpec { bits, symmetric },
            group,
            scale_dtype: DType::F16,
            stores_g_idx: false,
        };
        let ggml = |t| CodeGrid::Ggml(t);
        use qs_numeric::GgmlType as G;
        for grid in [
            int(4, true, Some(32)),
            int(4, false, Some(32)),
            int(3, true, None),
            int(2, false, Some(32)),
            ggml(G::Q4_0),
            ggml(G::Q4_1),
            ggml(G::Q5_0),
            ggml(G::Q2_K),
            ggml(G::Q3_K),
            ggml(G::Q4_K),
            ggml(G::Q5_K),
            ggml(G::Q6_K),
            ggml(G::IQ4_NL),
            ggml(G::IQ4_XS),
        ] {
            let (mut rtn, mut searched, mut theirs) = (vec![], vec![], vec![]);
            for lin in Linear::ALL {
                let m = lin.weight(&layer);
                let (rows, cols) = (m.nrows(), m.ncols());
                let w = rows_of(m);
                let q = imp_of(lin);
                if let CodeGrid::Ggml(ty) = grid {
                    let mut bytes = vec![0u8; ty.row_bytes(cols)];
                    let mut deq = vec![0f32; w.len()];
                    for (row, out) in w.chunks(cols).zip(deq.chunks_mut(cols)) {
                        qs_numeric::ggml::quantize_row_weighted(ty, row, q, &mut bytes);
                        qs_numeric::ggml::dequantize_row(ty, &bytes, out);
                    }
                    theirs.push((lin, deq));
                }
                let a = start_rounding(grid, &w, rows, cols, None).unwrap();
                let b = start_rounding(grid, &w, rows, cols, Some(q)).unwrap();
                rtn.push((lin, decode(&w, &a)));
                searched.push((lin, decode(&w, &b)));
            }
            let (er, es) = (e(&rtn), e(&searched));
            let ei = if theirs.is_empty() {
                f64::NAN
            } else {
                e(&theirs)
            };
            eprintln!("{grid:?}: rtn {er:.4e} ggml imatrix {ei:.4e} search {es:.4e}");
            assert!(es < er, "{grid:?}: search {es} vs rtn {er}");
            assert!(
                theirs.is_empty() || es < ei,
                "{grid:?}: search {es} vs ggml imatrix {ei}"
            );
        }
    }

    /// Learned rounding (the default start, the zero-step search; 60 steps) against GPTQ (each
    /// linear on its float inputs' Hessian) on one synthetic layer, held-out output error, in
    /// two regimes of inputs. Independent channels with loud ones (as
    /// `zero_step_search_beats_...`): the tuned codes are below GPTQ's (by 17–29 %) and round
    /// to nearest's on every grid — but the gain is the search's: GPTQ's error feedback has
    /// little to work with, and on the integer grids the steps (clipping factors included)
    /// raise the search's own held-out error (int4 1.17e-1 → 1.21e-1). The same channels plus
    /// a rank-16 common part (strongly correlated inputs): tuning lowers the search's error by
    /// 40–54 % and stays below round to nearest, but GPTQ, which exploits the correlations
    /// linear by linear, is lower still on a single layer (int4 5.1e-2 against 3.3e-2). End
    /// to end on SmolLM2, each layer tuned towards the float model's outputs, tuning has a
    /// quarter to two fifths of GPTQ's KL divergence (docs/QUALITY.md). Started from GPTQ's
    /// error feedback on the search's grid (`--init search+gptq`), learned rounding is below
    /// GPTQ in both regimes on every grid (int4: 1.06e-1 against 1.68e-1 independent,
    /// 2.52e-2 against 3.33e-2 correlated): the search's grid is the better one for GPTQ too.
    #[test]
    fn tuning_against_gptq_on_synthetic_layers() {
        let c = Config::llama(256, 4, 2, 64, 1);
        let layer = random_layer(&c, 512, false, 8);
        let seq = 16;
        let int = |bits, symmetric| CodeGrid::Int {
            spec: IntSpec { bits, symmetric },
            group: Some(32),
            scale_dtype: DType::F16,
            stores_g_idx: false,
        };
        use qs_numeric::GgmlType as G;
        let grids = [
            int(4, true),
            int(3, false),
            CodeGrid::Ggml(G::Q4_0),
            CodeGrid::Ggml(G::Q4_K),
        ];
        for rank in [0usize, 16] {
            let mut rng = qs_numeric::synth::Rng::new(4);
            let loud = loud_channels(&mut rng, c.hidden);
            let mix = random_mat(&mut rng, rank.max(1), c.hidden, 1.0);
            let mut acts = |n: usize| {
                let z = random_mat(&mut rng, n, c.hidden, 1.0);
                let common = random_mat(&mut rng, n, rank.max(1), 1.0);
                let low = qs_model::linear(common.as_ref(), &mix.transpose().to_owned(), None);
                let part = if rank > 0 { 1.0 } else { 0.0 };
                Mat::from_fn(n, c.hidden, |i, j| {
                    (z[(i, j)] + part * low[(i, j)]) * loud[j]
                })
            };
            // more calibration values than weights, as in a real model's layer
            let x = acts(256 * seq);
            let held = acts(32 * seq);
            let pass = float_pass(&c, &layer, x.as_ref(), seq, &Input::ALL, true);
            let target = pass.target.unwrap();
            let imp_of = |lin: Linear| {
                pass.importance
                    .iter()
                    .find(|(i, _)| *i == lin.input())
                    .map(|v| v.1.clone())
                    .unwrap()
            };
            let e = |ws: &[(Linear, Vec<f32>)]| {
                block_mse(&c, &layer, &with_weights(&layer, ws), held.as_ref(), seq)
            };
            let qcfg = crate::config::QuantizeConfig::new("x", crate::config::Target::Int(4));
            let o = Opts {
                iters: 60,
                lr: 1.0 / 60.0,
                batch: 8,
            };
            for grid in grids {
                // round to nearest, or the search by each input column's importance
                let start = |search: bool| started(&layer, grid, |lin| Some((imp_of(lin), search)));
                let decoded = |parts: &[Tuned]| -> Vec<(Linear, Vec<f32>)> {
                    parts
                        .iter()
                        .map(|t| {
                            let mut q = vec![0f32; t.w.len()];
                            t.r.qdq(&t.w, &mut q);
                            (t.lin, q)
                        })
                        .collect()
                };
                let names: Vec<String> = Linear::ALL.iter().map(|l| format!("{l:?}")).collect();
                let grids = vec![grid; names.len()];
                // GPTQ's codes from round to nearest's start (its own grids) or on the search's
                let from_gptq = |on_search: bool| {
                    let mut parts = start(on_search);
                    start_from_gptq(
                        &c,
                        &layer,
                        x.as_ref(),
                        seq,
                        &mut parts,
                        &names,
                        &grids,
                        &qcfg,
                        on_search,
                    )
                    .unwrap();
                    parts
                };
                // the held-out error of the state tuning keeps
                let tuned_error = |mut parts: Vec<Tuned>| {
                    let mut work = layer.clone();
                    let out = tune(
                        &c,
                        &mut work,
                        x.as_ref(),
                        seq,
                        target.as_ref(),
                        &mut parts,
                        &o,
                        1,
                    )
                    .unwrap();
                    e(&parts
                        .iter()
                        .zip(&out.best)
                        .map(|(t, b)| (t.lin, b.values(t.r.group)))
                        .collect::<Vec<_>>())
                };
                let gs = from_gptq(true);
                let e_gs = e(&decoded(&gs));
                let e_gs_tuned = tuned_error(gs);
                let (e_rtn, e_gptq, e_search) = (
                    e(&decoded(&start(false))),
                    e(&decoded(&from_gptq(false))),
                    e(&decoded(&start(true))),
                );
                let e_tuned = tuned_error(start(true));
                eprintln!(
                    "rank {rank} {grid:?}: rtn {e_rtn:.3e} gptq {e_gptq:.3e} search {e_search:.3e} tuned {e_tuned:.3e} | search+gptq {e_gs:.3e} tuned {e_gs_tuned:.3e}"
                );
                // GPTQ's error feedback on the search's grid: below GPTQ on its own grids and
                // below the search in both regimes; the check keeps its state or a better one
                assert!(
                    e_gs < e_gptq && e_gs < e_search,
                    "{grid:?}: search+gptq {e_gs}"
                );
                assert!(
                    e_gs_tuned < e_gptq && e_gs_tuned < e_rtn,
                    "rank {rank} {grid:?}: tuned from search+gptq {e_gs_tuned}, gptq {e_gptq}"
                );
                assert!(
                    e_tuned < e_rtn,
                    "rank {rank} {grid:?}: tuned {e_tuned}, rtn {e_rtn}"
                );
                match rank {
                    0 => assert!(e_tuned < e_gptq, "{grid:?}: tuned {e_tuned}, gptq {e_gptq}"),
                    _ => assert!(
                        e_tuned < 0.8 * e_search,
                        "{grid:?}: tuned {e_tuned}, search {e_search}"
                    ),
                }
            }
        }
    }

    #[test]
    fn picks_distinct_sorted_indices() {
        let mut rng = qs_numeric::synth::Rng::new(1);
        for (n, k) in [(10, 3), (5, 5), (4, 9), (1, 1)] {
            let p = pick(n, k, &mut rng);
            assert_eq!(p.len(), k.min(n));
            assert!(p.windows(2).all(|w| w[0] < w[1]) && p.iter().all(|&i| i < n));
        }
    }
}
