//! `quantize batch MANIFEST`: a TOML manifest's jobs. Each job is the command line of one run
//! (its keys are that command's long options), parsed by the same definitions, so a job can
//! say anything one run can and nothing else; `[defaults]` gives keys every job shares.

use crate::{config_of, report_format, RunArgs, Usage};
use anyhow::{Context, Result};
use clap::Parser;
use quantsmith::batch::Job;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Manifests larger than this are refused (a manifest is a page of text, not data).
const MAX_MANIFEST: u64 = 16 << 20;

/// Keys whose values are paths, resolved against the manifest's folder when relative.
const PATH_KEYS: [&str; 7] = [
    "model",
    "output",
    "report",
    "calib",
    "imatrix",
    "imatrix-from",
    "eval-text",
];

/// Options that belong to the whole batch (its command line), not to a job.
const BATCH_KEYS: [&str; 7] = [
    "threads", "force", "dry-run", "json", "quiet", "shard", "help",
];

/// Just the single-run arguments, for parsing one job.
#[derive(Parser)]
#[command(name = "quantize")]
struct JobCli {
    #[command(flatten)]
    run: RunArgs,
}

fn scalar(key: &str, v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
            anyhow::bail!("'{key}': expected a string or number")
        }
        toml::Value::Datetime(d) => d.to_string(),
    })
}

/// The jobs of `manifest`, in order, each checked as its command line would be.
pub fn jobs(manifest: &Path) -> Result<Vec<Job>> {
    let shown = manifest.display();
    let len = std::fs::metadata(manifest)
        .with_context(|| format!("manifest {shown}"))?
        .len();
    if len > MAX_MANIFEST {
        anyhow::bail!("manifest {shown}: {len} bytes; a manifest is at most {MAX_MANIFEST}");
    }
    let text = std::fs::read_to_string(manifest).with_context(|| format!("manifest {shown}"))?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => anyhow::anyhow!("manifest {shown}, line {l}: {}", e.message().trim()),
            None => anyhow::anyhow!("manifest {shown}: {}", e.message().trim()),
        }
    })?;
    // absolute, so a job's options (and their digest) do not depend on how the manifest was
    // named or where the batch was started
    let dir = manifest.parent().filter(|d| !d.as_os_str().is_empty());
    let base = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
        .with_context(|| format!("manifest {shown}"))?;
    let mut defaults = toml::Table::new();
    let mut list: Vec<toml::Table> = Vec::new();
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("defaults", toml::Value::Table(t)) => defaults = normalized(t),
            ("job", toml::Value::Array(a)) => {
                for (i, j) in a.into_iter().enumerate() {
                    match j {
                        toml::Value::Table(t) => list.push(normalized(t)),
                        _ => anyhow::bail!("manifest {shown}: job {i} is not a table"),
                    }
                }
            }
            (k, _) => anyhow::bail!(
                "manifest {shown}: unknown top-level key '{k}' (expected [defaults] and [[job]] tables)"
            ),
        }
    }
    if list.is_empty() {
        anyhow::bail!("manifest {shown}: no [[job]]");
    }
    let mut out: Vec<Job> = Vec::new();
    for (i, t) in list.into_iter().enumerate() {
        let mut merged = defaults.clone();
        merged.extend(t);
        let job = job(&base, merged).with_context(|| format!("manifest {shown}, job {i}"))?;
        if let Some(o) = out.iter().find(|o| o.config.output == job.config.output) {
            anyhow::bail!(
                "manifest {shown}: jobs '{}' and '{}' write the same output {}",
                o.name,
                job.name,
                job.config
                    .output
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            );
        }
        if out.iter().any(|o| o.name == job.name) {
            anyhow::bail!("manifest {shown}: two jobs are named '{}'", job.name);
        }
        // a report is a job's output too: no two jobs write one file
        if let Some((r, _)) = &job.report {
            if let Some(o) = out.iter().find(|o| {
                o.report.as_ref().is_some_and(|(p, _)| p == r)
                    || o.config.output.as_deref() == Some(r.as_path())
            }) {
                anyhow::bail!(
                    "manifest {shown}: jobs '{}' and '{}' both write {}",
                    o.name,
                    job.name,
                    r.display()
                );
            }
        }
        out.push(job);
    }
    Ok(out)
}

/// Keys spelled with `-` (they may be written with `_`), before defaults and jobs are merged.
fn normalized(t: toml::Table) -> toml::Table {
    t.into_iter()
        .map(|(k, v)| (k.replace('_', "-"), v))
        .collect()
}

/// One job from its keys (defaults merged in).
fn job(base: &Path, t: toml::Table) -> Result<Job> {
    let name = match t.get("name") {
        Some(v) => Some(scalar("name", v)?),
        None => None,
    };
    let resolve = |s: String| -> OsString {
        let p = PathBuf::from(&s);
        if p.is_relative() {
            base.join(p).into_os_string()
        } else {
            p.into_os_string()
        }
    };
    let model = t
        .get("model")
        .ok_or_else(|| Usage("no 'model' (the checkpoint to quantize)".into()))?;
    let model = resolve(scalar("model", model)?);
    if !t.contains_key("output") {
        return Err(Usage("no 'output': every job of a manifest names its output".into()).into());
    }
    let mut args: Vec<OsString> = vec!["quantize".into(), model];
    for (k, v) in &t {
        if k == "name" || k == "model" {
            continue;
        }
        if BATCH_KEYS.contains(&k.as_str()) {
            return Err(Usage(format!(
                "'{k}' is an option of the batch (quantize batch --{k}), not of a job"
            ))
            .into());
        }
        let flag = OsString::from(format!("--{k}"));
        let value = |v: &toml::Value| -> Result<OsString> {
            let s = scalar(k, v)?;
            Ok(if PATH_KEYS.contains(&k.as_str()) {
                resolve(s)
            } else {
                s.into()
            })
        };
        match v {
            toml::Value::Boolean(true) => args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(a) => {
                for x in a {
                    args.push(flag.clone());
                    args.push(value(x)?);
                }
            }
            v => {
                args.push(flag);
                args.push(value(v)?);
            }
        }
    }
    let cli = JobCli::try_parse_from(&args).map_err(|e| {
        // clap's message without its usage lines
        let msg = e.to_string();
        let first = msg
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        Usage(first.replace("'--", "'"))
    })?;
    let a = cli.run;
    let report = match &a.report {
        Some(p) => Some((
            p.clone(),
            report_format(Some(p), false)?.expect("a report path has a format"),
        )),
        None => None,
    };
    let gates = a.gates.gates()?;
    let config = config_of(&a)?;
    let output = config.output.clone().expect("checked above");
    let options = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("\0");
    Ok(Job {
        name: name.unwrap_or_else(|| {
            output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        config,
        gates,
        report,
        options,
    })
}
