"""The predicted error a size target reports for each tensor stored as Q8_0, recomputed with
gguf-py's Q8_0 codec and numpy (an independent oracle for allocate.rs's weighting).

usage: alloc_errors.py MODEL_DIR IMATRIX.gguf TIED(0|1)
prints {hf tensor name: error} as JSON.

Linears: sum_ij E[x_j^2] (w_ij - q_ij)^2, E[x^2] = in_sum2 / counts of the imatrix entry.
Output head (lm_head, or the embedding table when tied): weighted by model.norm.weight^2
(llama-imatrix has no entry for it). Embedding table that is only looked up: mean over rows
of |w - q|^2.
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import quantize, dequantize

sys.path.insert(0, str(Path(__file__).parent))
from st_read import read  # noqa: E402

GGUF_NAME = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def main():
    model_dir, im_path, tied = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    w = {k: v.astype(np.float32) for k, v in read(f"{model_dir}/model.safetensors").items()}
    r = gguf.GGUFReader(im_path)
    t = {x.name: np.array(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    gains2 = w["model.norm.weight"].astype(np.float64) ** 2
    out = {}
    for name, a in w.items():
        if a.ndim != 2:
            continue
        q = dequantize(quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
        d2 = (a.astype(np.float64) - q.astype(np.float64)) ** 2
        if name == "lm_head.weight" or (tied and name == "model.embed_tokens.weight"):
            out[name] = float((d2 * gains2).sum())
        elif name == "model.embed_tokens.weight":
            out[name] = float(d2.sum() / a.shape[0])
        else:
            layer = name.split(".")[2]
            kind = ".".join(name.split(".")[3:5])
            g = f"blk.{layer}.{GGUF_NAME[kind]}.weight"
            # the importance as quantsmith reads the file: f32 sums / f32 count
            imp = (t[f"{g}.in_sum2"].astype(np.float32) / np.float32(t[f"{g}.counts"][0])).astype(np.float64)
            out[name] = float((d2 * imp).sum())
    print(json.dumps(out))


main()
