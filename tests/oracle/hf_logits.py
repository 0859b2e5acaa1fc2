#!/usr/bin/env python3
"""Independent client: load quantized safetensors folders with transformers
(`AutoModelForCausalLM.from_pretrained`, CPU, float32 compute) — what users load our outputs
with — run its forward pass on the chunks `quantize eval` scores, and compare its logits with
the ones `quantize eval --logits` wrote.

    hf_logits.py TEXT CTX CHUNKS MODEL_DIR OURS.npy [MODEL_DIR OURS.npy ...]

Chunking is eval's (llama-perplexity's): the text tokenized once with the folder's
tokenizer.json (BOS first when tokenizer_config.json adds one), cut into CHUNKS chunks of CTX
tokens, each chunk's first token replaced by BOS when one is added; positions CTX/2 .. CTX-2 are
scored. transformers decompresses compressed-tensors weights itself (compressed-tensors
package), runs AutoGPTQ checkpoints through optimum + GPTQModel's CPU kernels and AutoAWQ
checkpoints through GPTQModel's.

Prints one JSON line: a list with, per folder, what the loader reported (missing / unexpected
keys, classes of the first block's linears and of lm_head) and the comparison: largest |logit
difference|, the logits' spread, perplexities and the largest next-token log-probability
difference; or the exception that stopped loading ("error", and for a size mismatch the
checkpoint and model shapes of each mismatched tensor).
"""
import json
import math
import os
import sys
import traceback

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer


def chunks_of(model_dir, text, ctx, n_chunks):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    tcfg = {}
    p = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(p):
        tcfg = json.load(open(p))
    config = json.load(open(os.path.join(model_dir, "config.json")))
    bos = config.get("bos_token_id") if tcfg.get("add_bos_token") else None
    if bos is not None:
        ids = [bos] + ids
    assert len(ids) >= n_chunks * ctx, f"{len(ids)} tokens for {n_chunks} chunks of {ctx}"
    out = []
    for c in range(n_chunks):
        chunk = ids[c * ctx:(c + 1) * ctx]
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(model_dir, ours_path, text, ctx, n_chunks):
    res = {"model": model_dir}
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    res["missing_keys"] = sorted(info.get("missing_keys", []))
    res["unexpected_keys"] = sorted(info.get("unexpected_keys", []))
    res["mismatched_keys"] = [str(k) for k in info.get("mismatched_keys", [])]
    # what the loader made of each linear of the first block and of the output head
    res["classes"] = {
        name: type(m).__name__
        for name, m in model.model.layers[0].named_modules()
        if name.endswith("_proj")
    }
    res["classes"]["lm_head"] = type(model.lm_head).__name__
    first = ctx // 2
    theirs = []
    targets = []
    with torch.no_grad():
        for chunk in chunks_of(model_dir, text, ctx, n_chunks):
            logits = model(input_ids=torch.tensor([chunk])).logits[0].float().numpy()
            theirs.append(logits[first:ctx - 1])
            targets.extend(chunk[first + 1:ctx])
    theirs = np.concatenate(theirs)
    ours = np.load(ours_path)
    if ours.shape != theirs.shape:
        res["error"] = f"logits shape: ours {ours.shape}, transformers {theirs.shape}"
        return res
    lt, lo = log_softmax(theirs), log_softmax(ours)
    idx = np.arange(len(targets))
    nll_t, nll_o = -lt[idx, targets], -lo[idx, targets]
    res.update(
        positions=int(len(targets)),
        max_abs_logit_diff=float(np.abs(theirs - ours).max()),
        logit_std=float(ours.std()),
        max_logprob_diff=float(np.abs(nll_t - nll_o).max()),
        # (capped: a model that loaded garbage can have a mean NLL past exp's range)
        ppl_transformers=math.exp(min(float(nll_t.mean()), 700.0)),
        ppl_ours=math.exp(min(float(nll_o.mean()), 700.0)),
        top1_agreement=float((theirs.argmax(-1) == ours.argmax(-1)).mean()),
    )
    return res


def main():
    text_path, ctx, n_chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = open(text_path, encoding="utf-8").read()
    pairs = sys.argv[4:]
    torch.manual_seed(0)
    out = []
    for model_dir, ours in zip(pairs[0::2], pairs[1::2]):
        try:
            out.append(compare(model_dir, ours, text, ctx, n_chunks))
        except Exception as e:  # the refusal itself is what the test looks at
            traceback.print_exc()
            res = {"model": model_dir, "error": f"{type(e).__name__}: {e}"}
            if "ignore_mismatched_sizes" in str(e):
                # which checkpoint tensors did not fit the model transformers built, and how
                _, info = transformers.AutoModelForCausalLM.from_pretrained(
                    model_dir,
                    dtype=torch.float32,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,
                )
                res["mismatched"] = [
                    [k, list(ckpt), list(model)] for k, ckpt, model in info["mismatched_keys"]
                ]
            out.append(res)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
