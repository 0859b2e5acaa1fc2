#!/usr/bin/env bash
# compressed-tensors outputs (int4, int8, fp8) against reading the input once through the page
# cache (`cat` of the safetensors files, already cached): wall seconds and their ratio.
#   bash benches/bench_ct.sh              # the 0.93 GB llama-7B-shaped bf16 folder
#   bash benches/bench_ct.sh MODEL_DIR    # any HF folder
# Environment: BENCH_DIR (/tmp/qs-bench), THREADS (2), RUNS (3: the fastest counts).
# Each run starts after `sync` with no output folder, so no earlier run's dirty pages are
# written back during it.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
RUNS="${RUNS:-3}"
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize --example gen_checkpoint
T="${CARGO_TARGET_DIR:-target}/release"
Q="$T/quantize"
M="${1:-$BENCH_DIR/llama-1g-hf}"
[ -f "$M/config.json" ] || "$T/examples/gen_checkpoint" "$M" 1
OUT="$BENCH_DIR/ct-out"
secs() { # command... -> wall seconds
  /usr/bin/time -f "%e" -o "$BENCH_DIR/t.txt" "$@" > /dev/null 2>&1
  cat "$BENCH_DIR/t.txt"
}
best() { # command... -> the fastest of RUNS runs
  local b="" t
  for _ in $(seq "$RUNS"); do
    rm -rf "$OUT"
    sync
    t=$(secs "$@")
    b=$(awk -v a="$t" -v b="$b" 'BEGIN { print (b == "" || a < b) ? a : b }')
  done
  echo "$b"
}
cat "$M"/*.safetensors > /dev/null
read_s=$(best sh -c "cat '$M'/*.safetensors > /dev/null")
echo "input: $(du -shL "$M" | cut -f1), read through the page cache: $read_s s"
echo
echo "| output | wall s | × read |"
echo "|---|---|---|"
for args in "int4 --group 128" "int4 --group 128 --asym" "int8" "fp8"; do
  # shellcheck disable=SC2086
  t=$(best "$Q" "$M" --to $args -o "$OUT" -j "$THREADS" -q)
  awk -v n="$args" -v t="$t" -v r="$read_s" 'BEGIN { printf "| %s | %.2f | %.1f |\n", n, t, t / r }'
done
rm -rf "$OUT"
