"""Judge a colour Layout-MNIST text model on seen and held-out (digit, colour) pairs, against the real ceiling. Prints JSON.

    python benchmarks/eval_color_mnist.py [--ckpt layout-mnist-color] [--baseline-ckpt PAIRS.ckpt] [--n 100] \\
        [--out benchmarks/results/eval_color_mnist.json] [--picture docs/color_mnist_samples.png]

* **Layouts**: the first ``n`` validation canvases of colour Layout-MNIST (MNIST-test digits, the
  model's own data settings, dataset seed ``--data-seed``) twice: ``pairs="seen"`` (the fifty training
  pairs) and ``pairs="held_out"`` (every digit in its held-out colour; the same boxes and digits, only
  the colours and phrases differ). Each box carries its phrase: one of the four forms of
  :data:`~layoutdiffuse.data.color_phrases.PHRASE_FORMS`, the digit as a numeral or a word.
* **Judge** (:class:`~layoutdiffuse.evaluation.color_judge.ColorJudge`): per box ``digit`` (the crop
  judge reads the asked digit and the detector finds exactly one digit in the box), ``colour`` (the
  ink's colour) and ``both``; each as ``generated`` accuracy, ``real`` accuracy (the same judge on
  the real canvases of the same layouts: the ceiling), their ``ratio`` and its bootstrap 95 % interval
  over layouts (:func:`~layoutdiffuse.evaluation.color_judge.ceiling_ratio`), for all boxes, per phrase
  form and per numeral / word.
* **Baseline**: the pair-class model (``--baseline-ckpt``: one class per seen pair,
  configs/layout_mnist_color_pairs.json) on the seen layouts (the same boxes, each box's class its
  pair); a held-out pair has no class, so it cannot be expressed.
* **Speed**: samples per second of the text model and of a class model of the same architecture (the
  baseline, or without one the text model's UNet with a 50-class prompt table, randomly initialised:
  weights do not change the time), the same layouts, sampler and batch, timed alternately
  ``--speed-rounds`` times in this process; the machine's load is recorded beside it.

Sampling: the model's own settings unless ``--sampler/--steps/--guidance``; image ``i`` is drawn with
the seeding rule of :func:`~layoutdiffuse.sampling.sample_batched` from ``--seed``.
``--random-init`` judges randomly initialised models built from the configs: a smoke run whose
figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
from tqdm.auto import tqdm

from layoutdiffuse.data.color_phrases import HELD_OUT_PAIRS, PHRASE_FORMS, SEEN_PAIRS, pair_name
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.errors import UserError
from layoutdiffuse.evaluation.color_judge import ColorJudge, ceiling_ratio
from layoutdiffuse.layout import validity
from layoutdiffuse.sampling import SHIPPED_MODELS, load_model, sample_batched

log = logging.getLogger("eval_color_mnist")
REPO = Path(__file__).resolve().parents[1]
DATA_KEYS = ("min_digits", "max_digits", "digit_scale", "scale_spacing", "aspect_jitter", "max_overlap")
GOALS = {"held_out_both": 0.90, "seen_both": 0.95, "every_form_both": 0.90}


def random_module(config_name: str, class_names: list[str] | None = None) -> Any:
    """A randomly initialised module of ``configs/<config_name>.json`` on the foundation's UNet (no files read
    but configs), its layout classes named ``class_names``."""
    from layoutdiffuse.factory import build_module
    from layoutdiffuse.nn import UNet

    foundation = json.loads((REPO / "configs" / "layout_mnist_color_foundation.json").read_text())
    config = json.loads((REPO / "configs" / f"{config_name}.json").read_text())
    torch.manual_seed(0)
    model = UNet(**foundation["denoising_model"], layout=config["adapt"]["layout"])
    config = {k: v for k, v in config.items() if k not in ("adapt", "warm_start")}
    return build_module(config, model=model, class_names=class_names).eval()


def class_twin(text: Any, classes: int) -> Any:
    """A randomly initialised class model with ``text``'s UNet and adaptor but a ``classes``-row prompt table
    instead of the phrase encoder (for timing only)."""
    from layoutdiffuse.factory import build_module
    from layoutdiffuse.nn import UNet

    unet = dict(text.model.config)
    layout = {k: v for k, v in unet.pop("layout").items() if k not in ("instance_prompt", "vocabulary", "max_words")}
    torch.manual_seed(0)
    model = UNet(**unet, layout={**layout, "num_classes": classes})
    config = {k: v for k, v in text.config.items() if k not in ("adapt", "warm_start", "init_ckpt")}
    return build_module(config, model=model).eval().to(text.device)


def color_layouts(config: dict, pairs: str, n: int, seed: int, root: str | None) -> dict[str, Any]:
    """The first ``n`` colour Layout-MNIST validation canvases of a pair split, collated, plus per box (row-major
    over real rows) its ``form`` name and whether the digit is a ``word``."""
    data = config.get("data", {})
    ds = DATASETS.get("layout_mnist_color")(split="val", root=root, image_size=data.get("image_size", 32), length=n, seed=seed,
                                            pairs=pairs, **{k: data[k] for k in DATA_KEYS if k in data})
    batch = ds.collate([ds[i] for i in tqdm(range(n), desc=f"{pairs} layouts", leave=False)])
    rows = batch["layout"].shape[1]
    valid = validity(batch["layout"])
    batch["colours"] = batch["colours"][:, :rows]
    batch["box_forms"] = [ds.forms[f] for f in batch["forms"][:, :rows][valid].tolist()]
    batch["box_words"] = [not any(ch.isdigit() for ch in t) for texts in batch["box_text"] for t in texts]
    return batch


def phrase_layout(batch: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """The layouts with each real row's class replaced by its phrase's index in the distinct phrases returned."""
    names = sorted({t for texts in batch["box_text"] for t in texts})
    index = {t: i for i, t in enumerate(names)}
    layout = batch["layout"].clone()
    layout[validity(layout), 4] = torch.tensor([float(index[t]) for texts in batch["box_text"] for t in texts])
    return layout, names


def pair_layout(batch: dict[str, Any], class_names: list[str]) -> torch.Tensor:
    """The layouts with each real row's class replaced by its (digit, colour) pair's class in ``class_names``."""
    index = {name: i for i, name in enumerate(class_names)}
    layout = batch["layout"].clone()
    valid = validity(layout)
    names = [pair_name(int(d), int(c)) for d, c in zip(layout[valid][:, 4].tolist(), batch["colours"][valid].tolist())]
    missing = sorted(set(names) - set(index))
    if missing:
        raise UserError(f"the baseline model has no class for {missing[:5]}; its classes are {class_names[:8]}...: is it a pair-class model?")
    layout[valid, 4] = torch.tensor([float(index[name]) for name in names])
    return layout


def scores(fake, real, batch: dict[str, Any], boot: dict, by_phrase: bool = True) -> dict[str, Any]:
    """Digit / colour / both ratios to the real ceiling for all boxes and (``by_phrase``) per form and numeral / word."""
    n = len(batch["layout"])

    def block(keep: torch.Tensor) -> dict[str, Any]:
        idx = fake.image_index[keep]
        return {what: ceiling_ratio(getattr(fake, f"{what}_ok")[keep], getattr(real, f"{what}_ok")[keep], idx, n, boot)
                for what in ("digit", "colour", "both")}

    everything = torch.ones(len(fake.digit), dtype=torch.bool)
    out: dict[str, Any] = {"all": block(everything)}
    if by_phrase:
        forms, words = batch["box_forms"], torch.tensor(batch["box_words"])
        out["forms"] = {f: block(torch.tensor([g == f for g in forms])) for f in PHRASE_FORMS}
        out["digit_as"] = {"numeral": block(~words), "word": block(words)}
    return out


def rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def speed(text: Any, klass: Any, layouts: torch.Tensor, phrases: list[str], class_layouts: torch.Tensor, rounds: int,
          opts: dict[str, Any]) -> dict[str, Any]:
    """Seconds to draw ``len(layouts)`` samples in one batch, the text and the class model alternately, ``rounds`` times each."""
    n = len(layouts)
    times: dict[str, list[float]] = {"text": [], "class": []}
    load = os.getloadavg()
    for _ in tqdm(range(rounds), desc="speed rounds", leave=False):
        for name, module, lay, extra in (("text", text, layouts, {"phrases": phrases}), ("class", klass, class_layouts, {})):
            start = time.perf_counter()
            sample_batched(module, n, lay, seed=0, batch_size=n, **extra, **opts)
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    per_s = {k: n / median(v) for k, v in times.items()}
    return {"samples_per_batch": n, "rounds": rounds, "seconds": rounded(times),
            "samples_per_second": rounded(per_s), "text_over_class": round(per_s["text"] / per_s["class"], 4),
            "load_average_1_5_15_before": [round(v, 2) for v in load], "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]}


def picture(path: Path, shown: dict[str, tuple[torch.Tensor, torch.Tensor, dict]], columns: int) -> None:
    """Per split a row of real canvases and a row of samples of the same layouts, each tile's phrases beneath it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [(f"{split}: {kind}", images[:columns], batch) for split, (real, fake, batch) in shown.items()
            for kind, images in (("real", real), ("generated", fake))]
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 2.35 * len(rows) + 0.6), squeeze=False)
    for r, (title, images, batch) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(images):
                continue
            size = images.shape[-1]
            ax.imshow(((images[c].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
            for x, y, w, h, k in batch["layout"][c].tolist():
                if k >= 0:
                    ax.add_patch(Rectangle((x * size - 0.5, y * size - 0.5), w * size, h * size, fill=False, edgecolor="0.6", lw=0.6))
            ax.text(0.5, -0.03, "\n".join(batch["box_text"][c]), transform=ax.transAxes, ha="center", va="top", fontsize=6.5)
            if c == 0:
                ax.set_title(title, loc="left", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.08, wspace=0.08, hspace=0.75)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="the text model (default: the shipped layout-mnist-color)")
    p.add_argument("--baseline-ckpt", default=None, help="the pair-class model (configs/layout_mnist_color_pairs.json)")
    p.add_argument("--random-init", action="store_true", help="smoke run: randomly initialised models from the configs")
    p.add_argument("--n", type=int, default=100, help="layouts per pair split")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--data-seed", type=int, default=0, help="the validation canvases' seed")
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--speed-samples", type=int, default=16, help="samples per timed batch (0: no speed figure)")
    p.add_argument("--speed-rounds", type=int, default=2)
    p.add_argument("--root", default=None, help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA)")
    p.add_argument("--out", default=None, help="also write the JSON here (e.g. benchmarks/results/eval_color_mnist.json)")
    p.add_argument("--picture", default=None, help="a PNG of seen and held-out samples with their phrases")
    p.add_argument("--columns", type=int, default=8, help="layouts in the picture")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n < 2:
        raise UserError(f"--n must be >= 2 layouts, got {args.n}")

    if args.random_init:
        text, ckpt = random_module("layout_mnist_color"), "random-init (configs/layout_mnist_color.json)"
        baseline = random_module("layout_mnist_color_pairs", [pair_name(d, c) for d, c in SEEN_PAIRS])
        baseline_ckpt = "random-init (configs/layout_mnist_color_pairs.json)"
    else:
        ckpt = args.ckpt or "layout-mnist-color"
        if args.ckpt is None and not SHIPPED_MODELS["layout-mnist-color"].exists():
            raise UserError(f"the shipped colour model {SHIPPED_MODELS['layout-mnist-color']} is not here; give --ckpt (a colour text model)")
        text = load_model(ckpt)
        baseline_ckpt = args.baseline_ckpt
        baseline = load_model(baseline_ckpt) if baseline_ckpt else None
    if not text.is_phrase_model:
        raise UserError(f"{ckpt} does not read a phrase per box; give a colour text model (configs/layout_mnist_color.json)")
    if baseline is not None and (baseline.is_phrase_model or not baseline.is_layout_model):
        raise UserError(f"--baseline-ckpt {baseline_ckpt} is not a class layout model; give the pair-class model")
    opts = {k: v for k, v in dict(sampler=args.sampler, steps=args.steps, guidance=args.guidance).items() if v is not None}
    used = {**text.sampling_args, **opts}
    boot = {"resamples": args.resamples, "level": 0.95, "seed": 0}
    judge = ColorJudge()
    result: dict[str, Any] = {
        "ckpt": str(ckpt), "n_layouts_per_split": args.n, "seed": args.seed, "data_seed": args.data_seed,
        "sampling": {k: used.get(k) for k in ("sampler", "steps", "guidance")}, "bootstrap": boot, "judge": judge.describe(),
        "command": "python benchmarks/eval_color_mnist.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
    }
    start = time.perf_counter()
    shown, text_scores, batches = {}, {}, {}
    for pairs in ("seen", "held_out"):
        batch = batches[pairs] = color_layouts(text.config, pairs, args.n, args.data_seed, args.root)
        layout, names = phrase_layout(batch)
        log.info("sampling %d %s layouts (%d distinct phrases)", args.n, pairs, len(names))
        fake = sample_batched(text, args.n, layout, seed=args.seed, batch_size=args.batch_size, progress=True, phrases=names, **opts)
        real_j = judge(batch["image"], batch["layout"], batch["colours"])
        batch["real_judgement"] = real_j
        text_scores[pairs] = scores(judge(fake, batch["layout"], batch["colours"]), real_j, batch, boot)
        shown[pairs] = (batch["image"], fake, batch)
    result["text_model"] = text_scores
    result["text_model"]["held_out_pairs"] = [pair_name(d, c) for d, c in HELD_OUT_PAIRS]
    if baseline is not None:
        batch = batches["seen"]
        log.info("sampling %d seen layouts with the pair-class baseline", args.n)
        fake = sample_batched(baseline, args.n, pair_layout(batch, baseline.label_names), seed=args.seed, batch_size=args.batch_size,
                              progress=True, **opts)
        result["pair_class_baseline"] = {
            "ckpt": str(baseline_ckpt),
            "seen": scores(judge(fake, batch["layout"], batch["colours"]), batch["real_judgement"], batch, boot, by_phrase=False),
            "held_out": "cannot be expressed: the class table holds only the 50 seen (digit, colour) pairs"}
    else:
        result["pair_class_baseline"] = "not run: give --baseline-ckpt (the pair-class model of configs/layout_mnist_color_pairs.json)"
    result["seconds_judged_run"] = round(time.perf_counter() - start, 1)
    both = {pairs: text_scores[pairs]["all"]["both"]["ratio"] for pairs in ("seen", "held_out")}
    worst_form = min(s["both"]["ratio"] for pairs in ("seen", "held_out") for s in text_scores[pairs]["forms"].values())
    result["goals"] = {"held_out_both_ratio": {"value": both["held_out"], "goal": GOALS["held_out_both"], "met": both["held_out"] >= GOALS["held_out_both"]},
                       "seen_both_ratio": {"value": both["seen"], "goal": GOALS["seen_both"], "met": both["seen"] >= GOALS["seen_both"]},
                       "worst_form_both_ratio": {"value": worst_form, "goal": GOALS["every_form_both"], "met": worst_form >= GOALS["every_form_both"]}}
    if args.speed_samples:
        klass = baseline if baseline is not None else class_twin(text, 50)
        batch = batches["seen"]
        k = args.speed_samples
        sub = {**batch, "layout": batch["layout"][:k], "box_text": batch["box_text"][:k], "colours": batch["colours"][:k]}
        layout, names = phrase_layout(sub)
        class_layout = layout.clone()
        class_layout[validity(layout), 4] = class_layout[validity(layout), 4] % klass.model.adaptor.num_classes
        result["speed"] = {"class_model": str(baseline_ckpt) if baseline is not None else "the text model's UNet with a 50-class table (random weights)",
                           **speed(text, klass, layout, names, class_layout, args.speed_rounds, opts)}
    result["machine"] = {"device": str(text.device), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                         "platform": platform.platform(), "torch": torch.__version__,
                         "state": "shared with other jobs (see the load averages)"}
    result = rounded(result)
    if args.picture:
        picture(Path(args.picture), shown, min(args.columns, args.n))
        result["picture"] = args.picture
    text_json = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text_json + "\n")
    print(text_json)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
