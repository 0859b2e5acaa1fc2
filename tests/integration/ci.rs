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
        "ppl_se",
        "ppl_against",
        "ln_ppl_ratio",
        "ln_ppl_ratio_se",
        "kld_mean",
        "kld_se",
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

/// Every file under `dir` (recursively) with its bytes, by path relative to `dir`.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                let rel = e.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&e).unwrap());
            }
        }
    }
    out
}

/// How many times stage `what` finished in a run's standard error (its closing lines: standard
/// error is no terminal here).
fn stages(err: &str, what: &str) -> usize {
    err.lines()
        .filter(|l| l.starts_with(what) && l.contains(" done in "))
        .count()
}

/// Without the state files (they record times and paths).
fn outputs(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut t = tree(dir);
    t.retain(|k, _| !k.contains("quantsmith-state"));
    t
}

const MANIFEST: &str = r#"
[defaults]
model = "model"
min_sqnr = ["total:15"]

[[job]]
to = "q4_k_m"
output = "out/m-q4_k_m.gguf"

[[job]]
to = "q5_k_m"
output = "out/m-q5_k_m.gguf"
report = "out/m-q5_k_m.md"

[[job]]
name = "int4"
to = "int4"
group = 32
output = "out/m-int4"
min-sqnr = ["total:40"]

[[job]]
name = "q8"
to = "q8_0"
output = "out/m-q8_0.gguf"

[[job]]
name = "missing"
to = "q4_0"
model = "no-such-model"
output = "out/missing.gguf"
"#;

