//! ggml's IQ4 types on the non-linear 4-bit grid: IQ4_NL (32-value blocks) and IQ4_XS
//! (256-value super-blocks with 6-bit block scales), with and without an importance matrix, as
//! ggml's `quantize_row_iq4_nl_impl` computes them.

use super::kquants::{
    f16_at, f16_bits, factor_levels, nearest_int, sigma2_of, GROUP_MAX_EPS, QK_K,
};
use super::{BlockCodec, CodeGrid, GgmlType};
use crate::rtn::{IntSpec, QParams};
use half::f16;

/// IQ4_NL's non-linear 4-bit grid.
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// A non-linear grid of sixteen sorted integer levels (IQ4's): a value is `scale·level`. For
/// GPTQ and learned rounding the codes of such a grid are the levels themselves (so a code
/// times its group's scale is its value, as on the integer grids).
#[derive(Debug, PartialEq)]
pub struct Levels {
    pub values: [i8; 16],
}

impl Levels {
    /// The level `y` (a value over its group's scale) rounds to with rounding offset `v` in
    /// [−0.5, 0.5], and the width of the segment it rounds in. Between two neighbouring
    /// levels `a ≤ y < b` the code is `b` when `(y − a)/(b − a) + v ≥ ½`: rounding in the
    /// segment's own units, as `round(x/s + v)` rounds on a linear grid, so the straight-through
    /// gradient of the value with respect to `v` is `scale·(b − a)`. Beyond the end levels the
    /// end level and width 0 (a clamp: no gradient). With `v = 0` exactly ggml's nearest level
    /// (`best_index_int8`, the upper one on ties). Branch-free selects over the levels (the
    /// searches call it for every candidate scale: it vectorizes).
    #[inline(always)]
    pub fn code(&self, y: f32, v: f32) -> (f32, f32) {
        let t = &self.values;
        let (first, last) = (t[0] as f32, t[15] as f32);
        // a: the largest inner level ≤ y (else the first), b: the smallest inner level > y
        // (else the last)
        let (mut a, mut b) = (first, last);
        for &l in &t[1..15] {
            let l = l as f32;
            a = if y >= l { l } else { a };
        }
        for &l in t[1..15].iter().rev() {
            let l = l as f32;
            b = if y < l { l } else { b };
        }
        let width = b - a;
        // (y − a) − (b − y) ≥ 0 is best_index's test (its two differences, computed alike)
        let q = if (y - a) - (b - y) + 2.0 * v * width >= 0.0 {
            b
        } else {
            a
        };
        let inside = y > first && y < last;
        let end = if y <= first { first } else { last };
        (
            if inside { q } else { end },
            if inside { width } else { 0.0 },
        )
    }

    /// The index of level value `code`, if it is one.
    #[inline]
    pub fn index_of(&self, code: i8) -> Option<usize> {
        self.values.iter().position(|&l| l == code)
    }
}

/// IQ4_NL's and IQ4_XS's levels as a [`Levels`] grid.
pub static IQ4_LEVELS: Levels = Levels {
    values: IQ4NL_VALUES,
};

/// ggml's `best_index_int8`: nearest grid index (binary search, the upper index on ties).
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
    fn grid(&self) -> Option<&'static dyn CodeGrid> {
        Some(&GRID_IQ4_NL)
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
    fn grid(&self) -> Option<&'static dyn CodeGrid> {
        Some(&GRID_IQ4_XS)
    }
}

/// The IQ4 types' blocks as a grid GPTQ and learned rounding choose codes on: per 32-value
/// block (IQ4_NL) or sub-block (IQ4_XS) a scale, `value = scale·level` on [`IQ4_LEVELS`]; the
/// codes are the level values. The scales are read back as ggml's dequantizer reads them (the
/// f16 `d`, times the 6-bit level for IQ4_XS); packing finds a stored `d` (and levels) whose
/// products are exactly the fitted scales, so the blocks decode to exactly the chosen values.
pub struct GridIq4 {
    ty: GgmlType,
}
pub(super) static GRID_IQ4_NL: GridIq4 = GridIq4 {
    ty: GgmlType::IQ4_NL,
};
pub(super) static GRID_IQ4_XS: GridIq4 = GridIq4 {
    ty: GgmlType::IQ4_XS,
};

/// IQ4_XS's sub-block levels: `d·ls`, `ls` in −32..=31.
const XS_LEVELS: (i32, i32) = (-32, 31);

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl GridIq4 {
    /// The type's own quantization of one block (the plain quantizer).
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        match self.ty {
            GgmlType::IQ4_NL => quantize_block_iq4_nl(x, y),
            _ => quantize_block_iq4_xs(x, None, y),
        }
    }
}

/// Two codes (level values) per byte, low nibble first, as index nibbles.
fn pack_level_nibbles(q: &[i8], out: &mut [u8]) -> Option<()> {
    let (lo, hi) = q.split_at(16);
    for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
        let (a, b) = (IQ4_LEVELS.index_of(a)?, IQ4_LEVELS.index_of(b)?);
        *o = a as u8 | ((b as u8) << 4);
    }
    Some(())
}

