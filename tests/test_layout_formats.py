"""Other projects' layouts: GLIGEN (diffusers), InstanceDiffusion and COCO files read and written.

Fixtures are written here in each project's own format, from its documentation: diffusers'
``StableDiffusionGLIGENPipeline`` (``gligen_phrases``, ``gligen_boxes`` as ``[xmin, ymin, xmax,
ymax]`` in [0, 1]), InstanceDiffusion's ``demos/*.json`` (``caption``, ``width``, ``height``,
``annos`` with pixel ``bbox`` ``[x, y, w, h]``, ``mask``, ``category_name``, ``caption``) and COCO
instances files (``images``, ``annotations``, ``categories``)."""
from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_convert

from layoutdiffuse import cli
from layoutdiffuse.errors import UserError
from layoutdiffuse.layout import LayoutError
from layoutdiffuse.layout_formats import (FORMATS, box_to_corners, corners_to_box, detect_format, read_layout, read_layout_objects,
                                          write_layout)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def random_layout(seed: int, n: int = 12) -> list[dict]:
    """``n`` objects with random boxes inside [0, 1], phrases and class names mixed."""
    rng = random.Random(seed)
    objects = []
    for i in range(n):
        w, h = rng.uniform(0.01, 0.9), rng.uniform(0.01, 0.9)
        box = [rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h]
        colour = rng.choice(["red", "blue", "green"])
        objects.append({"text": f"a {colour} {i}", "box": box} if i % 3 else {"label": str(i % 10), "box": box})
    return objects


def text_of(obj: dict) -> str:
    return obj.get("text", obj.get("label"))


def assert_same_layout(got: list[dict], expected: list[dict], atol: float = 1e-6) -> None:
    assert [text_of(o) for o in got] == [text_of(o) for o in expected]
    assert torch.allclose(torch.tensor([o["box"] for o in got], dtype=torch.float64).reshape(-1, 4),
                          torch.tensor([o["box"] for o in expected], dtype=torch.float64).reshape(-1, 4), atol=atol, rtol=0)


# --- boxes: corners <-> (x, y, w, h) against an independent implementation -------------------------------------

def test_corner_conversion_matches_torchvision_and_a_naive_formula():
    boxes = torch.rand(200, 4, dtype=torch.float64)
    xywh = boxes.tolist()
    corners = [box_to_corners(b) for b in xywh]
    assert torch.allclose(torch.tensor(corners, dtype=torch.float64), box_convert(boxes, "xywh", "xyxy"), atol=1e-12)
    naive = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in xywh]  # the definition, written out
    assert corners == naive
    back = torch.tensor([corners_to_box(c) for c in corners], dtype=torch.float64)
    assert torch.allclose(back, boxes, atol=1e-12)


# --- round trips ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["gligen", "instancediffusion", "coco", "layoutdiffuse"])
@pytest.mark.parametrize("size", [(512, 512), (640, 427)])
def test_ours_to_format_and_back(tmp_path, fmt, size):
    objects = random_layout(seed=sum(size) + len(fmt))
    path = write_layout(objects, tmp_path / "out.json", format=fmt, caption="a scene", width=size[0], height=size[1])
    read = read_layout(path)
    assert read.format == fmt
    assert_same_layout(read.objects, objects)
    assert read.caption == ("a scene" if fmt in ("gligen", "instancediffusion") else None)
    assert read.size == (size if fmt in ("instancediffusion", "coco") else None)


def test_round_trips_through_every_format_in_turn(tmp_path):
    objects = random_layout(seed=7, n=30)
    path = write_layout(objects, tmp_path / "0.json")
    for i, fmt in enumerate(["gligen", "coco", "instancediffusion", "gligen", "layoutdiffuse"]):
        read = read_layout(path)
        path = write_layout(read.objects, tmp_path / f"{i + 1}.json", format=fmt, width=(read.size or (300, 200))[0],
                            height=(read.size or (300, 200))[1])
    assert_same_layout(read_layout_objects(path)[0], objects)


