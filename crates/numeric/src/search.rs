//! Importance-weighted search of a group's scale (and minimum): the zero-step mode of learned
//! rounding (`--method signround --iters 0`), its default start and, with the tuned rounding
//! offsets added before rounding, its refits of the ggml types' scales during tuning; after
//! Intel AutoRound's `iters=0` ("optimized RTN") and its GGUF tuning, which in turn adapt
//! llama.cpp's `make_qkx*_quants` / `make_qx_quants` searches.
//!
//! Each weight's error counts by its importance `w` (per column: the mean square of that input
//! channel over the calibration tokens, AutoRound's and llama-imatrix's importance matrix) —
//! the diagonal of the layer's output-error Hessian, with no extra weighting by the weight's own
//! size (llama.cpp multiplies its importance by `sqrt(σ² + x²)`; AutoRound does not, nor do we).
//! Candidate grids are tried, each refitted by weighted least squares to the codes it gives, and
//! the one with the lowest weighted error after the parameters are rounded to what the layout
//! stores (`snap`) is kept. Sums run in fixed lanes: the same result on every machine.
//!
//! Not llama-quantize's bytes: a different search, on purpose. Pure functions over slices.

use crate::ggml::iq4::Levels;

/// `w`, unless it carries no importance at all (all zero, or not finite): then all ones (plain
/// least squares).
fn weights_or_ones(w: &[f32]) -> std::borrow::Cow<'_, [f32]> {
    let s: f32 = w.iter().sum();
    if s > 0.0 && s.is_finite() {
        std::borrow::Cow::Borrowed(w)
    } else {
        std::borrow::Cow::Owned(vec![1.0; w.len()])
    }
}

/// Lanes the sums below are kept in (independent accumulators the compiler can vectorize;
/// the order of additions is fixed, so results do not depend on the machine or thread count).
const LANES: usize = 8;

/// `v`, or zeros (no rounding offsets) of `n` values.
fn offsets_or_zeros(v: Option<&[f32]>, n: usize) -> std::borrow::Cow<'_, [f32]> {
    match v {
        Some(v) => {
            assert_eq!(v.len(), n, "a rounding offset per value");
            std::borrow::Cow::Borrowed(v)
        }
        None => std::borrow::Cow::Owned(vec![0.0; n]),
    }
}

/// The code of `x`: `clamp(round((x − off)·is + r), lo, hi)`, `r` its rounding offset.
#[inline(always)]
fn code(x: f32, r: f32, off: f32, is: f32, lo: f32, hi: f32) -> f32 {
    crate::rtn::round_even_small(((x - off) * is + r).clamp(-4e6, 4e6)).clamp(lo, hi)
}

/// `Σw·q`, `Σw·q²`, `Σw·x·q` for the codes `q = clamp(round((x − off)·is + r), lo, hi)`.
fn code_sums(x: &[f32], w: &[f32], r: &[f32], off: f32, is: f32, lo: f32, hi: f32) -> [f64; 3] {
    sums_of(x, w, r, |x, r| code(x, r, off, is, lo, hi))
}

/// `Σw·q`, `Σw·q²`, `Σw·x·q` for the codes `q = code(x, r)` of each value `x` with its rounding
/// offset `r`, in [`LANES`] fixed lanes.
#[inline(always)]
fn sums_of(x: &[f32], w: &[f32], r: &[f32], code: impl Fn(f32, f32) -> f32) -> [f64; 3] {
    let mut a = [[0f32; LANES]; 3];
    let (xc, wc, rc) = (
        x.chunks_exact(LANES),
        w.chunks_exact(LANES),
        r.chunks_exact(LANES),
    );
    let (xr, wr, rr) = (xc.remainder(), wc.remainder(), rc.remainder());
    for ((xs, ws), rs) in xc.zip(wc).zip(rc) {
        for k in 0..LANES {
            let q = code(xs[k], rs[k]);
            let wq = ws[k] * q;
            a[0][k] += wq;
            a[1][k] += wq * q;
            a[2][k] += wq * xs[k];
        }
    }
    for (k, ((&v, &wk), &rk)) in xr.iter().zip(wr).zip(rr).enumerate() {
        let q = code(v, rk);
        a[0][k] += wk * q;
        a[1][k] += wk * q * q;
        a[2][k] += wk * q * v;
    }
    a.map(|l| l.iter().map(|&v| v as f64).sum())
}

