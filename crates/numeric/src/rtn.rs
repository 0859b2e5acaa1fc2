//! Round-to-nearest ("min-max") integer quantization, compressed-tensors conventions.
//!
//! Codes are signed, `qmin = -2^(b-1)`, `qmax = 2^(b-1) - 1`.
//! - symmetric: `scale = amax / ((qmax - qmin) / 2)` (amax/7.5 for int4, amax/127.5 for int8),
//!   zero point 0.
//! - asymmetric: range widened to include 0, `scale = (max - min) / (qmax - qmin)`,
//!   `zero = round(clamp(qmin - min/scale, qmin, qmax))`.
//!
//! Scales are rounded to the storage dtype *before* the codes are computed, so the stored
//! scale is the one that minimises the error of what is actually written. A zero scale
//! (all-zero group) becomes the storage dtype's epsilon, as in compressed-tensors.
//! `q = clamp(round_half_even(x / scale) + zero, qmin, qmax)`, `x̂ = (q - zero) · scale`.

use crate::dtype::{eps, round_to, DType};

/// Bit width and symmetry of an integer scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntSpec {
    pub bits: u32,
    pub symmetric: bool,
}

impl IntSpec {
    pub fn qmin(self) -> i32 {
        -(1 << (self.bits - 1))
    }
    pub fn qmax(self) -> i32 {
        (1 << (self.bits - 1)) - 1
    }
}

/// Scale and zero point of one group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QParams {
    pub scale: f32,
    pub zero: i32,
}

/// Fits scale/zero to a value range. `scale_dtype` is the dtype the scale will be stored in.
pub fn fit(spec: IntSpec, min: f32, max: f32, scale_dtype: DType) -> QParams {
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let min = min.min(0.0);
    let max = max.max(0.0);
    let raw = if spec.symmetric {
        min.abs().max(max.abs()) / ((qmax - qmin) / 2.0)
    } else {
        (max - min) / (qmax - qmin)
    };
    let mut scale = round_to(scale_dtype, raw);
    if scale == 0.0 || !scale.is_finite() {
        scale = if scale == 0.0 {
            eps(scale_dtype)
        } else {
            round_to(scale_dtype, f32::MAX)
        };
    }
    let zero = if spec.symmetric {
        0
    } else {
        (qmin - min / scale).clamp(qmin, qmax).round_ties_even() as i32
    };
    QParams { scale, zero }
}

/// Round half to even for |v| <= 2^22 without a libm call: adding and subtracting 1.5·2^23
/// leaves exactly the integer part rounded by the FPU's default mode (nearest, ties to even).
#[inline]
pub fn round_even_small(v: f32) -> f32 {
    const M: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + M) - M
}

/// Quantizes `x` with fixed parameters into signed codes.
#[inline(always)]
pub fn quantize(spec: IntSpec, p: QParams, x: &[f32], codes: &mut [i8]) {
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let zero = p.zero as f32;
    for (c, &v) in codes.iter_mut().zip(x) {
        // pre-clamping to ±2^22 changes nothing after the final clamp, and keeps the
        // rounding trick exact
        let r = round_even_small((v / p.scale).clamp(-4_194_304.0, 4_194_304.0));
        *c = (r + zero).clamp(qmin, qmax) as i8;
    }
}

/// `x̂ = (q - zero) · scale`.
#[inline]
pub fn dequantize(p: QParams, codes: &[i8], out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (c as i32 - p.zero) as f32 * p.scale;
    }
}

// [`quantize`] for each vector width: `quantize_lanes` compiled per width, the scalar
// `quantize` as the reference (a unit test compares them at every level).
crate::simd::multiversion!(quantize_wide, quantize_wide_at, quantize_lanes, quantize,
    (spec: IntSpec, p: QParams, x: &[f32], codes: &mut [i8]) -> ());

/// [`quantize`] in a form LLVM vectorizes: selects for the clamps, and the integer read from
/// the bits of `f + 1.5·2^23` (exact for the integers of `qmin..=qmax`; NaN gives 0, as `as`
/// does).
#[inline(always)]
fn quantize_lanes<V: crate::simd::Lanes>(spec: IntSpec, p: QParams, x: &[f32], codes: &mut [i8]) {
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let zero = p.zero as f32;
    let clamp = |v: f32, lo: f32, hi: f32| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    };
    for (c, &v) in codes.iter_mut().zip(x) {
        let r = round_even_small(clamp(v / p.scale, -4_194_304.0, 4_194_304.0));
        let f = clamp(r + zero, qmin, qmax);
        let i = (f + 12_582_912.0).to_bits() as i32 - 0x4b40_0000;
        *c = if f.is_nan() { 0 } else { i as i8 };
    }
}

