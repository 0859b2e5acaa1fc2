//! GPTQ time for one linear layer: Hessian accumulation over calibration tokens, then the
//! column loop (Cholesky factorisations, 128-column blocks, lazy updates), on synthetic weights
//! and correlated inputs, int4 with group 128.
//!
//!   cargo run --release --example gptq_layer -- ROWS COLS TOKENS [THREADS]
//!
//! The weight is ROWS × COLS (out × in); inputs are TOKENS × COLS, fed in batches of 2048 as
//! the calibration pass does. Prints the two timings and the layer-output error vs RTN.

use qs_numeric::gptq::{gptq, GptqConfig, Hessian};
use qs_numeric::synth::{weight_matrix, Rng};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("ROWS COLS TOKENS [THREADS]"))
        .collect();
    let (rows, cols, tokens) = (a[0], a[1], a[2]);
    let threads = a.get(3).copied().unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("pool");
    let w = weight_matrix(rows, cols, 0.02, 1);
    // inputs: 64 latent factors mixed into COLS channels, plus noise
    let mut rng = Rng::new(2);
    let k = 64;
    let mix: Vec<f32> = (0..k * cols).map(|_| rng.normal() as f32).collect();
    let batch = 2048;
    let t0 = Instant::now();
    let mut h = Hessian::new(cols);
    let mut done = 0;
    let mut gen_secs = 0.0;
    while done < tokens {
        let n = batch.min(tokens - done);
        let g0 = Instant::now();
        let mut x = vec![0f32; n * cols];
        for t in 0..n {
            let z: Vec<f32> = (0..k).map(|_| rng.normal() as f32).collect();
            let row = &mut x[t * cols..(t + 1) * cols];
            for (f, zf) in z.iter().enumerate() {
                let m = &mix[f * cols..(f + 1) * cols];
                for (r, mv) in row.iter_mut().zip(m) {
                    *r += zf * mv;
                }
            }
            for r in row.iter_mut() {
                *r += 0.1 * rng.normal() as f32;
            }
        }
        gen_secs += g0.elapsed().as_secs_f64();
        h.add(&x, n);
        done += n;
    }
    let hess = t0.elapsed().as_secs_f64() - gen_secs;
    let cfg = GptqConfig::default();
    let t1 = Instant::now();
    let out = gptq(&w, rows, cols, &h.h, &cfg).expect("gptq");
    let loop_secs = t1.elapsed().as_secs_f64();
    assert!(out.codes.len() == rows * cols);
    println!(
        "{rows}x{cols}, {tokens} tokens, {threads} threads: Hessian {hess:.1} s, GPTQ {loop_secs:.1} s, total {:.1} s (input generation {gen_secs:.1} s not counted)",
        hess + loop_secs
    );
}
