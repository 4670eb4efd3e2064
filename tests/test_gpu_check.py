"""benchmarks/gpu_check.py on the CPU at toy widths: every section runs and its figures are sane."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_at_toy_widths(tmp_path):
    """Every section but torch.compile (dynamo traces the whole UNet: minutes on a small CPU; the committed
    benchmarks/results/gpu_check_cpu_tiny.json has it, with the eager backend)."""
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--repeats", "1", "--no-compile", "--out", str(out), "--threads", "1"]) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["unet_parameters"] > 0
    for name in ("float16", "bfloat16"):
        s = r["sampling"][name]
        if name == "bfloat16" or "error" not in s:
            assert s["finite"] and s["shape"] == [2, 3, 64, 64] and s["s_per_image"] > 0
    t = r["training"]
    assert t["gradient_checkpointing"] is True
    assert t["freeze_backbone"]["loss_finite"] and t["all"]["loss_finite"]
    assert 0 < t["freeze_backbone"]["trainable_parameters"] < t["all"]["trainable_parameters"] == r["unet_parameters"]
    for row in r["layout_attention"]["results"]:
        assert row["diff_vs_loop"]["max_abs_output_diff"] < 1e-4 and row["speedup_vs_loop"] > 0
    assert r["compile"] == {"skipped": "--no-compile"}
    if "fixtures" in r["exactness"]:  # the release fixtures beside the repository
        for family in gpu_check.FAMILIES:
            errs = r["exactness"][family]
            assert errs["float32"] < 1e-4 and errs["bfloat16"] < 0.1


def test_gpu_check_without_cuda_names_the_devices(monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        gpu_check.device_of("cuda")
