//! ggml's K-quants (Q2_K … Q6_K, 256-value super-blocks), with and without an importance
//! matrix: the scale/min searches of ggml's reference quantizers, operation for operation in f32
//! (no fused multiply-add, sums in the same order), so our bytes equal `ggml_quantize_chunk`'s.
//! Checked against ggml itself (built from llama.cpp's sources) in the integration tests. The
//! scale searches shared with the other families (`make_qx_quants`, `make_qkx2_quants`) live
//! here too.

use super::{BlockCodec, CodeGrid, GgmlType};
use crate::rtn::{IntSpec, QParams};
use half::f16;

pub const QK_K: usize = 256;
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

#[inline]
pub(super) fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

#[inline]
pub(super) fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// ggml's `nearest_int`: round half to even via the 1.5·2^23 trick (|x| <= 4194303).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qx_quants` (symmetric, signed levels -nmax..nmax-1 stored +nmax), `rmse_type` 1:
/// error weights `qw` when given, else x².
/// `make_qx_quants`, run by the lane version ([`super::lanes`]; bit for bit this function's
/// result).
#[inline]
pub(super) fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    super::lanes::qx_quants(x, nmax, l_out, qw)
}

/// The scalar reference of [`make_qx_quants`], ggml's loop as written.
pub(super) fn make_qx_quants_ref(
    x: &[f32],
    nmax: i32,
    l_out: &mut [i8],
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let (max, amax) = super::first_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = qw.map_or(x[i] * x[i], |q| q[i]);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = qw.map_or(x[i] * x[i], |q| q[i]);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse` (Q3_K): levels -nmax..nmax-1, refined by coordinate descent.
pub(super) fn make_q3_quants_ref(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = super::first_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as i32;
            let mut slx = sumlx - w * x[i] * li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li as f32 * li as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != li {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants` on every `n`-value sub-block of `x` (levels into `l_out`, (scale,
/// -min) per sub-block into `out`), sub-blocks side by side in the vector lanes
/// ([`super::lanes`]; bit for bit one call per sub-block).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn make_qkx2_quants_many(
    x: &[f32],
    weights: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [u8],
    out: &mut [(f32, f32)],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) {
    super::lanes::qkx2_many(
        x, weights, n, nmax, l_out, out, rmin, rdelta, nstep, use_mad,
    )
}

/// `make_qkx2_quants`: asymmetric levels 0..nmax with a min, weighted least squares over a grid
/// of `nstep + 1` candidate scales. Returns (scale, -min).
/// The scalar reference, ggml's loop as written (the lane versions are in [`super::lanes`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx2_quants_ref(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// 6-bit scale and min of sub-block `j` from Q4_K/Q5_K's 12 packed bytes.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K/Q5_K's 12 scale bytes from eight 6-bit scales `ls` and mins `lm` (inverse of
/// [`scale_min_k4`]).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for j in 0..8 {
        let (a, b) = (ls[j], lm[j]);
        if j < 4 {
            sc[j] = a;
            sc[j + 4] = b;
        } else {
            sc[j + 4] = (a & 0xf) | ((b & 0xf) << 4);
            sc[j - 4] |= (a >> 4) << 6;
            sc[j] |= (b >> 4) << 6;
        }
    }
    sc
}

/// Packs 2-bit levels as Q2_K/Q3_K do: for each 128-value half, byte l holds values
/// l, l+32, l+64, l+96 at bit offsets 0, 2, 4, 6.
fn pack_2bit(l: &[u8], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// Q2_K block (84 bytes): scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin.
pub fn quantize_block_q2_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let q4scale = 15f32;
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (w, v) in weights.iter_mut().zip(&x[..QK_K]) {
        *w = v.abs();
    }
    let mut sm = [(0f32, 0f32); 16];
    make_qkx2_quants_many(
        &x[..QK_K],
        &weights,
        16,
        3,
        &mut l,
        &mut sm,
        -0.5,
        0.1,
        15,
        true,
    );
    for j in 0..16 {
        let (s, m) = sm[j];
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let (sc, rest) = y.split_at_mut(16);
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        rest[64..66].copy_from_slice(&f16_bits(max_scale / q4scale));
    } else {
        sc.fill(0);
        rest[64..66].copy_from_slice(&f16_bits(0.0));
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            let m = nearest_int(iscale * mins[j]);
            sc[j] |= (m << 4) as u8;
        }
        rest[66..68].copy_from_slice(&f16_bits(max_min / q4scale));
    } else {
        rest[66..68].copy_from_slice(&f16_bits(0.0));
    }
    let dd = f16_at(&rest[64..66]);
    let dmin = f16_at(&rest[66..68]);
    for j in 0..16 {
        let d = dd * (sc[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
            l[16 * j + ii] = q as u8;
        }
    }
    pack_2bit(&l, &mut rest[..64]);
}