def test_the_empty_layout_round_trips(tmp_path):
    for fmt in FORMATS:
        path = write_layout([], tmp_path / f"{fmt}.json", format=fmt, width=64, height=64)
        assert read_layout_objects(path) == ([], None)


def test_integer_labels_need_class_names_for_phrase_formats(tmp_path):
    objects = [{"label": 2, "box": [0.1, 0.1, 0.5, 0.5]}]
    with pytest.raises(LayoutError, match="label 2 is a class id; other formats take phrases"):
        write_layout(objects, tmp_path / "g.json", format="gligen")
    path = write_layout(objects, tmp_path / "g.json", format="gligen", class_names=["cat", "dog", "bird"])
    assert json.loads(path.read_text())["gligen_phrases"] == ["bird"]
    assert read_layout_objects(write_layout(objects, tmp_path / "ours.json"))[0] == objects  # our own format keeps ids


def test_a_written_gligen_file_is_what_the_diffusers_pipeline_takes(tmp_path):
    pipelines = pytest.importorskip("diffusers.pipelines")
    import inspect

    pipeline = pipelines.StableDiffusionGLIGENPipeline
    path = write_layout(random_layout(seed=5), tmp_path / "g.json", format="gligen")
    arguments = json.loads(path.read_text())
    assert set(arguments) <= set(inspect.signature(pipeline.__call__).parameters)
    pipeline.check_inputs(None, height=512, width=512, callback_steps=1, **arguments)  # self is not used
    boxes = torch.tensor(arguments["gligen_boxes"])  # as the pipeline builds them: (xmin, ymin, xmax, ymax) in [0, 1]
    assert boxes.shape == (12, 4) and (boxes[:, 2:] > boxes[:, :2]).all() and 0 <= boxes.min() and boxes.max() <= 1


# --- each project's own files ------------------------------------------------------------------------------

def test_a_gligen_file_as_diffusers_documents_it(tmp_path, caplog):
    data = {"prompt": "a waterfall and a modern high speed train in a beautiful forest with fall foliage",
            "gligen_phrases": ["a waterfall", "a modern high speed train"],
            "gligen_boxes": [[0.1387, 0.2051, 0.4277, 0.7090], [0.4980, 0.4355, 0.8516, 0.7266]],
            "gligen_scheduled_sampling_beta": 1, "num_inference_steps": 50}
    with caplog.at_level(logging.WARNING):
        objects, caption = read_layout_objects(write(tmp_path / "gligen.json", data))
    assert caption == data["prompt"]
    assert_same_layout(objects, [{"text": "a waterfall", "box": [0.1387, 0.2051, 0.4277 - 0.1387, 0.7090 - 0.2051]},
                                 {"text": "a modern high speed train", "box": [0.4980, 0.4355, 0.8516 - 0.4980, 0.7266 - 0.4355]}])
    assert "'gligen_scheduled_sampling_beta', 'num_inference_steps': not part of a box layout, not read" in caplog.text


def test_an_instancediffusion_file_as_its_demos_write_it(tmp_path, caplog):
    rle = {"size": [512, 512], "counts": "Q[a19]?:L4M3N3M2O1O1O1"}
    data = {"caption": "a cat and a robin on rocks in a stream", "width": 768, "height": 512, "annos": [
        {"bbox": [0, 51, 179, 230], "mask": [], "category_name": "", "caption": "a gray cat standing on a rock"},
        {"bbox": [179, 102, 153, 153], "mask": rle, "category_name": "bird", "caption": "a yellow robin"},
        {"bbox": [0, 358, 768, 153], "mask": [], "category_name": "water", "caption": ""}]}  # the category name stands in
    with caplog.at_level(logging.WARNING):
        read = read_layout(write(tmp_path / "inst.json", data))
    assert (read.format, read.caption, read.size) == ("instancediffusion", data["caption"], (768, 512))
    assert_same_layout(read.objects, [{"text": "a gray cat standing on a rock", "box": [0, 51 / 512, 179 / 768, 230 / 512]},
                                      {"text": "a yellow robin", "box": [179 / 768, 102 / 512, 153 / 768, 153 / 512]},
                                      {"text": "water", "box": [0, 358 / 512, 1, 153 / 512]}])
    assert "annos: 'mask': not part of a box layout, not read" in caplog.text  # the one non-empty mask is named


