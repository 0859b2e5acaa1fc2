#!/bin/bash
# Reference run of llm-compressor (PyPI `llmcompressor`) on CPU, for comparison with
# `quantize MODEL --to int4 --group 64 --method gptq|awq --calib FILE`: wall time, CPU time,
# peak RSS, and the compressed-tensors output scored by `quantize eval`.
#
# usage: benches/llmcompressor.sh [gptq|awq|awq4|awq-layers N|versus [N]|all]   (default: gptq)
#   env: MODEL (HF folder, default /tmp/qrun/smollm2-hf), CALIB (/tmp/qrun/calib.txt),
#        HELDOUT (/tmp/qrun/heldout.txt), OUTDIR (/tmp/qrun), Q (quantize binary),
#        VENV (~/.cache/quantsmith/venv-llmc), THREADS (2), NICE (5)
#
# Settings, matched to quantsmith's defaults (docs/SCHEMES.md):
#   GPTQ: int4 *symmetric* (quantsmith's int4 default; scale = amax/7.5, as compressed-tensors),
#         group 64, targets Linear, lm_head ignored (tied to the embeddings here), dampening
#         0.01, block 128, actorder None (quantsmith quantizes in column order unless
#         --act-order; llm-compressor's own default would be "static"), layer inputs from the
#         already-quantized previous layers (quantization_aware_calibration, the default).
#   AWQ:  int4 *asymmetric* (W4A16_ASYM, as llm-compressor's and AutoAWQ's AWQ; quantsmith's
#         `--method awq` compressed-tensors output is compared with --asym), group 64,
#         duo_scaling=True (default), n_grid 20, then QuantizationModifier (round to nearest).
#   Known differences that remain: llm-compressor 0.14 fixes each group's scale (and zero point)
#   from the *original* weights' min/max (memoryless_minmax observer) before the GPTQ loop, where
#   quantsmith fits them when the loop enters the group, on the GPTQ-updated weights; its AWQ
#   has no clipping search (quantsmith's has) and searches on every calibration window it gets.
#   Calibration: calib text tokenized with tokenizer.json, no BOS, disjoint 512-token windows,
#   the last tenth held out, the rest (88 of 97 for /tmp/qrun/calib.txt) fitted, in text order.
#
# Versions (pinned): llmcompressor 0.14.0.1 requires torch>=2.10,<=2.14 and
# transformers>=5.15,<=5.17 and compressed-tensors==0.19.0.  The PyTorch CPU wheel index is not
# reachable from here, so torch comes from plain PyPI (the CUDA build; it runs on CPU,
# torch.accelerator.is_available() is False); set TORCH_INDEX to use the CPU index instead.
#
# CPU patch: GPTQ needs none.  AWQ: AWQModifier._apply_smoothing calls
# IntermediatesCache.pin_memory() on the cached layer inputs, and Tensor.pin_memory() raises
# without an accelerator ("RuntimeError: Found no NVIDIA driver on your system" with the PyPI
# CUDA build of torch); benches/llmcompressor_run.py replaces IntermediatesCache.pin_memory
# with a no-op when torch.accelerator.is_available() is False (monkeypatch at run time, no
# file in the venv is edited).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-/tmp/qrun/smollm2-hf}
CALIB=${CALIB:-/tmp/qrun/calib.txt}
HELDOUT=${HELDOUT:-/tmp/qrun/heldout.txt}
OUTDIR=${OUTDIR:-/tmp/qrun}
Q=${Q:-/work/target-main/release/quantize}
VENV=${VENV:-$HOME/.cache/quantsmith/venv-llmc}
THREADS=${THREADS:-2}
NICE=${NICE:-5}
PY_PKGS=(llmcompressor==0.14.0.1 torch==2.14.0 transformers==5.17.0 compressed-tensors==0.19.0)

setup() {
  if ! "$VENV/bin/python" -c 'import llmcompressor' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    if [ -n "${TORCH_INDEX:-}" ]; then
      "$VENV/bin/pip" install torch==2.14.0 --index-url "$TORCH_INDEX"
    fi
    "$VENV/bin/pip" install "${PY_PKGS[@]}"
  fi
  "$VENV/bin/pip" list 2>/dev/null |
    grep -E -i '^(torch|transformers|llmcompressor|compressed-tensors|accelerate|datasets|tokenizers) '
}

# run NAME ARGS...: quantize into $OUTDIR/NAME, time it, evaluate it
run() {
  local name=$1; shift
  local out=$OUTDIR/$name log=$OUTDIR/$name.log
  export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
  echo "== $name: $*"
  /usr/bin/time -v -o "$out.time" nice -n "$NICE" "$VENV/bin/python" "$HERE/llmcompressor_run.py" \
    --model "$MODEL" --calib "$CALIB" --out "$out" --threads "$THREADS" "$@" > "$log" 2>&1 ||
    { echo "failed, see $log"; tail -20 "$log"; return 1; }
  if [[ " $* " == *" --layers "* ]]; then report "$name"; return; fi
  nice -n "$NICE" "$Q" eval "$out" --against "$MODEL" --text "$HELDOUT" --chunks 16 \
    > "$out.eval" 2>&1 || { echo "quantize eval failed:"; cat "$out.eval"; }
  report "$name"
}

