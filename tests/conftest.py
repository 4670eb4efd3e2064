"""Shared fixtures. MNIST comes from $LAYOUTDIFFUSE_DATA when it holds MNIST, else it is unpacked
from ../shared/data/mnist (the CI copy) into a session folder; nothing is downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    from layoutdiffuse.data.mnist import FILES, install_mnist_archives
    from layoutdiffuse.data.paths import data_root

    root = data_root()
    if all((root / "MNIST" / "raw" / f).exists() for f in FILES):
        return root
    if SHARED_MNIST.exists():
        root = tmp_path_factory.mktemp("data")
        install_mnist_archives(SHARED_MNIST, root)
        return root
    pytest.skip("MNIST is not available: run python data_scripts/download_mnist.py")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and thousands of tiny ops run fastest on one intra-op thread: on a busy 2-core
    machine a second spinning OpenMP thread made such tests 10-100x slower. Restores the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
