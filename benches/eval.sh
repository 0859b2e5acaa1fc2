#!/usr/bin/env bash
# `quantize eval` against llama-perplexity on the same GGUF, text, context, chunks and threads:
# wall seconds, tokens per second (chunks × context / wall) and the perplexity each reports.
#   bash benches/eval.sh MODEL_DIR TEXT      # e.g. SmolLM2 exported, docs/QUALITY.md's heldout.txt
# The GGUFs are our own conversions of MODEL_DIR (TYPES, default "Q8_0 Q4_K_M F16"). Needs
# llama-perplexity (LLAMA_PERPLEXITY=path, or built from the llama.cpp sources .ci/run fetched:
# `cmake --build ~/.cache/quantsmith/llama.cpp/build --target llama-perplexity`).
# Environment: BENCH_DIR (/tmp/qs-bench), THREADS (2), CHUNKS (16), CTX (512), RUNS (2: each
# tool runs this many times, alternating; the fastest run counts).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:?usage: benches/eval.sh MODEL_DIR TEXT}
TEXT=${2:?usage: benches/eval.sh MODEL_DIR TEXT}
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
CHUNKS="${CHUNKS:-16}"
CTX="${CTX:-512}"
RUNS="${RUNS:-2}"
TYPES="${TYPES:-Q8_0 Q4_K_M F16}"
CACHE="${QS_CACHE:-$HOME/.cache/quantsmith}"
LP="${LLAMA_PERPLEXITY:-$CACHE/llama.cpp/build/bin/llama-perplexity}"
[ -x "$LP" ] || cmake --build "$CACHE/llama.cpp/build" -j "$THREADS" --target llama-perplexity > /dev/null
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize
Q="${CARGO_TARGET_DIR:-target}/release/quantize"
name=$(basename "$M")
secs() { # log command... -> wall seconds (the command's output in log)
  local log=$1; shift
  /usr/bin/time -f "%e" -o "$BENCH_DIR/t.txt" "$@" > "$log" 2>&1
  cat "$BENCH_DIR/t.txt"
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }
tokens=$((CHUNKS * CTX))
echo "| GGUF | llama-perplexity s | quantize eval s | llama-perplexity tok/s | quantize eval tok/s | ratio | PPL (llama / ours) |"
echo "|---|---|---|---|---|---|---|"
for t in $TYPES; do
  lt=$(echo "$t" | tr 'A-Z' 'a-z')
  G="$BENCH_DIR/$name-$lt.gguf"
  [ -f "$G" ] || "$Q" "$M" --to "$lt" -o "$G" -j "$THREADS" -q --force
  a="" b=""
  for _ in $(seq "$RUNS"); do
    a=$(min "$(secs "$BENCH_DIR/lp.log" "$LP" -m "$G" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t "$THREADS")" "$a")
    b=$(min "$(secs "$BENCH_DIR/qe.log" "$Q" eval "$G" --text "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" -j "$THREADS")" "$b")
  done
  pa=$(grep -o 'PPL = [0-9.]*' "$BENCH_DIR/lp.log" | awk '{print $3}')
  pb=$(grep -E '^PPL ' "$BENCH_DIR/qe.log" | awk '{print $2}')
  awk -v t="$t" -v a="$a" -v b="$b" -v n="$tokens" -v pa="$pa" -v pb="$pb" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.0f | %.0f | %.2fx | %s / %s |\n", t, a, b, n / a, n / b, a / b, pa, pb }'
done
