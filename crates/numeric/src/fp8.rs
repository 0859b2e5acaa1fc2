//! FP8 codecs: E4M3FN (no infinities, NaN = S.1111.111) and E5M2 (IEEE-like).
//!
//! Encoding saturates to ±max finite (a plain cast would not) and rounds to nearest, ties to even.
//! Tested exhaustively against a brute-force nearest-code search over the whole 256-entry table.

/// Description of an 8-bit minifloat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Format {
    pub name: &'static str,
    pub exp_bits: u32,
    pub man_bits: u32,
    pub bias: i32,
    /// Code (without sign) of the largest finite value.
    pub max_code: u8,
    /// Code (without sign) used for NaN when encoding.
    pub nan_code: u8,
    /// E5M2 has infinities at exponent all-ones / mantissa 0; E4M3FN has none.
    pub has_inf: bool,
}

pub const E4M3: Fp8Format = Fp8Format {
    name: "e4m3",
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    max_code: 0x7e,
    nan_code: 0x7f,
    has_inf: false,
};

pub const E5M2: Fp8Format = Fp8Format {
    name: "e5m2",
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    max_code: 0x7b,
    nan_code: 0x7f,
    has_inf: true,
};

impl Fp8Format {
    /// Largest finite magnitude: 448 for E4M3FN, 57344 for E5M2.
    pub fn max_finite(&self) -> f32 {
        self.decode(self.max_code)
    }

    /// Decodes one code to f32 (exact).
    pub fn decode(&self, b: u8) -> f32 {
        let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let mag = b & 0x7f;
        let e = (mag >> self.man_bits) as i32;
        let m = (mag & ((1u8 << self.man_bits) - 1)) as i32;
        let e_all_ones = (1i32 << self.exp_bits) - 1;
        if self.has_inf {
            if e == e_all_ones {
                return if m == 0 {
                    sign * f32::INFINITY
                } else {
                    f32::NAN
                };
            }
        } else if mag == self.nan_code {
            return f32::NAN;
        }
        let v = if e == 0 {
            m as f32 * exp2i(1 - self.bias - self.man_bits as i32)
        } else {
            (1.0 + m as f32 / (1u32 << self.man_bits) as f32) * exp2i(e - self.bias)
        };
        sign * v
    }

    /// Encodes one f32: NaN -> NaN code, |x| clamped to max finite, then round-to-nearest-even.
    pub fn encode(&self, x: f32) -> u8 {
        self.encode_below(x, self.max_finite())
    }

    /// `codes[i] = encode(x[i] / s)`, compiled for the widest vector unit the CPU has (the
    /// same operations per value, so the same codes; the rounding inlined instead of a libm
    /// call at the x86-64 baseline).
    pub fn encode_scaled(&self, x: &[f32], s: f32, codes: &mut [u8]) {
        encode_scaled_wide(self, x, s, codes)
    }

    /// [`Fp8Format::encode`] with the largest finite value (`max_finite`) given.
    #[inline(always)]
    fn encode_below(&self, x: f32, max: f32) -> u8 {
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        if x.is_nan() {
            return sign | self.nan_code;
        }
        let a = x.abs().min(max);
        let emin = 1 - self.bias; // exponent of the smallest normal
                                  // Exponent of `a` (floor(log2 a)) from its f32 bits; subnormal f32 inputs are far below
                                  // any fp8 quantum and round to zero below.
        let ea = if a == 0.0 {
            emin
        } else {
            ((a.to_bits() >> 23) as i32 - 127).max(emin)
        };
        let quantum = exp2i(ea - self.man_bits as i32);
        // a / quantum is exact (power-of-two scaling well inside f32 range).
        let r = (a / quantum).round_ties_even() * quantum;
        if r == 0.0 {
            return sign;
        }
        // r is exactly representable; rounding up may have moved it to the next binade.
        let er = (r.to_bits() >> 23) as i32 - 127;
        let code = if er < emin {
            (r / exp2i(emin - self.man_bits as i32)) as u32
        } else {
            let field = (er + self.bias) as u32;
            let mant = (r / exp2i(er - self.man_bits as i32)) as u32 - (1u32 << self.man_bits);
            (field << self.man_bits) | mant
        };
        sign | code as u8
    }
}

crate::simd::multiversion!(encode_scaled_wide, encode_scaled_at, encode_scaled_lanes,
    encode_scaled_ref, (f: &Fp8Format, x: &[f32], s: f32, codes: &mut [u8]) -> ());

#[inline(always)]
fn encode_scaled_ref(f: &Fp8Format, x: &[f32], s: f32, codes: &mut [u8]) {
    let max = f.max_finite();
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = f.encode_below(v / s, max);
    }
}

