//! Element types of stored tensors and their f32 codecs.
//!
//! Everything here works on little-endian byte slices, so callers can hand in memory-mapped
//! data without caring about alignment.

use crate::fp8::{Fp8Format, E4M3, E5M2};
use half::{bf16, f16};

/// An element type as stored in safetensors (and, for the float types, GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    F8E4M3,
    F8E5M2,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The name safetensors uses in its header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    /// Parses a safetensors dtype name. `None` for names we do not read.
    pub fn from_safetensors_name(s: &str) -> Option<DType> {
        Some(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "U16" => DType::U16,
            "I16" => DType::I16,
            "U32" => DType::U32,
            "I32" => DType::I32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "F8_E4M3" => DType::F8E4M3,
            "F8_E5M2" => DType::F8E5M2,
            _ => return None,
        })
    }

    /// True for element types whose values are real numbers we can quantize.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8E4M3 | DType::F8E5M2
        )
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// Decodes `out.len()` little-endian values of float type `dtype` from `src` into f32.
///
/// Panics if `dtype` is not a float type or `src` is shorter than `out.len() * size`;
/// callers check both when they validate the file.
pub fn decode_f32(dtype: DType, src: &[u8], out: &mut [f32]) {
    let n = out.len();
    let sz = dtype.size();
    assert!(src.len() >= n * sz, "decode_f32: source too short");
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::BF16 => {
            #[cfg(target_endian = "little")]
            if let Ok(h) = bytemuck::try_cast_slice::<u8, u16>(&src[..2 * n]) {
                // aligned source: one shift per value, vectorized at the CPU's width
                widen_bf16(h, out);
                return;
            }
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                // bf16 -> f32 is exact: the 16 bits become the high half of the f32.
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            let f = if dtype == DType::F8E4M3 { &E4M3 } else { &E5M2 };
            // every code's value once, then a lookup per value
            let table: [f32; 256] = std::array::from_fn(|b| f.decode(b as u8));
            for (o, &b) in out.iter_mut().zip(src) {
                *o = table[b as usize];
            }
        }
        other => panic!("decode_f32: {other} is not a float type"),
    }
}

crate::simd::multiversion!(widen_bf16, widen_bf16_at, widen_bf16_lanes, widen_bf16_scalar,
    (h: &[u16], out: &mut [f32]) -> ());

/// bf16 bits to f32: the 16 bits become the high half (exact).
#[inline(always)]
fn widen_bf16_scalar(h: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(h) {
        *o = f32::from_bits((v as u32) << 16);
    }
}

#[inline(always)]
fn widen_bf16_lanes<V: crate::simd::Lanes>(h: &[u16], out: &mut [f32]) {
    widen_bf16_scalar(h, out)
}

/// [`decode_f32`], and whether every decoded value is finite: for bf16 found while widening
/// (one pass over the source), for the other types by [`any_nonfinite`] on the output.
pub fn decode_f32_finite(dtype: DType, src: &[u8], out: &mut [f32]) -> bool {
    #[cfg(target_endian = "little")]
    if dtype == DType::BF16 && src.len() >= 2 * out.len() {
        if let Ok(h) = bytemuck::try_cast_slice::<u8, u16>(&src[..2 * out.len()]) {
            return widen_bf16_finite(h, out);
        }
    }
    decode_f32(dtype, src, out);
    !any_nonfinite(out)
}

crate::simd::multiversion!(widen_bf16_finite, widen_bf16_finite_at, widen_bf16_finite_lanes,
    widen_bf16_finite_scalar, (h: &[u16], out: &mut [f32]) -> bool);

/// bf16 bits to f32, and whether no value has an all-ones exponent (NaN or ±inf), per 256
/// values without branches so the loop vectorizes.
#[inline(always)]
fn widen_bf16_finite_scalar(h: &[u16], out: &mut [f32]) -> bool {
    let mut bad = 0u16;
    for (o, h) in out.chunks_mut(256).zip(h.chunks(256)) {
        let mut acc = 0u16;
        for (o, &v) in o.iter_mut().zip(h) {
            *o = f32::from_bits((v as u32) << 16);
            acc |= ((v & 0x7f80) == 0x7f80) as u16;
        }
        bad |= acc;
    }
    bad == 0
}

#[inline(always)]
fn widen_bf16_finite_lanes<V: crate::simd::Lanes>(h: &[u16], out: &mut [f32]) -> bool {
    widen_bf16_finite_scalar(h, out)
}

crate::simd::multiversion!(any_nonfinite_wide, any_nonfinite_at, any_nonfinite_lanes,
    any_nonfinite_scalar, (x: &[f32]) -> bool);

/// Whether any value is NaN or ±inf (exponent bits all ones), at the CPU's vector width.
pub fn any_nonfinite(x: &[f32]) -> bool {
    any_nonfinite_wide(x)
}

/// Branch-free per 256 values (the loop vectorizes), so a finite slice costs one pass.
#[inline(always)]
fn any_nonfinite_scalar(x: &[f32]) -> bool {
    x.chunks(256).any(|c| {
        c.iter().fold(0u32, |a, v| {
            a | ((v.to_bits() & 0x7f80_0000) == 0x7f80_0000) as u32
        }) != 0
    })
}

#[inline(always)]
fn any_nonfinite_lanes<V: crate::simd::Lanes>(x: &[f32]) -> bool {
    any_nonfinite_scalar(x)
}

/// Rounds one f32 to bf16 (round to nearest even, NaN kept quiet), as ggml and torch do.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep the sign and the top payload bits, force quiet.
        return ((u >> 16) | 0x40) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

