//! Gradients of a decoder layer's output with respect to its linears' weights: what learned
//! rounding (sign-gradient descent on rounding offsets and clipping, AutoRound's method) needs
//! from the model. [`forward`] runs the layer through [`crate::layer_forward`]'s own norms, rope
//! and attention, with the linears' products from [`Weights`] (q/k/v and gate/up one product
//! each), and keeps what the backward pass reads ([`Tape`]); [`backward`] takes the gradient of
//! a loss with respect to the layer's output and returns it with respect to each linear's
//! weights.
//!
//! Written by hand for the dense layer of the Llama family (Llama, Qwen2, Qwen3, Mistral,
//! SmolLM): RMSNorm, q/k/v with optional biases, Qwen3's per-head q/k norms, rotate-half rope,
//! grouped-query causal attention, o_proj, the SiLU-gated MLP. [`supported`] names what a layer
//! has beyond that (sliding windows, soft-capping, sinks, output norms, mixtures, latent
//! attention, other activations). The unit tests check every gradient against central finite
//! differences of the forward pass, and the forward pass against `layer_forward` (bit for bit).
//!
//! Memory: the tape holds the layer's activations for the tokens given (about
//! `tokens·(6·hidden + 3·intermediate + q + 2·kv)` floats) and each sequence's attention
//! probabilities (`heads·seq_len²` floats per sequence).

use crate::{
    add_bias, add_into, dense_attend, finish_qkv, pre_norm, rope_of_layer, rope_transposed, Act,
    Config, Layer, Linear, Qkv,
};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use qs_numeric::linalg::{matmul, rows_into};
use rayon::prelude::*;

/// What [`backward`] reads of a [`forward`] pass.
pub struct Tape {
    seq_len: usize,
    /// The attention input (after the input norm), tokens × hidden.
    h: Mat<f32>,
    /// q and k before their head norms (Qwen3), when the layer has them.
    q_pre: Option<Mat<f32>>,
    k_pre: Option<Mat<f32>>,
    /// q and k as attention reads them (normed, roped), and v.
    q: Mat<f32>,
    k: Mat<f32>,
    v: Mat<f32>,
    /// Per (sequence, head), column i: query i's probabilities over the keys (n × n, zero
    /// below the diagonal).
    probs: Vec<Mat<f32>>,
    /// o_proj's input.
    attn: Mat<f32>,
    /// The residual after attention, and the MLP input (after the post-attention norm).
    x1: Mat<f32>,
    h2: Mat<f32>,
    /// gate's and up's projections side by side (before the activation), and down_proj's
    /// input.
    gu: Mat<f32>,
    a: Mat<f32>,
}

/// The gradient of the loss with respect to each linear's weights (each `[out, in]`, row-major
/// as [`Weights`]), by [`Linear`].
pub struct WeightGrads([Vec<f32>; 7]);

impl WeightGrads {
    /// The gradient of `lin`'s weights, row-major `[out, in]`.
    pub fn of(&self, lin: Linear) -> &[f32] {
        &self.0[lin as usize]
    }
}

/// The seven linears' weights that [`forward`] and [`backward`] use in place of the layer's:
/// row-major `[out, in]` values (as learned rounding writes its fake-quantized weights, so a
/// step writes them in place), q, k and v back to back and gate and up back to back. Each
/// group of linears with one input is then one matrix product, and a row-major `[out, in]`
/// block is the transposed weight as a column-major matrix: the products read it as it is.
/// Every value is the one the separate products give (each output's sum is the same, in the
/// same order).
pub struct Weights {
    hidden: usize,
    q_out: usize,
    kv_out: usize,
    inter: usize,
    qkv: Vec<f32>,
    o: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
}

impl Weights {
    /// The layer's own weights.
    pub fn of(w: &Layer) -> Weights {
        let (hidden, q_out, kv_out, inter) =
            (w.q.ncols(), w.q.nrows(), w.k.nrows(), w.gate.nrows());
        let mut lw = Weights {
            hidden,
            q_out,
            kv_out,
            inter,
            qkv: vec![0.0; (q_out + 2 * kv_out) * hidden],
            o: vec![0.0; w.o.nrows() * w.o.ncols()],
            gate_up: vec![0.0; 2 * inter * hidden],
            down: vec![0.0; w.down.nrows() * w.down.ncols()],
        };
        for lin in Linear::ALL {
            let m = lin.weight(w);
            assert_eq!(
                (m.nrows(), m.ncols()),
                lw.shape(lin),
                "{lin:?}'s shape in a dense layer"
            );
            rows_into(m.as_ref(), lw.rows_mut(lin));
        }
        lw
    }