pub fn dequantize_block_q2_k(b: &[u8], y: &mut [f32]) {
    let sc = &b[..16];
    let d = f16_at(&b[80..82]);
    let min = f16_at(&b[82..84]);
    let mut is = 0;
    let mut out = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let s = sc[is];
                is += 1;
                let dl = d * (s & 0xf) as f32;
                let ml = min * (s >> 4) as f32;
                for l in 0..16 {
                    y[out] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// Q3_K block (110 bytes): hmask[32], qs[64], scales[12] (6-bit, packed), d.
pub fn quantize_block_q3_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    super::lanes::q3_many(&x[..QK_K], 16, 4, &mut l, &mut scales);
    pack_q3_k(x, &mut l, &scales, y);
}

/// Q3_K rows: the sub-block searches of two super-blocks at a time (the lane searches then
/// run two independent sets in step, hiding each other's latency); the same bytes as
/// [`quantize_block_q3_k`] per block.
fn quantize_row_q3_k(x: &[f32], y: &mut [u8]) {
    const PAIR: usize = 2 * QK_K;
    let (mut xs, mut ys) = (x.chunks_exact(PAIR), y.chunks_exact_mut(2 * 110));
    for (xp, yp) in (&mut xs).zip(&mut ys) {
        let mut l = [[0i8; QK_K]; 2];
        let mut scales = [0f32; 32];
        super::lanes::q3_many(xp, 16, 4, l.as_flattened_mut(), &mut scales);
        let [l0, l1] = &mut l;
        let (y0, y1) = yp.split_at_mut(110);
        pack_q3_k(&xp[..QK_K], l0, &scales[..16], y0);
        pack_q3_k(&xp[QK_K..], l1, &scales[16..], y1);
    }
    for (xb, yb) in xs
        .remainder()
        .chunks_exact(QK_K)
        .zip(ys.into_remainder().chunks_exact_mut(110))
    {
        quantize_block_q3_k(xb, yb);
    }
}

/// A Q3_K block from its sub-blocks' levels and scales (`make_q3_quants`'s results).
fn pack_q3_k(x: &[f32], l: &mut [i8; QK_K], scales: &[f32], y: &mut [u8]) {
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for &sc in scales {
        if sc.abs() > amax {
            amax = sc.abs();
            max_scale = sc;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dbytes) = rest.split_at_mut(12);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // C stores nearest_int's result in an int8_t first
        let levels: Vec<i32> = scales
            .iter()
            .map(|&v| (nearest_int(iscale * v) as i8).clamp(-32, 31) as i32)
            .collect();
        pack_q3_k_levels(&levels, sc);
        dbytes.copy_from_slice(&f16_bits(1.0 / iscale));
    } else {
        sc.fill(0);
        dbytes.copy_from_slice(&f16_bits(0.0));
    }
    finish_q3_k(x, l, hmask, qs, sc, f16_at(dbytes));
}

pub fn dequantize_block_q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let dall = f16_at(&b[108..110]);
    let scales = q3_k_levels(sc);
    let mut is = 0;
    let mut out = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = dall * scales[is] as f32;
                is += 1;
                // (zipped slices: no bounds checks, the 16 values vectorize)
                let (qh, mh) = (
                    &q[16 * half..16 * half + 16],
                    &hm[16 * half..16 * half + 16],
                );
                for ((o, &qv), &h) in y[out..out + 16].iter_mut().zip(qh).zip(mh) {
                    let v = ((qv >> shift) & 3) as i32 - 4 * ((h & m) == 0) as i32;
                    *o = dl * v as f32;
                }
                out += 16;
            }
            m <<= 1;
        }
    }
}

/// Scales and mins of eight 32-value sub-blocks, shared by Q4_K and Q5_K. Returns the packed
/// 12 scale bytes, d, dmin and the levels L.
fn q45_k_scales(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 12], [u8; 2], [u8; 2]) {
    let mut weights = [0f32; QK_K];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for k in 0..32 {
            weights[32 * j + k] = av_x + xs[k].abs();
        }
    }
    let mut sm = [(0f32, 0f32); 8];
    make_qkx2_quants_many(
        &x[..QK_K],
        &weights,
        32,
        nmax,
        l,
        &mut sm,
        rmin,
        0.1,
        nstep,
        false,
    );
    for j in 0..8 {
        let (s, m) = sm[j];
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let sc = pack_scale_min_k4(&ls, &lm);
    let d = f16_bits(max_scale / 63.0);
    let dmin = f16_bits(max_min / 63.0);
    let (dd, dm) = (f16_at(&d), f16_at(&dmin));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &sc);
        let d = dd * s as f32;
        if d == 0.0 {
            continue;
        }
        let dmj = dm * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dmj) / d).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
    (sc, d, dmin)
}

/// Q4_K block (144 bytes): d, dmin, scales[12], qs[128].
pub fn quantize_block_q4_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (sc, d, dmin) = q45_k_scales(x, 15, -1.0, 20, &mut l);
    y[0..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&sc);
    pack_q4_k(&l, &mut y[16..144]);
}

pub fn dequantize_block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(&b[0..2]);
    let min = f16_at(&b[2..4]);
    let sc = &b[4..16];
    for c in 0..4 {
        let q = &b[16 + 32 * c..16 + 32 * c + 32];
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * s1 as f32, min * m1 as f32);
        let (d2, m2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * c + l] = d1 * (q[l] & 0xf) as f32 - m1;
            y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K block (176 bytes): d, dmin, scales[12], qh[32], qs[128].
