//! Error statistics between original and reconstructed values.
//!
//! Accumulated in f64 over chunks and merged in a fixed order, so figures do not depend on the
//! thread count.

use serde::Serialize;

/// Running sums from which all per-tensor figures derive.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    pub n: u64,
    pub sum_x2: f64,
    pub sum_y2: f64,
    pub sum_xy: f64,
    pub sum_err2: f64,
    pub max_abs_err: f64,
}

impl ErrorStats {
    /// Statistics of `y` (reconstruction) against `x` (original).
    pub fn of(x: &[f32], y: &[f32]) -> ErrorStats {
        let mut s = ErrorStats::default();
        s.add(x, y);
        s
    }

    pub fn add(&mut self, x: &[f32], y: &[f32]) {
        add_lanes8(self, x, y, x.len());
    }

    /// [`ErrorStats::of`] over rows of `cols` values, and whether every row decodes within the
    /// bound `layout::check_written` enforces per row. The sums run over each row's 256-value
    /// chunks (the last one shorter when 256 does not divide `cols`; with 256 dividing it, the
    /// chunks and so the figures are [`ErrorStats::of`]'s); a chunk is within the bound when
    /// its sums are finite and its largest error is at most its largest |x| · (1 + 1e-3) plus
    /// the least normal f32. A chunk lies in one row and its largest |x| is at most the row's,
    /// so `true` means the per-row check passes; on `false` run that check to find the value
    /// (or to pass).
    pub fn of_bounded(x: &[f32], y: &[f32], cols: usize) -> (ErrorStats, bool) {
        let mut s = ErrorStats::default();
        let within = add_lanes8(&mut s, x, y, cols);
        (s, within)
    }

    /// [`ErrorStats::of_bounded`] added to these statistics (rows of `cols` values).
    pub fn add_bounded(&mut self, x: &[f32], y: &[f32], cols: usize) -> bool {
        add_lanes8(self, x, y, cols)
    }

    /// Reference: plain f64 accumulation element by element.
    pub fn add_ref(&mut self, x: &[f32], y: &[f32]) {
        for (&a, &b) in x.iter().zip(y) {
            let (a, b) = (a as f64, b as f64);
            let e = a - b;
            self.sum_x2 += a * a;
            self.sum_y2 += b * b;
            self.sum_xy += a * b;
            self.sum_err2 += e * e;
            self.max_abs_err = self.max_abs_err.max(e.abs());
        }
        self.n += x.len() as u64;
    }

    pub fn merge(&mut self, o: &ErrorStats) {
        self.n += o.n;
        self.sum_x2 += o.sum_x2;
        self.sum_y2 += o.sum_y2;
        self.sum_xy += o.sum_xy;
        self.sum_err2 += o.sum_err2;
        self.max_abs_err = self.max_abs_err.max(o.max_abs_err);
    }

    pub fn mse(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum_err2 / self.n as f64
        }
    }

    pub fn rmse(&self) -> f64 {
        self.mse().sqrt()
    }

    /// Signal-to-quantization-noise ratio in dB; +inf for an exact reconstruction.
    pub fn sqnr_db(&self) -> f64 {
        if self.sum_err2 == 0.0 {
            f64::INFINITY
        } else if self.sum_x2 == 0.0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (self.sum_x2 / self.sum_err2).log10()
        }
    }

    /// Cosine similarity; 1 when both are all-zero.
    pub fn cosine(&self) -> f64 {
        let d = (self.sum_x2 * self.sum_y2).sqrt();
        if d == 0.0 {
            if self.sum_x2 == self.sum_y2 {
                1.0
            } else {
                0.0
            }
        } else {
            self.sum_xy / d
        }
    }

    pub fn summary(&self) -> ErrorSummary {
        ErrorSummary {
            mse: self.mse(),
            rmse: self.rmse(),
            max_abs_err: self.max_abs_err,
            sqnr_db: finite_or_none(self.sqnr_db()),
            cosine: self.cosine(),
        }
    }
}

fn finite_or_none(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl ErrorSummary {
    /// Every value reproduced exactly (NaN statistics are not exact).
    pub fn exact(&self) -> bool {
        self.mse == 0.0 && self.max_abs_err == 0.0
    }
}

/// The derived figures, as written to reports. `sqnr_db` is `null` for an exact copy, and for
/// a lossy tensor whose SQNR is not a number (an all-zero original, or non-finite values
/// carried with `--allow-nonfinite`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ErrorSummary {
    pub mse: f64,
    pub rmse: f64,
    pub max_abs_err: f64,
    pub sqnr_db: Option<f64>,
    pub cosine: f64,
}

