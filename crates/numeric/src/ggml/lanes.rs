//! ggml's scale searches on SIMD lanes: `make_qx_quants` (Q6_K, Q3_K and Q4_0/Q5_0 with an
//! importance matrix), `make_qkx2_quants` (Q2_K, Q4_K, Q5_K, Q4_1/Q5_1 with an importance
//! matrix), `make_q3_quants` (Q3_K) and the IQ4 block scale.
//!
//! ggml tries a fixed list of candidate scales per sub-block, one after another, each a short
//! loop over the sub-block's values with f32 sums in value order. Here each lane runs that whole
//! sequential search for its own sub-block (a super-block's 8 or 16, a row's 32-value blocks):
//! all lanes go through the same candidates in step, each keeping its own best error, scale,
//! minimum and levels (`*_lockstep`). Every lane does ggml's operations in ggml's order (no sum
//! reordered, no multiply-add fused), so the results are bit for bit the scalar references'
//! (`*_ref` in `kquants.rs` and `iq4.rs`); the unit tests compare the two on random and
//! adversarial blocks at every vector level this CPU has. Sub-blocks left over after the last
//! full set of lanes (and single searches) put the candidates in the lanes instead
//! (`qx_lanes`, `qkx2_lanes`, `iq4_lanes`). `make_qkx2_quants` is not a pure map over its
//! candidates (a winner's minimum is the offset of the next ones), so `qkx2_lanes` evaluates a
//! set of candidates with the current minimum, accepts winners in order, and after a winner
//! that moves the minimum starts the next set at the candidate after it.
//!
//! The lanes are `crate::simd`'s; `simd::multiversion!` compiles each search for AVX-512 (16
//! lanes), AVX2 (8) and the baseline, and picks one at run time.

use super::first_absmax;
use super::iq4::{iq4_block_scale_ref, IQ4NL_VALUES};
use super::kquants::{
    make_q3_quants_ref, make_qkx2_quants_ref, make_qx_quants_ref, nearest_int, GROUP_MAX_EPS,
};
#[cfg(test)]
use crate::simd::Level;
use crate::simd::{multiversion, Lanes};

/// The most values one search sees (ggml's sub-blocks have 16 or 32).
pub(super) const N_MAX: usize = 32;
/// The most candidates one search tries (`make_qkx2_quants` with `nstep` 36 tries 37).
const C_MAX: usize = 48;

