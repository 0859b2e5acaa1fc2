#!/usr/bin/env bash
# Speed and memory benchmarks behind docs/PERFORMANCE.md.
#   bash benches/bench.sh            # generates 1 GB and 4 GB bf16 checkpoints in $BENCH_DIR
# Prints markdown rows: peak RSS (GNU time's "Maximum resident set size") and throughput
# against `cat FILE > /dev/null` on the same cached file.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize --example gen_checkpoint
T="${CARGO_TARGET_DIR:-target}/release"
Q="$T/quantize"

for gb in 1 4; do
  f="$BENCH_DIR/ckpt-${gb}g.safetensors"
  [ -f "$f" ] || "$T/examples/gen_checkpoint" "$f" "$gb"
done

secs() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }

echo "| input | target | wall s | peak RSS MB | GB/s in | cat >/dev/null s | ratio | cat >file s | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for gb in 1 4; do
  f="$BENCH_DIR/ckpt-${gb}g.safetensors"
  size=$(stat -c %s "$f")
  cat "$f" > /dev/null   # warm the page cache
  sync
  cat_s=$( { /usr/bin/time -f "%e" cat "$f" > /dev/null; } 2>&1 | tail -1)
  # reading and writing the same bytes through the page cache: the I/O a converter cannot avoid
  catw_s=$( { /usr/bin/time -f "%e" sh -c 'cat "$1" > "$2"' _ "$f" "$BENCH_DIR/cat.out"; } 2>&1 | tail -1)
  rm -f "$BENCH_DIR/cat.out"
  sync
  for tgt in q4_0 q8_0 int4; do
    case $tgt in
      int4) out="$BENCH_DIR/out-int4"; extra=(--group 128) ;;
      *) out="$BENCH_DIR/out-$tgt.gguf"; extra=() ;;
    esac
    rm -rf "$out"
    sync   # flush earlier runs' dirty pages so writeback does not land on this one
    read -r wall rss_kb < <(secs "$Q" "$f" --to "$tgt" "${extra[@]}" -o "$out" -j "$THREADS" -q)
    gbs=$(python3 -c "print(f'{$size/1e9/max($wall,1e-9):.2f}')")
    ratio=$(python3 -c "print(f'{$wall/max($cat_s,1e-9):.1f}x')")
    ratiow=$(python3 -c "print(f'{$wall/max($catw_s,1e-9):.1f}x')")
    echo "| ${gb} GB bf16 ($(python3 -c "print(f'{$size/1e9:.2f}')") GB) | $tgt${extra[*]:+ ${extra[*]}} | $wall | $((rss_kb / 1024)) | $gbs | $cat_s | $ratio | $catw_s | $ratiow |"
    rm -rf "$out"
  done
done
