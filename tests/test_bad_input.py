"""Bad input never hurts: each case of the fuzz run (docs/bad_input.md) ends in one clear line or a
valid result, and checkpoints survive a full disk. Each test failed before its fix."""
from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layoutdiffuse.cli import main
from layoutdiffuse.config import ConfigError, set_override, validate
from layoutdiffuse.errors import UserError
from layoutdiffuse.experiment import experiment_dir, experiment_lock, load_checkpoint, read_checkpoint, train
from layoutdiffuse.files import WriteError
from layoutdiffuse.layout import LayoutError, validate_layout
from layoutdiffuse.layout_file import load_layout
from layoutdiffuse.sampling import SHIPPED_MODEL, load_model, sample

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(i) for i in range(10)]
ONE_SEVEN = [{"label": "7", "box": [0.1, 0.1, 0.5, 0.8]}]


def run_cli(argv, capsys):
    """``python -m layoutdiffuse ARGV`` in this process -> (exit code, stderr lines)."""
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # not the progress bar
    return code, err


def one_line_error(argv, capsys, match):
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert match in err[0], err[0]
    return err[0]


# --- data loss: checkpoints are atomic on every file system, a full disk keeps the previous one ---
def tiny_train_config(tmp_path, mnist_root, name="full_disk", steps=3):
    from test_training import tiny_config

    config = tiny_config(tmp_path, mnist_root, name, steps)
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 1}}
    return config


def assert_every_checkpoint_loads(folder: Path):
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names  # no temporary left behind
    for name in names:
        read_checkpoint(folder / name)  # raises on a torn file
    return names