/// The same codes without branches or divisions past `x / s` (LLVM vectorizes the loop at
/// the compiled width): a magnitude below the smallest normal is rounded to the subnormal step
/// by adding `2^(emin - man + 23)` (whose ulp is that step; the float add rounds to nearest
/// even), a normal one by rounding its f32 bits to `man` mantissa bits (ties to even; a carry
/// moves into the exponent) and rebiasing the exponent.
#[inline(always)]
fn encode_scaled_lanes<V: crate::simd::Lanes>(f: &Fp8Format, x: &[f32], s: f32, codes: &mut [u8]) {
    let max = f.max_finite();
    let man = f.man_bits;
    let emin = 1 - f.bias;
    let min_normal = exp2i(emin);
    let magic = exp2i(emin - man as i32 + 23);
    let shift = 23 - man;
    let half_minus_one = (1u32 << (shift - 1)) - 1;
    let rebias = ((127 - f.bias) as u32) << man;
    let nan = f.nan_code as u32;
    for (c, &v) in codes.iter_mut().zip(x) {
        let q = v / s;
        let bits = q.to_bits();
        let sign = (bits >> 24) & 0x80;
        // (a NaN quotient is replaced below)
        let a = f32::from_bits(bits & 0x7fff_ffff).min(max);
        let sub = (a + magic).to_bits().wrapping_sub(magic.to_bits());
        let ab = a.to_bits();
        let normal = ((ab + half_minus_one + ((ab >> shift) & 1)) >> shift).wrapping_sub(rebias);
        let code = if a >= min_normal { normal } else { sub };
        let code = if q.is_nan() { nan } else { code };
        *c = (sign | code) as u8;
    }
}

#[inline(always)]
fn exp2i(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector level encodes as the one-value encoder does: random values, every fp8
    /// value and the midpoints between neighbours (ties), beyond the range, ±0, NaN, ±inf.
    #[test]
    fn encode_scaled_at_every_level_equals_encode() {
        use crate::simd::Level;
        let mut rng = crate::synth::Rng::new(3);
        for f in [&E4M3, &E5M2] {
            let mut x: Vec<f32> = (0..5000).map(|_| (rng.normal() * 40.0) as f32).collect();
            // any bit pattern: every binade, subnormals, NaN payloads
            x.extend((0..20000).map(|_| f32::from_bits(rng.next_u64() as u32)));
            // around the smallest normal, where the two roundings meet
            let mn = f32::powi(2.0, 1 - f.bias);
            x.extend((0..2000).map(|k| mn * (0.9 + 0.0001 * k as f32)));
            for c in 0..=f.max_code {
                let (v, w) = (f.decode(c), f.decode(c.saturating_add(1).min(f.max_code)));
                x.extend([v, -v, (v + w) / 2.0, -(v + w) / 2.0]);
            }
            x.extend([
                0.0,
                -0.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e38,
                1e-40,
            ]);
            for s in [1.0f32, 0.37, 3.0] {
                let want: Vec<u8> = x.iter().map(|&v| f.encode(v / s)).collect();
                for lv in [Level::Scalar, Level::Base, Level::Avx2, Level::Avx512] {
                    let mut got = vec![0u8; x.len()];
                    encode_scaled_at(lv, f, &x, s, &mut got);
                    assert_eq!(got, want, "{lv:?} scale {s}");
                }
            }
        }
    }

    /// Brute force: the finite code whose value is nearest to clamp(x), ties to the even mantissa.
    fn nearest_code(f: &Fp8Format, x: f32) -> u8 {
        let max = f.max_finite();
        let a = x.abs().min(max) as f64;
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        for c in 0u8..=f.max_code {
            let v = f.decode(c) as f64;
            let d = (v - a).abs();
            if d < best_d || (d == best_d && c & 1 == 0) {
                best = c;
                best_d = d;
            }
        }
        sign | best
    }

    #[test]
    fn known_values() {
        assert_eq!(E4M3.max_finite(), 448.0);
        assert_eq!(E5M2.max_finite(), 57344.0);
        assert_eq!(E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(E5M2.decode(0x01), 2f32.powi(-16));
        assert!(E4M3.decode(0x7f).is_nan());
        assert!(E4M3.decode(0xff).is_nan());
        assert_eq!(E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(E5M2.decode(0xfc), f32::NEG_INFINITY);
        assert_eq!(E4M3.encode(1e9), 0x7e);
        assert_eq!(E4M3.encode(-1e9), 0xfe);
        assert_eq!(E4M3.encode(f32::INFINITY), 0x7e);
        assert_eq!(E5M2.encode(f32::INFINITY), 0x7b);
        assert_eq!(E4M3.encode(1.0), 0x38);
        assert_eq!(E5M2.encode(1.0), 0x3c);
    }

    #[test]
    fn every_finite_code_roundtrips() {
        for f in [E4M3, E5M2] {
            for c in 0u8..=255 {
                let v = f.decode(c);
                if v.is_finite() {
                    assert_eq!(f.encode(v), c, "{} code {c:#x} value {v}", f.name);
                }
            }
        }
    }

    #[test]
    fn exhaustive_over_all_bf16_and_f16_inputs() {
        for f in [E4M3, E5M2] {
            for bits in 0u32..=0xffff {
                let xs = [
                    f32::from_bits(bits << 16),
                    half::f16::from_bits(bits as u16).to_f32(),
                ];
                for x in xs {
                    if x.is_nan() {
                        assert_eq!(f.encode(x) & 0x7f, f.nan_code);
                        continue;
                    }
                    assert_eq!(f.encode(x), nearest_code(&f, x), "{} x={x:e}", f.name);
                }
            }
        }
    }

    #[test]
    fn midpoints_round_to_even() {
        for f in [E4M3, E5M2] {
            for c in 0u8..f.max_code {
                let lo = f.decode(c);
                let hi = f.decode(c + 1);
                let mid = (lo + hi) / 2.0;
                let want = if c & 1 == 0 { c } else { c + 1 };
                assert_eq!(f.encode(mid), want, "{} between {lo} and {hi}", f.name);
                assert_eq!(f.encode(-mid), want | 0x80);
            }
        }
    }
}
