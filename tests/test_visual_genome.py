"""Visual Genome: sg2im preprocessing and the loader, on a fixture in VG's own JSON format."""
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layoutdiffuse.data.fixtures import VG_PARAMS, write_visual_genome, zip_files, zip_folder
from layoutdiffuse.data.transforms import BadImageError
from layoutdiffuse.data.visual_genome import VisualGenome, load_vocab, preprocess_visual_genome

REPO = Path(__file__).resolve().parents[1]
VOCAB = ["man", "tree", "sky", "car"]  # counts in train after dropping small image 4: 10, 4, 2, 2 (sky seen first)
MAN, TREE, SKY, CAR = range(4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_visual_genome(root)
    preprocess_visual_genome(root / "vg", **VG_PARAMS)
    return root


def test_vocabulary_follows_sg2im(root):
    vocab = json.loads((root / "vg" / "processed" / "vocab.json").read_text())
    # "guy" is an alias of "man"; kite and dog have one train instance (image 4 is too small to count)
    assert vocab["object_idx_to_name"] == VOCAB == load_vocab(root / "vg" / "processed" / "vocab.json")
    assert vocab["object_name_to_idx"] == {n: i for i, n in enumerate(VOCAB)}
    assert vocab["pred_idx_to_name"] == ["on"]  # "On Top Of " -> lower/strip -> alias "on"


def test_split_files(root):
    proc = root / "vg" / "processed"
    train = np.load(proc / "train.npz")
    # 3: 2 known objects; 4: shorter side < min_image_size; 8: 6 objects > max 5
    assert train["image_ids"].tolist() == [1, 2]
    assert train["image_paths"].tolist() == ["VG_100K/1.jpg", "VG_100K/2.jpg"]
    assert train["image_sizes"].tolist() == [[40, 30], [40, 30]]
    assert train["offsets"].tolist() == [0, 5, 9]  # image 1: kite unknown; image 2: the 3x3 car too small
    assert train["object_classes"].tolist() == [MAN, MAN, TREE, SKY, TREE, MAN, TREE, SKY, MAN]
    assert train["object_boxes"][:2].tolist() == [[2, 2, 10, 10], [25, 15, 10, 10]]
    assert np.load(proc / "val.npz")["image_ids"].tolist() == [5]  # 6: its only relationship is "next to"
    test = np.load(proc / "test.npz")
    assert test["image_ids"].tolist() == [7] and test["image_paths"].tolist() == ["VG_100K_2/7.jpg"]
    stats = json.loads((proc / "vocab.json").read_text())["stats"]
    assert stats["removed_small_images"]["train"] == 1
    assert stats["skipped"]["train"] == {"too_few_objects": 1, "too_many_objects": 1}
    assert stats["skipped"]["val"] == {"too_few_relationships": 1}


def test_without_relationships(tmp_path, root):
    stats = preprocess_visual_genome(root / "vg", out_dir=tmp_path / "p", use_relationships=False, **VG_PARAMS)
    assert stats["images"] == {"train": 2, "val": 2, "test": 1}


def test_preprocess_is_idempotent(tmp_path, caplog):
    write_visual_genome(tmp_path)
    preprocess_visual_genome(tmp_path / "vg", **VG_PARAMS)
    stamp = (tmp_path / "vg" / "processed" / "train.npz").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        preprocess_visual_genome(tmp_path / "vg", **VG_PARAMS)
    assert "up to date" in caplog.text
    assert (tmp_path / "vg" / "processed" / "train.npz").stat().st_mtime_ns == stamp
    preprocess_visual_genome(tmp_path / "vg", **{**VG_PARAMS, "max_objects": 6})  # other parameters: rebuilt
    assert np.load(tmp_path / "vg" / "processed" / "train.npz")["image_ids"].tolist() == [1, 2, 8]


def test_loader_filters_and_boxes(root):
    ds = VisualGenome("test", root=root, image_size=64)
    assert ds.classes == VOCAB and ds.num_classes == 4 and ds.image_ids.tolist() == [7]
    s = ds[0]
    assert s["image"].shape == (3, 64, 64)
    expected = torch.tensor([[2 / 40, 2 / 30, 10 / 40, 10 / 30, MAN],
                             [0, 0, 5 / 40, 5 / 30, MAN],           # 25 px^2 = 2.08% > 2%: kept
                             [0, 20 / 30, 1, 4 / 30, SKY],
                             [30 / 40, 0, 10 / 40, 10 / 30, TREE]])  # 20 px wide at x = 30: clipped to the image
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)


def test_loader_area_filter_on_top_of_sg2im(root):
    ds = VisualGenome("train", root=root)
    # image 1's 5x4 tree (20 px^2 = 1.7% of 40x30) passes sg2im's pixel rule but not the 2% area rule
    assert ds.offsets.tolist() == [0, 4, 8]
    assert ds.objects(0)[1].tolist() == [MAN, MAN, TREE, SKY]
    assert VisualGenome("train", root=root, min_object_size=0).offsets.tolist() == [0, 5, 9]
    assert VisualGenome("train", root=root, min_object_size=0, min_objects=5).image_ids.tolist() == [1]
    assert VisualGenome("val", root=root).image_ids.tolist() == [5]


