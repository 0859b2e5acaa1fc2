//! `quantize`: a thin command line over the `quantsmith` library.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use quantsmith::config::{parse_tensor_type, GranularityArg};
use quantsmith::report::ReportFormat;
use quantsmith::{QuantizeConfig, Target};

mod batch;
mod progress;
use progress::{peak_rss_mb, Bar};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "quantize",
    version,
    about = "Quantize LLM checkpoints (safetensors / HF folders) to GGUF or compressed-tensors safetensors",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the jobs of a TOML manifest (docs/SCALING.md): one after another, each output
    /// atomic, skipping jobs whose output is up to date; a summary table (and --summary JSON).
    Batch {
        /// The manifest: [defaults] and [[job]] tables whose keys are this command's options.
        #[arg(required_unless_present = "merge_summaries")]
        manifest: Option<PathBuf>,
        /// Run only slice i of N (from 0) of the jobs, balanced by input bytes.
        #[arg(long, value_name = "i/N", value_parser = quantsmith::config::Shard::parse)]
        shard: Option<quantsmith::config::Shard>,
        /// Stop at the first job that cannot run (the rest are listed as not run).
        #[arg(long)]
        fail_fast: bool,
        /// Run every job again, replacing outputs that exist.
        #[arg(long)]
        force: bool,
        /// List which jobs would run and which are up to date; run none.
        #[arg(long)]
        dry_run: bool,
        /// Write the JSON summary to FILE.
        #[arg(long, value_name = "FILE")]
        summary: Option<PathBuf>,
        /// Join the JSON summaries of a batch's shards (then --summary FILE, --json, or a table).
        #[arg(long, value_name = "SUMMARY", num_args = 1.., conflicts_with_all = ["manifest", "shard", "fail_fast", "force", "dry_run"])]
        merge_summaries: Vec<PathBuf>,
        /// Print the JSON summary on standard output instead of the table.
        #[arg(long)]
        json: bool,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a shell completion script, e.g. `quantize completions bash >
    /// ~/.local/share/bash-completion/completions/quantize`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Compare two quantized checkpoints (both GGUF or both safetensors) tensor by tensor:
    /// storage, sizes, bytes changed, the error of B against A and, with --against, of each
    /// against the original.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// The original both were made from: each side's error against it.
        #[arg(long, value_name = "ORIGINAL")]
        against: Option<PathBuf>,
        /// Write the comparison: .json or .md (for a pull-request comment).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Print the comparison as JSON on standard output instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List tensors, dtypes, shapes and sizes of a safetensors or GGUF file (or model folder).
    Inspect {
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn a llama.cpp GGUF (llama, qwen2, qwen3) back into a Hugging Face folder:
    /// dequantized weights, config.json and tokenizer files rebuilt.
    Export {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Element type of the written weights: f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long)]
        force: bool,
        /// Print what was written as JSON on standard output.
        #[arg(long)]
        json: bool,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Perplexity of MODEL on a text and, with --against, the KL divergence and top-1 agreement
    /// of its next-token distributions vs ORIGINAL (chunked as llama-perplexity does).
    Eval {
        /// A model folder (float or compressed-tensors safetensors) or a GGUF file.
        model: PathBuf,
        /// The original model to compare with (same vocabulary).
        #[arg(long, value_name = "ORIGINAL")]
        against: Option<PathBuf>,
        /// The text (plain, or JSONL with a "text" field).
        #[arg(long, value_name = "FILE")]
        text: PathBuf,
        /// Tokens per chunk (llama-perplexity's -c).
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Evaluate only the first N chunks.
        #[arg(long)]
        chunks: Option<usize>,
        /// Write the figures as JSON to FILE, or with no FILE (or `-`) print them on standard
        /// output instead of the summary.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<PathBuf>,
        /// Write MODEL's logits at the scored positions as a float32 .npy (rows: positions,
        /// chunk by chunk; columns: vocabulary; positions × vocabulary × 4 bytes).
        #[arg(long, value_name = "FILE")]
        logits: Option<PathBuf>,
        /// Write MODEL's negative log-likelihood of each scored token as a float32 .npy (one
        /// value per scored position, chunk by chunk): two models' files on the same text pair
        /// up position by position.
        #[arg(long, value_name = "FILE")]
        nll: Option<PathBuf>,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// llama.cpp's importance matrix (GGUF, as llama-imatrix writes it) from our forward pass on
    /// a calibration text, for `--imatrix` here or in llama-quantize.
    Imatrix {
        /// A model folder (float or compressed-tensors safetensors) or a GGUF file.
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Calibration text: plain, or JSONL with a "text" field (default: the shipped text).
        #[arg(long, value_name = "FILE")]
        calib: Option<PathBuf>,
        /// Tokens per chunk (llama-imatrix's -c).
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Use at most N chunks.
        #[arg(long)]
        chunks: Option<usize>,
        #[arg(long)]
        force: bool,
        /// Print what was written as JSON on standard output.
        #[arg(long)]
        json: bool,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Dequantize every tensor of QUANTIZED and compare it with ORIGINAL.
    Verify {
        original: PathBuf,
        quantized: PathBuf,
        /// Write the per-tensor report: .json (schema: docs/REPORT.md), .csv (one line per tensor),
        /// .md (a Markdown summary for CI job summaries) or .html (one self-contained page), by
        /// the file's extension.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Print the report as JSON on standard output instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gates: GateArgs,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Quality gates (docs/REPORT.md): a violated gate still writes the report, names what failed
/// and exits with code 3.
#[derive(Args, Clone, Default)]
struct GateArgs {
    /// Fail (exit 3) when a lossy tensor's relative error ‖x−x̂‖/‖x‖ exceeds LIMIT; `total:LIMIT`
    /// for the error pooled over all of them. Repeatable.
    #[arg(long, value_name = "[total:]LIMIT", value_parser = quantsmith::gates::Limit::parse)]
    max_rel_error: Vec<quantsmith::gates::Limit>,
    /// Fail (exit 3) when a lossy tensor's SQNR is below DB; `total:DB` for the pooled SQNR.
    /// Repeatable.
    #[arg(long, value_name = "[total:]DB", value_parser = quantsmith::gates::Limit::parse)]
    min_sqnr: Vec<quantsmith::gates::Limit>,
    /// Fail (exit 3) when the mean KL divergence of the output's next-token distributions from
    /// the input's on --eval-text exceeds X nats.
    #[arg(long, value_name = "X")]
    max_kld: Option<f64>,
    /// Fail (exit 3) when the output's perplexity on --eval-text exceeds the input's by more than
    /// X (`5%` or `0.05`).
    #[arg(long, value_name = "X", value_parser = quantsmith::gates::parse_fraction)]
    max_ppl_increase: Option<f64>,
    /// Evaluate the output against the input on this text after the conversion (plain, or JSONL
    /// with a "text" field); its figures go in the report.
    #[arg(long, value_name = "FILE")]
    eval_text: Option<PathBuf>,
    /// Tokens per evaluation chunk.
    #[arg(long, default_value_t = 512)]
    eval_ctx: usize,
    /// Evaluate only the first N chunks of --eval-text.
    #[arg(long, value_name = "N")]
    eval_chunks: Option<usize>,
}

impl GateArgs {
    fn gates(&self) -> Result<quantsmith::gates::Gates> {
        let g = quantsmith::gates::Gates {
            max_rel_error: self.max_rel_error.clone(),
            min_sqnr: self.min_sqnr.clone(),
            max_kld: self.max_kld,
            max_ppl_increase: self.max_ppl_increase,
            eval: self
                .eval_text
                .as_ref()
                .map(|t| quantsmith::gates::EvalSpec {
                    text: t.clone(),
                    ctx: self.eval_ctx,
                    chunks: self.eval_chunks,
                }),
        };
        if let Some(k) = g.max_kld {
            if !(k.is_finite() && k >= 0.0) {
                return Err(Usage("--max-kld must be a non-negative number".into()).into());
            }
        }
        g.check_options().map_err(|e| Usage(e.to_string()))?;
        Ok(g)
    }
}

#[derive(Args)]
struct RunArgs {
    /// A .safetensors file, a model.safetensors.index.json, a Hugging Face model folder, or a GGUF.
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Target (the GGUF list comes from the block-type registry; see `target_help`).
    #[arg(long = "to", required = true, value_parser = Target::parse_main)]
    to: Option<(Target, Option<quantsmith::mixture::Ftype>)>,
    /// Output: NAME.gguf, NAME.safetensors, or a folder (default: next to the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Group size for group-wise scales (int targets; default 128 for int4/int3/int2).
    #[arg(long)]
    group: Option<usize>,
    /// Scale granularity: tensor, channel, group, block (fp8 only: 128x128 tiles).
    #[arg(long, value_parser = GranularityArg::parse)]
    granularity: Option<GranularityArg>,
    /// Tile edge for fp8 block scales.
    #[arg(long, default_value_t = 128)]
    block: usize,
    /// Asymmetric integer quantization (zero points) instead of symmetric.
    #[arg(long)]
    asym: bool,
    /// Also quantize tensors matching REGEX (e.g. embeddings, lm_head).
    #[arg(long, value_name = "REGEX")]
    include: Vec<String>,
    /// Never quantize tensors matching REGEX.
    #[arg(long, value_name = "REGEX")]
    exclude: Vec<String>,
    /// Per-tensor target, REGEX=TARGET (first match wins; TARGET may be `keep`).
    #[arg(long = "tensor-type", value_name = "REGEX=TARGET")]
    tensor_type: Vec<String>,
    /// Saturate values beyond the target float range instead of failing.
    #[arg(long)]
    clamp: bool,
    /// Carry NaN/Inf through copies and float conversions instead of failing.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
    /// Print the plan (tensor -> storage, bytes before/after) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the per-tensor report: .json (schema: docs/REPORT.md), .csv (one line per tensor),
    /// .md (a Markdown summary for CI job summaries) or .html (one self-contained page), by the
    /// file's extension.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Choose a type per quantizable tensor (from --candidates) for the least predicted error
    /// at this many bits per weight over the whole model (llama-quantize's BPW).
    #[arg(long, value_name = "BPW", conflicts_with = "target_size")]
    target_bpw: Option<f64>,
    /// As --target-bpw, for a whole output file of at most SIZE (e.g. 2G, 105M, or bytes).
    #[arg(long, value_name = "SIZE", value_parser = quantsmith::config::parse_size)]
    target_size: Option<u64>,
    /// Types a size target chooses among (default GGUF: q3_k,q4_k,q5_k,q6_k,q8_0,iq4_xs;
    /// compressed-tensors: int2,int3,int4,int8).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = Target::parse)]
    candidates: Vec<Target>,
    /// GGUF with --split-max-size: write only slice i of N (from 0) of the split files, so N
    /// machines write one model's parts (docs/SCALING.md).
    #[arg(long, value_name = "i/N", value_parser = quantsmith::config::Shard::parse)]
    shard: Option<quantsmith::config::Shard>,
    /// Print the report (the plan for --dry-run) as JSON on standard output instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gates: GateArgs,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long)]
    threads: Option<usize>,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// GGUF: keep the input's tensor names and write only general.* metadata (no llama.cpp
    /// architecture conversion).
    #[arg(long)]
    keep_names: bool,
    /// GGUF: importance matrix from llama-imatrix (GGUF or legacy .dat), applied as
    /// llama-quantize --imatrix does.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// GGUF: compute the importance matrix from this text (as `quantize imatrix` does: chunks
    /// of 512 tokens, every one) and use it as --imatrix would. In a batch it is computed once
    /// per model and text and reused by every job. A dry run computes it too (the plan
    /// depends on it).
    #[arg(long, value_name = "TEXT", conflicts_with = "imatrix")]
    imatrix_from: Option<PathBuf>,
    /// GGUF input: re-quantize tensors that are already quantized (loses quality).
    #[arg(long)]
    allow_requantize: bool,
    /// How integer codes are chosen (the list comes from the method registry; see `method_help`).
    #[arg(long, default_value = "rtn", value_parser = quantsmith::calib::parse_method)]
    method: quantsmith::config::Method,
    /// Layout of integer safetensors outputs: compressed-tensors (pack-quantized), gptq
    /// (AutoGPTQ v1: qweight/qzeros/scales/g_idx + quantize_config.json; symmetric 2/4/8 bits),
    /// or awq (AutoAWQ GEMM: qweight/qzeros/scales; int4 with zero points).
    #[arg(long = "format", default_value = "compressed-tensors", value_parser = quantsmith::config::IntFormat::parse)]
    int_format: quantsmith::config::IntFormat,
    /// GPTQ on integer targets: search each group's clipping (min/max shrunk by up to 20 %)
    /// for the least |x - q|^2.4, as the reference quantizer's mse option.
    #[arg(long)]
    mse_clip: bool,
    /// Calibration text for --method: plain text or JSONL with a "text" field. Without it the
    /// model writes its own: --calib-samples sequences (and a tenth more held out) of
    /// --calib-seq-len tokens (BOS, a seeded token from across the vocabulary, then sampled from
    /// the model at temperature 1), seeded by --seed.
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512)]
    calib_seq_len: usize,
    /// Seed for choosing calibration windows.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where each layer's calibration inputs come from: `quantized` (the default; the layers
    /// before it as quantized by this run, as GPTQ and AutoGPTQ do) or `float` (the float
    /// model's, as llm-compressor's basic pipeline). With `float`, the jobs of a batch that
    /// calibrate one model on the same tokens share one pass over its layers.
    #[arg(long, default_value = "quantized", value_name = "quantized|float", value_parser = quantsmith::config::CalibInputs::parse)]
    calib_inputs: quantsmith::config::CalibInputs,
    /// Mixtures of experts: every calibration token feeds every expert's statistics (as
    /// llm-compressor's calibrate_all_experts), not only the tokens the router sends it. Each
    /// layer's output still follows the router. Without it, an expert the router sends fewer
    /// than 16 tokens keeps round to nearest (listed in the report).
    #[arg(long)]
    calib_all_experts: bool,
    /// GPTQ: quantize columns by decreasing activation energy. `static` (the default): groups
    /// stay consecutive columns; `group`: groups follow the activation order, stored as a g_idx
    /// (compressed-tensors actorder "group", GPTQ desc_act).
    #[arg(long, num_args = 0..=1, default_missing_value = "static", value_name = "static|group", value_parser = ["static", "group"])]
    act_order: Option<String>,
    /// GPTQ: Hessian damping relative to its mean diagonal (raised automatically if needed).
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// signround: signed gradient steps per decoder layer; 0 writes the importance-weighted
    /// scale/min search alone (AutoRound's iters=0; not llama-quantize's bytes).
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// signround: learning rate of the rounding offsets and clipping factors (default
    /// 1/--iters), decayed linearly to 0.
    #[arg(long)]
    lr: Option<f64>,
    /// signround: calibration sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// signround: the rounding it starts from: the importance-weighted scale/min search
    /// (search), round to nearest on the plain grid (rtn, as AutoRound's tuned mode), GPTQ's
    /// codes on the same inputs (gptq), or GPTQ's error feedback on the search's grid
    /// (search+gptq; with --iters 0 the best zero-step mode, docs/QUALITY.md).
    #[arg(long, default_value = "search", value_parser = quantsmith::config::SignRoundInit::parse)]
    init: quantsmith::config::SignRoundInit,
    /// signround: what a tuned layer's output is compared with: the float model's own output at
    /// that layer (model, AutoRound's; keeps a second stream of activations) or the float layer
    /// on the inputs the quantized layer sees (layer, as GPTQ measures its error).
    #[arg(long, default_value = "model", value_parser = quantsmith::config::SignRoundTarget::parse)]
    tune_target: quantsmith::config::SignRoundTarget,
    /// AWQ: candidate scales x_mean^r / w_mean^(1-r) (duo, the default of AutoAWQ and
    /// llm-compressor), x_mean^r (plain), or half the grid each way (both).
    #[arg(long, default_value = "duo", value_parser = quantsmith::qs_numeric_types::awq::Scaling::parse)]
    awq_scaling: quantsmith::qs_numeric_types::awq::Scaling,
    /// AWQ: calibration tokens per layer the scale and clipping searches run on (rounded up to
    /// whole sequences).
    #[arg(long, default_value_t = 2048)]
    awq_tokens: usize,
    /// GGUF: split into files of at most SIZE of tensor data (e.g. 2G, 500M), named as
    /// llama.cpp's gguf-split names them.
    #[arg(long, value_name = "SIZE", value_parser = quantsmith::config::parse_size)]
    split_max_size: Option<u64>,
    /// GGUF: type of output.weight (and of tied embeddings), as llama-quantize's option.
    #[arg(long, value_name = "TYPE", value_parser = quantsmith::config::parse_ggml_type)]
    output_tensor_type: Option<quantsmith::qs_numeric_types::GgmlType>,
    /// GGUF: type of token_embd.weight, as llama-quantize's option.
    #[arg(long, value_name = "TYPE", value_parser = quantsmith::config::parse_ggml_type)]
    token_embedding_type: Option<quantsmith::qs_numeric_types::GgmlType>,
    /// GGUF: one type for every quantizable tensor instead of llama-quantize's mixture
    /// (as llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// GGUF: llama.cpp pre-tokenizer name to write when it is not recognised (e.g. llama-bpe).
    #[arg(long, value_name = "NAME")]
    tokenizer_pre: Option<String>,
}

/// Writes a report (temporary, then rename: a failed or interrupted write leaves nothing).
fn write_report(path: &Path, json: &str) -> Result<()> {
    quantsmith::output::write_file(path, json.as_bytes()).context("writing report")
}

/// Checks up front that each report (`--report`, `eval --json`, `--logits`) can be written
/// once the work is done: not an input, not another output, its folder writable.
fn check_reports(reports: &[&Path], inputs: &[PathBuf]) -> Result<()> {
    for (i, r) in reports.iter().enumerate() {
        let others: Vec<PathBuf> = reports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p.to_path_buf())
            .collect();
        quantsmith::output::check_writable(r, inputs, &others)?;
    }
    Ok(())
}

/// Standard output was closed by its reader (`quantize inspect … | head`): not an error, the
/// command stops quietly with exit code 0.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes results to standard output. Unlike `println!` (which panics), a failed write is an
/// error: a closed pipe is [`StdoutClosed`], anything else (a full disk) a one-line error.
fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("writing to standard output: {e}")),
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove every temporary output still being written, then exit
/// with 128 + the signal's number (130, 143, 129), as a shell reports a process it killed.
/// signal-hook rather than ctrlc: ctrlc's handler is not told which signal came, so the exit
/// code could not say it.
fn clean_up_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                quantsmith::output::remove_temporaries_then(|| {
                    let name = match sig {
                        SIGINT => "SIGINT",
                        SIGTERM => "SIGTERM",
                        _ => "SIGHUP",
                    };
                    let _ = writeln!(
                        std::io::stderr(),
                        "error: interrupted by {name}; partial outputs removed"
                    );
                    std::process::exit(128 + sig)
                })
            }
        })?;
    Ok(())
}

