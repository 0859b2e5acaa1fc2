//! Learned rounding (AutoRound's "SignRound"): per weight a rounding offset `v` in
//! [−0.5, 0.5] added before rounding, per group clipping factors `α` (of the group's maximum)
//! and `β` (of its minimum) in [0, 1], tuned by signed gradient steps on a block's output
//! error. This module is the weight side for a compressed-tensors integer grid
//! ([`crate::layout::CodeGrid::Int`]) or a ggml type's grid ([`crate::ggml::CodeGrid`]): the
//! fake-quantized weights for the current parameters ([`IntRounding::qdq`]), their
//! straight-through gradients ([`IntRounding::grads`]), the signed step ([`IntRounding::step`])
//! and the codes to store ([`IntRounding::codes`]).
//!
//! An integer grid is the layout's own: the group's range `[β·min(w, 0), α·max(w, 0)]` goes
//! through [`crate::rtn::fit`] (the scale rounded to the stored dtype, the zero point rounded),
//! codes are `clamp(round(w/s + v) + z)`; with `v = 0` and `α = β = 1` that is exactly the
//! layout's round to nearest (unit test), so the tuned weights are the written ones. On a ggml
//! grid the blocks' fitted scales (and minimums) are kept and only `v` moves; IQ4's non-linear
//! grid rounds `w/s` between its two neighbouring levels ([`crate::ggml::iq4::Levels::code`]).
//!
//! Gradients follow the reference's straight-through estimator: rounding passes the gradient
//! unchanged, a clamp passes it inside its range and stops it outside; the scale's rounding to
//! its dtype passes it.

use crate::dtype::DType;
use crate::ggml::iq4::Levels;
use crate::rtn::{fit, IntSpec, QParams};

/// The tuned parameters of one weight matrix (`rows × cols`, groups of `group` columns, or one
/// group per row).
#[derive(Debug, Clone, PartialEq)]
pub struct IntRounding {
    pub spec: IntSpec,
    pub group: usize,
    pub scale_dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Per weight, row-major.
    pub v: Vec<f32>,
    /// Per group (row-major over rows × groups per row): factors of the maximum and minimum.
    pub alpha: Vec<f32>,
    pub beta: Vec<f32>,
    /// Per group: `min(w, 0)` and `max(w, 0)` of the float weights.
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// [`IntRounding::on_grid`]'s given grids, used exactly while a group's factors are 1 (its
    /// range gives them back only to within a rounding of the scale).
    base: Option<Vec<QParams>>,
    /// A ggml block type's grids ([`IntRounding::on_ggml_grid`]), with per-group offsets and
    /// the type's code range: the rounding offsets are tuned, the scales take no gradient
    /// (fitted by the type's search, again by [`IntRounding::refit`]).
    fixed: Option<Fixed>,
}

#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    ty: crate::ggml::GgmlType,
    offsets: Vec<f32>,
    qmin: i32,
    qmax: i32,
    /// A non-linear grid's levels (IQ4's): the codes are level values, `value = code·scale`.
    levels: Option<&'static Levels>,
}

/// Gradients of the loss with respect to [`IntRounding`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct IntGrads {
    pub v: Vec<f32>,
    pub alpha: Vec<f32>,
    pub beta: Vec<f32>,
}

/// One group's grid for the current factors, and how its scale moves with the range ends.
struct GroupGrid {
    p: QParams,
    /// d scale / d max', d scale / d min' (0 where the scale was clamped).
    ds_dhi: f32,
    ds_dlo: f32,
    /// min' (the clipped minimum) and whether the zero point was clamped.
    lo: f32,
    zero_clamped: bool,
}