def test_missing_and_bad_inputs(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"vg/processed/vocab.json.*preprocess_vg.py"):
        VisualGenome("train", root=tmp_path)
    with pytest.raises(ValueError, match="unknown Visual Genome split 'dev'"):
        VisualGenome("dev", root=root)
    shutil.copytree(root / "vg", tmp_path / "vg")
    (tmp_path / "vg" / "processed" / "val.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"val.npz is not a split file written by preprocess_vg.py"):
        VisualGenome("val", root=tmp_path)
    with pytest.raises(ValueError, match=r"no image of .*train.npz passes"):
        VisualGenome("train", root=root, min_objects=10)
    (tmp_path / "vg" / "objects.json").write_text('{"objects": []}')
    with pytest.raises(ValueError, match=r"objects.json is not a Visual Genome objects file"):
        preprocess_visual_genome(tmp_path / "vg", overwrite=True, **VG_PARAMS)
    (tmp_path / "vg" / "image_data.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"vg/image_data.json.*download_vg.sh"):
        preprocess_visual_genome(tmp_path / "vg", overwrite=True, **VG_PARAMS)


def test_empty_split_file_is_an_error(tmp_path):
    write_visual_genome(tmp_path)
    preprocess_visual_genome(tmp_path / "vg", **{**VG_PARAMS, "min_objects": 5, "max_objects": 5})
    assert np.load(tmp_path / "vg" / "processed" / "val.npz")["image_ids"].size == 0
    with pytest.raises(ValueError, match=r"val.npz: the val split is empty"):
        VisualGenome("val", root=tmp_path)


def test_bad_image_skipped(tmp_path, caplog):
    write_visual_genome(tmp_path, corrupt=(1,))
    preprocess_visual_genome(tmp_path / "vg", **VG_PARAMS)
    ds = VisualGenome("train", root=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING):
        assert ds[0]["layout"].shape == (4, 5)  # image 2 instead
    assert ds.num_skipped == 1 and "VG_100K/1.jpg" in caplog.text
    with pytest.raises(BadImageError, match=r"VG_100K/1.jpg"):
        VisualGenome("train", root=tmp_path, on_bad_image="raise")[0]


# ----------------------------------------------------------------------------- scripts
def test_download_and_preprocess_scripts(tmp_path):
    src = tmp_path / "src"
    write_visual_genome(src)
    data, images, splits = tmp_path / "server" / "data", tmp_path / "server" / "img", tmp_path / "server" / "splits.json"
    for name in ("image_data", "objects", "attributes", "relationships"):
        content = (src / "vg" / f"{name}.json").read_bytes() if name != "attributes" else b"[]"
        zip_files({f"{name}.json": content}, data / f"{name}.json.zip")
    for name in ("object_alias.txt", "relationship_alias.txt"):
        shutil.copy(src / "vg" / name, data / name)
    zip_folder(src / "vg" / "images" / "VG_100K", images / "VG_100K_2" / "images.zip", arcroot="VG_100K")
    zip_folder(src / "vg" / "images" / "VG_100K_2", images / "VG_100K_2" / "images2.zip", arcroot="VG_100K_2")
    shutil.copy(src / "vg" / "vg_splits.json", splits)
    target = tmp_path / "target"
    env = {**os.environ, "LAYOUTDIFFUSE_DATA": str(target), "VG_DATA_URL": data.as_uri(),
           "VG_IMAGES_URL": images.as_uri(), "VG_SPLITS_URL": splits.as_uri()}
    script = str(REPO / "data_scripts" / "download_vg.sh")
    subprocess.run(["bash", "-n", script], check=True)
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(tmp_path / "server")
    second = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "downloading" not in second.stderr and second.stderr.count("already done") == 6

    args = [f"--{k.replace('_', '-')}={v}" for k, v in VG_PARAMS.items()]
    run_python_script("preprocess_vg.py", "--root", str(target), *args)
    assert VisualGenome("test", root=target).image_ids.tolist() == [7]


def run_python_script(name, *args):
    """Run a data script's CLI in this process (a fresh interpreter would spend seconds importing torch)."""
    saved = sys.argv
    sys.argv = [name, *args]
    try:
        runpy.run_path(str(REPO / "data_scripts" / name), run_name="__main__")
    finally:
        sys.argv = saved


def test_preprocess_script_reports_missing_files(tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR):
        run_python_script("preprocess_vg.py", "--root", str(tmp_path))
    assert exit_.value.code == 1
    assert "image_data.json" in caplog.text and "download_vg.sh" in caplog.text
