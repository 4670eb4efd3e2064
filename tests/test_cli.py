"""The command line: its habits (prog, --version, help from the registries), the checks made before any
heavy import, mask and text release models, and the ``sample --save-images`` -> ``edit`` round trip."""
from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layoutdiffuse
from layoutdiffuse import cli
from layoutdiffuse.editing import box_mask, load_image

REPO = Path(__file__).resolve().parents[1]
RELEASE = next((p for p in (REPO.parent / "shared" / "release", Path("/work/shared/release")) if (p / "README.md").is_file()), None)
needs_release = pytest.mark.skipif(RELEASE is None, reason="release fixtures not found (../shared/release or /work/shared/release)")


def error_of(argv: list[str], capsys) -> str:
    """The one stderr line of a refused command (exit 2)."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- habits ------------------------------------------------------------------------------------------------

def test_version_and_prog(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"layoutdiffuse {layoutdiffuse.__version__}"
    assert cli.parser().prog == "layoutdiffuse"
    out = subprocess.run([sys.executable, "-m", "layoutdiffuse", "sample", "--help"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.startswith("usage: layoutdiffuse sample ")  # the same prog under python -m as for the console script


def test_help_names_every_registered_sampler_and_the_defaults(capsys):
    from layoutdiffuse.diffusion import SAMPLERS

    for command in ("sample", "edit", "evaluate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert " | ".join(SAMPLERS.names()) in text, command
        for flag in ("--steps", "--guidance", "--seed"):
            described = re.search(re.escape(flag) + r" [A-Z_]+ (.*?)(?= --[a-z-]+ [A-Z_]+ |$)", text).group(1)
            assert "default" in described, (command, flag, described)
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--n N number of samples, 1 to 1024 (default: 16)" in text and "(default: 0)" in text


def test_an_unknown_sampler_is_refused_with_the_registry(capsys, tmp_path):
    from layoutdiffuse.diffusion import SAMPLERS

    line = error_of(["sample", "--sampler", "euler", "--out", str(tmp_path / "x.png")], capsys)
    assert line == f"error: unknown sampler 'euler'; choose one of: {', '.join(SAMPLERS.names())}"


# --- checks before the heavy imports ------------------------------------------------------------------------

CHECK_IMPORTS = """
import sys
from layoutdiffuse.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "pytorch_lightning", "lightning", "torchvision") if m in sys.modules)
print(code, heavy)
"""


@pytest.mark.parametrize("argv, message", [
    (["sample", "--ckpt", "missing.safetensors"], "checkpoint missing.safetensors does not exist"),
    (["sample", "--layout", "missing.json"], "layout file missing.json does not exist"),
    (["sample", "--mask", "missing.png"], "mask file missing.png does not exist"),
    (["sample", "--ckpt", "layoutdiffuse"], "is a folder"),
    (["sample", "--n", "0"], "--n must be in [1, 1024]"),
    (["edit", "--image", "missing.png", "--layout", "docs/example_layout.json", "--new-layout", "docs/example_layout.json"],
     "image missing.png does not exist"),
    (["edit", "--image", "docs/layout_mnist_samples.png", "--layout", "docs/example_layout.json", "--new-layout",
      "docs/example_layout.json", "--seed", "-1"], "seed must be an integer in [0, 2**63), got -1"),  # as sample
    (["sample", "--out", "/dev/null"], "cannot write --out /dev/null: it is a character device"),
    (["evaluate", "--ckpt", "missing.ckpt", "--nll"], "checkpoint missing.ckpt does not exist"),
    (["convert-release", "missing.ckpt", "--release-config", "celeb_mask", "--out", "x.safetensors"], "release checkpoint missing.ckpt"),
])
def test_a_missing_file_is_reported_before_torch_or_lightning_is_imported(argv, message, tmp_path):
    out = [] if argv[0] in ("evaluate", "convert-release") or "--out" in argv else ["--out", str(tmp_path / "x.png")]
    run = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *argv, *out], capture_output=True, text=True, cwd=REPO)
    assert run.stdout.strip() == "2 []", run.stdout + run.stderr
    assert run.stderr.startswith("error: ") and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_the_layout_adaptor_is_logged_once_per_load(caplog):
    from layoutdiffuse.sampling import load_model

    with caplog.at_level(logging.INFO):
        load_model()
    assert sum(r.getMessage().startswith("layout adaptor:") for r in caplog.records) == 1


# --- sample --save-images -> edit, from the shell ------------------------------------------------------------

def test_sample_save_images_feeds_edit(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert cli.main(["sample", "--layout", str(REPO / "docs" / "example_layout.json"), "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "grid.png"), "--save-images", str(raw)]) == 0
    assert sorted(p.name for p in raw.iterdir()) == ["sample_000.json", "sample_000.png", "sample_001.json", "sample_001.png"]
    assert json.loads((raw / "sample_000.json").read_text()) == json.loads((REPO / "docs" / "example_layout.json").read_text())
    images, _ = layoutdiffuse.sample(str(REPO / "docs" / "example_layout.json"), n=2, steps=2, batch_size=64)
    for i in range(2):  # the raw samples, at the model's size, as sampled (to the PNG's 8 bits)
        assert torch.allclose(load_image(raw / f"sample_{i:03d}.png", 1), images[i].clamp(-1, 1), atol=1 / 127.5 + 1e-6)
    new = [{"label": "3", "box": [0.05, 0.1, 0.4, 0.5]}, {"label": "1", "box": [0.55, 0.3, 0.35, 0.55]}]  # the 7 becomes a 1
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert cli.main(["edit", "--image", str(raw / "sample_000.png"), "--layout", str(raw / "sample_000.json"),
                     "--new-layout", str(tmp_path / "new.json"), "--steps", "2", "--out", str(tmp_path / "edited.png")]) == 0
    before, after = load_image(raw / "sample_000.png", 1), load_image(tmp_path / "edited.png", 1)
    region = box_mask(torch.tensor([[[0.55, 0.3, 0.35, 0.55, 7.0]]]), 32, 32)[0].expand_as(before)
    assert torch.equal(after[~region], before[~region]) and not torch.equal(after[region], before[region])
    line = error_of(["edit", "--image", str(tmp_path / "grid.png"), "--layout", str(raw / "sample_000.json"),
                     "--new-layout", str(tmp_path / "new.json"), "--out", str(tmp_path / "e.png")], capsys)
    assert "but the model makes 1x32x32 images" in line and "sample --save-images DIR" in line


# --- release models: masks, text, the hints after conversion ---------------------------------------------------

def convert(caplog, tmp_path, name: str, *extra: str) -> tuple[Path, str]:
    """Convert a release fixture through the CLI; returns the file and the line logged after it."""
    out = tmp_path / f"{name}.safetensors"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli.main(["convert-release", str(RELEASE / f"{name}.ckpt"), "--release-config", str(RELEASE / f"{name}.json"),
                         "--out", str(out), *extra]) == 0
    return out, next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"wrote {out}"))


def hinted_command(line: str, **files: Path) -> list[str]:
    """The ``sample`` command of a conversion hint, placeholders replaced by real files."""
    command = line.split("sample it with: ", 1)[1].split("   (", 1)[0]
    for placeholder, path in files.items():
        command = command.replace(placeholder, str(path))
    argv = shlex.split(command)
    assert argv[:2] == ["layoutdiffuse", "sample"]
    return argv[1:]


@pytest.fixture(scope="module")
def mask_png(tmp_path_factory) -> Path:
    """Item 0's part mask of the celeb_mask fixture (64x64, ids 0..18 and 255), as a grayscale PNG."""
    from PIL import Image
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("mask") / "mask.png"
    Image.fromarray(load_file(str(RELEASE / "celeb_mask.io.safetensors"))["mask"][0].numpy().astype("uint8"), mode="L").save(path)
    return path


