"""What per-box phrases cost at full size: the foundation's text encoder reading a layout's phrases. Prints JSON.

    python benchmarks/bench_phrase_encoding.py [--model cocostuff_SD1_5] [--boxes 8] [--rounds 7] [--threads 1] [--out FILE]

The foundation's text encoder at its published size with random weights (CLIP ViT-L/14 for
``cocostuff_SD1_5``, OpenCLIP ViT-H/14 for ``cocostuff_SD2_1``, LDMBert for ``cocostuff``; weights do not
change the time), and a :class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder` on it. Timed alternately
in this process, ``rounds`` times each, median seconds:

* ``caption``: the caption read as Stable Diffusion reads it every step (padded to 77 tokens): the
  reference, paid by every text-to-image step with or without boxes;
* ``phrases_first_read``: ``boxes`` distinct phrases (padded to the longest) through the encoder and the
  projection, as on the first step that sees them;
* ``phrases_cached``: the same phrases again (training keeps the frozen states; sampling caches per run):
  the projection only.

Peak RSS is the process's ``VmHWM``. The tokenizer is the offline stand-in of
:mod:`layoutdiffuse.sd.random_foundation` (no vocabulary files are downloaded): it reads more tokens
per phrase than CLIP's BPE would (``phrase_tokens_padded`` is reported), so ``phrases_first_read`` is
an upper bound.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

PHRASES = ["a person", "a brown dog on the grass", "the sky", "a red car", "two trees", "a wooden bench", "the sea",
           "a white cloud", "a kite", "sand", "a green umbrella", "a bicycle"]
CAPTION = "a photo of a beach with people, a dog and a kite under a blue sky"


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return float("nan")


def main() -> None:
    from layoutdiffuse.sd.phrases import FoundationPhraseEncoder, text_width
    from layoutdiffuse.sd.random_foundation import KINDS, _text_parts, foundation_configs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cocostuff_SD1_5", choices=[m for m, k in KINDS.items() if k != "ldm"])
    p.add_argument("--boxes", type=int, default=8, help=f"distinct phrases per layout (at most {len(PHRASES)})")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--embed-dim", type=int, default=320, help="the layout attention's prompt width")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if not 1 <= args.boxes <= len(PHRASES):
        p.error(f"--boxes must be 1..{len(PHRASES)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = foundation_configs(args.model)
    with tempfile.TemporaryDirectory() as scratch:
        text_encoder, tokenizer = _text_parts(configs["kind"], configs["text"], Path(scratch))
    text_encoder.eval().requires_grad_(False)
    encoder = FoundationPhraseEncoder(text_width(text_encoder), args.embed_dim)
    encoder.use_text_encoder(text_encoder, tokenizer)
    phrases = PHRASES[: args.boxes]

    def caption() -> None:
        ids = tokenizer([CAPTION], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            text_encoder(input_ids=ids.input_ids)

    def first_read() -> None:
        encoder.use_text_encoder(text_encoder, tokenizer)  # empties the cache
        encoder(phrases)

    def cached() -> None:
        encoder(phrases)

    runs = {"caption": caption, "phrases_first_read": first_read, "phrases_cached": cached}
    for fn in runs.values():  # warm-up (and fills the cache for "cached")
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            if name == "phrases_cached":
                encoder(phrases)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: median(v) for k, v in times.items()}
    result = {"model": args.model, "text_encoder": type(text_encoder).__name__,
              "text_encoder_parameters": sum(t.numel() for t in text_encoder.parameters()), "boxes": args.boxes,
              "phrases": phrases, "phrase_tokens_padded": int(encoder.tokens(phrases)[0].shape[1]),
              "caption_tokens": int(tokenizer.model_max_length), "rounds": args.rounds, "threads": args.threads,
              "median_seconds": {k: round(v, 5) for k, v in med.items()},
              "first_read_over_caption": round(med["phrases_first_read"] / med["caption"], 3),
              "cached_over_caption": round(med["phrases_cached"] / med["caption"], 4),
              "peak_rss_gib": peak_rss_gib(), "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}"}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