multiversion!(qx_quants, qx_quants_at, qx_lanes, make_qx_quants_ref,
    (x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32);

/// `make_qx_quants` (kquants.rs's `make_qx_quants_ref`): candidate 0 is the first pass's
/// `-nmax / max`, then `is` = -9..=9 without 0.
#[inline(always)]
fn qx_lanes<V: Lanes>(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    assert!(n <= N_MAX);
    let (max, amax) = first_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let (mut w, mut wx) = ([0f32; N_MAX], [0f32; N_MAX]);
    for i in 0..n {
        w[i] = qw.map_or(x[i] * x[i], |q| q[i]);
        wx[i] = w[i] * x[i];
    }
    const NC: usize = 19;
    let mut isc = [0f32; C_MAX];
    isc[0] = -(nmax as f32) / max;
    let mut c = 1;
    for is in -9i32..=9 {
        if is != 0 {
            isc[c] = -(nmax as f32 + 0.1 * is as f32) / max;
            c += 1;
        }
    }
    let (mut slx, mut sl2) = ([0f32; C_MAX], [0f32; C_MAX]);
    let mut g = 0;
    while g < NC {
        let s = V::load(&isc[g..]);
        let (mut a, mut b) = (V::splat(0.0), V::splat(0.0));
        for i in 0..n {
            let l = s.mul(V::splat(x[i])).round_clamp(-nmax, nmax - 1);
            a = a.add(V::splat(wx[i]).mul(l));
            b = b.add(V::splat(w[i]).mul(l).mul(l));
        }
        a.store(&mut slx[g..]);
        b.store(&mut sl2[g..]);
        g += V::L;
    }
    let mut scale = if sl2[0] != 0.0 { slx[0] / sl2[0] } else { 0.0 };
    let mut best = scale * slx[0];
    let mut pick = 0;
    for c in 1..NC {
        if sl2[c] > 0.0 && slx[c] * slx[c] > best * sl2[c] {
            scale = slx[c] / sl2[c];
            best = scale * slx[c];
            pick = c;
        }
    }
    for i in 0..n {
        l_out[i] = (nmax + nearest_int(isc[pick] * x[i]).clamp(-nmax, nmax - 1)) as i8;
    }
    scale
}

/// How `count` sub-blocks go into lanes: sets of `V::L` (`true`), then of `V::Half::L`
/// (`false`), as (first sub-block, lanes, full width); the rest (fewer than `V::Half::L`) go
/// one at a time.
fn lane_sets<V: Lanes>(count: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let (full, half) = (V::L, <V::Half as Lanes>::L);
    let mut b0 = 0;
    std::iter::from_fn(move || {
        if count - b0 < half {
            return None;
        }
        let set = if count - b0 >= full {
            (b0, full, true)
        } else {
            (b0, half, false)
        };
        b0 += set.1;
        Some(set)
    })
}

/// The first sub-block [`lane_sets`] leaves to the one-at-a-time search (the full width is a
/// multiple of the half width).
fn lane_sets_end<V: Lanes>(count: usize) -> usize {
    let half = <V::Half as Lanes>::L;
    count / half * half
}

/// The `lanes` sub-blocks of `n` values in `x`, value i of each side by side (row i).
#[inline(always)]
fn transpose(x: &[f32], n: usize, lanes: usize, out: &mut [f32; N_MAX * 16]) {
    for k in 0..lanes {
        for i in 0..n {
            out[i * lanes + k] = x[k * n + i];
        }
    }
}

/// Per lane: the value of largest magnitude, sign kept, first one on ties (ggml's
/// `if (ax > amax) { amax = ax; max = v; }`), and that magnitude.
#[inline(always)]
fn signed_absmax<V: Lanes>(xt: &[f32], n: usize) -> (V, V) {
    let lanes = V::L;
    let (mut max, mut amax) = (V::splat(0.0), V::splat(0.0));
    for i in 0..n {
        let v = V::load(&xt[i * lanes..]);
        let ax = v.abs();
        max = V::if_lt(amax, ax, v, max);
        amax = V::if_lt(amax, ax, ax, amax);
    }
    (max, amax)
}

multiversion!(qx_many, qx_many_at, qx_blocks, qx_many_ref,
    (x: &[f32], n: usize, nmax: i32, l_out: &mut [i8], out: &mut [f32], qw: Option<&[f32]>) -> ());

/// `make_qx_quants` on each `n`-value sub-block of `x` (importance `qw` alongside), one after
/// another.
fn qx_many_ref(
    x: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [i8],
    out: &mut [f32],
    qw: Option<&[f32]>,
) {
    for (b, (xs, ls)) in x.chunks_exact(n).zip(l_out.chunks_exact_mut(n)).enumerate() {
        out[b] = make_qx_quants_ref(xs, nmax, ls, qw.map(|q| &q[b * n..(b + 1) * n]));
    }
}

/// [`qx_many_ref`] with one sub-block per lane, all lanes through ggml's candidates in step.
#[inline(always)]
fn qx_blocks<V: Lanes>(
    x: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [i8],
    out: &mut [f32],
    qw: Option<&[f32]>,
) {
    let count = x.len() / n;
    assert!(n <= N_MAX && l_out.len() >= count * n && out.len() >= count);
    assert!(qw.is_none_or(|q| q.len() >= count * n));
    for (b0, lanes, wide) in lane_sets::<V>(count) {
        let r = b0 * n..(b0 + lanes) * n;
        let (xs, qs, os) = (
            &x[r.clone()],
            qw.map(|q| &q[r.clone()]),
            &mut out[b0..b0 + lanes],
        );
        match wide {
            true => qx_lockstep::<V>(xs, n, nmax, &mut l_out[r], os, qs),
            false => qx_lockstep::<V::Half>(xs, n, nmax, &mut l_out[r], os, qs),
        }
    }
    let done = lane_sets_end::<V>(count);
    for (b, o) in out.iter_mut().enumerate().take(count).skip(done) {
        let r = b * n..(b + 1) * n;
        *o = qx_lanes::<V>(
            &x[r.clone()],
            nmax,
            &mut l_out[r.clone()],
            qw.map(|q| &q[r]),
        );
    }
}

/// One candidate's Σ w·x·l and Σ w·l² per lane (closures are not inlined reliably into the
/// target-feature wrappers; functions marked `inline(always)` are).
#[inline(always)]
fn qx_sums<V: Lanes>(
    xt: &[f32],
    wt: &[f32],
    wxt: &[f32],
    n: usize,
    nmax: i32,
    iscale: V,
) -> (V, V) {
    let lanes = V::L;
    let (mut a, mut b) = (V::splat(0.0), V::splat(0.0));
    for i in 0..n {
        let l = iscale
            .mul(V::load(&xt[i * lanes..]))
            .round_clamp(-nmax, nmax - 1);
        a = a.add(V::load(&wxt[i * lanes..]).mul(l));
        b = b.add(V::load(&wt[i * lanes..]).mul(l).mul(l));
    }
    (a, b)
}

#[inline(always)]
fn qx_lockstep<V: Lanes>(
    x: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [i8],
    out: &mut [f32],
    qw: Option<&[f32]>,
) {
    let lanes = V::L;
    let (mut xt, mut wt, mut wxt) = ([0f32; N_MAX * 16], [0f32; N_MAX * 16], [0f32; N_MAX * 16]);
    transpose(x, n, lanes, &mut xt);
    match qw {
        Some(q) => transpose(q, n, lanes, &mut wt),
        None => {
            for i in 0..n * lanes {
                wt[i] = xt[i] * xt[i];
            }
        }
    }
    for i in 0..n * lanes {
        wxt[i] = wt[i] * xt[i];
    }
    let (max, _) = signed_absmax::<V>(&xt, n);
    let zero = V::splat(0.0);
    let mut pick = V::splat(-(nmax as f32)).div(max);
    let (slx, sl2) = qx_sums(&xt, &wt, &wxt, n, nmax, pick);
    let mut scale = V::if_nonzero(V::ne_mask(sl2, zero), slx.div(sl2), zero);
    let mut best = scale.mul(slx);
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = V::splat(-(nmax as f32 + 0.1 * is as f32)).div(max);
        let (slx, sl2) = qx_sums(&xt, &wt, &wxt, n, nmax, iscale);
        let win = V::lt_mask(zero, sl2).and(V::lt_mask(best.mul(sl2), slx.mul(slx)));
        let s = slx.div(sl2);
        scale = V::if_nonzero(win, s, scale);
        best = V::if_nonzero(win, s.mul(slx), best);
        pick = V::if_nonzero(win, iscale, pick);
    }
    let mut lt = [0f32; N_MAX * 16];
    for i in 0..n {
        pick.mul(V::load(&xt[i * lanes..]))
            .round_clamp(-nmax, nmax - 1)
            .store(&mut lt[i * lanes..]);
    }
    symmetric_levels_out::<V>(x, n, nmax, &lt, scale, l_out, out);
}

/// The scalar reference with its scratch buffer.
#[allow(clippy::too_many_arguments)]
fn qkx2_ref(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut laux = [0u8; N_MAX];
    make_qkx2_quants_ref(
        x, weights, nmax, l_out, &mut laux, rmin, rdelta, nstep, use_mad,
    )
}