@needs_release
def test_a_mask_model_takes_a_mask_file_and_refuses_boxes(tmp_path, capsys, caplog, mask_png):
    ckpt, hint = convert(caplog, tmp_path, "celeb_mask")
    argv = hinted_command(hint, **{"MASK.png": mask_png})
    assert cli.main([*argv, "--n", "1", "--steps", "4", "--out", str(tmp_path / "grid.png")]) == 0  # the hint works as printed
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps([{"label": "3", "box": [0.1, 0.1, 0.5, 0.5]}]))
    line = error_of(["sample", "--ckpt", str(ckpt), "--layout", str(layout), "--out", str(tmp_path / "x.png")], capsys)
    assert line == "error: this model reads 19-part masks, not box layouts; give --mask MASK.png (a PNG of part ids; mask= in Python)"
    module = layoutdiffuse.load_model(ckpt)
    with_mask, _ = layoutdiffuse.sample(mask=str(mask_png), n=1, ckpt=module, steps=4)
    empty, _ = layoutdiffuse.sample(n=1, ckpt=module, steps=4)
    all_ignore, _ = layoutdiffuse.sample(mask=torch.full((64, 64), 255), n=1, ckpt=module, steps=4)
    assert torch.equal(empty, all_ignore)  # the empty mask is all 255
    assert (with_mask - empty).abs().max() > 1e-3
    bad = tmp_path / "bad.png"
    from PIL import Image

    Image.new("L", (64, 64), 19).save(bad)
    assert "holds part id 19; this model reads 19-part masks" in error_of(
        ["sample", "--ckpt", str(ckpt), "--mask", str(bad), "--out", str(tmp_path / "x.png")], capsys)
    Image.new("RGB", (64, 64)).save(bad)
    assert "is a RGB image; a mask holds part ids in one 8-bit channel" in error_of(
        ["sample", "--ckpt", str(ckpt), "--mask", str(bad), "--out", str(tmp_path / "x.png")], capsys)