def coco_file() -> dict:
    """A COCO instances file of two images (one with a crowd annotation), as the COCO format defines it."""
    return {
        "info": {"description": "fixture"}, "licenses": [],
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426},
                   {"id": 285, "file_name": "000000000285.jpg", "width": 586, "height": 640}],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 1, "bbox": [412.8, 157.61, 53.05, 138.01], "area": 3000.0, "iscrowd": 0,
             "segmentation": [[412.8, 157.61, 465.85, 157.61, 465.85, 295.62]]},
            {"id": 2, "image_id": 285, "category_id": 23, "bbox": [0.0, 50.0, 586.0, 590.0], "area": 345740.0, "iscrowd": 0,
             "segmentation": [[0, 50, 586, 50, 586, 640]]},
            {"id": 3, "image_id": 139, "category_id": 62, "bbox": [7.03, 167.76, 149.32, 94.87], "area": 1000.0, "iscrowd": 1,
             "segmentation": {"size": [426, 640], "counts": [0, 10, 20]}}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 23, "name": "bear", "supercategory": "animal"},
                       {"id": 62, "name": "chair", "supercategory": "furniture"}]}


def test_one_image_of_a_coco_file_by_id_or_file_name(tmp_path):
    path = write(tmp_path / "instances.json", coco_file())
    expected = [{"text": "person", "box": [412.8 / 640, 157.61 / 426, 53.05 / 640, 138.01 / 426]},
                {"text": "chair", "box": [7.03 / 640, 167.76 / 426, 149.32 / 640, 94.87 / 426]}]  # crowd boxes are boxes too
    for image in (139, "139", "000000000139.jpg"):
        read = read_layout(path, image=image)
        assert read.size == (640, 426) and read.caption is None
        assert_same_layout(read.objects, expected)
    assert_same_layout(read_layout_objects(path, image=285)[0], [{"text": "bear", "box": [0, 50 / 640, 1, 590 / 640]}])


def test_a_written_coco_file_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    objects = random_layout(seed=3, n=6) + [{"text": "a red 1", "box": [0.2, 0.2, 0.3, 0.3]}]  # a phrase used twice
    path = write_layout(objects, tmp_path / "coco.json", format="coco", width=320, height=240, file_name="x.png")
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(dict.fromkeys(text_of(o) for o in objects))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == len(objects) and coco.loadImgs(1)[0]["file_name"] == "x.png"
    for ann, obj in zip(anns, objects):
        mask = torch.from_numpy(coco.annToMask(ann))  # the segmentation is the box's rectangle
        x, y, w, h = ann["bbox"]
        assert abs(mask.sum().item() - w * h) <= 2 * (w + h) + 4
        assert coco.loadCats(ann["category_id"])[0]["name"] == text_of(obj)


# --- detection by content -------------------------------------------------------------------------------

@pytest.mark.parametrize("data, fmt", [
    ([{"label": "7", "box": [0, 0, 1, 1]}], "layoutdiffuse"), ([], "layoutdiffuse"),
    ({"gligen_phrases": [], "gligen_boxes": []}, "gligen"),
    ({"caption": "", "width": 8, "height": 8, "annos": []}, "instancediffusion"),
    ({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "annotations": [], "categories": []}, "coco"),
])
def test_the_format_is_read_from_the_content(data, fmt, tmp_path):
    assert detect_format(data) == fmt
    assert read_layout(write(tmp_path / "layout.txt", data)).format == fmt


