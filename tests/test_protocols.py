"""Evaluation protocols: pinned specs and hashes, the COCO-stuff fixture, injected scorers, and
``evaluate-protocol``'s resumable, shardable runs (bit-for-bit equal to one run)."""
import json
from types import SimpleNamespace

import pytest
import torch

from layoutdiffuse.data.fixtures import write_coco
from layoutdiffuse.errors import UserError
from layoutdiffuse.evaluation import protocol_run
from layoutdiffuse.evaluation.detection import layout_targets, mean_average_precision
from layoutdiffuse.evaluation.fid import frechet_distance
from layoutdiffuse.evaluation.protocols import PROTOCOLS, Protocol, get_protocol, layouts_sha256, load_protocol_data
from layoutdiffuse.evaluation.protocols.scoring import bootstrap, fid_score, features_of
from layoutdiffuse.evaluation.protocol_run import Scorers, evaluate_protocol


class BoxPainter:
    """A stand-in layout model: paints each box's class value into it, plus noise from the generator.

    ``calls`` counts the images drawn (to see what a resumed run redraws)."""

    def __init__(self, size: int, channels: int = 1):
        self.image_shape = (channels, size, size)
        self.sampling_args = {"sampler": "painter", "steps": 1, "guidance": 1.0}
        self.device = torch.device("cpu")
        self.model = SimpleNamespace(adaptor=object(), num_classes=None)
        self.is_phrase_model = False  # the inference interface's answer for a class-layout model
        self.label_names = [str(i) for i in range(10)]
        self.calls = 0

    def sample(self, n, cond=None, generator=None, progress=False, **opts):
        self.calls += n
        c, s, _ = self.image_shape
        x = torch.rand(n, c, s, s, generator=generator) * 0.2 - 1
        for b, layout in enumerate(cond["layout"]):
            for x0, y0, w, h, cls in layout.tolist():
                if cls >= 0:
                    x[b, :, int(y0 * s) : int((y0 + h) * s) + 1, int(x0 * s) : int((x0 + w) * s) + 1] = cls / 10
        return x


def oracle(layouts: torch.Tensor, size: int, samples: int = 1):
    """A detector that returns each image's layout boxes (score 1): it knows the answer. It is called on
    the generated images (``samples`` per layout) and on the layouts' real images (one each)."""
    def detect(images):
        per_image = layouts if len(images) == len(layouts) else layouts.repeat_interleave(samples, 0)
        assert len(images) == len(per_image)
        return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
                for t in layout_targets(per_image, (size, size))]

    return detect


