"""CPU training throughput with freed memory retained (the default of ``python -m layoutdiffuse``) vs
glibc's default allocator settings; see :mod:`layoutdiffuse.malloc`.

    python benchmarks/bench_malloc.py [--pairs 3] [--batch 32] [--steps 20] [--configs ...] > benchmarks/results/malloc_cpu.json

The allocator is configured once per process, so each measurement is one run of
``benchmarks/bench_mnist.py`` in a fresh subprocess, with ``LAYOUTDIFFUSE_MALLOC=retain`` or
``=system``; the two settings alternate (retain, system, retain, ...) so that load from other
processes hits both alike. Reports per setting the training images/s of every run and their median,
minor page faults per training step, peak RSS, and the ratio of the medians. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("retain", "system")


def run(config: str, setting: str, batch: int, steps: int) -> dict:
    env = dict(os.environ, LAYOUTDIFFUSE_MALLOC=setting)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_mnist.py"), "--config", config, "--batch", str(batch),
           "--steps", str(steps), "--sample-n", "1", "--sample-steps", "1"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["configs/mnist.json", "configs/layout_mnist_scratch.json"])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    t0 = time.perf_counter()
    results = []
    for config in a.configs:
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for i in range(a.pairs):
            for setting in SETTINGS:
                runs[setting].append(run(config, setting, a.batch, a.steps))
                print(f"{config} pair {i + 1}/{a.pairs} {setting}: {runs[setting][-1]['train_images_per_s']} images/s",
                      file=sys.stderr)
        res: dict = {"config": config, "device": runs["retain"][0]["device"]}
        for setting in SETTINGS:
            speeds = [r["train_images_per_s"] for r in runs[setting]]
            res[setting] = {"train_images_per_s": speeds, "median": round(statistics.median(speeds), 2),
                            "minor_page_faults_per_train_step": [r["minor_page_faults_per_train_step"] for r in runs[setting]],
                            "peak_rss_MB": [r["peak_memory_MB"] for r in runs[setting]]}
        res["speedup_of_medians"] = round(res["retain"]["median"] / res["system"]["median"], 3)
        results.append(res)
    print(json.dumps({"benchmark": "CPU training throughput: retained freed memory vs glibc malloc defaults",
                      "batch": a.batch, "steps": a.steps, "pairs": a.pairs, "load_average": os.getloadavg(),
                      "results": results, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