report() {
  local name=$1 out=$OUTDIR/$1
  local wall user sys rss
  wall=$(grep 'Elapsed (wall clock)' "$out.time" | awk '{print $NF}')
  user=$(grep 'User time' "$out.time" | awk '{print $NF}')
  sys=$(grep 'System time' "$out.time" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$out.time" | awk '{print $NF}')
  echo "$name: wall $wall, user ${user}s, sys ${sys}s, peak RSS ${rss} KB," \
    "safetensors $(cat "$out"/*.safetensors | wc -c) bytes"
  grep -E 'PPL|KLD|top-1' "$out.eval" || true
}

# ours NAME ARGS...: quantsmith's run of the same job, timed and evaluated the same way
ours() {
  local name=$1; shift
  local out=$OUTDIR/$name
  echo "== $name: quantize $MODEL $*"
  /usr/bin/time -v -o "$out.time" nice -n "$NICE" "$Q" "$MODEL" -j "$THREADS" "$@" -o "$out" --force \
    > "$out.log" 2>&1 || { echo "failed, see $out.log"; tail -20 "$out.log"; return 1; }
  nice -n "$NICE" "$Q" eval "$out" --against "$MODEL" --text "$HELDOUT" --chunks 16 \
    > "$out.eval" 2>&1 || { echo "quantize eval failed:"; cat "$out.eval"; }
  report "$name"
}

# secs NAME: wall seconds of a timed run
secs() {
  grep 'Elapsed (wall clock)' "$OUTDIR/$1.time" | awk '{print $NF}' |
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'
}

# versus N: llm-compressor's GPTQ and ours on the same N windows, one after the other; the
# ratio table (wall, CPU, peak RSS, calibration tokens per second)
versus() {
  local n=$1 theirs=llmc-gptq-int4-g64-$1w us=qs-gptq-int4-g64-$1w
  run "$theirs" "${GPTQ[@]}" --samples "$n"
  ours "$us" --to int4 --group 64 --method gptq --calib "$CALIB" --calib-samples "$n" \
    --calib-seq-len 512
  local tokens=$((n * 512)) a b
  a=$(secs "$theirs"); b=$(secs "$us")
  echo
  echo "| run | wall s | CPU s | peak RSS MB | calibration tokens/s |"
  echo "|---|---|---|---|---|"
  for name in "$theirs" "$us"; do
    local t=$OUTDIR/$name.time w
    w=$(secs "$name")
    awk -v n="$name" -v w="$w" -v tok="$tokens" '
      /User time/ { u = $NF } /System time/ { s = $NF } /Maximum resident/ { r = $NF }
      END { printf "| %s | %.1f | %.1f | %.0f | %.1f |\n", n, w, u + s, r / 1024, tok / w }' "$t"
  done
  awk -v a="$a" -v b="$b" 'BEGIN { printf "\nquantsmith is %.2fx faster (wall)\n", a / b }'
}

setup
GPTQ=(--method gptq --group 64 --damp 0.01 --actorder none)
AWQ=(--method awq --group 64 --asym --duo-scaling true)
case ${1:-gptq} in
  # GPTQ on all 88 fitted windows (quantsmith: --method gptq, --calib-samples 128)
  gptq) run llmc-gptq-int4-g64 "${GPTQ[@]}" ;;
  # AWQ on all 88 windows (llm-compressor's usual use: every calibration sample enters each
  # layer's grid search); about 4 min per layer on 2 cores, so ~2 h for SmolLM2-135M
  awq) run llmc-awq-int4-g64-asym "${AWQ[@]}" ;;
  # AWQ on the 4 windows (2048 tokens) quantsmith's --method awq searches on by default
  # (--awq-tokens 2048 = 4 windows of its seeded choice: 65, 70, 76, 85 of calib.txt, the same here)
  awq4) run llmc-awq-int4-g64-asym-4w "${AWQ[@]}" --samples 4 ;;
  # timing only: the first N decoder layers, 88 windows (the output is not evaluated)
  awq-layers) run "llmc-awq-int4-g64-asym-first$2" "${AWQ[@]}" --layers "$2" ;;
  # llm-compressor's GPTQ and ours on the same N windows (default 32), with the ratio
  versus) versus "${2:-32}" ;;
  all) run llmc-gptq-int4-g64 "${GPTQ[@]}"; run llmc-awq-int4-g64-asym-4w "${AWQ[@]}" --samples 4 ;;
  *) echo "usage: $0 [gptq|awq|awq4|awq-layers N|versus [N]|all]" >&2; exit 2 ;;
esac
