//! ggml's legacy 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! The quantizers follow ggml's `quantize_row_*_ref` step for step (same operation order, f32
//! arithmetic, inverse scale computed from the f32 scale before it is rounded to f16), so our
//! bytes equal ggml's and gguf-py's; with an importance matrix they follow
//! `quantize_row_*_impl`. Each dequantizer has a per-element scalar reference
//! ([`dequantize_ref`]) and a block-wise fast path; tests compare the two. Every legacy type
//! also takes codes chosen elsewhere (GPTQ on its grid, [`CodeGrid`]).

use super::kquants::{f16_bits, sigma2_of};
use super::{BlockCodec, CodeGrid, GgmlType};
use crate::dtype::f32_to_f16_bits;
use crate::rtn::{IntSpec, QParams};
use half::f16;

/// (x, importance, sigma2 of the row, out)
type WeightedFn = fn(&[f32], &[f32], f32, &mut [u8]);

/// One legacy type: how it quantizes (plain and importance-weighted) and decodes a block.
pub struct Legacy {
    ty: GgmlType,
    quantize: fn(&[f32], &mut [u8]),
    quantize_imatrix: Option<WeightedFn>,
    file_type: u32,
    grid: Option<&'static Grid32>,
}

pub static Q4_0: Legacy = Legacy {
    ty: GgmlType::Q4_0,
    quantize: quantize_q4_0,
    quantize_imatrix: Some(|x, w, s, y| quantize_q4_0_or_q5_0_imatrix(false, x, w, s, y)),
    file_type: 2,
    grid: Some(&GRID_Q4_0),
};
pub static Q4_1: Legacy = Legacy {
    ty: GgmlType::Q4_1,
    quantize: quantize_q4_1,
    quantize_imatrix: Some(|x, w, s, y| quantize_q4_1_or_q5_1_imatrix(false, x, w, s, y)),
    file_type: 3,
    grid: Some(&GRID_Q4_1),
};
pub static Q5_0: Legacy = Legacy {
    ty: GgmlType::Q5_0,
    quantize: quantize_q5_0,
    quantize_imatrix: Some(|x, w, s, y| quantize_q4_0_or_q5_0_imatrix(true, x, w, s, y)),
    file_type: 8,
    grid: Some(&GRID_Q5_0),
};
pub static Q5_1: Legacy = Legacy {
    ty: GgmlType::Q5_1,
    quantize: quantize_q5_1,
    quantize_imatrix: Some(|x, w, s, y| quantize_q4_1_or_q5_1_imatrix(true, x, w, s, y)),
    file_type: 9,
    grid: Some(&GRID_Q5_1),
};
/// Q8_0 ignores importance weights (as ggml does).
pub static Q8_0: Legacy = Legacy {
    ty: GgmlType::Q8_0,
    quantize: quantize_q8_0,
    quantize_imatrix: None,
    file_type: 7,
    grid: Some(&GRID_Q8_0),
};

impl BlockCodec for Legacy {
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn file_type(&self) -> u32 {
        self.file_type
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        (self.quantize)(x, y)
    }
    fn quantize_block_weighted(&self, x: &[f32], qw: &[f32], row_sigma2: f32, y: &mut [u8]) {
        match self.quantize_imatrix {
            Some(f) => f(x, qw, row_sigma2, y),
            None => (self.quantize)(x, y),
        }
    }
    fn uses_row_sigma2(&self) -> bool {
        self.quantize_imatrix.is_some()
    }
    fn quantize_row_weighted(&self, x: &[f32], qw: &[f32], row_sigma2: f32, y: &mut [u8]) {
        match self.quantize_imatrix {
            Some(_) => imatrix_blocks(self.ty, x, qw, row_sigma2, y),
            None => self.quantize_row(x, y),
        }
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let y: &mut [f32; 32] = y.try_into().expect("32-value block");
        dequantize_block32(self.ty, b, y)
    }
    fn dequantize_block_ref(&self, b: &[u8], y: &mut [f32]) {
        dequantize_ref(self.ty, b, y)
    }
    // Row loops with the block function known at compile time (inlined), not called through
    // the trait per 32 values.
    fn quantize_row(&self, x: &[f32], y: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if matches!(
            crate::simd::level(),
            crate::simd::Level::Avx2 | crate::simd::Level::Avx512
        ) {
            match self.ty {
                // SAFETY: the CPU has AVX2 (`level` never reports more than the CPU has)
                GgmlType::Q8_0 => return unsafe { avx2::q8_0_row(x, y) },
                // SAFETY: as above
                GgmlType::Q4_0 => return unsafe { avx2::q4_0_row(x, y) },
                // SAFETY: as above
                GgmlType::Q5_0 => return unsafe { avx2::q5_0_row(x, y) },
                // SAFETY: as above
                GgmlType::Q4_1 => return unsafe { avx2::q1_row(false, x, y) },
                // SAFETY: as above
                GgmlType::Q5_1 => return unsafe { avx2::q1_row(true, x, y) },
                _ => {}
            }
        }
        match self.ty {
            GgmlType::Q4_0 => blocks(x, y, 18, quantize_q4_0),
            GgmlType::Q4_1 => blocks(x, y, 20, quantize_q4_1),
            GgmlType::Q5_0 => blocks(x, y, 22, quantize_q5_0),
            GgmlType::Q5_1 => blocks(x, y, 24, quantize_q5_1),
            _ => blocks(x, y, 34, quantize_q8_0),
        }
    }
    fn dequantize_row(&self, y: &[u8], x: &mut [f32]) {
        dequantize_row_wide(self.ty, y, x)
    }
    fn grid(&self) -> Option<&'static dyn CodeGrid> {
        self.grid.map(|g| g as &'static dyn CodeGrid)
    }
}