    /// `lin`'s `[out, in]`.
    pub fn shape(&self, lin: Linear) -> (usize, usize) {
        match lin {
            Linear::Q => (self.q_out, self.hidden),
            Linear::K | Linear::V => (self.kv_out, self.hidden),
            Linear::O => (self.hidden, self.q_out),
            Linear::Gate | Linear::Up => (self.inter, self.hidden),
            Linear::Down => (self.hidden, self.inter),
        }
    }

    /// (its buffer's index, its first value) of `lin`'s rows.
    fn place(&self, lin: Linear) -> (usize, usize) {
        let h = self.hidden;
        match lin {
            Linear::Q => (0, 0),
            Linear::K => (0, self.q_out * h),
            Linear::V => (0, (self.q_out + self.kv_out) * h),
            Linear::O => (1, 0),
            Linear::Gate => (2, 0),
            Linear::Up => (2, self.inter * h),
            Linear::Down => (3, 0),
        }
    }

    /// `lin`'s weights to write, row-major `[out, in]`.
    pub fn rows_mut(&mut self, lin: Linear) -> &mut [f32] {
        let ((b, at), (o, i)) = (self.place(lin), self.shape(lin));
        let buf = match b {
            0 => &mut self.qkv,
            1 => &mut self.o,
            2 => &mut self.gate_up,
            _ => &mut self.down,
        };
        &mut buf[at..at + o * i]
    }

    /// `Wᵀ` (in × out) of the rows `buf` holds, `out` of them.
    fn t(buf: &[f32], out: usize) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(buf, buf.len() / out.max(1), out)
    }
}

/// `x·wt`: a linear's output for inputs `x` (tokens × in) from its transposed weights `wt`.
fn product(x: MatRef<'_, f32>, wt: MatRef<'_, f32>) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(x.nrows(), wt.ncols());
    matmul(out.as_mut(), Accum::Replace, x, wt, 1.0f32, Par::rayon(0));
    out
}

/// `Err` naming what the layer has that [`backward`] does not differentiate.
pub fn supported(c: &Config, w: &Layer) -> Result<(), String> {
    let mut what = Vec::new();
    if w.window.is_some() {
        what.push("a sliding window");
    }
    if c.attn_softcap.is_some() {
        what.push("attention soft-capping");
    }
    if w.sinks.is_some() || w.o_bias.is_some() {
        what.push("attention sinks or an o_proj bias");
    }
    if w.attn_out_norm.is_some() || w.mlp_out_norm.is_some() {
        what.push("output norms");
    }
    if w.input_norm.is_none() || w.post_norm.is_none() {
        what.push("a layer without pre-norms");
    }
    if w.moe.is_some() {
        what.push("a mixture of experts");
    }
    if w.mla.is_some() {
        what.push("latent attention");
    }
    if c.act != Act::Silu {
        what.push("an activation other than SiLU");
    }
    if w.q_norm.as_ref().is_some_and(|n| n.len() != c.head_dim)
        || w.k_norm.as_ref().is_some_and(|n| n.len() != c.head_dim)
    {
        what.push("q/k norms over all heads");
    }
    if w.rope && rope_of_layer(c, w).long.is_some() {
        what.push("LongRoPE");
    }
    match what.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "learned rounding differentiates the dense Llama/Qwen layer; this one has {}",
            what.join(", ")
        )),
    }
}

