#!/usr/bin/env bash
# Calibration time and memory behind docs/PERFORMANCE.md: RTN (the reference, same run), GPTQ,
# AWQ and AWQ+GPTQ on one model and text, and the speed of the model writing its own
# calibration text.
#   bash benches/calibration.sh                 # a one-layer llama-7B-shaped bf16 folder
#   bash benches/calibration.sh MODEL_DIR TEXT  # e.g. SmolLM2 (docs/QUALITY.md) and calib.txt
# Environment: BENCH_DIR (/tmp/qs-bench), THREADS (2), TO (int4), GROUP (128), SAMPLES (16:
# calibration sequences of 512 tokens for GPTQ; AWQ reads its default 2048 tokens).
# Prints markdown rows: wall and CPU seconds, peak RSS ("Maximum resident set size"), wall
# time as a multiple of RTN's.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
TO="${TO:-int4}"
GROUP="${GROUP:-128}"
SAMPLES="${SAMPLES:-16}"
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize --example gen_checkpoint
T="${CARGO_TARGET_DIR:-target}/release"
Q="$T/quantize"

MODEL="${1:-$BENCH_DIR/layer7b}"
TEXT="${2:-$BENCH_DIR/pydoc.txt}"
if [ $# -eq 0 ]; then
  # 0.93 GB: embeddings, output head and one 4096/11008 llama layer
  [ -d "$MODEL" ] || "$T/examples/gen_checkpoint" "$MODEL" 0.93
  [ -f "$TEXT" ] || python3 -c "import pydoc_data.topics as t
open('$TEXT', 'w').write('\n\n'.join(t.topics[k] for k in sorted(t.topics)))"
fi

run() { # label, args... -> "wall user+sys rss_kb"
  local out="$BENCH_DIR/cal-out"
  rm -rf "$out"
  /usr/bin/time -f "%e %U %S %M" -o "$BENCH_DIR/time.txt" \
    "$Q" "$MODEL" --to "$TO" --group "$GROUP" -o "$out" -j "$THREADS" -q "$@" \
    --report "$BENCH_DIR/report.json" > /dev/null
  rm -rf "$out"
  read -r wall user sys rss < "$BENCH_DIR/time.txt"
  echo "$wall $(python3 -c "print(round($user + $sys, 1))") $rss"
}

echo "| model | method | wall s | CPU s | peak RSS MB | × RTN wall |"
echo "|---|---|---|---|---|---|"
read -r rtn_wall rtn_cpu rtn_rss < <(run)
echo "| $(basename "$MODEL") | RTN $TO g$GROUP | $rtn_wall | $rtn_cpu | $((rtn_rss / 1024)) | 1 |"
for m in awq gptq awq+gptq; do
  read -r wall cpu rss < <(run --method "$m" --calib "$TEXT" --calib-samples "$SAMPLES")
  echo "| $(basename "$MODEL") | $m | $wall | $cpu | $((rss / 1024)) | $(python3 -c "print(f'{$wall / max($rtn_wall, 1e-9):.0f}')") |"
done

# the model writes its own calibration text: tokens per second of generation alone
read -r wall cpu rss < <(run --method awq --calib-samples 4)
python3 - "$BENCH_DIR/report.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["calibration"]
tokens = (c["fit_sequences"] + c["held_sequences"]) * c["seq_len"]
secs = c["generation_secs"]
print(f"\nself-generated calibration text: {tokens} tokens in {secs:.1f} s = {tokens / secs:.1f} tokens/s")
EOF
