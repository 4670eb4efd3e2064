"""COCO-stuff loader on a fixture in COCO's own format: the LostGAN/sg2im filter, labels, boxes, bad input."""
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from layoutdiffuse.data.fixtures import COCO_CAPTIONS, write_coco, zip_folder
from layoutdiffuse.data.coco_stuff import CLASS_TO_COCO_ID, CLASSES, COCO_ID_TO_CLASS, NUM_CLASSES, CocoStuff
from layoutdiffuse.conditions import collate
from layoutdiffuse.data.transforms import BadImageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_coco(root)
    return root


def test_class_table():
    assert NUM_CLASSES == len(CLASSES) == 171 and len(set(CLASSES)) == 171
    assert CLASS_TO_COCO_ID[:3] == (1, 2, 3) and CLASS_TO_COCO_ID[79] == 90 and CLASS_TO_COCO_ID[80] == 92
    assert CLASS_TO_COCO_ID[-1] == 182 and 183 not in COCO_ID_TO_CLASS and 12 not in COCO_ID_TO_CLASS
    assert CLASSES[COCO_ID_TO_CLASS[18]] == "dog" and CLASSES[COCO_ID_TO_CLASS[157]] == "sky-other"
    assert [COCO_ID_TO_CLASS[i] for i in CLASS_TO_COCO_ID] == list(range(171))


def test_protocol_filter_keeps_exactly_the_right_images(root):
    ds = CocoStuff("val", root=root)
    # 101: 2 objects (its 2% box is dropped: strict >); 104: 9; 105: 2 + a dropped crowd box; 106: no stuff
    assert ds.image_ids.tolist() == [102, 103]
    assert len(ds) == 2 and ds.num_classes == 171


@pytest.mark.parametrize("kwargs, ids", [
    (dict(max_objects=9), [102, 103, 104]),
    (dict(crowd="keep"), [102, 103, 105]),
    (dict(stuff_only=False), [102, 103, 106]),
    (dict(min_objects=2), [101, 102, 103, 105]),
    (dict(min_object_size=0.0), [101, 102, 103]),  # 101 gets its 2% car back (3), 102 its tiny cat (4)
])
def test_filter_knobs(root, kwargs, ids):
    assert CocoStuff("val", root=root, **kwargs).image_ids.tolist() == ids


def test_labels_and_boxes_of_a_sample(root):
    ds = CocoStuff("val", root=root, image_size=64)
    s = ds[0]  # image 102, 40x30: dog (thing), then grass and tree (stuff); tiny cat and "other" dropped
    assert s["image"].shape == (3, 64, 64) and -1 <= s["image"].min() <= s["image"].max() <= 1
    cls = [COCO_ID_TO_CLASS[18], COCO_ID_TO_CLASS[124], COCO_ID_TO_CLASS[169]]
    assert [CLASSES[c] for c in cls] == ["dog", "grass", "tree"]
    expected = torch.tensor([[5 / 40, 5 / 30, 10 / 40, 8 / 30, cls[0]],
                             [0, 15 / 30, 1, 15 / 30, cls[1]],
                             [25 / 40, 0, 15 / 40, 15 / 30, cls[2]]])
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    assert "caption" not in s
    boxes, labels = ds.objects(1)  # image 103 (48x32): 4 things then 4 stuff, as annotated
    assert labels.tolist() == [COCO_ID_TO_CLASS[i] for i in (1, 2, 62, 90, 92, 157, 149, 182)]
    assert boxes[0].tolist() == [0, 0, 10, 10]


def test_crowd_box_kept_on_request(root):
    ds = CocoStuff("val", root=root, crowd="keep", image_size=32)
    s = ds[2]  # image 105
    assert ds.num_crowd == 1
    torch.testing.assert_close(s["layout"][0], torch.tensor([0, 0, 0.5, 20 / 30, COCO_ID_TO_CLASS[1]]), atol=1e-6, rtol=0)


def test_flip_and_crop_options(root):
    s = CocoStuff("val", root=root, image_size=30, flip=1.0)[0]
    torch.testing.assert_close(s["layout"][0, :4], torch.tensor([1 - 15 / 40, 5 / 30, 10 / 40, 8 / 30]), atol=1e-6, rtol=0)
    # centre crop of 40x30 -> 30x30 (left = 5): the tree [25, 40] is cut to [20, 30]
    s = CocoStuff("val", root=root, image_size=30, crop="center")[0]
    torch.testing.assert_close(s["layout"][:, :4], torch.tensor([[0, 5 / 30, 10 / 30, 8 / 30], [0, 0.5, 1, 0.5],
                                                                [20 / 30, 0, 10 / 30, 0.5]]), atol=1e-6, rtol=0)


def test_captions(root):
    ds = CocoStuff("val", root=root, caption="first")
    assert ds[0]["caption"] == COCO_CAPTIONS[102][0]
    assert CocoStuff("val", root=root, caption="random")[1]["caption"] in COCO_CAPTIONS[103]
    batch = collate([ds[0], ds[1]])
    assert batch["caption"] == [COCO_CAPTIONS[102][0], COCO_CAPTIONS[103][0]] and batch["layout"].shape == (2, 8, 5)


def test_missing_files(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"coco/val2017.*download_coco.sh"):
        CocoStuff("val", root=tmp_path)
    shutil.copytree(root / "coco" / "val2017", tmp_path / "coco" / "val2017")
    with pytest.raises(FileNotFoundError, match=r"instances_val2017.json.*download_coco.sh"):
        CocoStuff("val", root=tmp_path)
    with pytest.raises(ValueError, match="unknown COCO split 'test'"):
        CocoStuff("test", root=root)


