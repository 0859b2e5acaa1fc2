#!/bin/bash
# Reference run of Intel's AutoRound (PyPI `auto-round`) on CPU, for comparison with
# `quantize MODEL --to TYPE --method signround --calib FILE --calib-samples 32
# --calib-seq-len 512`: GGUF file size, wall time, CPU time, peak RSS, and the GGUF scored by
# `quantize eval` (PPL, mean KL divergence and top-1 agreement against the float model).
#
# usage: benches/autoround.sh [TYPE [ITERS]]   one run (default: q4_k_m 0)
#        benches/autoround.sh all0             the four iters=0 runs: q4_0 q4_k_m q3_k_m q2_k
#        benches/autoround.sh ours TYPE ITERS  quantsmith's --method signround on the same windows
#        METHOD=M benches/autoround.sh ours TYPE   quantsmith's --method M (awq, gptq, awq+gptq, ...)
#        benches/autoround.sh table            a Markdown table of the runs found in OUTDIR
#        benches/autoround.sh evaluate NAME    score OUTDIR/NAME.gguf again (an interrupted run)
#        benches/autoround.sh setup            create the venv only
#   TYPE: an AutoRound GGUF format without "gguf:": q4_0 q4_1 q5_0 q5_1 q8_0 q2_k_s q3_k_s
#         q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k; q2_k is taken as q2_k_s (see below).
#   ITERS: 0 = AutoRound's optimized RTN (imatrix from the calibration windows, then its
#         imatrix-weighted scale/min search), N > 0 = SignRound tuning, N steps per decoder
#         block (AutoRound's default is 200, lr 1/N).
#   env: BATCH (sequences per step, default 8 as AutoRound's; not 8: names get -bBATCH), TAG
#        (a suffix for our runs' names), FLAGS (more options for our runs), MODEL (HF folder, default /tmp/qrun/smollm2-hf), CALIB (/tmp/qrun/calib.txt),
#        HELDOUT (/tmp/qrun/heldout.txt), OUTDIR (/tmp/qrun), Q (quantize binary,
#        /work/main/target/release/quantize), VENV (~/.cache/quantsmith/venv-autoround),
#        THREADS (2), NICE (5: the runs' niceness; it orders processes within one autogroup, so a
#        run started under `setsid` competes as an equal with other sessions' jobs unless its
#        /proc/PID/autogroup is niced too), CHUNKS (8, evaluation chunks of 512 tokens),
#        LLAMA_BIN (~/.cache/quantsmith/llama.cpp/bin: llama-imatrix there loads each output and
#        prints llama.cpp's own perplexity on the same chunks; LLAMA_BIN= skips it), LR (SignRound
#        lr; default AutoRound's), COMPILE (auto|on|off: enable_torch_compile; auto = AutoRound's
#        default: on for SignRound with iters >= 10 on Linux, off for RTN / iters=0)
#   outputs: OUTDIR/ar-TYPE-iITERS.gguf, with .log (AutoRound), .time (/usr/bin/time -v),
#        .eval (quantize eval), .llama (llama-imatrix), .gguf.json (settings, versions, timings)
#
# Settings: scheme = format = gguf:TYPE; AutoRound(model, tokenizer, dataset=the windows,
#   nsamples=32, seqlen=512, batch_size=8 (its default), device_map="cpu", amp=False (f32
#   throughout; its default would use bf16 autocast where the device supports it),
#   enable_torch_compile=None (its default: torch.compile for SignRound, which works on this
#   CPU with gcc; none for RTN), low_gpu_mem_usage=False (its default), seed=42 (its default));
#   the model is loaded in f32 by transformers and handed over.  SignRound's other options stay
#   at their defaults (minmax tuning on, lr = minmax_lr = 1/iters, gradient_accumulate_steps 1,
#   nblocks 1, enable_quanted_input: each block tuned on the outputs of the already-quantized
#   blocks before it, enable_alg_ext off; AutoRound warns that iters=0 or enable_alg_ext is its
#   recommendation for GGUF).  AutoRound itself turns low_cpu_mem_usage off for GGUF.
# Calibration: benches/calib_windows.py, quantsmith's choice for --calib-samples 32
#   --calib-seq-len 512 --seed 0: calib.txt tokenized with tokenizer.json, no BOS, 97 disjoint
#   512-token windows, the last 9 held out, 32 of the other 88 chosen by the seeded SplitMix64
#   shuffle, in text order; passed pre-tokenized as 4 LongTensors of shape (8, 512).
#   AutoRound's calibration for a pre-tokenized dataset builds an attention mask that masks
#   the last position of every window (calibration.llm.calib, a workaround of its own for
#   models that drop all-ones masks) and excludes that position from its loss; nothing here
#   changes that.
# Q2_K: AutoRound 0.16 has no plain llama.cpp Q2_K file type (LLAMA_FTYPE_MOSTLY_Q2_K, what
#   `llama-quantize ... Q2_K` and `quantize --to q2_k` write); its 2-bit K formats are
#   gguf:q2_k_s (MOSTLY_Q2_K_S) and gguf:q2_k_mixed (a MoE recipe: experts Q2_K_S, the rest
#   Q4_K_S).  So "q2_k" runs gguf:q2_k_s: as llama.cpp's Q2_K_S, ffn_down of the first n/8 layers
#   is Q4_K and attn_v/attn_output/other ffn_down stay Q2_K (SmolLM2 has n_gqa 3 < 4), where
#   Q2_K makes attn_v, attn_output and every ffn_down Q3_K: expect a smaller file.
#
# Versions (pinned): auto-round 0.16.1 (the newest on PyPI; requires transformers>=4.38 and any
# torch); torch 2.14.0 and transformers 5.17.0, the pair benches/llmcompressor.sh uses.  The
# PyTorch CPU wheel index is not reachable from here, so torch comes from plain PyPI (the CUDA
# build; it runs on CPU); set TORCH_INDEX to use the CPU index instead.  AutoRound's GGUF
# export needs gguf and sentencepiece and does not install them: gguf 0.19.0, sentencepiece
# 0.2.3.  No CPU patch is needed (unlike llm-compressor's AWQ).  Offline: HF_HUB_OFFLINE etc.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-/tmp/qrun/smollm2-hf}
CALIB=${CALIB:-/tmp/qrun/calib.txt}
HELDOUT=${HELDOUT:-/tmp/qrun/heldout.txt}
OUTDIR=${OUTDIR:-/tmp/qrun}
Q=${Q:-/work/main/target/release/quantize}
VENV=${VENV:-$HOME/.cache/quantsmith/venv-autoround}
THREADS=${THREADS:-2}
NICE=${NICE:-5}
CHUNKS=${CHUNKS:-8}
LLAMA_BIN=${LLAMA_BIN-$HOME/.cache/quantsmith/llama.cpp/bin}
SAMPLES=32 SEQ_LEN=512 BATCH=${BATCH:-8}
BATCH_TAG=$([ "$BATCH" = 8 ] || echo "-b$BATCH")
PY_PKGS=(auto-round==0.16.1 torch==2.14.0 transformers==5.17.0 gguf==0.19.0 sentencepiece==0.2.3)