/// Min and max of a slice (NaN values are skipped, as `f32::min`/`max` skip them; the sign
/// of a zero extreme is unspecified). Sixteen running extremes side by side, so the loop
/// vectorizes; the extremes of a set do not depend on the order they are taken in.
pub fn min_max(x: &[f32]) -> (f32, f32) {
    min_max_wide(x)
}

crate::simd::multiversion!(min_max_wide, min_max_wide_at, min_max_lanes, min_max_scalar,
    (x: &[f32]) -> (f32, f32));

#[inline(always)]
fn min_max_lanes<V: crate::simd::Lanes>(x: &[f32]) -> (f32, f32) {
    min_max_scalar(x)
}

#[inline(always)]
fn min_max_scalar(x: &[f32]) -> (f32, f32) {
    const W: usize = 16;
    let (mut lo, mut hi) = ([f32::INFINITY; W], [f32::NEG_INFINITY; W]);
    let mut chunks = x.chunks_exact(W);
    for c in &mut chunks {
        for k in 0..W {
            lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
            hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
        }
    }
    // halves folded onto halves (still vector operations), then the remainder
    let mut w = W / 2;
    while w > 0 {
        for k in 0..w {
            lo[k] = if lo[k + w] < lo[k] { lo[k + w] } else { lo[k] };
            hi[k] = if hi[k + w] > hi[k] { hi[k + w] } else { hi[k] };
        }
        w /= 2;
    }
    let rest = chunks.remainder();
    (
        rest.iter().fold(lo[0], |a, &v| a.min(v)),
        rest.iter().fold(hi[0], |a, &v| a.max(v)),
    )
}

/// Result of quantizing a block of rows group-wise.
#[derive(Debug, Clone, Default)]
pub struct IntRows {
    /// `rows × cols` signed codes.
    pub codes: Vec<i8>,
    /// `rows × groups` parameters, row-major.
    pub params: Vec<QParams>,
}

