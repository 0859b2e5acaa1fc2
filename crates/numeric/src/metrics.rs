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
        // Partial sums in blocks keep f64 accuracy without a per-element f64 convert chain cost.
        for (xb, yb) in x.chunks(1024).zip(y.chunks(1024)) {
            let (mut x2, mut y2, mut xy, mut e2, mut me) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (&a, &b) in xb.iter().zip(yb) {
                let (a, b) = (a as f64, b as f64);
                let e = a - b;
                x2 += a * a;
                y2 += b * b;
                xy += a * b;
                e2 += e * e;
                me = me.max(e.abs());
            }
            self.sum_x2 += x2;
            self.sum_y2 += y2;
            self.sum_xy += xy;
            self.sum_err2 += e2;
            self.max_abs_err = self.max_abs_err.max(me);
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

/// The derived figures, as written to reports. `sqnr_db` is `null` for an exact copy.
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