fn regexes(v: &[String]) -> Result<Vec<regex::Regex>> {
    v.iter()
        .map(|s| regex::Regex::new(s).with_context(|| format!("bad regex '{s}'")))
        .collect()
}

/// The format of a `--report` file (by extension), checked before any work is done.
fn report_format(report: Option<&Path>, dry_run: bool) -> Result<Option<ReportFormat>> {
    let Some(p) = report else {
        return Ok(None);
    };
    let f = ReportFormat::from_path(p).map_err(anyhow::Error::msg)?;
    if dry_run && f != ReportFormat::Json {
        anyhow::bail!("{}: the --dry-run plan is written as JSON", p.display());
    }
    Ok(Some(f))
}

/// The library's configuration from the command line (what a batch manifest's job becomes too).
fn config_of(a: &RunArgs) -> Result<QuantizeConfig> {
    let model = a.model.clone().context("MODEL is required")?;
    let (target, mixture) = a.to.context("--to is required")?;
    let mut cfg = QuantizeConfig::new(&model, target);
    cfg.mixture = mixture;
    cfg.pure = a.pure;
    cfg.imatrix = a.imatrix.clone();
    cfg.imatrix_from = a.imatrix_from.clone();
    cfg.allow_requantize = a.allow_requantize;
    cfg.split_max_bytes = a.split_max_size;
    cfg.output_tensor_type = a.output_tensor_type;
    cfg.method = a.method;
    cfg.int_format = a.int_format;
    cfg.mse_clip = a.mse_clip;
    cfg.calib = a.calib.clone();
    cfg.calib_samples = a.calib_samples;
    cfg.calib_seq_len = a.calib_seq_len;
    cfg.seed = a.seed;
    cfg.calib_inputs = a.calib_inputs;
    cfg.calib_all_experts = a.calib_all_experts;
    cfg.act_order = a.act_order.is_some();
    cfg.act_order_group = a.act_order.as_deref() == Some("group");
    cfg.damp = a.damp;
    cfg.signround_iters = a.iters;
    cfg.signround_lr = a.lr;
    cfg.signround_batch = a.batch;
    cfg.signround_init = a.init;
    cfg.signround_target = a.tune_target;
    cfg.awq_scaling = a.awq_scaling;
    cfg.awq_tokens = a.awq_tokens;
    cfg.token_embedding_type = a.token_embedding_type;
    cfg.output = a.output.clone();
    cfg.group = a.group;
    cfg.granularity = a.granularity;
    cfg.block = a.block;
    cfg.asymmetric = a.asym;
    cfg.include = regexes(&a.include)?;
    cfg.exclude = regexes(&a.exclude)?;
    cfg.tensor_types = a
        .tensor_type
        .iter()
        .map(|s| parse_tensor_type(s).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--tensor-type")?;
    cfg.clamp = a.clamp;
    cfg.allow_nonfinite = a.allow_nonfinite;
    cfg.force = a.force;
    cfg.dry_run = a.dry_run;
    cfg.report = a.report.clone();
    cfg.threads = a.threads;
    cfg.keep_names = a.keep_names;
    cfg.tokenizer_pre = a.tokenizer_pre.clone();
    cfg.shard = a.shard;
    cfg.size_target = match (a.target_bpw, a.target_size) {
        (Some(b), _) if !(b.is_finite() && b > 0.0) => {
            return Err(Usage("--target-bpw must be a positive number".into()).into())
        }
        (Some(b), _) => Some(quantsmith::allocate::SizeTarget::Bpw(b)),
        (None, Some(n)) => Some(quantsmith::allocate::SizeTarget::Bytes(n)),
        (None, None) => None,
    };
    if !a.candidates.is_empty() && cfg.size_target.is_none() {
        return Err(Usage("--candidates applies with --target-bpw or --target-size".into()).into());
    }
    cfg.candidates = a.candidates.clone();
    // an importance matrix weights ggml blocks: a usage error on any other output
    if cfg.imatrix.is_some() || cfg.imatrix_from.is_some() {
        let other = quantsmith::plan::output_for(&cfg)
            .is_ok_and(|(k, _)| k != quantsmith::OutputKind::Gguf);
        if other {
            return Err(Usage("--imatrix and --imatrix-from apply to GGUF outputs".into()).into());
        }
    }
    Ok(cfg)
}

/// Quality gates were violated: the output and the report are written, the violations listed;
/// the process exits with [`EXIT_GATE`].
#[derive(Debug)]
struct GateFailed(Vec<String>);

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "quality gates failed: {n} violation{}",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for GateFailed {}

/// Options that do not work together, found after clap's parsing: exit code 2, as clap's own.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Exit codes (README): 0 done, 1 could not run, 2 bad command line (clap), 3 a quality gate
/// failed (everything was written), 128 + N killed by signal N.
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_GATE: u8 = 3;

/// Checks up front that an evaluation text can be read.
fn check_eval_text(g: &quantsmith::gates::Gates) -> Result<()> {
    if let Some(e) = &g.eval {
        std::fs::metadata(&e.text).with_context(|| format!("--eval-text {}", e.text.display()))?;
    }
    Ok(())
}

/// Applies the gates to a finished report: the evaluation they ask for, then the limits.
fn gate(
    g: &quantsmith::gates::Gates,
    input: &Path,
    threads: Option<usize>,
    report: &mut quantsmith::Report,
) -> Result<bool> {
    quantsmith::gates::apply(g, input, threads, report)
        .with_context(|| format!("evaluating {}", report.output))
}

/// What a size target chose: the budget, the bytes used and the types, counted.
fn allocation_line(a: &quantsmith::allocate::Allocation) -> String {
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in &a.tensors {
        *by.entry(t.storage.as_str()).or_default() += 1;
    }
    let types: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "size target {}: {} of {} bytes for {} tensors ({}), predicted error {:.4e}",
        a.target,
        a.allocated_bytes,
        a.budget_bytes,
        a.tensors.len(),
        types.join(", "),
        a.predicted_error
    )
}

