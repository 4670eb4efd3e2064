#!/usr/bin/env python
"""Merge CelebAMask-HQ's per-part PNGs into one label map per image (background 0).

    python data_scripts/merge_celebamask.py              # $LAYOUTDIFFUSE_DATA/CelebAMask-HQ
    python data_scripts/merge_celebamask.py --root DIR --overwrite

Reads CelebAMask-HQ/CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png and writes
CelebAMask-HQ/CelebAMask-HQ-mask/<i>.png (values 0..18, parts in g_mask.py order, later parts
win). Idempotent: existing outputs are kept unless --overwrite. Exit status 1 when some image
could not be merged (each is logged). The logic is layoutdiffuse.data.celebmask.merge_celebamask.
"""
import argparse
import logging
import sys

from layoutdiffuse.data.celebmask import merge_celebamask

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="data root (default: $LAYOUTDIFFUSE_DATA or ~/data)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    args = parser.parse_args()
    try:
        report = merge_celebamask(args.root, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        logging.error("merge_celebamask: %s", err)
        sys.exit(1)
    if report.failed:
        logging.error("%d image(s) could not be merged: %s", len(report.failed),
                      "; ".join(f"{i}: {e}" for i, e in list(report.failed.items())[:5]))
        sys.exit(1)