/// What narrowing a float tensor to a smaller float type does to its values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NarrowingAudit {
    /// |x| above the target's largest finite value (become ±inf unless clamped).
    pub overflow: u64,
    /// Nonzero values that become zero.
    pub underflow: u64,
    /// Nonzero values that land in the target's subnormal range.
    pub subnormal: u64,
    /// Largest |x̂ - x| / |x| over values that stay in the normal range.
    pub max_rel_err: f64,
}

impl NarrowingAudit {
    pub fn merge(&mut self, o: &NarrowingAudit) {
        self.overflow += o.overflow;
        self.underflow += o.underflow;
        self.subnormal += o.subnormal;
        self.max_rel_err = self.max_rel_err.max(o.max_rel_err);
    }
}

/// Audits f32 → `target` for `x`, where `target` has largest finite `max` and smallest normal
/// `min_normal`, and `rounded[i]` is x[i] rounded to the target (before any clamping).
pub fn audit_narrowing(x: &[f32], rounded: &[f32], max: f32, min_normal: f32) -> NarrowingAudit {
    let mut a = NarrowingAudit::default();
    for (&v, &r) in x.iter().zip(rounded) {
        let av = v.abs();
        if av > max {
            a.overflow += 1;
        } else if v != 0.0 && r == 0.0 {
            a.underflow += 1;
        } else if r != 0.0 && r.abs() < min_normal {
            a.subnormal += 1;
        } else if v != 0.0 {
            let rel = ((r as f64 - v as f64) / v as f64).abs();
            if rel > a.max_rel_err {
                a.max_rel_err = rel;
            }
        }
    }
    a
}

crate::simd::multiversion!(add_lanes8, add_at, add_body, add_scalar,
    (s: &mut ErrorStats, x: &[f32], y: &[f32], cols: usize) -> bool);

/// The same sums without explicit lanes (the `QS_SIMD=scalar` level).
fn add_scalar(s: &mut ErrorStats, x: &[f32], y: &[f32], cols: usize) -> bool {
    add_body::<crate::simd::Portable>(s, x, y, cols)
}

/// Blocks of 256 summed in eight f32 lanes (value j of a block in lane j % 8; relative error
/// ~1e-6 per block), block sums accumulated in f64 so long tensors keep their accuracy. Always
/// eight lanes per block, whatever the vector width, so the figures are the same on every
/// machine: the AVX-512 build sums two whole blocks at once, one in each half of its registers.
/// Returns whether every block is within the bound of [`ErrorStats::of_bounded`].
#[inline(always)]
fn add_body<V: crate::simd::Lanes>(s: &mut ErrorStats, x: &[f32], y: &[f32], cols: usize) -> bool {
    assert_eq!(x.len(), y.len());
    // rows of `cols` values, each in chunks of 256 (with 256 dividing `cols`, simply the
    // slice's chunks of 256)
    let row = if cols == 0 || cols.is_multiple_of(256) {
        256
    } else {
        cols
    };
    let mut blocks = x
        .chunks(row)
        .zip(y.chunks(row))
        .flat_map(|(a, b)| a.chunks(256).zip(b.chunks(256)))
        .peekable();
    let mut within = true;
    while let Some((xa, ya)) = blocks.next() {
        if V::L == 16 && xa.len() == 256 {
            if let Some(&(xb, yb)) = blocks.peek() {
                if xb.len() == 256 {
                    blocks.next();
                    within &= block_pair::<V>(s, [xa, xb], [ya, yb]);
                    continue;
                }
            }
        }
        within &= block8::<<V as crate::simd::Lanes>::Half>(s, xa, ya);
    }
    s.n += x.len() as u64;
    within
}

/// One block's sums in its eight lanes: x², y², xy, err², max |err|, max |x|.
type LaneSums = [[f32; 8]; 6];

/// One block of at most 256 values, in eight lanes.
#[inline(always)]
fn block8<V: crate::simd::Lanes>(s: &mut ErrorStats, xb: &[f32], yb: &[f32]) -> bool {
    const L: usize = 8;
    debug_assert_eq!(V::L, L);
    let z = V::splat(0.0);
    let (mut x2, mut y2, mut xy, mut e2, mut me, mut mx) = (z, z, z, z, z, z);
    let (xc, yc) = (xb.chunks_exact(L), yb.chunks_exact(L));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        let (a, b) = (V::load(a), V::load(b));
        lane_step(a, b, [&mut x2, &mut y2, &mut xy, &mut e2, &mut me, &mut mx]);
    }
    let mut v: LaneSums = [[0f32; L]; 6];
    for (t, r) in [x2, y2, xy, e2, me, mx].into_iter().zip(v.iter_mut()) {
        t.store(r);
    }
    let [x2, y2, xy, e2, me, mx] = &mut v;
    for (k, (&a, &b)) in xr.iter().zip(yr).enumerate() {
        let e = a - b;
        x2[k] += a * a;
        y2[k] += b * b;
        xy[k] += a * b;
        e2[k] += e * e;
        me[k] = me[k].max(e.abs());
        mx[k] = mx[k].max(a.abs());
    }
    fold_block(s, &v)
}

