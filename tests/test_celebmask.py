"""CelebAMask-HQ: merging the part PNGs, splits, mask + box layouts, bad input, download script."""
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
from PIL import Image

from layoutdiffuse.data.fixtures import (CELEBA_MASK_SIZE, expected_celeba_label, write_celebamask, zip_folder)
from layoutdiffuse.data.celebmask import (CLASSES, NUM_CLASSES, PARTS, CelebAMaskHQ, boxes_from_mask, merge_celebamask,
                                          merge_parts, read_mapping, split_indices)
from layoutdiffuse.conditions import collate
from layoutdiffuse.data.transforms import BadImageError

REPO = Path(__file__).resolve().parents[1]
SKIN, NOSE, L_EYE, HAIR, CLOTH = (CLASSES.index(n) for n in ("skin", "nose", "l_eye", "hair", "cloth"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_celebamask(root)
    merge_celebamask(root)
    return root


def test_class_table():
    assert NUM_CLASSES == 19 and CLASSES[0] == "background" and CLASSES[1:] == PARTS
    assert (SKIN, NOSE, L_EYE, HAIR, CLOTH) == (1, 2, 4, 13, 18)


def test_merge_follows_g_mask_order(root):
    anno = root / "CelebAMask-HQ" / "CelebAMask-HQ-mask-anno"
    label = merge_parts(anno, 0)  # skin, then nose inside it, then hair over the top of the skin
    np.testing.assert_array_equal(label, expected_celeba_label(0))
    assert label[3, 5] == HAIR and label[7, 7] == NOSE and label[12, 4] == SKIN and label[15, 15] == 0
    assert merge_parts(anno, 2) is None  # no part at all
    for i in (0, 1, 2001):  # 2001 lives in folder 1
        merged = np.asarray(Image.open(root / "CelebAMask-HQ" / "CelebAMask-HQ-mask" / f"{i}.png"))
        np.testing.assert_array_equal(merged, expected_celeba_label(i))


def test_merge_is_idempotent_and_reports(tmp_path, caplog):
    write_celebamask(tmp_path, corrupt_part=(1, "l_eye"))
    with caplog.at_level(logging.WARNING):
        report = merge_celebamask(tmp_path)
    assert report.written == [0, 2, 2001] and report.empty == [2] and list(report.failed) == [1]
    assert "01_l_eye.png" in report.failed[1] and "skipping image 1" in caplog.text
    again = merge_celebamask(tmp_path)
    assert again.written == [] and again.existing == [0, 2, 2001]
    assert merge_celebamask(tmp_path, indices=[0], overwrite=True).written == [0]


def test_splits_follow_celeba_partition(root):
    idx, orig = read_mapping(root / "CelebAMask-HQ" / "CelebA-HQ-to-CelebA-mapping.txt")
    assert idx.tolist() == [0, 1, 2, 2001] and orig.tolist() == [100, 170000, 190000, 5000]
    assert split_indices(idx, orig, "train").tolist() == [0, 2001]
    assert split_indices(idx, orig, "val").tolist() == [1]
    assert split_indices(idx, orig, "test").tolist() == [2]
    assert split_indices(idx, orig, "all").tolist() == [0, 1, 2, 2001]
    boundary = split_indices(np.arange(4), np.array([162770, 162771, 182637, 182638]), "val")
    assert boundary.tolist() == [1, 2]  # g_partition.py: 162771 <= orig_idx < 182638


def test_sample_mask_and_boxes(root):
    ds = CelebAMaskHQ("train", root=root, image_size=CELEBA_MASK_SIZE)
    assert len(ds) == 2 and ds.num_classes == 19
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["mask"].dtype == torch.long
    np.testing.assert_array_equal(s["mask"].numpy(), expected_celeba_label(0))
    # skin loses rows 2-4 to the hair: rows 5..13, cols 3..12
    expected = torch.tensor([[3, 5, 10, 9, SKIN], [7, 6, 2, 4, NOSE], [2, 0, 12, 5, HAIR]]) / torch.tensor([16, 16, 16, 16, 1])
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    s = ds[1]  # image 2001
    torch.testing.assert_close(s["layout"], torch.tensor([[4 / 16, 2 / 16, 8 / 16, 10 / 16, SKIN], [0, 12 / 16, 1, 4 / 16, CLOTH]]))
    batch = collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 16, 16) and batch["layout"].shape == (2, 3, 5)


def test_resize_and_flip(root):
    s = CelebAMaskHQ("val", root=root, image_size=8, flip=1.0)[0]  # image 1: skin [4:12, 4:12], l_eye [5:6, 5:7]
    assert s["mask"].shape == (8, 8)
    expected = np.zeros((8, 8), dtype=np.int64)
    expected[2:6, 2:6] = SKIN  # nearest 16 -> 8 keeps even rows/cols; the 1-px-high eye on row 5 vanishes
    np.testing.assert_array_equal(s["mask"].numpy(), expected[:, ::-1])
    torch.testing.assert_close(s["layout"], torch.tensor([[2 / 8, 2 / 8, 4 / 8, 4 / 8, SKIN]]))
    s = CelebAMaskHQ("val", root=root, image_size=32, boxes=False)[0]
    assert s["layout"].shape == (0, 5) and s["mask"].shape == (32, 32)


def test_empty_face_has_the_empty_layout(root):
    s = CelebAMaskHQ("test", root=root, image_size=16)[0]
    assert s["mask"].eq(0).all() and s["layout"].shape == (0, 5)


def test_boxes_from_mask_ignores_background_and_ignore_value():
    m = torch.zeros(4, 5, dtype=torch.long)
    m[1:3, 2:4] = 7
    m[0, 0] = 255
    torch.testing.assert_close(boxes_from_mask(m), torch.tensor([[0.4, 0.25, 0.4, 0.5, 7.0]]))


def test_missing_and_bad_inputs(tmp_path, root, caplog):
    with pytest.raises(FileNotFoundError, match=r"CelebA-HQ-img.*download_celebMask.sh"):
        CelebAMaskHQ(root=tmp_path)
    shutil.copytree(root / "CelebAMask-HQ", tmp_path / "CelebAMask-HQ", ignore=shutil.ignore_patterns("CelebAMask-HQ-mask"))
    with pytest.raises(FileNotFoundError, match=r"CelebAMask-HQ-mask;.*merge_celebamask.py"):
        CelebAMaskHQ(root=tmp_path)
    with pytest.raises(ValueError, match="unknown CelebAMask-HQ split 'dev'"):
        CelebAMaskHQ("dev", root=root)
    merge_celebamask(tmp_path)
    (tmp_path / "CelebAMask-HQ" / "CelebAMask-HQ-mask" / "0.png").unlink()
    (tmp_path / "CelebAMask-HQ" / "CelebA-HQ-img" / "2001.jpg").write_bytes(b"broken")
    ds = CelebAMaskHQ("train", root=tmp_path)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="data looks broken"):
        ds[0]  # both train images are bad
    assert ds.num_skipped == 2 and "0.png" in caplog.text and "2001.jpg" in caplog.text
    with pytest.raises(BadImageError, match=r"merged mask not found.*0.png"):
        CelebAMaskHQ("train", root=tmp_path, on_bad_image="raise")[0]
    mapping = tmp_path / "CelebAMask-HQ" / "CelebA-HQ-to-CelebA-mapping.txt"
    mapping.write_text("idx orig_idx orig_file\n0 oops 1.jpg\n")
    with pytest.raises(ValueError, match=r"mapping.txt, line 2: expected 'idx orig_idx orig_file'"):
        CelebAMaskHQ(root=tmp_path)
    mapping.write_text("idx orig_idx orig_file\n0 200000 200001.jpg\n")
    with pytest.raises(ValueError, match="split 'train' is empty"):
        CelebAMaskHQ("train", root=tmp_path)