/// The layer's output for `x` (tokens × hidden, sequences of `seq_len` tokens back to back,
/// causal attention within each), as [`crate::layer_forward`] computes it with the linears'
/// weights `lw` (the layer's own linears are not read), and its tape. The layer must be
/// [`supported`].
pub fn forward(
    c: &Config,
    w: &Layer,
    lw: &Weights,
    x: MatRef<'_, f32>,
    seq_len: usize,
) -> (Mat<f32>, Tape) {
    let h = pre_norm(x, w.input_norm.as_deref(), c.eps);
    let (qo, kvo) = (lw.q_out, lw.kv_out);
    let all = product(h.as_ref(), Weights::t(&lw.qkv, qo + 2 * kvo));
    let part = |j0: usize, n: usize, b: Option<&[f32]>| {
        let mut m = all.as_ref().subcols(j0, n).to_owned();
        if let Some(b) = b {
            add_bias(&mut m, b);
        }
        m
    };
    let q = part(0, qo, w.q_bias.as_deref());
    let k = part(qo, kvo, w.k_bias.as_deref());
    let v = part(qo + kvo, kvo, w.v_bias.as_deref());
    drop(all);
    let qkv = finish_qkv(c, w, (q, k, v), seq_len, true);
    let (attn, probs) = dense_attend(c, w, &qkv, seq_len, true);
    let Qkv {
        q,
        k,
        v,
        q_pre,
        k_pre,
    } = qkv;
    let o = product(attn.as_ref(), Weights::t(&lw.o, lw.hidden));
    let mut x1 = o;
    add_into(&mut x1, x);
    let h2 = pre_norm(x1.as_ref(), w.post_norm.as_deref(), c.eps);
    let inter = lw.inter;
    let gu = product(h2.as_ref(), Weights::t(&lw.gate_up, 2 * inter));
    let mut a = Mat::<f32>::zeros(gu.nrows(), inter);
    let (g, u) = (
        gu.as_ref().subcols(0, inter),
        gu.as_ref().subcols(inter, inter),
    );
    a.as_mut()
        .par_col_iter_mut()
        .zip(g.par_col_iter().zip(u.par_col_iter()))
        .for_each(|(ac, (gc, uc))| {
            for ((a, &gv), &uv) in ac.iter_mut().zip(gc.iter()).zip(uc.iter()) {
                *a = c.act.gated(gv, uv);
            }
        });
    let d = product(a.as_ref(), Weights::t(&lw.down, lw.hidden));
    let mut y = x1.clone();
    add_into(&mut y, d.as_ref());
    let tape = Tape {
        seq_len,
        h,
        q_pre,
        k_pre,
        q,
        k,
        v,
        probs,
        attn,
        x1,
        h2,
        gu,
        a,
    };
    (y, tape)
}

/// Blocks of (first token, head): the sequences' heads.
fn blocks(tokens: usize, seq_len: usize, heads: usize) -> Vec<(usize, usize)> {
    (0..tokens)
        .step_by(seq_len.max(1))
        .flat_map(|s0| (0..heads).map(move |h| (s0, h)))
        .collect()
}

/// `xᵀ dy` into `buf`: the gradient of `y = x Wᵀ` with respect to W, row-major `[out, in]`
/// (its transpose, column-major).
fn weight_grad<'b>(dy: MatRef<'_, f32>, x: MatRef<'_, f32>, buf: &'b mut Vec<f32>) -> &'b [f32] {
    buf.clear();
    buf.resize(dy.ncols() * x.ncols(), 0.0);
    let dst = MatMut::from_column_major_slice_mut(buf, x.ncols(), dy.ncols());
    matmul(
        dst,
        Accum::Replace,
        x.transpose(),
        dy,
        1.0f32,
        Par::rayon(0),
    );
    buf
}