/// Two whole blocks of 256 at once: block `k`'s lane j in lane `8k + j` (sixteen lanes).
#[inline(always)]
fn block_pair<V: crate::simd::Lanes>(s: &mut ErrorStats, xb: [&[f32]; 2], yb: [&[f32]; 2]) -> bool {
    debug_assert_eq!(V::L, 16);
    let z = V::splat(0.0);
    let (mut x2, mut y2, mut xy, mut e2, mut me, mut mx) = (z, z, z, z, z, z);
    for i in (0..256).step_by(8) {
        let a = V::load2(&xb[0][i..], &xb[1][i..]);
        let b = V::load2(&yb[0][i..], &yb[1][i..]);
        lane_step(a, b, [&mut x2, &mut y2, &mut xy, &mut e2, &mut me, &mut mx]);
    }
    let mut v = [[0f32; 16]; 6];
    for (t, r) in [x2, y2, xy, e2, me, mx].into_iter().zip(v.iter_mut()) {
        t.store(r);
    }
    let half = |k: usize| -> LaneSums { v.map(|t| std::array::from_fn(|j| t[8 * k + j])) };
    let first = fold_block(s, &half(0));
    fold_block(s, &half(1)) & first
}

/// Each lane's running sums take one more value (`a` of x, `b` of y).
#[inline(always)]
fn lane_step<V: crate::simd::Lanes>(a: V, b: V, [x2, y2, xy, e2, me, mx]: [&mut V; 6]) {
    let e = a.sub(b);
    *x2 = x2.add(a.mul(a));
    *y2 = y2.add(b.mul(b));
    *xy = xy.add(a.mul(b));
    *e2 = e2.add(e.mul(e));
    // compare-select rather than f32::max: a NaN error does not replace the maximum
    let ea = e.abs();
    *me = V::if_lt(*me, ea, ea, *me);
    let aa = a.abs();
    *mx = V::if_lt(*mx, aa, aa, *mx);
}