setup() {
  if ! "$VENV/bin/python" -c 'import auto_round, gguf, sentencepiece' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    if [ -n "${TORCH_INDEX:-}" ]; then
      "$VENV/bin/pip" install torch==2.14.0 --index-url "$TORCH_INDEX"
    fi
    "$VENV/bin/pip" install "${PY_PKGS[@]}"
  fi
  "$VENV/bin/pip" list 2>/dev/null |
    grep -E -i '^(auto-round|torch|transformers|gguf|sentencepiece|accelerate|datasets|tokenizers) '
}

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""

# AutoRound's name for a type ("q2_k" -> "q2_k_s", see the header)
artype() {
  case $1 in
    q2_k) echo "note: AutoRound has no plain Q2_K; running gguf:q2_k_s" >&2; echo q2_k_s ;;
    *) echo "$1" ;;
  esac
}

# evaluate NAME: quantize eval and (if available) llama.cpp's perplexity of OUTDIR/NAME.gguf
evaluate() {
  local out=$OUTDIR/$1.gguf
  nice -n "$NICE" "$Q" eval "$out" --against "$MODEL" --text "$HELDOUT" --chunks "$CHUNKS" \
    > "$OUTDIR/$1.eval" 2>&1 || { echo "quantize eval failed:"; cat "$OUTDIR/$1.eval"; }
  rm -f "$OUTDIR/$1.llama"
  if [ -n "$LLAMA_BIN" ] && [ -x "$LLAMA_BIN/llama-imatrix" ]; then
    # llama-imatrix loads the GGUF and runs it over the chunks, printing llama.cpp's PPL as
    # llama-perplexity would (the imatrix it writes is thrown away)
    nice -n "$NICE" "$LLAMA_BIN/llama-imatrix" -m "$out" -f "$HELDOUT" --chunks "$CHUNKS" \
      -c 512 -b 512 -t "$THREADS" -o "$OUTDIR/$1.llama.imatrix" > "$OUTDIR/$1.llama" 2>&1 ||
      echo "llama.cpp failed on $out, see $OUTDIR/$1.llama"
    rm -f "$OUTDIR/$1.llama.imatrix"
  fi
}

# run TYPE ITERS: quantize into OUTDIR/ar-TYPE-iITERS.gguf, time it, evaluate it
run() {
  local type iters=$2 name
  type=$(artype "$1")
  name=ar-$type-i$iters
  local out=$OUTDIR/$name.gguf log=$OUTDIR/$name.log
  local extra=()
  [ -n "${LR:-}" ] && extra+=(--lr "$LR")
  extra+=(--compile "${COMPILE:-auto}")
  echo "== $name: AutoRound gguf:$type iters=$iters"
  /usr/bin/time -v -o "$OUTDIR/$name.time" nice -n "$NICE" "$VENV/bin/python" \
    "$HERE/autoround_run.py" --model "$MODEL" --calib "$CALIB" --out "$out" --type "$type" \
    --iters "$iters" --samples "$SAMPLES" --seq-len "$SEQ_LEN" --batch-size "$BATCH" \
    --threads "$THREADS" "${extra[@]}" > "$log" 2>&1 ||
    { echo "failed, see $log"; tail -20 "$log"; return 1; }
  rm -rf "$out.d"
  evaluate "$name"
  report "$name"
}