/// `make_qkx2_quants` (kquants.rs's `make_qkx2_quants_ref`). Returns (scale, -min).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qkx2_lanes<V: Lanes>(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    if use_mad {
        qkx2_body::<V, true>(x, weights, nmax, l_out, rmin, rdelta, nstep)
    } else {
        qkx2_body::<V, false>(x, weights, nmax, l_out, rmin, rdelta, nstep)
    }
}

#[inline(always)]
fn qkx2_body<V: Lanes, const MAD: bool>(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    assert!(n <= N_MAX && (nstep as usize) < C_MAX);
    let err = |d: f32| if MAD { d.abs() } else { d * d };
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
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let nc = nstep as usize + 1;
    let mut c0 = 0;
    // the levels of each value (rows) for the group's candidates (lanes)
    let mut lv = [0f32; N_MAX * 16];
    let (mut sl, mut sl2, mut sxl) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let (mut ts, mut tm, mut cur) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let mut ok = [false; 16];
    let lanes = V::L;
    while c0 < nc {
        // the group's candidates, with the minimum as it stands
        let m = min;
        let mut s = [0f32; 16];
        for (k, sk) in s[..lanes].iter_mut().enumerate() {
            *sk = (rmin + rdelta * (c0 + k) as f32 + nmax as f32) / (max - m);
        }
        let s = V::load(&s);
        let (mut a, mut b, mut c) = (V::splat(0.0), V::splat(0.0), V::splat(0.0));
        for i in 0..n {
            let l = s.mul(V::splat(x[i] - m)).round_clamp(0, nmax);
            l.store(&mut lv[i * lanes..]);
            let wl = V::splat(weights[i]).mul(l);
            a = a.add(wl);
            b = b.add(wl.mul(l));
            c = c.add(wl.mul(V::splat(x[i])));
        }
        a.store(&mut sl);
        b.store(&mut sl2);
        c.store(&mut sxl);
        for k in 0..lanes {
            let d = sum_w * sl2[k] - sl[k] * sl[k];
            ok[k] = d > 0.0;
            ts[k] = 0.0;
            tm[k] = 0.0;
            if ok[k] {
                ts[k] = (sum_w * sxl[k] - sum_x * sl[k]) / d;
                tm[k] = (sl2[k] * sum_x - sl[k] * sxl[k]) / d;
                if tm[k] > 0.0 {
                    tm[k] = 0.0;
                    ts[k] = sxl[k] / sl2[k];
                }
            }
        }
        let (tsv, tmv) = (V::load(&ts), V::load(&tm));
        let mut e = V::splat(0.0);
        for i in 0..n {
            let l = V::load(&lv[i * lanes..]);
            let d = tsv.mul(l).add(tmv).sub(V::splat(x[i]));
            let d = if MAD { d.abs() } else { d.mul(d) };
            e = e.add(V::splat(weights[i]).mul(d));
        }
        e.store(&mut cur);
        let mut next = c0 + lanes;
        for k in 0..lanes.min(nc - c0) {
            if ok[k] && cur[k] < best_error {
                best_error = cur[k];
                scale = ts[k];
                min = tm[k];
                for i in 0..n {
                    l_out[i] = lv[i * lanes + k] as u8;
                }
                if min.to_bits() != m.to_bits() {
                    // the candidates after this one depend on the new minimum
                    next = c0 + k + 1;
                    break;
                }
            }
        }
        c0 = next;
    }
    (scale, -min)
}

/// Each lane's symmetric levels (rows of `lt`, -nmax..nmax-1) stored from 0 into its sub-block
/// of `l_out` and its scale into `out`; a sub-block whose largest magnitude is below ggml's
/// epsilon gets zeros, as ggml's early exit does.
#[inline(always)]
fn symmetric_levels_out<V: Lanes>(
    x: &[f32],
    n: usize,
    nmax: i32,
    lt: &[f32],
    scale: V,
    l_out: &mut [i8],
    out: &mut [f32],
) {
    let lanes = V::L;
    let mut sc = [0f32; 16];
    scale.store(&mut sc);
    for k in 0..lanes {
        let xs = &x[k * n..(k + 1) * n];
        let ls = &mut l_out[k * n..(k + 1) * n];
        let amax = xs
            .iter()
            .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
        if amax < GROUP_MAX_EPS {
            ls.fill(0);
            out[k] = 0.0;
            continue;
        }
        for i in 0..n {
            ls[i] = (lt[i * lanes + k] as i32 + nmax) as i8;
        }
        out[k] = sc[k];
    }
}

multiversion!(qkx2_many, qkx2_many_at, qkx2_blocks, qkx2_many_ref,
    (x: &[f32], weights: &[f32], n: usize, nmax: i32, l_out: &mut [u8], out: &mut [(f32, f32)],
     rmin: f32, rdelta: f32, nstep: i32, use_mad: bool) -> ());

/// `make_qkx2_quants` on each of the sub-blocks of `n` values in `x` (with their `weights`;
/// levels into `l_out`, (scale, -min) into `out`), one after another.
#[allow(clippy::too_many_arguments)]
fn qkx2_many_ref(
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
    for (((xs, ws), ls), o) in x
        .chunks_exact(n)
        .zip(weights.chunks_exact(n))
        .zip(l_out.chunks_exact_mut(n))
        .zip(out.iter_mut())
    {
        *o = qkx2_ref(xs, ws, nmax, ls, rmin, rdelta, nstep, use_mad);
    }
}

