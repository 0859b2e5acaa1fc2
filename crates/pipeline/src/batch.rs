//! Batches: many quantize jobs in one process, one after another on one thread pool.
//!
//! Each job's output is atomic (as any run's); a failed job does not stop the others unless
//! asked. Beside each output a small state file records what produced it (the options, the
//! tool's version, and a fingerprint of every input: size, modification time and a digest of
//! its first MiB, which holds a checkpoint's header); a later batch skips a job whose state
//! matches and whose outputs are all there. Jobs of one model share their calibration tokens
//! and an importance matrix computed from a text ([`crate::calib::CalibCache`]); calibrated jobs
//! with `--calib-inputs float` and the same calibration share one pass over the model's layers
//! ([`crate::calib::calibrate_together`]), run when the first of them comes. [`shard_of`]
//! splits the jobs into balanced slices for N machines, and [`merge`] joins their summaries.

use crate::config::Shard;
use crate::gates::Gates;
use crate::report::{InputFingerprint, Report, ReportFormat, RunInfo};
use crate::{Error, Progress, QuantizeConfig, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const SUMMARY_SCHEMA_VERSION: u32 = 1;
const STATE_VERSION: u32 = 1;

/// One job of a batch.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub config: QuantizeConfig,
    pub gates: Gates,
    /// `--report` of the job (format by extension).
    pub report: Option<(PathBuf, ReportFormat)>,
    /// The job's options in a canonical text: any change makes the job run again.
    pub options: String,
}

impl Job {
    /// Every file the job reads: the model's files, calibration text, importance matrix and
    /// evaluation text.
    pub fn inputs(&self) -> Vec<PathBuf> {
        let c = &self.config;
        let mut v = crate::input_paths(&c.input);
        v.extend(c.calib.iter().cloned());
        v.extend(c.imatrix.iter().cloned());
        v.extend(c.imatrix_from.iter().cloned());
        v.extend(self.gates.eval.iter().map(|e| e.text.clone()));
        // the files (a model folder is listed by its files); a missing one is the run's to
        // report
        v.retain(|p| p.is_file());
        v
    }

    /// Bytes the job reads (what balances shards); unreadable inputs count 0.
    pub fn input_bytes(&self) -> u64 {
        self.inputs()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The target as asked for (`q4_k_m`, `int4`, …).
    pub fn target_name(&self) -> String {
        match self.config.mixture {
            Some(f) => f.name().to_ascii_lowercase(),
            None => self.config.target.name(),
        }
    }

    fn output(&self) -> Result<&Path> {
        self.config
            .output
            .as_deref()
            .ok_or_else(|| Error::Config(format!("job '{}' has no output", self.name)))
    }
}

/// Assigns each job (by its input bytes) to one of `count` shards: largest first, each to the
/// least loaded shard (lowest index on ties). Deterministic, so every machine computes the same
/// assignment from the same manifest and inputs.
pub fn shard_of(bytes: &[u64], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let mut order: Vec<usize> = (0..bytes.len()).collect();
    order.sort_by(|&a, &b| bytes[b].cmp(&bytes[a]).then(a.cmp(&b)));
    let mut load = vec![0u128; count];
    let mut jobs = vec![0usize; count];
    let mut out = vec![0; bytes.len()];
    for j in order {
        // the least bytes, then the fewest jobs (so empty inputs spread too), then the index
        let s = (0..count)
            .min_by_key(|&s| (load[s], jobs[s], s))
            .expect("count >= 1");
        load[s] += bytes[j] as u128;
        jobs[s] += 1;
        out[j] = s;
    }
    out
}

/// How a batch runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run every job again, whatever its state file says.
    pub force: bool,
    /// Stop at the first job that fails (a violated gate is no failure to run).
    pub fail_fast: bool,
    pub shard: Option<Shard>,
    /// Say which jobs would run; run none.
    pub dry_run: bool,
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Ran and met its gates.
    Done,
    /// Ran; its output is written but a gate failed.
    GateFailed,
    /// Could not run; nothing was written.
    Failed,
    /// Not run: an earlier job failed and `--fail-fast` was given.
    NotRun,
    /// Dry run: would run.
    WouldRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::GateFailed => "gate-failed",
            Status::Failed => "FAILED",
            Status::NotRun => "not run",
            Status::WouldRun => "would run",
        }
    }
}

