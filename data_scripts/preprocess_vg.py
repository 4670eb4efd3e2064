#!/usr/bin/env python
"""Build the Visual Genome files the loader reads, following sg2im's preprocess_vg.py.

    python data_scripts/preprocess_vg.py                  # $LAYOUTDIFFUSE_DATA/vg -> vg/processed
    python data_scripts/preprocess_vg.py --root DIR --no-relationships

Reads vg/{image_data,objects,relationships}.json, vg/*_alias.txt and vg/vg_splits.json (from
data_scripts/download_vg.sh); writes vg/processed/{vocab.json,train.npz,val.npz,test.npz}.
Defaults are sg2im's (178 classes on VG 1.4). Idempotent: a second run with the same
parameters does nothing (--overwrite forces a rebuild). The logic lives in
layoutdiffuse.data.visual_genome.preprocess_visual_genome.
"""
import argparse
import json
import logging
import sys

from layoutdiffuse.data.visual_genome import SG2IM_DEFAULTS, preprocess_visual_genome, vg_dir

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="data root (default: $LAYOUTDIFFUSE_DATA or ~/data); raw files in ROOT/vg")
    parser.add_argument("--out", help="output folder (default: ROOT/vg/processed)")
    parser.add_argument("--splits-json", help="sg2im split file (default: ROOT/vg/vg_splits.json)")
    parser.add_argument("--no-relationships", action="store_true",
                        help="skip sg2im's relationship filter (no relationships.json needed; splits then differ from sg2im's)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the outputs are up to date")
    for name, default in SG2IM_DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=f"sg2im default: {default}")
    args = parser.parse_args()
    try:
        stats = preprocess_visual_genome(vg_dir(args.root), out_dir=args.out, splits_json=args.splits_json,
                                         use_relationships=not args.no_relationships, overwrite=args.overwrite,
                                         **{k: getattr(args, k) for k in SG2IM_DEFAULTS})
    except (FileNotFoundError, ValueError) as err:
        logging.error("preprocess_vg: %s", err)
        sys.exit(1)
    logging.info("done: %s", json.dumps(stats["images"]))