# ----------------------------------------------------------------------------- scripts
def run_python_script(name, *args):
    saved = sys.argv
    sys.argv = [name, *args]
    try:
        runpy.run_path(str(REPO / "data_scripts" / name), run_name="__main__")
    finally:
        sys.argv = saved


def test_merge_script(tmp_path, caplog):
    write_celebamask(tmp_path, corrupt_part=(0, "nose"))
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR):
        run_python_script("merge_celebamask.py", "--root", str(tmp_path))
    assert exit_.value.code == 1 and "1 image(s) could not be merged" in caplog.text and "00000_nose.png" in caplog.text
    write_celebamask(tmp_path)  # repaired
    run_python_script("merge_celebamask.py", "--root", str(tmp_path))
    assert (tmp_path / "CelebAMask-HQ" / "CelebAMask-HQ-mask" / "0.png").exists()


def run_download(target, **env):
    env = {**os.environ, "LAYOUTDIFFUSE_DATA": str(target), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO / "data_scripts" / "download_celebMask.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


def test_download_script_quota_message(tmp_path):
    page = tmp_path / "quota.html"
    page.write_text("<html>Too many users have viewed or downloaded this file recently.</html>")
    out = run_download(tmp_path / "data", CELEBAMASK_URL=page.as_uri())
    assert out.returncode == 2
    assert "Google Drive download quota exceeded" in out.stderr
    assert "drive.google.com/open?id=1badu11NqxGf6qM3PTTooQDJvQbejgbTv" in out.stderr and "pan.baidu.com" in out.stderr
    assert f"put the zip at      {tmp_path / 'data' / 'CelebAMask-HQ.zip'}" in out.stderr
    assert not (tmp_path / "data" / "CelebAMask-HQ.zip.part").exists()


def test_download_script_extracts_and_merges_a_placed_zip(tmp_path):
    src = tmp_path / "src"
    write_celebamask(src)
    data = tmp_path / "data"
    zip_folder(src / "CelebAMask-HQ", data / "CelebAMask-HQ.zip", arcroot="CelebAMask-HQ")  # a manual download
    subprocess.run(["bash", "-n", str(REPO / "data_scripts" / "download_celebMask.sh")], check=True)
    first = run_download(data, CELEBAMASK_URL="file:///nonexistent")
    assert first.returncode == 0, first.stderr
    assert CelebAMaskHQ("all", root=data).indices.tolist() == [0, 1, 2, 2001]
    assert not (data / "CelebAMask-HQ.zip").exists()
    second = run_download(data, CELEBAMASK_URL="file:///nonexistent")
    assert second.returncode == 0 and "already extracted" in second.stderr and "already merged" in second.stderr


def test_pretrained_download_script(tmp_path):
    script = str(REPO / "data_scripts" / "download_pretrained_models.sh")
    subprocess.run(["bash", "-n", script], check=True)
    server = tmp_path / "server"
    (server / "ldm").mkdir(parents=True)
    (server / "ldm" / "model.ckpt").write_bytes(b"weights")
    zip_folder(server / "ldm", server / "celeba.zip")
    (server / "config.yaml").write_text("model: {}\n")
    env = {**os.environ, "LAYOUTDIFFUSE_DATA": str(tmp_path / "data"), "LDM_CELEBA_URL": (server / "celeba.zip").as_uri(),
           "LDM_CELEBA_CONFIG_URL": (server / "config.yaml").as_uri()}
    for _ in range(2):
        out = subprocess.run(["bash", script, "ldm-celebahq"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    assert "already done" in out.stderr
    folder = tmp_path / "data" / "pretrained" / "ldm-celebahq-256"
    assert (folder / "model.ckpt").read_bytes() == b"weights" and (folder / "config.yaml").exists()
    bad = subprocess.run(["bash", script, "sd3"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown model 'sd3'" in bad.stderr
