"""Fuzz table: feed bad (and a few good) inputs of every kind a user gives, and count how each ends.

    python benchmarks/fuzz_inputs.py            # JSON table on stdout (about 4 minutes on 2 busy CPU cores)
    python benchmarks/fuzz_inputs.py --cases    # ... with every case and its first line

Kinds: config (a JSON experiment config and ``--set`` overrides), layout file, layout tensor,
checkpoint, CLI numbers, paths, and the classes of issue 27: data loss, silent wrong results,
unbounded sizes, hangs (FIFOs), unclear messages. Each case ends as one of

* ``clear message``: a :class:`layoutdiffuse.errors.UserError` (the CLI: exit 2 and one ``error:``
  line; argparse's own usage error counts too);
* ``valid result``: it ran and returned a valid result (a validated config, a layout, images, a module);
* ``traceback``: any other exception -- a defect;
* ``unclear message``: a clear message that misleads (it lacks what the case expects it to name,
  says "does not exist" for a path that exists, or runs over 1,000 characters) -- a defect;
* ``silent wrong result``: bad input accepted, or a result that is wrong (checked) -- a defect;
* ``data loss``: a file (a previous output, a checkpoint, a FIFO or device node) replaced or lost -- a defect;
* ``hang``: still blocked after 60 s (a FIFO read) -- a defect.

No case runs code from a file: pickled checkpoints are written here and must be refused.

Everything runs in this process on the shipped Layout-MNIST model (sampling with 1-2 steps) and in a
temporary folder; nothing is downloaded, and the only training is the SIGTERM case's tiny UNet (a
child process, 24-512 MNIST digits). See docs/bad_input.md.
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
UNCLEAR, SILENT, LOSS, HANG = "unclear message", "silent wrong result", "data loss", "hang"
ENDS = (CLEAR, VALID, TRACEBACK, UNCLEAR, SILENT, LOSS, HANG)
REAL_TRAIN: Callable[..., Any]  # experiment.train (the `train` CLI cases get a stand-in that trains nothing)


class Silent(Exception):
    """Raised by a case whose input was accepted although wrong, or whose result is wrong."""


class Lost(Exception):
    """Raised by a case that finds a file replaced or lost."""


class Hung(BaseException):
    """Raised by the alarm when a case blocks for longer than ``HANG_SECONDS``."""


HANG_SECONDS = 60
#: a message longer than this echoes too much (lists of allowed keys fit; a 900 KB value does not)
MAX_MESSAGE = 1000


class Case:
    """A case with expectations: ``bad`` input must be refused (accepted = silent wrong result); the
    refusal must name ``expect`` and must not say ``never`` (else: unclear message)."""

    def __init__(self, fn: Callable[[], Any], bad: bool = False, expect: str | None = None, never: str | None = None,
                 seconds: int = HANG_SECONDS):
        self.fn, self.bad, self.expect, self.never, self.seconds = fn, bad, expect, never, seconds

    def __call__(self) -> Any:
        return self.fn()


def refused(fn: Callable[[], Any], expect: str | None = None, never: str | None = None) -> Case:
    return Case(fn, bad=True, expect=expect, never=never)


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """Run ``fn`` (a callable or a :class:`Case`) -> (how it ended, first line of its message)."""
    import signal

    def hung(*args: Any) -> None:
        raise Hung()

    seconds = getattr(fn, "seconds", HANG_SECONDS)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        fn()
    except Hung:
        return HANG, f"blocked for {seconds} s"
    except Silent as err:
        return SILENT, str(err)[:160]
    except Lost as err:
        return LOSS, str(err)[:160]
    except UserError as err:
        text = str(err)
        first = text.splitlines()[0][:160]
        if isinstance(fn, Case) and ((fn.expect and fn.expect not in text) or (fn.never and fn.never in text)):
            return UNCLEAR, first
        if len(text) > MAX_MESSAGE:
            return UNCLEAR, f"({len(text)} characters) {first}"
        return CLEAR, first
    except Exception as err:  # noqa: BLE001 -- counting defects is the point
        return TRACEBACK, f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(fn, Case) and fn.bad:
        return SILENT, "accepted"
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


# --------------------------------------------------------------------------- issue 27's classes
@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def full_disk_save(self: Any, fp: Any, format: Any = None, **kwargs: Any) -> None:
    """``PIL.Image.save`` on a full disk: half a file, then ENOSPC."""
    import errno
    import os

    with open(fp, "wb") as f:
        f.write(b"\x89PNG")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def edit_inputs(tmp: Path) -> list[str]:
    """``edit`` arguments for a black canvas, a 7 re-labelled as a 3 (1 sampling step)."""
    from layoutdiffuse.editing import save_image

    folder = tmp / "edit"
    if not folder.exists():
        folder.mkdir()
        save_image(torch.zeros(1, 32, 32) - 1, folder / "in.png")
        (folder / "old.json").write_text(json.dumps([SEVEN]))
        (folder / "new.json").write_text(json.dumps([{**SEVEN, "label": "3"}]))
    return ["edit", "--image", str(folder / "in.png"), "--layout", str(folder / "old.json"), "--new-layout", str(folder / "new.json"), "--steps", "1"]


def tiny_train_config(tmp: Path, name: str, steps: int) -> dict[str, Any]:
    """A UNet of 8 channels on 24 MNIST digits of 16 px (as in tests/test_training.py)."""
    config = json.loads((REPO / "configs" / "mnist.json").read_text())
    config.update(expt_name=name, expt_dir=str(tmp / "runs"))
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[1])
    config["data"].update(limit=24, batch_size=8, num_workers=0, image_size=16)
    config["diffusion"]["lr_scheduler"] = {"name": "cosine", "warmup_steps": 2, "total_steps": 8}
    config["trainer_args"] = {"max_steps": steps, "accelerator": "cpu", "limit_val_batches": 0, "enable_progress_bar": False, "logger": False}
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 100_000}}
    return config


def kept(paths: dict[Path, bytes], fifos: list[Path] = ()) -> None:
    """Raise :class:`Lost` when a file's bytes changed or a FIFO / device node was replaced."""
    import stat

    changed = [str(p) for p, data in paths.items() if not p.is_file() or p.read_bytes() != data]
    replaced = [str(p) for p in fifos if stat.S_ISREG(p.lstat().st_mode)]
    if changed or replaced:
        raise Lost(f"replaced: {', '.join(changed + replaced)}")


