//! The forward pass against the independent numpy reference (tests/oracle/ref_forward.py, f64)
//! on the fixture model.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("QS_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = std::env::var_os("QS_CACHE")
        .map(PathBuf::from)
        .unwrap_or(home.join(".cache/quantsmith"))
        .join("venv/bin/python");
    assert!(
        p.exists(),
        "oracle Python not found at {} — run `bash .ci/run` once or set QS_PYTHON",
        p.display()
    );
    p
}

#[test]
fn logits_match_the_numpy_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fx = root.join("fixtures/tiny-llama");
    let ids: Vec<u32> = vec![5, 100, 200, 300, 17, 42, 511, 0, 256, 7, 64, 128];
    let d = std::env::temp_dir().join(format!("qs-model-ref-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let out = d.join("ref.f32");
    let o = Command::new(python())
        .arg(root.join("tests/oracle/ref_forward.py"))
        .arg(&fx)
        .arg(&out)
        .args(ids.iter().map(|i| i.to_string()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: Vec<f32> = std::fs::read(&out)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let src = qs_formats::source::ModelSource::open(&fx).unwrap();
    let model = qs_model::Model::new(&src).unwrap();
    let logits = model.logits(&ids).unwrap();
    let vocab = model.cfg.vocab;
    let mut worst = 0f32;
    for t in 0..ids.len() {
        for v in 0..vocab {
            worst = worst.max((logits[(t, v)] - reference[t * vocab + v]).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "f32 forward pass differs from the f64 reference by {worst}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// The KV-cached generation path samples exactly what the full forward pass predicts: re-running
/// each generated prefix through `Model::logits` and drawing with the same generator gives the
/// same tokens (batches of 2 over 3 sequences, so a partial batch is covered too).
#[test]
fn kv_cached_generation_samples_what_the_full_forward_pass_predicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src = qs_formats::source::ModelSource::open(&root.join("fixtures/tiny-llama")).unwrap();
    let model = qs_model::Model::new(&src).unwrap();
    let mut steps = 0;
    // one sequence opens with a given second token, the others with BOS alone
    let prefixes = vec![vec![1], vec![1, 300], vec![1]];
    let seqs = qs_model::generate(&model, &prefixes, 10, 2, 7, &mut |n| steps += n).unwrap();
    assert_eq!(steps, 3 * 9);
    assert_eq!(seqs.len(), 3);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s.len(), 10);
        assert_eq!(s[..prefixes[i].len()], prefixes[i][..]);
        let logits = model.logits(&s[..9]).unwrap();
        let mut rng = qs_model::sequence_rng(7, i);
        for p in prefixes[i].len() - 1..9 {
            let row: Vec<f32> = (0..logits.ncols()).map(|j| logits[(p, j)]).collect();
            assert_eq!(
                qs_model::sample(&row, &mut rng),
                s[p + 1],
                "sequence {i}, position {p}"
            );
        }
    }
    // a different seed writes different text
    let other = qs_model::generate(&model, &prefixes, 10, 3, 8, &mut |_| {}).unwrap();
    assert_ne!(other, seqs);
    // prefixes outside the vocabulary are refused
    assert!(qs_model::generate(&model, &[vec![1, 512]], 10, 1, 7, &mut |_| {}).is_err());
    assert!(qs_model::generate(&model, &[vec![]], 10, 1, 7, &mut |_| {}).is_err());
}
