"""``python -m layoutdiffuse evaluate-protocol NAME --ckpt CKPT --out DIR``: sample a protocol, then score it.

* **Samples** go to ``DIR/images/NNNNNN.png`` (image ``k`` shows layout ``k // samples_per_layout``),
  drawn in chunks of the protocol's ``chunk`` images, chunk ``c`` from a generator seeded
  ``seed + c * chunk`` (:func:`layoutdiffuse.sampling.sample_batched`'s rule), so an image does not
  depend on which other chunks ran, where, or in what order. Each PNG is written atomically.
* **Resumable**: a chunk whose images are all on disk is not drawn again; a killed run continues.
* **Shardable**: ``--shard i/n`` draws the chunks ``c`` with ``c % n == i`` and stops; with every
  shard's images in one ``DIR``, ``--merge`` checks them and scores. Shards merged equal one run,
  bit for bit (same chunks, same seeds).
* ``DIR/run.json`` holds what fixes the images (protocol and its sha256, checkpoint sha256, sampler,
  steps, guidance, seeds, ``--limit``, package version); a run into a ``DIR`` made under anything
  else is refused. ``DIR/manifest.json`` adds every image's file, layout, sample and seed.
* **Scores** (:mod:`.protocols.scoring`, each with a bootstrap 95 % interval) go to
  ``DIR/report.json`` and ``DIR/report.md``, with the real-image ceilings where the protocol has
  them. Real-image FID statistics are cached per protocol hash under
  ``$LAYOUTDIFFUSE_DATA/cache/protocols/``.

Feature extractors, detectors, crop classifiers and diversity distances can be injected
(:class:`Scorers`); the defaults exist for ``layout-mnist`` only (the digit classifier, the digit
detector, the crop judge, digit-LPIPS). Nothing is downloaded.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..data.paths import data_root
from ..errors import UserError
from ..files import atomic_path, save_text
from .protocols.catalog import get_protocol
from .protocols.layouts import GENERATED, ProtocolData, load_protocol_data, real_images
from .protocols.spec import Protocol, file_sha256
from .protocols import scoring

log = logging.getLogger(__name__)
RUN_FILE, MANIFEST_FILE = "run.json", "manifest.json"


# --------------------------------------------------------------------------- images on disk


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> uint8 ``(B, C, H, W)`` (round half to even of ``(x + 1) / 2 * 255``)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_png(image: torch.Tensor, path: Path) -> None:
    """One image ``(C, H, W)`` in [-1, 1] as an 8-bit PNG (gray for ``C = 1``), written atomically."""
    array = to_uint8(image[None])[0].permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")


def load_pngs(paths: list[Path]) -> torch.Tensor:
    """PNGs -> ``(B, C, H, W)`` in [-1, 1]."""
    arrays = [np.asarray(Image.open(p)) for p in paths]
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1


def quantized(images: torch.Tensor) -> torch.Tensor:
    """``images`` as they read back from 8-bit PNG (the real images are scored as the generated ones are)."""
    return to_uint8(images).float() / 127.5 - 1


# --------------------------------------------------------------------------- the run's record


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must be i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise UserError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def image_name(k: int) -> str:
    return f"{k:06d}.png"


def run_header(protocol: Protocol, data: ProtocolData, ckpt: str | None, limit: int | None, sampling: dict[str, Any]) -> dict[str, Any]:
    """What fixes a run's images (written to ``run.json``)."""
    from .. import __version__
    from ..shipped import checkpoint_path

    path = checkpoint_path(ckpt)
    layouts = len(data.layouts) if limit is None else min(limit, len(data.layouts))
    return {"protocol": protocol.name, "protocol_sha256": protocol.sha256(), "layouts_sha256": data.layouts_sha256,
            "source_files_sha256": data.files, "checkpoint": str(ckpt) if ckpt is not None else f"shipped ({path.name})",
            "checkpoint_sha256": file_sha256(path), "package_version": __version__, **sampling,
            "seed": protocol.seed, "chunk": protocol.chunk, "limit": limit, "layouts": layouts,
            "samples_per_layout": protocol.samples_per_layout, "images": layouts * protocol.samples_per_layout,
            "image_format": protocol.image_format, "resolution": protocol.resolution}