#[inline]
fn put_f16(out: &mut [u8], x: f32) {
    out[..2].copy_from_slice(&f32_to_f16_bits(x).to_le_bytes());
}

#[inline]
fn get_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Value with the largest magnitude, sign kept; the first one wins on ties, as ggml's scan
/// (`if (amax < fabsf(v))`) does. Two passes so the first vectorizes.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let amax = absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// max |x| over a block (NaN-free input), as a compare-select that vectorizes.
#[inline]
fn absmax(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let c = x.chunks_exact(8);
    let r = c.remainder();
    for b in c {
        for k in 0..8 {
            let a = b[k].abs();
            m[k] = if a > m[k] { a } else { m[k] };
        }
    }
    for (k, v) in r.iter().enumerate() {
        let a = v.abs();
        m[k] = if a > m[k] { a } else { m[k] };
    }
    m.iter().fold(0f32, |a, &b| if b > a { b } else { a })
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's `roundf`: half away from zero.
#[inline]
fn roundf(x: f32) -> f32 {
    x.round()
}

/// `roundf` for |x| < 2^22 without a libm call: truncate, then step away from zero when the
/// dropped fraction is at least one half (x - trunc(x) is exact in this range).
#[inline]
fn roundf_small(x: f32) -> i32 {
    let i = x as i32;
    let f = x - i as f32;
    i + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// C's `(int8_t)x` for a float as x86 compiles it: truncate to int32 (`cvttss2si`, which gives
/// INT_MIN for NaN/±inf/out of range), then keep the low byte. Only reachable with
/// non-finite products, e.g. a block of denormals whose inverse scale overflows to inf;
/// ggml and gguf-py (numpy on x86) both store 0 there, and so do we.
#[inline]
fn c_i8(x: f32) -> i8 {
    if x.is_finite() && x.abs() < 2_147_483_648.0 {
        x as i32 as i8
    } else {
        0
    }
}

fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = absmax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    if id.is_finite() {
        // |x·id| <= 127 (+ rounding): the libm-free rounding is exact here
        for (q, &v) in y[2..34].iter_mut().zip(x) {
            *q = roundf_small(v * id) as i8 as u8;
        }
    } else {
        for (q, &v) in y[2..34].iter_mut().zip(x) {
            *q = c_i8(roundf(v * id)) as u8;
        }
    }
}

fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    for j in 0..16 {
        let q0 = (c_i8(x[j] * id + 8.5) as u8).min(15);
        let q1 = (c_i8(x[j + 16] * id + 8.5) as u8).min(15);
        y[2 + j] = q0 | (q1 << 4);
    }
}

fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    put_f16(&mut y[2..], min);
    for j in 0..16 {
        let q0 = (c_i8((x[j] - min) * id + 0.5) as u8).min(15);
        let q1 = (c_i8((x[j + 16] - min) * id + 0.5) as u8).min(15);
        y[4 + j] = q0 | (q1 << 4);
    }
}

fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = (c_i8(x[j] * id + 16.5) as u8).min(31);
        let q1 = (c_i8(x[j + 16] * id + 16.5) as u8).min(31);
        y[6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= ((q0 as u32 & 0x10) >> 4) << j;
        qh |= ((q1 as u32 & 0x10) >> 4) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, d);
    put_f16(&mut y[2..], min);
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = (c_i8((x[j] - min) * id + 0.5) as u8).min(31);
        let q1 = (c_i8((x[j + 16] - min) * id + 0.5) as u8).min(31);
        y[8 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= ((q0 as u32 & 0x10) >> 4) << j;
        qh |= ((q1 as u32 & 0x10) >> 4) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

// A row of blocks, compiled for each vector width (the same operations per value: LLVM
// vectorizes the block's loops there); the scalar loop is the reference.
crate::simd::multiversion!(dequantize_row_wide, dequantize_row_at, dequantize_row_lanes,
    dequantize_row_scalar, (ty: GgmlType, y: &[u8], x: &mut [f32]) -> ());

#[inline(always)]
fn dequantize_row_scalar(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    let bb = ty.block().1;
    for (b, out) in y.chunks_exact(bb).zip(x.chunks_exact_mut(32)) {
        let out: &mut [f32; 32] = out.try_into().expect("32-value block");
        dequantize_block32(ty, b, out);
    }
}

#[inline(always)]
fn dequantize_row_lanes<V: crate::simd::Lanes>(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    dequantize_row_scalar(ty, y, x)
}

#[inline(always)]
fn dequantize_block32(ty: GgmlType, b: &[u8], out: &mut [f32; 32]) {
    let d = get_f16(b);
    let mut q = [0i32; 32];
    let (qs, offset, m) = match ty {
        GgmlType::Q8_0 => {
            for (o, &v) in out.iter_mut().zip(&b[2..34]) {
                *o = d * (v as i8) as f32;
            }
            return;
        }
        GgmlType::Q4_0 => (&b[2..18], -8, 0.0),
        GgmlType::Q4_1 => (&b[4..20], 0, get_f16(&b[2..])),
        GgmlType::Q5_0 => (&b[6..22], -16, 0.0),
        GgmlType::Q5_1 => (&b[8..24], 0, get_f16(&b[2..])),
        _ => unreachable!(),
    };
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i32;
        q[j + 16] = (qs[j] >> 4) as i32;
    }
    let qh = match ty {
        GgmlType::Q5_0 => Some(u32::from_le_bytes([b[2], b[3], b[4], b[5]])),
        GgmlType::Q5_1 => Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
        _ => None,
    };
    if let Some(qh) = qh {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as i32;
        }
    }
    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        for (o, &v) in out.iter_mut().zip(&q) {
            *o = d * v as f32 + m;
        }
    } else {
        // no `+ 0.0`: ggml keeps the sign of a zero product
        for (o, &v) in out.iter_mut().zip(&q) {
            *o = d * (v + offset) as f32;
        }
    }
}

