//! The fuzz smoke run, on stable: every target over its committed seeds (`fuzz/corpus/NAME/`),
//! the reproducers of past findings (`fuzz/artifacts/NAME/repro-*`, each once a crash), and a
//! fixed number of seeded mutations of each seed (byte flips, boundary values, inserted and
//! removed runs, spliced seeds). Deterministic: the same inputs on every run. The coverage-guided
//! runs are `fuzz/run.sh` (nightly, libFuzzer); this keeps what they found fixed in every CI run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutations per seed; the planner runs a whole conversion per input, so it gets fewer.
fn mutations(target: &str) -> usize {
    match target {
        "plan" => 30,
        "gguf" | "safetensors_source" | "tokenizer" => 300,
        _ => 2000,
    }
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// xorshift64*: a fixed sequence per target, independent of the machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One libFuzzer-style mutation of `seed` (`other`: another seed to splice from).
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                const EDGE: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
                let i = rng.below(len);
                v[i] = EDGE[rng.below(EDGE.len())];
            }
            2 if len >= 8 => {
                // a little-endian u64 or u32 set to a boundary value (lengths, counts, shapes)
                const BIG: [u64; 6] = [0, 1, u32::MAX as u64, 1 << 31, 1 << 62, u64::MAX];
                let i = rng.below(len - 7);
                let w = BIG[rng.below(BIG.len())].to_le_bytes();
                let n = if rng.below(2) == 0 { 8 } else { 4 };
                v[i..i + n].copy_from_slice(&w[..n]);
            }
            3 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 => {
                let at = rng.below(len + 1);
                let run: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, run);
            }
            _ if !other.is_empty() => {
                let at = rng.below(len + 1);
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(256)).min(other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..to]);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn every_target_survives_its_seeds_reproducers_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    // the targets' own panics are what we look for; keep the output to the summary
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut ran = Vec::new();
    for (k, (name, run)) in qs_fuzz_targets::TARGETS.iter().enumerate() {
        let seeds: Vec<Vec<u8>> = files(&root.join("corpus").join(name), "")
            .iter()
            .map(|p| std::fs::read(p).expect("seed"))
            .collect();
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let mut inputs: Vec<(String, Vec<u8>)> =
            files(&root.join("artifacts").join(name), "repro-")
                .into_iter()
                .map(|p| {
                    (
                        p.display().to_string(),
                        std::fs::read(&p).expect("reproducer"),
                    )
                })
                .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k as u64 + 1));
        for (i, s) in seeds.iter().enumerate() {
            inputs.push((format!("{name} seed {i}"), s.clone()));
            let other = &seeds[(i + 1) % seeds.len()];
            for m in 0..mutations(name) {
                inputs.push((
                    format!("{name} seed {i} mutation {m}"),
                    mutate(s, other, &mut rng),
                ));
            }
        }
        for (what, data) in &inputs {
            if catch_unwind(AssertUnwindSafe(|| run(data))).is_err() {
                failures.push(what.clone());
            }
        }
        ran.push(format!("{name}: {}", inputs.len()));
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz replay: {}", ran.join(", "));
    assert!(
        failures.is_empty(),
        "targets panicked on: {failures:?} (rerun one with fuzz/run.sh or `cargo fuzz run TARGET FILE`)"
    );
}
