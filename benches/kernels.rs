//! Block quantizers alone, one thread: values per second for every GGUF type we write, with and
//! without importance weights, at the vector level `QS_SIMD` selects (see
//! crates/numeric/src/ggml/lanes.rs). Run it once per level to compare them:
//!
//!   for l in scalar base avx2 avx512; do QS_SIMD=$l cargo run --release --example kernels; done
//!
//! Input: 16 Mi weight-like values (`synth::weights_like`) in rows of 4096; each type is timed over the same
//! input, best of three. The last column is learned rounding's importance-weighted search
//! (`CodeGrid::fit_weighted`: `--method signround --iters 0`, its start, and each refit during
//! tuning), for the types with a code grid.

use qs_numeric::ggml::{self, GgmlType};
use qs_numeric::simd as lanes;
use std::time::Instant;

/// Values per row (a 7B's hidden size).
const ROW: usize = 4096;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 24);
    let x = qs_numeric::synth::weights_like(n, 1);
    let qw: Vec<f32> = (0..n)
        .map(|i| 0.5 + ((i * 7919) % 101) as f32 / 50.0)
        .collect();
    println!("level {:?}, {n} values, 1 thread", lanes::level());
    println!("| type | M values/s | with imatrix, M values/s | weighted search, M values/s |");
    println!("|---|---|---|---|");
    for ty in GgmlType::quantized_types() {
        let mut y = vec![0u8; ty.row_bytes(n)];
        let time = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let rb = ty.row_bytes(ROW);
        let plain = time(&mut || {
            for (xr, yr) in x.chunks_exact(ROW).zip(y.chunks_exact_mut(rb)) {
                ggml::quantize_row(ty, xr, yr)
            }
        });
        let weighted = time(&mut || {
            for ((xr, wr), yr) in x
                .chunks_exact(ROW)
                .zip(qw.chunks_exact(ROW))
                .zip(y.chunks_exact_mut(rb))
            {
                ggml::quantize_row_weighted(ty, xr, wr, yr)
            }
        });
        let search = ty.grid().map(|g| {
            let (block, group) = (ty.block().0, g.group());
            let mut ps = vec![(qs_numeric::rtn::QParams::default(), 0f32); block / group];
            time(&mut || {
                for (xb, wb) in x.chunks_exact(block).zip(qw.chunks_exact(block)) {
                    g.fit_weighted(xb, wb, None, &mut ps);
                }
            })
        });
        println!(
            "| {ty} | {:.1} | {:.1} | {} |",
            n as f64 / plain / 1e6,
            n as f64 / weighted / 1e6,
            search.map_or("—".into(), |t| format!("{:.1}", n as f64 / t / 1e6))
        );
    }
}