impl CodeGrid for GridIq4 {
    fn spec(&self) -> IntSpec {
        IntSpec {
            bits: 4,
            symmetric: true,
        }
    }
    fn code_range(&self) -> (i32, i32) {
        (IQ4NL_VALUES[0] as i32, IQ4NL_VALUES[15] as i32)
    }
    fn group(&self) -> usize {
        32
    }
    fn levels(&self) -> Option<&'static Levels> {
        Some(&IQ4_LEVELS)
    }
    fn fit(&self, w: &[f32], out: &mut [(QParams, f32)]) {
        let mut b = [0u8; 136];
        self.quantize_block(w, &mut b);
        let zero = |scale| (QParams { scale, zero: 0 }, 0.0);
        if self.ty == GgmlType::IQ4_NL {
            out[0] = zero(f16_at(&b));
            return;
        }
        let d = f16_at(&b);
        let sh = u16::from_le_bytes([b[2], b[3]]);
        for (ib, o) in out.iter_mut().enumerate().take(8) {
            let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32
                | ((((sh >> (2 * ib)) & 3) as i32) << 4);
            *o = zero(d * (ls - 32) as f32);
        }
    }
    fn fit_weighted(&self, w: &[f32], qw: &[f32], v: Option<&[f32]>, out: &mut [(QParams, f32)]) {
        let vj = |j: usize| v.map(|v| &v[32 * j..32 * (j + 1)]);
        let zero = |scale| (QParams { scale, zero: 0 }, 0.0);
        if self.ty == GgmlType::IQ4_NL {
            out[0] = zero(crate::search::levels(w, qw, vj(0), &IQ4_LEVELS, f16_round));
            return;
        }
        // sub-block scales, then the super-block scale over the 6-bit levels (weighted by the
        // sub-blocks' importance), then each sub-block's level or a neighbour that fits better
        let mut sc = [0f32; 8];
        let mut sw = [0f32; 8];
        for (j, (x, q)) in w.chunks_exact(32).zip(qw.chunks_exact(32)).enumerate() {
            sc[j] = crate::search::levels(x, q, vj(j), &IQ4_LEVELS, |s| s);
            sw[j] = q.iter().sum();
        }
        let (lo, hi) = XS_LEVELS;
        let d = crate::search::sym(&sc, &sw, None, -lo as f32, (lo, hi), true, f16_round);
        for (j, o) in out.iter_mut().enumerate().take(8) {
            let (x, q) = (&w[32 * j..32 * (j + 1)], &qw[32 * j..32 * (j + 1)]);
            let l = if d == 0.0 {
                0
            } else {
                let l0 = nearest_int(sc[j] / d).clamp(lo, hi);
                crate::search::best_neighbour(l0, (lo, hi), |l| {
                    crate::search::level_error(x, q, vj(j), &IQ4_LEVELS, d * l as f32)
                })
            };
            *o = zero(d * l as f32);
        }
    }
    fn pack_row(&self, codes: &[i8], d: &[f32], _m: &[f32], out: &mut [u8]) {
        let (bs, bb) = self.ty.block();
        let per = bs / 32;
        assert_eq!(codes.len() % bs, 0);
        for (b, (q, y)) in codes
            .chunks_exact(bs)
            .zip(out.chunks_exact_mut(bb))
            .enumerate()
        {
            let db = &d[b * per..(b + 1) * per];
            let packed = if self.ty == GgmlType::IQ4_NL {
                let c = db[0];
                (c.is_finite() && f16_round(c) == c).then(|| {
                    y[0..2].copy_from_slice(&f16_bits(c));
                    pack_level_nibbles(q, &mut y[2..18])
                })
            } else {
                let mut l = [0i32; 8];
                factor_levels(db, XS_LEVELS.0, XS_LEVELS.1, &mut l).map(|c| {
                    y.fill(0);
                    y[0..2].copy_from_slice(&f16_bits(c));
                    let mut scales_h = 0u16;
                    for (ib, &ls) in l.iter().enumerate() {
                        let u = (ls + 32) as u8;
                        y[4 + ib / 2] |= (u & 0xf) << (4 * (ib % 2));
                        scales_h |= ((u >> 4) as u16) << (2 * ib);
                    }
                    y[2..4].copy_from_slice(&scales_h.to_le_bytes());
                    (0..8).try_for_each(|ib| {
                        pack_level_nibbles(
                            &q[32 * ib..32 * (ib + 1)],
                            &mut y[8 + 16 * ib..8 + 16 * (ib + 1)],
                        )
                    })
                })
            };
            if packed.flatten().is_none() {
                // parameters (or codes) no block stores exactly: the type's own quantization of
                // the values they stand for
                let vals: Vec<f32> = q
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * db[i / 32])
                    .collect();
                self.quantize_block(&vals, y);
            }
        }
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    /// With no rounding offset a level is ggml's nearest (`best_index_int8`), ties and
    /// near-ties included; an offset moves it by at most one level, and only within its segment.
    #[test]
    fn level_code_is_ggmls_nearest_without_an_offset() {
        let mut rng = crate::synth::Rng::new(3);
        let mut ys: Vec<f32> = (0..100_000)
            .map(|_| (rng.uniform() as f32 - 0.5) * 300.0)
            .collect();
        for w in IQ4NL_VALUES.windows(2) {
            let mid = (w[0] as f32 + w[1] as f32) / 2.0;
            ys.extend([
                mid,
                mid.next_up(),
                mid.next_down(),
                w[0] as f32,
                w[1] as f32,
            ]);
        }
        for &y in &ys {
            let (c, width) = IQ4_LEVELS.code(y, 0.0);
            assert_eq!(c, IQ4NL_VALUES[best_index(&IQ4NL_VALUES, y)] as f32, "{y}");
            let inside = y > -127.0 && y < 113.0;
            assert_eq!(width > 0.0, inside, "{y}");
            for v in [-0.5f32, -0.2, 0.3, 0.5] {
                let (cv, _) = IQ4_LEVELS.code(y, v);
                let i = |c: f32| IQ4NL_VALUES.iter().position(|&l| l as f32 == c).unwrap();
                assert!(i(cv).abs_diff(i(c)) <= 1, "{y} {v}");
                if inside {
                    // the level below y or the one above it
                    let k = IQ4NL_VALUES.iter().rposition(|&l| l as f32 <= y).unwrap();
                    assert!(i(cv) == k || i(cv) == k + 1, "{y} {v}");
                }
            }
        }
        // the offset's extremes pick the segment's ends
        assert_eq!(IQ4_LEVELS.code(-100.0, 0.5).0, -83.0);
        assert_eq!(IQ4_LEVELS.code(-100.0, -0.5).0, -104.0);
    }

    /// Level codes on the fitted grids pack into blocks that ggml's dequantizer decodes to
    /// exactly `code·scale`; parameters or codes a block cannot store still pack (the type's own
    /// quantization of the values) instead of panicking.
    #[test]
    fn packed_levels_decode_to_the_grid_values() {
        let mut rng = crate::synth::Rng::new(8);
        for grid in [&GRID_IQ4_NL, &GRID_IQ4_XS] {
            let ty = grid.ty;
            let bs = ty.block().0;
            let w: Vec<f32> = (0..4 * QK_K)
                .map(|i| (rng.normal() as f32) * 0.02 * if i % 37 == 0 { 8.0 } else { 1.0 })
                .collect();
            let qw: Vec<f32> = (0..w.len()).map(|i| 0.5 + (i % 7) as f32).collect();
            for weighted in [false, true] {
                let mut ps = vec![(QParams::default(), 0f32); bs / 32];
                let (mut d, mut codes, mut want) = (Vec::new(), Vec::new(), Vec::new());
                for (xb, qb) in w.chunks(bs).zip(qw.chunks(bs)) {
                    if weighted {
                        grid.fit_weighted(xb, qb, None, &mut ps);
                    } else {
                        grid.fit(xb, &mut ps);
                    }
                    for (k, (p, _)) in ps.iter().enumerate() {
                        d.push(p.scale);
                        for &x in &xb[32 * k..32 * (k + 1)] {
                            let y = if p.scale == 0.0 { 0.0 } else { x / p.scale };
                            let (c, _) = IQ4_LEVELS.code(y, 0.0);
                            codes.push(c as i8);
                            want.push(c * p.scale);
                        }
                    }
                }
                let m = vec![0f32; d.len()];
                let mut bytes = vec![0u8; ty.row_bytes(w.len())];
                grid.pack_row(&codes, &d, &m, &mut bytes);
                let mut got = vec![0f32; w.len()];
                super::super::dequantize_row(ty, &bytes, &mut got);
                assert_eq!(got, want, "{ty} weighted={weighted}");
                // the plain fit is ggml's: its values are within a code step of ggml's own
                if !weighted {
                    let mut theirs = vec![0u8; bytes.len()];
                    super::super::quantize_row(ty, &w, &mut theirs);
                    let mut deq = vec![0f32; w.len()];
                    super::super::dequantize_row(ty, &theirs, &mut deq);
                    let e = |y: &[f32]| w.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
                    assert!(
                        e(&got) <= 1.01 * e(&deq),
                        "{ty}: {} vs {}",
                        e(&got),
                        e(&deq)
                    );
                }
            }
            // a scale no block stores, and a code that is no level: still packed, near the values
            let mut d = vec![0.001f32 + 1e-9; w.len() / 32];
            d[1] = 0.00123;
            let mut codes: Vec<i8> = (0..w.len()).map(|i| IQ4NL_VALUES[i % 16]).collect();
            codes[5] = 7;
            let mut bytes = vec![0u8; ty.row_bytes(w.len())];
            grid.pack_row(&codes, &d, &vec![0f32; d.len()], &mut bytes);
            let mut got = vec![0f32; w.len()];
            super::super::dequantize_row(ty, &bytes, &mut got);
            // (within half the widest gap between levels, 24, of the largest scale)
            for (i, (&g, &c)) in got.iter().zip(&codes).enumerate() {
                let want = c as f32 * d[i / 32];
                assert!(
                    (g - want).abs() <= 12.5 * 0.00123,
                    "{ty} {i}: {g} vs {want}"
                );
            }
        }
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