/// [`qkx2_many_ref`] with one sub-block per lane: every lane runs ggml's sequential search on
/// its own sub-block (its own minimum, best error and levels, updated where its candidate
/// wins), all lanes through the same candidate list in step. Sub-blocks beyond the last full
/// set of lanes go through the candidate-lane search.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qkx2_blocks<V: Lanes>(
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
    let count = x.len() / n;
    assert!(n <= N_MAX && weights.len() >= count * n && l_out.len() >= count * n);
    assert!(out.len() >= count);
    for (b0, lanes, wide) in lane_sets::<V>(count) {
        let r = b0 * n..(b0 + lanes) * n;
        let (xs, ws) = (&x[r.clone()], &weights[r.clone()]);
        let (ls, os) = (&mut l_out[r], &mut out[b0..b0 + lanes]);
        match (wide, use_mad) {
            (true, true) => qkx2_lockstep::<V, true>(xs, ws, n, nmax, ls, os, rmin, rdelta, nstep),
            (true, false) => {
                qkx2_lockstep::<V, false>(xs, ws, n, nmax, ls, os, rmin, rdelta, nstep)
            }
            (false, true) => {
                qkx2_lockstep::<V::Half, true>(xs, ws, n, nmax, ls, os, rmin, rdelta, nstep)
            }
            (false, false) => {
                qkx2_lockstep::<V::Half, false>(xs, ws, n, nmax, ls, os, rmin, rdelta, nstep)
            }
        }
    }
    let b0 = lane_sets_end::<V>(count);
    for (b, o) in out.iter_mut().enumerate().take(count).skip(b0) {
        let r = b * n..(b + 1) * n;
        *o = qkx2_lanes::<V>(
            &x[r.clone()],
            &weights[r.clone()],
            nmax,
            &mut l_out[r],
            rmin,
            rdelta,
            nstep,
            use_mad,
        );
    }
}

/// |d| (ggml's `use_mad`) or d².
#[inline(always)]
fn abs_or_square<V: Lanes, const MAD: bool>(d: V) -> V {
    if MAD {
        d.abs()
    } else {
        d.mul(d)
    }
}

/// `V::L` sub-blocks of `n` values, one per lane (see [`qkx2_blocks`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qkx2_lockstep<V: Lanes, const MAD: bool>(
    x: &[f32],
    weights: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [u8],
    out: &mut [(f32, f32)],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) {
    let lanes = V::L;
    // value i of every lane's sub-block, side by side
    let (mut xt, mut wt) = ([0f32; N_MAX * 16], [0f32; N_MAX * 16]);
    transpose(x, n, lanes, &mut xt);
    transpose(weights, n, lanes, &mut wt);
    let zero = V::splat(0.0);
    let (mut min, mut max) = (V::load(&xt), V::load(&xt));
    let mut sum_w = V::load(&wt);
    let mut sum_x = sum_w.mul(V::load(&xt));
    for i in 1..n {
        let (xi, wi) = (V::load(&xt[i * lanes..]), V::load(&wt[i * lanes..]));
        min = V::if_lt(xi, min, xi, min);
        max = V::if_lt(max, xi, xi, max);
        sum_w = sum_w.add(wi);
        sum_x = sum_x.add(wi.mul(xi));
    }
    min = V::if_lt(zero, min, zero, min);
    let nmaxv = V::splat(nmax as f32);
    let iscale = nmaxv.div(max.sub(min));
    let mut scale = V::splat(1.0).div(iscale);
    let mut best = zero;
    let mut lbest = [0f32; N_MAX * 16];
    for i in 0..n {
        let xi = V::load(&xt[i * lanes..]);
        let l = iscale.mul(xi.sub(min)).round_clamp(0, nmax);
        l.store(&mut lbest[i * lanes..]);
        best = best.add(
            V::load(&wt[i * lanes..]).mul(abs_or_square::<V, MAD>(scale.mul(l).add(min).sub(xi))),
        );
    }
    // a degenerate lane (max == min) is finished before the search: its result is fixed below
    let mut laux = [0f32; N_MAX * 16];
    for is in 0..=nstep {
        if nstep < 1 {
            break;
        }
        let iscale = V::splat(rmin + rdelta * is as f32 + nmax as f32).div(max.sub(min));
        let (mut sl, mut sl2, mut sxl) = (zero, zero, zero);
        for i in 0..n {
            let (xi, wi) = (V::load(&xt[i * lanes..]), V::load(&wt[i * lanes..]));
            let l = iscale.mul(xi.sub(min)).round_clamp(0, nmax);
            l.store(&mut laux[i * lanes..]);
            let wl = wi.mul(l);
            sl = sl.add(wl);
            sl2 = sl2.add(wl.mul(l));
            sxl = sxl.add(wl.mul(xi));
        }
        let d = sum_w.mul(sl2).sub(sl.mul(sl));
        let ok = V::lt_mask(zero, d);
        let mut this_scale = sum_w.mul(sxl).sub(sum_x.mul(sl)).div(d);
        let mut this_min = sl2.mul(sum_x).sub(sl.mul(sxl)).div(d);
        let pos = V::lt_mask(zero, this_min);
        this_scale = V::if_nonzero(pos, sxl.div(sl2), this_scale);
        this_min = V::if_nonzero(pos, zero, this_min);
        let mut cur = zero;
        for i in 0..n {
            let l = V::load(&laux[i * lanes..]);
            cur = cur.add(
                V::load(&wt[i * lanes..]).mul(abs_or_square::<V, MAD>(
                    this_scale
                        .mul(l)
                        .add(this_min)
                        .sub(V::load(&xt[i * lanes..])),
                )),
            );
        }
        let win = ok.and(V::lt_mask(cur, best));
        for i in 0..n {
            let l = V::if_nonzero(
                win,
                V::load(&laux[i * lanes..]),
                V::load(&lbest[i * lanes..]),
            );
            l.store(&mut lbest[i * lanes..]);
        }
        best = V::if_nonzero(win, cur, best);
        scale = V::if_nonzero(win, this_scale, scale);
        min = V::if_nonzero(win, this_min, min);
    }
    let (mut sa, mut ma, mut lo, mut hi) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    scale.store(&mut sa);
    min.store(&mut ma);
    // a degenerate lane's result: the minimum clamped before any search
    for k in 0..lanes {
        let xs = &x[k * n..(k + 1) * n];
        let (mut a, mut b) = (xs[0], xs[0]);
        for &v in &xs[1..] {
            if v < a {
                a = v;
            }
            if v > b {
                b = v;
            }
        }
        lo[k] = if a > 0.0 { 0.0 } else { a };
        hi[k] = b;
    }
    for k in 0..lanes {
        let ls = &mut l_out[k * n..(k + 1) * n];
        if hi[k] == lo[k] {
            ls.fill(0);
            out[k] = (0.0, -lo[k]);
            continue;
        }
        for i in 0..n {
            ls[i] = lbest[i * lanes + k] as u8;
        }
        out[k] = (sa[k], -ma[k]);
    }
}

