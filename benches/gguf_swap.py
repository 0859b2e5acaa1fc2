#!/usr/bin/env python3
"""A GGUF file with some tensors' bytes taken from another file of the same layout.

    python3 benches/gguf_swap.py BASE.gguf DONOR.gguf OUT.gguf REGEX

OUT is BASE with every tensor whose name matches REGEX (Python `re.search`) replaced by DONOR's
bytes for it (same type and size, checked). For telling which tensors make two quantizations of
one model differ (docs/QUALITY.md): e.g. `'^blk\\.(1[0-9])\\.'` for layers 10–19,
`'^token_embd'` for the embeddings. Needs the `gguf` package (the CI venv has it).
"""
import re
import shutil
import sys

import gguf


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    base, donor, out, pattern = sys.argv[1:]
    b, d = tensors(base), tensors(donor)
    names = [n for n in b if re.search(pattern, n)]
    if not names:
        raise SystemExit(f"no tensor of {base} matches {pattern!r}")
    for n in names:
        if n not in d or d[n].tensor_type != b[n].tensor_type or d[n].n_bytes != b[n].n_bytes:
            raise SystemExit(f"{n}: not the same type and size in {donor}")
    shutil.copyfile(base, out)
    with open(donor, "rb") as src, open(out, "r+b") as dst:
        for n in names:
            src.seek(d[n].data_offset)
            dst.seek(b[n].data_offset)
            dst.write(src.read(d[n].n_bytes))
    print(f"{out}: {len(names)} tensors from {donor}")


if __name__ == "__main__":
    main()