fn summary_of(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn statuses(sum: &serde_json::Value) -> Vec<(String, String, bool)> {
    sum["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["status"].as_str().unwrap().to_string(),
                j["skipped"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A manifest's jobs write what the same single runs write; a failing job does not stop the
/// others (unless --fail-fast); a violated gate is exit 3 only when nothing failed; a second
/// run skips what is up to date and redoes a job whose input or options changed, or all with
/// --force.
#[test]
fn batch_runs_resumes_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture_copy(&root.join("model"));
    let m = root.join("batch.toml");
    std::fs::write(&m, MANIFEST).unwrap();
    let r = quantize(&["batch", s(&m), "--json", "-j", "2"]);
    assert_eq!(r.code, 1, "a job failed: {r:?}");
    let sum = summary_of(&r);
    let st = statuses(&sum);
    let want = |st: &[(String, String, bool)], skipped: [bool; 5]| {
        let names = ["m-q4_k_m.gguf", "m-q5_k_m.gguf", "int4", "q8", "missing"];
        let status = ["done", "done", "gate-failed", "done", "failed"];
        for (i, (n, s, k)) in st.iter().enumerate() {
            assert_eq!(
                (n.as_str(), s.as_str(), *k),
                (names[i], status[i], skipped[i]),
                "{st:?}"
            );
        }
    };
    want(&st, [false; 5]);
    assert!(sum["jobs"][4]["error"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    assert!(sum["jobs"][2]["violations"][0]
        .as_str()
        .unwrap()
        .starts_with("min-sqnr total"));
    assert!(!root.join("out/missing.gguf").exists());
    // the same bytes as single runs with the same options
    let single = root.join("single");
    std::fs::create_dir(&single).unwrap();
    let fx = root.join("model");
    for (args, out) in [
        (vec!["--to", "q4_k_m"], "m-q4_k_m.gguf"),
        (vec!["--to", "q5_k_m"], "m-q5_k_m.gguf"),
        (vec!["--to", "int4", "--group", "32"], "m-int4"),
        (vec!["--to", "q8_0"], "m-q8_0.gguf"),
    ] {
        let o = single.join(out);
        let mut a = vec![s(&fx), "-o", s(&o), "-q"];
        a.extend(args);
        quantize(&a).ok();
    }
    let mut batch_out = outputs(&root.join("out"));
    assert!(
        batch_out.remove("m-q5_k_m.md").is_some(),
        "the job's report"
    );
    assert_eq!(batch_out, tree(&single));

    // again: every finished job is up to date (the failed one runs and fails again)
    let stamp = |p: &str| std::fs::metadata(root.join(p)).unwrap().modified().unwrap();
    let before = stamp("out/m-q4_k_m.gguf");
    let r = quantize(&["batch", s(&m), "--json"]);
    assert_eq!(r.code, 1);
    want(&statuses(&summary_of(&r)), [true, true, true, true, false]);
    assert_eq!(stamp("out/m-q4_k_m.gguf"), before);
    // a removed report, a changed option, a touched input: those jobs run again
    std::fs::remove_file(root.join("out/m-q5_k_m.md")).unwrap();
    std::fs::write(&m, MANIFEST.replace("group = 32", "group = 64")).unwrap();
    let r = quantize(&["batch", s(&m), "--json"]);
    want(
        &statuses(&summary_of(&r)),
        [true, false, false, true, false],
    );
    assert!(root.join("out/m-q5_k_m.md").exists());
    let cfg = root.join("model/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace('{', "{ ")).unwrap();
    let r = quantize(&["batch", s(&m), "--json"]);
    let st = statuses(&summary_of(&r));
    assert!(st[..4].iter().all(|j| !j.2), "{st:?}");
    // --dry-run says what would run; --force redoes everything
    let r = quantize(&["batch", s(&m), "--json", "--dry-run"]);
    assert!(statuses(&summary_of(&r))[..4].iter().all(|j| j.2));
    let r = quantize(&["batch", s(&m), "--json", "--force", "--dry-run"]);
    assert!(
        statuses(&summary_of(&r))[..4]
            .iter()
            .all(|j| j.1 == "would-run"),
        "{r:?}"
    );

    // a job that failed after writing its output (its evaluation text is too short to
    // evaluate) runs again, without --force, once the text is fixed
    let ev = root.join("ev.toml");
    let text = root.join("eval.txt");
    std::fs::write(&text, "too short").unwrap();
    std::fs::write(
        &ev,
        "[[job]]\nmodel = \"model\"\nto = \"q4_0\"\noutput = \"ev/a.gguf\"\neval-text = \"eval.txt\"\n",
    )
    .unwrap();
    let r = quantize(&["batch", s(&ev), "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(root.join("ev/a.gguf").exists());
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/formats/data/calib-default.txt"),
        &text,
    )
    .unwrap();
    let r = quantize(&["batch", s(&ev), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(summary_of(&r)["jobs"][0]["ppl"].as_f64().is_some());

    // --fail-fast: the first failure stops the batch; without failures a gate gives 3
    let ff = root.join("ff.toml");
    std::fs::write(
        &ff,
        "[[job]]\nmodel = \"none\"\nto = \"q4_0\"\noutput = \"ff/a.gguf\"\n\
         [[job]]\nmodel = \"model\"\nto = \"q4_0\"\noutput = \"ff/b.gguf\"\n",
    )
    .unwrap();
    let r = quantize(&["batch", s(&ff), "--json", "--fail-fast"]);
    assert_eq!(r.code, 1);
    let st = statuses(&summary_of(&r));
    assert_eq!((st[0].1.as_str(), st[1].1.as_str()), ("failed", "not-run"));
    assert!(!root.join("ff/b.gguf").exists());
    let g = root.join("g.toml");
    std::fs::write(
        &g,
        "[[job]]\nmodel = \"model\"\nto = \"q4_0\"\noutput = \"g/a.gguf\"\nmin-sqnr = [\"total:60\"]\n",
    )
    .unwrap();
    let r = quantize(&["batch", s(&g), "-q"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("a.gguf: min-sqnr total"), "{}", r.stderr);
}

/// Manifest mistakes are one-line errors before any job runs, naming the job.
#[test]
fn bad_manifests_are_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.toml");
    for (text, code, must) in [
        ("[[job]]\nmodel = \"x\"\nto = \"q4_0\"\n", 2, "no 'output'"),
        ("[[job]]\nmodel = \"x\"\nto = \"q4_0\"\noutput = \"a.gguf\"\nreport = \"r.md\"\n[[job]]\nmodel = \"x\"\nto = \"q8_0\"\noutput = \"b.gguf\"\nreport = \"r.md\"\n", 1, "both write"),
        ("[[job]]\nmodel = \"x\"\nto = \"q9\"\noutput = \"o.gguf\"\n", 2, "job 0"),
        ("[[job]]\nmodel = \"x\"\nto = \"q4_0\"\noutput = \"o.gguf\"\nthreads = 2\n", 2, "option of the batch"),
        ("[[job]]\nmodel = \"x\"\nto = \"q4_0\"\noutput = \"o.gguf\"\nfrobnicate = 1\n", 2, "frobnicate"),
        ("[[job]]\nmodel = \"x\"\nto = \"q4_0\"\noutput = \"o.gguf\"\n[[job]]\nmodel = \"y\"\nto = \"q8_0\"\noutput = \"o.gguf\"\n", 1, "same output"),
        ("[job]\nmodel = 1\n", 1, "[[job]]"),
        ("jobs = 3\n", 1, "unknown top-level key 'jobs'"),
        ("[[job]\n", 1, "m.toml"),
    ] {
        std::fs::write(&m, text).unwrap();
        let r = quantize(&["batch", s(&m)]);
        assert_eq!(r.code, code, "{text}: {r:?}");
        let msg = r.stderr.trim();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(msg.contains(must), "{must}: {msg}");
    }
}

/// N shard processes, run one after another here as they would on N machines, write exactly
/// what one unsharded batch writes, each job once; their summaries merge into one.
#[test]
fn batch_shards_are_disjoint_and_equal_one_run() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture_copy(&root.join("model"));
    let manifest = MANIFEST.replace(
        "[[job]]\nname = \"missing\"\nto = \"q4_0\"\nmodel = \"no-such-model\"\noutput = \"out/missing.gguf\"\n",
        "[[job]]\nto = \"q6_k\"\noutput = \"out/m-q6_k.gguf\"\n[[job]]\nto = \"fp8\"\noutput = \"out/m-fp8\"\n",
    );
    assert_ne!(manifest, MANIFEST);
    std::fs::write(root.join("all.toml"), &manifest).unwrap();
    let r = quantize(&["batch", s(&root.join("all.toml")), "-q"]);
    assert_eq!(r.code, 3, "{r:?}");
    let whole = outputs(&root.join("out"));
    // 4 GGUFs, a report, two folders of 5 files
    assert_eq!(whole.len(), 15, "{:?}", whole.keys());
    std::fs::rename(root.join("out"), root.join("whole")).unwrap();
    let n = 3;
    let mut sums = vec![];
    let mut ran = 0;
    for i in 0..n {
        let sp = root.join(format!("s{i}.json"));
        let r = quantize(&[
            "batch",
            s(&root.join("all.toml")),
            "--shard",
            &format!("{i}/{n}"),
            "--summary",
            s(&sp),
            "-q",
        ]);
        assert!(r.code == 0 || r.code == 3, "{r:?}");
        let sum = read_json(&sp);
        assert_eq!(sum["shard"], format!("{i}/{n}"));
        let k = sum["jobs"].as_array().unwrap().len();
        assert!(k >= 1, "every shard has work: {sum}");
        ran += k;
        sums.push(sp);
    }
    assert_eq!(ran, 6);
    assert_eq!(outputs(&root.join("out")), whole);
    let mut args = vec!["batch", "--json", "--merge-summaries"];
    args.extend(sums.iter().map(|p| s(p)));
    let r = quantize(&args);
    assert_eq!(r.code, 3, "the merged batch has the gate failure: {r:?}");
    let merged = summary_of(&r);
    let idx: Vec<u64> = merged["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [0, 1, 2, 3, 4, 5]);
    assert_eq!(merged["counts"]["gate_failed"], 1);
    // the same summary twice, or one missing, is refused
    let r = quantize(&[
        "batch",
        "--merge-summaries",
        s(&sums[0]),
        s(&sums[0]),
        s(&sums[1]),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("shard 0/3 is in two summaries"),
        "{}",
        r.stderr
    );
    let r = quantize(&["batch", "--merge-summaries", s(&sums[0]), s(&sums[2])]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("shard 1/3 is missing"), "{}", r.stderr);
}

/// `--shard i/N` on one model with --split-max-size: each process writes its slice of the
/// split files; together they are byte for byte the unsharded split set.
#[test]
fn split_files_written_by_shards_equal_one_run() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let whole = d.path().join("whole");
    let parts = d.path().join("parts");
    std::fs::create_dir_all(&whole).unwrap();
    std::fs::create_dir_all(&parts).unwrap();
    let args = |dir: &Path| {
        vec![
            s(&fx).to_string(),
            "--to".into(),
            "q4_k_m".into(),
            "-o".into(),
            s(&dir.join("m.gguf")).to_string(),
            "--split-max-size".into(),
            "300K".into(),
            "-q".into(),
        ]
    };
    quantize(&args(&whole)).ok();
    let want = tree(&whole);
    assert!(want.len() >= 3, "{:?}", want.keys());
    for i in 0..2 {
        let mut a = args(&parts);
        a.extend(["--shard".into(), format!("{i}/2"), "--json".into()]);
        let r = quantize(&a);
        r.ok();
        let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert!(!rep["rows"].as_array().unwrap().is_empty());
    }
    assert_eq!(tree(&parts), want);
    // a shard of something that is not a split GGUF is refused
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_0",
        "-o",
        s(&d.path().join("x.gguf")),
        "--shard",
        "0/2",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--split-max-size"), "{}", r.stderr);
}

/// Jobs of one model share its calibration tokens: the model writes its calibration text once
/// for the whole manifest, and every output is what its single run writes.
#[test]
fn batch_jobs_of_one_model_share_their_calibration_text() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture_copy(&root.join("model"));
    let m = root.join("m.toml");
    std::fs::write(
        &m,
        "[defaults]\nmodel = \"model\"\nmethod = \"gptq\"\ncalib-samples = 4\ncalib-seq-len = 64\n\
         [[job]]\nto = \"int4\"\ngroup = 32\noutput = \"out/int4\"\n\
         [[job]]\nto = \"q4_0\"\noutput = \"out/q4_0.gguf\"\n\
         [[job]]\nto = \"q8_0\"\noutput = \"out/q8_0.gguf\"\n",
    )
    .unwrap();
    let r = quantize(&["batch", s(&m)]);
    r.ok();
    let writes = stages(&r.stderr, "the model writes its calibration text");
    assert_eq!(writes, 1, "{}", r.stderr);
    let layers = stages(&r.stderr, "calibration (layers)");
    assert_eq!(layers, 3, "each job calibrates: {}", r.stderr);
    let single = root.join("single");
    std::fs::create_dir(&single).unwrap();
    let mut single_writes = 0;
    for (args, out) in [
        (vec!["--to", "int4", "--group", "32"], "int4"),
        (vec!["--to", "q4_0"], "q4_0.gguf"),
        (vec!["--to", "q8_0"], "q8_0.gguf"),
    ] {
        let o = single.join(out);
        let fx = root.join("model");
        let mut a = vec![
            s(&fx),
            "-o",
            s(&o),
            "--method",
            "gptq",
            "--calib-samples",
            "4",
            "--calib-seq-len",
            "64",
        ];
        a.extend(args);
        let r = quantize(&a);
        r.ok();
        single_writes += stages(&r.stderr, "the model writes its calibration text");
    }
    assert_eq!(
        writes * 3,
        single_writes,
        "written once, not per job: {}",
        r.stderr
    );
    assert_eq!(outputs(&root.join("out")), tree(&single));
}

/// Calibrated jobs of one model with `--calib-inputs float` and the same calibration tokens
/// share one pass over the layers (layer inputs and GPTQ Hessians computed once): int4, Q4_K_M
/// and Q5_K_M with GPTQ and int4 with AWQ run the model's layers once. Each output
/// equals the job run alone, and float inputs are not the default's quantized ones.
#[test]
fn batch_jobs_with_float_inputs_share_one_pass_over_the_layers() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture_copy(&root.join("model"));
    let m = root.join("m.toml");
    std::fs::write(
        &m,
        "[defaults]\nmodel = \"model\"\nmethod = \"gptq\"\ncalib-samples = 4\ncalib-seq-len = 64\n\
         calib-inputs = \"float\"\n\
         [[job]]\nto = \"int4\"\ngroup = 32\noutput = \"out/int4\"\nreport = \"out/int4.json\"\n\
         [[job]]\nto = \"q8_0\"\noutput = \"out/q8_0.gguf\"\nmethod = \"rtn\"\n\
         [[job]]\nto = \"q4_k_m\"\noutput = \"out/q4_k_m.gguf\"\n\
         [[job]]\nto = \"q5_k_m\"\noutput = \"out/q5_k_m.gguf\"\n\
         [[job]]\nto = \"int4\"\ngroup = 32\nasym = true\nmethod = \"awq\"\noutput = \"out/awq\"\n",
    )
    .unwrap();
    let r = quantize(&["batch", s(&m)]);
    r.ok();
    assert_eq!(
        stages(&r.stderr, "calibration (layers)"),
        1,
        "one pass for four jobs: {}",
        r.stderr
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("out/int4.json")).unwrap())
            .unwrap();
    assert_eq!(rep["calibration"]["pass_jobs"], 4, "{rep}");
    assert_eq!(rep["calibration"]["inputs"], "float", "{rep}");
    std::fs::remove_file(root.join("out/int4.json")).unwrap();
    let single = root.join("single");
    std::fs::create_dir(&single).unwrap();
    let fx = root.join("model");
    let run = |args: &[&str], out: &Path, inputs: &str| {
        let mut a = vec![
            s(&fx),
            "-o",
            s(out),
            "--calib-samples",
            "4",
            "--calib-seq-len",
            "64",
            "--calib-inputs",
            inputs,
        ];
        a.extend(args);
        let r = quantize(&a);
        r.ok();
        r
    };
    for (args, out) in [
        (
            &["--to", "int4", "--group", "32", "--method", "gptq"][..],
            "int4",
        ),
        (&["--to", "q8_0"][..], "q8_0.gguf"),
        (&["--to", "q4_k_m", "--method", "gptq"][..], "q4_k_m.gguf"),
        (&["--to", "q5_k_m", "--method", "gptq"][..], "q5_k_m.gguf"),
        (
            &["--to", "int4", "--group", "32", "--asym", "--method", "awq"][..],
            "awq",
        ),
    ] {
        let r = run(args, &single.join(out), "float");
        assert_eq!(
            stages(&r.stderr, "calibration (layers)"),
            usize::from(out != "q8_0.gguf")
        );
    }
    assert_eq!(outputs(&root.join("out")), tree(&single));
    // the default feeds each layer the quantized layers' outputs: other codes
    let q = root.join("quantized.gguf");
    run(&["--to", "q4_k_m", "--method", "gptq"], &q, "quantized");
    assert_ne!(
        std::fs::read(&q).unwrap(),
        std::fs::read(single.join("q4_k_m.gguf")).unwrap()
    );
}

/// `--imatrix-from TEXT` computes the importance matrix once per model and text in a batch and
/// reuses it; each output equals a run given the file `quantize imatrix` writes from that text
/// (whose figures are checked against llama-imatrix in `llama::imatrix_matches_llama_imatrix`).
#[test]
fn batch_jobs_of_one_model_share_one_importance_matrix() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture_copy(&root.join("model"));
    // about 5,000 words of varied text: several chunks of 512 tokens
    let words = [
        "the", "model", "reads", "every", "layer", "in", "order", "while", "numbers", "flow",
        "through", "small", "matrices", "and", "quiet", "rivers", "carry", "old", "stones",
    ];
    let mut text = String::new();
    let mut x: u64 = 7;
    for i in 0..5000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(words[(x >> 33) as usize % words.len()]);
        text.push(if i % 13 == 12 { '.' } else { ' ' });
    }
    std::fs::write(root.join("calib.txt"), &text).unwrap();
    let m = root.join("m.toml");
    std::fs::write(
        &m,
        "[defaults]\nmodel = \"model\"\nimatrix-from = \"calib.txt\"\n\
         [[job]]\nto = \"q4_k_m\"\noutput = \"out/q4_k_m.gguf\"\nreport = \"out/q4_k_m.json\"\n\
         [[job]]\nto = \"q5_k_m\"\noutput = \"out/q5_k_m.gguf\"\nreport = \"out/q5_k_m.json\"\n",
    )
    .unwrap();
    quantize(&["batch", s(&m), "-q"]).ok();
    let im = |n: &str| read_json(&root.join("out").join(n))["imatrix"].clone();
    let (a, b) = (im("q4_k_m.json"), im("q5_k_m.json"));
    assert_eq!(a["source"], "computed", "{a}");
    assert_eq!(a["shared"], false, "{a}");
    assert_eq!(b["shared"], true, "computed once, then reused: {b}");
    assert!(a["chunks"].as_u64().unwrap() >= 2, "{a}");
    // the same bytes as runs given the file `quantize imatrix` writes
    let file = root.join("im.gguf");
    quantize(&[
        "imatrix",
        s(&root.join("model")),
        "--calib",
        s(&root.join("calib.txt")),
        "-o",
        s(&file),
        "-q",
    ])
    .ok();
    for t in ["q4_k_m", "q5_k_m"] {
        let o = root.join(format!("{t}.gguf"));
        let plain = root.join(format!("{t}-plain.gguf"));
        quantize(&[
            s(&root.join("model")),
            "--to",
            t,
            "--imatrix",
            s(&file),
            "-o",
            s(&o),
            "-q",
        ])
        .ok();
        quantize(&[s(&root.join("model")), "--to", t, "-o", s(&plain), "-q"]).ok();
        // gguf-py reads both: every tensor (type and bytes) and key equal but the one naming
        // the matrix's file (the text here, `im.gguf` there)
        let got = root.join("out").join(format!("{t}.gguf"));
        let script = r#"
import sys, gguf
def read(p):
    r = gguf.GGUFReader(p)
    kv = {k: (f.types, bytes(f.parts[-1].tobytes())) for k, f in r.fields.items()
          if not k.startswith("GGUF.")}
    t = {x.name: (x.tensor_type, bytes(x.data.tobytes())) for x in r.tensors}
    return kv, t
(ka, ta), (kb, tb), (_, tp) = read(sys.argv[1]), read(sys.argv[2]), read(sys.argv[3])
assert ta == tb, "tensors differ"
assert ta != tp, "the matrix changed nothing"
diff = sorted(k for k in ka.keys() | kb.keys() if ka.get(k) != kb.get(k))
assert diff == ["quantize.imatrix.file"], diff
print(bytes(ka["quantize.imatrix.file"][1]).decode())
"#;
        let out = std::process::Command::new(python())
            .args(["-c", script])
            .args([&got, &o, &plain])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("calib.txt"),
            "{t}: the file key names the text"
        );
    }
    // one flag or the other; GGUF only
    let r = quantize(&[
        s(&root.join("model")),
        "--to",
        "q4_k_m",
        "--imatrix",
        s(&file),
        "--imatrix-from",
        s(&root.join("calib.txt")),
        "-o",
        s(&root.join("x.gguf")),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = quantize(&[
        s(&root.join("model")),
        "--to",
        "int4",
        "--imatrix-from",
        s(&root.join("calib.txt")),
        "-o",
        s(&root.join("x")),
    ]);
    // a usage error, refused before any work, as --imatrix is on a safetensors output
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("apply to GGUF outputs"), "{}", r.stderr);
    assert!(!root.join("x").exists());
}

/// The predicted error a size target weighs each tensor by, recomputed by numpy from gguf-py's
/// Q8_0 codec (tests/oracle/alloc_errors.py): linears weighted by the importance matrix, the
/// output head (its own, or a tied embedding table) by the final norm's gains squared, a table
/// only looked up per row.
#[test]
fn size_target_errors_match_an_independent_computation() {
    let d = tempfile::tempdir().unwrap();
    let tied = d.path().join("tied");
    tied_fixture(&tied);
    for (model, is_tied) in [(fixture(), "0"), (tied, "1")] {
        let im = d.path().join(format!("im{is_tied}.gguf"));
        quantize(&["imatrix", s(&model), "--ctx", "64", "-o", s(&im), "-q"]).ok();
        let r = quantize(&[
            s(&model),
            "--to",
            "q8_0",
            "--imatrix",
            s(&im),
            "--target-size",
            "1G",
            "--candidates",
            "q8_0",
            "-o",
            s(&d.path().join(format!("o{is_tied}.gguf"))),
            "--json",
        ]);
        r.ok();
        let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let want = oracle_json(
            "alloc_errors.py",
            &[model.as_os_str(), im.as_os_str(), is_tied.as_ref()],
        );
        let got = rep["allocation"]["tensors"].as_array().unwrap();
        assert_eq!(got.len(), want.as_object().unwrap().len(), "tied={is_tied}");
        for t in got {
            let name = t["tensor"].as_str().unwrap();
            let (g, w) = (
                t["predicted_error"].as_f64().unwrap(),
                want[name].as_f64().unwrap(),
            );
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1e-12),
                "tied={is_tied} {name}: {g} vs numpy {w}"
            );
        }
    }
}

/// `diff A B --against ORIGINAL`: each figure equals what numpy computes from gguf-py's
/// independent decoding of A and B (and the original read by the safetensors package); the
/// changed tensors are exactly those whose bytes differ; a file against itself is identical.
#[test]
fn diff_matches_an_independent_decoding() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let (a, b) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
    quantize(&[s(&fx), "--to", "q4_k_m", "-o", s(&a), "-q"]).ok();
    quantize(&[
        s(&fx),
        "--to",
        "q4_k_m",
        "--tensor-type",
        "blk\\.0\\.ffn_down=q8_0",
        "--tensor-type",
        "blk\\.1\\.attn_q=q4_0",
        "-o",
        s(&b),
        "-q",
    ])
    .ok();
    let r = quantize(&["diff", s(&a), s(&b), "--against", s(&fx), "--json"]);
    r.ok();
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (da, db) = (d.path().join("da"), d.path().join("db"));
    let o = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/gguf_oracle.py"))
        .args(["decode", s(&fx), s(&a), s(&da), s(&b), s(&db)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = r#"
import json, sys, numpy as np
from safetensors.numpy import load_file
import ml_dtypes
def load(p):
    return {k: v.astype(np.float64) for k, v in load_file(p).items()}
orig = load_file(sys.argv[1] + "/model.safetensors")
orig = {k: (v.view(ml_dtypes.bfloat16) if v.dtype == np.uint16 else v).astype(np.float64) for k, v in orig.items()}
a, b = load(sys.argv[2] + "/model.safetensors"), load(sys.argv[3] + "/model.safetensors")
def sqnr(x, y):
    e = float(((x - y) ** 2).sum())
    return None if e == 0 else 10 * np.log10(float((x ** 2).sum()) / e)
print(json.dumps({k: [sqnr(a[k], b[k]), sqnr(orig[k], a[k]), sqnr(orig[k], b[k])] for k in a}))
"#;
    let o = std::process::Command::new(python())
        .args(["-c", script, s(&fx), s(&da), s(&db)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.as_object().unwrap().len());
    let close = |got: &serde_json::Value, want: &serde_json::Value, what: &str| match want.as_f64()
    {
        None => assert!(got.is_null(), "{what}: {got} vs exact"),
        Some(w) => {
            let g = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
            assert!(
                (g - w).abs() < 1e-6 * w.abs().max(1.0),
                "{what}: {g} vs {w}"
            );
        }
    };
    let mut changed = vec![];
    for r in rows {
        let name = r["tensor"].as_str().unwrap();
        let w = &want[name];
        close(&r["b_vs_a"]["sqnr_db"], &w[0], &format!("{name} B vs A"));
        close(&r["a_vs_original"]["sqnr_db"], &w[1], &format!("{name} A"));
        close(&r["b_vs_original"]["sqnr_db"], &w[2], &format!("{name} B"));
        assert_eq!(r["identical"], w[0].is_null(), "{name}");
        if r["identical"] == false {
            changed.push((
                name.to_string(),
                r["storage_b"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        changed.contains(&("model.layers.0.mlp.down_proj.weight".into(), "Q8_0".into())),
        "{changed:?}"
    );
    assert!(
        changed.contains(&(
            "model.layers.1.self_attn.q_proj.weight".into(),
            "Q4_0".into()
        )),
        "{changed:?}"
    );
    // most different first
    assert_eq!(rows[0]["identical"], false);
    // a file against itself; a Markdown report; kinds that cannot be paired
    let r = quantize(&["diff", s(&a), s(&a), "--json"]);
    let same: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(same["totals"]["identical"], same["totals"]["tensors"]);
    let md = d.path().join("d.md");
    quantize(&["diff", s(&a), s(&b), "--report", s(&md), "-q"]).ok();
    assert!(std::fs::read_to_string(&md)
        .unwrap()
        .contains("| `blk.0.ffn_down.weight` | Q4_K | Q8_0 |"));
    let r = quantize(&["diff", s(&a), s(&fx)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("differ in kind"), "{}", r.stderr);
}

/// The HTML report in a real browser (headless Chromium driven by Selenium): it renders with
/// no console errors and fetches nothing, each depth plot has one point per layer for every
/// kind of linear, clicking the SQNR header sorts the rows ascending then descending, and a
/// screenshot is produced.
#[test]
fn html_report_renders_sorts_and_plots_in_chromium() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/formats/data/calib-default.txt");
    let (out, html, json) = (
        d.path().join("m.gguf"),
        d.path().join("r.html"),
        d.path().join("r.json"),
    );
    let common = |report: &Path, o: &Path| {
        quantize(&[
            s(&fx),
            "--to",
            "q4_k_m",
            "-o",
            s(o),
            "--report",
            s(report),
            "--eval-text",
            s(&text),
            "--eval-chunks",
            "1",
            "--min-sqnr",
            "total:10",
            "-q",
        ])
        .ok();
    };
    common(&html, &out);
    common(&json, &d.path().join("m2.gguf"));
    let page = std::fs::read_to_string(&html).unwrap();
    for external in ["http://", "https://", "<link", "src=\"", "@import", "url("] {
        assert!(!page.contains(external), "self-contained: {external}");
    }
    let shot = d.path().join("r.png");
    let o = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/html_check.py"))
        .args([s(&html), s(&shot)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        v["console"],
        serde_json::json!([]),
        "console: {}",
        v["console"]
    );
    assert_eq!(
        v["resources"],
        serde_json::json!([]),
        "fetched: {}",
        v["resources"]
    );
    let layers = read_json(&fx.join("config.json"))["num_hidden_layers"]
        .as_u64()
        .unwrap();
    let all: Vec<u64> = (0..layers).collect();
    for plot in ["plot-sqnr", "plot-rel"] {
        let series = v["plots"][plot].as_object().unwrap();
        let kinds: Vec<&str> = series.keys().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["q", "k", "v", "o", "gate", "up", "down"], "{plot}");
        for (k, pts) in series {
            let got: Vec<u64> = pts
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(got, all, "{plot} {k}: one point per layer");
        }
    }
    // the table holds every tensor; sorting by SQNR orders its numbers (copies and exact
    // tensors, ranked above any lossy one, come last ascending)
    let rep = read_json(&json);
    let n = rep["rows"].as_array().unwrap().len();
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r[1].as_str().unwrap().parse::<f64>().unwrap_or(f64::NAN))
            .collect()
    };
    let asc = nums("rows_ascending");
    let desc = nums("rows_descending");
    assert_eq!(asc.len(), n);
    assert!(
        asc.windows(2).all(|w| w[0] <= w[1] || w[1].is_nan()),
        "{asc:?}"
    );
    assert!(
        desc.windows(2).all(|w| w[0] >= w[1] || w[1].is_nan()),
        "{desc:?}"
    );
    assert_eq!(
        (v["sort_state_1"].as_str(), v["sort_state_2"].as_str()),
        (Some("ascending"), Some("descending"))
    );
    let names: Vec<&str> = v["names_sorted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // the lossy SQNRs shown are the JSON report's
    let mut want: Vec<f64> = rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["error"]["sqnr_db"].as_f64())
        .collect();
    want.sort_by(f64::total_cmp);
    // (to the last bit but one: serde_json's default float parsing may round differently)
    assert!(
        asc[..want.len()]
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()),
        "{asc:?} vs {want:?}"
    );
    // a screenshot: a PNG of the page
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    for section in [
        "id=\"gates\"",
        "id=\"eval\"",
        "id=\"sizes\"",
        "id=\"run\"",
        "SHA-256 of the first MiB",
    ] {
        assert!(page.contains(section), "{section}");
    }
}

/// `--target-size` / `--target-bpw`: the file fits, the allocation is deterministic whatever
/// the thread count, at the recipe's own size its total weight error (measured by `verify`,
/// weighted as the allocation predicts) is no more than llama-quantize's recipe's, llama.cpp
/// loads it, `--dry-run` shows the plan and writes nothing, and an impossible target is one
/// clear error.
#[test]
fn size_targeted_mixtures_fit_and_beat_the_recipe_at_its_size() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let p = |n: &str| d.path().join(n);
    quantize(&[s(&fx), "--to", "q4_k_m", "-o", s(&p("recipe.gguf")), "-q"]).ok();
    let size = std::fs::metadata(p("recipe.gguf")).unwrap().len();
    for j in ["1", "2"] {
        let r = quantize(&[
            s(&fx),
            "--to",
            "q4_k_m",
            "--target-size",
            &size.to_string(),
            "-o",
            s(&p(&format!("t{j}.gguf"))),
            "-j",
            j,
            "--json",
        ]);
        r.ok();
        let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let a = &rep["allocation"];
        assert!(
            a["allocated_bytes"].as_u64() <= a["budget_bytes"].as_u64(),
            "{a}"
        );
        assert_eq!(a["tensors"].as_array().unwrap().len(), 16, "{a}");
    }
    let t = std::fs::read(p("t1.gguf")).unwrap();
    assert_eq!(t, std::fs::read(p("t2.gguf")).unwrap(), "deterministic");
    assert!(t.len() as u64 <= size, "{} > {size}", t.len());
    // the allocation's objective, measured on the written files: Σ squared error over the
    // linears, the embedding's per row
    let total = |f: &str| -> f64 {
        let r = quantize(&["verify", s(&fx), s(&p(f)), "--json"]);
        r.ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["shape"].as_array().unwrap().len() == 2)
            .map(|r| {
                let n: f64 = r["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .product();
                let sq = r["error"]["mse"].as_f64().unwrap() * n;
                if r["tensor"].as_str().unwrap().contains("embed") {
                    sq / r["shape"][0].as_f64().unwrap()
                } else {
                    sq
                }
            })
            .sum()
    };
    let (ours, recipe) = (total("t1.gguf"), total("recipe.gguf"));
    assert!(ours < recipe, "size-targeted {ours} vs recipe {recipe}");
    // llama.cpp loads and runs it
    let l = crate::llama::llama_logits(&p("t1.gguf"), &p("t1.f32"));
    assert!(l.iter().all(|x| x.is_finite()) && !l.is_empty());
    // bits per weight over every tensor, as llama-quantize counts them
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_k_m",
        "--target-bpw",
        "5.5",
        "-o",
        s(&p("b.gguf")),
        "--json",
    ]);
    r.ok();
    let g = qs_formats::gguf::GgufFile::open(&p("b.gguf")).unwrap();
    let bytes: u64 = g.tensors.iter().map(|t| (t.end - t.start) as u64).sum();
    let n: u64 = g
        .tensors
        .iter()
        .map(|t| t.shape().iter().product::<usize>() as u64)
        .sum();
    let bpw = bytes as f64 * 8.0 / n as f64;
    assert!(bpw <= 5.5 && bpw > 5.0, "{bpw}");
    // --dry-run: the plan with each tensor's predicted error, nothing written
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_k_m",
        "--target-bpw",
        "4.5",
        "-o",
        s(&p("dry.gguf")),
        "--dry-run",
    ]);
    r.ok();
    assert!(
        r.stdout.contains("size-targeted: predicted error"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("size target 4.5 bits per weight"),
        "{}",
        r.stdout
    );
    assert!(!p("dry.gguf").exists());
    // too small, and candidates of the wrong kind
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_k_m",
        "--target-size",
        "100K",
        "-o",
        s(&p("x.gguf")),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("below the smallest candidates' size"),
        "{}",
        r.stderr
    );
    let r = quantize(&[
        s(&fx),
        "--to",
        "q4_k_m",
        "--target-bpw",
        "4",
        "--candidates",
        "int4",
        "-o",
        s(&p("x.gguf")),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--candidates: int4"), "{}", r.stderr);
    assert!(!p("x.gguf").exists());
}

/// A size-targeted compressed-tensors output mixes bit widths in several config groups; the
/// compressed-tensors package (what vLLM loads it with) decompresses every weight to exactly
/// what we decode, and the file holds the bits per weight asked for.
#[test]
fn size_targeted_compressed_tensors_decode_in_the_reference_package() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let (out, dec) = (d.path().join("ct"), d.path().join("dec"));
    let r = quantize(&[
        s(&fx),
        "--to",
        "int4",
        "--group",
        "32",
        "--target-bpw",
        "6",
        "-o",
        s(&out),
        "--json",
    ]);
    r.ok();
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let kinds: std::collections::BTreeSet<&str> = rep["allocation"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["storage"].as_str().unwrap())
        .collect();
    assert!(kinds.len() >= 2, "a mixture: {kinds:?}");
    let bytes = rep["totals"]["bytes_out"].as_f64().unwrap();
    let n: f64 = rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .product::<f64>()
        })
        .sum();
    assert!(bytes * 8.0 / n <= 6.0, "{}", bytes * 8.0 / n);
    let o = std::process::Command::new(convert_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/ct_decompress.py"))
        .args([s(&out), s(&dec)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = quantize(&["verify", s(&dec), s(&out), "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["totals"]["lossy"], 0,
        "the package's weights are ours exactly"
    );
}