def test_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, mnist_root, monkeypatch, capsys):
    """A write that fails half way with ENOSPC (simulated: runs on any machine) leaves the previous
    last.ckpt, every file under its final name loads, and the CLI prints one line, exit 2."""
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) == 4:  # step 2's last.ckpt (step 1: step_1 + last; step 2: step_2, then last)
            if hasattr(f, "write"):
                f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    config = tiny_train_config(tmp_path, mnist_root)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    line = one_line_error(["train", "-c", str(path)], capsys, "no space left")
    assert "last.ckpt" in line and "previous last.ckpt is kept" in line
    folder = tmp_path / "full_disk" / "checkpoints"
    assert assert_every_checkpoint_loads(folder) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"]
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 1
    assert all(Path(f).parent == folder for f in calls)  # written beside the target, not elsewhere


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of a given size mounted in tmp_path (skipped where mounting is not allowed)."""
    mounted = []

    def mount(size_bytes: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        size = -(-size_bytes // 4096) * 4096
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def test_a_real_full_tmpfs_keeps_the_previous_checkpoint(tmp_path, mnist_root, small_tmpfs):
    """The experiment folder on a tmpfs with room for 3.5 checkpoints: step 2's last.ckpt does not
    fit. The error names the file and the full disk; every checkpoint on the tmpfs loads."""
    probe = train(tiny_train_config(tmp_path, mnist_root, "probe", steps=1))
    size = (tmp_path / "probe" / "checkpoints" / "last.ckpt").stat().st_size
    disk = small_tmpfs(int(3.5 * size) + 64 * 1024)  # + the logs' few KB
    config = tiny_train_config(disk, mnist_root, "full_disk")
    config["trainer_args"]["logger"] = False
    with pytest.raises(WriteError, match="no space left"):
        train(config)
    folder = disk / "full_disk" / "checkpoints"
    names = assert_every_checkpoint_loads(folder)
    assert "last.ckpt" in names and read_checkpoint(folder / "last.ckpt")["global_step"] >= 1
    del probe


def test_checkpoint_on_a_read_only_folder_is_one_line(tmp_path, mnist_root, monkeypatch):
    def read_only(obj, f, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(f))

    monkeypatch.setattr(torch, "save", read_only)
    with pytest.raises(WriteError, match="read-only file system"):
        train(tiny_train_config(tmp_path, mnist_root, steps=1))


# --- silent wrong results ------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), -float("inf"), 1e9, -1.0])
def test_guidance_outside_the_sane_range_is_refused(guidance, capsys, tmp_path):
    with pytest.raises(UserError, match=r"guidance must be a finite number in \[0, 50\]"):
        sample(ONE_SEVEN, n=1, steps=1, guidance=guidance)
    one_line_error(["sample", f"--guidance={guidance}", "--steps", "1", "--n", "1", "--out", str(tmp_path / "g.png")], capsys, "guidance")
    assert not (tmp_path / "g.png").exists()


def test_guidance_in_range_still_samples():
    images, _ = sample(ONE_SEVEN, n=2, steps=1, guidance=3.0)
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()


def test_guidance_in_a_config_is_checked():
    config = json.loads((REPO / "configs" / "layout_mnist.json").read_text())
    config["diffusion"].setdefault("sampling", {})["guidance"] = float("nan")
    with pytest.raises(ConfigError, match="diffusion.sampling.guidance"):
        validate(config)


@pytest.mark.parametrize("cls", [-5.0, -2.0, -0.5])
def test_negative_class_other_than_padding_is_refused(cls):
    rows = torch.tensor([[0.1, 0.1, 0.3, 0.3, 2.0], [0.5, 0.5, 0.9, 0.9, cls]])  # and an invalid box
    with pytest.raises(LayoutError, match=r"object 1: field 'class' must be an integer class in \[0, 10\), or -1"):
        validate_layout(rows, 10)
    with pytest.raises(LayoutError, match="image 0, object 1"):
        validate_layout(rows[None], 10)
    with pytest.raises(LayoutError, match="field 'class'"):
        sample(rows, n=1, steps=1)


def test_padding_rows_are_still_allowed():
    rows = torch.tensor([[0.1, 0.1, 0.3, 0.3, 2.0], [0.0, 0.0, 0.0, 0.0, -1.0]])
    assert validate_layout(rows, 10) is rows


# --- user errors are one line, exit 2 ------------------------------------------------------------
def test_layout_path_that_is_a_folder(tmp_path, capsys):
    with pytest.raises(LayoutError, match="is a folder"):
        load_layout(tmp_path, DIGITS)
    one_line_error(["sample", "--layout", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "x.png")], capsys, "is a folder")


def test_deeply_nested_layout_json(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LayoutError, match="nests JSON too deeply"):
        load_layout(path, DIGITS)


def test_huge_layout_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(ONE_SEVEN * 700_000))  # ~50 MB
    with pytest.raises(LayoutError, match=r"is \d+\.\d MB; a layout file holds at most 256 objects and 1 MB"):
        load_layout(path, DIGITS)
    with pytest.raises(LayoutError, match="at most 256 objects"):
        sample(ONE_SEVEN * 300, n=1, steps=1)


def test_layout_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ONE_SEVEN).encode())
    torch.testing.assert_close(load_layout(path, DIGITS), torch.tensor([[0.1, 0.1, 0.5, 0.8, 7.0]]))


def test_binary_layout_file(tmp_path):
    path = tmp_path / "image.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(LayoutError, match="not a UTF-8 text file"):
        load_layout(path, DIGITS)


def test_cli_n_beyond_one_grid_is_refused_before_sampling(tmp_path, capsys):
    one_line_error(["sample", "--n", "100000", "--out", str(tmp_path / "x.png")], capsys, "--n must be in [1, 1024]")


def test_api_samples_large_n_in_batches(monkeypatch):
    module = load_model()
    sizes, real = [], module.sample
    monkeypatch.setattr(module, "sample", lambda n, **kw: sizes.append(n) or real(n, **kw))
    images, layouts = sample(ONE_SEVEN, n=5, ckpt=module, steps=1, batch_size=2)
    assert sizes == [2, 2, 1] and images.shape == (5, 1, 32, 32) and layouts.shape == (5, 1, 5)


def test_batches_draw_the_same_images_as_one_call():
    """Batches follow sample_batched's seeding rule: the batch starting at image i is seeded seed + i,
    so the first image is the same whatever the batch size."""
    a, _ = sample(ONE_SEVEN, n=3, steps=2, batch_size=3)
    b, _ = sample(ONE_SEVEN, n=3, steps=2, batch_size=1)
    assert a.shape == b.shape == (3, 1, 32, 32) and torch.isfinite(b).all()
    torch.testing.assert_close(a[:1], b[:1], rtol=0, atol=2e-3)  # conv kernels differ by batch size in the last bits


@pytest.mark.parametrize("n", [2.5, "3", True, 0, -1])
def test_non_integer_or_non_positive_n(n):
    with pytest.raises(UserError, match="n must be an integer >= 1"):
        sample(ONE_SEVEN, n=n, steps=1)


def test_batched_layout_tensor_draws_one_image_per_layout():
    layouts = torch.tensor([[[0.1, 0.1, 0.5, 0.8, 7.0]], [[0.3, 0.2, 0.4, 0.4, 1.0]], [[0.0, 0.0, 0.0, 0.0, -1.0]]])
    images, used = sample(layouts, steps=1)
    assert images.shape == (3, 1, 32, 32) and torch.equal(used.cpu(), layouts)
    with pytest.raises(UserError, match="a batch of 3 layouts draws one image per layout"):
        sample(layouts, n=2, steps=1)


def shipped_tensors():
    with safe_open(str(SHIPPED_MODEL), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_checkpoint_whose_tensors_do_not_fit_its_model(tmp_path, capsys):
    tensors, meta = shipped_tensors()
    key = next(k for k in tensors if k.endswith("time_embed.0.weight"))
    tensors[key] = tensors[key][:, :8].contiguous()
    path = tmp_path / "misfit.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(UserError, match=rf"checkpoint {path} does not fit the model it describes, UNet\(base_channel=32.*{key}: \[128, 8\] in the file, \[128, 32\] in the model"):
        load_checkpoint(path)
    one_line_error(["sample", "--ckpt", str(path), "--out", str(tmp_path / "x.png")], capsys, "does not fit the model")


def test_metadata_announcing_a_huge_model_is_refused_before_allocating(tmp_path):
    """The architecture is compared with the file's tensors on the meta device: nothing is allocated."""
    tensors, meta = shipped_tensors()
    info = json.loads(meta["layoutdiffuse"])
    info["model"]["base_channel"] = 4096  # a ~60 GB UNet
    path = tmp_path / "huge.safetensors"
    save_file(tensors, str(path), metadata={"layoutdiffuse": json.dumps(info)})
    with pytest.raises(UserError, match=r"does not fit the model it describes, UNet\(base_channel=4096"):
        load_checkpoint(path)


