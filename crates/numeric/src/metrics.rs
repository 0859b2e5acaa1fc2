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
        debug_assert_eq!(x.len(), y.len());
        // Blocks of 256 summed in eight f32 lanes (vectorizes; relative error ~1e-6 per block),
        // block sums accumulated in f64 so long tensors keep their accuracy.
        const L: usize = 8;
        for (xb, yb) in x.chunks(256).zip(y.chunks(256)) {
            let (mut x2, mut y2, mut xy, mut e2, mut me) =
                ([0f32; L], [0f32; L], [0f32; L], [0f32; L], [0f32; L]);
            let (xc, yc) = (xb.chunks_exact(L), yb.chunks_exact(L));
            let (xr, yr) = (xc.remainder(), yc.remainder());
            for (a, b) in xc.zip(yc) {
                for k in 0..L {
                    let e = a[k] - b[k];
                    x2[k] += a[k] * a[k];
                    y2[k] += b[k] * b[k];
                    xy[k] += a[k] * b[k];
                    e2[k] += e * e;
                    // compare-select rather than f32::max (whose NaN rules block vectorizing)
                    let ea = e.abs();
                    me[k] = if ea > me[k] { ea } else { me[k] };
                }
            }
            for (k, (&a, &b)) in xr.iter().zip(yr).enumerate() {
                let e = a - b;
                x2[k] += a * a;
                y2[k] += b * b;
                xy[k] += a * b;
                e2[k] += e * e;
                me[k] = me[k].max(e.abs());
            }
            let sum = |v: [f32; L]| v.iter().map(|&t| t as f64).sum::<f64>();
            self.sum_x2 += sum(x2);
            self.sum_y2 += sum(y2);
            self.sum_xy += sum(xy);
            self.sum_err2 += sum(e2);
            self.max_abs_err = self
                .max_abs_err
                .max(me.iter().fold(0f32, |a, &b| a.max(b)) as f64);
        }
        self.n += x.len() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

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