def test_a_box_model_refuses_a_mask(tmp_path, capsys, mask_png):
    line = error_of(["sample", "--mask", str(mask_png), "--out", str(tmp_path / "x.png")], capsys)
    assert line == "error: this model reads box layouts, not masks; give --layout LAYOUT.json (layout= in Python)"


@needs_release
def test_a_text_model_converted_without_its_foundation_is_refused_before_sampling(tmp_path, capsys, caplog, monkeypatch):
    from layoutdiffuse.training.ddpm import DDPMTraining

    ckpt, hint = convert(caplog, tmp_path, "sd_layout")
    assert "sample it with" not in hint
    assert "this model reads text: it cannot sample without its text encoder" in hint
    assert f"layoutdiffuse convert-release {RELEASE / 'sd_layout.ckpt'} --release-config {RELEASE / 'sd_layout.json'} " in hint
    assert hint.endswith("--foundation FOLDER")

    def never(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(DDPMTraining, "sample", never)
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps([{"label": "3", "box": [0.1, 0.1, 0.5, 0.5]}]))
    for extra in ([], ["--prompt", "a cat"]):
        line = error_of(["sample", "--ckpt", str(ckpt), "--layout", str(layout), *extra, "--out", str(tmp_path / "x.png")], capsys)
        assert "this model reads text but holds no text encoder" in line and "--foundation FOLDER" in line
        assert "sd_layout.ckpt --release-config CONFIG" in line


def test_the_foundation_hints_name_the_download():
    from layoutdiffuse.release.hints import foundation_hint
    from layoutdiffuse.release.published import PUBLISHED

    expected = {"cocostuff_SD1_5": "download_pretrained_models.sh sd15", "cocostuff_SD2_1": "download_pretrained_models.sh sd21",
                "cocostuff": "CompVis/ldm-text2im-large-256", "vg": "CompVis/ldm-text2im-large-256",
                "celeb_mask": "download_pretrained_models.sh ldm-celebahq"}
    for name, entry in PUBLISHED.items():
        assert expected[name] in foundation_hint(entry["model_args"]), name


@needs_release
def test_a_missing_foundation_folder_says_how_to_fetch_it(tmp_path, capsys):
    line = error_of(["convert-release", str(RELEASE / "celeb_mask.ckpt"), "--release-config", "celeb_mask", "--out",
                     str(tmp_path / "c.safetensors"), "--foundation", str(tmp_path / "nowhere")], capsys)
    assert f"foundation {tmp_path / 'nowhere'} does not exist" in line
    assert "bash data_scripts/download_pretrained_models.sh ldm-celebahq" in line


@needs_release
def test_the_hint_after_converting_a_text_model_with_its_foundation_works(tmp_path, capsys, caplog, monkeypatch):
    pytest.importorskip("diffusers")
    from tiny_sd import release_sd_folder

    folder = release_sd_folder(tmp_path / "sd", RELEASE / "sd_layout.json", monkeypatch)
    _, hint = convert(caplog, tmp_path, "sd_layout", "--foundation", str(folder))
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps([{"label": "3", "box": [0.1, 0.1, 0.5, 0.5]}]))
    argv = hinted_command(hint, **{"LAYOUT.json": layout})
    assert "--prompt" in argv
    assert cli.main([*argv, "--n", "1", "--steps", "4", "--out", str(tmp_path / "grid.png")]) == 0
