//! faer's matrix product, leaving the vector registers clean behind it.
//!
//! faer's AVX-512 kernels return with the upper halves of the vector registers in use (no
//! `vzeroupper`). Until something clears them, every SSE-encoded instruction that thread runs
//! — all of our scalar Rust code at the x86-64 baseline, and the glibc calls it makes — pays a
//! state-transition penalty: on this project's (Sapphire Rapids) machine glibc's `expf` went
//! from 5 ns to 150 ns, and the calibration forward pass spent over half its time in softmax and SiLU
//! because of it. Every faer product in quantsmith goes through [`matmul`], which clears the
//! state on the threads it ran on. Clearing changes no value.

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

/// `dst = alpha·a·b` (or `dst += …` with [`Accum::Add`]), as faer computes it; afterwards the
/// upper register halves are clear on this thread and, for a parallel product, on every thread
/// of the current rayon pool.
pub fn matmul<T: faer::traits::ComplexField>(
    dst: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    par: Par,
) {
    faer_matmul(dst, accum, a, b, alpha, par);
    clear_after(par);
}

/// The lower triangle (diagonal included) of `xᵀ·x` into `dst` (`x.ncols()` square), a
/// symmetric rank-k update: half the flops of the full product. Each value is the one faer's
/// full product computes (the same sum over the rows of `x`, in the same order); the strict
/// upper triangle of `dst` is left as it was.
pub fn gram_lower(dst: MatMut<'_, f32>, x: MatRef<'_, f32>, par: Par) {
    use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
    tri_matmul(
        dst,
        BlockStructure::TriangularLower,
        Accum::Replace,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        1.0f32,
        par,
    );
    clear_after(par);
}

/// [`clear_upper`] where a product with `par` ran: this thread, or the whole pool.
fn clear_after(par: Par) {
    match par {
        Par::Seq => clear_upper(),
        _ => clear_upper_everywhere(),
    }
}

/// Clears the upper halves of the vector registers on this thread (`vzeroupper`; nothing on a
/// CPU without AVX or off x86-64).
#[inline]
pub fn clear_upper() {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx() {
            // SAFETY: the CPU has AVX (checked above)
            unsafe { zeroupper() }
        }
    }
}

/// [`clear_upper`] on every thread of the current rayon pool and on this one.
pub fn clear_upper_everywhere() {
    rayon::broadcast(|_| clear_upper());
    clear_upper();
}