/// What a job did (or, skipped, what it did when it last ran).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSummary {
    /// Position in the manifest (from 0).
    pub index: usize,
    pub name: String,
    pub input: String,
    pub output: String,
    pub target: String,
    pub status: Status,
    /// Not run because its state file matched (status and figures are from that run).
    pub skipped: bool,
    pub seconds: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bits_per_weight: f64,
    /// SQNR pooled over the lossy tensors (dB).
    pub sqnr_db: Option<f64>,
    pub kld_mean: Option<f64>,
    pub ppl: Option<f64>,
    pub violations: Vec<String>,
    pub error: Option<String>,
    pub report: Option<String>,
}

impl JobSummary {
    fn new(index: usize, job: &Job) -> JobSummary {
        JobSummary {
            index,
            name: job.name.clone(),
            input: job.config.input.display().to_string(),
            output: job
                .config
                .output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            target: job.target_name(),
            status: Status::WouldRun,
            skipped: false,
            seconds: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            bits_per_weight: 0.0,
            sqnr_db: None,
            kld_mean: None,
            ppl: None,
            violations: vec![],
            error: None,
            report: job.report.as_ref().map(|(p, _)| p.display().to_string()),
        }
    }

    fn fill_from(&mut self, r: &Report) {
        self.bytes_in = r.totals.bytes_in;
        self.bytes_out = r.totals.bytes_out;
        self.bits_per_weight = r.totals.bits_per_weight_changed;
        self.sqnr_db = r.totals.error.and_then(|e| e.sqnr_db);
        self.kld_mean = r.eval.as_ref().and_then(|e| e.kld_mean);
        self.ppl = r.eval.as_ref().map(|e| e.ppl);
        if let Some(g) = &r.gates {
            self.violations = g.violations.iter().map(|v| v.to_string()).collect();
            if !g.passed {
                self.status = Status::GateFailed;
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub jobs: usize,
    pub done: usize,
    pub skipped: usize,
    pub gate_failed: usize,
    pub failed: usize,
    pub not_run: usize,
}

/// The JSON summary of a batch (or of several shards, merged).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub tool_version: String,
    /// `i/N` of a shard, `merged` for joined summaries, `null` for a whole batch.
    pub shard: Option<String>,
    pub jobs: Vec<JobSummary>,
    pub counts: Counts,
}

impl Summary {
    fn new(shard: Option<String>, mut jobs: Vec<JobSummary>) -> Summary {
        jobs.sort_by_key(|j| j.index);
        let mut c = Counts {
            jobs: jobs.len(),
            ..Default::default()
        };
        for j in &jobs {
            if j.skipped {
                c.skipped += 1;
            }
            match j.status {
                Status::Done => c.done += 1,
                Status::GateFailed => c.gate_failed += 1,
                Status::Failed => c.failed += 1,
                Status::NotRun => c.not_run += 1,
                Status::WouldRun => {}
            }
        }
        Summary {
            schema_version: SUMMARY_SCHEMA_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            shard,
            jobs,
            counts: c,
        }
    }

    /// One line per job, then the counts.
    pub fn to_table(&self) -> String {
        let w = self
            .jobs
            .iter()
            .map(|j| j.name.chars().count())
            .max()
            .unwrap_or(3)
            .clamp(3, 48);
        let mut s = format!(
            "{:<w$}  {:<11} {:<10} {:>10} {:>6} {:>9} {:>8}  note\n",
            "job", "status", "target", "size", "bpw", "sqnr dB", "seconds"
        );
        for j in &self.jobs {
            let status = j.status.as_str();
            let note = match (&j.error, j.violations.len(), j.skipped) {
                (Some(e), _, _) => e.clone(),
                (None, n, skipped) if n > 0 => format!(
                    "{n} violation{}: {}{}",
                    if n == 1 { "" } else { "s" },
                    j.violations[0],
                    if skipped { " (up to date)" } else { "" }
                ),
                (None, _, true) => "up to date".into(),
                _ => String::new(),
            };
            let name: String = j.name.chars().take(w).collect();
            s.push_str(&format!(
                "{:<w$}  {:<11} {:<10} {:>10} {:>6} {:>9} {:>8}  {}\n",
                name,
                status,
                j.target,
                if j.bytes_out > 0 {
                    crate::report::human_bytes(j.bytes_out)
                } else {
                    "-".into()
                },
                if j.bits_per_weight > 0.0 {
                    format!("{:.2}", j.bits_per_weight)
                } else {
                    "-".into()
                },
                j.sqnr_db.map_or("-".into(), |v| format!("{v:.2}")),
                format!("{:.1}", j.seconds),
                note
            ));
        }
        let c = &self.counts;
        s.push_str(&format!(
            "{} jobs: {} done ({} up to date), {} gate-failed, {} failed, {} not run\n",
            c.jobs, c.done, c.skipped, c.gate_failed, c.failed, c.not_run
        ));
        s
    }
}

/// Joins the summaries of a batch's shards: every job once, in manifest order.
pub fn merge(parts: Vec<Summary>) -> Result<Summary> {
    // every shard of one split, once, from one tool version
    let mut shards: Vec<(usize, usize)> = Vec::new();
    for p in &parts {
        let sh = p
            .shard
            .as_deref()
            .and_then(|s| Shard::parse(s).ok())
            .ok_or_else(|| {
                Error::Config(format!(
                    "a summary without a shard ('{}'): merge the summaries of `batch --shard i/N` runs",
                    p.shard.as_deref().unwrap_or("null")
                ))
            })?;
        shards.push((sh.index, sh.count));
        if p.tool_version != parts[0].tool_version {
            return Err(Error::Config(format!(
                "summaries from quantsmith {} and {}: run every shard with one version",
                parts[0].tool_version, p.tool_version
            )));
        }
    }
    if let Some(&(_, n)) = shards.first() {
        if let Some(&(i, m)) = shards.iter().find(|s| s.1 != n) {
            return Err(Error::Config(format!(
                "shard {i}/{m} merged with shards of {n}: one batch is split one way"
            )));
        }
        shards.sort();
        if let Some(dup) = shards.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "shard {}/{n} is in two summaries",
                dup[0].0
            )));
        }
        if let Some(missing) = (0..n).find(|i| !shards.iter().any(|s| s.0 == *i)) {
            return Err(Error::Config(format!(
                "the summary of shard {missing}/{n} is missing ({} of {n} given)",
                shards.len()
            )));
        }
    }
    let mut jobs: Vec<JobSummary> = Vec::new();
    for p in parts {
        if p.schema_version != SUMMARY_SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "a summary of schema version {} (this tool reads {SUMMARY_SCHEMA_VERSION})",
                p.schema_version
            )));
        }
        for j in p.jobs {
            if let Some(o) = jobs.iter().find(|o| o.index == j.index) {
                return Err(Error::Config(format!(
                    "job {} ('{}') is in two summaries (shard {} and another): were the shards run on different manifests or inputs?",
                    j.index,
                    o.name,
                    p.shard.as_deref().unwrap_or("?")
                )));
            }
            jobs.push(j);
        }
    }
    Ok(Summary::new(Some("merged".into()), jobs))
}

