#!/usr/bin/env bash
# HF folder -> Q4_K_M GGUF: quantsmith in one pass, vs llama.cpp's converter (HF -> F16 GGUF)
# then llama-quantize (F16 -> Q4_K_M), on the same weights and thread count.
#   bash benches/bench_gguf.sh        (after .ci/run has built llama.cpp and its converter venv)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/qs-bench}"
THREADS="${THREADS:-2}"
CACHE="${QS_CACHE:-$HOME/.cache/quantsmith}"
LQ="${LLAMA_QUANTIZE:-$CACHE/llama.cpp/bin/llama-quantize}"
CONVERT_PY="${QS_CONVERT_PYTHON:-$CACHE/venv-convert/bin/python}"
LLAMA_SRC="${QS_LLAMA_SRC:-$CACHE/llama.cpp/src}"
mkdir -p "$BENCH_DIR"
cargo build --release --quiet --bin quantize --example gen_checkpoint
T="${CARGO_TARGET_DIR:-target}/release"
Q="$T/quantize"
M="$BENCH_DIR/llama-1g-hf"
[ -f "$M/model.safetensors" ] || "$T/examples/gen_checkpoint" "$M" 1
size=$(stat -c %s "$M/model.safetensors")
run() { sync; /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }
rm -f "$BENCH_DIR"/b-*.gguf
read -r w1 r1 < <(run "$Q" "$M" --to q4_k_m -o "$BENCH_DIR/b-ours.gguf" -j "$THREADS" -q)
read -r w2 r2 < <(run "$Q" "$M" --to f16 -o "$BENCH_DIR/b-f16.gguf" -j "$THREADS" -q)
# the converter is single-threaded Python; the fixture's vocabulary needs QS_PRE (see
# tests/oracle/convert_hf.py)
read -r w4 r4 < <(QS_PRE=gpt-2 run "$CONVERT_PY" tests/oracle/convert_hf.py "$LLAMA_SRC" "$M" --outfile "$BENCH_DIR/b-conv-f16.gguf" --outtype f16)
# byte-identical, or which metadata keys / tensors differ
PY="${QS_PYTHON:-$CACHE/venv/bin/python}"
gguf_diff() {
  cmp -s "$1" "$2" && { echo "byte-identical"; return; }
  "$PY" -c "
import gguf, sys, numpy as np
a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
kv = lambda r: {k: f.contents() for k, f in r.fields.items() if not k.startswith('GGUF.')}
ka, kb = kv(a), kv(b)
keys = [k for k in sorted(set(ka) | set(kb)) if ka.get(k) != kb.get(k)]
ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
ts = [n for n in sorted(set(ta) | set(tb)) if n not in ta or n not in tb or ta[n].tensor_type != tb[n].tensor_type or not np.array_equal(ta[n].data, tb[n].data)]
print('differ in keys', keys, 'tensors', ts)" "$1" "$2"
}
same_f16="F16: $(gguf_diff "$BENCH_DIR/b-f16.gguf" "$BENCH_DIR/b-conv-f16.gguf")"
read -r w3 r3 < <(run "$LQ" "$BENCH_DIR/b-conv-f16.gguf" "$BENCH_DIR/b-lq.gguf" Q4_K_M "$THREADS")
same_q="Q4_K_M: $(gguf_diff "$BENCH_DIR/b-ours.gguf" "$BENCH_DIR/b-lq.gguf")"
same=$("$Q" verify "$M" "$BENCH_DIR/b-ours.gguf" --report "$BENCH_DIR/a.json" -q && "$Q" verify "$M" "$BENCH_DIR/b-lq.gguf" --report "$BENCH_DIR/b.json" -q \
  && python3 -c "import json;a=json.load(open('$BENCH_DIR/a.json'));b=json.load(open('$BENCH_DIR/b.json'));print('identical errors' if a['rows']==b['rows'] else 'errors differ')")
echo "input: $(python3 -c "print(f'{$size/1e9:.2f}')") GB bf16, llama-7B-shaped, $THREADS threads ($same; $same_f16; $same_q)"
echo "| pipeline | wall s | peak RSS MB |"
echo "|---|---|---|"
echo "| quantsmith: HF folder -> Q4_K_M GGUF | $w1 | $((r1 / 1024)) |"
echo "| quantsmith: HF folder -> F16 GGUF | $w2 | $((r2 / 1024)) |"
echo "| llama.cpp convert_hf_to_gguf.py: HF folder -> F16 GGUF | $w4 | $((r4 / 1024)) |"
echo "| llama-quantize: F16 GGUF -> Q4_K_M | $w3 | $((r3 / 1024)) |"
echo "| llama.cpp converter + llama-quantize, total | $(python3 -c "print(f'{$w4+$w3:.2f}')") | |"