multiversion!(q3_many, q3_many_at, q3_blocks, q3_many_ref,
    (x: &[f32], n: usize, nmax: i32, l_out: &mut [i8], out: &mut [f32]) -> ());

/// `make_q3_quants` on each `n`-value sub-block of `x`, one after another.
fn q3_many_ref(x: &[f32], n: usize, nmax: i32, l_out: &mut [i8], out: &mut [f32]) {
    for (b, (xs, ls)) in x.chunks_exact(n).zip(l_out.chunks_exact_mut(n)).enumerate() {
        out[b] = make_q3_quants_ref(xs, nmax, ls);
    }
}

/// [`q3_many_ref`] with one sub-block per lane: every lane runs ggml's first pass and its
/// coordinate descent (at most five sweeps, stopping after a sweep without a change) on its own
/// sub-block; a lane that has stopped takes no further updates.
#[inline(always)]
fn q3_blocks<V: Lanes>(x: &[f32], n: usize, nmax: i32, l_out: &mut [i8], out: &mut [f32]) {
    let count = x.len() / n;
    assert!(n <= N_MAX && l_out.len() >= count * n && out.len() >= count);
    let mut sets = lane_sets::<V>(count).peekable();
    while let Some((b0, lanes, wide)) = sets.next() {
        // two full sets side by side where there are
        let pair = wide && sets.next_if(|s| s.2).is_some();
        let m = if pair { 2 * lanes } else { lanes };
        let r = b0 * n..(b0 + m) * n;
        let (xs, os) = (&x[r.clone()], &mut out[b0..b0 + m]);
        match (wide, pair) {
            (true, true) => q3_lockstep_sets::<V, 2>(xs, n, nmax, &mut l_out[r], os),
            (true, false) => q3_lockstep::<V>(xs, n, nmax, &mut l_out[r], os),
            _ => q3_lockstep::<V::Half>(xs, n, nmax, &mut l_out[r], os),
        }
    }
    let done = lane_sets_end::<V>(count);
    for (b, o) in out.iter_mut().enumerate().take(count).skip(done) {
        let r = b * n..(b + 1) * n;
        *o = make_q3_quants_ref(&x[r.clone()], nmax, &mut l_out[r]);
    }
}

/// [`q3_lockstep_sets`] on one set of lanes.
#[inline(always)]
fn q3_lockstep<V: Lanes>(x: &[f32], n: usize, nmax: i32, l_out: &mut [i8], out: &mut [f32]) {
    q3_lockstep_sets::<V, 1>(x, n, nmax, l_out, out)
}

/// `S` sets of `V::L` sub-blocks (`S·V::L` sub-blocks of `n` values in `x`), the sets' searches
/// interleaved value by value: each set's sweep is one long dependency chain (a division per
/// value), and independent chains side by side keep the vector unit busy. Every lane does
/// exactly what it would alone.
#[inline(always)]
fn q3_lockstep_sets<V: Lanes, const S: usize>(
    x: &[f32],
    n: usize,
    nmax: i32,
    l_out: &mut [i8],
    out: &mut [f32],
) {
    let lanes = V::L;
    let per = lanes * n;
    let mut xt = [[0f32; N_MAX * 16]; S];
    for (s, t) in xt.iter_mut().enumerate() {
        transpose(&x[s * per..(s + 1) * per], n, lanes, t);
    }
    let zero = V::splat(0.0);
    let ones = V::lt_mask(zero, V::splat(1.0));
    let (lo, hi) = (-nmax, nmax - 1);
    // (loops, not closures: a closure is not compiled for the caller's vector width)
    let mut iscale = [zero; S];
    for s in 0..S {
        let (max, _) = signed_absmax::<V>(&xt[s], n);
        iscale[s] = V::splat(-(nmax as f32)).div(max);
    }
    let mut lt = [[0f32; N_MAX * 16]; S];
    let (mut sumlx, mut suml2) = ([zero; S], [zero; S]);
    for i in 0..n {
        for s in 0..S {
            let xi = V::load(&xt[s][i * lanes..]);
            let l = iscale[s].mul(xi).round_clamp(lo, hi);
            l.store(&mut lt[s][i * lanes..]);
            let w = xi.mul(xi);
            sumlx[s] = sumlx[s].add(w.mul(xi).mul(l));
            suml2[s] = suml2[s].add(w.mul(l).mul(l));
        }
    }
    let mut active = [ones; S];
    for _ in 0..5 {
        let mut changed = [zero; S];
        for i in 0..n {
            for s in 0..S {
                let xi = V::load(&xt[s][i * lanes..]);
                let li = V::load(&lt[s][i * lanes..]);
                let w = xi.mul(xi);
                let mut slx = sumlx[s].sub(w.mul(xi).mul(li));
                let pos = V::lt_mask(zero, slx);
                let mut sl2 = suml2[s].sub(w.mul(li).mul(li));
                let new_l = xi.mul(sl2).div(slx).round_clamp(lo, hi);
                let differs = V::ne_mask(new_l, li);
                slx = slx.add(w.mul(xi).mul(new_l));
                sl2 = sl2.add(w.mul(new_l).mul(new_l));
                let better = V::lt_mask(zero, sl2).and(V::lt_mask(
                    sumlx[s].mul(sumlx[s]).mul(sl2),
                    slx.mul(slx).mul(suml2[s]),
                ));
                let take = active[s].and(pos).and(differs).and(better);
                V::if_nonzero(take, new_l, li).store(&mut lt[s][i * lanes..]);
                sumlx[s] = V::if_nonzero(take, slx, sumlx[s]);
                suml2[s] = V::if_nonzero(take, sl2, suml2[s]);
                changed[s] = V::if_nonzero(take, ones, changed[s]);
            }
        }
        let mut any = false;
        for s in 0..S {
            active[s] = active[s].and(changed[s]);
            let mut a = [0f32; 16];
            active[s].store(&mut a);
            any |= a[..lanes].iter().any(|v| v.to_bits() != 0);
        }
        if !any {
            break;
        }
    }
    for s in 0..S {
        let scale = V::if_nonzero(V::lt_mask(zero, suml2[s]), sumlx[s].div(suml2[s]), zero);
        symmetric_levels_out::<V>(
            &x[s * per..(s + 1) * per],
            n,
            nmax,
            &lt[s],
            scale,
            &mut l_out[s * per..(s + 1) * per],
            &mut out[s * lanes..(s + 1) * lanes],
        );
    }
}

