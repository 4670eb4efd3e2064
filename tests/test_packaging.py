"""Packaging: one version, typed package, floors that tests/lowest_versions.sh can pin, conda in step."""
import re
import sys
from pathlib import Path

import pytest

import layoutdiffuse

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_version_is_written_once(pyproject):
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "layoutdiffuse.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", layoutdiffuse.__version__)


def test_package_is_marked_typed(pyproject):
    assert (ROOT / "layoutdiffuse" / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["layoutdiffuse"]


def floors(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][0-9A-Za-z.]*)", requirement.replace(" ", ""))
        assert match, f"{requirement!r}: tests/lowest_versions.sh needs NAME>=VERSION"
        found[match.group(1).lower()] = match.group(2)
    return found


def test_every_tested_dependency_has_a_floor_the_code_needs(pyproject):
    project = pyproject["project"]
    extras = [r for extra in ("test", "notebooks", "sd") for r in project["optional-dependencies"][extra]]
    pins = floors(project["dependencies"] + extras)

    def version(name: str) -> tuple[int, ...]:
        return tuple(int(part) for part in pins[name].split(".")[:2])

    assert version("torch") >= (2, 6)  # torch.serialization.get_unsafe_globals_in_checkpoint
    assert version("torchvision") >= (0, 23)  # tv_tensors.BoundingBoxes(clamping_mode=...)
    assert version("pytorch-lightning") >= (2, 6)  # Trainer.fit(weights_only=...)
    assert version("transformers") >= (5, 0)  # CLIPTokenizer(vocab=..., merges=...) in sd/testing.py
    setuptools = floors(pyproject["build-system"]["requires"])["setuptools"]
    assert int(setuptools.split(".")[0]) >= 77  # PEP 639: `license` as an SPDX string


def test_conda_environment_repeats_the_floors(pyproject):
    pins = floors(pyproject["project"]["dependencies"])
    text = (ROOT / "environment.yml").read_text()
    for name in ("torch", "torchvision"):
        assert f"- {name}>={pins[name]}\n" in text, f"environment.yml: {name} floor differs from pyproject.toml"