/// Rounds one f32 to IEEE half (round to nearest even), as F16C's `vcvtps2ph` with mode 0.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Encodes f32 values as `dtype` (F32, F16 or BF16), little-endian, into `out`.
pub fn encode_float(dtype: DType, src: &[f32], out: &mut [u8]) {
    let sz = dtype.size();
    assert!(
        out.len() >= src.len() * sz,
        "encode_float: output too short"
    );
    match dtype {
        DType::F32 => {
            for (c, &x) in out.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        DType::F16 => {
            for (c, &x) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f32_to_f16_bits(x).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (c, &x) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
        DType::F8E4M3 => {
            for (c, &x) in out.iter_mut().zip(src) {
                *c = E4M3.encode(x);
            }
        }
        DType::F8E5M2 => {
            for (c, &x) in out.iter_mut().zip(src) {
                *c = E5M2.encode(x);
            }
        }
        other => panic!("encode_float: cannot encode {other}"),
    }
}

/// Rounds `x` to the nearest value representable in `dtype` (F32, F16, BF16) and returns it as f32.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_bits(f32_to_bf16_bits(x)).to_f32(),
        other => panic!("round_to: {other} is not a scale dtype"),
    }
}

/// Machine epsilon of a float dtype: the replacement for a zero scale, as compressed-tensors uses.
pub fn eps(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::EPSILON.to_f32(),
        DType::BF16 => bf16::EPSILON.to_f32(),
        _ => f32::EPSILON,
    }
}

/// Format descriptor so callers can name fp8 formats uniformly.
pub fn fp8_format(dtype: DType) -> Option<Fp8Format> {
    match dtype {
        DType::F8E4M3 => Some(E4M3),
        DType::F8E5M2 => Some(E5M2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 widening and the non-finite scan give the scalar loops' results at every
    /// vector level (random bits: NaN, inf, subnormal and zero patterns included).
    #[test]
    fn widening_and_scan_at_every_level_equal_scalar() {
        use crate::simd::Level;
        let mut rng = crate::synth::Rng::new(23);
        let h: Vec<u16> = (0..1000).map(|_| rng.next_u64() as u16).collect();
        let mut want = vec![0f32; h.len()];
        widen_bf16_scalar(&h, &mut want);
        let finite: Vec<f32> = want
            .iter()
            .map(|v| if v.is_finite() { *v } else { 1.0 })
            .collect();
        for lv in [Level::Scalar, Level::Base, Level::Avx2, Level::Avx512] {
            let mut got = vec![0f32; h.len()];
            widen_bf16_at(lv, &h, &mut got);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{lv:?}"
            );
            assert!(any_nonfinite_at(lv, &want));
            assert!(!any_nonfinite_at(lv, &finite));
            // widening and scanning in one pass: the same values, the same verdict, with one
            // non-finite value anywhere or none
            let fin: Vec<u16> = h
                .iter()
                .map(|&v| if v & 0x7f80 == 0x7f80 { 0x3f80 } else { v })
                .collect();
            let cases = [
                None,
                Some((0usize, 0x7fc0u16)),
                Some((300, 0xff80)),
                Some((999, 0x7f81)),
            ];
            for (k, bad) in cases.into_iter().enumerate() {
                let mut hh = fin.clone();
                if let Some((i, b)) = bad {
                    hh[i] = b;
                }
                let mut w = vec![0f32; hh.len()];
                widen_bf16_scalar(&hh, &mut w);
                let mut g = vec![0f32; hh.len()];
                let ok = widen_bf16_finite_at(lv, &hh, &mut g);
                assert_eq!(ok, bad.is_none(), "{lv:?} {k:?}");
                assert!(
                    g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{lv:?}"
                );
            }
            for (i, bad) in [
                (0usize, f32::NAN),
                (257, f32::INFINITY),
                (999, f32::NEG_INFINITY),
            ] {
                let mut one = finite.clone();
                one[i] = bad;
                assert!(any_nonfinite_at(lv, &one), "{lv:?} {i}");
            }
        }
    }

    #[test]
    fn bf16_rounding_matches_half_crate_on_all_patterns() {
        // Every bf16 value widened, plus values halfway between neighbours (ties to even).
        for hi in 0u32..=0xffff {
            let x = f32::from_bits(hi << 16);
            if x.is_nan() {
                continue;
            }
            assert_eq!(f32_to_bf16_bits(x), hi as u16);
            let mid = f32::from_bits((hi << 16) | 0x8000);
            if mid.is_nan() || mid.is_infinite() {
                continue;
            }
            assert_eq!(
                f32_to_bf16_bits(mid),
                bf16::from_f32(mid).to_bits(),
                "{mid:e}"
            );
        }
    }

    #[test]
    fn decode_encode_roundtrip() {
        let vals = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1e-7, 3.0e38];
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let mut bytes = vec![0u8; vals.len() * dt.size()];
            encode_float(dt, &vals, &mut bytes);
            let mut back = vec![0f32; vals.len()];
            decode_f32(dt, &bytes, &mut back);
            for (a, b) in vals.iter().zip(&back) {
                assert_eq!(round_to(dt, *a).to_bits(), b.to_bits(), "{dt}: {a}");
            }
        }
    }

    #[test]
    fn names_roundtrip() {
        for dt in [
            DType::Bool,
            DType::U8,
            DType::I8,
            DType::U16,
            DType::I16,
            DType::U32,
            DType::I32,
            DType::U64,
            DType::I64,
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
            DType::F8E4M3,
            DType::F8E5M2,
        ] {
            assert_eq!(
                DType::from_safetensors_name(dt.safetensors_name()),
                Some(dt)
            );
        }
        assert_eq!(DType::from_safetensors_name("F4"), None);
    }
}