/// The gradient with respect to `x` of `y = rmsnorm(x)·gain` over groups of `width` columns
/// (a row's `width = cols`; Qwen3's head norms a head's), given the gradient `dy`: per group,
/// `r·gain⊙dy − x·r³/width·Σ gain·dy·x` with `r = 1/√(mean(x²) + eps)` (sums in f64).
fn rms_norm_grad(
    x: MatRef<'_, f32>,
    dy: MatRef<'_, f32>,
    gain: &[f32],
    width: usize,
    eps: f32,
) -> Mat<f32> {
    let (rows, cols) = (x.nrows(), x.ncols());
    let groups = cols / width.max(1);
    // per (group, row): Σx², Σgain·dy·x, column by column (faer stores columns), each row's
    // sums still in column order
    let mut ss = vec![0f64; groups * rows];
    let mut dot = vec![0f64; groups * rows];
    for j in 0..groups * width {
        let (s, d) = (
            &mut ss[j / width * rows..][..rows],
            &mut dot[j / width * rows..][..rows],
        );
        let gj = gain[j % width] as f64;
        for (((s, d), &xv), &dv) in s
            .iter_mut()
            .zip(d)
            .zip(x.col(j).iter())
            .zip(dy.col(j).iter())
        {
            *s += xv as f64 * xv as f64;
            *d += gj * dv as f64 * xv as f64;
        }
    }
    // per (group, row): r (as the forward pass rounds it) and k = r³/width·Σgain·dy·x
    let rk: Vec<(f64, f64)> = ss
        .iter()
        .zip(&dot)
        .map(|(&s, &d)| {
            let r = (1.0 / ((s / width as f64) as f32 + eps).sqrt()) as f64;
            (r, r * r * r / width as f64 * d)
        })
        .collect();
    let mut dx = Mat::<f32>::zeros(rows, cols);
    dx.as_mut()
        .par_col_iter_mut()
        .enumerate()
        .take(groups * width)
        .for_each(|(j, col)| {
            let gj = gain[j % width] as f64;
            let rk = &rk[j / width * rows..][..rows];
            let it = col.iter_mut().zip(x.col(j).iter()).zip(dy.col(j).iter());
            for (((o, &xv), &dv), &(r, k)) in it.zip(rk) {
                *o = (r * gj * dv as f64 - xv as f64 * k) as f32;
            }
        });
    dx
}

/// The gradients of the loss with respect to the layer's weights, given its gradient with
/// respect to the layer's output (`dy`, tokens × hidden) and the tape of the forward pass with
/// weights `lw` that produced the output.
pub fn backward(c: &Config, w: &Layer, lw: &Weights, t: Tape, dy: MatRef<'_, f32>) -> WeightGrads {
    let mut g: [Vec<f32>; 7] = std::array::from_fn(|_| Vec::new());
    backward_each(c, w, lw, t, dy, |lin, m| g[lin as usize] = m.to_vec());
    WeightGrads(g)
}

