"""MNIST under the data root, via ``torchvision.datasets.MNIST``.

Files live in ``<root>/MNIST/raw/`` (torchvision's layout). :func:`mnist` downloads when allowed
and the network is reachable; otherwise it fails with the command that fetches the data.
:func:`install_mnist_archives` unpacks the four gzip IDX files from a local folder (what CI does
with ``../shared/data/mnist``).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from .paths import data_root
from ..errors import UserError, MissingFileError

log = logging.getLogger(__name__)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FETCH_HINT = "python data_scripts/download_mnist.py  (or: python data_scripts/download_mnist.py --from DIR_WITH_GZ_FILES)"
#: the IDX header (magic number) and byte size of each unpacked file
IDX_FORMAT = {
    "train-images-idx3-ubyte": (2051, 16 + 60000 * 28 * 28), "train-labels-idx1-ubyte": (2049, 8 + 60000),
    "t10k-images-idx3-ubyte": (2051, 16 + 10000 * 28 * 28), "t10k-labels-idx1-ubyte": (2049, 8 + 10000),
}


def corrupt_files(raw: Path) -> list[Path]:
    """The MNIST files present in ``raw`` whose size or IDX magic number is wrong (truncated, damaged
    or a different file under the name)."""
    bad = []
    for name, (magic, size) in IDX_FORMAT.items():
        path = raw / name
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            head = f.read(4)
        if path.stat().st_size != size or int.from_bytes(head, "big") != magic:
            bad.append(path)
    return bad


def install_mnist_archives(source: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Unpack ``<source>/<name>.gz`` for the four MNIST files into ``<root>/MNIST/raw``.

    Checks ``SHA256SUMS`` in ``source`` when present. Idempotent: existing files are kept, except
    corrupt or truncated ones (see :func:`corrupt_files`), which are replaced.
    Returns the raw folder.
    """
    source = Path(source)
    raw = data_root(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sums = {}
    if (source / "SHA256SUMS").exists():
        for line in (source / "SHA256SUMS").read_text().splitlines():
            if line.strip():
                digest, name = line.split()
                sums[name.lstrip("*")] = digest
    for path in corrupt_files(raw):  # replaced below from the archives
        log.info("replacing corrupt %s", path)
        path.unlink()
    for name in FILES:
        target = raw / name
        if target.exists():
            continue
        archive = source / f"{name}.gz"
        if not archive.exists():
            raise MissingFileError(f"missing {archive}; expected the four MNIST .gz files: {', '.join(f + '.gz' for f in FILES)}")
        if archive.name in sums and hashlib.sha256(archive.read_bytes()).hexdigest() != sums[archive.name]:
            raise UserError(f"checksum mismatch for {archive} (SHA256SUMS in {source})")
        from ..files import atomic_path

        with atomic_path(target) as tmp, gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        log.info("unpacked %s", target)
    return raw


def mnist(train: bool = True, root: str | os.PathLike | None = None, download: bool = True, image_size: int = 32) -> datasets.MNIST:
    """The torchvision MNIST dataset; samples are ``(image (1, S, S) in [-1, 1], label)``.

    Corrupt or truncated files are refused with the command that replaces them.

    ``image_size`` pads/resizes the 28x28 digits (32 keeps UNet downsampling even).
    """
    root = data_root(root)
    raw = root / "MNIST" / "raw"
    bad = corrupt_files(raw)
    if bad:  # torchvision would read them, or skip its download because they exist
        raise UserError(f"MNIST files under {raw} are corrupt or truncated ({', '.join(p.name for p in bad)}); "
                        f"replace them with: {FETCH_HINT}")
    transform = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
    try:
        return datasets.MNIST(str(root), train=train, transform=transform, download=download)
    except Exception as err:  # no network, or download refused
        raise MissingFileError(f"MNIST not found under {root / 'MNIST' / 'raw'} and could not be downloaded ({err}). Fetch it with: {FETCH_HINT}") from err


def mnist_test_images(image_size: int = 32, n: int | None = None, root: str | None = None, start: int = 0) -> torch.Tensor:
    """MNIST-test images ``(n, 1, S, S)`` in [-1, 1] on the 256-level grid, preprocessed as for training
    (images ``start .. start + n``; all of them when ``n`` is None). Never downloads."""
    ds = mnist(train=False, root=root, download=False, image_size=image_size)
    stop = len(ds) if n is None else start + n
    if not 0 <= start < stop <= len(ds):
        raise UserError(f"MNIST-test has {len(ds)} images; asked for images {start}..{stop}")
    # the dataset's own transform, on the whole uint8 stack at once (same values as item by item)
    return ds.transform(ds.data[start:stop, None]).as_subclass(torch.Tensor)
