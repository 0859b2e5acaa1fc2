#!/usr/bin/env bash
# Runs the fuzz targets (docs/RELIABILITY.md), one at a time, and prints per target the
# executions, coverage and corpus size from libFuzzer's closing lines.
#
#   fuzz/run.sh [TARGET...] [--time SECONDS] [--keep-going]   # default: every target, 60 s each
#   fuzz/run.sh --smoke                                        # CI: build, replay, 15 s each
#                                                              # (fixed libFuzzer seed)
#
# Each run starts from the committed seeds (fuzz/corpus/TARGET, read only) and grows
# fuzz/work/corpus/TARGET (not committed). Crashes, OOMs and timeouts land in
# fuzz/artifacts/TARGET/ (crash-*, oom-*, timeout-*: not committed; a minimised reproducer worth
# keeping is committed there under a descriptive name). Every committed reproducer is replayed
# first: one that still fails fails the run.
# --keep-going: libFuzzer's fork mode (-fork=1 -ignore_crashes/ooms/timeouts), which goes on
# after a finding instead of stopping at the first one.
# Needs a nightly toolchain (rustup's `nightly`); installs cargo-fuzz when it is missing.
# Exit status: 0 when nothing failed, 1 when a target crashed (or a reproducer still fails).
set -euo pipefail
cd "$(dirname "$0")"

ALL=(safetensors_header safetensors_source gguf imatrix spm config tokenizer plan)
TIME=60
SMOKE=0
KEEP_GOING=0
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME="$2"; shift 2 ;;
    --time=*) TIME="${1#--time=}"; shift ;;
    --smoke) SMOKE=1; TIME=15; shift ;;
    --keep-going) KEEP_GOING=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  [ -f "fuzz_targets/$t.rs" ] || { echo "no target '$t' (${ALL[*]})" >&2; exit 2; }
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz/run.sh needs rustup's nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
FUZZ=(rustup run nightly cargo fuzz)

# One build for every target (release with debug assertions, AddressSanitizer).
"${FUZZ[@]}" build -O

mkdir -p work/logs
failed=()

# Committed reproducers: each must now run clean (one run per file, so every failing one is
# named).
for t in "${TARGETS[@]}"; do
  [ -d "artifacts/$t" ] || continue
  for f in "artifacts/$t"/*; do
    case "$(basename "$f")" in crash-*|oom-*|timeout-*|slow-unit-*|'*') continue ;; esac
    log="work/logs/$t.replay.$(basename "$f").log"
    if "${FUZZ[@]}" run -O "$t" "$f" -- -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
      echo "$t: reproducer $f runs clean"
    else
      echo "$t: reproducer $f still fails (fuzz/$log):"
      grep -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | head -2 | sed 's/^/    /'
      failed+=("$f")
    fi
  done
done

opts=(-max_total_time="$TIME" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
[ "$KEEP_GOING" = 1 ] && opts+=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
# CI: the same mutations on every run (a fixed seed), so a smoke failure is not a roll of the dice
[ "$SMOKE" = 1 ] && opts+=(-seed=1)

printf '%-20s %6s %12s %8s %7s %7s %9s  %s\n' target secs executions exec/s cov ft corpus result
for t in "${TARGETS[@]}"; do
  mkdir -p "work/corpus/$t" "artifacts/$t"
  log="work/logs/$t.log"
  before=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  start=$(date +%s)
  set +e
  dict=()
  case "$t" in config|tokenizer|plan|safetensors_source|safetensors_header) dict=(-dict=dicts/json.dict) ;; esac
  "${FUZZ[@]}" run -O "$t" "work/corpus/$t" "corpus/$t" -- "${opts[@]}" "${dict[@]}" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  after=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  # Closing figures: final stats (non-fork), else the last status line (fork mode).
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  status=$(grep -E '^#[0-9]+:?[[:space:]].*cov: ' "$log" | tail -1 || true)
  [ -z "$execs" ] && execs=$(printf '%s' "$status" | sed -n 's/^#\([0-9]*\).*/\1/p')
  [ -z "$rate" ] && rate=$(printf '%s' "$status" | sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p')
  cov=$(printf '%s' "$status" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(printf '%s' "$status" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(find "work/corpus/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]; then
    result=ok
  else
    result="FAILED (exit $rc, $((after - before)) new artifact(s); fuzz/work/logs/$t.log)"
    failed+=("$t")
  fi
  printf '%-20s %6s %12s %8s %7s %7s %9s  %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$corp" "$result"
  if [ "$result" != ok ]; then
    grep -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written to|^artifact_prefix|out-of-memory|ALARM" "$log" | sort | uniq -c | sort -rn | head -6 | sed 's/^/    /'
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} target(s) ran clean"