@pytest.mark.parametrize("content, message", [
    ("{not json", r"is not valid JSON"),
    ("[1, 2]", r"is not a COCO annotation file: top level is a list"),
    ('{"images": [], "info": {}}', r"is not a COCO annotation file: missing key\(s\) annotations, categories"),
])
def test_not_a_coco_json(tmp_path, root, content, message):
    shutil.copytree(root / "coco", tmp_path / "coco")
    (tmp_path / "coco" / "annotations" / "stuff_val2017.json").write_text(content)
    with pytest.raises(ValueError, match=r"stuff_val2017.json " + message):
        CocoStuff("val", root=tmp_path)


def test_unknown_category_and_dangling_image(tmp_path, root):
    shutil.copytree(root / "coco", tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 12  # "street sign": not in COCO 2017
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val2017.json: category id\(s\) \[12\] are not COCO-stuff 2017"):
        CocoStuff("val", root=tmp_path)
    data["annotations"][0]["category_id"] = 1
    data["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="instances_val2017.json: annotation refers to image id 999"):
        CocoStuff("val", root=tmp_path)


def test_malformed_annotation(tmp_path, root):
    shutil.copytree(root / "coco", tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "stuff_val2017.json"
    data = json.loads(path.read_text())
    del data["annotations"][3]["bbox"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"stuff_val2017.json: malformed annotation \(KeyError: 'bbox'\)"):
        CocoStuff("val", root=tmp_path)


def test_dataloader_batches(root):
    ds = CocoStuff("val", root=root, image_size=16, max_objects=9)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["layout"].shape == (3, 9, 5)
    assert (batch["layout"][0, 3:, 4] == -1).all() and ds.class_names[0] == "person"


def test_empty_split_is_an_error(root):
    with pytest.raises(ValueError, match=r"no image passes the filter \(min_object_size=0.5"):
        CocoStuff("val", root=root, min_object_size=0.5)


def test_bad_image_is_skipped_with_a_log_or_raises(tmp_path, caplog):
    write_coco(tmp_path, corrupt=(102,))
    ds = CocoStuff("val", root=tmp_path, image_size=16)
    with caplog.at_level(logging.WARNING):
        s = ds[0]
    assert s["layout"].shape == (8, 5)  # the next image, 103
    assert ds.num_skipped == 1 and ds.skipped[0].endswith("000000000102.jpg")
    assert "000000000102.jpg" in caplog.text and "1 bad image(s) skipped so far" in caplog.text
    with pytest.raises(BadImageError, match="cannot decode image.*000000000102.jpg"):
        CocoStuff("val", root=tmp_path, on_bad_image="raise")[0]


def test_image_size_disagreeing_with_annotation(tmp_path, root):
    shutil.copytree(root / "coco", tmp_path / "coco")
    from PIL import Image
    Image.new("RGB", (20, 20)).save(tmp_path / "coco" / "val2017" / "000000000103.jpg")
    with pytest.raises(BadImageError, match="is 20x20 but the annotations say 48x32"):
        CocoStuff("val", root=tmp_path, on_bad_image="raise")[1]


# ----------------------------------------------------------------------------- download script
def run_script(env_root, server, *parts, check=True, **env):
    env = {**os.environ, "LAYOUTDIFFUSE_DATA": str(env_root), "COCO_URL": server.as_uri(), **env}
    return subprocess.run(["bash", str(REPO / "data_scripts" / "download_coco.sh"), *parts], env=env,
                          capture_output=True, text=True, check=check, timeout=60)


def test_download_script_syntax():
    subprocess.run(["bash", "-n", str(REPO / "data_scripts" / "download_coco.sh")], check=True)


def test_download_script_is_idempotent_and_checks_md5(tmp_path, root):
    server = tmp_path / "server"  # what images.cocodataset.org serves, built from the fixture
    coco = root / "coco"
    staging = tmp_path / "staging"
    (staging / "ann" / "annotations").mkdir(parents=True)
    (staging / "stuff" / "annotations").mkdir(parents=True)
    for name in ("instances", "captions"):
        shutil.copy(coco / "annotations" / f"{name}_val2017.json", staging / "ann" / "annotations")
    shutil.copy(coco / "annotations" / "stuff_val2017.json", staging / "stuff" / "annotations")
    zip_folder(staging / "ann", server / "annotations" / "annotations_trainval2017.zip")
    zip_folder(staging / "stuff", server / "annotations" / "stuff_annotations_trainval2017.zip")
    zip_folder(coco / "val2017", server / "zips" / "val2017.zip", arcroot="val2017")

    target = tmp_path / "target"
    failed = run_script(target, server, "annotations", check=False)  # fixture archives: md5 differs
    assert failed.returncode != 0 and "checksum mismatch" in failed.stderr
    assert not (target / "coco" / ".done" / "annotations_trainval2017.zip").exists()

    first = run_script(target, server, "annotations", "stuff", "val", LAYOUTDIFFUSE_SKIP_CHECKSUM="1")
    assert "extracting" in first.stderr
    assert CocoStuff("val", root=target).image_ids.tolist() == [102, 103]
    assert not list((target / "coco").glob("*.zip"))  # archives removed after extraction
    shutil.rmtree(server)  # a second run must not download anything
    second = run_script(target, server, "annotations", "stuff", "val", LAYOUTDIFFUSE_SKIP_CHECKSUM="1")
    assert second.stderr.count("already done") == 3 and "downloading" not in second.stderr
    bad = run_script(target, server, "test", check=False)
    assert bad.returncode != 0 and "unknown part 'test'" in bad.stderr