/// Legacy rows on AVX2: the scalar block functions' operations on 8 values at a time
/// (absmax is order-free; every value's product, bias and rounding is the scalar one's), so the
/// bytes are the scalar reference's; a unit test compares them on random and adversarial rows.
/// Blocks whose inverse scale is not finite take the scalar path.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        c_i8_bytes_ok, put_f16, quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1,
        quantize_q8_0,
    };
    use std::arch::x86_64::*;

    /// max |x| of 32 values.
    #[target_feature(enable = "avx2")]
    fn absmax32(v: &[__m256; 4]) -> f32 {
        let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], m), _mm256_and_ps(v[1], m)),
            _mm256_max_ps(_mm256_and_ps(v[2], m), _mm256_and_ps(v[3], m)),
        );
        let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
        _mm_cvtss_f32(h)
    }

    #[target_feature(enable = "avx2")]
    fn load32(x: &[f32]) -> [__m256; 4] {
        assert!(x.len() >= 32);
        // SAFETY: 32 values readable (checked), unaligned loads
        unsafe { std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k))) }
    }

    /// Four vectors of i32 (each in -32768..=32767) as 32 bytes of their low bytes, in order.
    #[target_feature(enable = "avx2")]
    fn low_bytes(i: [__m256i; 4]) -> __m256i {
        let ff = _mm256_set1_epi32(0xff);
        let i = i.map(|v| _mm256_and_si256(v, ff));
        let a = _mm256_packus_epi32(i[0], i[1]);
        let b = _mm256_packus_epi32(i[2], i[3]);
        let p = _mm256_packus_epi16(a, b);
        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8_0_row(x: &[f32], y: &mut [u8]) {
        for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
            let v = load32(xb);
            let amax = absmax32(&v);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            if !id.is_finite() {
                quantize_q8_0(xb, yb);
                continue;
            }
            put_f16(yb, d);
            let idv = _mm256_set1_ps(id);
            let half = _mm256_set1_ps(0.5);
            let q = v.map(|v| {
                // roundf for |t| <= 127.5: truncate, then step away from zero on a dropped
                // fraction of at least one half (t - trunc(t) is exact)
                let t = _mm256_mul_ps(v, idv);
                let i = _mm256_cvttps_epi32(t);
                let f = _mm256_sub_ps(t, _mm256_cvtepi32_ps(i));
                let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
                let down =
                    _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_set1_ps(-0.5)));
                _mm256_add_epi32(_mm256_sub_epi32(i, up), down)
            });
            let b = low_bytes(q);
            // SAFETY: yb[2..34] is 32 bytes (chunks of 34), unaligned store
            unsafe { _mm256_storeu_si256(yb[2..34].as_mut_ptr() as *mut __m256i, b) };
        }
    }

    /// The first value of magnitude `amax` in a block (`v` holds its 32 values), sign kept
    /// (ggml's scan), 0 for 0: one comparison per vector and the lowest set bit of their masks.
    #[target_feature(enable = "avx2")]
    fn first_of_magnitude(xb: &[f32], v: &[__m256; 4], amax: f32) -> f32 {
        if amax == 0.0 {
            return 0.0;
        }
        let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let a = _mm256_set1_ps(amax);
        let mut hit = 0u32;
        for (k, v) in v.iter().enumerate() {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(*v, m), a);
            hit |= (_mm256_movemask_ps(eq) as u32) << (8 * k);
        }
        xb.get(hit.trailing_zeros() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// (int8_t)((v - sub)·id + bias) for 32 values as bytes (their low bytes), at most `hi`.
    #[target_feature(enable = "avx2")]
    fn codes(v: &[__m256; 4], sub: f32, id: f32, bias: f32, hi: i8) -> __m256i {
        let (s, idv, b) = (
            _mm256_set1_ps(sub),
            _mm256_set1_ps(id),
            _mm256_set1_ps(bias),
        );
        let q = v.map(|v| {
            _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, s), idv), b))
        });
        _mm256_min_epu8(low_bytes(q), _mm256_set1_epi8(hi))
    }

    /// Values j and j + 16 (low nibbles) in byte j.
    #[target_feature(enable = "avx2")]
    fn nibbles(b: __m256i) -> __m128i {
        let b = _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm256_extracti128_si256::<1>(b);
        _mm_or_si128(lo, _mm_slli_epi16::<4>(hi))
    }

    /// Bit 4 of code j in bit j.
    #[target_feature(enable = "avx2")]
    fn fifth_bits(b: __m256i) -> u32 {
        _mm256_movemask_epi8(_mm256_slli_epi16::<3>(b)) as u32
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q5_0_row(x: &[f32], y: &mut [u8]) {
        for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(22)) {
            let v = load32(xb);
            let max = first_of_magnitude(xb, &v, absmax32(&v));
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            if !c_i8_bytes_ok(id) {
                quantize_q5_0(xb, yb);
                continue;
            }
            put_f16(yb, d);
            let b = codes(&v, 0.0, id, 16.5, 31);
            yb[2..6].copy_from_slice(&fifth_bits(b).to_le_bytes());
            // SAFETY: yb[6..22] is 16 bytes (chunks of 22), unaligned store
            unsafe { _mm_storeu_si128(yb[6..22].as_mut_ptr() as *mut __m128i, nibbles(b)) };
        }
    }

    /// Q4_1 (`five` false) or Q5_1 rows.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q1_row(five: bool, x: &[f32], y: &mut [u8]) {
        let bb = if five { 24 } else { 20 };
        for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(bb)) {
            let v = load32(xb);
            let mn = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
            let mx = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
            let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
            // SAFETY: 8 values writable each, unaligned stores
            unsafe {
                _mm256_storeu_ps(a.as_mut_ptr(), mn);
                _mm256_storeu_ps(b.as_mut_ptr(), mx);
            }
            let min = a.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
            let max = b.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let d = (max - min) / if five { 31.0 } else { 15.0 };
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            // a zero at either end keeps the sign of the first zero in the block: the scalar scan
            if min == 0.0 || max == 0.0 || !c_i8_bytes_ok(id) {
                if five {
                    quantize_q5_1(xb, yb)
                } else {
                    quantize_q4_1(xb, yb)
                }
                continue;
            }
            put_f16(yb, d);
            put_f16(&mut yb[2..], min);
            let b = codes(&v, min, id, 0.5, if five { 31 } else { 15 });
            let q = if five {
                yb[4..8].copy_from_slice(&fifth_bits(b).to_le_bytes());
                &mut yb[8..24]
            } else {
                &mut yb[4..20]
            };
            // SAFETY: q is 16 bytes, unaligned store
            unsafe { _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, nibbles(b)) };
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q4_0_row(x: &[f32], y: &mut [u8]) {
        for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
            let v = load32(xb);
            let max = first_of_magnitude(xb, &v, absmax32(&v));
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            if !c_i8_bytes_ok(id) {
                quantize_q4_0(xb, yb);
                continue;
            }
            put_f16(yb, d);
            let idv = _mm256_set1_ps(id);
            let bias = _mm256_set1_ps(8.5);
            // (int8_t)(x·id + 8.5), then at most 15; x·id is within ±8 here
            let q = v.map(|v| _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, idv), bias)));
            let b = _mm256_min_epu8(low_bytes(q), _mm256_set1_epi8(15));
            let lo = _mm256_castsi256_si128(b);
            let hi = _mm256_extracti128_si256::<1>(b);
            let packed = _mm_or_si128(lo, _mm_slli_epi16::<4>(hi));
            // SAFETY: yb[2..18] is 16 bytes (chunks of 18), unaligned store
            unsafe { _mm_storeu_si128(yb[2..18].as_mut_ptr() as *mut __m128i, packed) };
        }
    }
}

