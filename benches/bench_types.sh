#!/usr/bin/env bash
# Every GGUF type we write: quantsmith (HF folder -> GGUF, one pass) against llama-quantize
# (F16 GGUF -> the same type), same thread count, same run, with and without an importance
# matrix. Prints a markdown table of wall seconds and the ratio llama-quantize / quantsmith.
#   bash benches/bench_types.sh              # the 0.93 GB llama-7B-shaped bf16 folder
#   bash benches/bench_types.sh MODEL_DIR    # any HF folder, e.g. SmolLM2 exported (docs/QUALITY.md)
# Needs llama-quantize built by .ci/run (or LLAMA_QUANTIZE=path). Environment: BENCH_DIR
# (/tmp/qs-bench), THREADS (2), TYPES (all below), IMATRIX (1: also with --imatrix).
# The F16 GGUF llama-quantize reads is our own `--to f16` (the same tensors as llama.cpp's
# converter; docs/PERFORMANCE.md); the importance matrix is `quantize imatrix` on Python's pydoc
# text, one file read by both tools.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
IMATRIX="${IMATRIX:-1}"
CACHE="${QS_CACHE:-$HOME/.cache/quantsmith}"
LQ="${LLAMA_QUANTIZE:-$CACHE/llama.cpp/bin/llama-quantize}"
TYPES="${TYPES:-Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_S Q5_K_S Q6_K IQ4_NL IQ4_XS Q4_K_M Q5_K_M}"
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize --example gen_checkpoint
T="${CARGO_TARGET_DIR:-target}/release"
Q="$T/quantize"
M="${1:-$BENCH_DIR/llama-1g-hf}"
[ -f "$M/config.json" ] || "$T/examples/gen_checkpoint" "$M" 1
name=$(basename "$M")
F16="$BENCH_DIR/$name-f16.gguf"
[ -f "$F16" ] || "$Q" "$M" --to f16 -o "$F16" -j "$THREADS" -q --force
IM="$BENCH_DIR/$name-imatrix.gguf"
if [ "$IMATRIX" = 1 ] && [ ! -f "$IM" ]; then
  TEXT="$BENCH_DIR/pydoc.txt"
  [ -f "$TEXT" ] || python3 -c "import pydoc_data.topics as t
open('$TEXT', 'w').write('\n\n'.join(t.topics[k] for k in sorted(t.topics)))"
  "$Q" imatrix "$M" --calib "$TEXT" --chunks 8 -o "$IM" -j "$THREADS" -q --force
fi
secs() { # command... -> wall seconds
  sync
  /usr/bin/time -f "%e" -o "$BENCH_DIR/t.txt" "$@" > /dev/null 2>&1
  cat "$BENCH_DIR/t.txt"
}
echo "model: $M ($(du -sh "$M/" | cut -f1)), $THREADS threads, $(date -u +%Y-%m-%d)"
echo
echo "| type | quantsmith s | llama-quantize s | ratio | with imatrix: quantsmith s | llama-quantize s | ratio |"
echo "|---|---|---|---|---|---|---|"
for ty in $TYPES; do
  lo=$(echo "$ty" | tr 'A-Z' 'a-z')
  a=$(secs "$Q" "$M" --to "$lo" -o "$BENCH_DIR/b-ours.gguf" -j "$THREADS" -q --force)
  b=$(secs "$LQ" "$F16" "$BENCH_DIR/b-lq.gguf" "$ty" "$THREADS")
  row="| $ty | $a | $b | $(python3 -c "print(f'{$b/$a:.1f}x')")"
  if [ "$IMATRIX" = 1 ]; then
    c=$(secs "$Q" "$M" --to "$lo" --imatrix "$IM" -o "$BENCH_DIR/b-ours.gguf" -j "$THREADS" -q --force)
    d=$(secs "$LQ" --imatrix "$IM" "$F16" "$BENCH_DIR/b-lq.gguf" "$ty" "$THREADS")
    row="$row | $c | $d | $(python3 -c "print(f'{$d/$c:.1f}x')") |"
  else
    row="$row | | | |"
  fi
  echo "$row"
done
rm -f "$BENCH_DIR/b-ours.gguf" "$BENCH_DIR/b-lq.gguf"