multiversion!(iq4_scale, iq4_scale_at, iq4_lanes, iq4_block_scale_ref,
    (x: &[f32], weight: &[f32]) -> f32);

/// IQ4_NL's grid value nearest `y`, as ggml's `best_index_int8` picks it, from the 15 "past the
/// midpoint" tests its binary search makes: `y - v[k-1] >= v[k] - y` is monotone in `y` (both
/// sides are correctly rounded), true below the bracket and false above it, so the tests that
/// pass count the bracket's lower index plus ggml's tie decision. Exact for every non-NaN `y`
/// (the scale searches never see NaN); the value is v[0] plus the steps passed (small integers,
/// exact in f32).
#[inline(always)]
fn iq4_value<V: Lanes>(y: V) -> V {
    let mut q = V::splat(IQ4NL_VALUES[0] as f32);
    for k in 1..16 {
        let (a, b) = (IQ4NL_VALUES[k - 1] as f32, IQ4NL_VALUES[k] as f32);
        q = q.add(V::ge_then(
            y.sub(V::splat(a)),
            V::splat(b).sub(y),
            V::splat(b - a),
        ));
    }
    q
}

/// The scale search of `quantize_row_iq4_nl_impl` (iq4.rs's `iq4_block_scale_ref`): candidate 0
/// is `-max / v[0]`'s inverse, then `itry` = -7..=7.
#[inline(always)]
fn iq4_lanes<V: Lanes>(x: &[f32], weight: &[f32]) -> f32 {
    let values = &IQ4NL_VALUES;
    let n = x.len();
    assert!(n <= N_MAX);
    let (max, amax) = first_absmax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    const NC: usize = 16;
    let mut ids = [0f32; C_MAX];
    let d0 = -max / values[0] as f32;
    ids[0] = 1.0 / d0;
    for (c, itry) in (-7i32..=7).enumerate() {
        ids[c + 1] = (itry + values[0] as i32) as f32 / max;
    }
    let (mut sqx, mut sq2) = ([0f32; C_MAX], [0f32; C_MAX]);
    let mut g = 0;
    while g < NC {
        let s = V::load(&ids[g..]);
        let (mut a, mut b) = (V::splat(0.0), V::splat(0.0));
        for j in 0..n {
            let (xj, wj) = (V::splat(x[j]), V::splat(weight[j]));
            let q = iq4_value(s.mul(xj));
            a = a.add(wj.mul(q).mul(xj));
            b = b.add(wj.mul(q).mul(q));
        }
        a.store(&mut sqx[g..]);
        b.store(&mut sq2[g..]);
        g += V::L;
    }
    let mut d = if sq2[0] > 0.0 { sqx[0] / sq2[0] } else { 0.0 };
    let mut best = d * sqx[0];
    for c in 1..NC {
        if sq2[c] > 0.0 && sqx[c] * sqx[c] > best * sq2[c] {
            d = sqx[c] / sq2[c];
            best = d * sqx[c];
        }
    }
    d
}

multiversion!(iq4_scale_many, iq4_scale_many_at, iq4_blocks, iq4_scale_many_ref,
    (x: &[f32], weight: &[f32], out: &mut [f32]) -> ());

/// The IQ4 scale search on each 32-value block of `x`, one after another.
fn iq4_scale_many_ref(x: &[f32], weight: &[f32], out: &mut [f32]) {
    for ((xs, ws), o) in x
        .chunks_exact(32)
        .zip(weight.chunks_exact(32))
        .zip(out.iter_mut())
    {
        *o = iq4_block_scale_ref(xs, ws);
    }
}

