//! ggml tensor types and the legacy block codecs (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
//!
//! The quantizers follow ggml's `quantize_row_*_ref` step for step (same operation order, f32
//! arithmetic, inverse scale computed from the f32 scale before it is rounded to f16), so our bytes
//! equal ggml's and gguf-py's. Each dequantizer has a per-element scalar reference
//! (`dequantize_row_ref`) and a block-wise fast path (`dequantize_row`); tests compare the two.

use crate::dtype::{f32_to_bf16_bits, f32_to_f16_bits};
use crate::kquants as kq;
use half::f16;

/// ggml tensor types with their GGUF ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

use GgmlType::*;

const ALL: [GgmlType; 32] = [
    F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
    IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16,
    TQ1_0, TQ2_0, MXFP4,
];

impl GgmlType {
    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        ALL.iter().copied().find(|t| t.id() == id)
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 | F64 => (1, 8),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            MXFP4 => (32, 17),
        }
    }

    /// Bytes taken by `n` values (n must be a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        let (bs, bb) = self.block();
        n / bs * bb
    }

    pub fn name(self) -> &'static str {
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    pub fn from_name(s: &str) -> Option<GgmlType> {
        ALL.iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Types this crate can encode from f32.
    pub fn can_quantize(self) -> bool {
        matches!(
            self,
            F32 | F16
                | BF16
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | IQ4_NL
                | IQ4_XS
        )
    }

    /// Types this crate can decode to f32.
    pub fn can_dequantize(self) -> bool {
        self.can_quantize()
    }
}