/// [`backward`], handing each weight's gradient (row-major `[out, in]`) to `f` as soon as it
/// is computed (down, gate, up, o, then q, k, v), so that a caller can use it before the next
/// exists. The tape is consumed as the pass goes back through the layer: each activation is
/// dropped after its last use, and the gate and up activations' gradients overwrite them.
pub fn backward_each(
    c: &Config,
    w: &Layer,
    lw: &Weights,
    t: Tape,
    dy: MatRef<'_, f32>,
    mut f: impl FnMut(Linear, &[f32]),
) {
    use crate::Linear as L;
    let hd = c.head_dim;
    let Tape {
        seq_len,
        h,
        q_pre,
        k_pre,
        q,
        k,
        v,
        probs,
        attn,
        x1,
        h2,
        gu: mut dgu,
        a,
    } = t;
    let mut buf = Vec::new();
    let (hidden, inter) = (lw.hidden, lw.inter);
    // MLP: y = x1 + down(silu(gate(h2)) ⊙ up(h2))
    f(L::Down, weight_grad(dy, a.as_ref(), &mut buf));
    drop(a);
    let da = product(dy, Weights::t(&lw.down, hidden).transpose());
    // the gate and up activations' gradients, in place of the activations
    {
        let (dg, du) = dgu.as_mut().split_at_col_mut(inter);
        dg.par_col_iter_mut()
            .zip(du.par_col_iter_mut())
            .zip(da.par_col_iter())
            .for_each(|((dgc, duc), dac)| {
                let it = dgc.iter_mut().zip(duc.iter_mut()).zip(dac.iter());
                for ((dg, du), &d) in it {
                    let (g, u) = (*dg, *du);
                    let s = 1.0 / (1.0 + (-g).exp());
                    *du = d * g * s;
                    *dg = d * u * s * (1.0 + g * (1.0 - s));
                }
            });
    }
    drop(da);
    // gate's and up's gradients in one product: gate's rows, then up's
    let both = weight_grad(dgu.as_ref(), h2.as_ref(), &mut buf);
    let (gate, up) = both.split_at(inter * hidden);
    f(L::Gate, gate);
    f(L::Up, up);
    drop(h2);
    let gut = Weights::t(&lw.gate_up, 2 * inter);
    let (dg, du) = (
        dgu.as_ref().subcols(0, inter),
        dgu.as_ref().subcols(inter, inter),
    );
    let mut dh2 = product(dg, gut.subcols(0, inter).transpose());
    add_into(
        &mut dh2,
        product(du, gut.subcols(inter, inter).transpose()).as_ref(),
    );
    drop(dgu);
    let post = w.post_norm.as_deref().unwrap_or(&[]);
    let mut dx1 = rms_norm_grad(x1.as_ref(), dh2.as_ref(), post, c.hidden, c.eps);
    drop((x1, dh2));
    add_into(&mut dx1, dy);
    // attention: x1 = x + o(attn)
    f(L::O, weight_grad(dx1.as_ref(), attn.as_ref(), &mut buf));
    drop(attn);
    let dattn = product(dx1.as_ref(), Weights::t(&lw.o, hidden).transpose());
    drop(dx1);
    let (mut dq, mut dk, dv) = attend_grad(c, seq_len, (&q, &k, &v), &probs, dattn.as_ref());
    drop((q, k, v, probs, dattn));
    if w.rope {
        let r = rope_of_layer(c, w);
        rope_transposed(&mut dq, c.heads, seq_len, hd, r);
        rope_transposed(&mut dk, c.kv_heads, seq_len, hd, r);
    }
    if let (Some(qn), Some(kn), Some(qp), Some(kp)) = (&w.q_norm, &w.k_norm, &q_pre, &k_pre) {
        dq = rms_norm_grad(qp.as_ref(), dq.as_ref(), qn, hd, c.eps);
        dk = rms_norm_grad(kp.as_ref(), dk.as_ref(), kn, hd, c.eps);
    }
    drop((q_pre, k_pre));
    // q's, k's and v's gradients in one product, from their output gradients side by side
    let (qo, kvo) = (lw.q_out, lw.kv_out);
    let mut dqkv = Mat::<f32>::zeros(dq.nrows(), qo + 2 * kvo);
    dqkv.as_mut().subcols_mut(0, qo).copy_from(&dq);
    drop(dq);
    dqkv.as_mut().subcols_mut(qo, kvo).copy_from(&dk);
    drop(dk);
    dqkv.as_mut().subcols_mut(qo + kvo, kvo).copy_from(&dv);
    drop(dv);
    let all = weight_grad(dqkv.as_ref(), h.as_ref(), &mut buf);
    drop((dqkv, h));
    let (gq, rest) = all.split_at(qo * hidden);
    let (gk, gv) = rest.split_at(kvo * hidden);
    f(L::Q, gq);
    f(L::K, gk);
    f(L::V, gv);
}

