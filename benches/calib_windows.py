"""quantsmith's calibration-window selection, reproduced in Python for the reference benches
(benches/llmcompressor_run.py, benches/autoround_run.py), so that another tool is fed the very
token windows `quantize ... --calib FILE --calib-samples N --calib-seq-len L --seed S` uses.

Calibration windows (crates/formats/src/calib.rs): the text is tokenized with the model's
tokenizer.json without special tokens (no BOS), cut into disjoint windows of seq_len tokens
(tail dropped); the last tenth of the windows (at least one) is held out, and the fit set is
the remaining windows; when samples is below their number, the same seeded choice as
quantsmith's (SplitMix64 partial shuffle), kept in text order.

`python3 benches/calib_windows.py TOKENIZER_JSON TEXT [SEQ_LEN [SAMPLES [SEED]]]` prints the
chosen window indices (needs the `tokenizers` package).
"""
import sys

M64 = (1 << 64) - 1


def windows(tokenizer_json, text, seq_len, samples, seed):
    """Returns (windows as lists of token ids, chosen window indices, text tokens, windows,
    held-out windows)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(tokenizer_json).encode(text, add_special_tokens=False).ids
    n = len(ids) // seq_len
    if n < 2:
        sys.exit(f"calibration text is {len(ids)} tokens: need at least two windows")
    held = max(n // 10, 1)
    fit = n - held
    take = min(samples, fit)
    # quantsmith's seeded partial shuffle of the fit windows (SplitMix64, qs_numeric::synth::Rng),
    # the first `take` kept, in text order: the same windows as `--calib-samples N --seed S`
    state = (seed ^ 0x9E3779B97F4A7C15) & M64

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    order = list(range(fit))
    for i in range(take):
        j = i + next_u64() % (fit - i)
        order[i], order[j] = order[j], order[i]
    chosen = sorted(order[:take])
    wins = [ids[w * seq_len:(w + 1) * seq_len] for w in chosen]
    return wins, chosen, len(ids), n, held


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    args = [int(x) for x in sys.argv[3:6]]
    seq_len, samples, seed = (args + [512, 128, 0][len(args):])[:3]
    with open(sys.argv[2], encoding="utf-8") as f:
        _, chosen, ntok, nwin, held = windows(sys.argv[1], f.read(), seq_len, samples, seed)
    print(f"{ntok} tokens, {nwin} windows of {seq_len}, {held} held out, "
          f"{len(chosen)} chosen: {chosen}")
