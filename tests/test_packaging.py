"""Packaging: the version written once, the package marked typed."""
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