/// The gradients with respect to q, k and v (as attention read them) of the loss, given its
/// gradient with respect to the attention output and the forward pass's q, k, v and
/// probabilities (sequences of `seq_len` tokens). Per sequence and key/value head (the heads
/// that share it accumulate into its k and v): `dV += Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = scale·dS K`, `dK += scale·dSᵀ Q`.
fn attend_grad(
    c: &Config,
    seq_len: usize,
    (q, k, v): (&Mat<f32>, &Mat<f32>, &Mat<f32>),
    probs: &[Mat<f32>],
    dattn: MatRef<'_, f32>,
) -> (Mat<f32>, Mat<f32>, Mat<f32>) {
    let (tokens, hd) = (q.nrows(), c.head_dim);
    let rep = c.heads / c.kv_heads.max(1);
    let groups: Vec<(usize, usize)> = blocks(tokens, seq_len, c.kv_heads);
    // per (sequence, kv head): dq of its query heads, dk, dv
    type Part = (Vec<Mat<f32>>, Mat<f32>, Mat<f32>);
    let parts: Vec<Part> = groups
        .par_iter()
        .map(|&(s0, kvh)| {
            let n = seq_len.min(tokens - s0);
            let kh = k.as_ref().submatrix(s0, kvh * hd, n, hd);
            let vh = v.as_ref().submatrix(s0, kvh * hd, n, hd);
            let (mut dk, mut dv) = (Mat::<f32>::zeros(n, hd), Mat::<f32>::zeros(n, hd));
            let mut dqs = Vec::with_capacity(rep);
            for head in kvh * rep..(kvh + 1) * rep {
                // blocks() lists the sequences' heads in order; column i of `pt` is query
                // i's probabilities (Pᵀ)
                let pt = &probs[s0 / seq_len.max(1) * c.heads + head];
                let qh = q.as_ref().submatrix(s0, head * hd, n, hd);
                let doh = dattn.submatrix(s0, head * hd, n, hd);
                matmul(dv.as_mut(), Accum::Add, pt.as_ref(), doh, 1.0f32, Par::Seq);
                // dPᵀ = V dOᵀ, then dSᵀ in its place, a query's column at a time
                let mut ds = Mat::<f32>::zeros(n, n);
                matmul(
                    ds.as_mut(),
                    Accum::Replace,
                    vh,
                    doh.transpose(),
                    1.0f32,
                    Par::Seq,
                );
                for i in 0..n {
                    let (p, d) = (&pt.col_as_slice(i)[..=i], ds.col_as_slice_mut(i));
                    let (seen, later) = d.split_at_mut(i + 1);
                    let dot: f32 = p.iter().zip(seen.iter()).map(|(&p, &d)| p * d).sum();
                    for (d, &p) in seen.iter_mut().zip(p) {
                        *d = p * (*d - dot);
                    }
                    later.fill(0.0);
                }
                let mut dq = Mat::<f32>::zeros(n, hd);
                matmul(
                    dq.as_mut(),
                    Accum::Replace,
                    ds.transpose(),
                    kh,
                    c.attn_scale,
                    Par::Seq,
                );
                matmul(
                    dk.as_mut(),
                    Accum::Add,
                    ds.as_ref(),
                    qh,
                    c.attn_scale,
                    Par::Seq,
                );
                dqs.push(dq);
            }
            (dqs, dk, dv)
        })
        .collect();
    let mut dq = Mat::<f32>::zeros(tokens, c.heads * hd);
    let mut dk = Mat::<f32>::zeros(tokens, c.kv_heads * hd);
    let mut dv = Mat::<f32>::zeros(tokens, c.kv_heads * hd);
    for (&(s0, kvh), (dqs, k, v)) in groups.iter().zip(parts) {
        let n = k.nrows();
        for (r, q) in dqs.iter().enumerate() {
            dq.as_mut()
                .submatrix_mut(s0, (kvh * rep + r) * hd, n, hd)
                .copy_from(q);
        }
        dk.as_mut().submatrix_mut(s0, kvh * hd, n, hd).copy_from(&k);
        dv.as_mut().submatrix_mut(s0, kvh * hd, n, hd).copy_from(&v);
    }
    (dq, dk, dv)
}

/// A matrix of normal values of deviation `s`.
pub fn random_mat(rng: &mut qs_numeric::synth::Rng, r: usize, c: usize, s: f64) -> Mat<f32> {
    Mat::from_fn(r, c, |_, _| (rng.normal() * s) as f32)
}

fn vec_near_one(rng: &mut qs_numeric::synth::Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (1.0 + 0.2 * rng.normal()) as f32).collect()
}