@pytest.mark.parametrize("data", [{"phrases": ["a"], "locations": [[0, 0, 1, 1]]}, "a string", 3, {}])
def test_an_unknown_document_is_refused_naming_the_formats(data, tmp_path):
    with pytest.raises(LayoutError) as err:
        read_layout(write(tmp_path / "odd.json", data))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'odd.json'} is not a layout this project reads")
    assert all(name in message for name in ("gligen_phrases", "annos", "images", "(COCO)")) and "\n" not in message


# --- bad input: one line naming the file and the field ------------------------------------------------------

GLIGEN = {"gligen_phrases": ["a dog"], "gligen_boxes": [[0.1, 0.1, 0.5, 0.5]]}
INSTANCE = {"caption": "c", "width": 512, "height": 512,
            "annos": [{"bbox": [0, 0, 100, 100], "mask": [], "category_name": "", "caption": "x"}]}


def with_anno(**anno):
    return {**INSTANCE, "annos": [{**INSTANCE["annos"][0], **anno}]}


BAD = [
    ({**GLIGEN, "gligen_boxes": [[0.5, 0.1, 0.3, 0.5]]}, "gligen_boxes[0] [0.5, 0.1, 0.3, 0.5]: xmax must be > xmin"),
    ({**GLIGEN, "gligen_boxes": [[0.5, 0.1, 1.3, 0.5]]}, "gligen_boxes[0] [0.5, 0.1, 1.3, 0.5]: the box leaves the image"),
    ({**GLIGEN, "gligen_boxes": [[0.1, 0.1, float("nan"), 0.5]]}, "gligen_boxes[0] must be a list of 4 finite numbers"),
    ({**GLIGEN, "gligen_boxes": [[0.1, 0.1, "0.5", 0.5]]}, "gligen_boxes[0] must be a list of 4 finite numbers"),
    ({**GLIGEN, "gligen_boxes": [[0.1, 0.1, 0.5]]}, "gligen_boxes[0] must be a list of 4 finite numbers [xmin, ymin, xmax, ymax]"),
    ({**GLIGEN, "gligen_phrases": ["  "]}, "gligen_phrases[0] must be a non-empty phrase"),
    ({**GLIGEN, "gligen_phrases": ["a", "b"]}, "'gligen_phrases' has 2 phrases and 'gligen_boxes' 1 boxes"),
    ({"gligen_phrases": ["a"]}, "'gligen_boxes' must be a list"),
    ({**GLIGEN, "prompt": 3}, "'prompt' (the image's caption) must be a string"),
    (with_anno(bbox=None), "annos[0].bbox must be a list of 4 finite numbers [x, y, w, h] in pixels"),
    ({**INSTANCE, "annos": [{"category_name": "tree", "caption": "a palm", "point": [10, 20]}]}, "annos[0] has no 'bbox'"),
    (with_anno(bbox=[0, 0, -5, 10]), "annos[0].bbox [0, 0, -5, 10] (pixels of a 512x512 image): the box has a zero or negative width"),
    (with_anno(bbox=[0, 228, 763, 125]), "annos[0].bbox [0, 228, 763, 125] (pixels of a 512x512 image): the box leaves the image"),
    (with_anno(bbox=[-30, 0, 10, 10]), "the box leaves the image"),
    (with_anno(caption="", category_name=""), "annos[0] has neither a 'caption' nor a 'category_name' phrase"),
    ({**INSTANCE, "width": None}, "bad.json needs the image's width and height in pixels (its boxes are in pixels); give both "
                                  "(the keys 'width' and 'height' beside 'annos')"),
    ({**INSTANCE, "height": 0}, "height must be an integer >= 1, got 0"),
    ({**INSTANCE, "annos": {"bbox": [0, 0, 1, 1]}}, "'annos' must be a list"),
    ([{"text": "", "box": [0, 0, 1, 1]}], "object 0: 'text' (a phrase) must be a non-empty phrase"),
    ([{"text": "a", "label": "b", "box": [0, 0, 1, 1]}], "object 0: expected the keys 'box' and one of 'text' or 'label'"),
    ([{"label": True, "box": [0, 0, 1, 1]}], "object 0: 'label' (a phrase, a class name or a class id >= 0) must be a non-empty phrase"),
    ([{"text": "a", "box": [0.5, 0.5, 0.6, 0.1]}], "object 0: 'box' [0.5, 0.5, 0.6, 0.1]: the box leaves the image"),
    ([{"text": "a", "box": [0, 0, 10 ** 400, 1]}], "object 0: 'box' must be a list of 4 finite numbers"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_layouts_are_refused_in_one_line_naming_file_and_field(data, message, tmp_path):
    path = write(tmp_path / "bad.json", data)
    with pytest.raises(UserError) as err:
        read_layout(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text, text


def coco_with(**changes):
    data = coco_file()
    data.update(changes)
    return data


@pytest.mark.parametrize("data, image, message", [
    (coco_file(), None, "holds 2 images; name one by id or file name (image=, --image), e.g. 139 (000000000139.jpg)"),
    (coco_with(images=[]), None, "holds no images"),
    (coco_file(), 7, "has no image with file_name or id 7 (2 images"),
    (coco_with(categories=[{"id": 1, "name": "person"}]), 139, "annotation id 3: category_id 62 is not in 'categories'"),
    (coco_with(categories=[{"id": 1, "name": ""}, {"id": 62, "name": "chair"}]), 139, "category 1 'name' must be a non-empty phrase"),
    (coco_with(annotations=[{"id": 1, "image_id": 139, "category_id": 1, "bbox": [600, 0, 80, 10]}]), 139,
     "annotation id 1: bbox [600, 0, 80, 10] (pixels of a 640x426 image): the box leaves the image"),
    (coco_with(annotations=[{"id": 1, "image_id": 139, "category_id": 1}]), 139, "annotation id 1 has no 'bbox'"),
    (coco_with(annotations=[{"image_id": 139, "category_id": 1, "bbox": [0, 0, 1, 1]}]), 139, "malformed COCO file (KeyError: 'id')"),
    (coco_with(images=[{"id": 139, "file_name": "a.jpg"}]), 139,
     "image 139 needs the image's width and height in pixels (its boxes are in pixels); give both (the keys 'width' and 'height' of its entry"),
    (coco_with(annotations="none"), 139, "a COCO file's 'annotations' must be a list of objects"),
])
def test_bad_coco_files_are_refused_in_one_line(data, image, message, tmp_path):
    path = write(tmp_path / "instances.json", data)
    with pytest.raises(UserError) as err:
        read_layout(path, image=image)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text, text


def test_files_that_are_not_layouts(tmp_path):
    with pytest.raises(UserError, match="layout file .*missing.json does not exist"):
        read_layout(tmp_path / "missing.json")
    with pytest.raises(UserError, match="is a folder, not a regular file"):
        read_layout(tmp_path)
    (tmp_path / "broken.json").write_text('{"gligen_phrases": [')
    with pytest.raises(LayoutError, match="broken.json is not valid JSON"):
        read_layout(tmp_path / "broken.json")
    with pytest.raises(UserError, match=r"is a gligen layout of one image; image= \(--image\) picks an image of a COCO file"):
        read_layout(write(tmp_path / "g.json", GLIGEN), image=3)


def test_writing_refuses_what_it_cannot_write(tmp_path):
    objects = [{"text": "a", "box": [0.1, 0.1, 0.2, 0.2]}]
    with pytest.raises(UserError, match="writing a coco layout needs the image's width and height"):
        write_layout(objects, tmp_path / "c.json", format="coco")
    with pytest.raises(UserError, match="writing a instancediffusion layout: width must be an integer >= 1, got 0"):
        write_layout(objects, tmp_path / "i.json", format="instancediffusion", width=0, height=10)
    with pytest.raises(UserError, match="unknown layout format 'glide'; choose one of: layoutdiffuse, gligen, instancediffusion, coco"):
        write_layout(objects, tmp_path / "x.json", format="glide")
    with pytest.raises(LayoutError, match=r"layout: object 0: 'box' \[0.9, 0.1, 0.2, 0.2\]: the box leaves the image"):
        write_layout([{"text": "a", "box": [0.9, 0.1, 0.2, 0.2]}], tmp_path / "g.json", format="gligen")
    assert not list(tmp_path.iterdir())  # nothing written


def test_clip_cuts_boxes_to_the_image_and_names_each(tmp_path, caplog):
    path = write(tmp_path / "inst.json", with_anno(bbox=[0, 228, 763, 125]))  # as in InstanceDiffusion's corgi demo
    with caplog.at_level(logging.WARNING):
        objects, _ = read_layout_objects(path, clip=True)
    assert_same_layout(objects, [{"text": "x", "box": [0, 228 / 512, 1, 125 / 512]}])
    assert "annos[0].bbox [0, 228, 763, 125] (pixels of a 512x512 image): the box leaves the image; clipped" in caplog.text
    with pytest.raises(LayoutError, match="lies wholly outside the image"):
        read_layout(write(tmp_path / "out.json", with_anno(bbox=[600, 0, 10, 10])), clip=True)


def test_what_a_format_cannot_hold_is_named_in_a_warning(tmp_path, caplog):
    many = [{"text": f"object {i}", "box": [0.0, 0.0, 0.5, 0.5]} for i in range(31)]
    with caplog.at_level(logging.WARNING):
        write_layout(many, tmp_path / "g.json", format="gligen")
        write_layout(many[:1], tmp_path / "c.json", format="coco", caption="a scene", width=8, height=8)
    assert "31 objects: diffusers' GLIGEN pipeline reads the first 30" in caplog.text
    assert "a coco layout file holds no caption; the caption 'a scene' is not written" in caplog.text


# --- the command line ---------------------------------------------------------------------------------------

def test_convert_layout_from_the_shell(tmp_path, capsys):
    source = write(tmp_path / "inst.json", {**INSTANCE, "width": 640, "height": 480})
    assert cli.main(["convert-layout", str(source), "--to", "coco", "--out", str(tmp_path / "coco.json")]) == 0  # the input's size
    assert cli.main(["convert-layout", str(tmp_path / "coco.json"), "--to", "gligen", "--out", str(tmp_path / "g.json"),
                     "--caption", "a picture"]) == 0
    gligen = json.loads((tmp_path / "g.json").read_text())
    assert gligen == {"prompt": "a picture", "gligen_phrases": ["x"], "gligen_boxes": [[0.0, 0.0, 100 / 640, 100 / 480]]}
    capsys.readouterr()
    assert cli.main(["convert-layout", str(tmp_path / "g.json"), "--to", "instancediffusion", "--out", str(tmp_path / "i.json")]) == 2
    assert capsys.readouterr().err.strip() == ("error: writing a instancediffusion layout needs the image's width and height in pixels "
                                               "(its boxes are in pixels); give both (width=, height=; --width, --height)")


@pytest.mark.parametrize("argv, message", [
    (["convert-layout", "missing.json", "--to", "gligen", "--out", "x.json"], "error: layout file missing.json does not exist"),
    (["convert-layout", "docs/example_layout.json", "--to", "glide", "--out", "x.json"],
     "error: --to must be one of: layoutdiffuse, gligen, instancediffusion, coco; got 'glide'"),
])
def test_convert_layout_checks_before_importing_torch(argv, message):
    code = "import sys; from layoutdiffuse.cli import main; c = main(sys.argv[1:]); print(c, 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO)
    assert run.stdout.strip() == "2 False" and run.stderr.strip() == message, run.stdout + run.stderr
