#!/usr/bin/env python3
"""Runs llama.cpp's own converter (convert_hf_to_gguf.py from the llama.cpp sources .ci/run
unpacks, with its own gguf-py) on a Hugging Face folder: the reference our HF -> GGUF path is
compared with.

    convert_hf.py LLAMA_CPP_SRC MODEL_DIR --outfile OUT.gguf --outtype f32|f16|bf16|q8_0 [...]

One patch, only when QS_PRE is set: the converter names a BPE pre-tokenizer by hashing how the
tokenizer splits a test text and looking the hash up in a table of published models; a vocabulary
trained for a test fixture cannot be in that table, so `get_vocab_base_pre` returns QS_PRE
instead. Everything else (hyper-parameters, tensor names and permutation, vocabulary, special
tokens, file layout) is the converter's own code.
"""
import os
import runpy
import sys

src = os.path.abspath(sys.argv[1])
sys.argv = [os.path.join(src, "convert_hf_to_gguf.py")] + sys.argv[2:]
sys.path.insert(0, src)
sys.path.insert(1, os.path.join(src, "gguf-py"))
pre = os.environ.get("QS_PRE")
if pre:
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(sys.argv[0], run_name="__main__")