def data_loss_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    import os
    import stat

    from PIL import Image

    folder = tmp / "loss"
    folder.mkdir()
    cases: dict[str, Callable[[], Any]] = {}

    def full_disk_edit() -> None:
        outs = {folder / f"full_{i:03d}.png": b"previous" for i in range(3)}
        for path, data in outs.items():
            path.write_bytes(data)
        try:
            with patched(Image.Image, "save", full_disk_save):
                cli([*edit_inputs(tmp), "--n", "3", "--out", str(folder / "full.png")])()
        finally:
            kept(outs)
    cases["edit --out on a full disk (--n 3)"] = refused(full_disk_edit, expect="no space left")

    def full_disk_sample() -> None:
        out = folder / "grid.png"
        out.write_bytes(b"previous")
        try:
            with patched(Image.Image, "save", full_disk_save):
                cli(["sample", "--n", "1", "--steps", "1", "--out", str(out)])()
        finally:
            kept({out: b"previous"})
    cases["sample --out on a full disk"] = refused(full_disk_sample, expect="no space left")

    def special_out(kind: str) -> Callable[[], None]:
        def run() -> None:
            path = folder / f"special_{kind}.png"
            if kind == "fifo":
                os.mkfifo(path)
            else:
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
            try:
                cli(["sample", "--n", "1", "--steps", "1", "--out", str(path)])()
            finally:
                kept({}, [path])
        return run
    cases["sample --out naming a FIFO"] = refused(special_out("fifo"), expect="FIFO")
    if os.geteuid() == 0:
        cases["sample --out naming a device node"] = refused(special_out("device"), expect="character device")

    def rerun_finished() -> None:
        config = tiny_train_config(tmp, "finished", 2)
        last = Path(config["expt_dir"]) / "finished" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"the only copy of the later weights")
        path = folder / "finished.json"
        path.write_text(json.dumps(config))
        try:
            cli(["train", "-c", str(path), "--set", "trainer_args.max_steps=1"])()
        finally:
            kept({last: b"the only copy of the later weights"})
    cases["train re-run of a finished experiment, no --resume"] = refused(rerun_finished, expect="--resume last")

    def stale_temporary() -> None:
        import subprocess as sp

        proc = sp.Popen(["true"])
        proc.wait()
        out = folder / "stale" / "x.png"
        out.parent.mkdir()
        stale = out.parent / f".last.ckpt.{proc.pid}.tmp"
        stale.write_bytes(b"x" * 4096)
        cli(["sample", "--n", "1", "--steps", "1", "--out", str(out)])()
        if stale.exists():
            raise Lost(f"the stale temporary {stale.name} of a dead process was left behind")
    cases["stale .NAME.PID.tmp of a killed run"] = stale_temporary

    def sigterm() -> None:
        import signal
        import subprocess as sp

        config = tiny_train_config(tmp, "sigterm", 100_000)
        config["data"]["limit"] = 512
        path = folder / "sigterm.json"
        path.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = sp.Popen([sys.executable, "-m", "layoutdiffuse", "train", "-c", str(path)], env=env, stdout=sp.PIPE, stderr=sp.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith("training until"):
                break
        import time

        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=HANG_SECONDS)
        except sp.TimeoutExpired:
            proc.kill()
            raise Hung() from None
        last = Path(config["expt_dir"]) / "sigterm" / "checkpoints" / "last.ckpt"
        if proc.returncode != 143 or not last.is_file():
            raise Lost(f"SIGTERM: exit {proc.returncode}, {'a' if last.is_file() else 'no'} checkpoint at the stop")
        if "wrote the resumable checkpoint" not in out:
            raise Silent("SIGTERM: the checkpoint at the stop was not announced")
    cases["SIGTERM during training"] = Case(sigterm, seconds=600)  # the child's start (imports, data) is not a hang
    return cases