/// `Σw`, `Σw·x`, `Σw·x²` of a group.
fn moments(x: &[f32], w: &[f32]) -> [f64; 3] {
    let mut m = [0f64; 3];
    for (&v, &wk) in x.iter().zip(w) {
        let (v, wk) = (v as f64, wk as f64);
        m[0] += wk;
        m[1] += wk * v;
        m[2] += wk * v * v;
    }
    m
}

/// The weighted squared error `Σw·(s·q + m − x)²` from the sums (`[Σw, Σwx, Σwx²]` and
/// [`code_sums`] of the codes `q`).
fn error_of(mo: [f64; 3], cs: [f64; 3], s: f32, m: f32) -> f64 {
    let (s, m) = (s as f64, m as f64);
    let [sw, sx, sxx] = mo;
    let [sl, sl2, sxl] = cs;
    (sxx - 2.0 * s * sxl - 2.0 * m * sx + s * s * sl2 + 2.0 * s * m * sl + m * m * sw).max(0.0)
}

/// Weighted squared error of `x` (importance `w`; plain when it has none) against its values
/// `s·q + m`, `q = clamp(round((x − m)/s + v), lo, hi)` (nearest without rounding offsets `v`;
/// a zero or non-finite scale: every value `m`).
pub fn error(x: &[f32], w: &[f32], v: Option<&[f32]>, s: f32, m: f32, lo: f32, hi: f32) -> f32 {
    error_with(x, w, v, s, m, |x, r, is| code(x, r, m, is, lo, hi))
}

/// Weighted squared error of `x` (importance `w`; plain when it has none, rounding offsets `v`
/// or none) against `s·q + m`, `q = code(x, v, 1/s)` (1/s 0 and every value `m` for a zero or
/// non-finite scale), in [`LANES`] fixed lanes.
#[inline(always)]
fn error_with(
    x: &[f32],
    w: &[f32],
    v: Option<&[f32]>,
    s: f32,
    m: f32,
    code: impl Fn(f32, f32, f32) -> f32,
) -> f32 {
    let w = weights_or_ones(w);
    let r = offsets_or_zeros(v, x.len());
    let is = if s == 0.0 || !s.is_finite() {
        0.0
    } else {
        1.0 / s
    };
    let s = if is == 0.0 { 0.0 } else { s };
    let mut a = [0f32; LANES];
    let (xc, wc, rc) = (
        x.chunks_exact(LANES),
        w.chunks_exact(LANES),
        r.chunks_exact(LANES),
    );
    let (xr, wr, rr) = (xc.remainder(), wc.remainder(), rc.remainder());
    for ((xs, ws), rs) in xc.zip(wc).zip(rc) {
        for k in 0..LANES {
            let d = xs[k] - (s * code(xs[k], rs[k], is) + m);
            a[k] += ws[k] * d * d;
        }
    }
    for (k, ((&v, &wk), &rk)) in xr.iter().zip(wr).zip(rr).enumerate() {
        let d = v - (s * code(v, rk, is) + m);
        a[k] += wk * d * d;
    }
    a.iter().sum()
}

/// The value of largest magnitude (sign kept, the first on ties), if the group is not all
/// (near) zero and it is finite.
fn signed_extreme(x: &[f32]) -> Option<f32> {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax >= 1e-15 && amax.is_finite()).then_some(max)
}

/// The level in `lo..=hi` nearest `l0`'s neighbourhood with the lowest `error(l)`: `l0` itself
/// (already clamped into range) unless one of its neighbours within 2 does better (the first
/// of equals) — how a super-block's sub-block scale levels are refined.
pub fn best_neighbour(l0: i32, (lo, hi): (i32, i32), error: impl Fn(i32) -> f32) -> i32 {
    (l0 - 2..=l0 + 2)
        .filter(|l| (lo..=hi).contains(l))
        .map(|l| (error(l), l))
        .fold((f32::INFINITY, l0), |a, b| if b.0 < a.0 { b } else { a })
        .1
}

/// A symmetric candidate's two scales — `1/is` and the least-squares refit to its codes (sums
/// `cs`, moments `mo`) — rounded by `snap` and scored on those codes: `best` (error, scale)
/// becomes the better one if either beats it.
fn keep_best(
    best: &mut (f64, f32),
    mo: [f64; 3],
    cs: [f64; 3],
    is: f32,
    snap: impl Fn(f32) -> f32,
) {
    let fit = if cs[1] > 0.0 {
        (cs[2] / cs[1]) as f32
    } else {
        1.0 / is
    };
    for s in [1.0 / is, fit] {
        let s = snap(s);
        let e = error_of(mo, cs, s, 0.0);
        if e < best.0 {
            *best = (e, s);
        }
    }
}

