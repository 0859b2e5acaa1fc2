#!/usr/bin/env python3
"""Independent client, mixtures of experts: load a compressed-tensors folder with transformers
(`AutoModelForCausalLM.from_pretrained`, CPU) and compare every expert weight it ends up with —
transformers 5 fuses each layer's experts into `experts.gate_up_proj` [experts, 2·ff, hidden]
and `experts.down_proj` [experts, hidden, ff] — with our dequantized weights (a safetensors file
`quantize OUT --to f32` wrote, Hugging Face names).

    hf_experts.py MODEL_DIR OURS.safetensors EXPERTS GATE UP DOWN

EXPERTS is the module of expert E (`mlp.experts`, `block_sparse_moe.experts`), GATE/UP/DOWN its
projections' names. Prints one JSON line: the dtype transformers keeps the experts in, the
largest |difference| from ours, and from ours rounded to that dtype.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

model_dir, ours_path, experts, gate, up, down = sys.argv[1:7]
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
sd = m.state_dict()
ours = load_file(ours_path)
worst, worst_rounded, dtype, n = 0.0, 0.0, None, 0
for l in range(m.config.num_hidden_layers):
    if f"model.layers.{l}.mlp.experts.gate_up_proj" not in sd:
        continue  # a dense layer (DeepSeek's first_k_dense_replace)
    gu = sd[f"model.layers.{l}.mlp.experts.gate_up_proj"]
    dn = sd[f"model.layers.{l}.mlp.experts.down_proj"]
    dtype = str(gu.dtype)
    for e in range(gu.shape[0]):
        p = f"model.layers.{l}.{experts}.{e}."
        want_gu = torch.cat([ours[p + gate + ".weight"], ours[p + up + ".weight"]])
        for have, want in [(gu[e], want_gu), (dn[e], ours[p + down + ".weight"])]:
            have = have.float()
            worst = max(worst, (have - want).abs().max().item())
            rounded = want.to(gu.dtype).float()
            worst_rounded = max(worst_rounded, (have - rounded).abs().max().item())
            n += 1
print(json.dumps({"dtype": dtype, "matrices": n, "max_diff": worst, "max_diff_rounded": worst_rounded}))
