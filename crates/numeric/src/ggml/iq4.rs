//! ggml's IQ4 types on the non-linear 4-bit grid: IQ4_NL (32-value blocks) and IQ4_XS
//! (256-value super-blocks with 6-bit block scales), with and without an importance matrix, as
//! ggml's `quantize_row_iq4_nl_impl` computes them.

use super::kquants::{f16_at, f16_bits, nearest_int, sigma2_of, GROUP_MAX_EPS, QK_K};
use super::{BlockCodec, GgmlType};

/// IQ4_NL's non-linear 4-bit grid.
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `best_index_int8`: nearest grid index (binary search, lower index on ties).
#[inline]
pub(super) fn best_index(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// IQ4_NL block (18 bytes): d, qs[16] (grid indices, low nibble = value j, high = j+16).
pub fn quantize_block_iq4_nl(x: &[f32], y: &mut [u8]) {
    let mut weight = [0f32; 32];
    for j in 0..32 {
        weight[j] = x[j] * x[j];
    }
    iq4_nl_with_weights(x, &weight, y);
}

/// `quantize_row_iq4_nl_impl` for one 32-value block with error weights `weight`.
fn iq4_nl_with_weights(x: &[f32], weight: &[f32], y: &mut [u8]) {
    let scale = iq4_block_scale(x, weight);
    iq4_nl_pack(x, scale, y)
}

/// IQ4_NL rows, sixteen blocks' scale searches at once in the vector lanes (the same results as
/// block by block). `qw`: importance weights (weights `qw·sqrt(sigma2 + x²)`, sigma2 over each
/// block), else x².
fn iq4_nl_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    const G: usize = 16;
    for (g, (xg, yg)) in x.chunks(32 * G).zip(y.chunks_mut(18 * G)).enumerate() {
        let nb = xg.len() / 32;
        let mut w = [0f32; 32 * G];
        for k in 0..nb {
            let xb = &xg[32 * k..32 * k + 32];
            match qw {
                Some(q) => {
                    let qb = &q[32 * (G * g + k)..];
                    let sigma2 = sigma2_of(xb, true);
                    for j in 0..32 {
                        w[32 * k + j] = qb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                    }
                }
                None => {
                    for j in 0..32 {
                        w[32 * k + j] = xb[j] * xb[j];
                    }
                }
            }
        }
        let mut scales = [0f32; G];
        super::lanes::iq4_scale_many(&xg[..32 * nb], &w[..32 * nb], &mut scales);
        for k in 0..nb {
            iq4_nl_pack(
                &xg[32 * k..32 * k + 32],
                scales[k],
                &mut yg[18 * k..18 * k + 18],
            );
        }
    }
}

/// One IQ4_NL block from its scale: d, then each value's nearest grid index.
fn iq4_nl_pack(x: &[f32], scale: f32, y: &mut [u8]) {
    y[0..2].copy_from_slice(&f16_bits(scale));
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut l = [0u8; 32];
    for j in 0..32 {
        l[j] = best_index(&IQ4NL_VALUES, id * x[j]) as u8;
    }
    for j in 0..16 {
        y[2 + j] = l[j] | (l[16 + j] << 4);
    }
}

/// The scale search of `quantize_row_iq4_nl_impl` for one 32-value block (ntry = 7); 0 for an
/// all-zero block.
#[inline]
fn iq4_block_scale(x: &[f32], weight: &[f32]) -> f32 {
    super::lanes::iq4_scale(x, weight)
}