/// Whether a finite inverse scale keeps every `x·id + bias` of a block within i32 and i16
/// (where the vector conversions agree with C's `(int8_t)` of the scalar code): true for every
/// finite `id` computed from the block's own largest magnitude.
#[inline]
fn c_i8_bytes_ok(id: f32) -> bool {
    id.is_finite()
}

#[inline(always)]
fn blocks(x: &[f32], y: &mut [u8], bb: usize, f: impl Fn(&[f32], &mut [u8])) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(bb)) {
        f(xb, yb);
    }
}

/// Scalar reference decoder of one block: element by element straight from the layout.
fn dequantize_ref(ty: GgmlType, b: &[u8], x: &mut [f32]) {
    for (j, out) in x.iter_mut().enumerate() {
        // nibble j of a 32-value block: low nibble of byte j for j < 16, else high nibble of j-16
        let nib = |qs: &[u8]| -> u32 {
            if j < 16 {
                (qs[j] & 0x0f) as u32
            } else {
                (qs[j - 16] >> 4) as u32
            }
        };
        *out = match ty {
            GgmlType::Q8_0 => get_f16(b) * (b[2 + j] as i8) as f32,
            GgmlType::Q4_0 => get_f16(b) * (nib(&b[2..]) as i32 - 8) as f32,
            GgmlType::Q4_1 => get_f16(b) * nib(&b[4..]) as f32 + get_f16(&b[2..]),
            GgmlType::Q5_0 => {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let q = nib(&b[6..]) | (((qh >> j) & 1) << 4);
                get_f16(b) * (q as i32 - 16) as f32
            }
            GgmlType::Q5_1 => {
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let q = nib(&b[8..]) | (((qh >> j) & 1) << 4);
                get_f16(b) * q as f32 + get_f16(&b[2..])
            }
            _ => unreachable!("not a legacy type: {ty}"),
        };
    }
}

/// Q4_0 / Q5_0 with importance weights: `make_qx_quants` on each 32-value block; `sigma2`
/// is the mean square of the whole row.
fn quantize_q4_0_or_q5_0_imatrix(five: bool, x: &[f32], qw: &[f32], sigma2: f32, y: &mut [u8]) {
    imatrix_blocks(
        if five { GgmlType::Q5_0 } else { GgmlType::Q4_0 },
        x,
        qw,
        sigma2,
        y,
    )
}

/// Q4_1 / Q5_1 with importance weights: `make_qkx3_quants` on each 32-value block.
fn quantize_q4_1_or_q5_1_imatrix(five: bool, x: &[f32], qw: &[f32], sigma2: f32, y: &mut [u8]) {
    imatrix_blocks(
        if five { GgmlType::Q5_1 } else { GgmlType::Q4_1 },
        x,
        qw,
        sigma2,
        y,
    )
}

/// `quantize_row_{q4_0,q5_0,q4_1,q5_1}_impl` on whole 32-value blocks of a row (`sigma2`: the
/// row's mean square): every block's error weights, then the blocks' scale searches side by
/// side in the vector lanes (sixteen at a time; the same results as one after another), then
/// each block packed.
fn imatrix_blocks(ty: GgmlType, x: &[f32], qw: &[f32], sigma2: f32, y: &mut [u8]) {
    const G: usize = 16;
    let bb = ty.block().1;
    for ((xg, qg), yg) in x
        .chunks(32 * G)
        .zip(qw.chunks(32 * G))
        .zip(y.chunks_mut(bb * G))
    {
        let nb = xg.len() / 32;
        let mut w = [0f32; 32 * G];
        for j in 0..32 * nb {
            w[j] = qg[j] * (sigma2 + xg[j] * xg[j]).sqrt();
        }
        let xg = &xg[..32 * nb];
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let five = ty == GgmlType::Q5_0;
                let (mut l, mut d) = ([0i8; 32 * G], [0f32; G]);
                let nmax = if five { 16 } else { 8 };
                super::lanes::qx_many(xg, 32, nmax, &mut l, &mut d, Some(&w[..32 * nb]));
                for k in 0..nb {
                    pack_q4_0_or_q5_0(five, d[k], &l[32 * k..32 * k + 32], &mut yg[bb * k..]);
                }
            }
            _ => {
                let five = ty == GgmlType::Q5_1;
                let (mut l, mut dm) = ([0u8; 32 * G], [(0f32, 0f32); G]);
                let nmax = if five { 31 } else { 15 };
                super::kquants::make_qkx2_quants_many(
                    xg,
                    &w[..32 * nb],
                    32,
                    nmax,
                    &mut l,
                    &mut dm,
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                for k in 0..nb {
                    let (d, min) = dm[k];
                    let y = &mut yg[bb * k..];
                    pack_q4_1_or_q5_1(five, d, min, &l[32 * k..32 * k + 32], y);
                }
            }
        }
    }
}