def random_extractor(seed: int = 0):
    """Random-weight conv features (B, 8): an injected FID network, nothing downloaded."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return lambda x: net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_data")
    write_coco(root, "val")
    return root


def coco_protocol(resolution: int = 16, **changes) -> Protocol:
    """``coco-stuff-256`` shrunk for the fixture: its filter and files, no fixed count, small images."""
    base = get_protocol("coco-stuff-256")
    return base.replace(**{"resolution": resolution, "layouts": None, "samples_per_layout": 2, "chunk": 3,
                           "bootstrap": {"resamples": 20, "level": 0.95, "seed": 0}, **changes})


# --------------------------------------------------------------------------- specs


def test_every_named_protocol_round_trips_and_hashes_stably():
    for name, p in PROTOCOLS.items():
        assert p.name == name and p.image_format == "png" and p.bootstrap["level"] == 0.95
        again = Protocol.from_dict(json.loads(json.dumps(p.to_dict())))
        assert again == p and again.sha256() == p.sha256()
    assert PROTOCOLS["coco-stuff-256"].layouts == 3097 and PROTOCOLS["coco-stuff-256"].samples_per_layout == 5
    assert PROTOCOLS["coco-stuff-128"].resolution == 128 and PROTOCOLS["vg-256"].layouts == 5097
    assert PROTOCOLS["vg-256"].samples_per_layout == 1
    assert PROTOCOLS["coco-stuff-256"].sha256() != PROTOCOLS["coco-stuff-128"].sha256()
    assert get_protocol("layout-mnist").replace(seed=1).sha256() != get_protocol("layout-mnist").sha256()
    with pytest.raises(UserError, match="unknown protocol 'coco'; choose one of: coco-stuff-256"):
        get_protocol("coco")
    with pytest.raises(UserError, match="unknown field"):
        Protocol.from_dict({**PROTOCOLS["vg-256"].to_dict(), "colour": 1})


def test_layouts_hash_ignores_padding_and_sees_any_change():
    a = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 3.0], [-1, -1, -1, -1, -1]]])
    assert layouts_sha256(a) == layouts_sha256(a[:, :1])
    b = a.clone()
    b[0, 0, 0] += 1e-6
    assert layouts_sha256(b) != layouts_sha256(a)


# --------------------------------------------------------------------------- COCO-stuff fixture, hashes


def test_coco_fixture_gives_the_lostgan_filtered_layouts(coco_root):
    data = load_protocol_data(coco_protocol(), str(coco_root))
    assert data.ids == [102, 103]  # the fixture's declared filter outcome (3 and 8 objects)
    counts = (data.layouts[..., 4] >= 0).sum(1).tolist()
    assert counts == [3, 8]
    assert set(data.files) == {"coco/annotations/instances_val2017.json", "coco/annotations/stuff_val2017.json"}
    assert all(len(h) == 64 for h in data.files.values())


def test_a_protocol_whose_layouts_changed_is_refused(coco_root, tmp_path):
    data = load_protocol_data(coco_protocol(), str(coco_root))
    pinned = coco_protocol(layouts_sha256=data.layouts_sha256, source_files=data.files)
    load_protocol_data(pinned, str(coco_root))  # the same files pass
    changed = tmp_path / "changed"
    write_coco(changed, "val")
    stuff = changed / "coco" / "annotations" / "stuff_val2017.json"
    d = json.loads(stuff.read_text())
    d["annotations"][3]["bbox"][2] -= 1.0  # one stuff box of image 102 one pixel narrower
    stuff.write_text(json.dumps(d))
    with pytest.raises(UserError, match="stuff_val2017.json has sha256 .* the protocol pins"):
        load_protocol_data(pinned, str(changed))
    layouts_only = pinned.replace(source_files={k: None for k in pinned.source_files})
    with pytest.raises(UserError, match="the layouts changed"):
        load_protocol_data(layouts_only, str(changed))
    with pytest.raises(UserError, match="expects 3097 layouts"):
        load_protocol_data(get_protocol("coco-stuff-256"), str(coco_root))


def test_layout_mnist_protocol_pins_its_files_and_layouts(mnist_root):
    data = load_protocol_data(get_protocol("layout-mnist"), str(mnist_root))
    assert data.layouts.shape[0] == 500 and data.layouts_sha256 == get_protocol("layout-mnist").layouts_sha256
    with pytest.raises(UserError, match="the layouts changed"):
        load_protocol_data(get_protocol("layout-mnist").replace(layouts_sha256="0" * 64), str(mnist_root))


# --------------------------------------------------------------------------- measures


def test_fid_of_a_set_against_itself_is_zero_and_bootstrap_is_seeded():
    images = torch.rand(12, 3, 16, 16) * 2 - 1
    feats = features_of(random_extractor(), images)
    mu, sigma = feats.mean(0), torch.cov(feats.T)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    assert fid_score(feats, (mu, sigma), 1, {"resamples": 5, "level": 0.95, "seed": 0})["value"] == pytest.approx(0, abs=1e-8)
    values = torch.arange(10.0)
    lo, hi = bootstrap(lambda i: float(values[i].mean()), 10, 200, 0.95, 0)
    assert lo < 4.5 < hi and bootstrap(lambda i: float(values[i].mean()), 10, 200, 0.95, 0) == [lo, hi]


def test_an_oracle_detector_scores_ap_one_and_a_shifted_one_less():
    layouts = torch.tensor([[[0.1, 0.1, 0.4, 0.5, 3.0], [0.5, 0.5, 0.4, 0.4, 7.0]], [[0.2, 0.3, 0.5, 0.5, 1.0], [-1, -1, -1, -1, -1]]])
    targets = layout_targets(layouts, (32, 32))
    preds = oracle(layouts, 32)(torch.zeros(2, 1, 32, 32))
    assert mean_average_precision(preds, targets) == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
    shifted = [{**p, "boxes": p["boxes"] + torch.tensor([4.0, 0, 4.0, 0])} for p in preds]
    score = mean_average_precision(shifted, targets)
    assert score["ap"] < 1 and score["ap50"] == 1.0
    doubled = [{"boxes": torch.cat([p["boxes"], p["boxes"][:1] * 0.5]), "labels": torch.cat([p["labels"], p["labels"][:1]]),
                "scores": torch.tensor([0.5] * len(p["labels"]) + [0.9])} for p in preds]
    assert mean_average_precision(doubled, targets)["ap50"] < 1  # an extra, more confident box costs precision


# --------------------------------------------------------------------------- runs


def coco_run(coco_root, out, **kwargs):
    protocol = coco_protocol()
    data = load_protocol_data(protocol, str(coco_root))
    module = kwargs.pop("module", None) or BoxPainter(16, 3)
    scorers = Scorers(extractor=random_extractor(), extractor_name="random",
                      detector=oracle(data.layouts[: kwargs.get("limit")], 16, protocol.samples_per_layout))
    return evaluate_protocol(protocol, out, limit=kwargs.pop("limit", None), root=str(coco_root), module=module, scorers=scorers,
                             cache=kwargs.pop("cache", None), **kwargs), module


def test_coco_fixture_run_with_injected_scorers(coco_root, tmp_path):
    report, module = coco_run(coco_root, tmp_path / "run", cache=tmp_path / "cache")
    assert module.calls == 4  # 2 layouts x 2 samples
    scores = report["scores"]
    assert scores["detection"]["ap"]["value"] == 1.0 and scores["detection"]["ap50"]["ci95"] == [1.0, 1.0]
    assert scores["fid"]["value"] >= 0 and scores["fid"]["ci95"][0] <= scores["fid"]["ci95"][1]
    assert set(scores["skipped"]) == set()  # nothing injected was skipped; unscored measures are simply absent
    assert (tmp_path / "run" / "report.md").read_text().count("| detection AP") == 3
    cached = list((tmp_path / "cache").rglob("real_random.pt"))
    assert len(cached) == 1
    report2, _ = coco_run(coco_root, tmp_path / "run", cache=tmp_path / "cache")
    assert report2["scores"]["fid"] == scores["fid"]  # from the cached real statistics


def test_manifest_round_trips_and_names_every_image(coco_root, tmp_path):
    coco_run(coco_root, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {k: m[k] for k in run} == run
    assert m["protocol_sha256"] == coco_protocol().sha256() and len(m["checkpoint_sha256"]) == 64
    assert [(e["layout_id"], e["sample"], e["seed"]) for e in m["image_list"]] == [(102, 0, 0), (102, 1, 0), (103, 0, 0), (103, 1, 3)]
    assert all((tmp_path / "run" / e["file"]).exists() for e in m["image_list"])
    protocol_run.write_json(tmp_path / "again.json", m)
    assert protocol_run.read_json(tmp_path / "again.json") == m


def test_shards_merged_equal_one_run_bit_for_bit(coco_root, tmp_path):
    whole, _ = coco_run(coco_root, tmp_path / "whole")
    for i in range(3):
        assert coco_run(coco_root, tmp_path / "sharded", shard=f"{i}/3")[0] is None
    merged, module = coco_run(coco_root, tmp_path / "sharded", merge=True)
    assert module.calls == 0
    files = sorted(p.name for p in (tmp_path / "whole" / "images").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "sharded" / "images").iterdir()) and len(files) == 4
    for name in files:
        assert (tmp_path / "whole" / "images" / name).read_bytes() == (tmp_path / "sharded" / "images" / name).read_bytes()
    assert merged["scores"] == whole["scores"]


def test_a_killed_run_resumes_without_redrawing(coco_root, tmp_path, monkeypatch):
    whole, _ = coco_run(coco_root, tmp_path / "whole")
    real_save = protocol_run.save_png
    saved = []

    def dying_save(image, path):
        if len(saved) == 3:
            raise KeyboardInterrupt  # killed after the first chunk (3 images), writing the second
        real_save(image, path)
        saved.append(path)

    monkeypatch.setattr(protocol_run, "save_png", dying_save)
    with pytest.raises(KeyboardInterrupt):
        coco_run(coco_root, tmp_path / "killed")
    monkeypatch.setattr(protocol_run, "save_png", real_save)
    assert len(list((tmp_path / "killed" / "images").glob("*.png"))) == 3
    assert not list((tmp_path / "killed" / "images").glob(".*"))  # no half-written file left
    resumed, module = coco_run(coco_root, tmp_path / "killed")
    assert module.calls == 1  # only the unfinished chunk (one image) is drawn
    for name in sorted(p.name for p in (tmp_path / "whole" / "images").iterdir()):
        assert (tmp_path / "whole" / "images" / name).read_bytes() == (tmp_path / "killed" / "images" / name).read_bytes()
    assert resumed["scores"] == whole["scores"]


def test_a_folder_of_another_run_is_refused(coco_root, tmp_path):
    coco_run(coco_root, tmp_path / "run")
    with pytest.raises(UserError, match="holds a run made under other settings .*limit"):
        coco_run(coco_root, tmp_path / "run", limit=1)
    with pytest.raises(UserError, match="--shard must be i/n"):
        coco_run(coco_root, tmp_path / "x", shard="2")
    with pytest.raises(UserError, match="images are missing"):
        coco_run(coco_root, tmp_path / "y", merge=True)


def test_limit_runs_the_first_layouts(coco_root, tmp_path):
    report, module = coco_run(coco_root, tmp_path / "run", limit=1)
    assert module.calls == 2 and report["run"]["images"] == 2 and report["run"]["layouts"] == 1


def test_cli_registers_evaluate_protocol(tmp_path, capsys):
    from layoutdiffuse.cli import main

    assert main(["evaluate-protocol", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err