/// A file's identity for skipping: size, digest of its first MiB, modification time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Fingerprint {
    #[serde(flatten)]
    file: InputFingerprint,
    mtime_ns: u128,
}

fn fingerprint(p: &Path) -> std::io::Result<Fingerprint> {
    let mtime_ns = std::fs::metadata(p)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(Fingerprint {
        file: InputFingerprint::of(p)?,
        mtime_ns,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a finished job leaves beside its output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    version: u32,
    tool_version: String,
    options_sha256: String,
    inputs: Vec<Fingerprint>,
    /// Every output file (path, size).
    outputs: Vec<(String, u64)>,
    summary: JobSummary,
}

/// `DIR/.NAME.quantsmith-state.json` for output `DIR/NAME`.
pub fn state_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output
        .parent()
        .unwrap_or(Path::new(""))
        .join(format!(".{name}.quantsmith-state.json"))
}

/// Every file under `p` (or `p` itself), with its size.
fn output_files(paths: &[PathBuf]) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let m = std::fs::metadata(&p)?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else {
            out.push((p.display().to_string(), m.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The job's state if it matches the current options, inputs and tool, with every output file
/// present at its recorded size.
fn up_to_date(job: &Job, options: &str, inputs: &[Fingerprint]) -> Option<State> {
    let out = job.output().ok()?;
    let text = std::fs::read_to_string(state_path(out)).ok()?;
    let st: State = serde_json::from_str(&text).ok()?;
    let fresh = st.version == STATE_VERSION
        && st.tool_version == env!("CARGO_PKG_VERSION")
        && st.options_sha256 == options
        && st.inputs == inputs
        && !st.outputs.is_empty()
        && st
            .outputs
            .iter()
            .all(|(p, n)| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == *n));
    fresh.then_some(st)
}

/// Events a front end shows as the batch goes.
pub enum Event<'a> {
    /// Job `i` of `n` in this shard starts.
    Start { i: usize, n: usize, job: &'a Job },
    /// It finished (or was skipped, or failed).
    Done {
        i: usize,
        n: usize,
        summary: &'a JobSummary,
    },
}

/// Runs the jobs of `shard` (all without one), in manifest order.
pub fn run(
    jobs: &[Job],
    opts: &Options,
    progress: &dyn Progress,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Summary {
    let mine: Vec<usize> = match opts.shard {
        None => (0..jobs.len()).collect(),
        Some(sh) => {
            let bytes: Vec<u64> = jobs.iter().map(Job::input_bytes).collect();
            let of = shard_of(&bytes, sh.count);
            (0..jobs.len()).filter(|&j| of[j] == sh.index).collect()
        }
    };
    let cache = std::sync::Arc::new(crate::calib::CalibCache::default());
    // calibrated jobs that can share one pass over their model's layers, by pass
    let mut passes: Vec<Vec<usize>> = vec![];
    if !opts.dry_run {
        let mut by_key: std::collections::HashMap<crate::calib::PassKey, usize> =
            Default::default();
        for &ji in &mine {
            let job = &jobs[ji];
            let key = crate::calib::method_of(job.config.method)
                .and_then(|m| crate::calib::PassKey::of(m, &job.config));
            let Some(key) = key else { continue };
            if !opts.force && is_up_to_date(job) {
                continue;
            }
            let g = *by_key.entry(key).or_insert_with(|| {
                passes.push(vec![]);
                passes.len() - 1
            });
            passes[g].push(ji);
        }
        passes.retain(|p| p.len() > 1);
    }
    let mut calibrated: std::collections::HashMap<usize, Result<Precalibrated>> =
        Default::default();
    let mut out = Vec::new();
    let mut stop = false;
    let n = mine.len();
    for (k, &ji) in mine.iter().enumerate() {
        let job = &jobs[ji];
        let mut s = JobSummary::new(ji, job);
        if stop {
            s.status = Status::NotRun;
            on_event(Event::Done {
                i: k,
                n,
                summary: &s,
            });
            out.push(s);
            continue;
        }
        on_event(Event::Start { i: k, n, job });
        let t0 = std::time::Instant::now();
        // the first job of a shared pass runs it (and its time counts the pass)
        if let Some(pass) = passes.iter().find(|p| p[0] == ji) {
            calibrated.extend(shared_pass(jobs, pass, opts, &cache, progress));
        }
        let pass_secs = t0.elapsed().as_secs_f64();
        let pre = calibrated.remove(&ji);
        match run_one(job, opts, &cache, pre, progress, &mut s) {
            Ok(()) => s.seconds += pass_secs,
            Err(e) => {
                s.status = Status::Failed;
                s.error = Some(e.to_string());
                s.seconds = t0.elapsed().as_secs_f64();
                stop = opts.fail_fast;
            }
        }
        on_event(Event::Done {
            i: k,
            n,
            summary: &s,
        });
        out.push(s);
    }
    Summary::new(opts.shard.map(|s| format!("{}/{}", s.index, s.count)), out)
}

fn options_digest(job: &Job) -> String {
    let mut h = Sha256::new();
    h.update(job.options.as_bytes());
    hex(&h.finalize())
}

/// A job planned and calibrated by a shared pass, waiting for its turn to write.
type Precalibrated = (crate::exec::Prepared, crate::calib::Calibration);

/// Whether `job`'s outputs are complete and made from its current inputs and options.
fn is_up_to_date(job: &Job) -> bool {
    let inputs: Option<Vec<Fingerprint>> =
        job.inputs().iter().map(|p| fingerprint(p).ok()).collect();
    inputs.is_some_and(|i| up_to_date(job, &options_digest(job), &i).is_some())
}

/// The configuration a job runs with under the batch's options, its output folders made;
/// `true` when the output is one an earlier batch made (its state file is there).
fn job_config(
    job: &Job,
    opts: &Options,
    cache: &std::sync::Arc<crate::calib::CalibCache>,
) -> Result<(QuantizeConfig, bool)> {
    let output = job.output()?;
    // an output a batch made before (its state file says so, complete or not) may be
    // replaced; anything else only with --force
    let ours = state_path(output).exists();
    let mut cfg = job.config.clone();
    cfg.force = opts.force || ours || cfg.force;
    cfg.threads = opts.threads.or(cfg.threads);
    cfg.calib_cache = Some(cache.clone());
    cfg.dry_run = false;
    cfg.report = job.report.as_ref().map(|(p, _)| p.clone());
    // a manifest's output folders are made as needed
    for p in std::iter::once(output).chain(job.report.iter().map(|(p, _)| p.as_path())) {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Output {
                path: dir.to_path_buf(),
                msg: e.to_string(),
            })?;
        }
    }
    Ok((cfg, ours))
}

/// Plans every job of `pass` and runs their calibration as one pass over the model's layers;
/// each job's plan and calibration (or why it failed) by job index.
fn shared_pass(
    jobs: &[Job],
    pass: &[usize],
    opts: &Options,
    cache: &std::sync::Arc<crate::calib::CalibCache>,
    progress: &dyn Progress,
) -> Vec<(usize, Result<Precalibrated>)> {
    let mut out = vec![];
    let mut ready = vec![];
    for &ji in pass {
        let prepared = job_config(&jobs[ji], opts, cache).and_then(|(cfg, _)| {
            let p = crate::exec::prepare(&cfg)?;
            p.check_target(&cfg)?;
            Ok((cfg, p))
        });
        match prepared {
            Ok((cfg, p)) if p.targets.is_some() => ready.push((ji, cfg, p)),
            Ok(_) => {}
            Err(e) => out.push((ji, Err(e))),
        }
    }
    if ready.len() < 2 {
        // nothing to share: each job calibrates on its own when its turn comes
        return out;
    }
    let members: Vec<crate::calib::Member<'_>> = ready
        .iter()
        .filter_map(|(_, cfg, p)| {
            p.targets.as_ref().map(|(m, t)| crate::calib::Member {
                method: *m,
                targets: t,
                cfg,
            })
        })
        .collect();
    let result = crate::exec::jobs::pool(ready[0].1.threads).and_then(|pool| {
        // every job's results wait for its turn to write (its output is not open yet), their
        // codes in a temporary file beside its output
        let mut held = ready
            .iter()
            .map(|(_, _, p)| crate::calib::spill::Spill::beside(&p.plan.output))
            .collect::<Result<Vec<_>>>()?;
        pool.install(|| {
            crate::calib::calibrate_together(
                &ready[0].2.src,
                &members,
                progress,
                &mut |k, _, done| {
                    // this layer's weights have been read: their pages go now, not when the
                    // jobs write (which read them again), as a run's own pass releases them
                    let src = &ready[0].2.src;
                    for t in src
                        .tensors
                        .iter()
                        .filter(|t| done.contains_key(&t.info.name))
                    {
                        let dims = t.info.shape.len().saturating_sub(1);
                        src.release_rows(t, 0, t.info.shape[..dims].iter().product());
                    }
                    held[k].push(done)
                },
            )
        })
        .map(|summaries| held.into_iter().zip(summaries).collect::<Vec<_>>())
    });
    drop(members);
    match result {
        Ok(cals) => {
            for ((ji, _, p), c) in ready.into_iter().zip(cals) {
                out.push((ji, Ok((p, c))));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let mut first = Some(e);
            for (ji, _, _) in ready {
                let e = first.take().unwrap_or_else(|| {
                    Error::Config(format!("the shared calibration pass failed: {msg}"))
                });
                out.push((ji, Err(e)));
            }
        }
    }
    out
}

fn run_one(
    job: &Job,
    opts: &Options,
    cache: &std::sync::Arc<crate::calib::CalibCache>,
    pre: Option<Result<Precalibrated>>,
    progress: &dyn Progress,
    s: &mut JobSummary,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let output = job.output()?.to_path_buf();
    let io = |p: &Path, e: std::io::Error| Error::Input {
        path: p.to_path_buf(),
        msg: e.to_string(),
    };
    let inputs: Vec<Fingerprint> = job
        .inputs()
        .iter()
        .map(|p| fingerprint(p).map_err(|e| io(p, e)))
        .collect::<Result<_>>()?;
    let options = options_digest(job);
    let state_file = state_path(&output);
    if !opts.force {
        if let Some(st) = up_to_date(job, &options, &inputs) {
            *s = JobSummary {
                index: s.index,
                name: s.name.clone(),
                skipped: true,
                ..st.summary
            };
            return Ok(());
        }
    }
    if opts.dry_run {
        s.status = Status::WouldRun;
        return Ok(());
    }
    // what the job reads must be there before it writes anything
    if let Some(e) = &job.gates.eval {
        std::fs::metadata(&e.text).map_err(|err| io(&e.text, err))?;
    }
    let (cfg, ours) = job_config(job, opts, cache)?;
    // a pending state while the job runs (no outputs recorded, so never up to date): an
    // interrupted or failed job is redone by the next batch, which may replace what it left
    let pending = State {
        version: STATE_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        options_sha256: String::new(),
        inputs: vec![],
        outputs: vec![],
        summary: s.clone(),
    };
    if ours || !output.exists() || cfg.force {
        write_state(&state_file, &pending)?;
    }
    let outcome = match pre {
        None => crate::quantize(&cfg, progress)?,
        Some(pre) => {
            let (p, c) = pre?;
            crate::exec::write(p, Some(c), &cfg, progress)?
        }
    };
    let mut report = outcome
        .report
        .ok_or_else(|| Error::Config("a batch job ran as a dry run".into()))?;
    s.status = Status::Done;
    report.run = Some(RunInfo::new(
        job.options.split('\0').map(String::from).collect(),
        &job.inputs(),
    ));
    crate::gates::apply(&job.gates, &cfg.input, cfg.threads, &mut report)?;
    if let Some((p, f)) = &job.report {
        crate::output::write_file(p, report.render(*f).as_bytes())?;
    }
    s.fill_from(&report);
    s.seconds = t0.elapsed().as_secs_f64();
    let mut files = outcome.files.clone();
    files.extend(job.report.iter().map(|(p, _)| p.clone()));
    let st = State {
        version: STATE_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        options_sha256: options,
        inputs,
        outputs: output_files(&files).map_err(|e| Error::Output {
            path: output.clone(),
            msg: e.to_string(),
        })?,
        summary: s.clone(),
    };
    write_state(&state_file, &st)
}

fn write_state(path: &Path, st: &State) -> Result<()> {
    crate::output::write_file(
        path,
        serde_json::to_string_pretty(st)
            .expect("state serializes")
            .as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest first onto the least loaded shard: every job in exactly one shard, loads close.
    #[test]
    fn shards_are_disjoint_and_balanced() {
        let bytes = [100, 90, 80, 10, 10, 5, 0, 0];
        let of = shard_of(&bytes, 3);
        let mut load = [0u64; 3];
        for (j, &s) in of.iter().enumerate() {
            load[s] += bytes[j];
        }
        assert_eq!(load, [100, 100, 95], "{of:?}");
        // with equal loads, the shard with fewer jobs takes the next
        assert_eq!(shard_of(&[0, 0, 0], 3), [0, 1, 2]);
        assert_eq!(shard_of(&bytes, 1), vec![0; 8]);
        assert_eq!(shard_of(&[], 4), Vec::<usize>::new());
        // more shards than jobs: some get none
        let of = shard_of(&[5, 5], 4);
        assert_eq!(of, [0, 1]);
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(Shard::parse("0/4").unwrap(), Shard { index: 0, count: 4 });
        assert!(Shard::parse("4/4").unwrap_err().contains("from 0"));
        assert!(Shard::parse("1/0").is_err());
        assert!(Shard::parse("1").is_err());
        assert!(Shard::parse("a/2").is_err());
    }

    fn summary(shard: &str, idx: &[usize]) -> Summary {
        let job = Job {
            name: "j".into(),
            config: QuantizeConfig::new("in", crate::Target::parse("q4_0").unwrap()),
            gates: Gates::default(),
            report: None,
            options: String::new(),
        };
        Summary::new(
            Some(shard.into()),
            idx.iter()
                .map(|&i| {
                    let mut s = JobSummary::new(i, &job);
                    s.status = Status::Done;
                    s
                })
                .collect(),
        )
    }

    #[test]
    fn merged_summaries_hold_every_job_once_in_order() {
        let m = merge(vec![summary("1/2", &[1, 3]), summary("0/2", &[2, 0])]).unwrap();
        let idx: Vec<usize> = m.jobs.iter().map(|j| j.index).collect();
        assert_eq!(idx, [0, 1, 2, 3]);
        assert_eq!(m.counts.done, 4);
        assert!(merge(vec![summary("0/2", &[0]), summary("1/2", &[0])]).is_err());
        let err = |v| merge(v).unwrap_err().to_string();
        assert!(err(vec![summary("0/3", &[0]), summary("2/3", &[1])]).contains("1/3 is missing"));
        assert!(err(vec![summary("0/2", &[0]), summary("1/3", &[1])]).contains("split one way"));
    }
}