/// Q4_0 / Q5_0 block from its scale and levels (0..16 / 0..32).
fn pack_q4_0_or_q5_0(five: bool, d: f32, l: &[i8], y: &mut [u8]) {
    y[0..2].copy_from_slice(&f16_bits(d));
    if five {
        let mut qh = 0u32;
        for j in 0..16 {
            let (a, b) = (l[j] as u8, l[j + 16] as u8);
            y[6 + j] = (a & 0x0f) | ((b & 0x0f) << 4);
            qh |= ((a as u32 & 0x10) >> 4) << j;
            qh |= ((b as u32 & 0x10) >> 4) << (j + 16);
        }
        y[2..6].copy_from_slice(&qh.to_le_bytes());
    } else {
        for j in 0..16 {
            y[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

/// Q4_1 / Q5_1 block from its scale, (negated) minimum and levels.
fn pack_q4_1_or_q5_1(five: bool, d: f32, min: f32, l: &[u8], y: &mut [u8]) {
    y[0..2].copy_from_slice(&f16_bits(d));
    y[2..4].copy_from_slice(&f16_bits(-min));
    if five {
        let mut qh = 0u32;
        for j in 0..16 {
            let (a, b) = (l[j], l[j + 16]);
            y[8 + j] = (a & 0x0f) | ((b & 0x0f) << 4);
            qh |= ((a as u32 & 0x10) >> 4) << j;
            qh |= ((b as u32 & 0x10) >> 4) << (j + 16);
        }
        y[4..8].copy_from_slice(&qh.to_le_bytes());
    } else {
        for j in 0..16 {
            y[4 + j] = l[j] | (l[j + 16] << 4);
        }
    }
}

/// Mean square of a row, ggml's `sigma2` for the legacy types' imatrix path.
pub(super) fn row_sigma2(x: &[f32]) -> f32 {
    sigma2_of(x, false)
}

/// The grid of a legacy type that GPTQ chooses codes on: per 32-value block a scale `d` (and for
/// Q4_1/Q5_1 a minimum `m`), fitted as ggml fits them and rounded to f16.
pub struct Grid32 {
    ty: GgmlType,
}
static GRID_Q4_0: Grid32 = Grid32 { ty: GgmlType::Q4_0 };
static GRID_Q4_1: Grid32 = Grid32 { ty: GgmlType::Q4_1 };
static GRID_Q5_0: Grid32 = Grid32 { ty: GgmlType::Q5_0 };
static GRID_Q5_1: Grid32 = Grid32 { ty: GgmlType::Q5_1 };
static GRID_Q8_0: Grid32 = Grid32 { ty: GgmlType::Q8_0 };

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl CodeGrid for Grid32 {
    fn spec(&self) -> IntSpec {
        IntSpec {
            bits: match self.ty {
                GgmlType::Q8_0 => 8,
                GgmlType::Q5_0 | GgmlType::Q5_1 => 5,
                _ => 4,
            },
            symmetric: !matches!(self.ty, GgmlType::Q4_1 | GgmlType::Q5_1),
        }
    }
    fn code_range(&self) -> (i32, i32) {
        match self.ty {
            GgmlType::Q8_0 => (-127, 127),
            GgmlType::Q5_0 | GgmlType::Q5_1 => (0, 31),
            _ => (0, 15),
        }
    }
    fn group(&self) -> usize {
        32
    }
    fn fit(&self, w: &[f32], out: &mut [(QParams, f32)]) {
        out[0] = self.fit_block(w);
    }
    fn fit_weighted(&self, w: &[f32], qw: &[f32], v: Option<&[f32]>, out: &mut [(QParams, f32)]) {
        let p = |scale: f32, zero: i32| QParams { scale, zero };
        out[0] = match self.ty {
            // codes 0..15 (0..31) around 8 (16), d from the signed extreme
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let half = if self.ty == GgmlType::Q4_0 { 8 } else { 16 };
                let d =
                    crate::search::sym(w, qw, v, half as f32, (-half, half - 1), true, f16_round);
                (p(d, half), 0.0)
            }
            // q·d + m, m the block's own minimum (not held at or below 0)
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let top = if self.ty == GgmlType::Q4_1 { 15 } else { 31 };
                let (d, m) =
                    crate::search::asym(w, qw, v, top, false, |d, m| (f16_round(d), f16_round(m)));
                (p(d, 0), m)
            }
            _ => {
                let d = crate::search::sym(w, qw, v, 127.0, (-127, 127), false, f16_round);
                (p(d, 0), 0.0)
            }
        };
    }
    fn pack_row(&self, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]) {
        pack_codes_row(self.ty, codes, d, m, out)
    }
}

impl Grid32 {
    fn fit_block(&self, w: &[f32]) -> (QParams, f32) {
        let p = |scale: f32, zero: i32| QParams { scale, zero };
        match self.ty {
            // d = (signed max-|x| value) / -8 (Q5_0: / -16), codes 0..15 (0..31), value
            // (q - 8)·d ((q - 16)·d)
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in w {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let half = if self.ty == GgmlType::Q4_0 { 8 } else { 16 };
                (p(f16_round(max / -(half as f32)), half), 0.0)
            }
            // d = (max - min) / 15 (Q5_1: / 31), m = min, codes 0..15 (0..31), value q·d + m
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let (mn, mx) = w
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let levels = if self.ty == GgmlType::Q4_1 {
                    15.0
                } else {
                    31.0
                };
                (p(f16_round((mx - mn) / levels), 0), f16_round(mn))
            }
            // d = max|x| / 127, codes -127..127, value q·d
            _ => {
                let amax = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
                (p(f16_round(amax / 127.0), 0), 0.0)
            }
        }
    }
}