/// llama-quantize's fallback for a row length the type's blocks do not divide: 256-value
/// types step down to a 32-value type (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
/// Q6_K → Q8_0, IQ4_XS → IQ4_NL), and anything that still does not fit becomes F16.
/// Returns `ty` itself when no fallback is needed.
pub fn fallback_for(ty: GgmlType, ncols: usize) -> GgmlType {
    if ncols.is_multiple_of(ty.block().0) {
        return ty;
    }
    let next = match ty {
        IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
        Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(next.block().0) {
        next
    } else {
        F16
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

fn quantize_block(ty: GgmlType, x: &[f32], y: &mut [u8]) {
    match ty {
        Q8_0 => {
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
        Q4_0 => {
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
        Q4_1 => {
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
        Q5_0 => {
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
        Q5_1 => {
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
        Q2_K => kq::quantize_block_q2_k(x, y),
        Q3_K => kq::quantize_block_q3_k(x, y),
        Q4_K => kq::quantize_block_q4_k(x, y),
        Q5_K => kq::quantize_block_q5_k(x, y),
        Q6_K => kq::quantize_block_q6_k(x, None, y),
        IQ4_NL => kq::quantize_block_iq4_nl(x, y),
        IQ4_XS => kq::quantize_block_iq4_xs(x, None, y),
        _ => unreachable!("quantize_block called with {ty}"),
    }
}

/// Encodes a row of f32 values as `ty`. `x.len()` must be a multiple of the block size and
/// `y.len() == ty.row_bytes(x.len())`. Panics on a type that [`GgmlType::can_quantize`] rejects.
pub fn quantize_row(ty: GgmlType, x: &[f32], y: &mut [u8]) {
    let (bs, bb) = ty.block();
    assert!(ty.can_quantize(), "cannot quantize to {ty}");
    assert_eq!(
        x.len() % bs,
        0,
        "row length {} not a multiple of {bs}",
        x.len()
    );
    assert_eq!(y.len(), x.len() / bs * bb);
    match ty {
        F32 => {
            for (c, v) in y.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (c, v) in y.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&f32_to_f16_bits(*v).to_le_bytes());
            }
        }
        BF16 => {
            for (c, v) in y.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        _ => {
            for (xb, yb) in x.chunks_exact(bs).zip(y.chunks_exact_mut(bb)) {
                quantize_block(ty, xb, yb);
            }
        }
    }
}

/// Block decoders shared by both dequantizer paths for the 256-value types (and IQ4_NL).
fn dequantize_block_k(ty: GgmlType, b: &[u8], out: &mut [f32]) -> bool {
    match ty {
        Q2_K => kq::dequantize_block_q2_k(b, out),
        Q3_K => kq::dequantize_block_q3_k(b, out),
        Q4_K => kq::dequantize_block_q4_k(b, out),
        Q5_K => kq::dequantize_block_q5_k(b, out),
        Q6_K => kq::dequantize_block_q6_k(b, out),
        IQ4_NL => kq::dequantize_block_iq4_nl(b, out),
        IQ4_XS => kq::dequantize_block_iq4_xs(b, out),
        _ => return false,
    }
    true
}

/// Encodes a row with an importance matrix `qw` (one weight per column, as llama-quantize's
/// `--imatrix`), following ggml's `quantize_row_*_impl`. Types that ignore importance
/// (Q8_0, floats) encode as [`quantize_row`].
pub fn quantize_row_weighted(ty: GgmlType, x: &[f32], qw: &[f32], y: &mut [u8]) {
    let (bs, bb) = ty.block();
    assert_eq!(qw.len(), x.len(), "one importance weight per column");
    assert_eq!(y.len(), x.len() / bs * bb);
    let sigma2 = kq::row_sigma2(x);
    for ((xb, wb), yb) in x
        .chunks_exact(bs)
        .zip(qw.chunks_exact(bs))
        .zip(y.chunks_exact_mut(bb))
    {
        match ty {
            Q4_0 => kq::quantize_block_q4_0_or_q5_0_imatrix(false, xb, wb, sigma2, yb),
            Q5_0 => kq::quantize_block_q4_0_or_q5_0_imatrix(true, xb, wb, sigma2, yb),
            Q4_1 => kq::quantize_block_q4_1_or_q5_1_imatrix(false, xb, wb, sigma2, yb),
            Q5_1 => kq::quantize_block_q4_1_or_q5_1_imatrix(true, xb, wb, sigma2, yb),
            Q2_K => kq::quantize_block_q2_k_imatrix(xb, wb, yb),
            Q3_K => kq::quantize_block_q3_k_imatrix(xb, wb, yb),
            Q4_K => kq::quantize_block_q4_k_imatrix(xb, wb, yb),
            Q5_K => kq::quantize_block_q5_k_imatrix(xb, wb, yb),
            Q6_K => kq::quantize_block_q6_k(xb, Some(wb), yb),
            IQ4_NL => kq::quantize_block_iq4_nl_imatrix(xb, wb, yb),
            IQ4_XS => kq::quantize_block_iq4_xs(xb, Some(wb), yb),
            _ => return quantize_row(ty, x, y),
        }
    }
}

/// Scalar reference dequantizer: decodes element by element straight from the block layout
/// (K-quants and IQ4_NL: block by block, they have a single implementation).
pub fn dequantize_row_ref(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    let (bs, bb) = ty.block();
    assert!(ty.can_dequantize(), "cannot dequantize {ty}");
    assert_eq!(y.len(), x.len() / bs * bb);
    if matches!(ty, Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_NL | IQ4_XS) {
        for (b, o) in y.chunks_exact(bb).zip(x.chunks_exact_mut(bs)) {
            dequantize_block_k(ty, b, o);
        }
        return;
    }
    for (i, out) in x.iter_mut().enumerate() {
        let b = &y[(i / bs) * bb..(i / bs + 1) * bb];
        let j = i % bs;
        // nibble j of a 32-value block: low nibble of byte j for j < 16, else high nibble of j-16
        let nib = |qs: &[u8]| -> u32 {
            if j < 16 {
                (qs[j] & 0x0f) as u32
            } else {
                (qs[j - 16] >> 4) as u32
            }
        };
        *out = match ty {
            F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            F16 => get_f16(b),
            BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            Q8_0 => get_f16(b) * (b[2 + j] as i8) as f32,
            Q4_0 => get_f16(b) * (nib(&b[2..]) as i32 - 8) as f32,
            Q4_1 => get_f16(b) * nib(&b[4..]) as f32 + get_f16(&b[2..]),
            Q5_0 => {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let q = nib(&b[6..]) | (((qh >> j) & 1) << 4);
                get_f16(b) * (q as i32 - 16) as f32
            }
            Q5_1 => {
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let q = nib(&b[8..]) | (((qh >> j) & 1) << 4);
                get_f16(b) * q as f32 + get_f16(&b[2..])
            }
            _ => unreachable!(),
        };
    }
}

/// Block-wise dequantizer (the one the pipeline uses); equal to [`dequantize_row_ref`].
pub fn dequantize_row(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    let (bs, bb) = ty.block();
    assert!(ty.can_dequantize(), "cannot dequantize {ty}");
    assert_eq!(y.len(), x.len() / bs * bb);
    match ty {
        F32 | F16 | BF16 => {
            let dt = match ty {
                F32 => crate::DType::F32,
                F16 => crate::DType::F16,
                _ => crate::DType::BF16,
            };
            crate::dtype::decode_f32(dt, y, x);
        }
        _ => {
            for (b, out) in y.chunks_exact(bb).zip(x.chunks_exact_mut(bs)) {
                if !dequantize_block_k(ty, b, out) {
                    let out: &mut [f32; 32] = out.try_into().expect("32-value block");
                    dequantize_block32(ty, b, out);
                }
            }
        }
    }
}

#[inline]
fn dequantize_block32(ty: GgmlType, b: &[u8], out: &mut [f32; 32]) {
    let d = get_f16(b);
    let mut q = [0i32; 32];
    let (qs, offset, m) = match ty {
        Q8_0 => {
            for (o, &v) in out.iter_mut().zip(&b[2..34]) {
                *o = d * (v as i8) as f32;
            }
            return;
        }
        Q4_0 => (&b[2..18], -8, 0.0),
        Q4_1 => (&b[4..20], 0, get_f16(&b[2..])),
        Q5_0 => (&b[6..22], -16, 0.0),
        Q5_1 => (&b[8..24], 0, get_f16(&b[2..])),
        _ => unreachable!(),
    };
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i32;
        q[j + 16] = (qs[j] >> 4) as i32;
    }
    let qh = match ty {
        Q5_0 => Some(u32::from_le_bytes([b[2], b[3], b[4], b[5]])),
        Q5_1 => Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
        _ => None,
    };
    if let Some(qh) = qh {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as i32;
        }
    }
    if matches!(ty, Q4_1 | Q5_1) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::weights_like;

    const QTYPES: [GgmlType; 5] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0];

    #[test]
    fn ids_roundtrip_and_sizes() {
        for t in ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(Q4_0.row_bytes(4096), 4096 / 32 * 18);
        assert_eq!(GgmlType::from_id(4), None);
    }

    #[test]
    fn fast_dequant_equals_scalar_reference() {
        for (seed, ty) in QTYPES.iter().chain(&[F32, F16, BF16]).enumerate() {
            let x = weights_like(4096, seed as u64 + 1);
            let mut y = vec![0u8; ty.row_bytes(x.len())];
            quantize_row(*ty, &x, &mut y);
            let mut a = vec![0f32; x.len()];
            let mut b = vec![0f32; x.len()];
            dequantize_row(*ty, &y, &mut a);
            dequantize_row_ref(*ty, &y, &mut b);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty}"
            );
        }
    }

    #[test]
    fn error_is_bounded_by_half_a_step() {
        for ty in QTYPES {
            let x = weights_like(32 * 64, 7);
            let mut y = vec![0u8; ty.row_bytes(x.len())];
            quantize_row(ty, &x, &mut y);
            let mut r = vec![0f32; x.len()];
            dequantize_row(ty, &y, &mut r);
            for (bx, br) in x.chunks(32).zip(r.chunks(32)) {
                let (mn, mx) = min_max(bx);
                let levels = match ty {
                    Q4_0 | Q4_1 => 15.0,
                    Q5_0 | Q5_1 => 31.0,
                    _ => 254.0,
                };
                // generous: one full step (f16 rounding of d and m adds a little)
                let step = (mx - mn).max(2.0 * mx.abs().max(mn.abs())) / levels;
                for (a, b) in bx.iter().zip(br) {
                    assert!((a - b).abs() <= step * 1.01 + 1e-6, "{ty}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn zero_and_constant_blocks_are_finite() {
        for ty in QTYPES {
            for x in [
                vec![0.0f32; 32],
                vec![0.25f32; 32],
                vec![-3.0f32; 32],
                vec![1e-40f32; 32],
            ] {
                let mut y = vec![0u8; ty.row_bytes(32)];
                quantize_row(ty, &x, &mut y);
                let mut r = vec![0f32; 32];
                dequantize_row(ty, &y, &mut r);
                assert!(r.iter().all(|v| v.is_finite()), "{ty}");
            }
        }
    }

    #[test]
    fn fallbacks_follow_llama_quantize() {
        assert_eq!(fallback_for(Q4_K, 4096), Q4_K);
        assert_eq!(fallback_for(Q4_K, 576), Q5_0);
        assert_eq!(fallback_for(Q5_K, 576), Q5_1);
        assert_eq!(fallback_for(Q6_K, 576), Q8_0);
        assert_eq!(fallback_for(Q3_K, 576), Q4_0);
        assert_eq!(fallback_for(Q6_K, 100), F16);
        assert_eq!(fallback_for(Q4_0, 100), F16);
    }

    #[test]
    fn q4_0_known_block() {
        // Block with max -8 at position 0: d = 1, codes = x + 8.
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 7.0;
        x[17] = 3.0;
        let mut y = [0u8; 18];
        quantize_row(Q4_0, &x, &mut y);
        assert_eq!(get_f16(&y), 1.0);
        assert_eq!(y[2], 0x80); // q[0]=0, q[16]=8
        assert_eq!(y[3], (7 + 8) | (11 << 4));
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

/// Packs one row of chosen codes into Q4_0, Q4_1 or Q8_0 blocks (GPTQ on a ggml grid): per
/// 32-column block, its scale `d` and (Q4_1) minimum `m`, already f16-representable, and 32
/// codes (0..15 for the 4-bit types, -127..127 for Q8_0). Decodes to `(q - 8)·d`, `q·d + m`
/// and `q·d` as ggml's dequantizers do.
pub fn pack_codes_row(ty: GgmlType, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]) {
    let (bs, bytes) = ty.block();
    assert!(
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0),
        "{ty}"
    );
    assert_eq!(codes.len() % bs, 0);
    for (b, (q, y)) in codes
        .chunks_exact(bs)
        .zip(out.chunks_exact_mut(bytes))
        .enumerate()
    {
        put_f16(y, d[b]);
        let nib = |y: &mut [u8]| {
            for j in 0..16 {
                y[j] = (q[j] as u8 & 0x0f) | ((q[j + 16] as u8 & 0x0f) << 4);
            }
        };
        match ty {
            GgmlType::Q4_0 => nib(&mut y[2..]),
            GgmlType::Q4_1 => {
                put_f16(&mut y[2..], m[b]);
                nib(&mut y[4..]);
            }
            _ => {
                for j in 0..32 {
                    y[2 + j] = q[j] as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod pack_codes_tests {
    use super::*;

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
