#!/usr/bin/env python
"""Fetch MNIST into $LAYOUTDIFFUSE_DATA/MNIST/raw (default ~/data).

    python data_scripts/download_mnist.py              # download (torchvision mirrors)
    python data_scripts/download_mnist.py --from DIR   # unpack DIR/*-ubyte.gz (offline)

Idempotent: files already present are kept, except corrupt or truncated ones, which are replaced.
"""
import argparse
import logging

from layoutdiffuse.data.mnist import corrupt_files, install_mnist_archives, mnist
from layoutdiffuse.data.paths import data_root

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="folder holding the four MNIST .gz files")
    parser.add_argument("--root", help="data root (default: $LAYOUTDIFFUSE_DATA or ~/data)")
    args = parser.parse_args()
    if args.source:
        raw = install_mnist_archives(args.source, args.root)
    else:
        for path in corrupt_files(data_root(args.root) / "MNIST" / "raw"):  # torchvision keeps any file that exists
            logging.info("replacing corrupt %s", path)
            path.unlink()
        mnist(train=True, root=args.root, download=True)
        mnist(train=False, root=args.root, download=True)
        raw = data_root(args.root) / "MNIST" / "raw"
    logging.info("MNIST ready in %s", raw)