def test_safetensors_header_lying_about_sizes(tmp_path):
    raw = SHIPPED_MODEL.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [600_000_000]
    blob = json.dumps(header).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    """A read-only mount when allowed; everywhere, a write that fails with EROFS after the checks."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode == 0:
        try:
            one_line_error(["sample", "--steps", "1", "--n", "1", "--out", str(ro / "x.png")], capsys, "read-only file system or no permission")
        finally:
            subprocess.run(["umount", "--lazy", str(ro)], check=False)
    from PIL import Image

    def erofs(self, fp, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Image.Image, "save", erofs)
    one_line_error(["sample", "--steps", "1", "--n", "1", "--out", str(tmp_path / "x.png")], capsys, "read-only file system")
    assert list(tmp_path.iterdir()) == [ro]  # no temporary left behind


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    one_line_error(["sample", "--steps", "1", "--n", "1", "--out", str(tmp_path / "file" / "x.png")], capsys, "is a file, not a folder")


def mnist_config():
    return json.loads((REPO / "configs" / "mnist.json").read_text())


@pytest.mark.parametrize("override,match", [
    ("denoising_model.num_heads=0", "'num_heads' must be an integer >= 1"),
    ("denoising_model.base_channel=-8", "'base_channel' must be an integer >= 1"),
    ("denoising_model.channel_mult=[]", "'channel_mult' must be a non-empty list"),
    ("denoising_model.num_heads=5", "'num_heads' (5) must divide"),  # widths of configs/mnist.json: 16, 32
    ("trainer_args.max_steps=-5", "'trainer_args.max_steps' must be an integer >= 1, or -1"),
    ("trainer_args.max_steps=0", "'trainer_args.max_steps' must be an integer >= 1, or -1"),
    ("data.image_size=0", "'data.image_size' must be an integer in [1, 4096]"),
    ("data.image_size=30", "'data.image_size' (30) must be divisible by 4"),
    ("data.batch_size=0", "'data.batch_size' must be an integer in [1, 65536]"),
    ("diffusion.optimizer.lrr=0.001", "unknown config key 'diffusion.optimizer.lrr'; allowed keys: adaptor_lr, betas, lr, train, weight_decay"),
    ("diffusion.lr_scheduler.warmup=5", "unknown config key 'diffusion.lr_scheduler.warmup'"),
    ("diffusion.optimizer.lr=-1", "'diffusion.optimizer.lr' must be a number >= 0"),
    ("diffusion.ema_decay=1.5", "'diffusion.ema_decay' must be a number in [0, 1)"),
    ("diffusion.ema_decay=1", "'diffusion.ema_decay' must be a number in [0, 1)"),
    ("diffusion.num_timesteps=0", "'diffusion.num_timesteps' must be an integer in [1, 10000]"),
    # issue 27: silent wrong results
    ("trainer_args.limit_train_batches=0", "'trainer_args.limit_train_batches' must be an integer >= 1 (batches) or a fraction in (0, 1]"),
    ("diffusion.sampling.steps=0", "'diffusion.sampling.steps' must be an integer in [1, 10000]"),
    ("diffusion.sampling.sampler=\"nope\"", "unknown sampler 'nope'"),
    ("callbacks.images.steps=0", "'callbacks.images.steps' must be an integer in [1, 10000]"),
    ("expt_name=\"../../x\"", "'expt_name' must name one folder inside expt_dir"),
    ("expt_name=\"/tmp/x\"", "'expt_name' must name one folder inside expt_dir"),
    # unbounded sizes
    ("diffusion.num_timesteps=1000000000", "'diffusion.num_timesteps' must be an integer in [1, 10000]"),
    ("data.image_size=100000", "'data.image_size' must be an integer in [1, 4096]"),
    # tracebacks for user mistakes
    ("data=5", "config key 'data' must be an object, got int (5)"),
    ("diffusion.optimizer=5", "config key 'diffusion.optimizer' must be an object, got int"),
    ("trainer_args.accumulate_grad_batches=0", "'trainer_args.accumulate_grad_batches' must be an integer in [1, 65536]"),
    ("callbacks.checkpoint.every_n_train_steps=-1", "'callbacks.checkpoint.every_n_train_steps' must be an integer >= 0"),
    ("trainer_args.callbacks=[]", "'trainer_args.callbacks' is set by the experiment from the 'callbacks' section"),
    ("trainer_args.default_root_dir=\"x\"", "'trainer_args.default_root_dir' is set by the experiment"),
])
def test_config_values_out_of_range(override, match, capsys, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(set_override(mnist_config(), override))
    assert match in str(err.value)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(mnist_config()))
    one_line_error(["train", "-c", str(path), "--set", override], capsys, match)


@pytest.mark.parametrize("override,match", [
    ("denoising_model.attn_levels=[7]", "'attn_levels' must list levels in 0..2"),
    ("diffusion.prediction=\"nope\"", "unknown prediction 'nope'; choose one of: eps, x0, v"),
    ("diffusion.schedule=\"nope\"", "unknown schedule 'nope'"),
    ("seed=-1", "'seed' must be an integer in [0, 9223372036854775807]"),
])
def test_config_values_found_only_when_building(override, match):
    """These passed validate() and failed later, after the data had loaded (found by the fuzz table)."""
    with pytest.raises(ConfigError) as err:
        validate(set_override(mnist_config(), override))
    assert match in str(err.value)


@pytest.mark.parametrize("content,match", [
    ("[" * 100_000 + "]" * 100_000, "nests JSON too deeply"),
    (None, "is a folder"),
    ("\ufeff{}", "config is missing the section 'expt_name'"),  # a BOM is read past, the content judged
])
def test_config_files(tmp_path, capsys, content, match):
    path = tmp_path / "c.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    one_line_error(["train", "-c", str(path)], capsys, match)


def test_huge_seed_is_refused():
    with pytest.raises(UserError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        sample(ONE_SEVEN, n=1, steps=1, seed=2**70)


def test_complex_layout_tensor_is_refused():
    with pytest.raises(UserError, match="got dtype torch.complex64"):
        sample(torch.tensor([[0.1, 0.1, 0.5, 0.8, 7.0]], dtype=torch.complex64), n=1, steps=1)


def test_good_configs_still_validate():
    for path in sorted((REPO / "configs").glob("*.json")):
        validate(json.loads(path.read_text()))


@pytest.mark.parametrize("key, value", [("gradient_clip_algorithm", "x"), ("accelerator", "nope")])  # the second: a plain ValueError
def test_lightning_misconfiguration_is_one_line(tmp_path, mnist_root, key, value):
    config = tiny_train_config(tmp_path, mnist_root, steps=1)
    config["trainer_args"][key] = value
    with pytest.raises(ConfigError, match="refused by Lightning's Trainer"):
        train(config)


def test_config_without_expt_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = mnist_config()
    del config["expt_dir"]
    validate(config)  # a valid config for building; only a run needs to know where it writes
    with pytest.raises(ConfigError, match="has no 'expt_dir'"):
        experiment_dir(config)
    assert not (tmp_path / "experiments").exists()


def test_second_run_of_one_experiment_folder_refuses(tmp_path, mnist_root):
    config = tiny_train_config(tmp_path, mnist_root, "busy", steps=1)
    with experiment_lock(experiment_dir(config)):  # a run in progress
        with pytest.raises(UserError, match=r"experiment folder .*busy is in use by a running training \(pid \d+\)"):
            train(config)
    assert (train(config).trainer_ref.global_step) == 1  # free again once the first run ends


# --- a pickled checkpoint is refused without advice to load it unsafely ----------------------------
def test_pickled_checkpoint_is_refused_with_our_words(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"layoutdiffuse": {}, "state_dict": {}, "payload": print}, path)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "holds pickled Python objects (it references print)" in message and "refused" in message
    assert "weights_only" not in message and "trust" not in message
    line = one_line_error(["sample", "--ckpt", str(path), "--out", str(tmp_path / "x.png")], capsys, "refused")
    assert "weights_only" not in line


def test_junk_checkpoint_is_not_called_pickled(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="is not a readable checkpoint") as err:
        read_checkpoint(path)
    assert "pickled" not in str(err.value)


def test_checkpoint_path_that_is_a_folder(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        read_checkpoint(tmp_path)


# --- slow or rejected although fine --------------------------------------------------------------
def test_help_and_import_do_not_load_torch():
    code = ("import sys, time; t = time.perf_counter(); import layoutdiffuse; from layoutdiffuse.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT', round(time.perf_counter() - t, 2), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "usage: layoutdiffuse" in result.stdout
    verdict, seconds = result.stderr.split()[-2:]
    assert verdict == "LIGHT", result.stderr
    assert float(seconds) < 2.0


def test_corrupt_mnist_is_called_corrupt_and_the_fetch_replaces_it(tmp_path, mnist_root):
    import gzip

    from layoutdiffuse.data.mnist import FILES, install_mnist_archives, mnist

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).symlink_to(mnist_root / "MNIST" / "raw" / name)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes((mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[:5000])
    with pytest.raises(UserError, match=r"are corrupt or truncated \(t10k-labels-idx1-ubyte\); replace them with: python data_scripts/download_mnist.py"):
        mnist(train=False, root=tmp_path / "data", download=True)
    source = tmp_path / "gz"
    source.mkdir()
    with gzip.open(source / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())
    install_mnist_archives(source, tmp_path / "data")
    assert len(mnist(train=False, root=tmp_path / "data", download=False)) == 10000


# --- issue 27, data loss: edited images atomic, experiment folders not overwritten, FIFOs kept, signals ---
@pytest.fixture
def edit_files(tmp_path):
    """An image and two layout files for ``edit`` (the image: a black canvas of the shipped model's size)."""
    from layoutdiffuse.editing import save_image

    save_image(torch.zeros(1, 32, 32) - 1, tmp_path / "in.png")
    (tmp_path / "old.json").write_text(json.dumps(ONE_SEVEN))
    (tmp_path / "new.json").write_text(json.dumps([{"label": "3", "box": [0.1, 0.1, 0.5, 0.8]}]))
    return ["edit", "--image", str(tmp_path / "in.png"), "--layout", str(tmp_path / "old.json"),
            "--new-layout", str(tmp_path / "new.json"), "--steps", "1"]


def test_edit_on_a_full_disk_is_one_line_and_keeps_the_previous_files(tmp_path, edit_files, monkeypatch, capsys):
    from PIL import Image

    outs = [tmp_path / f"out_{i:03d}.png" for i in range(3)]
    for path in outs:
        path.write_bytes(b"previous")

    def full(self, fp, format=None, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    one_line_error([*edit_files, "--n", "3", "--out", str(tmp_path / "out.png")], capsys, "no space left")
    assert [p.read_bytes() for p in outs] == [b"previous"] * 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_edit_out_jpg_writes_a_jpeg_and_an_unknown_suffix_is_refused_before_sampling(tmp_path, edit_files, capsys, monkeypatch):
    assert main([*edit_files, "--out", str(tmp_path / "x.jpg")]) == 0
    assert (tmp_path / "x.jpg").read_bytes().startswith(b"\xff\xd8")
    monkeypatch.setattr("layoutdiffuse.sampling.load_model", lambda *a: pytest.fail("loaded the model before checking --out"))
    one_line_error([*edit_files, "--out", str(tmp_path / "x.txt")], capsys, "unknown image suffix '.txt'")
    one_line_error([*edit_files, "--out", str(tmp_path)], capsys, "is a folder")


def test_sample_out_naming_a_fifo_is_refused_and_the_fifo_kept(tmp_path, capsys, monkeypatch):
    import stat

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    monkeypatch.setattr("layoutdiffuse.sampling.load_model", lambda *a: pytest.fail("loaded the model before checking --out"))
    one_line_error(["sample", "--n", "1", "--steps", "1", "--out", str(fifo)], capsys, "FIFO")
    one_line_error(["sample", "--n", "1", "--steps", "1", "--out", "/dev/null"], capsys, "character device")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_finished_experiment_is_not_overwritten_without_resume(tmp_path, mnist_root, capsys):
    config = tiny_train_config(tmp_path, mnist_root, "done", steps=2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", "-c", str(path)]) == 0
    last = tmp_path / "done" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    one_line_error(["train", "-c", str(path), "--set", "trainer_args.max_steps=1"], capsys, "--resume last")
    assert last.read_bytes() == before
    assert main(["train", "-c", str(path), "--set", "trainer_args.max_steps=3", "--resume", "last"]) == 0
    assert read_checkpoint(last)["global_step"] == 3
    assert main(["train", "-c", str(path), "--set", "trainer_args.max_steps=1", "--overwrite"]) == 0
    assert read_checkpoint(last)["global_step"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_000001.ckpt"]  # the earlier run's steps are gone


@pytest.mark.slow
@pytest.mark.parametrize("signum", [15, 2])
def test_a_signal_stops_training_with_a_resumable_checkpoint_and_a_nonzero_exit(tmp_path, mnist_root, signum):
    """SIGTERM (15) or SIGINT (2) during training: the run writes last.ckpt at the step it reached,
    says so, and exits 128 + signum; --resume last continues from there."""
    import signal
    import time

    config = tiny_train_config(tmp_path, mnist_root, "stopped", steps=100_000)
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 100_000}}  # no checkpoint but the one the signal writes
    config["data"]["limit"] = 512
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "layoutdiffuse", "train", "-c", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # "training until ..." is logged once the loop starts (the handlers are set by then)
        lines.append(line)
        if line.startswith("training until"):
            break
    time.sleep(1)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 128 + signum, out
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    step = read_checkpoint(last)["global_step"]
    assert step >= 1 and f"wrote the resumable checkpoint {last}" in out, out
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in out
    assert main(["train", "-c", str(path), "--set", f"trainer_args.max_steps={step + 2}", "--resume", "last"]) == 0
    assert read_checkpoint(last)["global_step"] == step + 2


# --- issue 27, hangs: a FIFO is refused wherever a file is read -------------------------------------
@pytest.fixture
def fifo(tmp_path):
    import signal

    path = tmp_path / "pipe.ckpt"
    os.mkfifo(path)

    def hung(*args):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a read that blocks fails the test instead of hanging it
    yield path
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("argv", [
    ["sample", "--n", "1", "--steps", "1", "--ckpt", "{fifo}", "--out", "{tmp}/x.png"],
    ["evaluate", "--ckpt", "{fifo}", "--digits", "--n", "1"],
    ["convert-release", "{fifo}", "--release-config", "cocostuff", "--out", "{tmp}/x.safetensors"],
    ["convert-release", "{tmp}/x.ckpt", "--release-config", "{fifo}", "--out", "{tmp}/x.safetensors"],
    ["edit", "--image", "{fifo}", "--layout", "{tmp}/l.json", "--new-layout", "{tmp}/l.json"],
], ids=["sample --ckpt", "evaluate --ckpt", "convert-release ckpt", "convert-release --release-config", "edit --image"])
def test_fifos_are_refused_wherever_a_file_is_read(argv, fifo, tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"")
    (tmp_path / "l.json").write_text(json.dumps(ONE_SEVEN))
    one_line_error([a.format(fifo=fifo, tmp=tmp_path) for a in argv], capsys, "FIFO")


def test_train_resume_from_a_fifo_is_refused(fifo, tmp_path, mnist_root):
    config = tiny_train_config(tmp_path, mnist_root, "fifo", steps=1)
    with pytest.raises(UserError, match="FIFO"):
        train(config, resume=fifo)


# --- issue 27, silent wrong results ------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, match", [
    ("--guidance", "nan", "guidance must be a finite number in [0, 50]"), ("--guidance", "-5", "guidance must be"),
    ("--guidance", "1e9", "guidance must be"), ("--seed", "-1", "seed must be an integer in [0, 2**63)"),
    ("--n", "20000", "n must be an integer in [1, 1024]"), ("--n", "0", "n must be an integer in [1, 1024]"),
    ("--steps", "0", "steps must be an integer >= 1"), ("--resample", "-1", "resample must be an integer in [0, 100]"),
])
def test_edit_refuses_the_numbers_sample_refuses_before_loading_the_model(flag, value, match, edit_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("layoutdiffuse.sampling.load_model", lambda *a: pytest.fail("loaded the model before checking the numbers"))
    one_line_error([*edit_files, flag, value, "--out", str(tmp_path / "o.png")], capsys, match)


def test_a_16_bit_grayscale_png_is_read_at_its_own_scale(tmp_path):
    import numpy as np
    from PIL import Image

    from layoutdiffuse.editing import load_image

    pixels = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png", 1)
    assert image.shape == (1, 32, 32)
    assert torch.allclose(image[0].double(), torch.from_numpy(pixels / 65535 * 2 - 1), atol=1e-6)


@pytest.mark.parametrize("image, match", [
    (torch.full((1, 32, 32), 200.0), r"values lie in \[200, 200\]"), (torch.full((1, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 32, 32, dtype=torch.uint8), "floating-point"),
])
def test_edit_refuses_images_outside_minus_one_one(image, match):
    import layoutdiffuse

    with pytest.raises(UserError, match=match):
        layoutdiffuse.edit(image, ONE_SEVEN, [{"label": "3", "box": [0.1, 0.1, 0.5, 0.8]}], steps=1)


def test_a_batch_larger_than_the_dataset_is_refused_before_training(tmp_path, mnist_root):
    config = tiny_train_config(tmp_path, mnist_root, "big_batch", steps=2)
    config["data"]["batch_size"] = 1000  # limit 24 images
    with pytest.raises(ConfigError, match=r"'data.batch_size' \(1000\) is larger than the training set \(24 samples\)"):
        train(config)
    assert not (tmp_path / "big_batch" / "checkpoints").exists()


def test_wandb_enabled_without_wandb_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="wandb is not installed"):
        validate(set_override(mnist_config(), "callbacks.wandb.enabled=true"))


def save_shipped(tmp_path, name, edit_tensors=None, edit_info=None, raw_meta=None):
    """The shipped model re-saved with its tensors and/or its metadata changed."""
    tensors, meta = shipped_tensors()
    if edit_tensors:
        edit_tensors(tensors)
    info = json.loads(meta["layoutdiffuse"])
    if edit_info:
        edit_info(info)
    path = tmp_path / name
    save_file(tensors, str(path), metadata={"layoutdiffuse": raw_meta if raw_meta is not None else json.dumps(info)})
    return path


def test_an_export_with_bool_tensors_is_refused(tmp_path):
    def to_bool(tensors):
        key = next(k for k in tensors if k.endswith("time_embed.0.weight"))
        tensors[key] = tensors[key] > 0

    path = save_shipped(tmp_path, "bool.safetensors", edit_tensors=to_bool)
    with pytest.raises(UserError, match=r"does not fit the model it describes: \d+ tensors of another kind of number \[.*time_embed.0.weight: torch.bool \(the model holds torch.float32\)"):
        load_checkpoint(path)


def test_conversion_refuses_int8_tensors_and_nan_guidance(tmp_path):
    from test_release import RELEASE

    from layoutdiffuse.release import read_release_state_dict
    from layoutdiffuse.release.export import convert_release

    if RELEASE is None:
        pytest.skip("release fixtures not found")
    with pytest.raises(UserError, match="guidance must be a finite number"):
        convert_release(RELEASE / "sd_layout.ckpt", RELEASE / "sd_layout.json", tmp_path / "o.safetensors", guidance=float("nan"))
    state = read_release_state_dict(RELEASE / "sd_layout.ckpt")
    key = next(k for k in state if k.startswith("denoise_fn.") and k.endswith("weight"))
    state[key] = state[key].to(torch.int8)
    torch.save({"state_dict": state}, tmp_path / "int8.ckpt")
    with pytest.raises(UserError, match=rf"1 UNet tensors that are not floating point: \[{key} \(torch.int8\)\]"):
        convert_release(tmp_path / "int8.ckpt", RELEASE / "sd_layout.json", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


# --- issue 27, unbounded memory: sizes from files are bounded, metadata models built on the meta device ---
def test_export_metadata_with_a_huge_chain_is_refused_naming_the_file_and_key(tmp_path):
    path = save_shipped(tmp_path, "chain.safetensors", edit_info=lambda info: info["config"]["diffusion"].update(num_timesteps=10**9))
    with pytest.raises(UserError, match=rf"checkpoint {path}: .*'diffusion.num_timesteps' must be an integer in \[1, 10000\]"):
        load_checkpoint(path)


def test_export_metadata_num_timesteps_3_names_the_file_and_the_key(tmp_path):
    def chain_of_3(info):
        info["config"]["diffusion"].update(num_timesteps=3, schedule="linear")
        info["config"]["diffusion"]["sampling"]["steps"] = 2

    path = save_shipped(tmp_path, "t3.safetensors", edit_info=chain_of_3)
    with pytest.raises(UserError, match=rf"checkpoint {path}: .*'diffusion.num_timesteps' = 3 with the 'linear' schedule gives betas outside \(0, 1\)"):
        load_checkpoint(path)


def test_export_metadata_naming_a_diffusers_unet_is_checked_on_the_meta_device(tmp_path, monkeypatch):
    """``model.unet_class`` used to skip the meta-device check: the model was built (allocated) first."""
    from layoutdiffuse.sd import layout_unet

    real, devices = layout_unet.LayoutDiffusersUNet.from_config.__func__, []

    def spy(cls, *args, **kwargs):
        devices.append(torch.empty(0).device.type)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(layout_unet.LayoutDiffusersUNet, "from_config", classmethod(spy))
    arch = {"foundation": None, "unet_class": "UNet2DModel", "layout": {"num_classes": 10, "embed_dim": 8, "levels": [1], "num_heads": 1},
            "unet": {"sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 1, "block_out_channels": [32, 64],
                     "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
                     "norm_num_groups": 8}}
    path = save_shipped(tmp_path, "diffusers.safetensors", edit_info=lambda info: info.update(model=arch))
    with pytest.raises(UserError, match=f"checkpoint {path}"):
        load_checkpoint(path)
    assert devices and devices[0] == "meta", devices


@pytest.mark.parametrize("edit, match", [
    (lambda info: info.update(image_shape="x"), "'image_shape' must be"),
    (lambda info: info.update(image_shape=[1, 100000, 100000]), "'image_shape' must be"),
    (lambda info: info.update(class_names=5), "'class_names' must be a list of strings"),
    (lambda info: info.update(model=[1, 2]), "'model' must be an object"),
    (lambda info: info["config"].update(diffusion=5), "'diffusion' must be an object"),
    (lambda info: info["config"]["diffusion"].update(sampling={"steps": 0}), "'diffusion.sampling.steps' must be"),
], ids=["image_shape string", "image_shape huge", "class_names int", "model list", "diffusion int", "sampling steps 0"])
def test_damaged_export_metadata_is_one_line(edit, match, tmp_path, capsys):
    path = save_shipped(tmp_path, "damaged.safetensors", edit_info=edit)
    with pytest.raises(UserError, match=re.escape(match)):
        load_checkpoint(path)
    one_line_error(["sample", "--ckpt", str(path), "--n", "1", "--out", str(tmp_path / "x.png")], capsys, match)


@pytest.mark.parametrize("change, match", [
    (lambda c: c["denoising_model"]["model_args"].update(model_channels="224"), "'model_channels' must be an integer in [1, 4096], got '224'"),
    (lambda c: c["denoising_model"]["model_args"].pop("channel_mult"), "model_args is missing channel_mult"),
    (lambda c: c["denoising_model"]["model_args"].update(image_size=100000), "'image_size' must be an integer in [1, 1024]"),
    (lambda c: c["denoising_model"]["model_args"].update(instance_prompt_args=5), "'instance_prompt_args' must be an object"),
    (lambda c: release_schedule(c).update(n_timestep=10**9), "'n_timestep' must be an integer in [1, 10000]"),
    (lambda c: release_schedule(c).update(linear_start="x"), "'linear_start' must be a number in [0, 1]"),
], ids=["mistyped", "missing", "huge image", "prompt args int", "huge chain", "schedule string"])
def test_release_configs_with_missing_or_mistyped_keys_are_one_line(change, match, tmp_path, capsys):
    import copy

    from layoutdiffuse.release.published import release_config

    config = copy.deepcopy(release_config("cocostuff"))
    change(config)
    (tmp_path / "release.json").write_text(json.dumps(config))
    (tmp_path / "x.ckpt").write_bytes(b"")
    one_line_error(["convert-release", str(tmp_path / "x.ckpt"), "--release-config", str(tmp_path / "release.json"),
                    "--out", str(tmp_path / "o.safetensors")], capsys, match)


def release_schedule(config):
    diffusion = config["diffusion"]
    return diffusion["model_args"]["beta_schedule_args"] if "model_args" in diffusion else diffusion["beta_schedule_args"]


# --- issue 27, tracebacks for user mistakes ------------------------------------------------------------
def test_a_layout_number_too_large_for_a_float_is_one_line(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('[{"label": "7", "box": [0.1, 0.1, 1' + "0" * 400 + ', 0.5]}]')
    with pytest.raises(LayoutError, match="too large for a float"):
        load_layout(path, DIGITS)


def test_resume_with_another_architecture_is_one_line(tmp_path, mnist_root):
    config = tiny_train_config(tmp_path, mnist_root, "arch", steps=1)
    train(config)
    config["denoising_model"]["base_channel"] = 16
    with pytest.raises(UserError, match=r"cannot resume from .*last.ckpt: its weights do not fit this config's model"):
        train(config, resume="last")


@pytest.mark.parametrize("kwargs, match", [
    ({"ckpt": 5}, "ckpt must be a checkpoint path, a shipped model's name (layout-mnist, layout-mnist-color) or a loaded module, got int"), ({"n": "3"}, "n must be an integer"),
    ({"seed": -1}, "seed must be an integer in [0, 2**63)"), ({"guidance": float("nan")}, "guidance must be a finite number"),
    ({"image": [[0.0]]}, "image must be a tensor"), ({"layout": 5}, "a layout is a JSON list"),
    ({"progress": "yes"}, "progress must be true or false"), ({"steps": 2.5}, "steps must be an integer"),
])
def test_odd_types_given_to_edit_are_one_line(kwargs, match):
    import layoutdiffuse

    args = {"image": torch.zeros(1, 32, 32), "layout": ONE_SEVEN, "new_layout": [{"label": "3", "box": [0.1, 0.1, 0.5, 0.8]}], "steps": 1, **kwargs}
    with pytest.raises(UserError, match=re.escape(match)):
        layoutdiffuse.edit(**args)


# --- issue 27, unclear messages ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["export.ckpt", "export"])
def test_an_export_is_read_by_its_content_whatever_its_suffix(tmp_path, name):
    import shutil

    shutil.copy(SHIPPED_MODEL, tmp_path / name)
    assert load_checkpoint(tmp_path / name).class_names == load_model().class_names


def test_evaluate_on_cuda_without_a_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(["evaluate", "--ckpt", str(SHIPPED_MODEL), "--digits", "--device", "cuda"], capsys, "device 'cuda' is not available: this machine has cpu")
    one_line_error(["evaluate", "--ckpt", str(SHIPPED_MODEL), "--digits", "--device", "tpu9"], capsys, "unknown device 'tpu9'; choose one of: auto, cpu, cuda")


def test_does_not_exist_only_for_paths_that_do_not_exist(tmp_path, edit_files, capsys):
    line = one_line_error([*edit_files[:1], "--image", "/dev/zero", *edit_files[3:]], capsys, "character device")
    assert "does not exist" not in line
    line = one_line_error([*edit_files[:1], "--image", str(tmp_path), *edit_files[3:]], capsys, "is a folder")
    assert "does not exist" not in line
    one_line_error(["sample", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x.png")], capsys, "does not exist")


def test_echoed_values_are_cut(tmp_path, capsys):
    label = "x" * 900_000
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"label": label, "box": [0.1, 0.1, 0.5, 0.5]}]))
    line = one_line_error(["sample", "--layout", str(path), "--n", "1", "--out", str(tmp_path / "x.png")], capsys, "unknown label")
    assert len(line) < 600, len(line)
    line = one_line_error(["train", "-c", str(REPO / "configs" / "mnist.json"), "--set", f"expt_name=../{label}"], capsys, "expt_name")
    assert len(line) < 600, len(line)
