"""The README's snippets as a user runs them after its two commands: every Python snippet executes
as written (from a folder that looks like the repository, so what it writes lands in a temporary
folder), every ``python -m layoutdiffuse`` command parses with the package's own argument parser,
the shipped-model ``sample`` command runs, and every ``make`` target and script it names exists."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from layoutdiffuse.cli import parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    """The fenced code blocks of ``language`` in the README, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def commands() -> list[list[str]]:
    """Every command line of the README's bash blocks as argv: continuations joined, comments
    dropped, optional parts written ``[--flag value]`` kept without their brackets."""
    lines = "\n".join(blocks("bash")).replace("\\\n", " ").splitlines()
    argvs = [shlex.split(line.replace("[", " ").replace("]", " "), comments=True) for line in lines]
    return [argv for argv in argvs if argv]


def cli_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``python -m layoutdiffuse`` (any python), or None for another command."""
    if len(argv) > 3 and argv[0].endswith("python") and argv[1:3] == ["-m", "layoutdiffuse"]:
        return argv[3:]
    return None


@pytest.fixture
def repo_like(tmp_path) -> Path:
    """A folder whose entries link to the repository's: relative paths read the repository, new files land here."""
    for entry in REPO.iterdir():
        if not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_has_what_these_tests_read():
    assert len(blocks("python")) >= 2 and len([a for a in commands() if cli_argv(a)]) >= 8


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(index, repo_like):
    snippet = blocks("python")[index]
    result = run([sys.executable, "-c", snippet], repo_like)
    assert result.returncode == 0, f"README python snippet {index} failed:\n{snippet}\n{result.stderr[-2000:]}"
    for name in re.findall(r"save_grid\([^,]+,\s*\"([^\"]+)\"", snippet):  # the pictures it says it writes
        assert (repo_like / name).stat().st_size > 0
    claimed = re.findall(r"torch\.Size\(\[[^\]]*\]\)", "".join(re.findall(r"print\(.*?#(.*)", snippet)))
    if claimed:  # a print whose comment says what it prints
        assert result.stdout.split() == " ".join(claimed).split(), result.stdout


@pytest.mark.parametrize("argv", [a for a in commands() if cli_argv(a)], ids=lambda a: " ".join(a[3:5]))
def test_cli_command_parses(argv):
    try:
        args = parser().parse_args(cli_argv(argv))
    except SystemExit as stop:
        pytest.fail(f"the README's command does not parse (exit {stop.code}): {shlex.join(argv)}")
    assert callable(args.func)


def test_the_shipped_model_sample_command_runs(repo_like):
    """The commands that need nothing but the repository (no CKPT placeholder, no download) run as written."""
    runnable = [a for a in commands() if cli_argv(a) and cli_argv(a)[0] == "sample" and "--ckpt" not in a]
    assert runnable, "the README shows sampling the shipped model"
    for argv in runnable:
        result = run([sys.executable, *argv[1:]], repo_like)
        assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stderr[-2000:]}"
        out = cli_argv(argv)[cli_argv(argv).index("--out") + 1]
        assert (repo_like / out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_targets_and_scripts_exist():
    makefile = (REPO / "Makefile").read_text()
    for argv in commands():
        if argv[0] == "make":
            for target in (a for a in argv[1:] if "=" not in a):
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target!r}"
        elif argv[0] == "bash":
            assert (REPO / argv[1]).is_file(), f"the README runs {argv[1]}, which does not exist"
