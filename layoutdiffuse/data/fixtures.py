"""Tiny COCO-stuff, Visual Genome and CelebAMask-HQ trees in their true on-disk formats.

Each writer takes a data root (what ``$LAYOUTDIFFUSE_DATA`` would be) and lays the files out
where the loaders and ``data_scripts/`` expect them, with small images. The tests use them, and
notebook 02 shows the loaders on them when the real data is absent. The contents are declared here
as plain data so tests can state what must come out.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------- COCO-stuff
# image id -> (file size W, H), thing annotations and stuff annotations as
# (category_id, [x, y, w, h], iscrowd). Sizes are small; 2% of 40x30 is 24 px^2.
COCO_IMAGES = {
    101: ((40, 30), [(1, [2, 2, 10, 10], 0), (3, [20, 20, 6, 4], 0)],          # car: exactly 2% -> dropped (strict >)
          [(157, [0, 0, 40, 12], 0)]),                                             # 2 objects -> image dropped
    102: ((40, 30), [(18, [5, 5, 10, 8], 0), (17, [1, 1, 2, 2], 0)],             # cat: tiny -> dropped
          [(124, [0, 15, 40, 15], 0), (183, [0, 0, 40, 30], 0), (169, [25, 0, 15, 15], 0)]),  # "other" dropped -> 3
    103: ((48, 32), [(1, [0, 0, 10, 10], 0), (2, [10, 0, 10, 10], 0), (62, [20, 0, 10, 10], 0), (90, [30, 0, 10, 10], 0)],
          [(92, [0, 10, 48, 8], 0), (157, [0, 0, 48, 10], 0), (149, [0, 20, 48, 12], 0), (182, [36, 10, 12, 22], 0)]),  # 8
    104: ((48, 32), [(1, [0, 0, 10, 10], 0), (2, [10, 0, 10, 10], 0), (62, [20, 0, 10, 10], 0), (90, [30, 0, 10, 10], 0),
                     (88, [38, 0, 10, 10], 0)],
          [(92, [0, 10, 48, 8], 0), (157, [0, 0, 48, 10], 0), (149, [0, 20, 48, 12], 0), (182, [36, 10, 12, 22], 0)]),  # 9
    105: ((40, 30), [(1, [0, 0, 20, 20], 1)],                                      # a crowd box
          [(157, [0, 0, 40, 10], 0), (149, [0, 20, 40, 10], 0)]),                  # 2 + crowd
    106: ((40, 30), [(1, [0, 0, 10, 10], 0), (2, [10, 0, 10, 10], 0), (3, [20, 0, 10, 10], 0)], []),  # no stuff at all
}
COCO_CAPTIONS = {i: [f"image {i} caption a", f"image {i} caption b"] for i in COCO_IMAGES}


def _coco_categories() -> tuple[list[dict], list[dict]]:
    from layoutdiffuse.data.coco_stuff import STUFF, THINGS  # the table under test only names the categories
    things = [{"supercategory": "thing", "id": i, "name": n} for i, n in THINGS]
    stuff = [{"supercategory": "stuff", "id": i, "name": n} for i, n in STUFF] + [{"supercategory": "other", "id": 183, "name": "other"}]
    return things, stuff


def _noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_coco(root: str | Path, split: str = "val", corrupt: tuple[int, ...] = ()) -> Path:
    """``<root>/coco/{annotations/*_<split>2017.json, <split>2017/*.jpg}``; ``corrupt`` ids get undecodable files."""
    coco = Path(root) / "coco"
    ann_dir, img_dir = coco / "annotations", coco / f"{split}2017"
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    images = [{"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": s[1], "width": s[0],
               "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i} for i, (s, _, _) in COCO_IMAGES.items()]
    things_cat, stuff_cat = _coco_categories()
    inst, stuff, n = [], [], 1
    for i, ((w, h), things, stuffs) in COCO_IMAGES.items():
        for cat, box, crowd in things:
            x, y, bw, bh = box
            seg = ({"counts": [0, bw * bh], "size": [h, w]} if crowd else [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]])
            inst.append({"segmentation": seg, "area": float(bw * bh), "iscrowd": crowd, "image_id": i,
                         "bbox": [float(v) for v in box], "category_id": cat, "id": n})
            n += 1
        for cat, box, _ in stuffs:
            stuff.append({"segmentation": {"counts": "fake-rle", "size": [h, w]}, "area": float(box[2] * box[3]),
                          "iscrowd": 0, "image_id": i, "bbox": [float(v) for v in box], "category_id": cat, "id": 10_000_000 + n})
            n += 1
        if i in corrupt:
            (img_dir / f"{i:012d}.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
        else:
            _noise_image((w, h), i).save(img_dir / f"{i:012d}.jpg", quality=90)
    info = {"description": "layoutdiffuse fixture", "version": "1.0", "year": 2017}
    licenses = [{"url": "", "id": 1, "name": "fixture"}]
    for name, cats, anns in (("instances", things_cat, inst), ("stuff", stuff_cat, stuff)):
        (ann_dir / f"{name}_{split}2017.json").write_text(json.dumps(
            {"info": info, "licenses": licenses, "images": images, "annotations": anns, "categories": cats}))
    caps = [{"image_id": i, "id": 100 * i + k, "caption": c} for i, cs in COCO_CAPTIONS.items() for k, c in enumerate(cs)]
    (ann_dir / f"captions_{split}2017.json").write_text(json.dumps(
        {"info": info, "licenses": licenses, "images": images, "annotations": caps}))
    return coco


# ----------------------------------------------------------------------------- Visual Genome
# image id -> (W, H, folder, objects [(object_id, name, [x, y, w, h])], relationships [(subj, predicate, obj)])
VG_IMAGES = {
    1: (40, 30, "VG_100K", [(11, "man", [2, 2, 10, 10]), (12, "guy", [25, 15, 10, 10]), (13, "tree", [20, 0, 10, 20]),
                            (14, "sky", [0, 0, 40, 10]), (15, "kite", [1, 1, 10, 10]), (16, "tree", [0, 25, 5, 4])],
        [(11, "On Top Of ", 13), (15, "flying in", 14)]),
    2: (40, 30, "VG_100K", [(21, "man", [5, 5, 8, 8]), (22, "tree", [30, 10, 8, 16]), (23, "sky", [0, 0, 40, 8]),
                            (24, "car", [0, 0, 3, 3]), (25, "man", [10, 20, 12, 8])],
        [(21, "on", 23)]),
    3: (40, 30, "VG_100K", [(31, "tree", [0, 0, 10, 10]), (32, "car", [10, 10, 10, 10]), (33, "dog", [20, 20, 5, 5])],
        [(31, "on", 32)]),
    4: (10, 10, "VG_100K", [(41, "dog", [0, 0, 5, 5]), (42, "man", [5, 5, 5, 5]), (43, "man", [0, 5, 5, 5])], [(42, "on", 43)]),
    8: (40, 30, "VG_100K", [(80 + k, "man", [k, k, 6, 6]) for k in range(6)], [(80, "on", 81)]),
    5: (40, 30, "VG_100K", [(51, "man", [0, 0, 10, 10]), (52, "tree", [10, 0, 10, 10]), (53, "sky", [0, 10, 40, 10])],
        [(51, "on", 52)]),
    6: (40, 30, "VG_100K", [(61, "man", [0, 0, 10, 10]), (62, "tree", [10, 0, 10, 10]), (63, "car", [0, 10, 40, 10])],
        [(61, "next to", 62)]),
    7: (40, 30, "VG_100K_2", [(71, "man", [2, 2, 10, 10]), (72, "man", [0, 0, 5, 5]), (73, "sky", [0, 20, 40, 4]),
                              (74, "tree", [30, 0, 20, 10])],
        [(71, "on", 73)]),
}
VG_SPLITS = {"train": [1, 2, 3, 4, 8], "val": [5, 6], "test": [7]}
VG_OBJECT_ALIASES = "man,guy,men\nsky,skies\n"
VG_RELATIONSHIP_ALIASES = "on,on top of\n"
# thresholds scaled to the tiny fixture (sg2im's are 200 px, 2000 instances, 32 px, 500)
VG_PARAMS = dict(min_image_size=20, min_object_instances=2, min_object_size=4, min_objects=3, max_objects=5,
                 min_relationship_instances=2, min_relationships=1, max_relationships=30)


def write_visual_genome(root: str | Path, corrupt: tuple[int, ...] = ()) -> Path:
    """``<root>/vg/{image_data,objects,relationships}.json, *_alias.txt, vg_splits.json, images/VG_100K*/<id>.jpg``."""
    vg = Path(root) / "vg"
    vg.mkdir(parents=True, exist_ok=True)
    image_data, objects, relationships, rel_id = [], [], [], 1
    for i, (w, h, folder, objs, rels) in VG_IMAGES.items():
        url = f"https://cs.stanford.edu/people/rak248/{folder}/{i}.jpg"
        image_data.append({"width": w, "url": url, "height": h, "image_id": i, "coco_id": None, "flickr_id": None})
        entries = {oid: {"synsets": [], "h": b[3], "object_id": oid, "names": [name], "w": b[2], "y": b[1], "x": b[0]}
                   for oid, name, b in objs}
        objects.append({"image_id": i, "objects": list(entries.values()), "image_url": url})
        relationships.append({"image_id": i, "relationships": [
            {"relationship_id": (rel_id := rel_id + 1), "predicate": p, "synsets": [], "subject": entries[s], "object": entries[o]}
            for s, p, o in rels]})
        (vg / "images" / folder).mkdir(parents=True, exist_ok=True)
        path = vg / "images" / folder / f"{i}.jpg"
        if i in corrupt:
            path.write_bytes(b"garbage")
        else:
            _noise_image((w, h), i).save(path, quality=90)
    (vg / "image_data.json").write_text(json.dumps(image_data))
    (vg / "objects.json").write_text(json.dumps(objects))
    (vg / "relationships.json").write_text(json.dumps(relationships))
    (vg / "object_alias.txt").write_text(VG_OBJECT_ALIASES)
    (vg / "relationship_alias.txt").write_text(VG_RELATIONSHIP_ALIASES)
    (vg / "vg_splits.json").write_text(json.dumps(VG_SPLITS))
    return vg


# ----------------------------------------------------------------------------- CelebAMask-HQ
# CelebA-HQ index -> CelebA orig_idx (decides the split) and parts as {part: (y0, y1, x0, x1)} on a 16x16 mask.
CELEBA_ORIG = {0: 100, 1: 170_000, 2: 190_000, 2001: 5000}  # train, val, test, train
CELEBA_PARTS = {
    0: {"skin": (2, 14, 3, 13), "nose": (6, 10, 7, 9), "hair": (0, 5, 2, 14)},
    1: {"skin": (4, 12, 4, 12), "l_eye": (5, 6, 5, 7)},
    2: {},
    2001: {"skin": (2, 12, 4, 12), "cloth": (12, 16, 0, 16)},
}
CELEBA_RGB_PARTS = {(0, "hair")}  # written as 3-channel PNGs (the rest single-channel)
CELEBA_MASK_SIZE, CELEBA_IMAGE_SIZE = 16, 32  # the real data: 512 and 1024


def write_celebamask(root: str | Path, corrupt_part: tuple[int, str] | None = None) -> Path:
    """``<root>/CelebAMask-HQ/{CelebA-HQ-img/<i>.jpg, CelebAMask-HQ-mask-anno/<i//2000>/<i:05d>_<part>.png, mapping}``."""
    base = Path(root) / "CelebAMask-HQ"
    (base / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    lines = ["idx         orig_idx    orig_file   "]
    for i, orig in CELEBA_ORIG.items():
        lines.append(f"{i:<12d}{orig:<12d}{orig + 1:06d}.jpg")
        _noise_image((CELEBA_IMAGE_SIZE, CELEBA_IMAGE_SIZE), i).save(base / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
        folder = base / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, (y0, y1, x0, x1) in CELEBA_PARTS[i].items():
            a = np.zeros((CELEBA_MASK_SIZE, CELEBA_MASK_SIZE), dtype=np.uint8)
            a[y0:y1, x0:x1] = 255
            path = folder / f"{i:05d}_{part}.png"
            if corrupt_part == (i, part):
                path.write_bytes(b"\x89PNG broken")
            elif (i, part) in CELEBA_RGB_PARTS:
                Image.fromarray(np.stack([a, a, a], -1)).save(path)
            else:
                Image.fromarray(a).save(path)
    (base / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    return base


def expected_celeba_label(index: int) -> np.ndarray:
    """The merged map the parts above must give (``g_mask.py`` order: later parts win)."""
    from layoutdiffuse.data.celebmask import PARTS
    label = np.zeros((CELEBA_MASK_SIZE, CELEBA_MASK_SIZE), dtype=np.uint8)
    for k, part in enumerate(PARTS):
        if part in CELEBA_PARTS[index]:
            y0, y1, x0, x1 = CELEBA_PARTS[index][part]
            label[y0:y1, x0:x1] = k + 1
    return label


def zip_folder(folder: str | Path, archive: str | Path, arcroot: str = "") -> Path:
    """Zip ``folder``'s files into ``archive`` under ``arcroot/`` (to serve fixtures to the download scripts)."""
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, str(Path(arcroot) / path.relative_to(folder)))
    return archive


def zip_files(files: dict[str, bytes], archive: str | Path) -> Path:
    """Zip in-memory ``{name in archive: bytes}`` into ``archive``."""
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return archive


def jpeg_bytes(size: tuple[int, int] = (8, 8), seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _noise_image(size, seed).save(buf, "JPEG")
    return buf.getvalue()
