"""Atomic safetensors writes: ordinary permissions, no torn or leftover files."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from layoutdiffuse import files
from layoutdiffuse.errors import UserError
from layoutdiffuse.files import save_safetensors


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_umask_permissions_and_loads(tmp_path, umask_022):
    path = save_safetensors({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "sub" / "w.safetensors", {"k": "v"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # safetensors alone gives 0600
    assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3))
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temporary left behind


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_safetensors({"w": torch.ones(3)}, tmp_path / "w.safetensors")

    def torn(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", torn)
    with pytest.raises(OSError, match="disk full"):
        files.save_safetensors({"w": torch.zeros(3)}, path)
    assert torch.equal(load_file(str(path))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# --- every writer goes through atomic_path: FIFOs and devices are never replaced, stale temporaries go ---
def test_a_fifo_or_device_in_place_of_an_output_is_refused_and_kept(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for target in (fifo, "/dev/null"):
        with pytest.raises(files.WriteError, match=r"FIFO|character device"):
            files.save_text("x", target)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    with pytest.raises(files.WriteError, match="FIFO"):
        files.check_output_path(fifo)


def dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_cleaned", set())
    stale = tmp_path / f".last.ckpt.{dead_pid()}.tmp"
    live = tmp_path / f".other.ckpt.{os.getppid()}.tmp"  # a running process may still be writing it
    unrelated = tmp_path / ".notes.tmp"
    for path in (stale, live, unrelated):
        path.write_bytes(b"x" * 100)
    files.save_text("new", tmp_path / "a.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", live.name, unrelated.name])


def test_failed_picture_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A full disk half way through an image: one WriteError line, the previous picture unchanged."""
    import errno

    from PIL import Image

    path = files.save_picture(torch.full((1, 4, 4), 200, dtype=torch.uint8), tmp_path / "x.png")
    before = path.read_bytes()

    def torn(self, fp, format=None, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", torn)
    with pytest.raises(files.WriteError, match=r"no space left.*previous x.png is kept unchanged"):
        files.save_picture(torch.zeros(1, 4, 4, dtype=torch.uint8), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.png"]


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8"), (".JPEG", b"\xff\xd8")])
def test_pictures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    path = files.save_picture(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / f"x{suffix}")
    assert path.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["x.txt", "x", "x.png.gz"])
def test_unknown_image_suffixes_are_refused(tmp_path, name):
    with pytest.raises(UserError, match="unknown image suffix"):
        files.save_picture(torch.zeros(1, 4, 4, dtype=torch.uint8), tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_reading_refuses_fifos_folders_and_devices_in_one_line(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a FIFO"):
        files.check_readable(fifo, "checkpoint")
    with pytest.raises(UserError, match="is a folder"):
        files.check_readable(tmp_path, "checkpoint")
    with pytest.raises(UserError, match="character device"):
        files.check_readable("/dev/zero", "checkpoint")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.check_readable(tmp_path / "missing", "checkpoint")
