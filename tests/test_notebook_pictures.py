"""The notebooks' pictures as a person sees them: ``notebook_helpers.show`` refuses what it cannot
display, and every ``show`` of the notebooks' quick run draws a picture that is not blank or saturated."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from layoutdiffuse.errors import UserError
from layoutdiffuse.notebook_helpers import SHOW_DIR_ENV, displayable, show
from layoutdiffuse.visualize import grid

matplotlib.use("agg")
REPO = Path(__file__).resolve().parents[1]
# the notebooks that call the helper `show` (the rest draw with matplotlib directly)
SHOWING = sorted(p.name for p in (REPO / "notebooks").glob("*.py")
                 if re.search(r"from layoutdiffuse\.notebook_helpers import [^\n]*\bshow\b", p.read_text()))


def looks_like_a_picture(path: Path) -> tuple[float, float]:
    """(spread of grey levels 0..255, share of the most common grey level) of a recorded picture."""
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    _, counts = np.unique(grey, return_counts=True)
    return float(grey.max() - grey.min()), float(counts.max() / grey.size)


def shown(image, tmp_path, monkeypatch) -> np.ndarray:
    import matplotlib.pyplot as plt

    monkeypatch.setenv(SHOW_DIR_ENV, str(tmp_path))
    show(image, "t")
    plt.close("all")
    (path,) = tmp_path.glob("show_*.png")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def test_a_uint8_grid_is_shown_with_its_own_brightness(tmp_path, monkeypatch):
    """The bug of issue 27: a uint8 grid clamped to [0, 1] showed as a black square."""
    images = torch.linspace(-1, 1, 4 * 16 * 16).reshape(4, 1, 16, 16)
    picture = grid(images, nrow=2)  # uint8, white padding
    drawn = shown(picture, tmp_path, monkeypatch)
    assert drawn.max() > 240 and drawn.std() > 40  # the old show drew values 0 and 1 of 255: max 1
    resized = np.asarray(Image.fromarray(picture.permute(1, 2, 0).numpy()).resize(drawn.shape[1::-1], Image.NEAREST), dtype=np.float64)
    assert np.abs(resized - drawn).mean() < 12  # the drawn axes are the picture (edges resample a little)


def test_float_pictures_in_unit_range_are_shown(tmp_path, monkeypatch):
    ramp = torch.linspace(0, 1, 32)[None, None].expand(1, 32, 32)
    drawn = shown(ramp, tmp_path, monkeypatch)
    assert drawn[:, :3].mean() < 30 and drawn[:, -3:].mean() > 225


@pytest.mark.parametrize("image, words", [
    (torch.rand(3, 8, 8) * 2 - 1, "[0, 1]"),  # model samples in [-1, 1]
    (torch.full((3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), "constant"),  # blank
    (torch.ones(1, 8, 8), "constant"),  # saturated
    (torch.randint(0, 255, (3, 8, 8)), "int64"),
    (torch.rand(4, 8, 8), "C = 1 or 3"),
    (np.zeros((8, 8, 3)), "tensor"),
])
def test_show_refuses_what_it_cannot_display(image, words):
    with pytest.raises(UserError, match=re.escape(words)):
        displayable(image)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", SHOWING)
def test_every_picture_of_the_notebooks_quick_run(notebook, tmp_path):
    """Runs the notebook's source in quick mode and looks at every picture its `show` drew."""
    assert len(SHOWING) >= 3, SHOWING  # 01, 02, 03b at least: a rename must not skip them silently
    env = {**os.environ, "LAYOUTDIFFUSE_QUICK": "1", "MPLBACKEND": "agg", SHOW_DIR_ENV: str(tmp_path / "shown"),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "notebooks" / notebook)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    pictures = sorted((tmp_path / "shown").glob("show_*.png"))
    assert pictures, f"{notebook} showed no picture"
    for path in pictures:
        spread, commonest = looks_like_a_picture(path)
        assert spread > 64 and commonest < 0.95, f"{notebook}: {path.name} looks blank or saturated (grey spread {spread}, {commonest:.0%} one level)"