/// A block's lane sums into `s`; whether the block is within the bound.
#[inline(always)]
fn fold_block(s: &mut ErrorStats, [x2, y2, xy, e2, me, mx]: &LaneSums) -> bool {
    let sum = |v: &[f32; 8]| v.iter().map(|&t| t as f64).sum::<f64>();
    let (sx2, sy2) = (sum(x2), sum(y2));
    s.sum_x2 += sx2;
    s.sum_y2 += sy2;
    s.sum_xy += sum(xy);
    s.sum_err2 += sum(e2);
    let me = me.iter().fold(0f32, |a, &b| a.max(b));
    s.max_abs_err = s.max_abs_err.max(me as f64);
    let amax = mx.iter().fold(0f32, |a, &b| a.max(b));
    let tol = amax + amax * 1e-3 + f32::MIN_POSITIVE;
    sx2.is_finite() && sy2.is_finite() && me <= tol
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector level sums exactly as the portable lanes do, and a `true` bound means the
    /// per-row check of `layout::check_written` passes.
    #[test]
    fn lanes_agree_and_the_bound_implies_the_row_check() {
        use crate::simd::Level;
        let mut cases: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        let x = crate::synth::weights_like(4096 + 40, 3);
        let y: Vec<f32> = x.iter().map(|v| v + 1e-3 * v.signum()).collect();
        cases.push((x.clone(), y.clone()));
        let mut far = y.clone();
        far[300] = x[300] + 10.0;
        cases.push((x.clone(), far));
        let mut nan = y.clone();
        nan[7] = f32::NAN;
        cases.push((x.clone(), nan));
        let mut inf = y.clone();
        inf[4000] = f32::INFINITY;
        cases.push((x.clone(), inf));
        cases.push((vec![3e38; 512], vec![-3e38; 512]));
        for (case, (x, y)) in cases.into_iter().enumerate() {
            for lv in [Level::Base, Level::Avx2, Level::Avx512] {
                let (mut a, mut b) = (ErrorStats::default(), ErrorStats::default());
                let wa = add_at(Level::Scalar, &mut a, &x, &y, x.len());
                let wb = add_at(lv, &mut b, &x, &y, x.len());
                let bits = |s: &ErrorStats| {
                    [s.sum_x2, s.sum_y2, s.sum_xy, s.sum_err2, s.max_abs_err].map(f64::to_bits)
                };
                assert_eq!((bits(&a), wa), (bits(&b), wb), "{lv:?}");
            }
            let cols = 256;
            let n = x.len() / cols * cols;
            let (whole, within) = ErrorStats::of_bounded(&x[..n], &y[..n], cols);
            // only the first case decodes within the bound
            assert_eq!(within, case == 0, "case {case}");
            let checked = crate::layout::check_written(None, &x[..n], &y[..n], cols);
            assert_eq!(checked.is_ok(), within, "case {case}");
            // rows that are whole chunks: the figures of `of`
            let plain = ErrorStats::of(&x[..n], &y[..n]);
            assert_eq!(whole.sum_err2.to_bits(), plain.sum_err2.to_bits());
            assert_eq!(whole.sum_x2.to_bits(), plain.sum_x2.to_bits());
            // rows of any length: every level agrees with the per-row check
            for cols in [576, 100, 4096 + 40, 7] {
                let n = x.len() / cols * cols;
                let want = crate::layout::check_written(None, &x[..n], &y[..n], cols).is_ok();
                for lv in [Level::Scalar, Level::Base, Level::Avx2, Level::Avx512] {
                    let mut st = ErrorStats::default();
                    assert_eq!(
                        add_at(lv, &mut st, &x[..n], &y[..n], cols),
                        want,
                        "fused, case {case} {cols} {lv:?}"
                    );
                    // the same figures as the f64 reference, to f32 block-sum accuracy
                    let mut r = ErrorStats::default();
                    r.add_ref(&x[..n], &y[..n]);
                    if r.sum_err2.is_finite() && case == 0 {
                        assert!((st.sum_err2 - r.sum_err2).abs() <= 1e-5 * r.sum_err2);
                        assert!((st.sum_x2 - r.sum_x2).abs() <= 1e-5 * r.sum_x2);
                    }
                }
            }
        }
    }

    #[test]
    fn figures() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let y = [1.0f32, -2.0, 2.0, 0.5];
        let s = ErrorStats::of(&x, &y);
        assert_eq!(s.mse(), 0.25);
        assert_eq!(s.max_abs_err, 1.0);
        let x2 = 1.0 + 4.0 + 9.0 + 0.25;
        assert!((s.sqnr_db() - 10.0 * (x2 / 1.0f64).log10()).abs() < 1e-12);
        let c = (1.0 + 4.0 + 6.0 + 0.25) / (x2 * (1.0 + 4.0 + 4.0 + 0.25f64)).sqrt();
        assert!((s.cosine() - c).abs() < 1e-12);
        assert_eq!(ErrorStats::of(&x, &x).summary().sqnr_db, None);
    }

    #[test]
    fn lane_sums_match_f64_reference() {
        let x = crate::synth::weights_like(100_003, 3);
        let y: Vec<f32> = x.iter().map(|v| v + 0.003 * (v * 91.0).sin()).collect();
        let (mut a, mut b) = (ErrorStats::default(), ErrorStats::default());
        a.add(&x, &y);
        b.add_ref(&x, &y);
        for (p, q) in [
            (a.sum_x2, b.sum_x2),
            (a.sum_y2, b.sum_y2),
            (a.sum_xy, b.sum_xy),
            (a.sum_err2, b.sum_err2),
        ] {
            assert!((p - q).abs() <= 1e-5 * q.abs(), "{p} vs {q}");
        }
        assert_eq!(a.max_abs_err, b.max_abs_err);
        assert_eq!(a.n, b.n);
    }

    #[test]
    fn merge_equals_whole() {
        let x: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = x.iter().map(|v| v + 0.01 * v.cos()).collect();
        let whole = ErrorStats::of(&x, &y);
        let mut parts = ErrorStats::default();
        for (a, b) in x.chunks(777).zip(y.chunks(777)) {
            parts.merge(&ErrorStats::of(a, b));
        }
        assert_eq!(whole.n, parts.n);
        assert!((whole.sum_err2 - parts.sum_err2).abs() < 1e-9);
        assert_eq!(whole.max_abs_err, parts.max_abs_err);
    }

    #[test]
    fn audit_counts_f16_hazards() {
        let x = [70000.0f32, 1e-9, 1e-6, 1.0001, 0.0];
        let r: Vec<f32> = x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        let a = audit_narrowing(&x, &r, 65504.0, 6.103_515_6e-5);
        assert_eq!(a.overflow, 1);
        assert_eq!(a.underflow, 1);
        assert_eq!(a.subnormal, 1);
        assert!(a.max_rel_err > 0.0 && a.max_rel_err < 1e-3);
    }
}
