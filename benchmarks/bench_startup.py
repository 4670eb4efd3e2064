"""Start-up time of the command line, side by side for one or more checkouts (``--root``; default: this one).

Per run, the wall seconds from launching ``python -m layoutdiffuse`` to

* ``missing_file``: the one-line error of ``sample --ckpt MISSING`` (the process has exited);
* ``first_step``: the first denoising step of ``sample --layout docs/example_layout.json`` with the
  shipped model (the sampler's progress bar appears on stderr just before the first model call;
  the run is stopped there);
* ``import_torch``: ``python -c "import torch"``, the floor under every command that samples (timed
  to the end of the import, as ``first_step`` is: neither counts the interpreter's exit).

The checkouts run in turn within each repeat, so a load that changes during the benchmark hits them
alike. Prints JSON: each root's seconds per run and their median::

    .venv/bin/python benchmarks/bench_startup.py --repeats 5 --root . --label this --root /tmp/other_checkout --label other
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the end of the sampler's progress-bar description, "DPMSolverPlusPlusSampler (25 steps)"
FIRST_STEP = b" steps)"
IMPORT_TORCH = "import sys, torch; sys.stderr.write('imported\\n'); sys.stderr.flush()"


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}


def seconds_to_exit(root: Path, args: list[str], expect: str) -> float:
    """Seconds until ``args`` (run in ``root``) exits; its stderr must hold ``expect``."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=root, env=environment(root), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if expect not in done.stderr:
        raise SystemExit(f"{args} in {root}: expected {expect!r} in its stderr, got:\n{done.stderr[-2000:]}")
    return seconds


def seconds_to_marker(root: Path, args: list[str], marker: bytes) -> float:
    """Seconds from launching ``args`` (run in ``root``) to ``marker`` on its stderr; the run is then stopped."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=root, env=environment(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    try:
        while marker not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                raise SystemExit(f"{args} in {root} ended before {marker!r}:\n{seen.decode(errors='replace')[-2000:]}")
            seen += chunk
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", action="append", type=Path, help="a checkout to time (repeatable; default: this one)")
    p.add_argument("--label", action="append", help="a name for each --root in the report, in their order (default: the paths)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    roots = [r.resolve() for r in args.root or [ROOT]]
    labels = args.label or [str(r) for r in roots]
    if len(labels) != len(roots):
        raise SystemExit(f"give one --label per --root ({len(roots)}), got {len(labels)}")
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[float]]] = {label: {"missing_file": [], "first_step": [], "import_torch": []} for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for root, label in zip(roots, labels):
                seen = runs[label]
                seen["missing_file"].append(seconds_to_exit(root, [sys.executable, "-m", "layoutdiffuse", "sample", "--ckpt",
                                                                   str(Path(tmp) / "missing.ckpt")], "does not exist"))
                seen["first_step"].append(seconds_to_marker(root, [sys.executable, "-m", "layoutdiffuse", "sample", "--layout",
                                                                   "docs/example_layout.json", "--out", str(Path(tmp) / "x.png")], FIRST_STEP))
                seen["import_torch"].append(seconds_to_marker(root, [sys.executable, "-c", IMPORT_TORCH], b"imported"))
    report = {label: {name: {"seconds": [round(s, 2) for s in values], "median": round(statistics.median(values), 2)}
                     for name, values in seen.items()} for label, seen in runs.items()}
    print(json.dumps({"repeats": args.repeats, "cpus": os.cpu_count(), "load_average": {"start": load_before, "end": os.getloadavg()},
                      "roots": report}, indent=1))


if __name__ == "__main__":
    main()