/// Packs one row of chosen codes into legacy blocks (GPTQ on a ggml grid): per 32-column block,
/// its scale `d` and (Q4_1, Q5_1) minimum `m`, already f16-representable, and 32 codes (0..15
/// for the 4-bit types, 0..31 for the 5-bit ones, -127..127 for Q8_0), laid out as ggml's
/// `quantize_row_*_ref` lays them out. Decodes to `(q - 8)·d`, `(q - 16)·d`, `q·d + m` and `q·d`
/// as ggml's dequantizers do.
fn pack_codes_row(ty: GgmlType, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]) {
    let (bs, bytes) = ty.block();
    assert_eq!(codes.len() % bs, 0);
    // (has a minimum, has a 5th-bit word)
    let (with_min, with_qh) = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => (false, false),
        GgmlType::Q4_1 => (true, false),
        GgmlType::Q5_0 => (false, true),
        GgmlType::Q5_1 => (true, true),
        _ => panic!("{ty} is not a legacy type"),
    };
    for (b, (q, y)) in codes
        .chunks_exact(bs)
        .zip(out.chunks_exact_mut(bytes))
        .enumerate()
    {
        put_f16(y, d[b]);
        let mut at = 2;
        if with_min {
            put_f16(&mut y[2..], m[b]);
            at = 4;
        }
        if ty == GgmlType::Q8_0 {
            for j in 0..32 {
                y[2 + j] = q[j] as u8;
            }
            continue;
        }
        if with_qh {
            let mut qh = 0u32;
            for j in 0..16 {
                qh |= ((q[j] as u32 >> 4) & 1) << j;
                qh |= ((q[j + 16] as u32 >> 4) & 1) << (j + 16);
            }
            y[at..at + 4].copy_from_slice(&qh.to_le_bytes());
            at += 4;
        }
        for j in 0..16 {
            y[at + j] = (q[j] as u8 & 0x0f) | ((q[j + 16] as u8 & 0x0f) << 4);
        }
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn roundf_small_equals_roundf() {
        let mut rng = crate::synth::Rng::new(1);
        let mut xs: Vec<f32> = (0..200_000)
            .map(|_| (rng.uniform() as f32 - 0.5) * 260.0)
            .collect();
        for k in -130..130 {
            let h = k as f32 + 0.5;
            xs.extend([
                h,
                f32::from_bits(h.to_bits() - 1),
                f32::from_bits(h.to_bits() + 1),
                k as f32,
                -0.0,
            ]);
        }
        for x in xs {
            assert_eq!(roundf_small(x), x.round() as i32, "{x:e}");
        }
    }
}

#[cfg(test)]
mod pack_codes_tests {
    use super::*;
    use crate::ggml::dequantize_row;