/// The tool's version, this command line and the inputs' fingerprints, for the report.
fn run_info(inputs: &[PathBuf]) -> quantsmith::report::RunInfo {
    let argv = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    quantsmith::report::RunInfo::new(argv, inputs)
}

/// After the report is written and shown: the violations, as an error.
fn gate_result(report: &quantsmith::Report) -> Result<()> {
    match &report.gates {
        Some(g) if !g.passed => {
            Err(GateFailed(g.violations.iter().map(|v| v.to_string()).collect()).into())
        }
        _ => Ok(()),
    }
}

fn run(a: RunArgs) -> Result<()> {
    let report_fmt = report_format(a.report.as_deref(), a.dry_run)?;
    let gates = a.gates.gates()?;
    if a.shard.is_some() && gates.eval.is_some() {
        return Err(Usage(
            "--eval-text evaluates a whole model; a --shard writes part of one".into(),
        )
        .into());
    }
    check_eval_text(&gates)?;
    let cfg = config_of(&a)?;
    let model = cfg.input.clone();

    let bar = Bar::new(a.quiet || a.json);
    let outcome = quantsmith::quantize(&cfg, &bar)
        .with_context(|| format!("quantizing {}", model.display()))?;
    // the report first: it is part of the result, the summary on stdout is not
    match outcome.report {
        None => {
            let rows = outcome.plan.rows();
            let json = serde_json::to_string_pretty(&rows)?;
            if let Some(p) = &a.report {
                write_report(p, &json)?;
            }
            if a.json {
                out(&(json + "\n"))?;
            } else if !a.quiet {
                let w = rows
                    .iter()
                    .map(|r| r.tensor.len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                let mut s = String::new();
                writeln!(
                    s,
                    "plan: {} -> {}",
                    model.display(),
                    outcome.plan.output.display()
                )?;
                writeln!(
                    s,
                    "{:<w$}  {:<14} {:<22} {:>12} {:>12}",
                    "tensor", "shape", "storage", "bytes in", "bytes out"
                )?;
                for r in &rows {
                    writeln!(
                        s,
                        "{:<w$}  {:<14} {:<22} {:>12} {:>12}{}",
                        r.tensor,
                        format!("{:?}", r.shape),
                        r.storage,
                        r.bytes_in,
                        r.bytes_out,
                        r.note
                            .as_ref()
                            .map(|n| format!("  ({n})"))
                            .unwrap_or_default()
                    )?;
                }
                let (bi, bo): (usize, usize) = rows
                    .iter()
                    .fold((0, 0), |(x, y), r| (x + r.bytes_in, y + r.bytes_out));
                writeln!(
                    s,
                    "total: {} tensors, {bi} -> {bo} bytes (dry run: nothing written)",
                    rows.len()
                )?;
                if let Some(al) = &outcome.allocation {
                    writeln!(s, "{}", allocation_line(al))?;
                }
                out(&s)?;
            }
        }
        Some(mut report) => {
            let mut inputs = quantsmith::input_paths(&model);
            inputs.extend(
                cfg.calib
                    .iter()
                    .chain(&cfg.imatrix)
                    .chain(&cfg.imatrix_from)
                    .cloned(),
            );
            inputs.extend(gates.eval.iter().map(|e| e.text.clone()));
            report.run = Some(run_info(&inputs));
            gate(&gates, &model, cfg.threads, &mut report)?;
            if let (Some(p), Some(f)) = (&a.report, report_fmt) {
                write_report(p, &report.render(f))?;
            }
            if a.json {
                out(&(report.to_json() + "\n"))?;
            } else if !a.quiet {
                let mut s = report.to_table();
                if let Some(al) = &outcome.allocation {
                    writeln!(s, "{}", allocation_line(al))?;
                }
                for f in &outcome.files {
                    writeln!(s, "wrote {}", f.display())?;
                }
                if let Some(mb) = peak_rss_mb() {
                    writeln!(s, "peak memory (RSS): {mb} MB")?;
                }
                out(&s)?;
            }
            gate_result(&report)?;
        }
    }
    Ok(())
}

/// `--to`'s help: the safetensors targets, then every GGUF file type the registry knows.
fn target_help() -> String {
    format!(
        "Target: f32, f16, bf16, int8, int4, int3, int2, fp8 (E4M3), fp8-e5m2 (safetensors); {} (GGUF: llama-quantize's file types; q3_k/q4_k/q5_k = their _m mixtures)",
        quantsmith::mixture::Ftype::names()
    )
}

/// `--method`'s help: round to nearest, then every registered calibration method.
fn method_help() -> String {
    let names: Vec<&str> = quantsmith::calib::METHODS
        .iter()
        .map(|m| m.name())
        .collect();
    format!(
        "How integer codes are chosen: rtn (round to nearest) or a calibrated method ({}), run layer by layer on CPU",
        names.join(", ")
    )
}

/// Tells glibc's allocator to keep freed memory for reuse instead of handing it back to the
/// kernel at once: blocks under 256 MB from its heaps rather than fresh mappings, and no trim
/// of a heap's free top below 2 GB. Learned rounding's steps allocate and free the same tens of
/// megabytes of activations and gradients every step; by default each came back as fresh
/// zeroed pages (SmolLM2, 10 steps × 4 sequences: 28 s of 290 s CPU in the kernel; 227 s wall
/// with these settings through GLIBC_TUNABLES against 261 s without). Peak RSS is unchanged
/// (the streaming conversion of the 7B-shaped one-layer checkpoint: 98–103 MB either way).
/// Other platforms keep their defaults.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two allocator parameters; called first thing in main, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    keep_freed_memory();
    // without it an interrupted run leaves its temporaries (a stale one is removed by the next
    // run to the same target); the run itself does not depend on it
    let _ = clean_up_on_signals();
    // https://no-color.org: set and not empty turns colour off (only clap's help and errors
    // have any; the progress bar has none)
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let matches = match Cli::command()
        .color(if no_color {
            clap::ColorChoice::Never
        } else {
            clap::ColorChoice::Auto
        })
        .mut_arg("to", |a| a.help(target_help()))
        .mut_arg("method", |a| a.help(method_help()))
        .try_get_matches()
    {
        Ok(m) => m,
        // --help, --version: through `out` (clap's own printing ignores a failed write)
        Err(e) if !e.use_stderr() => {
            let text = if std::io::stdout().is_terminal() && !no_color {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            return exit_code(out(&text));
        }
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let r = match cli.command {
        Some(Cmd::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "quantize", &mut script);
            out(&String::from_utf8_lossy(&script))
        }
        Some(Cmd::Batch {
            manifest,
            shard,
            fail_fast,
            force,
            dry_run,
            summary,
            merge_summaries,
            json,
            threads,
            quiet,
        }) => (|| {
            let sum = match manifest {
                None => {
                    let parts = merge_summaries
                        .iter()
                        .map(|p| {
                            let t = std::fs::read_to_string(p)
                                .with_context(|| format!("summary {}", p.display()))?;
                            serde_json::from_str(&t)
                                .with_context(|| format!("summary {}", p.display()))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    quantsmith::batch::merge(parts).context("merging summaries")?
                }
                Some(m) => {
                    let jobs = batch::jobs(&m)?;
                    if let Some(p) = &summary {
                        let mut inputs: Vec<PathBuf> = vec![m.clone()];
                        for j in &jobs {
                            inputs.extend(j.inputs());
                        }
                        check_reports(&[p.as_path()], &inputs)?;
                    }
                    let opts = quantsmith::batch::Options {
                        force,
                        fail_fast,
                        shard,
                        dry_run,
                        threads,
                    };
                    let bar = Bar::new(quiet || json);
                    let mut err = std::io::stderr();
                    quantsmith::batch::run(&jobs, &opts, &bar, &mut |e| {
                        if quiet || json {
                            return;
                        }
                        // (progress on standard error: a failed write there is not fatal)
                        let _ = match e {
                            quantsmith::batch::Event::Start { i, n, job } => writeln!(
                                err,
                                "[{}/{n}] {}: {} -> {} ({})",
                                i + 1,
                                job.name,
                                job.config.input.display(),
                                job.config
                                    .output
                                    .as_deref()
                                    .unwrap_or(Path::new(""))
                                    .display(),
                                job.target_name()
                            ),
                            quantsmith::batch::Event::Done { i, n, summary: s } => writeln!(
                                err,
                                "[{}/{n}] {}: {}{}",
                                i + 1,
                                s.name,
                                match (&s.error, s.skipped) {
                                    (Some(e), _) => format!("failed: {e}"),
                                    (None, true) => "up to date, skipped".into(),
                                    (None, false) => {
                                        format!("{} in {:.1} s", s.status.as_str(), s.seconds)
                                    }
                                },
                                if s.violations.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({} gate violations)", s.violations.len())
                                }
                            ),
                        };
                    })
                }
            };
            let text = serde_json::to_string_pretty(&sum)? + "\n";
            if let Some(p) = &summary {
                write_report(p, &text)?;
            }
            if json {
                out(&text)?;
            } else if !quiet {
                out(&sum.to_table())?;
            }
            let c = &sum.counts;
            // a dry run ran nothing: it exits 0 once the manifest is valid
            if dry_run {
                return Ok(());
            }
            if c.failed > 0 {
                anyhow::bail!("{} of {} jobs failed", c.failed, c.jobs);
            }
            if c.gate_failed > 0 {
                return Err(GateFailed(
                    sum.jobs
                        .iter()
                        .flat_map(|j| j.violations.iter().map(move |v| format!("{}: {v}", j.name)))
                        .collect(),
                )
                .into());
            }
            Ok(())
        })(),
        Some(Cmd::Diff {
            a,
            b,
            against,
            report,
            json,
            threads,
            quiet,
        }) => (|| {
            let mut inputs = [quantsmith::input_paths(&a), quantsmith::input_paths(&b)].concat();
            if let Some(o) = &against {
                inputs.extend(quantsmith::input_paths(o));
            }
            check_reports(report.as_deref().as_slice(), &inputs).context("diff")?;
            let fmt = report_format(report.as_deref(), false).context("diff")?;
            if let (Some(p), Some(f)) = (&report, fmt) {
                if !matches!(f, ReportFormat::Json | ReportFormat::Markdown) {
                    return Err(
                        Usage(format!("{}: a diff report is .json or .md", p.display())).into(),
                    );
                }
            }
            let bar = Bar::new(quiet || json);
            let d = quantsmith::diff::diff(&a, &b, against.as_deref(), threads, &bar)
                .with_context(|| format!("comparing {} with {}", b.display(), a.display()))?;
            if let (Some(p), Some(f)) = (&report, fmt) {
                write_report(p, &d.render(f).map_err(anyhow::Error::msg)?)?;
            }
            if json {
                out(&(d.to_json() + "\n"))?;
            } else if !quiet {
                out(&d.to_table())?;
            }
            Ok(())
        })(),
        Some(Cmd::Inspect { file, json }) => quantsmith::inspect(&file)
            .with_context(|| format!("inspecting {}", file.display()))
            .and_then(|i| {
                if json {
                    out(&(serde_json::to_string_pretty(&i)? + "\n"))
                } else {
                    out(&i.to_text())
                }
            }),
        Some(Cmd::Verify {
            original,
            quantized,
            report,
            json,
            gates,
            threads,
            quiet,
        }) => (|| {
            let inputs = [
                quantsmith::input_paths(&original),
                quantsmith::input_paths(&quantized),
            ]
            .concat();
            let gates = gates.gates()?;
            check_eval_text(&gates)?;
            check_reports(report.as_deref().as_slice(), &inputs).context("verify")?;
            let report_fmt = report_format(report.as_deref(), false).context("verify")?;
            let bar = Bar::new(quiet || json);
            let mut r =
                quantsmith::verify(&original, &quantized, threads, &bar).context("verify")?;
            r.run = Some(run_info(&inputs));
            gate(&gates, &original, threads, &mut r)?;
            if let (Some(p), Some(f)) = (&report, report_fmt) {
                write_report(p, &r.render(f))?;
            }
            if json {
                out(&(r.to_json() + "\n"))?;
            } else if !quiet {
                out(&r.to_table())?;
            }
            gate_result(&r)
        })(),
        Some(Cmd::Export {
            model,
            output,
            dtype,
            force,
            json,
            threads,
            quiet,
        }) => (|| {
            let dtype = match Target::parse(&dtype).map_err(anyhow::Error::msg)? {
                Target::Float(d) => d,
                _ => anyhow::bail!("--dtype must be f32, f16 or bf16"),
            };
            let bar = Bar::new(quiet || json);
            let cfg = quantsmith::export::ExportConfig {
                dtype,
                force,
                threads,
            };
            let n = quantsmith::export::export(&model, &output, &cfg, &bar)
                .with_context(|| format!("exporting {}", model.display()))?;
            if json {
                let doc = serde_json::json!({
                    "command": "export",
                    "input": model.display().to_string(),
                    "output": output.display().to_string(),
                    "tensors": n,
                });
                out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
            } else if !quiet {
                out(&format!("wrote {} ({n} tensors)\n", output.display()))?;
            }
            Ok(())
        })(),
        Some(Cmd::Imatrix {
            model,
            output,
            calib,
            ctx,
            chunks,
            force,
            json,
            threads,
            quiet,
        }) => (|| {
            let cfg = quantsmith::imatrix::ImatrixConfig {
                model: model.clone(),
                output: output.clone(),
                calib,
                ctx,
                chunks,
                threads,
                force,
            };
            let r = quantsmith::imatrix::imatrix(&cfg).with_context(|| {
                format!("computing the importance matrix of {}", model.display())
            })?;
            if json {
                let doc = serde_json::json!({
                    "command": "imatrix",
                    "input": model.display().to_string(),
                    "output": output.display().to_string(),
                    "tensors": r.entries,
                    "chunks": r.chunks,
                    "ctx": r.ctx,
                });
                out(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
            } else if !quiet {
                out(&format!(
                    "wrote {} ({} tensors, {} chunks of {} tokens)\n",
                    output.display(),
                    r.entries,
                    r.chunks,
                    r.ctx
                ))?;
            }
            Ok(())
        })(),
        Some(Cmd::Eval {
            model,
            against,
            text,
            ctx,
            chunks,
            json,
            logits,
            nll,
            threads,
            quiet,
        }) => (|| {
            let mut inputs = quantsmith::input_paths(&model);
            if let Some(a) = &against {
                inputs.extend(quantsmith::input_paths(a));
            }
            inputs.push(text.clone());
            let to_stdout = json.as_deref() == Some(Path::new("-"));
            let json = json.filter(|_| !to_stdout);
            let reports: Vec<&Path> = json
                .iter()
                .chain(&logits)
                .chain(&nll)
                .map(|p| p.as_path())
                .collect();
            check_reports(&reports, &inputs)
                .with_context(|| format!("evaluating {}", model.display()))?;
            let cfg = quantsmith::eval::EvalConfig {
                model: model.clone(),
                against,
                text,
                ctx,
                chunks,
                threads,
                logits,
                nll,
            };
            let r = quantsmith::eval::eval(&cfg)
                .with_context(|| format!("evaluating {}", model.display()))?;
            if let Some(p) = &json {
                write_report(p, &(serde_json::to_string_pretty(&r)? + "\n"))?;
            }
            if to_stdout {
                out(&(serde_json::to_string_pretty(&r)? + "\n"))?;
            } else if !quiet {
                let mut s = String::new();
                writeln!(
                    s,
                    "{} chunks of {} tokens, {} predictions scored",
                    r.chunks, r.ctx, r.tokens_scored
                )?;
                writeln!(s, "PPL          {:.4} ± {:.4}", r.ppl, r.ppl_se)?;
                if let (Some(pb), Some(lr), Some(lrse), Some(kl), Some(klse), Some(km), Some(t1)) = (
                    r.ppl_against,
                    r.ln_ppl_ratio,
                    r.ln_ppl_ratio_se,
                    r.kld_mean,
                    r.kld_se,
                    r.kld_max,
                    r.top1_agreement,
                ) {
                    writeln!(s, "PPL original {pb:.4}  (ratio {:.4})", r.ppl / pb)?;
                    writeln!(s, "ln(PPL/PPL original) {lr:.6} ± {lrse:.6}")?;
                    writeln!(s, "mean KLD     {kl:.6} ± {klse:.6}  (max {km:.4})")?;
                    writeln!(s, "same top-1   {:.2} %", 100.0 * t1)?;
                }
                out(&s)?;
            }
            Ok(())
        })(),
        None => run(cli.run),
    };
    exit_code(r)
}

/// 0; 3 after the violated gates, one per line; or 1 after the error's one line (a closed
/// standard output is no error).
fn exit_code(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // the reader of our output went away (`| head`): it wanted no more, as most Unix tools
        // treat it (ripgrep exits 0 too; a C tool killed by SIGPIPE shows 141)
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // (not eprintln!, which panics when standard error is closed too)
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e:#}");
            if let Some(g) = e.chain().find_map(|c| c.downcast_ref::<GateFailed>()) {
                for v in &g.0 {
                    let _ = writeln!(err, "  {v}");
                }
                return std::process::ExitCode::from(EXIT_GATE);
            }
            if e.chain().any(|c| c.is::<Usage>()) {
                return std::process::ExitCode::from(EXIT_USAGE);
            }
            std::process::ExitCode::from(EXIT_ERROR)
        }
    }
}
