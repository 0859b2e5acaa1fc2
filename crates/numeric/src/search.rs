//! Importance-weighted search of a group's scale (and minimum): the zero-step mode of learned
//! rounding (`--method signround --iters 0`), after Intel AutoRound's `iters=0` ("optimized
//! RTN"), which in turn adapts llama.cpp's `make_qkx*_quants` / `make_qx_quants` searches.
//!
//! Each weight's error counts by its importance `w` (per column: the mean square of that input
//! channel over the calibration tokens, AutoRound's and llama-imatrix's importance matrix) —
//! the diagonal of the layer's output-error Hessian, with no extra weighting by the weight's own
//! size (llama.cpp multiplies its importance by `sqrt(σ² + x²)`; AutoRound does not, nor do we).
//! Candidate grids are tried, each refitted by weighted least squares to the codes it gives, and
//! the one with the lowest weighted error *after* the parameters are rounded to what the layout
//! stores (`snap`) and the codes re-rounded is kept.
//!
//! Not llama-quantize's bytes: a different search, on purpose. Pure functions over slices.

/// Weights to use for a group: `w` unless it carries no importance at all (all zero, or not
/// finite), then all ones (plain least squares).
fn usable(w: &[f32]) -> bool {
    let s: f32 = w.iter().sum();
    s > 0.0 && s.is_finite()
}

/// Weighted squared error of `x` (importance `w`; plain when it has none) against its nearest
/// values `s·q + m`, `q` in `lo..=hi` (a zero scale: every value `m`).
pub fn error(x: &[f32], w: &[f32], s: f32, m: f32, lo: f32, hi: f32) -> f32 {
    err(x, usable(w).then_some(w), s, m, lo, hi)
}

/// Weighted squared error of `x` against `value = s·clamp(round((x − m)/s), lo, hi) + m`.
#[inline]
fn err(x: &[f32], w: Option<&[f32]>, s: f32, m: f32, lo: f32, hi: f32) -> f32 {
    if s == 0.0 || !s.is_finite() {
        return x
            .iter()
            .enumerate()
            .map(|(i, &v)| w.map_or(1.0, |w| w[i]) * (v - m) * (v - m))
            .sum();
    }
    let is = 1.0 / s;
    let mut e = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let q = crate::rtn::round_even_small(((v - m) * is).clamp(-4e6, 4e6)).clamp(lo, hi);
        let d = v - (s * q + m);
        e += w.map_or(1.0, |w| w[i]) * d * d;
    }
    e
}

/// Symmetric grid `value = s·q`, `q` in `lo..=hi`: the scale (signed: negative when the
/// candidates are taken from the signed extreme, as ggml's Q4_0 / Q3_K / Q6_K do) with the
/// lowest weighted error. Candidates are `1/s = −(nmax + δ)/max` (`signed`, `max` the value of
/// largest magnitude) or `(nmax + δ)/amax`, `δ` over ±25 % of `nmax` in 41 steps, each refitted
/// to its codes by least squares and rounded by `snap`. All-zero groups give 0.
pub fn sym(
    x: &[f32],
    w: &[f32],
    nmax: f32,
    (lo, hi): (i32, i32),
    signed: bool,
    snap: impl Fn(f32) -> f32,
) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 || !amax.is_finite() {
        return 0.0;
    }
    let w = usable(w).then_some(w);
    let (lo, hi) = (lo as f32, hi as f32);
    let base = if signed { -max } else { amax };
    let mut best = (f32::INFINITY, 0f32);
    for k in -20i32..=20 {
        let f = nmax * (1.0 + 0.0125 * k as f32);
        let is = f / base;
        let (mut sxl, mut sll) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = crate::rtn::round_even_small(v * is).clamp(lo, hi);
            let wi = w.map_or(1.0, |w| w[i]);
            sxl += wi * v * q;
            sll += wi * q * q;
        }
        for s in [1.0 / is, if sll > 0.0 { sxl / sll } else { 1.0 / is }] {
            let s = snap(s);
            let e = err(x, w, s, 0.0, lo, hi);
            if e < best.0 {
                best = (e, s);
            }
        }
    }
    best.1
}

