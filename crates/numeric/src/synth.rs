//! Deterministic synthetic data shaped like real LLM weights, for tests, fixtures and benchmarks.
//!
//! Values are Gaussian with a log-normal scale mixture (heavy tails) and, for matrices, a few
//! outlier input channels a couple of orders of magnitude larger — the shape that breaks naive
//! per-tensor scales.

/// SplitMix64: small, fast, fully deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Heavy-tailed sample: normal scaled by exp(0.5·normal).
    pub fn heavy(&mut self) -> f64 {
        let s = (0.5 * self.normal()).exp();
        self.normal() * s
    }
}

/// A `rows × cols` row-major matrix like a linear layer's weight: std ≈ `std`, heavy tails and
/// outlier input channels (every 61st column ×25, offset by the seed).
pub fn weight_matrix(rows: usize, cols: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let outlier_phase = (seed % 61) as usize;
    let mut v = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        for c in 0..cols {
            let mut x = rng.heavy() * std;
            if c % 61 == outlier_phase {
                x *= 25.0;
            }
            v.push(x as f32);
        }
    }
    v
}

/// A flat vector of `n` weight-like values (one outlier every 61 values).
pub fn weights_like(n: usize, seed: u64) -> Vec<f32> {
    weight_matrix(1, n, 0.02, seed)
}
