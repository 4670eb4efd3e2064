"""Bad input never hurts: each case of the fuzz run (docs/bad_input.md) ends in one clear line or a
valid result, and checkpoints survive a full disk. Each test failed before its fix."""
from __future__ import annotations

import errno
import json
import os
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
    ("data.image_size=0", "'data.image_size' must be an integer >= 1"),
    ("data.image_size=30", "'data.image_size' (30) must be divisible by 4"),
    ("data.batch_size=0", "'data.batch_size' must be an integer >= 1"),
    ("diffusion.optimizer.lrr=0.001", "unknown config key 'diffusion.optimizer.lrr'; allowed keys: adaptor_lr, betas, lr, train, weight_decay"),
    ("diffusion.lr_scheduler.warmup=5", "unknown config key 'diffusion.lr_scheduler.warmup'"),
    ("diffusion.optimizer.lr=-1", "'diffusion.optimizer.lr' must be a number >= 0"),
    ("diffusion.ema_decay=1.5", "'diffusion.ema_decay' must be a number in [0, 1)"),
    ("diffusion.ema_decay=1", "'diffusion.ema_decay' must be a number in [0, 1)"),
    ("diffusion.num_timesteps=0", "'diffusion.num_timesteps' must be an integer >= 1"),
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


def test_lightning_misconfiguration_is_one_line(tmp_path, mnist_root):
    config = tiny_train_config(tmp_path, mnist_root, steps=1)
    config["trainer_args"]["val_check_interval"] = -3
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
