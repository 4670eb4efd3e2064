"""Fuzz table: feed bad (and a few good) inputs of every kind a user gives, and count how each ends.

    python benchmarks/fuzz_inputs.py            # JSON table on stdout (about a minute on 2 CPU cores)
    python benchmarks/fuzz_inputs.py --cases    # ... with every case and its first line

Kinds: config (a JSON experiment config and ``--set`` overrides), layout file, layout tensor,
checkpoint, CLI numbers, paths. Each case ends as one of

* ``clear message``: a :class:`layoutdiffuse.errors.UserError` (the CLI: exit 2 and one ``error:``
  line; argparse's own usage error counts too);
* ``valid result``: it ran and returned a valid result (a validated config, a layout, images, a module);
* ``traceback``: any other exception -- a defect.

Everything runs in this process on the shipped Layout-MNIST model (sampling with 1-2 steps) and in a
temporary folder; nothing is trained and nothing is downloaded. See docs/bad_input.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layoutdiffuse.cli import main  # noqa: E402
from layoutdiffuse.config import load_config, set_override, validate  # noqa: E402
from layoutdiffuse.errors import UserError  # noqa: E402
from layoutdiffuse.experiment import experiment_dir, load_checkpoint  # noqa: E402
from layoutdiffuse.layout_file import load_layout  # noqa: E402
from layoutdiffuse.sampling import SHIPPED_MODEL, sample  # noqa: E402

DIGITS = [str(i) for i in range(10)]
SEVEN = {"label": "7", "box": [0.1, 0.1, 0.5, 0.8]}
CLEAR, VALID, TRACEBACK = "clear message", "valid result", "traceback"


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """Run ``fn`` -> (how it ended, first line of its message)."""
    try:
        fn()
    except UserError as err:
        return CLEAR, str(err).splitlines()[0][:160]
    except Exception as err:  # noqa: BLE001 -- counting defects is the point
        return TRACEBACK, f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return VALID, ""


def cli(argv: list[str]) -> Callable[[], None]:
    """``python -m layoutdiffuse ARGV`` in this process: exit 2 with one error line is a clear message."""
    def run() -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse: usage + one error line, exit 2
                code = exit_.code
        lines = [line for line in err.getvalue().splitlines() if line.strip() and "%|" not in line]  # not the progress bar
        if code == 2 and lines and (lines[-1].startswith("error: ") or ": error: " in lines[-1]):
            raise UserError(lines[-1])
        if code != 0:
            raise RuntimeError(f"exit {code}: {lines[-1] if lines else ''}")

    return run


def config_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    base = json.loads((REPO / "configs" / "mnist.json").read_text())

    def override(assignment: str) -> Callable[[], Any]:
        return lambda: (validate(config := set_override(base, assignment)), experiment_dir(config))

    overrides = [
        "denoising_model.num_heads=0", "denoising_model.num_heads=-1", "denoising_model.num_heads=3", "denoising_model.base_channel=0",
        "denoising_model.base_channel=2.5", "denoising_model.channel_mult=[]", "denoising_model.channel_mult=[0]",
        "denoising_model.num_res_blocks=-1", "denoising_model.dropout=1.5", "denoising_model.attn_levels=[7]",
        "denoising_model.res_block_type=nope", "denoising_model.unknown=1",
        "trainer_args.max_steps=-5", "trainer_args.max_steps=0", "trainer_args.max_steps=1.5", "trainer_args.max_epochs=-3",
        "trainer_args.no_such_arg=1", "data.image_size=0", "data.image_size=-32", "data.image_size=30", "data.batch_size=0",
        "data.num_workers=-1", "data.dataset=nope", "diffusion.optimizer.lrr=0.001", "diffusion.optimizer.lr=-1",
        "diffusion.optimizer.lr=\"fast\"", "diffusion.lr_scheduler.warmup=3", "diffusion.lr_scheduler.total_steps=0",
        "diffusion.ema_decay=1.5", "diffusion.ema_decay=-0.1", "diffusion.cond_drop_prob=2", "diffusion.num_timesteps=0",
        "diffusion.prediction=nope", "diffusion.sampling.guidance=NaN", "seed=\"x\"", "expt_name=3", "nosection=1",
        "trainer_args.max_steps=200", "data.image_size=16",  # valid
    ]
    cases = {f"--set {a}": override(a) for a in overrides}
    no_dir = dict(base)
    del no_dir["expt_dir"]
    cases["no expt_dir (run would write into the cwd)"] = lambda: (validate(no_dir), experiment_dir(no_dir))
    for name, text in {"not JSON": "{", "a list": "[]", "empty object": "{}", "BOM": "\ufeff" + json.dumps(base),
                       "deep nesting": "[" * 100_000 + "]" * 100_000}.items():
        path = tmp / f"config_{len(cases)}.json"
        path.write_text(text)
        cases[f"config file: {name}"] = lambda path=path: load_config(path)
    cases["config file: configs/mnist.json"] = lambda: (load_config(REPO / "configs" / "mnist.json"), experiment_dir(base))
    return cases


def layout_file_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    folder = tmp / "layouts"
    folder.mkdir()
    contents: dict[str, bytes | None] = {
        "valid": json.dumps([SEVEN]).encode(), "empty list (unconditional)": b"[]", "UTF-8 BOM": b"\xef\xbb\xbf" + json.dumps([SEVEN]).encode(),
        "not JSON": b"[{", "binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "UTF-16": json.dumps([SEVEN]).encode("utf-16"),
        "an object, not a list": json.dumps(SEVEN).encode(), "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "50 MB": json.dumps([SEVEN] * 700_000).encode(), "300 objects": json.dumps([SEVEN] * 300).encode(),
        "unknown label": json.dumps([{"label": "cat", "box": [0, 0, 1, 1]}]).encode(),
        "label id 10": json.dumps([{"label": 10, "box": [0, 0, 1, 1]}]).encode(),
        "label -1": json.dumps([{"label": -1, "box": [0, 0, 1, 1]}]).encode(),
        "label true": json.dumps([{"label": True, "box": [0, 0, 1, 1]}]).encode(),
        "box of 3": json.dumps([{"label": "7", "box": [0, 0, 1]}]).encode(),
        "box of strings": json.dumps([{"label": "7", "box": ["0", 0, 1, 1]}]).encode(),
        "box NaN": b'[{"label": "7", "box": [NaN, 0, 0.5, 0.5]}]', "box Infinity": b'[{"label": "7", "box": [0, 0, Infinity, 0.5]}]',
        "box 1e400": b'[{"label": "7", "box": [0, 0, 1e400, 0.5]}]', "negative size": json.dumps([{"label": "7", "box": [0.5, 0.5, -0.2, 0.2]}]).encode(),
        "box leaves the image": json.dumps([{"label": "7", "box": [0.8, 0.8, 0.5, 0.5]}]).encode(),
        "extra key": json.dumps([{"label": "7", "box": [0, 0, 1, 1], "z": 1}]).encode(), "missing box": json.dumps([{"label": "7"}]).encode(),
        "null": b"null", "empty file": b"",
    }
    cases: dict[str, Callable[[], Any]] = {}
    for i, (name, data) in enumerate(contents.items()):
        path = folder / f"layout_{i}.json"
        path.write_bytes(data)
        cases[name] = lambda path=path: load_layout(path, DIGITS)
    cases["a folder"] = lambda: load_layout(folder, DIGITS)
    cases["missing file"] = lambda: load_layout(folder / "missing.json", DIGITS)
    cases["/dev/null"] = lambda: load_layout("/dev/null", DIGITS)
    return cases


def layout_tensor_cases() -> dict[str, Callable[[], Any]]:
    row = [0.1, 0.1, 0.5, 0.8, 7.0]
    pad = [0.0, 0.0, 0.0, 0.0, -1.0]
    tensors: dict[str, Any] = {
        "valid (N, 5)": torch.tensor([row]), "empty (0, 5)": torch.zeros(0, 5), "padding row": torch.tensor([row, pad]),
        "batched (3, 1, 5)": torch.tensor([[row], [row], [pad]]), "class -5": torch.tensor([row, [0.5, 0.5, 0.9, 0.9, -5.0]]),
        "class -2": torch.tensor([[0.1, 0.1, 0.2, 0.2, -2.0]]), "class 10": torch.tensor([[0.1, 0.1, 0.2, 0.2, 10.0]]),
        "class 2.5": torch.tensor([[0.1, 0.1, 0.2, 0.2, 2.5]]), "class NaN": torch.tensor([[0.1, 0.1, 0.2, 0.2, float("nan")]]),
        "box NaN": torch.tensor([[float("nan"), 0.1, 0.2, 0.2, 1.0]]), "box inf": torch.tensor([[0.1, 0.1, float("inf"), 0.2, 1.0]]),
        "size 0": torch.tensor([[0.1, 0.1, 0.0, 0.2, 1.0]]), "box outside": torch.tensor([[0.9, 0.9, 0.5, 0.5, 1.0]]),
        "shape (5,)": torch.tensor(row), "shape (1, 4)": torch.tensor([row[:4]]), "shape (1, 1, 1, 5)": torch.tensor([[[row]]]),
        "int64 tensor": torch.tensor([[0, 0, 1, 1, 7]]), "bool tensor": torch.ones(1, 5, dtype=torch.bool),
        "complex tensor": torch.tensor([row], dtype=torch.complex64), "a string": "not a layout file", "a dict": {"label": "7"},
        "list of 300 objects": [SEVEN] * 300,
    }
    cases = {name: (lambda t=t: sample(t, steps=1)) for name, t in tensors.items()}
    cases["batched (3, 1, 5) with n=2"] = lambda: sample(tensors["batched (3, 1, 5)"], n=2, steps=1)
    for n in (2.5, "3", True, 0, -1, 3):
        cases[f"n={n!r}"] = lambda n=n: sample([SEVEN], n=n, steps=1)
    return cases


def write_safetensors(path: Path, edit: Callable[[dict, dict], None]) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(SHIPPED_MODEL), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    return path


def checkpoint_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    folder = tmp / "ckpts"
    folder.mkdir()
    files: dict[str, Path] = {}

    def put(name: str, data: bytes, suffix: str = ".ckpt") -> None:
        files[name] = folder / f"{len(files)}{suffix}"
        files[name].write_bytes(data)

    put("empty .ckpt", b"")
    put("junk .ckpt", b"not a checkpoint at all")
    put("empty .safetensors", b"", ".safetensors")
    put("junk .safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{junk", ".safetensors")
    raw = SHIPPED_MODEL.read_bytes()
    put("truncated .safetensors", raw[: len(raw) // 2], ".safetensors")
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [600_000_000]
    blob = json.dumps(header).encode()
    put("header announcing a 2.4 GB tensor", struct.pack("<Q", len(blob)) + blob + raw[8 + n :], ".safetensors")
    put("header length 2**40", struct.pack("<Q", 2**40) + raw[8:], ".safetensors")
    for name, obj in {"pickled code (print)": {"layoutdiffuse": {}, "state_dict": {}, "x": print},
                      "pickled object (Path)": {"layoutdiffuse": {}, "state_dict": {}, "x": Path("/")},
                      "foreign dict": {"state_dict": {}}, "a tensor": torch.zeros(3),
                      "meta without model": {"layoutdiffuse": {"config": {}}, "state_dict": {}}}.items():
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        put(name, buffer.getvalue())
    (folder / "ckpt_folder.ckpt").mkdir()
    files["a folder"] = folder / "ckpt_folder.ckpt"
    files["missing"] = folder / "missing.ckpt"

    def misfit(tensors: dict, meta: dict) -> None:
        k = next(k for k in tensors if k.endswith("time_embed.0.weight"))
        tensors[k] = tensors[k][:, :8].contiguous()

    def huge_model(tensors: dict, meta: dict) -> None:
        info = json.loads(meta["layoutdiffuse"])
        info["model"]["base_channel"] = 4096
        meta["layoutdiffuse"] = json.dumps(info)

    def bad_json(tensors: dict, meta: dict) -> None:
        meta["layoutdiffuse"] = "{"

    def no_meta(tensors: dict, meta: dict) -> None:
        meta.clear()
        meta["other"] = "1"

    def missing_key(tensors: dict, meta: dict) -> None:
        del tensors[next(iter(tensors))]

    def zero_heads(tensors: dict, meta: dict) -> None:
        info = json.loads(meta["layoutdiffuse"])
        info["model"]["num_heads"] = 0
        meta["layoutdiffuse"] = json.dumps(info)

    for name, edit in {"tensor shape does not fit": misfit, "metadata announcing a 60 GB model": huge_model,
                       "metadata not JSON": bad_json, "no layoutdiffuse metadata": no_meta, "a tensor missing": missing_key,
                       "metadata num_heads=0": zero_heads, "shipped model re-saved": lambda t, m: None}.items():
        files[name] = write_safetensors(folder / f"{len(files)}.safetensors", edit)
    files["the shipped model"] = SHIPPED_MODEL
    return {name: (lambda path=path: load_checkpoint(path)) for name, path in files.items()}


def cli_number_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    out = str(tmp / "cli.png")
    sample_cli = ["sample", "--n", "1", "--steps", "1", "--out", out]
    cases = {}
    for flag, values in {"--n": ["0", "-1", "100000", "2.5", "abc", "2"], "--steps": ["0", "-3", "1001", "1e3", "1", "2"],
                         "--guidance": ["nan", "inf", "-inf", "1e9", "-1", "0", "3"], "--seed": ["-1", str(2**70), "7"]}.items():
        for value in values:
            argv = [a for a in sample_cli]
            if flag in argv:
                i = argv.index(flag)
                del argv[i : i + 2]
            cases[f"sample {flag}={value}"] = cli([*argv, f"{flag}={value}"])
    cases["sample --sampler=nope"] = cli([*sample_cli, "--sampler=nope"])
    for sampler in ("ancestral", "ddim", "plms", "dpm++", "dpm++sde"):
        cases[f"sample --sampler={sampler} --steps=1"] = cli([*sample_cli, f"--sampler={sampler}"])
    shipped = str(SHIPPED_MODEL)
    for argv in (["--n=0", "--fid"], ["--batch-size=0", "--fid"], ["--n=1", "--fid"], []):
        cases[f"evaluate {' '.join(argv) or '(nothing to evaluate)'}"] = cli(["evaluate", "--ckpt", shipped, *argv])
    config = str(REPO / "configs" / "mnist.json")
    for assignment in ("trainer_args.max_steps=-5", "denoising_model.num_heads=0", "data.image_size=0", "diffusion.ema_decay=1.5",
                       "diffusion.optimizer.lrr=1", "trainer_args.max_steps", "expt_dir=3", "trainer_args.val_check_interval=-3"):
        cases[f"train --set {assignment}"] = cli(["train", "-c", config, "--set", f"expt_dir={tmp / 'runs'}", "--set", assignment])
    return cases


def path_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    (tmp / "a_file").write_text("")
    sample_cli = ["sample", "--n", "1", "--steps", "1"]
    cases = {
        "--out into a new nested folder": cli([*sample_cli, "--out", str(tmp / "new" / "deep" / "x.png")]),
        "--out is a folder": cli([*sample_cli, "--out", str(tmp)]),
        "--out under a file": cli([*sample_cli, "--out", str(tmp / "a_file" / "x.png")]),
        "--out .jpg": cli([*sample_cli, "--out", str(tmp / "x.jpg")]),
        "--out in /proc": cli([*sample_cli, "--out", "/proc/x.png"]),
        "--ckpt missing": cli([*sample_cli, "--ckpt", str(tmp / "missing.ckpt"), "--out", str(tmp / "y.png")]),
        "--ckpt is a folder": cli([*sample_cli, "--ckpt", str(tmp), "--out", str(tmp / "y.png")]),
        "--layout missing": cli([*sample_cli, "--layout", str(tmp / "missing.json"), "--out", str(tmp / "y.png")]),
        "--layout is a folder": cli([*sample_cli, "--layout", str(tmp), "--out", str(tmp / "y.png")]),
        "train -c missing": cli(["train", "-c", str(tmp / "missing.json")]),
        "train -c a folder": cli(["train", "-c", str(tmp)]),
        "train --resume missing": cli(["train", "-c", str(REPO / "configs" / "mnist.json"), "--set", f"expt_dir={tmp}",
                                       "--set", "data.root=/nonexistent", "--resume", str(tmp / "missing.ckpt")]),
        "evaluate --nll --data-root missing": cli(["evaluate", "--ckpt", str(SHIPPED_MODEL), "--nll", "--n", "2", "--data-root", str(tmp / "none")]),
    }
    ro = tmp / "read_only"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode == 0:
        cases["--out on a read-only file system"] = cli([*sample_cli, "--out", str(ro / "x.png")])
    return cases


def no_training(config: dict[str, Any], resume: Any = None, **overrides: Any) -> None:
    """Stands in for ``experiment.train`` in the ``train`` cases: every check a run makes before its
    first step (config, experiment folder, Lightning's Trainer), then a refusal to train here. A bad
    value that gets this far was accepted although wrong, and counts as a defect."""
    from layoutdiffuse import experiment

    validate(config)
    if resume:
        experiment.read_checkpoint(resume)
    experiment.build_trainer(config, logger=False)
    raise RuntimeError("accepted: training would start")


def main_(show_cases: bool) -> dict[str, Any]:
    from layoutdiffuse import experiment

    experiment.train = no_training
    logging.disable(logging.CRITICAL)
    torch.set_num_threads(1)
    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            kinds = {"config": config_cases(tmp), "layout file": layout_file_cases(tmp), "layout tensor": layout_tensor_cases(),
                     "checkpoint": checkpoint_cases(tmp), "CLI numbers": cli_number_cases(tmp), "paths": path_cases(tmp)}
            for kind, cases in kinds.items():
                results = {name: outcome(fn) for name, fn in cases.items()}
                counts = {end: sum(r[0] == end for r in results.values()) for end in (CLEAR, VALID, TRACEBACK)}
                table[kind] = {"tried": len(results), **counts, "tracebacks": {k: v[1] for k, v in results.items() if v[0] == TRACEBACK}}
                if show_cases:
                    table[kind]["cases"] = {k: f"{v[0]}: {v[1]}" if v[1] else v[0] for k, v in results.items()}
        finally:
            subprocess.run(["umount", "--lazy", str(tmp / "read_only")], capture_output=True)
    table["total"] = {key: sum(v[key] for v in table.values()) for key in ("tried", CLEAR, VALID, TRACEBACK)}
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", action="store_true", help="list every case with how it ended")
    sys.stdout.write(json.dumps(main_(parser.parse_args().cases), indent=1) + "\n")