def manifest(header: dict[str, Any], layout_ids: list[int]) -> dict[str, Any]:
    """``run.json``'s header plus one entry per image: file, layout index, its dataset id, sample, seed, chunk."""
    s, chunk = header["samples_per_layout"], header["chunk"]
    images = [{"file": f"images/{image_name(k)}", "layout": k // s, "layout_id": layout_ids[k // s], "sample": k % s,
               "chunk": k // chunk, "seed": header["seed"] + (k // chunk) * chunk} for k in range(header["images"])]
    return {**header, "image_list": images}


def write_json(path: Path, data: dict[str, Any]) -> None:
    save_text(json.dumps(data, indent=1, sort_keys=True) + "\n", path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({err})") from err


def claim_dir(out: Path, header: dict[str, Any]) -> None:
    """Write ``run.json`` in a new ``out``, or check that an existing one was made under the same header."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    if path.exists():
        old = read_json(path)
        diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
        if diff:
            raise UserError(f"{out} holds a run made under other settings ({', '.join(diff)} differ, e.g. {diff[0]}: "
                            f"{old.get(diff[0])!r} there, {header.get(diff[0])!r} now); resume with the same settings or use a new --out")
    else:
        write_json(path, header)


# --------------------------------------------------------------------------- sampling


def sample_run(module: Any, layouts: torch.Tensor, header: dict[str, Any], out: Path, shard: tuple[int, int] | None = None,
               phrases: list[str] | None = None) -> int:
    """Draw the missing images of the run's chunks (those of ``shard``); returns how many chunks were drawn.
    ``phrases``: for phrase layouts, the phrase of each class id of ``layouts`` (:meth:`ProtocolData.sampling_layouts`)."""
    from tqdm.auto import tqdm

    from ..sampling import sample_batched

    s, chunk, total = header["samples_per_layout"], header["chunk"], header["images"]
    per_image = layouts[: header["layouts"]].repeat_interleave(s, 0)
    chunks = [c for c in range(math.ceil(total / chunk)) if shard is None or c % shard[1] == shard[0]]
    (out / "images").mkdir(exist_ok=True)
    drawn = 0
    opts = {k: header[k] for k in ("sampler", "steps", "guidance")}
    for c in tqdm(chunks, desc=f"sampling {header['protocol']}", disable=not chunks):
        start, end = c * chunk, min((c + 1) * chunk, total)
        paths = [out / "images" / image_name(k) for k in range(start, end)]
        if all(p.exists() for p in paths):
            continue
        images = sample_batched(module, end - start, per_image[start:end], seed=header["seed"] + start, batch_size=chunk,
                                phrases=phrases, **opts)
        for image, path in zip(images, paths):
            if not path.exists():
                save_png(image, path)
        drawn += 1
    return drawn


# --------------------------------------------------------------------------- scoring


@dataclass
class Scorers:
    """What scores a run. ``extractor``: images ``(B, C, H, W)`` in [-1, 1] -> features ``(B, D)`` (FID),
    named ``extractor_name`` in the cache; ``detector``: see :data:`..detection.Detector`;
    ``classifier``: crops ``(K, 1|3, 28, 28)`` -> logits (layout accuracy); ``pairwise``: the samples
    ``(S, C, H, W)`` of one layout -> distances ``(S, S)`` (diversity). ``None``: that measure is not run.
    ``view``: what those four see of an image (colour Layout-MNIST: the grey canvas, the maximum over
    channels; ``None``: the image itself). ``judge``: a :class:`..color_judge.ColorJudge` for phrase
    layouts with colours (``colour_accuracy``, ``both_accuracy``), given the images themselves."""

    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None
    extractor_name: str = ""
    detector: Callable[[torch.Tensor], list[dict[str, torch.Tensor]]] | None = None
    classifier: torch.nn.Module | None = None
    pairwise: Callable[[torch.Tensor], torch.Tensor] | None = None
    view: Callable[[torch.Tensor], torch.Tensor] | None = None
    judge: Callable[..., Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def default_scorers(protocol: Protocol) -> Scorers:
    """The shipped scorers of the Layout-MNIST protocols (digit-FID trunk, digit detector, crop judge,
    digit-LPIPS; colour Layout-MNIST: the same on the grey canvas, and the colour judge); for other
    protocols none (inject them): their FID needs Inception weights and their detection score a COCO / VG
    detector, fetched on a user's machine."""
    if protocol.dataset not in GENERATED:
        why = "not available here: inject it (Scorers) on a machine that has the weights"
        return Scorers(skipped={m: why for m in protocol.metrics})
    from .classifier import load_digit_classifier
    from .color_judge import ColorJudge, grey_canvas
    from .crop_classifier import load_crop_classifier
    from .detection import DigitDetector
    from .diversity import pairwise_lpips

    digits, crops = load_digit_classifier(), load_crop_classifier()
    detector = DigitDetector(classifier=crops)
    colour = protocol.dataset == "layout_mnist_color"
    return Scorers(extractor=digits.features, extractor_name="digit_classifier", detector=detector, classifier=crops,
                   pairwise=lambda x: pairwise_lpips(x, digits), view=grey_canvas if colour else None,
                   judge=ColorJudge(classifier=crops, detector=detector) if colour else None)


def real_statistics(protocol: Protocol, data: ProtocolData, scorers: Scorers, cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)`` of the protocol's real reference images as the scorers see them (``view``), cached per
    protocol hash, extractor name and view."""
    path = None
    if cache is not None:
        seen_as = f"_{scorers.view.__name__}" if scorers.view is not None else ""
        path = cache / f"{protocol.name}-{protocol.sha256()[:16]}" / f"real_{scorers.extractor_name or 'features'}{seen_as}.pt"
        if path.exists():
            stats = torch.load(path, weights_only=True)
            return stats["mu"], stats["sigma"]
    reference = quantized(real_images(protocol, data, "reference"))
    feats = scoring.features_of(scorers.extractor, scorers.view(reference) if scorers.view is not None else reference)
    stats = scoring.FeatureStatistics()
    stats.update(feats)
    mu, sigma = stats.compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"mu": mu, "sigma": sigma, "n": len(feats)}, tmp)
    return mu, sigma


def layout_hits(images: torch.Tensor, layouts: torch.Tensor, classifier: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: boxes read as their class by the crop ``classifier`` and boxes, ``(B,)`` each."""
    from .classifier import to_gray
    from .crop_classifier import CROP
    from .layout_accuracy import crop_boxes

    crops, b_idx, labels = crop_boxes(to_gray(images), layouts, **CROP)
    with torch.inference_mode():
        preds = torch.cat([classifier(crops[i : i + 1024]).argmax(1) for i in range(0, len(crops), 1024)]) if len(crops) else labels
    correct = torch.bincount(b_idx, (preds == labels).double(), minlength=len(images))
    total = torch.bincount(b_idx, minlength=len(images)).double()
    return correct, total


def score_run(protocol: Protocol, data: ProtocolData, images: torch.Tensor, header: dict[str, Any], scorers: Scorers,
              cache: Path | None) -> dict[str, Any]:
    """The report's measures: ``{metric: {...value, ci95...}}`` and the real ceilings (see :mod:`.protocols.scoring`)."""
    from .detection import layout_targets

    s, boot = protocol.samples_per_layout, protocol.bootstrap
    layouts = data.layouts[: header["layouts"]]
    per_image = layouts.repeat_interleave(s, 0)
    result: dict[str, Any] = {"skipped": dict(scorers.skipped)}
    if scorers.judge is not None and data.colours is not None:
        result.update(colour_scores(images, protocol, data, header, scorers.judge, s, boot))
    view = scorers.view or (lambda x: x)
    images = view(images)
    real = None
    if "fid" in protocol.metrics and scorers.extractor is not None:
        stats = real_statistics(protocol, data, scorers, cache)
        result["fid"] = scoring.fid_score(scoring.features_of(scorers.extractor, images), stats, s, boot)
        if protocol.dataset in GENERATED and header["layouts"] >= 2:  # the floor: real images disjoint from the reference
            real = view(quantized(real_images(protocol, data, "layouts", header["layouts"])))
            floor = scoring.fid_score(scoring.features_of(scorers.extractor, real), stats, 1, {**boot, "resamples": 1})
            result["fid"]["real_layout_images_vs_reference"] = floor["value"]
    if "detection" in protocol.metrics and scorers.detector is not None:
        targets = layout_targets(per_image, tuple(images.shape[-2:]))
        result["detection"] = scoring.detection_scores(scorers.detector(images), targets, s, boot)
        real = real if real is not None else view(quantized(real_images(protocol, data, "layouts", header["layouts"])))
        ceiling = scoring.detection_scores(scorers.detector(real), layout_targets(layouts, tuple(real.shape[-2:])), 1, {**boot, "resamples": 1})
        for key in ("ap", "ap50", "ap75"):
            result["detection"][key]["real_ceiling"] = ceiling[key]["value"]
    if "layout_accuracy" in protocol.metrics and scorers.classifier is not None:
        result["layout_accuracy"] = scoring.ratio_score(*layout_hits(images, per_image, scorers.classifier), s, boot)
        real = real if real is not None else view(quantized(real_images(protocol, data, "layouts", header["layouts"])))
        result["layout_accuracy"]["real_ceiling"] = scoring.ratio_score(*layout_hits(real, layouts, scorers.classifier), 1, {**boot, "resamples": 1})["value"]
    if "diversity" in protocol.metrics and scorers.pairwise is not None:
        if s < 2:
            result["skipped"]["diversity"] = "needs >= 2 samples per layout"
        else:
            i, j = torch.triu_indices(s, s, offset=1)
            per_layout = torch.stack([scorers.pairwise(images[k * s : (k + 1) * s])[i, j].mean() for k in range(len(layouts))])
            result["diversity"] = scoring.mean_score(per_layout, boot)
    return result


def colour_scores(images: torch.Tensor, protocol: Protocol, data: ProtocolData, header: dict[str, Any], judge: Callable[..., Any],
                  samples: int, boot: dict[str, Any]) -> dict[str, Any]:
    """``colour_accuracy`` and ``both_accuracy`` (digit and colour right, one digit in the box) of every box, by
    the colour ``judge``, each with its interval and the same verdict on the layouts' real images."""
    count = header["layouts"]
    layouts, colours = data.layouts[:count], data.colours[:count]
    fake = judge(images, layouts.repeat_interleave(samples, 0), colours.repeat_interleave(samples, 0))
    real = judge(quantized(real_images(protocol, data, "layouts", count)), layouts, colours)
    out = {}
    for what in ("colour", "both"):
        per_image = [torch.bincount(j.image_index, weights=getattr(j, f"{what}_ok").double(), minlength=n)
                     for j, n in ((fake, len(images)), (real, count))]
        totals = [torch.bincount(j.image_index, minlength=n).double() for j, n in ((fake, len(images)), (real, count))]
        score = scoring.ratio_score(per_image[0], totals[0], samples, boot)
        score["real_ceiling"] = scoring.ratio_score(per_image[1], totals[1], 1, {**boot, "resamples": 1})["value"]
        out[f"{what}_accuracy"] = score
    return out


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table with a header saying exactly what ran."""
    r, run = report["scores"], report["run"]
    lines = [f"# {run['protocol']} — {run['checkpoint']}", "",
             f"- protocol sha256 `{run['protocol_sha256']}`; layouts sha256 `{run['layouts_sha256']}`",
             f"- checkpoint sha256 `{run['checkpoint_sha256']}`; layoutdiffuse {run['package_version']}",
             f"- {run['layouts']} layouts x {run['samples_per_layout']} samples = {run['images']} images at {run['resolution']} px "
             f"({run['image_format'].upper()}){' (--limit ' + str(run['limit']) + ')' if run['limit'] is not None else ''}",
             f"- sampler {run['sampler']}, {run['steps']} steps, guidance {run['guidance']}; seeds {run['seed']} + first image of each "
             f"chunk of {run['chunk']}",
             f"- FID: {report['protocol']['fid'].get('implementation')} ({report['protocol']['fid'].get('mode')}); detector: "
             f"{report['protocol']['detector']}; intervals: bootstrap over layouts, {report['protocol']['bootstrap']['resamples']} resamples",
             f"- {report['machine']}; sampling {report['seconds']['sampling']} s, scoring {report['seconds']['scoring']} s", "",
             "| measure | value | 95 % interval | real images |", "|---|---|---|---|"]

    def row(name: str, m: dict[str, Any], ceiling_key: str = "real_ceiling") -> None:
        ceiling = m.get(ceiling_key)
        lines.append(f"| {name} | {m['value']:.4f} | {m['ci95'][0]:.4f} – {m['ci95'][1]:.4f} | {'' if ceiling is None else f'{ceiling:.4f}'} |")

    if "fid" in r:
        row("FID", r["fid"], "real_layout_images_vs_reference")
    for key, name in (("ap", "detection AP"), ("ap50", "detection AP50"), ("ap75", "detection AP75")):
        if "detection" in r:
            row(name, r["detection"][key])
    if "layout_accuracy" in r:
        row("layout accuracy", r["layout_accuracy"])
    if "colour_accuracy" in r:
        row("colour accuracy (ink colour as asked)", r["colour_accuracy"])
        row("digit and colour right, one digit per box", r["both_accuracy"])
    if "diversity" in r:
        row("diversity", r["diversity"])
    for name, why in r["skipped"].items():
        lines.append(f"| {name} | not run: {why} | | |")
    if "fid" in r:
        lines += ["", "FID's bootstrap interval lies above the value: resampled sets repeat images, which raises FID; "
                  "it shows the spread over layouts. Intervals: percentile bootstrap over layouts."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the command


def check_model_reads(protocol: Protocol, data: ProtocolData, module: Any) -> None:
    """Refuse, in one line, a model that cannot read the protocol's layouts or makes other images than its real ones."""
    if data.phrases is not None and not module.is_phrase_model:
        raise UserError(f"protocol {protocol.name} gives a phrase per box; this model reads the classes "
                        f"{', '.join(module.label_names[:12])}: use a text model (e.g. --ckpt layout-mnist-color)")
    if data.phrases is None and module.is_phrase_model:
        raise UserError(f"protocol {protocol.name} gives a class per box; this model reads a phrase per box: use a protocol with "
                        "phrases (e.g. layout-mnist-color)")
    channels = data.dataset[0]["image"].shape[0] if len(data.layouts) and protocol.dataset in GENERATED else None
    if channels is not None and module.image_shape[0] != channels:
        raise UserError(f"protocol {protocol.name} has {channels}-channel images, the checkpoint makes {module.image_shape[0]}-channel images")


def evaluate_protocol(name: str | Protocol, out: str | Path, ckpt: str | None = None, limit: int | None = None, shard: str | None = None,
                      merge: bool = False, root: str | None = None, sampler: str | None = None, steps: int | None = None,
                      guidance: float | None = None, scorers: Scorers | None = None, module: Any = None,
                      cache: str | Path | None = "default") -> dict[str, Any] | None:
    """Run protocol ``name`` into ``out`` (see the module docstring); returns the report (``None`` after a shard)."""
    from ..sampling import load_model

    protocol = get_protocol(name) if isinstance(name, str) else name
    part = parse_shard(shard)
    if part is not None and merge:
        raise UserError("--shard draws one part, --merge scores the whole: give one of them")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 layouts, got {limit}")
    out = Path(out)
    data = load_protocol_data(protocol, root)
    module = module if module is not None else load_model(ckpt)
    if module.image_shape[-1] != protocol.resolution:
        raise UserError(f"protocol {protocol.name} is at {protocol.resolution} px, the checkpoint makes {module.image_shape[-1]} px images")
    check_model_reads(protocol, data, module)
    used = {**module.sampling_args, **{k: v for k, v in dict(sampler=sampler, steps=steps, guidance=guidance).items() if v is not None}}
    header = run_header(protocol, data, ckpt, limit, {k: used.get(k) for k in ("sampler", "steps", "guidance")})
    claim_dir(out, header)
    start = time.perf_counter()
    if not merge:
        drawn = sample_run(module, data.sampling_layouts(), header, out, part, phrases=data.phrases)
        log.info("%s: drew %d chunks into %s", protocol.name, drawn, out)
    sampling_seconds = round(time.perf_counter() - start, 1)
    if part is not None:
        log.info("shard %s done; when every shard's images are in %s, run again with --merge", shard, out)
        return None
    paths = [out / "images" / image_name(k) for k in range(header["images"])]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{out}: {len(missing)} of {len(paths)} images are missing (e.g. {missing[0]}); run the missing shards first")
    write_json(out / MANIFEST_FILE, manifest(header, data.ids))
    start = time.perf_counter()
    images = load_pngs(paths)
    scorers = scorers if scorers is not None else default_scorers(protocol)
    cache_dir = data_root(root) / "cache" / "protocols" if cache == "default" else (Path(cache) if cache is not None else None)
    scores = score_run(protocol, data, images, header, scorers, cache_dir)
    report = {"run": header, "protocol": protocol.to_dict(), "scores": scores,
              "seconds": {"sampling": sampling_seconds, "scoring": round(time.perf_counter() - start, 1)},
              "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                         f"{os.cpu_count()} CPUs, device {module.device}"}
    write_json(out / "report.json", report)
    save_text(markdown(report), out / "report.md")
    return report
