"""Atomic safetensors writes: ordinary permissions, no torn or leftover files."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from layoutdiffuse import files
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