/// [`iq4_scale_many_ref`] with one block per lane, all lanes through ggml's candidates in step.
#[inline(always)]
fn iq4_blocks<V: Lanes>(x: &[f32], weight: &[f32], out: &mut [f32]) {
    let count = x.len() / 32;
    assert!(weight.len() >= count * 32 && out.len() >= count);
    for (b0, lanes, wide) in lane_sets::<V>(count) {
        let r = b0 * 32..(b0 + lanes) * 32;
        let (xs, ws, os) = (&x[r.clone()], &weight[r], &mut out[b0..b0 + lanes]);
        match wide {
            true => iq4_lockstep::<V>(xs, ws, os),
            false => iq4_lockstep::<V::Half>(xs, ws, os),
        }
    }
    let done = lane_sets_end::<V>(count);
    for (b, o) in out.iter_mut().enumerate().take(count).skip(done) {
        let r = b * 32..(b + 1) * 32;
        *o = iq4_lanes::<V>(&x[r.clone()], &weight[r]);
    }
}

/// One candidate's Σ w·q·x and Σ w·q² per lane.
#[inline(always)]
fn iq4_sums<V: Lanes>(xt: &[f32], wt: &[f32], id: V) -> (V, V) {
    let lanes = V::L;
    let (mut a, mut b) = (V::splat(0.0), V::splat(0.0));
    for j in 0..32 {
        let (xj, wj) = (V::load(&xt[j * lanes..]), V::load(&wt[j * lanes..]));
        let q = iq4_value(id.mul(xj));
        a = a.add(wj.mul(q).mul(xj));
        b = b.add(wj.mul(q).mul(q));
    }
    (a, b)
}