#[cfg(target_arch = "x86_64")]
fn has_avx() -> bool {
    use std::sync::OnceLock;
    static AVX: OnceLock<bool> = OnceLock::new();
    *AVX.get_or_init(|| std::arch::is_x86_feature_detected!("avx"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn zeroupper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// Row-major copy of a matrix ([`rows_into`]).
pub fn rows_of(m: &Mat<f32>) -> Vec<f32> {
    let mut v = vec![0f32; m.nrows() * m.ncols()];
    rows_into(m.as_ref(), &mut v);
    v
}

/// Writes `m`'s values row by row into `out` (`rows × cols` long): blocks of [`TILE`] rows in
/// parallel, each reading a column's [`TILE`] contiguous values at a time.
pub fn rows_into(m: MatRef<'_, f32>, out: &mut [f32]) {
    let (r, c) = (m.nrows(), m.ncols());
    assert_eq!(out.len(), r * c);
    if c == 0 {
        return;
    }
    out.par_chunks_mut(TILE * c)
        .enumerate()
        .for_each(|(b, out)| {
            let i0 = b * TILE;
            for j in 0..c {
                for (k, &x) in m.col(j).subrows(i0, out.len() / c).iter().enumerate() {
                    out[k * c + j] = x;
                }
            }
        });
}

/// Rows or columns per block of [`rows_of`] and [`to_mat`]: a cache line of f32.
const TILE: usize = 16;

/// A matrix from row-major values: blocks of [`TILE`] columns in parallel, each reading a row's
/// [`TILE`] contiguous values at a time.
pub fn to_mat(v: &[f32], rows: usize, cols: usize) -> Mat<f32> {
    assert_eq!(v.len(), rows * cols);
    let mut m = Mat::<f32>::zeros(rows, cols);
    m.as_mut()
        .par_col_chunks_mut(TILE)
        .enumerate()
        .for_each(|(b, mut block)| {
            let j0 = b * TILE;
            for i in 0..rows {
                let row = &v[i * cols + j0..][..block.ncols()];
                for (k, &x) in row.iter().enumerate() {
                    block[(i, k)] = x;
                }
            }
        });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled, parallel copies between row-major values and faer's columns equal the plain
    /// element-by-element copies, on shapes that are not multiples of a tile, and from a view
    /// whose columns are not contiguous with each other.
    #[test]
    fn tiled_copies_equal_the_plain_ones() {
        for (r, c) in [(37, 53), (16, 16), (1, 70), (70, 1), (0, 5), (5, 0)] {
            let v: Vec<f32> = (0..r * c).map(|k| k as f32 * 0.5 - 3.0).collect();
            let want = Mat::from_fn(r, c, |i, j| v[i * c + j]);
            let m = to_mat(&v, r, c);
            assert_eq!(m, want, "{r} × {c}");
            let mut plain = Vec::new();
            for i in 0..r {
                for j in 0..c {
                    plain.push(want[(i, j)]);
                }
            }
            assert_eq!(rows_of(&m), plain, "{r} × {c}");
        }
        let big = Mat::<f32>::from_fn(40, 30, |i, j| (i * 100 + j) as f32);
        let view = big.as_ref().submatrix(3, 5, 33, 19);
        let mut got = vec![0f32; 33 * 19];
        rows_into(view, &mut got);
        let want: Vec<f32> = (0..33)
            .flat_map(|i| (0..19).map(move |j| ((i + 3) * 100 + j + 5) as f32))
            .collect();
        assert_eq!(got, want);
    }
    use faer::Mat;

    #[test]
    fn matmul_is_faers_product() {
        let a = Mat::<f32>::from_fn(37, 19, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Mat::<f32>::from_fn(19, 23, |i, j| ((i * 5 + j) % 13) as f32 * 0.25);
        for par in [Par::Seq, Par::rayon(0)] {
            let mut ours = Mat::<f32>::zeros(37, 23);
            let mut theirs = Mat::<f32>::zeros(37, 23);
            matmul(
                ours.as_mut(),
                Accum::Replace,
                a.as_ref(),
                b.as_ref(),
                1.5,
                par,
            );
            faer_matmul(
                theirs.as_mut(),
                Accum::Replace,
                a.as_ref(),
                b.as_ref(),
                1.5,
                par,
            );
            assert_eq!(ours, theirs);
            let mut lower = Mat::<f32>::from_fn(19, 19, |_, _| -7.0);
            let mut full = Mat::<f32>::zeros(19, 19);
            gram_lower(lower.as_mut(), a.as_ref(), par);
            matmul(
                full.as_mut(),
                Accum::Replace,
                a.transpose(),
                a.as_ref(),
                1.0,
                par,
            );
            for i in 0..19 {
                for j in 0..19 {
                    assert_eq!(lower[(i, j)], if i >= j { full[(i, j)] } else { -7.0 });
                }
            }
            // and by hand: small integers, exact in f32
            for i in 0..37 {
                for j in 0..23 {
                    let s: f32 = (0..19).map(|k| a[(i, k)] * b[(k, j)]).sum();
                    assert_eq!(ours[(i, j)], 1.5 * s);
                }
            }
        }
    }

    /// On calibration-sized inputs (hundreds of columns, thousands of rows, the sizes where
    /// faer blocks and parallelises differently) the lower triangle is bit for bit the full
    /// product's, and the full product is exactly symmetric: the Hessian may be mirrored.
    #[test]
    fn gram_lower_matches_full_product_bits() {
        let mut rng = crate::synth::Rng::new(7);
        for &(rows, cols) in &[(4096usize, 576usize), (1000, 1536), (517, 97), (3, 130)] {
            let x = Mat::<f32>::from_fn(rows, cols, |_, _| rng.normal() as f32);
            for par in [Par::Seq, Par::rayon(0)] {
                let mut lower = Mat::<f32>::zeros(cols, cols);
                let mut full = Mat::<f32>::zeros(cols, cols);
                gram_lower(lower.as_mut(), x.as_ref(), par);
                matmul(
                    full.as_mut(),
                    Accum::Replace,
                    x.transpose(),
                    x.as_ref(),
                    1.0,
                    par,
                );
                for j in 0..cols {
                    for i in j..cols {
                        assert_eq!(
                            lower[(i, j)].to_bits(),
                            full[(i, j)].to_bits(),
                            "{rows}x{cols} ({i},{j})"
                        );
                        assert_eq!(full[(j, i)].to_bits(), full[(i, j)].to_bits());
                    }
                }
            }
        }
    }
}