impl IntRounding {
    /// Offsets 0 and factors 1 (the layout's round to nearest) for weights `w`.
    pub fn new(
        spec: IntSpec,
        group: Option<usize>,
        scale_dtype: DType,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> IntRounding {
        assert_eq!(w.len(), rows * cols);
        let group = group.unwrap_or(cols).max(1);
        assert!(
            cols.is_multiple_of(group),
            "{cols} columns in groups of {group}"
        );
        let n = rows * (cols / group);
        let (mut lo, mut hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for g in w.chunks(group) {
            let (mn, mx) = crate::rtn::min_max(g);
            lo.push(mn.min(0.0));
            hi.push(mx.max(0.0));
        }
        IntRounding {
            spec,
            group,
            scale_dtype,
            rows,
            cols,
            v: vec![0.0; w.len()],
            alpha: vec![1.0; n],
            beta: vec![1.0; n],
            lo,
            hi,
            base: None,
            fixed: None,
        }
    }

    /// Offsets 0 and factors 1 on given grids: each group's range is the whole span its scale
    /// and zero point `params` (row-major over rows × groups) represent, so that weights already
    /// on those grids (another method's codes, e.g. GPTQ's, decoded) start at exactly those
    /// codes and the factors clip that span. Each scale must be positive and finite.
    pub fn on_grid(
        spec: IntSpec,
        group: Option<usize>,
        scale_dtype: DType,
        params: &[QParams],
        rows: usize,
        cols: usize,
    ) -> IntRounding {
        let group = group.unwrap_or(cols).max(1);
        assert!(
            cols.is_multiple_of(group),
            "{cols} columns in groups of {group}"
        );
        let n = rows * (cols / group);
        assert_eq!(params.len(), n);
        let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
        let (mut lo, mut hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for p in params {
            if spec.symmetric {
                let half = (qmax - qmin) / 2.0 * p.scale;
                lo.push(-half);
                hi.push(half);
            } else {
                let z = p.zero as f32;
                lo.push(((qmin - z) * p.scale).min(0.0));
                hi.push(((qmax - z) * p.scale).max(0.0));
            }
        }
        IntRounding {
            spec,
            group,
            scale_dtype,
            rows,
            cols,
            v: vec![0.0; rows * cols],
            alpha: vec![1.0; n],
            beta: vec![1.0; n],
            lo,
            hi,
            base: Some(params.to_vec()),
            fixed: None,
        }
    }

    /// Offsets 0 on a ggml block type's grids: per group (row-major over rows × groups of
    /// the type's [`crate::ggml::CodeGrid::group`] columns) the scale and zero point `params`
    /// and the value added after scaling `offsets` (Q4_1's minimum, the K-quants' `−dmin·m`),
    /// as the type's grid fits them. A value is `(c − z)·s + offset`, as the block decodes it;
    /// the clipping factors stay 1 (the type's fit chooses the range; [`IntRounding::refit`]
    /// fits it again for the current offsets). `Err` when the type has no code grid or the
    /// sizes disagree.
    pub fn on_ggml_grid(
        ty: crate::ggml::GgmlType,
        params: &[QParams],
        offsets: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<IntRounding, String> {
        let g = ty.grid().ok_or_else(|| format!("{ty} has no code grid"))?;
        let group = g.group();
        if !cols.is_multiple_of(ty.block().0) {
            return Err(format!(
                "{cols} columns are not whole {ty} blocks of {}",
                ty.block().0
            ));
        }
        let n = rows * (cols / group);
        if (params.len(), offsets.len()) != (n, n) {
            return Err(format!(
                "{} scales and {} offsets for {n} groups",
                params.len(),
                offsets.len()
            ));
        }
        let (qmin, qmax) = g.code_range();
        Ok(IntRounding {
            spec: g.spec(),
            group,
            scale_dtype: DType::F32,
            rows,
            cols,
            v: vec![0.0; rows * cols],
            alpha: vec![1.0; n],
            beta: vec![1.0; n],
            lo: vec![0.0; n],
            hi: vec![0.0; n],
            base: Some(params.to_vec()),
            fixed: Some(Fixed {
                ty,
                offsets: offsets.to_vec(),
                qmin,
                qmax,
                levels: g.levels(),
            }),
        })
    }

    /// Round to nearest on a ggml type's own grids ([`IntRounding::on_ggml_grid`]): each block
    /// of `w` fitted by the type's [`crate::ggml::CodeGrid`] — ggml's own fit, or with an
    /// `importance` per column the importance-weighted search
    /// ([`crate::ggml::CodeGrid::fit_weighted`]) — offsets 0. `Err` when the type has no code
    /// grid or the rows are not whole blocks.
    pub fn on_ggml_fit(
        ty: crate::ggml::GgmlType,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<IntRounding, String> {
        if w.len() != rows * cols {
            return Err(format!("{} weights for {rows} × {cols}", w.len()));
        }
        let (params, offsets) = fit_ggml_blocks(ty, w, cols, importance, None)?;
        IntRounding::on_ggml_grid(ty, &params, &offsets, rows, cols)
    }

    /// On a ggml type's grids ([`IntRounding::on_ggml_grid`]): each block's scales and offsets
    /// searched again for the current rounding offsets (the importance-weighted search scoring
    /// the codes `round((w − offset)/scale + v)`; plain least squares without an `importance`),
    /// as AutoRound re-runs its scale/min search on the offset weights every few steps. The
    /// offsets stay. `Err` on other grids or wrong sizes.
    pub fn refit(&mut self, w: &[f32], importance: Option<&[f32]>) -> Result<(), String> {
        let Some(f) = &self.fixed else {
            return Err("only a ggml type's grids are refitted".into());
        };
        if w.len() != self.v.len() {
            return Err(format!("{} weights for {} offsets", w.len(), self.v.len()));
        }
        let ones;
        let qw = match importance {
            Some(q) => q,
            None => {
                ones = vec![1f32; self.cols];
                &ones[..]
            }
        };
        let (params, offsets) = fit_ggml_blocks(f.ty, w, self.cols, Some(qw), Some(&self.v))?;
        self.base = Some(params);
        if let Some(f) = &mut self.fixed {
            f.offsets = offsets;
        }
        Ok(())
    }

    /// Whether the grids are a ggml type's ([`IntRounding::refit`] applies).
    pub fn is_ggml(&self) -> bool {
        self.fixed.is_some()
    }

    /// The smallest and largest code.
    fn code_range(&self) -> (f32, f32) {
        match &self.fixed {
            Some(f) => (f.qmin as f32, f.qmax as f32),
            None => (self.spec.qmin() as f32, self.spec.qmax() as f32),
        }
    }

    /// Group `k`'s value added after scaling (0 on integer grids).
    fn offset(&self, k: usize) -> f32 {
        self.fixed.as_ref().map_or(0.0, |f| f.offsets[k])
    }

    /// Each group's value added after scaling, as the layout stores it (0 on integer grids).
    pub fn offsets(&self) -> Vec<f32> {
        match &self.fixed {
            Some(f) => f.offsets.clone(),
            None => vec![0.0; self.alpha.len()],
        }
    }

    /// The code of `x` (offset `m` removed) with rounding offset `v` on scale `s`, zero `z`
    /// (unclamped; a zero scale, as a ggml block of zeros has, gives the zero point).
    #[inline]
    fn code(x: f32, m: f32, s: f32, z: f32, v: f32) -> f32 {
        if s == 0.0 {
            z
        } else {
            round((x - m) / s + v) + z
        }
    }

    /// The non-linear grid's levels, if the grids are one.
    fn levels(&self) -> Option<&'static Levels> {
        self.fixed.as_ref().and_then(|f| f.levels)
    }

    /// The level of `x` with rounding offset `v` on scale `s`, and the width of the segment
    /// it rounds in ([`Levels::code`]; a zero scale: the level nearest 0, width 0).
    #[inline]
    fn level(l: &Levels, x: f32, s: f32, v: f32) -> (f32, f32) {
        if s == 0.0 {
            (l.code(0.0, 0.0).0, 0.0)
        } else {
            l.code(x / s, v)
        }
    }

    fn grid(&self, k: usize) -> GroupGrid {
        let (lo, hi) = (self.lo[k] * self.beta[k], self.hi[k] * self.alpha[k]);
        let p = match &self.base {
            Some(b) if self.fixed.is_some() || (self.alpha[k] == 1.0 && self.beta[k] == 1.0) => {
                b[k]
            }
            _ => fit(self.spec, lo, hi, self.scale_dtype),
        };
        let (qmin, qmax) = (self.spec.qmin() as f32, self.spec.qmax() as f32);
        let levels = qmax - qmin;
        // the scale before its clamp to the dtype's smallest step
        let raw = if self.spec.symmetric {
            lo.abs().max(hi) / (levels / 2.0)
        } else {
            (hi - lo) / levels
        };
        let live = raw > 0.0 && raw.is_finite();
        let (ds_dhi, ds_dlo) = match (live, self.spec.symmetric) {
            (false, _) => (0.0, 0.0),
            (true, true) if hi >= lo.abs() => (2.0 / levels, 0.0),
            (true, true) => (0.0, -2.0 / levels),
            (true, false) => (1.0 / levels, -1.0 / levels),
        };
        let z = qmin - lo / p.scale;
        GroupGrid {
            p,
            ds_dhi,
            ds_dlo,
            lo,
            zero_clamped: !self.spec.symmetric && !(qmin..=qmax).contains(&z),
        }
    }

    /// Groups per parallel task of [`IntRounding::qdq`], [`IntRounding::codes`] and
    /// [`IntRounding::grads`] (about 16 K weights): the work is per group, so the results do not
    /// depend on how it is split.
    fn task_groups(&self) -> usize {
        (16_384 / self.group).max(1)
    }

    /// The fake-quantized weights `(clamp(round((w − m)/s + v) + z) − z)·s + m` for the current
    /// parameters (`m` 0 but on ggml grids). Groups in parallel ([`IntRounding::qdq_from`] is
    /// the serial reference).
    pub fn qdq(&self, w: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let n = self.task_groups() * self.group;
        out.par_chunks_mut(n)
            .zip(w.par_chunks(n))
            .enumerate()
            .for_each(|(t, (o, w))| self.qdq_from(t * self.task_groups(), w, o));
    }

    /// [`IntRounding::qdq`] of the groups from `k0` on (`w` and `out` hold whole groups), on
    /// one thread.
    pub fn qdq_from(&self, k0: usize, w: &[f32], out: &mut [f32]) {
        for (k, (wg, og)) in (k0..).zip(w.chunks(self.group).zip(out.chunks_mut(self.group))) {
            let (p, m) = self.group_codes(k, wg, og);
            let (s, z) = (p.scale, p.zero as f32);
            // (types without a minimum add nothing: a −0 stays −0, as their blocks decode)
            if self.spec.symmetric {
                og.iter_mut().for_each(|c| *c = (*c - z) * s);
            } else {
                og.iter_mut().for_each(|c| *c = (*c - z) * s + m);
            }
        }
    }

    /// Group `k`'s grid (scale and zero point) and the value added after scaling, with the
    /// clamped codes of its weights `wg` for the current parameters written to `out`: what
    /// [`IntRounding::qdq`] decodes and [`IntRounding::codes`] stores.
    fn group_codes(&self, k: usize, wg: &[f32], out: &mut [f32]) -> (QParams, f32) {
        let (qmin, qmax) = self.code_range();
        let p = self.grid(k).p;
        let (s, z, m) = (p.scale, p.zero as f32, self.offset(k));
        let vg = &self.v[k * self.group..(k + 1) * self.group];
        let each = out.iter_mut().zip(wg).zip(vg);
        match self.levels() {
            Some(l) => each.for_each(|((o, &x), &v)| *o = Self::level(l, x, s, v).0),
            None => each.for_each(|((o, &x), &v)| *o = Self::code(x, m, s, z, v).clamp(qmin, qmax)),
        }
        (p, m)
    }

    /// The codes and each group's scale and zero point for the current parameters (what the
    /// layout stores; they decode to [`IntRounding::qdq`]'s values). Groups in parallel.
    pub fn codes(&self, w: &[f32]) -> (Vec<i8>, Vec<QParams>) {
        use rayon::prelude::*;
        let mut codes = vec![0i8; w.len()];
        let mut params = vec![QParams::default(); self.alpha.len()];
        let tg = self.task_groups();
        codes
            .par_chunks_mut(tg * self.group)
            .zip(w.par_chunks(tg * self.group))
            .zip(params.par_chunks_mut(tg))
            .enumerate()
            .for_each(|(t, ((cs, ws), ps))| {
                let mut buf = vec![0f32; self.group];
                let groups = cs.chunks_mut(self.group).zip(ws.chunks(self.group)).zip(ps);
                for (k, ((cg, wg), p)) in (t * tg..).zip(groups) {
                    *p = self.group_codes(k, wg, &mut buf).0;
                    for (c, &q) in cg.iter_mut().zip(&buf) {
                        *c = q as i8;
                    }
                }
            });
        (codes, params)
    }

    /// The straight-through gradients of the loss, given its gradient `dq` with respect to the
    /// fake-quantized weights (as [`IntRounding::qdq`] computed them from `w`). Groups in
    /// parallel ([`IntRounding::grads_from`] is the serial reference).
    pub fn grads(&self, w: &[f32], dq: &[f32]) -> IntGrads {
        use rayon::prelude::*;
        let mut gv = vec![0f32; w.len()];
        let (mut ga, mut gb) = (vec![0f32; self.alpha.len()], vec![0f32; self.beta.len()]);
        let tg = self.task_groups();
        let n = tg * self.group;
        gv.par_chunks_mut(n)
            .zip(ga.par_chunks_mut(tg))
            .zip(gb.par_chunks_mut(tg))
            .zip(w.par_chunks(n).zip(dq.par_chunks(n)))
            .enumerate()
            .for_each(|(t, (((gv, ga), gb), (w, dq)))| {
                self.grads_from(t * tg, w, dq, (gv, ga, gb))
            });
        IntGrads {
            v: gv,
            alpha: ga,
            beta: gb,
        }
    }

    /// [`IntRounding::grads`] of the groups from `k0` on (whole groups of `w` and `dq`), into
    /// `out` (the offsets' gradients and the two factors'), on one thread.
    pub fn grads_from(
        &self,
        k0: usize,
        w: &[f32],
        dq: &[f32],
        out: (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (qmin, qmax) = self.code_range();
        let (gv, ga, gb) = out;
        let groups = w.chunks(self.group).zip(dq.chunks(self.group));
        for (j, ((wg, dg), vo)) in groups.zip(gv.chunks_mut(self.group)).enumerate() {
            let k = k0 + j;
            let g = self.grid(k);
            let (s, z) = (g.p.scale, g.p.zero as f32);
            let vg = &self.v[k * self.group..(k + 1) * self.group];
            if let Some(l) = self.levels() {
                // a non-linear grid: the value moves by the scale times the segment's width
                for (((o, &x), &d), &v) in vo.iter_mut().zip(wg).zip(dg).zip(vg) {
                    *o = d * s * Self::level(l, x, s, v).1;
                }
                continue;
            }
            if self.fixed.is_some() {
                // fixed grids: only the offsets move (a zero scale stops them)
                let m = self.offset(k);
                for (((o, &x), &d), &v) in vo.iter_mut().zip(wg).zip(dg).zip(vg) {
                    let c = Self::code(x, m, s, z, v);
                    *o = if s != 0.0 && (qmin..=qmax).contains(&c) {
                        d * s
                    } else {
                        0.0
                    };
                }
                continue;
            }
            // Σ dL/dw̃·dw̃/ds, and Σ dL/dw̃ over the clamped codes (the zero point's path)
            let (mut ds, mut dz) = (0f64, 0f64);
            for (((o, &x), &d), &v) in vo.iter_mut().zip(wg).zip(dg).zip(vg) {
                let r = round(x / s + v);
                let c = r + z;
                if (qmin..=qmax).contains(&c) {
                    // w̃ = r·s (the zero point cancels)
                    *o = d * s;
                    ds += d as f64 * (r - x / s) as f64;
                } else {
                    let c = c.clamp(qmin, qmax);
                    ds += d as f64 * (c - z) as f64;
                    dz += d as f64;
                }
            }
            // asymmetric: outside the grid w̃ = (c − z)·s with z = qmin − min'/s (unclamped),
            // so dw̃ = ((c − z) − min'/s)·ds + dmin'
            let mut direct = 0f64;
            if !self.spec.symmetric && !g.zero_clamped {
                ds -= dz * (g.lo / s) as f64;
                direct = dz;
            }
            ga[j] = (ds * g.ds_dhi as f64 * self.hi[k] as f64) as f32;
            gb[j] = ((ds * g.ds_dlo as f64 + direct) * self.lo[k] as f64) as f32;
        }
    }

    /// One signed step: `p −= lr·sign(g)` (no move where `g` is 0), offsets kept in
    /// [−0.5, 0.5] and factors in [0, 1]; `lr_v` for the offsets, `lr_mm` for the factors.
    pub fn step(&mut self, g: &IntGrads, lr_v: f32, lr_mm: f32) {
        let sgn = |x: f32| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        for (p, &d) in self.v.iter_mut().zip(&g.v) {
            *p = (*p - lr_v * sgn(d)).clamp(-0.5, 0.5);
        }
        for (p, &d) in self.alpha.iter_mut().zip(&g.alpha) {
            *p = (*p - lr_mm * sgn(d)).clamp(0.0, 1.0);
        }
        for (p, &d) in self.beta.iter_mut().zip(&g.beta) {
            *p = (*p - lr_mm * sgn(d)).clamp(0.0, 1.0);
        }
    }
}

/// Each block of `w` (rows of `cols`) on `ty`'s grid: per group the scale and zero point and
/// the value added after scaling. ggml's own fit without `importance` and rounding offsets `v`;
/// otherwise the importance-weighted search ([`crate::ggml::CodeGrid::fit_weighted`]) scoring
/// the codes with offsets `v`. Blocks are independent: fitted in parallel, in order.
fn fit_ggml_blocks(
    ty: crate::ggml::GgmlType,
    w: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
    v: Option<&[f32]>,
) -> Result<(Vec<QParams>, Vec<f32>), String> {
    use rayon::prelude::*;
    let g = ty.grid().ok_or_else(|| format!("{ty} has no code grid"))?;
    let (block, group) = (ty.block().0, g.group());
    if cols == 0 || !cols.is_multiple_of(block) || !w.len().is_multiple_of(cols) {
        return Err(format!(
            "{cols} columns are not whole {ty} blocks of {block}"
        ));
    }
    if importance.is_some_and(|q| q.len() != cols) {
        return Err(format!("an importance per column: {cols} wanted"));
    }
    if v.is_some_and(|v| v.len() != w.len()) {
        return Err(format!("a rounding offset per weight: {} wanted", w.len()));
    }
    let ones;
    let importance = match (importance, v) {
        (None, Some(_)) => {
            ones = vec![1f32; cols];
            Some(&ones[..])
        }
        (q, _) => q,
    };
    let per = block / group;
    let mut fitted = vec![(QParams::default(), 0f32); w.len() / group];
    fitted
        .par_chunks_mut(per)
        .zip(w.par_chunks(block))
        .enumerate()
        .for_each(|(k, (ps, b))| match importance {
            Some(q) => {
                let c0 = (k * block) % cols;
                let vb = v.map(|v| &v[k * block..(k + 1) * block]);
                g.fit_weighted(b, &q[c0..c0 + block], vb, ps)
            }
            None => g.fit(b, ps),
        });
    Ok(fitted.into_iter().unzip())
}

/// Round half to even (torch.round) by the add-and-subtract trick (two additions where
/// `round_ties_even` is a libm call at the baseline x86-64 level), after a clamp to ±2^22:
/// exact there, and beyond it every caller's code is outside any grid's range, which is all
/// they ask of it. (A branch to `round_ties_even` for large values compiled to a select that
/// called libm for every value.)
#[inline]
fn round(x: f32) -> f32 {
    crate::rtn::round_even_small(x.clamp(-4_194_304.0, 4_194_304.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..rows * cols)
            .map(|i| {
                // a few outlier columns, as real weights have
                let big = if i % cols == 7 { 6.0 } else { 1.0 };
                (rng.normal() * 0.02 * big) as f32
            })
            .collect()
    }

    /// With no offsets and whole ranges, the fake-quantized weights are the layout's round to
    /// nearest bit for bit (rtn::fit, quantize, dequantize), symmetric and asymmetric.
    #[test]
    fn untuned_is_round_to_nearest() {
        let (rows, cols) = (6, 64);
        let w = weights(rows, cols, 1);
        for symmetric in [true, false] {
            for bits in [4, 8] {
                let spec = IntSpec { bits, symmetric };
                for group in [Some(32), None] {
                    let r = IntRounding::new(spec, group, DType::BF16, &w, rows, cols);
                    let mut got = vec![0f32; w.len()];
                    r.qdq(&w, &mut got);
                    let gs = group.unwrap_or(cols);
                    for (k, wg) in w.chunks(gs).enumerate() {
                        let (mn, mx) = crate::rtn::min_max(wg);
                        let p = fit(spec, mn, mx, DType::BF16);
                        let mut c = vec![0i8; gs];
                        crate::rtn::quantize(spec, p, wg, &mut c);
                        let mut want = vec![0f32; gs];
                        crate::rtn::dequantize(p, &c, &mut want);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got[k * gs..(k + 1) * gs]), bits(&want));
                        let (codes, params) = r.codes(&w);
                        assert_eq!(&codes[k * gs..(k + 1) * gs], &c[..]);
                        assert_eq!(params[k], p);
                    }
                }
            }
        }
    }

    /// The parallel qdq, codes and gradients equal one serial pass over all groups, bit for bit
    /// (random offsets and factors; integer grids, groups and whole rows, and a ggml grid; more
    /// groups than one task takes).
    #[test]
    fn parallel_groups_equal_the_serial_reference() {
        let (rows, cols) = (96, 512);
        let w = weights(rows, cols, 21);
        let mut rng = Rng::new(8);
        let dq: Vec<f32> = (0..w.len()).map(|_| rng.normal() as f32).collect();
        let mut cases = Vec::new();
        for symmetric in [true, false] {
            let spec = IntSpec { bits: 3, symmetric };
            for group in [Some(32), None] {
                cases.push(IntRounding::new(spec, group, DType::F16, &w, rows, cols));
            }
        }
        for ty in [crate::ggml::GgmlType::Q4_K, crate::ggml::GgmlType::IQ4_XS] {
            cases.push(IntRounding::on_ggml_fit(ty, &w, rows, cols, None).unwrap());
        }
        for mut r in cases {
            for v in r.v.iter_mut() {
                *v = (rng.uniform() - 0.5) as f32;
            }
            for f in r.alpha.iter_mut().chain(r.beta.iter_mut()) {
                *f = 0.7 + 0.3 * rng.uniform() as f32;
            }
            assert!(w.len() / r.group > r.task_groups());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (mut par, mut ser) = (vec![0f32; w.len()], vec![0f32; w.len()]);
            r.qdq(&w, &mut par);
            r.qdq_from(0, &w, &mut ser);
            assert_eq!(bits(&par), bits(&ser));
            let (codes, params) = r.codes(&w);
            let decoded: Vec<f32> = codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let (p, k) = (params[i / r.group], i / r.group);
                    let s = (c as i32 - p.zero) as f32 * p.scale;
                    if r.spec.symmetric {
                        s
                    } else {
                        s + r.offset(k)
                    }
                })
                .collect();
            assert_eq!(bits(&decoded), bits(&ser));
            let g = r.grads(&w, &dq);
            let mut want = (
                vec![0f32; w.len()],
                vec![0f32; r.alpha.len()],
                vec![0f32; r.beta.len()],
            );
            r.grads_from(0, &w, &dq, (&mut want.0, &mut want.1, &mut want.2));
            assert_eq!(bits(&g.v), bits(&want.0));
            assert_eq!(bits(&g.alpha), bits(&want.1));
            assert_eq!(bits(&g.beta), bits(&want.2));
            assert!(g.v.iter().any(|&x| x != 0.0));
        }
    }

    /// Started on another method's grids, the untuned parameters give back that method's codes
    /// for the weights it decoded (random scales and zero points, every scale dtype).
    #[test]
    fn on_grid_keeps_given_codes() {
        let mut rng = Rng::new(4);
        let (rows, cols, g) = (5, 48, 16);
        for symmetric in [true, false] {
            for bits in [2, 3, 4, 8] {
                let spec = IntSpec { bits, symmetric };
                for dt in [DType::F32, DType::BF16, DType::F16] {
                    let params: Vec<QParams> = (0..rows * cols / g)
                        .map(|_| QParams {
                            scale: crate::dtype::round_to(dt, (rng.uniform() * 0.05 + 1e-4) as f32),
                            zero: if symmetric {
                                0
                            } else {
                                spec.qmin()
                                    + (rng.next_u64() % (spec.qmax() - spec.qmin() + 1) as u64)
                                        as i32
                            },
                        })
                        .collect();
                    let codes: Vec<i8> = (0..rows * cols)
                        .map(|_| {
                            (spec.qmin()
                                + (rng.next_u64() % (spec.qmax() - spec.qmin() + 1) as u64) as i32)
                                as i8
                        })
                        .collect();
                    let w: Vec<f32> = codes
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| {
                            let p = params[i / g];
                            (c as i32 - p.zero) as f32 * p.scale
                        })
                        .collect();
                    let r = IntRounding::on_grid(spec, Some(g), dt, &params, rows, cols);
                    let (got, gp) = r.codes(&w);
                    assert_eq!(got, codes, "{bits} {symmetric} {dt:?}");
                    assert_eq!(gp, params, "{bits} {symmetric} {dt:?}");
                }
            }
        }
    }