#[inline(always)]
fn iq4_lockstep<V: Lanes>(x: &[f32], weight: &[f32], out: &mut [f32]) {
    const N: usize = 32;
    let lanes = V::L;
    let v0 = IQ4NL_VALUES[0];
    let (mut xt, mut wt) = ([0f32; N_MAX * 16], [0f32; N_MAX * 16]);
    transpose(x, N, lanes, &mut xt);
    transpose(weight, N, lanes, &mut wt);
    let (max, amax) = signed_absmax::<V>(&xt, N);
    let zero = V::splat(0.0);
    let d0 = zero.sub(max).div(V::splat(v0 as f32));
    let (sqx, sq2) = iq4_sums(&xt, &wt, V::splat(1.0).div(d0));
    let mut d = V::if_nonzero(V::lt_mask(zero, sq2), sqx.div(sq2), zero);
    let mut best = d.mul(sqx);
    for itry in -7i32..=7 {
        let id = V::splat((itry + v0 as i32) as f32).div(max);
        let (sqx, sq2) = iq4_sums(&xt, &wt, id);
        let win = V::lt_mask(zero, sq2).and(V::lt_mask(best.mul(sq2), sqx.mul(sqx)));
        let dn = sqx.div(sq2);
        d = V::if_nonzero(win, dn, d);
        best = V::if_nonzero(win, dn.mul(sqx), best);
    }
    // ggml's early exit for a (near-)zero block
    let d = V::if_lt(amax, V::splat(GROUP_MAX_EPS), zero, d);
    let mut o = [0f32; 16];
    d.store(&mut o);
    out[..lanes].copy_from_slice(&o[..lanes]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{cpu_level, Portable};

    /// Deterministic pseudo-random f32 in [-1, 1).
    fn rng(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Blocks of `n` values: random at several magnitudes, heavy-tailed, all-equal, zeros with
    /// one outlier, tiny and denormal values, values near f32's limit, repeated ties, one sign.
    fn blocks(n: usize) -> Vec<Vec<f32>> {
        let mut s = 0x5eed_u64;
        let mut out = Vec::new();
        for scale in [1e-3f32, 0.02, 1.0, 37.0, 3e4] {
            for _ in 0..300 {
                out.push((0..n).map(|_| rng(&mut s) * scale).collect());
                out.push(
                    (0..n)
                        .map(|_| {
                            let u = rng(&mut s);
                            u * u * u * scale * 8.0
                        })
                        .collect(),
                );
                out.push((0..n).map(|_| rng(&mut s).abs() * scale).collect());
                out.push((0..n).map(|_| -rng(&mut s).abs() * scale).collect());
            }
        }
        let mut one = vec![0f32; n];
        one[n / 3] = 2.5;
        out.push(one);
        out.push(vec![0.0; n]);
        out.push(vec![0.75; n]);
        out.push(vec![-0.75; n]);
        out.push(vec![1e-40; n]);
        out.push(
            (0..n)
                .map(|i| if i % 2 == 0 { 1e-38 } else { -3e-39 })
                .collect(),
        );
        out.push((0..n).map(|i| (i as f32 - 7.5) * 1e37).collect());
        out.push((0..n).map(|i| ((i % 5) as f32 - 2.0) * 0.5).collect());
        out.push((0..n).map(|i| (i % 3) as f32 * 0.125).collect());
        out.push((0..n).map(|i| if i == 0 { -0.0 } else { 0.0 }).collect());
        out
    }

    fn levels() -> Vec<Level> {
        let mut v = vec![Level::Base];
        if matches!(cpu_level(), Level::Avx2 | Level::Avx512) {
            v.push(Level::Avx2);
        }
        if cpu_level() == Level::Avx512 {
            v.push(Level::Avx512);
        }
        v
    }

    #[test]
    fn qx_lanes_equal_the_scalar_search() {
        for lv in levels() {
            for n in [16, 32] {
                for (bi, x) in blocks(n).iter().enumerate() {
                    let w: Vec<f32> = x.iter().map(|v| v.abs() + 0.5).collect();
                    for nmax in [4, 8, 16, 32] {
                        for qw in [None, Some(w.as_slice())] {
                            let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
                            let sa = make_qx_quants_ref(x, nmax, &mut a, qw);
                            let sb = qx_quants_at(lv, x, nmax, &mut b, qw);
                            assert_eq!(
                                (sa.to_bits(), &a),
                                (sb.to_bits(), &b),
                                "{lv:?} block {bi} nmax {nmax}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn qkx2_lockstep_equals_the_scalar_search() {
        let cases = [
            (16, 3, -0.5, 0.1, 15, true),
            (32, 15, -1.0, 0.1, 20, false),
            (32, 31, -0.5, 0.1, 15, false),
            (16, 3, -0.9, 0.05, 36, false),
            (32, 15, -0.9, 0.05, 36, false),
            (32, 31, -0.9, 0.05, 0, false),
        ];
        for lv in levels() {
            for &(n, nmax, rmin, rdelta, nstep, mad) in &cases {
                for (bi, x) in runs(n).iter().enumerate() {
                    let c = x.len() / n;
                    let mut s = bi as u64;
                    let w: Vec<f32> = x.iter().map(|v| v.abs() + rng(&mut s).abs()).collect();
                    let (mut a, mut b) = (vec![0u8; x.len()], vec![0u8; x.len()]);
                    let (mut ra, mut rb) = (vec![(0f32, 0f32); c], vec![(0f32, 0f32); c]);
                    qkx2_many_ref(x, &w, n, nmax, &mut a, &mut ra, rmin, rdelta, nstep, mad);
                    qkx2_many_at(
                        lv, x, &w, n, nmax, &mut b, &mut rb, rmin, rdelta, nstep, mad,
                    );
                    let bits = |r: &[(f32, f32)]| {
                        r.iter()
                            .map(|p| (p.0.to_bits(), p.1.to_bits()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        (bits(&ra), &a),
                        (bits(&rb), &b),
                        "{lv:?} run {bi} nmax {nmax} nstep {nstep}"
                    );
                }
            }
        }
    }

    /// Sub-blocks in runs of 24 (16 + 8 lanes) and of 7 (fewer than any lane set).
    fn runs(n: usize) -> Vec<Vec<f32>> {
        let all = blocks(n);
        all.chunks(24)
            .chain(all.chunks(7).take(40))
            .map(|r| r.concat())
            .collect()
    }

    #[test]
    fn qx_lockstep_equals_the_scalar_search() {
        for lv in levels() {
            for n in [16, 32] {
                for (bi, x) in runs(n).iter().enumerate() {
                    let mut s = bi as u64;
                    let w: Vec<f32> = x.iter().map(|v| v.abs() + rng(&mut s).abs()).collect();
                    let c = x.len() / n;
                    for nmax in [4, 32] {
                        for qw in [None, Some(w.as_slice())] {
                            let (mut a, mut b) = (vec![0i8; x.len()], vec![0i8; x.len()]);
                            let (mut ra, mut rb) = (vec![0f32; c], vec![0f32; c]);
                            qx_many_ref(x, n, nmax, &mut a, &mut ra, qw);
                            qx_many_at(lv, x, n, nmax, &mut b, &mut rb, qw);
                            let bits =
                                |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                (bits(&ra), &a),
                                (bits(&rb), &b),
                                "{lv:?} run {bi} nmax {nmax}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q3_lockstep_equals_the_scalar_search() {
        // runs of 24 and 7 sub-blocks, and of 32 and 56 (two full AVX-512 sets side by side)
        let all = blocks(16);
        let mut cases = runs(16);
        cases.extend(all.chunks(32).map(|r| r.concat()));
        cases.extend(all.chunks(56).take(20).map(|r| r.concat()));
        for lv in levels() {
            for (bi, x) in cases.iter().enumerate() {
                let c = x.len() / 16;
                let (mut a, mut b) = (vec![0i8; x.len()], vec![0i8; x.len()]);
                let (mut ra, mut rb) = (vec![0f32; c], vec![0f32; c]);
                q3_many_ref(x, 16, 4, &mut a, &mut ra);
                q3_many_at(lv, x, 16, 4, &mut b, &mut rb);
                let bits = |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!((bits(&ra), &a), (bits(&rb), &b), "{lv:?} run {bi}");
            }
        }
    }

    #[test]
    fn iq4_lockstep_equals_the_scalar_search() {
        for lv in levels() {
            for (bi, x) in runs(32).iter().enumerate() {
                let mut s = bi as u64;
                let w: Vec<f32> = x.iter().map(|v| v * v + rng(&mut s).abs()).collect();
                let c = x.len() / 32;
                let (mut ra, mut rb) = (vec![0f32; c], vec![0f32; c]);
                iq4_scale_many_ref(x, &w, &mut ra);
                iq4_scale_many_at(lv, x, &w, &mut rb);
                let bits = |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&ra), bits(&rb), "{lv:?} run {bi}");
            }
        }
    }

    #[test]
    fn iq4_lanes_equal_the_scalar_search() {
        for lv in levels() {
            for (bi, x) in blocks(32).iter().enumerate() {
                let w: Vec<f32> = x.iter().map(|v| v * v).collect();
                let a = iq4_block_scale_ref(x, &w);
                let b = iq4_scale_at(lv, x, &w);
                assert_eq!(a.to_bits(), b.to_bits(), "{lv:?} block {bi}");
            }
        }
    }

    /// The branch-free grid lookup equals ggml's binary search everywhere, ties included.
    #[test]
    fn iq4_grid_value_equals_the_binary_search() {
        let mut xs: Vec<f32> = (-140 * 8..=140 * 8).map(|i| i as f32 / 8.0).collect();
        for w in IQ4NL_VALUES.windows(2) {
            let mid = (w[0] as f32 + w[1] as f32) / 2.0;
            xs.extend([
                mid,
                f32::from_bits(mid.to_bits() + 1),
                f32::from_bits(mid.to_bits() - 1),
            ]);
        }
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            0.0,
            -0.0,
            1e-30,
        ]);
        for x in xs {
            let want = IQ4NL_VALUES[crate::ggml::iq4::best_index(&IQ4NL_VALUES, x)] as f32;
            assert_eq!(iq4_value(Portable::splat(x)).0[0], want, "{x}");
        }
    }
}
