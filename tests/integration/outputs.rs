//! Outputs under hostile conditions (issue 9): standard output closed or full, two runs to one
//! target, signals in the middle of a run, stale temporaries, outputs that would replace an
//! input, reports that cannot be written. Each failure: one `error: …` line naming the file,
//! nothing at the target, no `qs-partial` temporary left.

use crate::util::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantize"))
}

fn temporaries(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|f| f.contains("qs-partial"))
        .collect()
}

/// The failure contract: non-zero exit, one `error: ` line holding every `must`.
#[track_caller]
fn one_line_error(r: &Run, must: &[&str]) -> String {
    assert_ne!(r.code, 0, "expected failure, got success: {}", r.stdout);
    let msg = r.stderr.trim();
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(msg.starts_with("error: "), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    for m in must {
        assert!(msg.contains(m), "'{m}' missing from: {msg}");
    }
    msg.to_string()
}

fn run_with_stdout(args: &[&OsStr], stdout: Stdio) -> Run {
    let o = bin()
        .args(args)
        .stdout(stdout)
        .output()
        .expect("run quantize");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The write end of a pipe whose reader has already exited: writing to it fails with EPIPE,
/// every time (no race with the reader).
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run true");
    let w = reader.stdin.take().expect("piped stdin");
    reader.wait().expect("true exits");
    Stdio::from(w)
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

#[test]
fn stdout_closed_by_its_reader_ends_quietly() {
    let fx = fixture();
    let r = run_with_stdout(&["inspect".as_ref(), fx.as_os_str()], closed_pipe());
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "inspect | true");
    let r = run_with_stdout(
        &["inspect".as_ref(), fx.as_os_str(), "--json".as_ref()],
        closed_pipe(),
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (0, ""),
        "inspect --json | true"
    );
    let r = run_with_stdout(&["--help".as_ref()], closed_pipe());
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "--help | true");
    // a conversion: its output is complete, only the summary had no reader
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    let r = run_with_stdout(
        &[
            fx.as_os_str(),
            "--to".as_ref(),
            "q8_0".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        closed_pipe(),
    );
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn stdout_on_a_full_disk_is_one_error() {
    let fx = fixture();
    let r = run_with_stdout(&["inspect".as_ref(), fx.as_os_str()], dev_full());
    let msg = one_line_error(&r, &["standard output", "No space left on device"]);
    assert_eq!(msg.matches("os error 28").count(), 1, "said once: {msg}");
    for args in [["--help"], ["--version"]] {
        let r = run_with_stdout(&[args[0].as_ref()], dev_full());
        one_line_error(&r, &["standard output", "No space left on device"]);
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    let report = d.path().join("r.json");
    let r = run_with_stdout(
        &[
            fx.as_os_str(),
            "--to".as_ref(),
            "q8_0".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "--report".as_ref(),
            report.as_os_str(),
        ],
        dev_full(),
    );
    one_line_error(&r, &["standard output", "No space left on device"]);
    // the output and the report were complete before the summary failed
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    assert_eq!(read_json(&report)["command"], "quantize");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

/// A bf16 checkpoint of `n` tensors of 1024 × 1024 written directly (no model semantics:
/// plain names, no config.json), big enough for a conversion to take a while.
fn big_checkpoint(path: &Path, n: usize) {
    let (rows, cols) = (1024usize, 1024usize);
    let mut header = serde_json::Map::new();
    for i in 0..n {
        let start = i * rows * cols * 2;
        header.insert(
            format!("w{i:03}.weight"),
            serde_json::json!({"dtype": "BF16", "shape": [rows, cols],
                "data_offsets": [start, start + rows * cols * 2]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string();
    // (padded to 8 bytes, as the reference writer does)
    while h.len() & 7 != 0 {
        h.push(' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    // finite, weight-like values: exponents 2^-8 .. 2^-1, varied mantissas and signs
    let mut x = 0x2545_f491_4f6c_dd1du64;
    bytes.reserve(n * rows * cols * 2);
    for _ in 0..n * rows * cols {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x >> 32) as u16;
        let exp = 119 + (b >> 13 & 7);
        let bits = (b & 0x8000) | (exp << 7) | (b & 0x7f);
        bytes.extend_from_slice(&bits.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Waits until a temporary appears in `dir` (the run is writing); panics if the run ends first.
fn wait_for_temporary(child: &mut Child, dir: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(t) = temporaries(dir).into_iter().next() {
            return t;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before a temporary appeared");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no temporary");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start(args: &[&OsStr]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quantize")
}

fn finish(child: Child) -> Run {
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn signals_remove_the_temporaries_and_exit_128_plus_the_signal() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("big.safetensors");
    big_checkpoint(&input, 48);
    let outs = d.path().join("outs");
    std::fs::create_dir(&outs).unwrap();
    // a GGUF file, a safetensors file, a folder (its temporary is a folder)
    for (sig, code, name, to) in [
        ("INT", 130, "o.gguf", "q4_0"),
        ("TERM", 143, "o.safetensors", "int4"),
        ("HUP", 129, "o", "int4"),
    ] {
        let out = outs.join(name);
        let mut child = start(&[
            input.as_os_str(),
            "--to".as_ref(),
            to.as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "-j1".as_ref(),
            // bare tensors (no config.json): GGUF under their own names
            if to == "q4_0" { "--keep-names" } else { "-q" }.as_ref(),
        ]);
        let temp = wait_for_temporary(&mut child, &outs);
        assert!(temp.starts_with(&format!(".{name}.qs-partial-")), "{temp}");
        let k = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(k.success());
        let r = finish(child);
        assert_eq!(r.code, code, "SIG{sig}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("SIG{sig}")), "{}", r.stderr);
        assert_eq!(listing(&outs), Vec::<String>::new(), "SIG{sig}");
    }
}

/// Two runs to one target: the one that finishes second is refused ("already exists") and
/// removes its temporary; the other's output stays.
#[test]
fn the_loser_of_two_runs_to_one_target_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("big.safetensors");
    big_checkpoint(&input, 8);
    let outs = d.path().join("outs");
    std::fs::create_dir(&outs).unwrap();
    let out = outs.join("o.gguf");
    let mut child = start(&[
        input.as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "-j1".as_ref(),
        "--keep-names".as_ref(),
    ]);
    wait_for_temporary(&mut child, &outs);
    // the other run finishes first
    std::fs::write(&out, b"the winner").unwrap();
    let r = finish(child);
    one_line_error(&r, &["o.gguf", "already exists"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"the winner");
    assert_eq!(listing(&outs), ["o.gguf"]);
}

#[test]
fn a_file_output_never_replaces_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let out = d.path().join("o.gguf");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"x").unwrap();
    for extra in [&["--force"][..], &["--force", "--dry-run"], &[]] {
        let mut args: Vec<&OsStr> = vec![
            fx.as_os_str(),
            "--to".as_ref(),
            "q8_0".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let r = quantize(&args);
        one_line_error(&r, &["o.gguf", "is a folder", "not even with --force"]);
        assert!(out.join("keep.txt").is_file());
        assert_eq!(listing(d.path()), ["o.gguf"]);
    }
    // the same for a safetensors file output
    let out = d.path().join("o.safetensors");
    std::fs::create_dir(&out).unwrap();
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int8".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--force".as_ref(),
    ]);
    one_line_error(&r, &["o.safetensors", "is a folder"]);
    assert!(out.is_dir());
}

/// A run killed outright (SIGKILL) leaves `.NAME.qs-partial-PID`; the next run to the same
/// target removes those whose process is gone, and no other.
#[test]
fn stale_temporaries_are_removed_by_the_next_run() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    let dead = d.path().join(".out.gguf.qs-partial-999999999");
    std::fs::write(&dead, vec![0u8; 4096]).unwrap();
    let dead_dir = d.path().join(".out.gguf.qs-partial-999999998");
    std::fs::create_dir(&dead_dir).unwrap();
    std::fs::write(dead_dir.join("model.safetensors"), b"x").unwrap();
    // this test's process is alive: its temporary (a run in progress) stays
    let alive = format!(".out.gguf.qs-partial-{}", std::process::id());
    std::fs::write(d.path().join(&alive), b"x").unwrap();
    let other = ".other.gguf.qs-partial-999999999";
    std::fs::write(d.path().join(other), b"x").unwrap();
    quantize(&[
        fixture().as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let mut want = vec![alive, other.to_string(), "out.gguf".to_string()];
    want.sort();
    assert_eq!(listing(d.path()), want);
    // the same for a folder output
    let folder = d.path().join("st");
    let dead = d.path().join(".st.qs-partial-999999999");
    std::fs::create_dir(&dead).unwrap();
    quantize(&[
        fixture().as_os_str(),
        "--to".as_ref(),
        "int8".as_ref(),
        "-o".as_ref(),
        folder.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    assert!(!dead.exists() && folder.join("config.json").is_file());
}

/// A copy of the fixture folder at `dir`.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    listing(dir)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(dir.join(&f)).unwrap_or_default();
            (f, b)
        })
        .collect()
}

#[test]
fn no_output_replaces_or_deletes_an_input() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    fixture_copy(&m);
    let before = snapshot(&m);
    // a GGUF requantized onto itself
    let g = d.path().join("g.gguf");
    quantize(&[
        m.as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        g.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let gguf = std::fs::read(&g).unwrap();
    std::fs::create_dir(d.path().join("x")).unwrap();
    std::os::unix::fs::symlink(&g, d.path().join("x/link.gguf")).unwrap();
    for o in [
        g.clone(),
        d.path().join("./x/../g.gguf"),
        d.path().join("x/link.gguf"),
    ] {
        let r = quantize(&[
            g.as_os_str(),
            "--to".as_ref(),
            "q4_0".as_ref(),
            "--allow-requantize".as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "--force".as_ref(),
        ]);
        one_line_error(&r, &["g.gguf", "input"]);
    }
    assert_eq!(std::fs::read(&g).unwrap(), gguf);
    // a folder output equal to, or holding, the input folder; a file output that is an input
    for (o, to) in [
        (m.clone(), "int8"),
        (d.path().to_path_buf(), "int8"),
        (m.join("model.safetensors"), "int8"),
    ] {
        for force in [false, true] {
            let mut args: Vec<&OsStr> = vec![
                m.as_os_str(),
                "--to".as_ref(),
                to.as_ref(),
                "-o".as_ref(),
                o.as_os_str(),
            ];
            if force {
                args.push("--force".as_ref());
            }
            let r = quantize(&args);
            assert_ne!(r.code, 0);
            if force {
                one_line_error(&r, &["input"]);
            }
        }
    }
    assert_eq!(snapshot(&m), before, "the input folder is untouched");
    // export: the folder would hold the GGUF it reads
    let r = quantize(&[
        "export".as_ref(),
        g.as_os_str(),
        "-o".as_ref(),
        d.path().as_os_str(),
        "--force".as_ref(),
    ]);
    one_line_error(&r, &["g.gguf", "input"]);
    assert_eq!(std::fs::read(&g).unwrap(), gguf);
    // reports
    let out = d.path().join("out.gguf");
    for report in [
        m.join("config.json"),
        m.join("model.safetensors"),
        out.clone(),
    ] {
        let r = quantize(&[
            m.as_os_str(),
            "--to".as_ref(),
            "q8_0".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "--report".as_ref(),
            report.as_os_str(),
        ]);
        one_line_error(&r, &[report.file_name().unwrap().to_str().unwrap()]);
        assert!(!out.exists());
    }
    assert_eq!(std::fs::read(&g).unwrap(), gguf);
    let r = quantize(&[
        "verify".as_ref(),
        m.as_os_str(),
        g.as_os_str(),
        "--report".as_ref(),
        g.as_os_str(),
    ]);
    one_line_error(&r, &["g.gguf", "input"]);
    let text = d.path().join("t.txt");
    std::fs::write(&text, "some text ".repeat(200)).unwrap();
    for (flag, p) in [("--json", &text), ("--logits", &g), ("--nll", &g)] {
        let r = quantize(&[
            "eval".as_ref(),
            g.as_os_str(),
            "--text".as_ref(),
            text.as_os_str(),
            flag.as_ref(),
            p.as_os_str(),
        ]);
        one_line_error(&r, &["input"]);
    }
    assert_eq!(std::fs::read(&g).unwrap(), gguf);
    assert_eq!(snapshot(&m), before);
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

/// A report that cannot be written fails the run before any output is written.
#[test]
fn unwritable_reports_fail_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let out = d.path().join("out.gguf");
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for (report, must) in [
        (d.path().join("no/such/r.json"), "r.json"),
        (sub.clone(), "sub"),
        (file.join("r.json"), "r.json"),
    ] {
        for dry in [false, true] {
            let mut args: Vec<&OsStr> = vec![
                fx.as_os_str(),
                "--to".as_ref(),
                "q8_0".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
                "--report".as_ref(),
                report.as_os_str(),
            ];
            if dry {
                args.push("--dry-run".as_ref());
            }
            let r = quantize(&args);
            one_line_error(&r, &[must]);
            assert!(!out.exists(), "nothing written");
        }
    }
    // verify and eval check theirs before reading anything
    let r = quantize(&[
        "verify".as_ref(),
        fx.as_os_str(),
        fx.as_os_str(),
        "--report".as_ref(),
        d.path().join("no/such/r.json").as_os_str(),
    ]);
    one_line_error(&r, &["r.json"]);
    let text = d.path().join("t.txt");
    std::fs::write(&text, "some text ".repeat(200)).unwrap();
    for flag in ["--json", "--logits", "--nll"] {
        let r = quantize(&[
            "eval".as_ref(),
            fx.as_os_str(),
            "--text".as_ref(),
            text.as_os_str(),
            flag.as_ref(),
            sub.as_os_str(),
        ]);
        one_line_error(&r, &["sub", "is a folder"]);
    }
    assert_eq!(listing(d.path()), ["file", "sub", "t.txt"]);
    assert_eq!(listing(&sub), Vec::<String>::new());
    // a report replaced whole (temporary, then rename)
    let report = d.path().join("r.json");
    std::fs::write(&report, "x".repeat(100_000)).unwrap();
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    assert_eq!(read_json(&report)["command"], "quantize");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

/// A write error inside a folder output names the file under the target, not the temporary
/// folder, and its OS error once.
#[test]
fn write_errors_name_the_target_and_the_os_error_once() {
    let d = tempfile::tempdir().unwrap();
    for (to, out, file) in [
        ("q8_0", "out.gguf", "out.gguf"),
        ("int8", "folder", "folder/model.safetensors"),
    ] {
        let target = d.path().join(out);
        let cmd = format!(
            "trap '' XFSZ; ulimit -f 200; exec '{}' '{}' --to {to} -o '{}'",
            env!("CARGO_BIN_EXE_quantize"),
            fixture().display(),
            target.display()
        );
        let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let r = Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        let msg = one_line_error(&r, &[&d.path().join(file).display().to_string()]);
        assert!(!msg.contains("qs-partial"), "{msg}");
        assert_eq!(msg.matches("os error").count(), 1, "said once: {msg}");
        assert_eq!(listing(d.path()), Vec::<String>::new());
    }
}

/// `--report` by extension: the CSV (read by Python's `csv` module) has the JSON report's rows
/// in the same order with the same figures; the Markdown summary lists the worst tensors first
/// in a well-formed table; other extensions, and a non-JSON `--dry-run` plan, are refused
/// before anything is written.
#[test]
fn reports_as_csv_and_markdown_match_the_json_report() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let run = |ext: &str| {
        let (o, r) = (
            d.path().join(format!("{ext}.gguf")),
            d.path().join(format!("r.{ext}")),
        );
        quantize(&[
            fx.as_os_str(),
            "--to".as_ref(),
            "q4_k_m".as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "--report".as_ref(),
            r.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        r
    };
    let json = read_json(&run("json"));
    let rows = json["rows"].as_array().unwrap();
    let csv = run("csv");
    let out = Command::new(python())
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='')))))",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed.len(), rows.len());
    for (c, j) in parsed.iter().zip(rows) {
        assert_eq!(c["tensor"], j["tensor"]);
        assert_eq!(c["storage"], j["storage"]);
        assert_eq!(c["bytes_out"].as_str().unwrap(), j["bytes_out"].to_string());
        let shape: Vec<String> = j["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(c["shape"].as_str().unwrap(), shape.join("x"));
        match j["error"]["sqnr_db"].as_f64() {
            Some(v) => {
                let got: f64 = c["sqnr_db"].as_str().unwrap().parse().unwrap();
                assert!((got - v).abs() <= 1e-9 * v.abs(), "{}", j["tensor"]);
            }
            None if j["error"].is_null() => assert_eq!(c["sqnr_db"], ""),
            None => assert_eq!(c["sqnr_db"], "inf"),
        }
    }
    let md = std::fs::read_to_string(run("md")).unwrap();
    assert!(md.starts_with("### quantsmith: `"), "{md}");
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    let lossy = rows
        .iter()
        .filter(|r| r["error"]["sqnr_db"].as_f64().is_some())
        .count();
    assert_eq!(table.len(), 2 + lossy.min(30), "{md}");
    let cells = |l: &str| l.matches('|').count() - l.matches("\\|").count();
    assert!(table.iter().all(|l| cells(l) == cells(table[0])), "{md}");
    assert!(
        table[2].contains(&format!("`{}`", rows[0]["tensor"].as_str().unwrap())),
        "worst first: {md}"
    );
    // refused up front
    let o = d.path().join("x.gguf");
    let bad = d.path().join("r.txt");
    fails(
        &[
            fx.as_os_str(),
            "--to".as_ref(),
            "q4_0".as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "--report".as_ref(),
            bad.as_os_str(),
        ],
        Some(&o),
        &["r.txt", ".json, .csv, .md or .html"],
    );
    assert!(!bad.exists());
    fails(
        &[
            fx.as_os_str(),
            "--to".as_ref(),
            "q4_0".as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "--dry-run".as_ref(),
            "--report".as_ref(),
            csv.as_os_str(),
        ],
        Some(&o),
        &["--dry-run plan is written as JSON"],
    );
}

/// `quantize completions SHELL`: bash loads the script and completes our flags and
/// subcommands from it; zsh and fish get scripts that know them too.
#[test]
fn shell_completions_complete_flags_and_subcommands() {
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("quantize.bash");
    let r = quantize(&["completions", "bash"]);
    r.ok();
    std::fs::write(&script, &r.stdout).unwrap();
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({}); COMP_CWORD={}; _quantize quantize '{}' '{}'; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display(),
                line,
                words.len() - 1,
                words[words.len() - 1],
                words[words.len().saturating_sub(2)]
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let flags = complete("quantize --me");
    assert!(flags.lines().any(|l| l == "--method"), "{flags}");
    let subs = complete("quantize ev");
    assert!(subs.lines().any(|l| l == "eval"), "{subs}");
    for shell in ["zsh", "fish"] {
        let r = quantize(&["completions", shell]);
        r.ok();
        assert!(
            r.stdout.contains("awq-tokens") && r.stdout.contains("imatrix"),
            "{shell}"
        );
    }
    let r = quantize(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "unknown shell is a usage error: {}", r.stderr);
}