# ours TYPE ITERS: quantsmith's signround (or METHOD) on the same windows, timed and evaluated
# the same way
ours() {
  local type=$1 iters=$2 method=${METHOD:-signround} name args
  if [ "$method" = signround ]; then
    name=qs-signround-$type-i$iters${BATCH_TAG}${TAG:+-$TAG}
    args=(--iters "$iters" --batch "$BATCH")
  else
    name=qs-${method//+/-}-$type${TAG:+-$TAG}
    args=()
  fi
  local out=$OUTDIR/$name.gguf
  echo "== $name: quantize $MODEL --to $type --method $method ${args[*]}"
  /usr/bin/time -v -o "$OUTDIR/$name.time" nice -n "$NICE" "$Q" "$MODEL" --to "$type" \
    --method "$method" "${args[@]}" --calib "$CALIB" \
    --calib-samples "$SAMPLES" --calib-seq-len "$SEQ_LEN" -j "$THREADS" -o "$out" --force ${FLAGS:-} \
    > "$OUTDIR/$name.log" 2>&1 || { echo "failed, see $OUTDIR/$name.log"; tail -20 "$OUTDIR/$name.log"; return 1; }
  evaluate "$name"
  report "$name"
}

# secs FILE.time: wall seconds of a timed run
secs() {
  grep 'Elapsed (wall clock)' "$1" | awk '{print $NF}' |
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'
}

# fields NAME: bytes, wall s, CPU s, peak RSS MB, PPL, mean KLD, top-1 %, llama.cpp PPL, types
fields() {
  local name=$1 t=$OUTDIR/$1.time e=$OUTDIR/$1.eval l=$OUTDIR/$1.llama
  local bytes wall cpu rss ppl kld top1 lppl types
  bytes=$(stat -c %s "$OUTDIR/$name.gguf")
  wall=$(secs "$t")
  cpu=$(awk '/User time/ { u = $NF } /System time/ { s = $NF } END { printf "%.1f", u + s }' "$t")
  rss=$(awk '/Maximum resident/ { printf "%.0f", $NF / 1024 }' "$t")
  ppl=$(awk '$1 == "PPL" && NF == 2 { print $2 }' "$e" 2>/dev/null || true)
  kld=$(awk '$1 == "mean" && $2 == "KLD" { print $3 }' "$e" 2>/dev/null || true)
  top1=$(awk '$1 == "same" && $2 == "top-1" { print $3 }' "$e" 2>/dev/null || true)
  lppl=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$l" 2>/dev/null || true)
  types=$("$Q" inspect "$OUTDIR/$name.gguf" 2>/dev/null |
    awk '/^name +dtype/ { on = 1; next } on && NF >= 3 { n[$2]++ }
         END { for (k in n) print k ":" n[k] }' | sort | paste -sd' ')
  echo "$bytes|$wall|$cpu|$rss|${ppl:--}|${kld:--}|${top1:--}|${lppl:--}|$types"
}

report() {
  local name=$1 f
  f=$(fields "$name")
  IFS='|' read -r bytes wall cpu rss ppl kld top1 lppl types <<< "$f"
  echo "$name: $bytes bytes, wall ${wall}s, CPU ${cpu}s, peak RSS ${rss} MB, PPL $ppl," \
    "mean KLD $kld, top-1 ${top1}%, llama.cpp PPL $lppl; tensors $types"
}

table() {
  echo "| run | file bytes | wall s | CPU s | peak RSS MB | PPL | mean KLD | top-1 % | llama.cpp PPL | tensor types |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  local f name
  for f in "$OUTDIR"/ar-*.gguf "$OUTDIR"/qs-*.gguf; do
    [ -e "$f" ] && [ -e "${f%.gguf}.time" ] || continue
    name=$(basename "$f" .gguf)
    echo "| $name | $(fields "$name" | sed 's/|/ | /g') |"
  done
}

case ${1:-q4_k_m} in
  setup) setup ;;
  all0) setup; for t in q4_0 q4_k_m q3_k_m q2_k; do run "$t" 0 || true; done ;;
  ours) ours "${2:?type}" "${3:-0}" ;;
  table) table ;;
  evaluate) evaluate "${2:?name}"; report "$2" ;;
  q[0-9]*) setup; run "$1" "${2:-0}" ;;
  *) echo "usage: $0 [TYPE [ITERS] | all0 | ours TYPE [ITERS] | table | evaluate NAME | setup]" >&2; exit 2 ;;
esac