    /// On a ggml block type's own grids, with random offsets, the codes packed into the type's
    /// blocks decode (by ggml's dequantizer) to exactly the fake-quantized weights; with no
    /// offsets the codes are the type's round to nearest on its fit; offsets' gradients are the
    /// scale times the weights' gradient (0 where a code is clamped).
    #[test]
    fn ggml_grids_decode_to_the_tuned_weights() {
        use crate::ggml::GgmlType;
        let (rows, cols) = (3, 512);
        let w = weights(rows, cols, 9);
        let mut rng = Rng::new(4);
        let importance: Vec<f32> = (0..cols).map(|_| rng.uniform() as f32 * 4.0).collect();
        let types = GgmlType::quantized_types().filter(|t| t.grid().is_some());
        for (ty, weighted) in types.flat_map(|t| [(t, false), (t, true)]) {
            let g = ty.grid().unwrap();
            let (block, group) = (ty.block().0, g.group());
            let mut ps = vec![(QParams::default(), 0f32); block / group];
            let (mut params, mut offsets) = (vec![], vec![]);
            for b in w.chunks(block) {
                if weighted {
                    g.fit_weighted(b, &importance[..block], None, &mut ps);
                } else {
                    g.fit(b, &mut ps);
                }
                params.extend(ps.iter().map(|p| p.0));
                offsets.extend(ps.iter().map(|p| p.1));
            }
            let mut r = IntRounding::on_ggml_grid(ty, &params, &offsets, rows, cols).unwrap();
            // (on_ggml_fit is this fit)
            let per_col: Vec<f32> = (0..cols).map(|j| importance[j % block]).collect();
            assert_eq!(
                IntRounding::on_ggml_fit(ty, &w, rows, cols, weighted.then_some(&per_col[..]))
                    .as_ref(),
                Ok(&r)
            );
            let mut rng = Rng::new(ty as u64);
            for v in r.v.iter_mut() {
                *v = (rng.uniform() - 0.5) as f32;
            }
            // a refit for offsets 0 is the fit itself
            let mut again = r.clone();
            again.v.fill(0.0);
            if weighted {
                again.refit(&w, Some(&per_col)).unwrap();
                assert_eq!(again.codes(&w).1, params, "{ty}");
            }
            let mut q = vec![0f32; w.len()];
            r.qdq(&w, &mut q);
            let (codes, ps2) = r.codes(&w);
            assert_eq!(ps2, params, "{ty}");
            // refitted for these offsets, the grids still decode exactly (below, on a copy)
            let mut refitted = r.clone();
            refitted
                .refit(&w, weighted.then_some(&per_col[..]))
                .unwrap();
            assert_ne!(
                refitted.codes(&w).1,
                params,
                "{ty}: the refit moved no scale"
            );
            let mut rq = vec![0f32; w.len()];
            refitted.qdq(&w, &mut rq);
            // the codes and grids of `r` packed into the type's blocks, row by row, decoded by
            // ggml's dequantizer
            let through_ggml = |r: &IntRounding| -> Vec<f32> {
                let (codes, ps) = r.codes(&w);
                let offs = r.offsets();
                let gs = cols / group;
                let mut bytes = vec![0u8; ty.row_bytes(cols)];
                let mut back = vec![0f32; w.len()];
                for (row, out) in back.chunks_mut(cols).enumerate() {
                    let d: Vec<f32> = ps[row * gs..(row + 1) * gs]
                        .iter()
                        .map(|p| p.scale)
                        .collect();
                    g.pack_row(
                        &codes[row * cols..(row + 1) * cols],
                        &d,
                        &offs[row * gs..(row + 1) * gs],
                        &mut bytes,
                    );
                    crate::ggml::dequantize_row(ty, &bytes, out);
                }
                back
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&through_ggml(&r)), bits(&q), "{ty}");
            assert_eq!(bits(&through_ggml(&refitted)), bits(&rq), "{ty}, refitted");
            // gradients: only the offsets, scale times dL/dw̃ inside the code range
            let dq: Vec<f32> = (0..w.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let gr = r.grads(&w, &dq);
            assert!(gr.alpha.iter().chain(&gr.beta).all(|&x| x == 0.0));
            let (qmin, qmax) = g.code_range();
            for (i, (&gv, &c)) in gr.v.iter().zip(&codes).enumerate() {
                let p = params[i / group];
                let inside = p.scale != 0.0 && {
                    let raw = ((w[i] - offsets[i / group]) / p.scale + r.v[i]).round_ties_even()
                        + p.zero as f32;
                    raw >= qmin as f32 && raw <= qmax as f32
                };
                let want = match g.levels() {
                    // a non-linear grid: the scale times the width of the segment between the
                    // levels around w/s (none beyond the end levels)
                    Some(l) if p.scale != 0.0 => {
                        let (y, t) = (w[i] / p.scale, &l.values);
                        match t.windows(2).find(|s| s[0] as f32 <= y && y < s[1] as f32) {
                            Some(s) if y > t[0] as f32 => dq[i] * p.scale * (s[1] - s[0]) as f32,
                            _ => 0.0,
                        }
                    }
                    Some(_) => 0.0,
                    None if inside => dq[i] * p.scale,
                    None => 0.0,
                };
                assert_eq!(gv, want, "{ty} {i} code {c}");
            }
            // untuned: factors never move, a step moves offsets only
            r.step(&gr, 0.1, 0.1);
            assert!(r.alpha.iter().chain(&r.beta).all(|&x| x == 1.0));
        }
    }