def silent_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    import numpy as np
    from PIL import Image

    import layoutdiffuse
    from layoutdiffuse.editing import load_image

    folder = tmp / "silent"
    folder.mkdir()
    edit_cli = edit_inputs(tmp)
    cases: dict[str, Callable[[], Any]] = {}
    for flag, value in (("--guidance", "nan"), ("--guidance", "-5"), ("--guidance", "1e9"), ("--seed", "-1"), ("--steps", "0")):
        cases[f"edit {flag} {value}"] = refused(cli([*edit_cli, flag, value, "--out", str(folder / "g.png")]), expect=flag.strip("-"))

    def deep_png() -> None:
        pixels = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
        Image.fromarray(pixels).save(folder / "deep.png")
        image = load_image(folder / "deep.png", 1)
        if not torch.allclose(image[0].double(), torch.from_numpy(pixels / 65535 * 2 - 1), atol=1e-4):
            raise Silent("a 16-bit PNG was misread")
    cases["edit --image: a 16-bit grayscale PNG"] = deep_png

    new = [{**SEVEN, "label": "3"}]
    for name, image in {"float image in [0, 255]": torch.full((1, 32, 32), 200.0), "NaN image": torch.full((1, 32, 32), float("nan")),
                        "uint8 image": torch.zeros(1, 32, 32, dtype=torch.uint8)}.items():
        cases[f"edit(): {name}"] = refused(lambda image=image: layoutdiffuse.edit(image, [SEVEN], new, steps=1))

    def jpeg() -> None:
        cli([*edit_cli, "--out", str(folder / "x.jpg")])()
        if not (folder / "x.jpg").read_bytes().startswith(b"\xff\xd8"):
            raise Silent("edit --out x.jpg did not write a JPEG")
    cases["edit --out x.jpg"] = jpeg
    cases["edit --out x.txt"] = refused(cli([*edit_cli, "--out", str(folder / "x.txt")]), expect="unknown image suffix")
    cases["sample --out x.gif.txt"] = refused(cli(["sample", "--n", "1", "--steps", "1", "--out", str(folder / "x.gif.txt")]), expect="suffix")

    base = json.loads((REPO / "configs" / "mnist.json").read_text())
    for assignment in ("data.batch_size=1000000000", "trainer_args.limit_train_batches=0", "diffusion.sampling.steps=0",
                       "expt_name=\"../../x\"", "expt_name=\"/tmp/x\"", "callbacks.images.guidance=NaN"):
        cases[f"--set {assignment}"] = refused(lambda a=assignment: validate(set_override(base, a)))

    def big_batch() -> None:
        config = tiny_train_config(tmp, "big_batch", 2)
        config["data"]["batch_size"] = 1000
        REAL_TRAIN(config)
    cases["train: data.batch_size larger than the dataset"] = refused(big_batch, expect="larger than the training set")

    def bool_export() -> None:
        def to_bool(tensors: dict, meta: dict) -> None:
            key = next(k for k in tensors if k.endswith("time_embed.0.weight"))
            tensors[key] = tensors[key] > 0
        load_checkpoint(write_safetensors(folder / "bool.safetensors", to_bool))
    cases["an export with a bool tensor"] = refused(bool_export, expect="torch.bool")

    release = next((p for p in (REPO.parent / "shared" / "release", REPO.parent.parent / "shared" / "release") if (p / "sd_layout.json").is_file()), None)
    if release is not None:
        from layoutdiffuse.release import read_release_state_dict
        from layoutdiffuse.release.export import convert_release

        def int8_release() -> None:
            state = read_release_state_dict(release / "sd_layout.ckpt")
            key = next(k for k in state if k.startswith("denoise_fn.") and k.endswith("weight"))
            state[key] = state[key].to(torch.int8)
            torch.save({"state_dict": state}, folder / "int8.ckpt")
            convert_release(folder / "int8.ckpt", release / "sd_layout.json", folder / "int8.safetensors")
        cases["convert-release: an int8 UNet tensor"] = refused(int8_release, expect="not floating point")
        cases["convert-release --guidance nan"] = refused(cli(["convert-release", str(release / "sd_layout.ckpt"), "--release-config",
                                                               str(release / "sd_layout.json"), "--out", str(folder / "g.safetensors"),
                                                               "--guidance", "nan"]), expect="guidance")
    return cases