/// The scalar reference of [`iq4_block_scale`], ggml's loop as written.
pub(super) fn iq4_block_scale_ref(x: &[f32], weight: &[f32]) -> f32 {
    let values = &IQ4NL_VALUES;
    let ntry = 7i32;
    let (max, amax) = super::first_absmax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let mut d = -max / values[0] as f32;
    let mut id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for j in 0..32 {
        let q = values[best_index(values, id * x[j])] as f32;
        let w = weight[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        id = (itry + values[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..32 {
            let q = values[best_index(values, id * x[j])] as f32;
            let w = weight[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// IQ4_XS block (136 bytes): d, scales_h (u16), scales_l[4], qs[128]; eight 32-value blocks on
/// IQ4_NL's grid with 6-bit block scales relative to d. `qw`: importance weights, if any.
pub fn quantize_block_iq4_xs(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let sigma2 = sigma2_of(&x[..QK_K], true);
    let mut scales = [0f32; 8];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    let mut w = [0f32; QK_K];
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        for j in 0..32 {
            w[32 * ib + j] = match qw {
                Some(q) => q[32 * ib + j] * (sigma2 + xb[j] * xb[j]).sqrt(),
                None => xb[j] * xb[j],
            };
        }
    }
    super::lanes::iq4_scale_many(&x[..QK_K], &w, &mut scales);
    for &d in &scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    y[..136].fill(0);
    let d = -max_scale / 32.0;
    y[0..2].copy_from_slice(&f16_bits(d));
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut l = [0u8; QK_K];
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            l[32 * ib + j] = best_index(&IQ4NL_VALUES, idl * x[32 * ib + j]) as u8;
        }
        let u = (ls + 32) as u8;
        if ib % 2 == 0 {
            y[4 + ib / 2] = u & 0xf;
        } else {
            y[4 + ib / 2] |= (u & 0xf) << 4;
        }
        scales_h |= ((u >> 4) as u16) << (2 * ib);
    }
    y[2..4].copy_from_slice(&scales_h.to_le_bytes());
    for i in 0..8 {
        for j in 0..16 {
            y[8 + 16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

pub fn dequantize_block_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    for ib in 0..8 {
        let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32
            | ((((sh >> (2 * ib)) & 3) as i32) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            y[32 * ib + j] = dl * IQ4NL_VALUES[(qs[j] & 0xf) as usize] as f32;
            y[32 * ib + j + 16] = dl * IQ4NL_VALUES[(qs[j] >> 4) as usize] as f32;
        }
    }
}

pub fn dequantize_block_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    for j in 0..16 {
        y[j] = d * IQ4NL_VALUES[(b[2 + j] & 0xf) as usize] as f32;
        y[j + 16] = d * IQ4NL_VALUES[(b[2 + j] >> 4) as usize] as f32;
    }
}

/// IQ4_NL with importance weights: weights `qw·sqrt(sigma2 + x²)`, sigma2 over the block.
pub fn quantize_block_iq4_nl_imatrix(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let sigma2 = sigma2_of(&x[..32], true);
    let mut w = [0f32; 32];
    for j in 0..32 {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    iq4_nl_with_weights(x, &w, y);
}

pub struct Iq4Nl;
pub struct Iq4Xs;

impl BlockCodec for Iq4Nl {
    fn ty(&self) -> GgmlType {
        GgmlType::IQ4_NL
    }
    fn file_type(&self) -> u32 {
        25
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        quantize_block_iq4_nl(x, y)
    }
    fn quantize_block_weighted(&self, x: &[f32], qw: &[f32], _row_sigma2: f32, y: &mut [u8]) {
        quantize_block_iq4_nl_imatrix(x, qw, y)
    }
    fn quantize_row(&self, x: &[f32], y: &mut [u8]) {
        iq4_nl_rows(x, None, y)
    }
    fn quantize_row_weighted(&self, x: &[f32], qw: &[f32], _row_sigma2: f32, y: &mut [u8]) {
        iq4_nl_rows(x, Some(qw), y)
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        dequantize_block_iq4_nl(b, y)
    }
}

impl BlockCodec for Iq4Xs {
    fn ty(&self) -> GgmlType {
        GgmlType::IQ4_XS
    }
    fn file_type(&self) -> u32 {
        30
    }
    fn fallback(&self) -> Option<GgmlType> {
        Some(GgmlType::IQ4_NL)
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        quantize_block_iq4_xs(x, None, y)
    }
    fn quantize_block_weighted(&self, x: &[f32], qw: &[f32], _row_sigma2: f32, y: &mut [u8]) {
        quantize_block_iq4_xs(x, Some(qw), y)
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        dequantize_block_iq4_xs(b, y)
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;

    /// The batched rows write what the block functions write, with and without importance.
    #[test]
    fn rows_equal_blocks() {
        let x = crate::synth::weights_like(32 * 16 * 3 + 32 * 5, 4);
        let qw: Vec<f32> = (0..x.len()).map(|i| 0.1 + (i % 13) as f32).collect();
        let mut want = vec![0u8; x.len() / 32 * 18];
        let mut got = want.clone();
        for (k, b) in want.chunks_mut(18).enumerate() {
            quantize_block_iq4_nl(&x[32 * k..32 * k + 32], b);
        }
        iq4_nl_rows(&x, None, &mut got);
        assert_eq!(want, got);
        for (k, b) in want.chunks_mut(18).enumerate() {
            let r = 32 * k..32 * k + 32;
            quantize_block_iq4_nl_imatrix(&x[r.clone()], &qw[r], b);
        }
        iq4_nl_rows(&x, Some(&qw), &mut got);
        assert_eq!(want, got);
    }
}
