//! Quantization as a CI step: quality gates and their exit code, machine-readable output,
//! batch manifests, shards.

use crate::util::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The SQNRs of the lossy tensors in a JSON report, by name.
fn sqnrs(report: &serde_json::Value) -> Vec<(String, f64)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["tensor"].as_str()?.to_string(),
                r["error"]["sqnr_db"].as_f64()?,
            ))
        })
        .collect()
}

/// A violated gate writes the output and the report, lists exactly the tensors beyond the
/// limit (taken from an ungated run's report), and exits 3; a met gate exits 0; `verify` gates
/// the same way; a model gate without an evaluation text is a usage error (2).
#[test]
fn gates_fail_with_exit_code_3_and_name_what_failed() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let base = d.path().join("base.gguf");
    let r = quantize(&[s(&fx), "--to", "q4_0", "-o", s(&base), "--json"]);
    r.ok();
    let plain: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut v = sqnrs(&plain);
    v.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert!(v.len() > 4);
    // a limit between the third and fourth worst tensor
    let limit = (v[2].1 + v[3].1) / 2.0;
    let (out, rep) = (d.path().join("g.gguf"), d.path().join("g.json"));
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_0",
        "-o",
        s(&out),
        "--report",
        s(&rep),
        "--min-sqnr",
        &limit.to_string(),
        "--max-rel-error",
        "total:1",
        "-q",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(out.exists(), "a violated gate still writes the output");
    assert!(
        r.stderr
            .starts_with("error: quality gates failed: 3 violations\n"),
        "{}",
        r.stderr
    );
    for (name, _) in &v[..3] {
        assert!(
            r.stderr.contains(&format!("min-sqnr {name}: ")),
            "{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains(&v[3].0), "{}", r.stderr);
    let rep = read_json(&rep);
    assert_eq!(rep["gates"]["passed"], false);
    let failed: Vec<&str> = rep["gates"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(failed, [v[0].0.as_str(), &v[1].0, &v[2].0]);
    assert_eq!(rep["gates"]["checked"].as_array().unwrap().len(), 2);
    // the total's relative error is 10^(-SQNR/20) of the pooled SQNR
    let total = plain["totals"]["error"]["sqnr_db"].as_f64().unwrap();
    let rel = 10f64.powf(-total / 20.0);
    for (lim, code) in [(rel * 1.01, 0), (rel * 0.99, 3)] {
        let r = quantize(&[
            s(&fx),
            "--to",
            "q4_0",
            "-o",
            s(&out),
            "--force",
            "-q",
            "--max-rel-error",
            &format!("total:{lim}"),
        ]);
        assert_eq!(r.code, code, "{r:?}");
    }
    // verify: the same gates on what is on disk
    let r = quantize(&["verify", s(&fx), s(&base), "--min-sqnr", "total:99", "-q"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("min-sqnr total: "), "{}", r.stderr);
    quantize(&["verify", s(&fx), s(&base), "--min-sqnr", "total:1", "-q"]).ok();
    // a model gate needs a text to evaluate on: refused before any work
    let never = d.path().join("never.gguf");
    let r = quantize(&[s(&fx), "--to", "q4_0", "-o", s(&never), "--max-kld", "0.1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--eval-text"), "{}", r.stderr);
    assert!(!never.exists());
}

/// `--eval-text`: the output is evaluated against the input after the conversion; the report
/// holds the same figures `quantize eval` prints, and the model gates read them.
#[test]
fn model_gates_evaluate_the_output_against_the_input() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/formats/data/calib-default.txt");
    let out = d.path().join("e.gguf");
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_0",
        "-o",
        s(&out),
        "--eval-text",
        s(&text),
        "--eval-chunks",
        "2",
        "--max-kld",
        "1e-9",
        "--max-ppl-increase",
        "1000%",
        "--json",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ev = quantize(&[
        "eval",
        s(&out),
        "--against",
        s(&fx),
        "--text",
        s(&text),
        "--chunks",
        "2",
        "--json",
    ]);
    ev.ok();
    let ev: serde_json::Value = serde_json::from_str(&ev.stdout).unwrap();
    for k in [
        "ppl",
        "ppl_against",
        "kld_mean",
        "top1_agreement",
        "tokens_scored",
    ] {
        assert_eq!(rep["eval"][k], ev[k], "{k}");
    }
    let v = rep["gates"]["violations"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["gate"], "max-kld");
    assert_eq!(v[0]["value"], ev["kld_mean"]);
}