/// Symmetric grid `value = s·q`, `q` in `lo..=hi`: the scale (signed: negative when the
/// candidates are taken from the signed extreme, as ggml's Q4_0 / Q3_K / Q6_K do) with the
/// lowest weighted error. Candidates are `1/s = −(nmax + δ)/max` (`signed`, `max` the value of
/// largest magnitude) or `(nmax + δ)/amax`, `δ` over ±25 % of `nmax` in steps of 1.25 % and on
/// to ±80 % in steps of 5 % (AutoRound sweeps ±75 % in 201 steps; these do as well measured,
/// with the refit); each is tried
/// as it is and refitted to its codes by least squares, rounded by `snap`, and scored on its
/// codes. Codes are `round(x/s + v)` with rounding offsets `v` (learned rounding's refits);
/// nearest without. All-zero groups give 0.
pub fn sym(
    x: &[f32],
    w: &[f32],
    v: Option<&[f32]>,
    nmax: f32,
    (lo, hi): (i32, i32),
    signed: bool,
    snap: impl Fn(f32) -> f32,
) -> f32 {
    let Some(max) = signed_extreme(x) else {
        return 0.0;
    };
    let amax = max.abs();
    let base = if signed { -max } else { amax };
    let w = weights_or_ones(w);
    let r = offsets_or_zeros(v, x.len());
    let mo = moments(x, &w);
    let (lo, hi) = (lo as f32, hi as f32);
    let mut best = (f64::INFINITY, 0f32);
    // fine steps within ±25 %, coarse ones out to ±80 %
    let fine = (-20i32..=20).map(|k| 0.0125 * k as f32);
    let coarse = (6i32..=16).flat_map(|k| [-0.05 * k as f32, 0.05 * k as f32]);
    for f in fine.chain(coarse) {
        let is = nmax * (1.0 + f) / base;
        let cs = code_sums(x, &w, &r, 0.0, is, lo, hi);
        keep_best(&mut best, mo, cs, is, &snap);
    }
    best.1
}

/// Weighted squared error of `x` (importance `w`; plain when it has none) against its values
/// `s·q` on a non-linear grid, `q` = the level of `x/s` with rounding offsets `v` (nearest
/// without; a zero or non-finite scale: every value 0).
/// (Not inlined: on its own the levels' loads are hoisted and the lanes vectorize.)
#[inline(never)]
pub fn level_error(x: &[f32], w: &[f32], v: Option<&[f32]>, levels: &Levels, s: f32) -> f32 {
    error_with(x, w, v, s, 0.0, |x, r, is| levels.code(x * is, r).0)
}

/// [`sums_of`] for the levels of `x·is` with offsets `r` (not inlined, as [`level_error`]).
#[inline(never)]
fn level_sums(x: &[f32], w: &[f32], r: &[f32], levels: &Levels, is: f32) -> [f64; 3] {
    sums_of(x, w, r, |x, r| levels.code(x * is, r).0)
}

/// Non-linear grid `value = s·q`, `q` one of `levels` (IQ4's): the scale with the lowest
/// weighted error. As ggml's IQ4 search, candidates map the value of largest magnitude to an
/// end level (the grid is not symmetric: either end) scaled by `1 + δ` — ggml tries `δ` within
/// ±5.5 %, these ±80 % in steps of 5 % — each tried as it is and
/// refitted to its levels by least squares, rounded by `snap`, and scored on those levels.
/// Importance `w` alone weighs the error (ggml's weights are `w·sqrt(σ² + x²)`). Levels with
/// rounding offsets `v` as [`Levels::code`] chooses them. All-zero groups give 0.
pub fn levels(
    x: &[f32],
    w: &[f32],
    v: Option<&[f32]>,
    levels: &Levels,
    snap: impl Fn(f32) -> f32,
) -> f32 {
    let Some(max) = signed_extreme(x) else {
        return 0.0;
    };
    let w = weights_or_ones(w);
    let r = offsets_or_zeros(v, x.len());
    let mo = moments(x, &w);
    let ends = [levels.values[0] as f32, levels.values[15] as f32];
    let mut best = (f64::INFINITY, 0f32);
    // ±80 % in steps of 5 % (measured: as low an error as [`sym`]'s finer sweep, at half the cost)
    let steps = (-16i32..=16).map(|k| 0.05 * k as f32);
    for (f, end) in steps.flat_map(|f| ends.map(|e| (f, e))) {
        let is = end * (1.0 + f) / max;
        let cs = level_sums(x, &w, &r, levels, is);
        keep_best(&mut best, mo, cs, is, &snap);
    }
    best.1
}