    /// The offsets' gradient is the scale times the weights' gradient inside the grid and 0
    /// where a code is clamped; a factor's gradient has the sign that shrinks the error of a
    /// group whose outlier costs the other weights their resolution.
    #[test]
    fn straight_through_gradients() {
        let spec = IntSpec {
            bits: 4,
            symmetric: false,
        };
        let w: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
        let mut r = IntRounding::new(spec, None, DType::F32, &w, 1, 8);
        r.alpha[0] = 0.5;
        let g = r.grads(&w, &[1.0; 8]);
        let s = r.grid(0).p.scale;
        let mut q = vec![0f32; 8];
        r.qdq(&w, &mut q);
        for i in 0..8 {
            let clamped = (q[i] - w[i]).abs() > s;
            assert_eq!(g.v[i], if clamped { 0.0 } else { s }, "{i}");
        }
        // the loss Σ w̃: its gradient in α is d/dα of Σ w̃ through the scale
        assert!(g.alpha[0].is_finite() && g.beta[0].is_finite());
    }

    /// Signed steps on a linear layer's output error (y = x·Wᵀ against the float weights' y)
    /// end at least 3 % below round to nearest, keeping the best state: 4-bit groups of 32,
    /// symmetric and asymmetric (measured here: 25 % and 5 % lower; most of it from the
    /// clipping factors, as the reference reports at 4 bits).
    #[test]
    fn signed_steps_beat_round_to_nearest_on_a_linear() {
        let (rows, cols, tokens) = (16, 64, 96);
        let w = weights(rows, cols, 3);
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| (rng.normal() * if i % cols == 7 { 4.0 } else { 1.0 }) as f32)
            .collect();
        let matmul = |wq: &[f32]| -> Vec<f64> {
            let mut y = vec![0f64; tokens * rows];
            for t in 0..tokens {
                for o in 0..rows {
                    y[t * rows + o] = (0..cols)
                        .map(|i| x[t * cols + i] as f64 * wq[o * cols + i] as f64)
                        .sum();
                }
            }
            y
        };
        let target = matmul(&w);
        let mse = |wq: &[f32]| -> f64 {
            let y = matmul(wq);
            y.iter()
                .zip(&target)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                / y.len() as f64
        };
        for symmetric in [true, false] {
            let spec = IntSpec { bits: 4, symmetric };
            let mut r = IntRounding::new(spec, Some(32), DType::BF16, &w, rows, cols);
            let mut wq = vec![0f32; w.len()];
            r.qdq(&w, &mut wq);
            let rtn = mse(&wq);
            let (iters, lr) = (200, 1.0 / 200.0);
            let mut best = (f64::MAX, r.clone());
            for it in 0..iters {
                r.qdq(&w, &mut wq);
                let y = matmul(&wq);
                let loss = y
                    .iter()
                    .zip(&target)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    / y.len() as f64;
                if loss < best.0 {
                    best = (loss, r.clone());
                }
                // dL/dW̃ = (2/N)·(Y − T)ᵀ X
                let mut dq = vec![0f32; w.len()];
                for o in 0..rows {
                    for i in 0..cols {
                        let g: f64 = (0..tokens)
                            .map(|t| {
                                (y[t * rows + o] - target[t * rows + o]) * x[t * cols + i] as f64
                            })
                            .sum();
                        dq[o * cols + i] = (2.0 * g / y.len() as f64) as f32;
                    }
                }
                let g = r.grads(&w, &dq);
                let lr_now = lr * (1.0 - it as f32 / iters as f32);
                r.step(&g, lr_now, lr_now);
            }
            best.1.qdq(&w, &mut wq);
            let tuned = mse(&wq);
            assert!(
                tuned < 0.97 * rtn,
                "symmetric {symmetric}: tuned {tuned:e} vs round to nearest {rtn:e}"
            );
        }
    }
}