def size_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    from layoutdiffuse.release.published import release_config
    from layoutdiffuse.sd import layout_unet

    folder = tmp / "sizes"
    folder.mkdir()
    base = json.loads((REPO / "configs" / "mnist.json").read_text())
    cases: dict[str, Callable[[], Any]] = {}
    for assignment in ("diffusion.num_timesteps=1000000000", "data.image_size=100000", "data.batch_size=100000000",
                       "trainer_args.accumulate_grad_batches=100000000", "callbacks.images.n=100000"):
        cases[f"--set {assignment}"] = refused(lambda a=assignment: validate(set_override(base, a)))
    cases["edit --n 20000"] = refused(cli([*edit_inputs(tmp), "--n", "20000", "--out", str(folder / "e.png")]), expect="n must be")
    cases["sample --n 100000"] = refused(cli(["sample", "--n", "100000", "--out", str(folder / "s.png")]), expect="--n")

    def meta_edit(name: str, edit: Callable[[dict], None]) -> Callable[[], Any]:
        def change(tensors: dict, meta: dict) -> None:
            info = json.loads(meta["layoutdiffuse"])
            edit(info)
            meta["layoutdiffuse"] = json.dumps(info)
        return lambda: load_checkpoint(write_safetensors(folder / f"{name}.safetensors", change))

    cases["export metadata: num_timesteps 1e9"] = refused(meta_edit("chain", lambda i: i["config"]["diffusion"].update(num_timesteps=10**9)),
                                                          expect="diffusion.num_timesteps")
    cases["export metadata: image_shape 100000"] = refused(meta_edit("shape", lambda i: i.update(image_shape=[1, 100_000, 100_000])),
                                                           expect="image_shape")
    arch = {"foundation": None, "unet_class": "UNet2DModel", "layout": {"num_classes": 10, "embed_dim": 8, "levels": [1], "num_heads": 1},
            "unet": {"sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 2, "block_out_channels": [2048, 4096],
                     "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}}

    def diffusers_meta() -> None:
        devices = []
        real = layout_unet.LayoutDiffusersUNet.from_config.__func__

        def spy(cls: Any, *args: Any, **kwargs: Any) -> Any:
            devices.append(torch.empty(0).device.type)
            if devices[0] != "meta":
                raise Silent("a diffusers UNet from export metadata was built outside the meta device")
            return real(cls, *args, **kwargs)

        with patched(layout_unet.LayoutDiffusersUNet, "from_config", classmethod(spy)):
            meta_edit("diffusers", lambda i: i.update(model=arch))()
    cases["export metadata: a 2 GB diffusers UNet (unet_class)"] = refused(diffusers_meta, expect="does not fit")

    def release_with(name: str, edit: Callable[[dict], None]) -> Callable[[], None]:
        import copy

        config = copy.deepcopy(release_config("cocostuff"))
        edit(config)
        (folder / f"{name}.json").write_text(json.dumps(config))
        (folder / "junk.ckpt").write_bytes(b"")
        return cli(["convert-release", str(folder / "junk.ckpt"), "--release-config", str(folder / f"{name}.json"),
                    "--out", str(folder / "r.safetensors")])

    def schedule(c: dict) -> dict:
        d = c["diffusion"]
        return d["model_args"]["beta_schedule_args"] if "model_args" in d else d["beta_schedule_args"]
    cases["release config: n_timestep 1e9"] = refused(release_with("chain", lambda c: schedule(c).update(n_timestep=10**9)), expect="n_timestep")
    cases["release config: model_channels 100000"] = refused(release_with("wide", lambda c: c["denoising_model"]["model_args"].update(model_channels=100_000)),
                                                             expect="model_channels")
    cases["release config: image_size 100000"] = refused(release_with("big", lambda c: c["denoising_model"]["model_args"].update(image_size=100_000)),
                                                         expect="image_size")
    return cases


def hang_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    import os

    folder = tmp / "fifos"
    folder.mkdir()
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    (folder / "junk.ckpt").write_bytes(b"")
    (folder / "l.json").write_text(json.dumps([SEVEN]))
    out = str(folder / "o.png")
    config = str(REPO / "configs" / "mnist.json")
    argvs = {
        "sample --ckpt FIFO": ["sample", "--n", "1", "--steps", "1", "--ckpt", str(fifo), "--out", out],
        "sample --layout FIFO": ["sample", "--n", "1", "--steps", "1", "--layout", str(fifo), "--out", out],
        "evaluate --ckpt FIFO": ["evaluate", "--ckpt", str(fifo), "--digits", "--n", "1"],
        "train -c FIFO": ["train", "-c", str(fifo)],
        "train --resume FIFO": ["train", "-c", config, "--set", f"expt_dir={folder}", "--resume", str(fifo)],
        "edit --image FIFO": ["edit", "--image", str(fifo), "--layout", str(folder / "l.json"), "--new-layout", str(folder / "l.json"), "--out", out],
        "edit --layout FIFO": [*edit_inputs(tmp)[:3], "--layout", str(fifo), "--new-layout", str(folder / "l.json"), "--out", out],
        "convert-release FIFO": ["convert-release", str(fifo), "--release-config", "cocostuff", "--out", str(folder / "o.safetensors")],
        "convert-release --release-config FIFO": ["convert-release", str(folder / "junk.ckpt"), "--release-config", str(fifo),
                                                  "--out", str(folder / "o.safetensors")],
    }
    return {name: refused(cli(argv), never="does not exist") for name, argv in argvs.items()}


def unclear_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    import shutil

    folder = tmp / "unclear"
    folder.mkdir()
    cases: dict[str, Callable[[], Any]] = {}
    for name in ("export.ckpt", "export"):
        shutil.copy(SHIPPED_MODEL, folder / name)
        cases[f"an export saved as {name}"] = lambda name=name: load_checkpoint(folder / name)
    if not torch.cuda.is_available():
        cases["evaluate --device cuda without a GPU"] = refused(cli(["evaluate", "--ckpt", str(SHIPPED_MODEL), "--digits", "--device", "cuda"]),
                                                               expect="device 'cuda' is not available: this machine has")
    cases["evaluate --device tpu9"] = refused(cli(["evaluate", "--ckpt", str(SHIPPED_MODEL), "--digits", "--device", "tpu9"]), expect="unknown device 'tpu9'; choose one of")
    edit_cli = edit_inputs(tmp)
    for what, path in (("a device", "/dev/zero"), ("a folder", str(folder))):
        cases[f"edit --image {what}"] = refused(cli([edit_cli[0], "--image", path, *edit_cli[3:], "--out", str(folder / "o.png")]), never="does not exist")
        cases[f"sample --ckpt {what}"] = refused(cli(["sample", "--ckpt", path, "--out", str(folder / "o.png")]), never="does not exist")
    label = "x" * 900_000
    (folder / "long.json").write_text(json.dumps([{"label": label, "box": [0.1, 0.1, 0.5, 0.5]}]))
    cases["a 900 KB label"] = refused(cli(["sample", "--layout", str(folder / "long.json"), "--n", "1", "--out", str(folder / "o.png")]))
    base = json.loads((REPO / "configs" / "mnist.json").read_text())
    cases["a 900 KB expt_name"] = refused(lambda: validate(set_override(base, f"expt_name=../{label}")))
    cases["a 900 KB --set value"] = refused(lambda: validate(set_override(base, f"data.image_size=\"{label}\"")))

    def t3(tensors: dict, meta: dict) -> None:
        info = json.loads(meta["layoutdiffuse"])
        info["config"]["diffusion"].update(num_timesteps=3, schedule="linear")
        info["config"]["diffusion"]["sampling"]["steps"] = 2
        meta["layoutdiffuse"] = json.dumps(info)
    cases["export metadata: num_timesteps 3"] = refused(lambda: load_checkpoint(write_safetensors(folder / "t3.safetensors", t3)),
                                                        expect="'diffusion.num_timesteps' = 3")
    return cases


def mistake_cases(tmp: Path) -> dict[str, Callable[[], Any]]:
    """Tracebacks for user mistakes found by issue 27 (types, zero divisors, Lightning's refusals, ...)."""
    import layoutdiffuse

    config = str(REPO / "configs" / "mnist.json")
    cases: dict[str, Callable[[], Any]] = {}
    for assignment in ("data=5", "diffusion.optimizer=5", "diffusion.sampling=[]", "trainer_args.accumulate_grad_batches=0",
                       "callbacks.checkpoint.every_n_train_steps=-1", "callbacks.checkpoint.save_top_k=-5", "trainer_args.callbacks=[]",
                       "trainer_args.default_root_dir=\"x\"", "callbacks.images.sampler=\"nope\"", "trainer_args.val_check_interval=0"):
        cases[f"train --set {assignment}"] = refused(cli(["train", "-c", config, "--set", f"expt_dir={tmp / 'runs'}", "--set", assignment]))
    (tmp / "big_int.json").write_text('[{"label": "7", "box": [0.1, 0.1, 1' + "0" * 400 + ', 0.5]}]')
    cases["layout file: a number too large for a float"] = refused(lambda: load_layout(tmp / "big_int.json", DIGITS))

    def other_architecture() -> None:
        config_ = tiny_train_config(tmp, "arch", 1)
        from safetensors import safe_open

        with safe_open(str(SHIPPED_MODEL), framework="pt") as f:
            info = json.loads(f.metadata()["layoutdiffuse"])
        ckpt = tmp / "other_arch.ckpt"
        torch.save({"layoutdiffuse": info, "state_dict": {"model.input.weight": torch.zeros(3)}, "global_step": 5}, ckpt)
        REAL_TRAIN(config_, resume=ckpt)
    cases["train --resume a checkpoint of another architecture"] = refused(other_architecture, expect="do not fit")
    new = [{**SEVEN, "label": "3"}]
    for name, kwargs in {"ckpt=5": {"ckpt": 5}, "n='3'": {"n": "3"}, "steps=2.5": {"steps": 2.5}, "image=[[0]]": {"image": [[0.0]]},
                         "layout=5": {"layout": 5}, "progress='yes'": {"progress": "yes"}, "resample=-1": {"resample": -1}}.items():
        args = {"image": torch.zeros(1, 32, 32), "layout": [SEVEN], "new_layout": new, "steps": 1, **kwargs}
        cases[f"edit({name})"] = refused(lambda args=args: layoutdiffuse.edit(**args))
    for name, meta in {"metadata: model a list": {"model": [1]}, "metadata: class_names 5": {"class_names": 5},
                       "metadata: diffusion 5": {"config": {"diffusion": 5}}}.items():
        def damaged(tensors: dict, m: dict, meta: dict = meta) -> None:
            info = json.loads(m["layoutdiffuse"])
            info.update(meta)
            m["layoutdiffuse"] = json.dumps(info)
        cases[name] = refused(lambda damaged=damaged, name=name: load_checkpoint(write_safetensors(tmp / f"{len(name)}.safetensors", damaged)))
    return cases


def no_training(config: dict[str, Any], resume: Any = None, **overrides: Any) -> None:
    """Stands in for ``experiment.train`` in the ``train`` cases: every check a run makes before its
    first step (config, experiment folder, Lightning's Trainer), then a refusal to train here. A bad
    value that gets this far was accepted although wrong, and counts as a defect."""
    from layoutdiffuse import experiment

    validate(config)
    if not overrides.pop("overwrite", False):
        experiment.refuse_overwrite(experiment.experiment_dir(config), resume, False)
    if resume:
        experiment.read_checkpoint(resume)
    experiment.build_trainer(config, logger=False)
    raise RuntimeError("accepted: training would start")


def main_(show_cases: bool) -> dict[str, Any]:
    from layoutdiffuse import experiment

    global REAL_TRAIN
    REAL_TRAIN = experiment.train
    experiment.train = no_training
    logging.disable(logging.CRITICAL)
    torch.set_num_threads(1)
    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            kinds = {"config": config_cases(tmp), "layout file": layout_file_cases(tmp), "layout tensor": layout_tensor_cases(),
                     "checkpoint": checkpoint_cases(tmp), "CLI numbers": cli_number_cases(tmp), "paths": path_cases(tmp),
                     "data loss": data_loss_cases(tmp), "silent results": silent_cases(tmp), "sizes": size_cases(tmp),
                     "hangs (FIFOs)": hang_cases(tmp), "mistakes": mistake_cases(tmp), "messages": unclear_cases(tmp)}
            for kind, cases in kinds.items():
                results = {name: outcome(fn) for name, fn in cases.items()}
                counts = {end: sum(r[0] == end for r in results.values()) for end in ENDS}
                table[kind] = {"tried": len(results), **counts,
                               "defects": {k: f"{v[0]}: {v[1]}" for k, v in results.items() if v[0] not in (CLEAR, VALID)}}
                if show_cases:
                    table[kind]["cases"] = {k: f"{v[0]}: {v[1]}" if v[1] else v[0] for k, v in results.items()}
        finally:
            subprocess.run(["umount", "--lazy", str(tmp / "read_only")], capture_output=True)
    table["total"] = {key: sum(v[key] for v in table.values()) for key in ("tried", *ENDS)}
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", action="store_true", help="list every case with how it ended")
    sys.stdout.write(json.dumps(main_(parser.parse_args().cases), indent=1) + "\n")