pub fn quantize_block_q5_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (sc, d, dmin) = q45_k_scales(x, 31, -0.5, 15, &mut l);
    y[0..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&sc);
    pack_q5_k(&l, &mut y[16..176]);
}

pub fn dequantize_block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(&b[0..2]);
    let min = f16_at(&b[2..4]);
    let sc = &b[4..16];
    let qh = &b[16..48];
    let (mut u1, mut u2) = (1u8, 2u8);
    for c in 0..4 {
        let ql = &b[48 + 32 * c..48 + 32 * c + 32];
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * s1 as f32, min * m1 as f32);
        let (d2, m2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * c + l] = d1 * ((ql[l] & 0xf) as i32 + h1) as f32 - m1;
            y[64 * c + 32 + l] = d2 * ((ql[l] >> 4) as i32 + h2) as f32 - m2;
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// Q6_K block (210 bytes): ql[128], qh[64], scales[16] (i8), d. With an importance matrix
/// `qw` (this block's 256 column weights) the scale search weighs errors by it.
pub fn quantize_block_q6_k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    super::lanes::qx_many(
        &x[..QK_K],
        16,
        32,
        &mut l,
        &mut scales,
        qw.map(|q| &q[..QK_K]),
    );
    for &s in &scales {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    if max_abs < GROUP_MAX_EPS {
        y[..210].fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    y[208..210].copy_from_slice(&f16_bits(1.0 / iscale));
    for ib in 0..16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let dd = f16_at(&y[208..210]);
    for j in 0..16 {
        let d = dd * (y[192 + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    pack_q6_k(&l, y);
}

/// Q6_K's ql and qh from levels 0..63.
fn pack_q6_k(l: &[i8], y: &mut [u8]) {
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            let v = |o: usize| l[j + k + o] as u8;
            ql[64 * c + k] = (v(0) & 0xf) | ((v(64) & 0xf) << 4);
            ql[64 * c + k + 32] = (v(32) & 0xf) | ((v(96) & 0xf) << 4);
            qh[32 * c + k] =
                (v(0) >> 4) | ((v(32) >> 4) << 2) | ((v(64) >> 4) << 4) | ((v(96) >> 4) << 6);
        }
    }
}

pub fn dequantize_block_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(&b[208..210]);
    for c in 0..2 {
        let ql = &b[64 * c..64 * c + 64];
        let qh = &b[128 + 32 * c..128 + 32 * c + 32];
        let sc = &b[192 + 8 * c..192 + 8 * c + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (sc[k] as i8) as f32;
            y[128 * c + l] = d * s(is) * q1 as f32;
            y[128 * c + l + 32] = d * s(is + 2) * q2 as f32;
            y[128 * c + l + 64] = d * s(is + 4) * q3 as f32;
            y[128 * c + l + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// With an importance matrix (llama-quantize --imatrix): ggml's `quantize_row_*_impl`.
// `qw` holds the per-column importance of the values being quantized. (ggml's
// `make_qkx3_quants`, which these use, computes exactly what `make_qkx2_quants` does with
// squared errors and explicit weights: `max <= min` and `max == min` coincide after min is
// clamped to at most 0.)

/// `make_qp_quants`: non-negative levels 0..nmax for the (non-negative) sub-block scales,
/// weighted least squares with coordinate-descent refinement.
fn make_qp_quants(x: &[f32], nmax: i32, l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best {
            best = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

pub(super) fn sigma2_of(x: &[f32], twice: bool) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    if twice {
        2.0 * s / x.len() as f32
    } else {
        s / x.len() as f32
    }
}

/// Q2_K with importance weights (`quantize_row_q2_K_impl`).
pub fn quantize_block_q2_k_imatrix(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut sw = [0f32; 16];
    let mut weight = [0f32; QK_K];
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let sigma2 = sigma2_of(&x[..QK_K], false);
    for j in 0..16 {
        for k in 0..16 {
            let v = x[16 * j + k];
            weight[16 * j + k] = qw[16 * j + k] * (sigma2 + v * v).sqrt();
        }
        for w in &weight[16 * j..16 * j + 16] {
            sw[j] += w;
        }
    }
    let mut sm = [(0f32, 0f32); 16];
    make_qkx2_quants_many(
        &x[..QK_K],
        &weight,
        16,
        3,
        &mut l,
        &mut sm,
        -0.9,
        0.05,
        36,
        false,
    );
    for j in 0..16 {
        (scales[j], mins[j]) = sm[j];
    }
    let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
    let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
    y[80..82].copy_from_slice(&f16_bits(dm));
    y[82..84].copy_from_slice(&f16_bits(mm));
    let (dm, mm) = (f16_at(&y[80..82]), f16_at(&y[82..84]));
    for j in 0..16 {
        y[j] = ls[j] | (lm[j] << 4);
    }
    for j in 0..16 {
        let d = dm * (y[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y[16..80]);
}

/// Q3_K with importance weights (`quantize_row_q3_K_impl`).
pub fn quantize_block_q3_k_imatrix(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut weight = [0f32; QK_K];
    let mut sw = [0f32; 16];
    let mut ls = [0i8; 16];
    let sigma2 = sigma2_of(&x[..QK_K], true);
    for j in 0..16 {
        for k in 0..16 {
            let v = x[16 * j + k];
            weight[16 * j + k] = qw[16 * j + k] * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0f32;
        for w in &weight[16 * j..16 * j + 16] {
            sumw += w;
        }
        sw[j] = sumw;
    }
    super::lanes::qx_many(&x[..QK_K], 16, 4, &mut l, &mut scales, Some(&weight));
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dbytes) = rest.split_at_mut(12);
    let d_block = make_qx_quants(&scales, 32, &mut ls, Some(&sw));
    // (make_qx_quants's levels are offset by 32)
    pack_q3_k_levels(&ls.map(|v| v as i32 - 32), sc);
    dbytes.copy_from_slice(&f16_bits(d_block));
    finish_q3_k(x, &mut l, hmask, qs, sc, f16_at(dbytes));
}

/// The part of Q3_K shared by both paths: requantize with the stored scales, split high bits.
fn finish_q3_k(
    x: &[f32],
    l: &mut [i8; QK_K],
    hmask: &mut [u8],
    qs: &mut [u8],
    sc: &[u8],
    dall: f32,
) {
    for (j, s) in q3_k_levels(sc).into_iter().enumerate() {
        let d = dall * s as f32;
        if d == 0.0 {
            continue;
        }
        let (xs, ls) = (&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        for (o, &v) in ls.iter_mut().zip(xs) {
            *o = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
        }
    }
    pack_q3_k_codes(l, hmask, qs);
}

/// Q3_K's codes 0..7: bit 2 of code 32·b + m goes to bit b of `hmask[m]`, the low two bits to
/// `qs`.
fn pack_q3_k_codes(l: &[i8; QK_K], hmask: &mut [u8], qs: &mut [u8]) {
    hmask.fill(0);
    let mut lu = [0u8; QK_K];
    for b in 0..8 {
        for m in 0..QK_K / 8 {
            let v = l[32 * b + m] as u8;
            hmask[m] |= ((v >> 2) & 1) << b;
            lu[32 * b + m] = v & 3;
        }
    }
    pack_2bit(&lu, qs);
}

/// Q4_K / Q5_K with importance weights (`quantize_row_q{4,5}_K_impl`): scales and mins
/// fitted by `make_qp_quants` instead of max-scaling.
fn q45_k_scales_imatrix(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
    l: &mut [u8; QK_K],
) -> ([u8; 12], [u8; 2], [u8; 2]) {
    let mut weights = [0f32; QK_K];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut sw = [0f32; 8];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let sigma2 = sigma2_of(&x[..QK_K], true);
    for j in 0..8 {
        for k in 0..32 {
            let v = x[32 * j + k];
            weights[32 * j + k] = qw[32 * j + k] * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0f32;
        for w in &weights[32 * j..32 * j + 32] {
            sumw += w;
        }
        sw[j] = sumw;
    }
    let mut sm = [(0f32, 0f32); 8];
    make_qkx2_quants_many(
        &x[..QK_K],
        &weights,
        32,
        nmax,
        l,
        &mut sm,
        -0.9,
        0.05,
        36,
        false,
    );
    for j in 0..8 {
        (scales[j], mins[j]) = sm[j];
    }
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    if clamp63 {
        for j in 0..8 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    let sc = pack_scale_min_k4(&ls, &lm);
    let d = f16_bits(d_block);
    let dmin = f16_bits(m_block);
    let (dd, dm) = (f16_at(&d), f16_at(&dmin));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &sc);
        let d = dd * s as f32;
        if d == 0.0 {
            continue;
        }
        let dmj = dm * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dmj) / d).clamp(0, nmax) as u8;
        }
    }
    (sc, d, dmin)
}

pub fn quantize_block_q4_k_imatrix(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (sc, d, dmin) = q45_k_scales_imatrix(x, qw, 15, false, &mut l);
    y[0..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&sc);
    pack_q4_k(&l, &mut y[16..144]);
}

pub fn quantize_block_q5_k_imatrix(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (sc, d, dmin) = q45_k_scales_imatrix(x, qw, 31, true, &mut l);
    y[0..2].copy_from_slice(&d);
    y[2..4].copy_from_slice(&dmin);
    y[4..16].copy_from_slice(&sc);
    pack_q5_k(&l, &mut y[16..176]);
}

/// Q4_K nibbles: for each 64-value chunk, byte k holds values k and k+32.
fn pack_q4_k(l: &[u8; QK_K], q: &mut [u8]) {
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            q[32 * c + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// Q5_K: low nibbles as Q4_K, fifth bits in qh (two bits per 64-value chunk).
fn pack_q5_k(l: &[u8; QK_K], out: &mut [u8]) {
    let (qh, ql) = out.split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// One K-quant type: 256-value super-blocks with 16- or 32-value sub-blocks.
pub struct KQuant {
    ty: GgmlType,
    quantize: fn(&[f32], &mut [u8]),
    quantize_imatrix: fn(&[f32], &[f32], &mut [u8]),
    dequantize: fn(&[u8], &mut [f32]),
    file_type: u32,
    fallback: GgmlType,
    grid: Option<&'static GridK>,
}

pub static Q2_K: KQuant = KQuant {
    ty: GgmlType::Q2_K,
    quantize: quantize_block_q2_k,
    quantize_imatrix: quantize_block_q2_k_imatrix,
    dequantize: dequantize_block_q2_k,
    file_type: 10,
    fallback: GgmlType::Q4_0,
    grid: Some(&GRID_Q2_K),
};
pub static Q3_K: KQuant = KQuant {
    ty: GgmlType::Q3_K,
    quantize: quantize_block_q3_k,
    quantize_imatrix: quantize_block_q3_k_imatrix,
    dequantize: dequantize_block_q3_k,
    file_type: 12,
    fallback: GgmlType::Q4_0,
    grid: Some(&GRID_Q3_K),
};
pub static Q4_K: KQuant = KQuant {
    ty: GgmlType::Q4_K,
    quantize: quantize_block_q4_k,
    quantize_imatrix: quantize_block_q4_k_imatrix,
    dequantize: dequantize_block_q4_k,
    file_type: 15,
    fallback: GgmlType::Q5_0,
    grid: Some(&GRID_Q4_K),
};
pub static Q5_K: KQuant = KQuant {
    ty: GgmlType::Q5_K,
    quantize: quantize_block_q5_k,
    quantize_imatrix: quantize_block_q5_k_imatrix,
    dequantize: dequantize_block_q5_k,
    file_type: 17,
    fallback: GgmlType::Q5_1,
    grid: Some(&GRID_Q5_K),
};
pub static Q6_K: KQuant = KQuant {
    ty: GgmlType::Q6_K,
    quantize: |x, y| quantize_block_q6_k(x, None, y),
    quantize_imatrix: |x, w, y| quantize_block_q6_k(x, Some(w), y),
    dequantize: dequantize_block_q6_k,
    file_type: 18,
    fallback: GgmlType::Q8_0,
    grid: Some(&GRID_Q6_K),
};

impl BlockCodec for KQuant {
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn file_type(&self) -> u32 {
        self.file_type
    }
    fn fallback(&self) -> Option<GgmlType> {
        Some(self.fallback)
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        (self.quantize)(x, y)
    }
    fn quantize_block_weighted(&self, x: &[f32], qw: &[f32], _row_sigma2: f32, y: &mut [u8]) {
        (self.quantize_imatrix)(x, qw, y)
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        (self.dequantize)(b, y)
    }
    fn quantize_row(&self, x: &[f32], y: &mut [u8]) {
        match self.ty {
            GgmlType::Q3_K => quantize_row_q3_k(x, y),
            _ => {
                for (xb, yb) in x
                    .chunks_exact(QK_K)
                    .zip(y.chunks_exact_mut(self.ty.block().1))
                {
                    (self.quantize)(xb, yb)
                }
            }
        }
    }
    fn grid(&self) -> Option<&'static dyn CodeGrid> {
        self.grid.map(|g| g as &'static dyn CodeGrid)
    }
}

/// The grid of a K-quant that GPTQ chooses codes on: per super-block ggml's own scale search
/// (the plain quantizer), read back as ggml's dequantizer reads it — per 32-value sub-block
/// `q·(d·sc) − dmin·m` (Q4_K, Q5_K) or per 16-value sub-block `(q − 32)·(d·sc)` (Q6_K).
/// Packing recovers a stored `d` (and `dmin`) and 6- or 8-bit sub-block levels whose products
/// are exactly the fitted parameters, so the block decodes to exactly the values GPTQ chose.
pub struct GridK {
    ty: GgmlType,
}
static GRID_Q2_K: GridK = GridK { ty: GgmlType::Q2_K };
static GRID_Q3_K: GridK = GridK { ty: GgmlType::Q3_K };
static GRID_Q4_K: GridK = GridK { ty: GgmlType::Q4_K };
static GRID_Q5_K: GridK = GridK { ty: GgmlType::Q5_K };
static GRID_Q6_K: GridK = GridK { ty: GgmlType::Q6_K };

/// `c` (f16-representable) and levels `l[j]` in `lo..=hi` with `c · l[j] == v[j]` exactly in
/// f32, as a block decoder computes `d · sc`. The fitted values are such products (an f16 times
/// a small integer is exact in f32), so trying `c = v_max / k` over the levels finds one.
pub(super) fn factor_levels(v: &[f32], lo: i32, hi: i32, l: &mut [i32]) -> Option<f32> {
    let big = v
        .iter()
        .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
    if big == 0.0 {
        l.fill(0);
        return Some(0.0);
    }
    'k: for k in (lo..=hi).rev().filter(|&k| k != 0) {
        let c = big / k as f32;
        if !c.is_finite() || f16::from_f32(c).to_f32() != c {
            continue;
        }
        for (lj, &x) in l.iter_mut().zip(v) {
            let q = (x / c).round();
            if !(lo as f32..=hi as f32).contains(&q) || c * q != x {
                continue 'k;
            }
            *lj = q as i32;
        }
        return Some(c);
    }
    None
}

impl GridK {
    /// Whether values are `(q − zero)·scale` with signed sub-block scales (Q3_K, Q6_K) rather
    /// than `q·scale − min` (Q2_K, Q4_K, Q5_K).
    fn symmetric(&self) -> bool {
        matches!(self.ty, GgmlType::Q3_K | GgmlType::Q6_K)
    }
    /// The code of value 0 for the symmetric types.
    fn zero(&self) -> i32 {
        match self.ty {
            GgmlType::Q3_K => 4,
            GgmlType::Q6_K => 32,
            _ => 0,
        }
    }
    /// Sub-block scale levels (and min levels) a block stores.
    fn level_range(&self) -> (i32, i32) {
        match self.ty {
            GgmlType::Q2_K => (0, 15),
            GgmlType::Q3_K => (-32, 31),
            GgmlType::Q6_K => (-128, 127),
            _ => (0, 63),
        }
    }
    /// The type's own quantization of one block (ggml's plain quantizer).
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        let y = &mut y[..self.ty.block().1];
        match self.ty {
            GgmlType::Q2_K => quantize_block_q2_k(x, y),
            GgmlType::Q3_K => quantize_block_q3_k(x, y),
            GgmlType::Q4_K => quantize_block_q4_k(x, y),
            GgmlType::Q5_K => quantize_block_q5_k(x, y),
            _ => quantize_block_q6_k(x, None, y),
        }
    }
}

/// Q3_K's sixteen 6-bit scale levels (−32..31) from its 12 packed bytes.
fn q3_k_levels(sc: &[u8]) -> [i32; 16] {
    let mut l = [0i32; 16];
    for (j, s) in l.iter_mut().enumerate() {
        let lo = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
        *s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
    }
    l
}

/// Packs Q3_K's sixteen scale levels (−32..31) into its 12 bytes.
fn pack_q3_k_levels(l: &[i32], sc: &mut [u8]) {
    sc.fill(0);
    for (j, &s) in l.iter().enumerate() {
        let v = s + 32;
        if j < 8 {
            sc[j] = (v & 0xf) as u8;
        } else {
            sc[j - 8] |= ((v & 0xf) << 4) as u8;
        }
        sc[j % 4 + 8] |= ((v >> 4) << (2 * (j / 4))) as u8;
    }
}

/// The stored `d`, `dmin` and levels `0..=hi` of sub-block scales `d` and offsets `m` (each
/// `−dmin·level`), as [`factor_levels`] finds them; `None` when a block cannot store them.
fn factor_scales_mins(
    d: &[f32],
    m: &[f32],
    hi: i32,
    ls: &mut [i32],
    lm: &mut [i32],
) -> Option<(f32, f32)> {
    let mins: Vec<f32> = m.iter().map(|&v| -v).collect();
    Some((
        factor_levels(d, 0, hi, ls)?,
        factor_levels(&mins, 0, hi, lm)?,
    ))
}

impl CodeGrid for GridK {
    fn spec(&self) -> IntSpec {
        let bits = match self.ty {
            GgmlType::Q2_K => 2,
            GgmlType::Q3_K => 3,
            GgmlType::Q4_K => 4,
            GgmlType::Q5_K => 5,
            _ => 6,
        };
        IntSpec {
            bits,
            symmetric: self.symmetric(),
        }
    }
    fn code_range(&self) -> (i32, i32) {
        (0, (1 << self.spec().bits) - 1)
    }
    fn group(&self) -> usize {
        match self.ty {
            GgmlType::Q4_K | GgmlType::Q5_K => 32,
            _ => 16,
        }
    }
    fn fit(&self, w: &[f32], out: &mut [(QParams, f32)]) {
        let mut b = [0u8; 210];
        self.quantize_block(w, &mut b);
        match self.ty {
            GgmlType::Q2_K => {
                let (d, min) = (f16_at(&b[80..82]), f16_at(&b[82..84]));
                for (j, o) in out.iter_mut().enumerate().take(16) {
                    let s = b[j];
                    let scale = d * (s & 0xf) as f32;
                    *o = (QParams { scale, zero: 0 }, -(min * (s >> 4) as f32));
                }
            }
            GgmlType::Q3_K => {
                let d = f16_at(&b[108..110]);
                for (o, l) in out.iter_mut().zip(q3_k_levels(&b[96..108])) {
                    *o = (
                        QParams {
                            scale: d * l as f32,
                            zero: 4,
                        },
                        0.0,
                    );
                }
            }
            GgmlType::Q6_K => {
                let d = f16_at(&b[208..210]);
                for (j, o) in out.iter_mut().enumerate().take(16) {
                    let scale = d * (b[192 + j] as i8) as f32;
                    *o = (QParams { scale, zero: 32 }, 0.0);
                }
            }
            _ => {
                let (d, min) = (f16_at(&b[0..2]), f16_at(&b[2..4]));
                for (j, o) in out.iter_mut().enumerate().take(8) {
                    let (s, m) = scale_min_k4(j, &b[4..16]);
                    *o = (
                        QParams {
                            scale: d * s as f32,
                            zero: 0,
                        },
                        -(min * m as f32),
                    );
                }
            }
        }
    }
    fn fit_weighted(&self, w: &[f32], qw: &[f32], v: Option<&[f32]>, out: &mut [(QParams, f32)]) {
        let g = self.group();
        // sub-block j's rounding offsets
        let vj = |j: usize| v.map(|v| &v[j * g..(j + 1) * g]);
        let per = QK_K / g;
        let (lo, hi) = self.level_range();
        // sub-block weights: the sums of their importance (as ggml weighs the super-block fit)
        let mut sw = [0f32; 16];
        for (s, q) in sw.iter_mut().zip(qw.chunks_exact(g)) {
            *s = q.iter().sum();
        }
        let sw = &sw[..per];
        if self.symmetric() {
            let zero = self.zero();
            let mut sc = [0f32; 16];
            for (j, (s, (x, q))) in sc
                .iter_mut()
                .zip(w.chunks_exact(g).zip(qw.chunks_exact(g)))
                .enumerate()
            {
                *s = crate::search::sym(x, q, vj(j), zero as f32, (-zero, zero - 1), true, |s| s);
            }
            // the super-block scale: the sub-block scales on levels lo..=hi, weighted
            let d = crate::search::sym(&sc[..per], sw, None, -lo as f32, (lo, hi), true, |d| {
                f16::from_f32(d).to_f32()
            });
            let (zl, zh) = (-zero as f32, (zero - 1) as f32);
            for (j, (o, &s)) in out.iter_mut().zip(&sc[..per]).enumerate() {
                let (x, q) = (&w[j * g..(j + 1) * g], &qw[j * g..(j + 1) * g]);
                let l = if d == 0.0 {
                    0
                } else {
                    // the stored level nearest the sub-block's scale, or a neighbour of it when
                    // that fits the sub-block better
                    let l0 = nearest_int(s / d).clamp(lo, hi);
                    crate::search::best_neighbour(l0, (lo, hi), |l| {
                        crate::search::error(x, q, vj(j), d * l as f32, 0.0, zl, zh)
                    })
                };
                *o = (
                    QParams {
                        scale: d * l as f32,
                        zero,
                    },
                    0.0,
                );
            }
            return;
        }
        let top = self.code_range().1;
        let (mut sc, mut mins) = ([0f32; 16], [0f32; 16]);
        for (j, (x, q)) in w.chunks_exact(g).zip(qw.chunks_exact(g)).enumerate() {
            let (s, m) = crate::search::asym(x, q, vj(j), top, true, |s, m| (s, m));
            sc[j] = s;
            mins[j] = -m;
        }
        // the super-block scale and minimum: ggml's weighted make_qp_quants over the levels
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let ones = [1f32; 16];
        let sw = if sw.iter().sum::<f32>() > 0.0 {
            sw
        } else {
            &ones[..per]
        };
        let d = f16::from_f32(make_qp_quants(&sc[..per], hi, &mut ls, sw)).to_f32();
        let dmin = f16::from_f32(make_qp_quants(&mins[..per], hi, &mut lm, sw)).to_f32();
        let near = |v: f32, step: f32| {
            if step > 0.0 {
                nearest_int(v / step).clamp(0, hi)
            } else {
                0
            }
        };
        for j in 0..per {
            let (x, q) = (&w[j * g..(j + 1) * g], &qw[j * g..(j + 1) * g]);
            // the stored levels nearest the sub-block's scale and minimum, or the neighbours
            // that fit it best with the stored super-block values
            let (l0, m0) = (near(sc[j], d), near(mins[j], dmin));
            let mut best = (f32::INFINITY, l0, m0);
            for l in (l0 - 2).max(0)..=(l0 + 2).min(hi) {
                for m in (m0 - 2).max(0)..=(m0 + 2).min(hi) {
                    let e = crate::search::error(
                        x,
                        q,
                        vj(j),
                        d * l as f32,
                        -(dmin * m as f32),
                        0.0,
                        top as f32,
                    );
                    if e < best.0 {
                        best = (e, l, m);
                    }
                }
            }
            let (_, l, m) = best;
            out[j] = (
                QParams {
                    scale: d * l as f32,
                    zero: 0,
                },
                -(dmin * m as f32),
            );
        }
    }
    fn pack_row(&self, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]) {
        let (bs, bb) = self.ty.block();
        let per = bs / self.group();
        assert_eq!(codes.len() % bs, 0);
        let g = self.group();
        for (b, (q, y)) in codes
            .chunks_exact(bs)
            .zip(out.chunks_exact_mut(bb))
            .enumerate()
        {
            let (db, mb) = (&d[b * per..(b + 1) * per], &m[b * per..(b + 1) * per]);
            // parameters no block stores exactly: the type's own quantization of the values
            let requantize = |y: &mut [u8]| {
                let zero = self.zero();
                let v: Vec<f32> = q
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| (c as i32 - zero) as f32 * db[i / g] + mb[i / g])
                    .collect();
                self.quantize_block(&v, y)
            };
            let (lo, hi) = self.level_range();
            if self.ty == GgmlType::Q3_K {
                let mut l = [0i32; 16];
                let Some(c) = factor_levels(db, lo, hi, &mut l) else {
                    requantize(y);
                    continue;
                };
                let (hmask, rest) = y.split_at_mut(32);
                let (qs, rest) = rest.split_at_mut(64);
                let (sc, dbytes) = rest.split_at_mut(12);
                pack_q3_k_levels(&l, sc);
                dbytes.copy_from_slice(&f16_bits(c));
                pack_q3_k_codes(q.try_into().expect("a block of codes"), hmask, qs);
                continue;
            }
            if self.ty == GgmlType::Q2_K {
                let (mut ls, mut lm) = ([0i32; 16], [0i32; 16]);
                let Some((c, cm)) = factor_scales_mins(db, mb, hi, &mut ls, &mut lm) else {
                    requantize(y);
                    continue;
                };
                for j in 0..16 {
                    y[j] = (ls[j] | (lm[j] << 4)) as u8;
                }
                let l: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                pack_2bit(&l, &mut y[16..80]);
                y[80..82].copy_from_slice(&f16_bits(c));
                y[82..84].copy_from_slice(&f16_bits(cm));
                continue;
            }
            if self.ty == GgmlType::Q6_K {
                let mut l = [0i32; 16];
                let Some(c) = factor_levels(db, lo, hi, &mut l) else {
                    requantize(y);
                    continue;
                };
                pack_q6_k(q, y);
                for (j, &v) in l.iter().enumerate() {
                    y[192 + j] = v as i8 as u8;
                }
                y[208..210].copy_from_slice(&f16_bits(c));
                continue;
            }
            let (mut ls, mut lm) = ([0i32; 8], [0i32; 8]);
            let Some((c, cm)) = factor_scales_mins(db, mb, hi, &mut ls, &mut lm) else {
                requantize(y);
                continue;
            };
            y[0..2].copy_from_slice(&f16_bits(c));
            y[2..4].copy_from_slice(&f16_bits(cm));
            let sc = pack_scale_min_k4(&ls.map(|v| v as u8), &lm.map(|v| v as u8));
            y[4..16].copy_from_slice(&sc);
            let mut l = [0u8; QK_K];
            for (a, &v) in l.iter_mut().zip(q) {
                *a = v as u8;
            }
            if self.ty == GgmlType::Q4_K {
                pack_q4_k(&l, &mut y[16..144]);
            } else {
                pack_q5_k(&l, &mut y[16..176]);
            }
        }
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    /// Codes on the fitted grid pack into blocks that decode (ggml's dequantizer) to exactly
    /// `(q − zero)·scale + offset`; parameters no block can store still pack (the type's own
    /// quantization of the values, within a step of them) instead of panicking.
    #[test]
    fn packed_codes_decode_to_the_grid_values() {
        let mut rng = crate::synth::Rng::new(5);
        for grid in [&GRID_Q2_K, &GRID_Q3_K, &GRID_Q4_K, &GRID_Q5_K, &GRID_Q6_K] {
            let ty = grid.ty;
            let (lo, hi) = grid.code_range();
            let g = grid.group();
            let per = QK_K / g;
            let w: Vec<f32> = (0..2 * QK_K)
                .map(|i| (rng.normal() as f32) * 0.02 * if i % 37 == 0 { 8.0 } else { 1.0 })
                .collect();
            let (mut d, mut m) = (vec![0f32; 2 * per], vec![0f32; 2 * per]);
            let mut want = vec![0f32; 2 * QK_K];
            let mut codes = vec![0i8; 2 * QK_K];
            for b in 0..2 {
                let mut ps = vec![
                    (
                        QParams {
                            scale: 0.0,
                            zero: 0
                        },
                        0.0
                    );
                    per
                ];
                grid.fit(&w[b * QK_K..(b + 1) * QK_K], &mut ps);
                for (k, (p, off)) in ps.iter().enumerate() {
                    d[b * per + k] = p.scale;
                    m[b * per + k] = *off;
                    for i in 0..g {
                        let at = b * QK_K + k * g + i;
                        let q = if p.scale == 0.0 {
                            p.zero
                        } else {
                            (((w[at] - off) / p.scale).round() as i32 + p.zero).clamp(lo, hi)
                        };
                        codes[at] = q as i8;
                        want[at] = (q - p.zero) as f32 * p.scale + off;
                    }
                }
            }
            let mut bytes = vec![0u8; ty.row_bytes(2 * QK_K)];
            grid.pack_row(&codes, &d, &m, &mut bytes);
            let mut got = vec![0f32; 2 * QK_K];
            crate::ggml::dequantize_row(ty, &bytes, &mut got);
            assert_eq!(got, want, "{ty}");
            // a scale no f16 times a level gives
            d[3] *= 1.000_001;
            grid.pack_row(&codes, &d, &m, &mut bytes);
            crate::ggml::dequantize_row(ty, &bytes, &mut got);
            let step = d.iter().fold(0f32, |a, &v| a.max(v.abs()));
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= step),
                "{ty}"
            );
        }
    }
}