/// A random dense layer of `c`'s shape with `inter` MLP rows, q/k/v biases (Qwen2) and,
/// when asked, Qwen3's head norms: for the tests of the methods built on this module.
pub fn random_layer(c: &Config, inter: usize, qk_norm: bool, seed: u64) -> Layer {
    let mut rng = qs_numeric::synth::Rng::new(seed);
    let (h, hd) = (c.hidden, c.head_dim);
    let s = 0.5 / (h as f64).sqrt();
    Layer {
        rope: true,
        window: None,
        input_norm: Some(vec_near_one(&mut rng, h)),
        attn_out_norm: None,
        mlp_out_norm: None,
        q: random_mat(&mut rng, c.heads * hd, h, 3.0 * s),
        k: random_mat(&mut rng, c.kv_heads * hd, h, 3.0 * s),
        v: random_mat(&mut rng, c.kv_heads * hd, h, 2.0 * s),
        o: random_mat(&mut rng, h, c.heads * hd, 2.0 * s),
        q_bias: Some(
            (0..c.heads * hd)
                .map(|_| (0.1 * rng.normal()) as f32)
                .collect(),
        ),
        k_bias: Some(
            (0..c.kv_heads * hd)
                .map(|_| (0.1 * rng.normal()) as f32)
                .collect(),
        ),
        v_bias: Some(
            (0..c.kv_heads * hd)
                .map(|_| (0.1 * rng.normal()) as f32)
                .collect(),
        ),
        o_bias: None,
        sinks: None,
        q_norm: qk_norm.then(|| vec_near_one(&mut rng, hd)),
        k_norm: qk_norm.then(|| vec_near_one(&mut rng, hd)),
        post_norm: Some(vec_near_one(&mut rng, h)),
        gate: random_mat(&mut rng, inter, h, 3.0 * s),
        up: random_mat(&mut rng, inter, h, 3.0 * s),
        down: random_mat(&mut rng, h, inter, 2.0 * s),
        moe: None,
        mla: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_numeric::synth::Rng;

    fn config() -> Config {
        Config::llama(16, 4, 2, 4, 1)
    }

    /// The forward pass is the model's: the same output as `layer_forward`, bit for bit (its
    /// fused q/k/v and gate/up products give each value the separate products give), on a
    /// small layer and on one wide enough for several of the product's tiles.
    #[test]
    fn forward_equals_layer_forward() {
        for (c, inter, seq) in [
            (config(), 24, 5),
            (Config::llama(192, 6, 2, 32, 1), 520, 37),
        ] {
            for qk in [false, true] {
                let w = random_layer(&c, inter, qk, 7);
                let mut rng = Rng::new(9);
                // two sequences
                let x = random_mat(&mut rng, 2 * seq, c.hidden, 1.0);
                let (y, _) = forward(&c, &w, &Weights::of(&w), x.as_ref(), seq);
                let (want, _) = crate::layer_forward(&c, &w, x.as_ref(), seq, false);
                for i in 0..y.nrows() {
                    for j in 0..y.ncols() {
                        let (a, b) = (y[(i, j)], want[(i, j)]);
                        assert_eq!(a.to_bits(), b.to_bits(), "{qk} ({i},{j}): {a} vs {b}");
                    }
                }
            }
        }
    }

    /// Every weight gradient agrees with central finite differences of the forward pass for
    /// the loss `Σ R ⊙ y` (R random, so dL/dy = R), on a GQA layer with biases, with and
    /// without Qwen3's head norms.
    #[test]
    fn weight_gradients_match_finite_differences() {
        let c = config();
        for qk in [false, true] {
            let w = random_layer(&c, 24, qk, 11);
            let mut rng = Rng::new(13);
            let (tokens, seq) = (12, 6);
            let x = random_mat(&mut rng, tokens, c.hidden, 1.0);
            let r = random_mat(&mut rng, tokens, c.hidden, 1.0);
            let loss = |w: &Layer| -> f64 {
                let (y, _) = forward(&c, w, &Weights::of(w), x.as_ref(), seq);
                let mut l = 0f64;
                for i in 0..tokens {
                    for j in 0..c.hidden {
                        l += r[(i, j)] as f64 * y[(i, j)] as f64;
                    }
                }
                l
            };
            let lw = Weights::of(&w);
            let (_, tape) = forward(&c, &w, &lw, x.as_ref(), seq);
            let g = backward(&c, &w, &lw, tape, r.as_ref());
            for lin in crate::Linear::ALL {
                let (name, grad) = (format!("{lin:?}"), g.of(lin));
                let mut wp = w.clone();
                let (rows, cols) = lw.shape(lin);
                let mut worst = 0f64;
                for k in 0..12 {
                    let (i, j) = ((k * 7 + 3) % rows, (k * 5 + 1) % cols);
                    let w0 = lin.weight_mut(&mut wp)[(i, j)];
                    let mut central = |eps: f32| {
                        lin.weight_mut(&mut wp)[(i, j)] = w0 + eps;
                        let lp = loss(&wp);
                        lin.weight_mut(&mut wp)[(i, j)] = w0 - eps;
                        let lm = loss(&wp);
                        lin.weight_mut(&mut wp)[(i, j)] = w0;
                        // (the step as f32 represents it)
                        (lp - lm) / ((w0 + eps) as f64 - (w0 - eps) as f64)
                    };
                    // Richardson: the steps' O(eps²) error cancels
                    let fd = (4.0 * central(4e-2) - central(8e-2)) / 3.0;
                    let an = grad[i * cols + j] as f64;
                    let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(0.05));
                    worst = worst.max(err);
                }
                assert!(
                    worst < 1e-2,
                    "{name} (qk norms {qk}): relative error {worst}"
                );
            }
        }
    }
}