/// Quantizes `rows × cols` values group-wise (`group` consecutive columns share parameters;
/// `group == cols` is per-channel). With `fixed = Some(p)` every group uses `p` (per-tensor).
/// `cols % group` must be 0.
pub fn quantize_rows(
    spec: IntSpec,
    x: &[f32],
    cols: usize,
    group: usize,
    scale_dtype: DType,
    fixed: Option<QParams>,
) -> IntRows {
    assert!(
        group > 0 && cols.is_multiple_of(group),
        "group must divide the row"
    );
    let mut codes = vec![0i8; x.len()];
    let mut params = Vec::with_capacity(x.len() / group);
    for (xg, cg) in x.chunks_exact(group).zip(codes.chunks_exact_mut(group)) {
        let p = fixed.unwrap_or_else(|| {
            let (mn, mx) = min_max(xg);
            fit(spec, mn, mx, scale_dtype)
        });
        quantize_wide(spec, p, xg, cg);
        params.push(p);
    }
    IntRows { codes, params }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::weights_like;

    const S4: IntSpec = IntSpec {
        bits: 4,
        symmetric: true,
    };
    const A4: IntSpec = IntSpec {
        bits: 4,
        symmetric: false,
    };

    /// Every vector width quantizes as the scalar loop does, on random groups with values
    /// at the rounding ties, beyond the clamp and at ±0.
    #[test]
    fn quantize_at_every_level_equals_scalar() {
        use crate::simd::Level;
        let mut rng = crate::synth::Rng::new(11);
        for &(bits, symmetric) in &[
            (4, true),
            (4, false),
            (8, true),
            (8, false),
            (2, true),
            (3, false),
        ] {
            let spec = IntSpec { bits, symmetric };
            for len in [1usize, 7, 16, 33, 128, 4096] {
                let mut x: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
                for (i, v) in x.iter_mut().enumerate().step_by(5) {
                    *v = [0.5, -0.5, 1.5, -2.5, -0.0, 1e30, -1e30, f32::NAN][i % 8];
                }
                let (mn, mx) = min_max(&x);
                let fitted = fit(spec, mn.max(-1e3), mx.min(1e3), DType::BF16);
                // unit scales put the ±0.5, 1.5, -2.5 values on rounding ties
                let ties = QParams {
                    scale: 1.0,
                    zero: if symmetric { 0 } else { 1 },
                };
                for p in [fitted, ties] {
                    let mut want = vec![0i8; len];
                    quantize(spec, p, &x, &mut want);
                    for lv in [Level::Scalar, Level::Base, Level::Avx2, Level::Avx512] {
                        let mut got = vec![0i8; len];
                        quantize_wide_at(lv, spec, p, &x, &mut got);
                        assert_eq!(
                            got, want,
                            "{lv:?} bits {bits} sym {symmetric} len {len} {p:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn min_max_equals_fold() {
        let mut rng = crate::synth::Rng::new(5);
        for len in [0usize, 1, 15, 16, 17, 100, 1000] {
            let mut x: Vec<f32> = (0..len).map(|_| rng.normal() as f32 * 3.0).collect();
            if len > 3 {
                x[len / 2] = f32::NAN;
            }
            let want = x
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            assert_eq!(min_max(&x), want, "{len}");
        }
    }

    #[test]
    fn round_even_small_equals_round_ties_even() {
        let mut rng = crate::synth::Rng::new(2);
        let mut xs: Vec<f32> = (0..200_000)
            .map(|_| (rng.uniform() as f32 - 0.5) * 600.0)
            .collect();
        for k in -300..300 {
            let h = k as f32 + 0.5;
            xs.extend([
                h,
                f32::from_bits(h.to_bits() - 1),
                f32::from_bits(h.to_bits() + 1),
                k as f32,
            ]);
        }
        xs.extend([4_194_304.0, -4_194_304.0, 4_194_303.5, 1e-30, -0.0]);
        for x in xs {
            assert_eq!(round_even_small(x), x.round_ties_even(), "{x:e}");
        }
    }

    #[test]
    fn symmetric_int4_uses_amax_over_7_5() {
        let x = [0.75f32, -0.3, 0.0, 0.1];
        let p = fit(S4, -0.3, 0.75, DType::F32);
        assert_eq!(p.scale, 0.1);
        assert_eq!(p.zero, 0);
        let mut q = [0i8; 4];
        quantize(S4, p, &x, &mut q);
        // 7.5 rounds to even 8, clamped to 7; -3 stays; 1 stays
        assert_eq!(q, [7, -3, 0, 1]);
    }

    #[test]
    fn asymmetric_zero_point_represents_zero_exactly() {
        for seed in 0..20 {
            let x: Vec<f32> = weights_like(128, seed).iter().map(|v| v + 0.01).collect();
            let (mn, mx) = min_max(&x);
            for bits in [2, 3, 4, 8] {
                let spec = IntSpec {
                    bits,
                    symmetric: false,
                };
                let p = fit(spec, mn, mx, DType::BF16);
                assert!(p.zero >= spec.qmin() && p.zero <= spec.qmax());
                let mut q = [0i8; 1];
                quantize(spec, p, &[0.0], &mut q);
                let mut r = [1f32];
                dequantize(p, &q, &mut r);
                assert!(r[0].abs() <= p.scale * 0.5 + 1e-9);
            }
        }
    }

    #[test]
    fn error_at_most_half_step_inside_range() {
        for spec in [
            S4,
            A4,
            IntSpec {
                bits: 8,
                symmetric: true,
            },
        ] {
            let x = weights_like(1024, 3);
            let r = quantize_rows(spec, &x, 1024, 128, DType::F32, None);
            let mut out = vec![0f32; 128];
            for (g, p) in r.params.iter().enumerate() {
                dequantize(*p, &r.codes[g * 128..(g + 1) * 128], &mut out);
                for (a, b) in x[g * 128..(g + 1) * 128].iter().zip(&out) {
                    // symmetric codes clamp +amax to qmax: error up to one full step there
                    assert!((a - b).abs() <= p.scale * 1.0001, "{a} {b} {}", p.scale);
                }
            }
        }
    }

    #[test]
    fn zero_constant_and_denormal_groups_have_finite_scales() {
        for spec in [S4, A4] {
            for dt in [DType::F32, DType::F16, DType::BF16] {
                for x in [[0.0f32; 8], [3.5; 8], [-1e-42; 8], [f32::MIN_POSITIVE; 8]] {
                    let r = quantize_rows(spec, &x, 8, 8, dt, None);
                    let p = r.params[0];
                    assert!(p.scale.is_finite() && p.scale > 0.0, "{spec:?} {dt} {x:?}");
                    let mut o = [0f32; 8];
                    dequantize(p, &r.codes, &mut o);
                    assert!(o.iter().all(|v| v.is_finite()));
                }
            }
        }
    }

    #[test]
    fn scale_is_representable_in_storage_dtype() {
        let x = weights_like(256, 9);
        let r = quantize_rows(S4, &x, 256, 32, DType::BF16, None);
        for p in r.params {
            assert_eq!(round_to(DType::BF16, p.scale), p.scale);
        }
    }
}