    /// Packed codes decode, through ggml's dequantizer, to the values the codes stand for.
    #[test]
    fn packed_codes_decode_to_their_values() {
        let mut rng = crate::synth::Rng::new(7);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let (lo, hi, zero) = match ty {
                GgmlType::Q8_0 => (-127i32, 127i32, 0i32),
                GgmlType::Q4_0 => (0, 15, 8),
                _ => (0, 15, 0),
            };
            let codes: Vec<i8> = (0..64)
                .map(|_| (lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32) as i8)
                .collect();
            let d: Vec<f32> = (0..2)
                .map(|_| f16_round_for_test(0.01 + rng.normal().abs() as f32 * 0.01))
                .collect();
            let m: Vec<f32> = (0..2)
                .map(|_| f16_round_for_test(-(rng.normal().abs() as f32) * 0.1))
                .collect();
            let mut bytes = vec![0u8; ty.row_bytes(64)];
            pack_codes_row(ty, &codes, &d, &m, &mut bytes);
            let mut y = vec![0f32; 64];
            dequantize_row(ty, &bytes, &mut y);
            for (i, (&q, &v)) in codes.iter().zip(&y).enumerate() {
                let b = i / 32;
                let off = if ty == GgmlType::Q4_1 { m[b] } else { 0.0 };
                assert_eq!(v, (q as i32 - zero) as f32 * d[b] + off, "{ty} element {i}");
            }
        }
    }

    fn f16_round_for_test(x: f32) -> f32 {
        half::f16::from_f32(x).to_f32()
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod avx2_tests {
    use super::*;

    /// Rows decode to the same bits (signed zeros included) at every vector level, for every
    /// legacy type, on random bytes (any scale, any codes: NaN and infinite scales too).
    #[test]
    fn dequantize_row_at_every_level_equals_scalar() {
        use crate::simd::Level;
        let mut rng = crate::synth::Rng::new(17);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let blocks = 64;
            let bytes: Vec<u8> = (0..blocks * ty.block().1)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let mut want = vec![0f32; blocks * 32];
            dequantize_row_scalar(ty, &bytes, &mut want);
            for lv in [Level::Scalar, Level::Base, Level::Avx2, Level::Avx512] {
                let mut got = vec![1f32; blocks * 32];
                dequantize_row_at(lv, ty, &bytes, &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&got), bits(&want), "{ty:?} {lv:?}");
            }
        }
    }

    /// The AVX2 rows write the scalar block functions' bytes, on weight-like rows and on
    /// blocks of zeros, denormals, ties at .5 steps, one outlier, and values near f32's limit.
    #[test]
    fn avx2_rows_equal_the_scalar_blocks() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut x = crate::synth::weights_like(32 * 512, 11);
        let special: [Vec<f32>; 10] = [
            vec![0.0; 32],
            vec![1e-40; 32],
            (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect(),
            (0..32).map(|i| if i == 5 { -3.0 } else { 0.01 }).collect(),
            (0..32)
                .map(|i| if i % 2 == 0 { 3e38 } else { -1e38 })
                .collect(),
            (0..32).map(|i| (i as f32 - 15.5) / 15.5 * 127.0).collect(),
            (0..32)
                .map(|i| if i == 31 { -2.5e-39 } else { 1e-45 })
                .collect(),
            (0..32)
                .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                .collect(),
            (0..32)
                .map(|i| {
                    if i == 4 {
                        0.0
                    } else if i == 9 {
                        -0.0
                    } else {
                        0.5 + i as f32
                    }
                })
                .collect(),
            (0..32)
                .map(|i| if i == 2 { -0.0 } else { -(i as f32) })
                .collect(),
        ];
        for b in special {
            x.extend(b);
        }
        for (ty, bb, f) in [
            (GgmlType::Q8_0, 34, quantize_q8_0 as fn(&[f32], &mut [u8])),
            (GgmlType::Q4_0, 18, quantize_q4_0),
            (GgmlType::Q5_0, 22, quantize_q5_0),
            (GgmlType::Q4_1, 20, quantize_q4_1),
            (GgmlType::Q5_1, 24, quantize_q5_1),
        ] {
            let mut want = vec![0u8; x.len() / 32 * bb];
            blocks(&x, &mut want, bb, f);
            let mut got = vec![0u8; want.len()];
            // SAFETY: AVX2 checked above
            unsafe {
                match ty {
                    GgmlType::Q8_0 => avx2::q8_0_row(&x, &mut got),
                    GgmlType::Q4_0 => avx2::q4_0_row(&x, &mut got),
                    GgmlType::Q5_0 => avx2::q5_0_row(&x, &mut got),
                    GgmlType::Q4_1 => avx2::q1_row(false, &x, &mut got),
                    _ => avx2::q1_row(true, &x, &mut got),
                }
            }
            for (k, (a, b)) in want.chunks(bb).zip(got.chunks(bb)).enumerate() {
                assert_eq!(a, b, "{ty} block {k}");
            }
        }
    }
}
