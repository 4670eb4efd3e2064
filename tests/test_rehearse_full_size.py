"""benchmarks/rehearse_full_size.py's machinery on the release fixtures' tiny models, and the random
release checkpoints it writes against the published key manifests."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import rehearse_full_size as rehearse  # noqa: E402

RELEASE = next((p for p in rehearse.RELEASE_CANDIDATES if (p / "README.md").is_file()), None)
pytestmark = pytest.mark.skipif(RELEASE is None, reason="release fixtures not found (../shared/release)")


@pytest.mark.parametrize("name", rehearse.MODELS)
def test_a_random_release_state_holds_every_manifest_key_and_converts(name):
    """Every key of the manifest, the listed shape, one shared prompt table; the converter maps all of
    them onto the published architecture (on meta tensors: shapes only)."""
    from layoutdiffuse.release import architecture, build_release_unet, convert_release_unet, read_release_config
    from layoutdiffuse.sd.random_foundation import random_release_state, read_manifest

    shapes = read_manifest(RELEASE / f"{name}.keys.tsv")
    small = {k: s for k, s in shapes.items() if torch.Size(s).numel() <= 65536}  # the full state is GBs: check the rule on the small ones
    state = random_release_state(small)
    assert set(state) == set(small) and all(tuple(state[k].shape) == s for k, s in small.items())
    tables = [v for k, v in state.items() if k.endswith("class_embedder.weight")]
    assert len(tables) > 1 and all(t is tables[0] for t in tables)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    arch = architecture(read_release_config(name))
    full = convert_release_unet(meta, arch, build_release_unet(arch, device="meta"))
    assert len(full) == len(build_release_unet(arch, device="meta").state_dict())


@pytest.mark.slow
def test_rehearsal_of_a_tiny_model_end_to_end(tmp_path):
    """write -> convert-release -> load -> sample in float32 and bfloat16 -> one training step, each in its own process."""
    out = tmp_path / "r.json"
    assert rehearse.main(["--tiny", "--models", "cocostuff", "--work", str(tmp_path / "work"), "--threads", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["models"]["cocostuff"]
    assert all("error" not in r[p] for p in rehearse.PHASES), r
    assert r["write"]["release_keys"] == 356 and r["convert"]["converted_bytes"] > 0
    for p in ("sample_float32", "sample_bfloat16"):
        assert r[p]["finite"] and r[p]["image"] == [1, 3, 64, 64] and r[p]["s_per_step"] > 0 and r[p]["peak_rss_GiB"] > 0
    t = r["train"]
    assert t["gradient_checkpointing"] and t["loss_finite"] and t["mode"] == "freeze_backbone" and t["trainable_parameters"] > 0
    assert not (tmp_path / "work" / "cocostuff").exists()  # large files removed