/// Asymmetric grid `value = s·q + m`, `q` in `0..=nmax`: the scale and minimum with the lowest
/// weighted error (AutoRound's iterative weighted least squares: the min/max grid, then for
/// `nmax − 0.9 + 0.05·k`, `k` in 0..=36 — from 3 bits up `nmax·(1 ± 50 %)` in 41 steps —
/// levels from the minimum so far up to the maximum,
/// the scale and minimum refitted to those codes, the minimum held at or below 0 when
/// `clamp_min` — the K-quants store `−m` unsigned). `snap` rounds a candidate `(s, m)` to what
/// the layout stores; candidates are scored on their codes, `round((x − m)/s + v)` with
/// rounding offsets `v` (nearest without).
pub fn asym(
    x: &[f32],
    w: &[f32],
    v: Option<&[f32]>,
    nmax: i32,
    clamp_min: bool,
    snap: impl Fn(f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let (mut mn, mut mx) = (f32::MAX, f32::MIN);
    for &v in x {
        mn = mn.min(v);
        mx = mx.max(v);
    }
    if clamp_min {
        mn = mn.min(0.0);
    }
    // (also NaN: no range)
    if mx.partial_cmp(&mn) != Some(std::cmp::Ordering::Greater) || !(mx - mn).is_finite() {
        // one value repeated (or none): that value as the minimum
        return snap(0.0, if mn.is_finite() { mn } else { 0.0 });
    }
    let w = weights_or_ones(w);
    let r = offsets_or_zeros(v, x.len());
    let mo = moments(x, &w);
    let [sw, sx, _] = mo;
    let top = nmax as f32;
    let (s0, m0) = snap((mx - mn) / top, mn);
    let mut best = (
        error_of(
            mo,
            code_sums(x, &w, &r, mn, top / (mx - mn), 0.0, top),
            s0,
            m0,
        ),
        s0,
        m0,
    );
    // as the reference: an accepted candidate's minimum is where the next ones' levels start
    // (from 3 bits up, a wider sweep than the reference's finds better grids: measured on
    // weights with uneven importance, 8 % lower error at 4 bits; at 2 bits the reference's)
    let wide = nmax >= 7;
    for k in 0..if wide { 41 } else { 37 } {
        let factor = if wide {
            top * (1.0 + 0.025 * (k - 20) as f32)
        } else {
            top - 0.9 + 0.05 * k as f32
        };
        let is = factor / (mx - mn);
        let cs = code_sums(x, &w, &r, mn, is, 0.0, top);
        let [sl, sl2, sxl] = cs;
        let det = sw * sl2 - sl * sl;
        if det.is_nan() || det <= 0.0 {
            continue;
        }
        let mut s = ((sw * sxl - sx * sl) / det) as f32;
        let mut m = ((sl2 * sx - sl * sxl) / det) as f32;
        if clamp_min && m > 0.0 {
            m = 0.0;
            s = (sxl / sl2) as f32;
        }
        if s.is_nan() || s <= 0.0 || !s.is_finite() || !m.is_finite() {
            continue;
        }
        let (ss, sm) = snap(s, m);
        let e = error_of(mo, cs, ss, sm);
        if e < best.0 {
            best = (e, ss, sm);
            mn = m;
        }
    }
    (best.1, best.2)
}

/// The scales (and zero points) of one matrix on a compressed-tensors integer grid
/// (`rows × cols`, groups of `group` columns) by [`sym`] / [`asym`], importance `qw` per column:
/// symmetric scales positive, codes `qmin..=qmax`; asymmetric zero points integers in that
/// range, `value = (q − z)·s`; scales rounded to `scale_dtype`.
pub fn int_params(
    spec: crate::rtn::IntSpec,
    group: usize,
    scale_dtype: crate::dtype::DType,
    w: &[f32],
    cols: usize,
    qw: &[f32],
) -> Vec<crate::rtn::QParams> {
    use crate::dtype::round_to;
    use crate::rtn::QParams;
    assert!(group > 0 && cols.is_multiple_of(group) && qw.len() == cols);
    let (qmin, qmax) = (spec.qmin(), spec.qmax());
    let tiny = |s: f32| {
        if s > 0.0 && s.is_finite() {
            s
        } else {
            round_to(scale_dtype, f32::MIN_POSITIVE).max(f32::MIN_POSITIVE)
        }
    };
    use rayon::prelude::*;
    // groups are searched independently: in parallel, in order
    w.par_chunks(group)
        .enumerate()
        .map(|(k, g)| {
            let c0 = (k * group) % cols;
            let wg = &qw[c0..c0 + group];
            if spec.symmetric {
                let s = sym(
                    g,
                    wg,
                    None,
                    (qmax - qmin) as f32 / 2.0,
                    (qmin, qmax),
                    false,
                    |s| round_to(scale_dtype, s),
                );
                QParams {
                    scale: tiny(s),
                    zero: 0,
                }
            } else {
                // value = (q − z)·s with q in qmin..=qmax is s·(q − qmin) + (qmin − z)·s
                let zero_of = |s: f32, m: f32| {
                    (qmin as f32 - m / s)
                        .round_ties_even()
                        .clamp(qmin as f32, qmax as f32)
                };
                let (s, m) = asym(g, wg, None, qmax - qmin, true, |s, m| {
                    let s = tiny(round_to(scale_dtype, s));
                    (s, (qmin as f32 - zero_of(s, m)) * s)
                });
                let s = tiny(s);
                QParams {
                    scale: s,
                    zero: zero_of(s, m) as i32,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = crate::synth::Rng::new(seed);
        let x = (0..n).map(|_| rng.normal() as f32 * 0.02).collect();
        let w = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    30.0
                } else {
                    0.2 + rng.uniform() as f32
                }
            })
            .collect();
        (x, w)
    }

    fn rtn_sym_err(x: &[f32], w: &[f32], nmax: f32, lo: f32, hi: f32) -> f32 {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        error(x, w, None, max / -nmax, 0.0, lo, hi)
    }

    /// The weighted search never does worse than the plain max-scaled grid (it is one of its
    /// candidates) and, over many groups with uneven importance, clearly better.
    #[test]
    fn weighted_search_beats_plain_grids_on_the_weighted_error() {
        let (mut a, mut b, mut c, mut d) = (0f64, 0f64, 0f64, 0f64);
        for seed in 0..200 {
            let (x, w) = noisy(32, seed);
            let s = sym(&x, &w, None, 8.0, (-8, 7), true, |s| s);
            let e = error(&x, &w, None, s, 0.0, -8.0, 7.0);
            let r = rtn_sym_err(&x, &w, 8.0, -8.0, 7.0);
            assert!(e <= r * 1.000_01, "seed {seed}: {e} vs {r}");
            a += e as f64;
            b += r as f64;
            let (s, m) = asym(&x, &w, None, 15, true, |s, m| (s, m));
            let (mn, mx) = x
                .iter()
                .fold((0f32, 0f32), |(p, q), &v| (p.min(v), q.max(v)));
            let e = error(&x, &w, None, s, m, 0.0, 15.0);
            let r = error(&x, &w, None, (mx - mn) / 15.0, mn, 0.0, 15.0);
            assert!(e <= r * 1.000_01 && m <= 0.0, "seed {seed}: {e} vs {r}");
            c += e as f64;
            d += r as f64;
        }
        assert!(a < 0.8 * b, "sym: {a} vs {b}");
        assert!(c < 0.8 * d, "asym: {c} vs {d}");
    }

    /// Integer grids: scales positive and in the scale dtype, zero points in range; importance
    /// all zero falls back to plain least squares instead of NaN.
    #[test]
    fn int_params_are_storable() {
        use crate::dtype::DType;
        use crate::rtn::IntSpec;
        let (x, mut w) = noisy(4 * 64, 9);
        w.truncate(64);
        for symmetric in [true, false] {
            let spec = IntSpec { bits: 4, symmetric };
            for qw in [w.clone(), vec![0.0; 64]] {
                let ps = int_params(spec, 16, DType::BF16, &x, 64, &qw);
                assert_eq!(ps.len(), 16);
                for p in ps {
                    assert!(p.scale > 0.0 && p.scale.is_finite());
                    assert_eq!(crate::dtype::round_to(DType::BF16, p.scale), p.scale);
                    assert!((spec.qmin()..=spec.qmax()).contains(&p.zero));
                    if symmetric {
                        assert_eq!(p.zero, 0);
                    }
                }
            }
        }
    }
}