/// Asymmetric grid `value = s·q + m`, `q` in `0..=nmax`: the scale and minimum with the lowest
/// weighted error (AutoRound's iterative weighted least squares: the min/max grid, then for
/// `nmax − 0.9 + 0.05·k`, `k` in 0..=36, levels from the minimum so far up to the maximum, the scale and
/// minimum refitted to those codes, the minimum held at or below 0 when `clamp_min` — the
/// K-quants store `−m` unsigned). `snap` rounds a candidate `(s, m)` to what the layout stores.
pub fn asym(
    x: &[f32],
    w: &[f32],
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
    if !(mx > mn) || !(mx - mn).is_finite() {
        // one value repeated (or none): that value as the minimum
        return snap(0.0, if mn.is_finite() { mn } else { 0.0 });
    }
    let w = usable(w).then_some(w);
    let top = nmax as f32;
    let (sw, sx) = x.iter().enumerate().fold((0f32, 0f32), |(a, b), (i, &v)| {
        let wi = w.map_or(1.0, |w| w[i]);
        (a + wi, b + wi * v)
    });
    let (s0, m0) = snap((mx - mn) / top, mn);
    let mut best = (err(x, w, s0, m0, 0.0, top), s0, m0);
    // as the reference: an accepted candidate's minimum is where the next ones' levels start
    let mut mn = mn;
    for k in 0..=36 {
        let factor = top - 0.9 + 0.05 * k as f32;
        let is = factor / (mx - mn);
        let (mut sl, mut sl2, mut sxl) = (0f32, 0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = crate::rtn::round_even_small((v - mn) * is).clamp(0.0, top);
            let wi = w.map_or(1.0, |w| w[i]);
            sl += wi * q;
            sl2 += wi * q * q;
            sxl += wi * v * q;
        }
        let det = sw * sl2 - sl * sl;
        if !(det > 0.0) {
            continue;
        }
        let mut s = (sw * sxl - sx * sl) / det;
        let mut m = (sl2 * sx - sl * sxl) / det;
        if clamp_min && m > 0.0 {
            m = 0.0;
            s = sxl / sl2;
        }
        if !(s > 0.0) || !s.is_finite() || !m.is_finite() {
            continue;
        }
        let (ss, sm) = snap(s, m);
        let e = err(x, w, ss, sm, 0.0, top);
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
                let (s, m) = asym(g, wg, qmax - qmin, true, |s, m| {
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
            .map(|i| if i % 5 == 0 { 30.0 } else { 0.2 + rng.uniform() as f32 })
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
        err(x, Some(w), max / -nmax, 0.0, lo, hi)
    }

    /// The weighted search never does worse than the plain max-scaled grid (it is one of its
    /// candidates) and, over many groups with uneven importance, clearly better.
    #[test]
    fn weighted_search_beats_plain_grids_on_the_weighted_error() {
        let (mut a, mut b, mut c, mut d) = (0f64, 0f64, 0f64, 0f64);
        for seed in 0..200 {
            let (x, w) = noisy(32, seed);
            let s = sym(&x, &w, 8.0, (-8, 7), true, |s| s);
            let e = err(&x, Some(&w), s, 0.0, -8.0, 7.0);
            let r = rtn_sym_err(&x, &w, 8.0, -8.0, 7.0);
            assert!(e <= r * 1.000_01, "seed {seed}: {e} vs {r}");
            a += e as f64;
            b += r as f64;
            let (s, m) = asym(&x, &w, 15, true, |s, m| (s, m));
            let (mn, mx) = x
                .iter()
                .fold((0f32, 0f32), |(p, q), &v| (p.min(v), q.max(v)));
            let e = err(&x, Some(&w), s, m, 0.0, 15.0);
            let r = err(&x, Some(&w), (mx - mn) / 15.0, mn, 0.0, 15.0);
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
