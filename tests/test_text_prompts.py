"""Per-box text: colour Layout-MNIST and its held-out pairs, the phrase encoder, text instance prompts
through the one layout attention, text layouts at the front doors, and warm starts."""
from __future__ import annotations

import logging

import pytest
import torch

from layoutdiffuse.conditions import check_condition, collate
from layoutdiffuse.data.color_phrases import (COLOURS, DIGIT_WORDS, HELD_OUT_PAIRS, PHRASE_FORMS, RGB, SEEN_PAIRS, VOCABULARY,
                                              is_held_out, phrase)
from layoutdiffuse.errors import UserError
from layoutdiffuse.layout_file import load_phrase_layout, parse_layout, parse_phrase_layout, save_layout
from layoutdiffuse.nn import UNet
from layoutdiffuse.nn.phrase_encoder import PhraseEncoder

SMALL = dict(in_channel=3, out_channel=3, base_channel=16, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[1], num_heads=1)
TEXT = {"instance_prompt": "text", "vocabulary": list(VOCABULARY), "levels": [0, 1], "embed_dim": 16, "num_task_prompts": 4}


@pytest.fixture(scope="module")
def colour_train(mnist_root):
    from layoutdiffuse.data.color_mnist import ColorLayoutMNIST

    return ColorLayoutMNIST(root=mnist_root, split="train", length=400, max_digits=5)


def test_the_ten_held_out_pairs_are_the_issues_list():
    expected = [(0, "red"), (1, "cyan"), (2, "magenta"), (3, "yellow"), (4, "blue"), (5, "green"), (6, "red"), (7, "cyan"),
                (8, "magenta"), (9, "yellow")]
    assert [(d, COLOURS[c]) for d, c in HELD_OUT_PAIRS] == expected
    assert len(SEEN_PAIRS) == 50 and not set(SEEN_PAIRS) & set(HELD_OUT_PAIRS)


def test_training_canvases_never_hold_a_held_out_pair(colour_train):
    pairs = set()
    for i in range(len(colour_train)):
        item = colour_train[i]
        n = len(item["layout"])
        digits = item["layout"][:, 4].long().tolist()
        pairs |= set(zip(digits, item["colours"][:n].tolist()))
        assert len(item["box_text"]) == n and (item["colours"][n:] == -1).all()
    assert not any(is_held_out(d, c) for d, c in pairs)
    assert len(pairs) == 50  # every seen pair occurs (400 canvases, ~1200 digits)


def test_held_out_canvases_and_the_split_rule(mnist_root):
    from layoutdiffuse.data.color_mnist import ColorLayoutMNIST

    val = ColorLayoutMNIST(root=mnist_root, split="val", length=30, pairs="held_out")
    for i in range(len(val)):
        item = val[i]
        n = len(item["layout"])
        assert all(is_held_out(d, c) for d, c in zip(item["layout"][:, 4].long().tolist(), item["colours"][:n].tolist()))
    with pytest.raises(UserError, match="never appear in training"):
        ColorLayoutMNIST(root=mnist_root, split="train", length=3, pairs="held_out")
    with pytest.raises(UserError, match="no class for a held-out pair"):
        ColorLayoutMNIST(root=mnist_root, split="val", length=3, pairs="held_out", labels="pair")


def test_ink_is_intensity_times_the_colour_on_black(mnist_root):
    from layoutdiffuse.data.color_mnist import ColorLayoutMNIST
    from layoutdiffuse.data.layout_mnist import LayoutMNIST

    kwargs = dict(root=mnist_root, split="val", length=20, min_digits=1, max_digits=1, seed=3)
    grey, colour = LayoutMNIST(**kwargs), ColorLayoutMNIST(**kwargs)
    for i in range(20):
        ink = (grey[i]["image"][0] + 1) / 2  # (S, S) in [0, 1]
        item = colour[i]
        rgb = torch.tensor(RGB[int(item["colours"][0])])
        torch.testing.assert_close((item["image"] + 1) / 2, ink[None] * rgb[:, None, None])
        assert torch.equal(item["layout"][:, :4], grey[i]["layout"][:, :4])


def test_phrases_follow_the_grammar_and_pair_labels_index_seen_pairs(colour_train, mnist_root):
    from layoutdiffuse.data.color_mnist import ColorLayoutMNIST

    forms = set()
    for i in range(100):
        item = colour_train[i]
        for text, d, c, f in zip(item["box_text"], item["layout"][:, 4].long().tolist(), item["colours"].tolist(), item["forms"].tolist()):
            assert text in (phrase(d, c, list(PHRASE_FORMS)[f], True), phrase(d, c, list(PHRASE_FORMS)[f], False))
            forms.add(f)
    assert forms == set(range(4))
    pairs = ColorLayoutMNIST(root=mnist_root, split="train", length=50, labels="pair")
    for i in range(50):
        item = pairs[i]
        n = len(item["layout"])
        assert "box_text" not in item
        got = [SEEN_PAIRS[int(k)] for k in item["layout"][:, 4]]
        expected = list(zip(colour_train.labels[item["digits"][:n]].tolist(), item["colours"][:n].tolist()))
        assert got == expected
    assert pairs.class_names[:3] == ["green 0", "blue 0", "yellow 0"] and pairs.num_classes == 50


# --- the phrase encoder ---------------------------------------------------------------------------------------


def test_phrase_encoder_is_case_and_space_blind_and_pools_by_word_scores():
    torch.manual_seed(0)
    enc = PhraseEncoder(VOCABULARY, 8).eval()
    with torch.no_grad():
        a, b = enc(["a red seven", "  A   RED seven "])
        torch.testing.assert_close(a, b)
        ids, mask = enc.tokens(["the 7 is red"])
        e = enc.embed(ids[0])
        w = enc.score(ids[0])[:, 0].softmax(0)  # the naive pool
        torch.testing.assert_close(enc(["the 7 is red"])[0], enc.proj((w[:, None] * e).sum(0)))
        assert mask.all()


def test_phrase_encoder_refuses_empty_and_long_phrases_and_warns_once_per_unknown_word(caplog):
    enc = PhraseEncoder(VOCABULARY, 8, max_words=4)
    with pytest.raises(UserError, match="phrase is empty"):
        enc(["   "])
    with pytest.raises(UserError, match="has 5 words; this model's phrase encoder reads at most 4"):
        enc(["a red seven in red"])
    with caplog.at_level(logging.WARNING):
        enc(["a purple 7", "purple 3"])
    warned = [r.message for r in caplog.records if "purple" in r.getMessage()]
    assert len(warned) == 1
    with pytest.raises(UserError, match="distinct single words"):
        PhraseEncoder(["red", "red"], 8)


def test_sampling_encodes_each_phrase_once_per_run():
    enc = PhraseEncoder(VOCABULARY, 8).eval()
    calls = []
    enc.proj.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    with torch.no_grad():
        first = enc.encode(["red 7", "blue 2", "red 7"])
        for _ in range(5):
            again = enc.encode(["blue 2", "red 7"])
    assert calls == [2] and torch.equal(first[1], again[0])
    enc.train()  # weights may change: the cache goes
    with torch.no_grad():
        enc.eval().encode(["red 7"])
    assert calls == [2, 1]


# --- text prompts through the one layout attention ---------------------------------------------------------


def test_text_prompts_equal_class_prompts_whose_rows_are_the_phrase_encodings():
    torch.manual_seed(0)
    text = UNet(**SMALL, layout=TEXT).eval()
    with torch.no_grad():  # the zero-initialised outputs (the adaptor's and the UNet's last conv) made non-zero
        for p in text.parameters():
            if not p.any():
                p.normal_(std=0.2)
    klass = UNet(**SMALL, layout={k: v for k, v in TEXT.items() if k not in ("instance_prompt", "vocabulary")} | {"num_classes": 3}).eval()
    shared = {k: v for k, v in text.state_dict().items() if k != "adaptor.prompt_table.weight"}
    assert text(torch.randn(1, 3, 16, 16), torch.tensor([5])).abs().max() > 0
    missing, unexpected = klass.load_state_dict(shared, strict=False)
    assert missing == ["adaptor.prompt_table.weight"] and all(k.startswith("adaptor.phrase_encoder.") for k in unexpected)
    phrases = ["a red seven", "blue 2", "the 4 is cyan"]
    with torch.no_grad():
        klass.adaptor.prompt_table.weight.copy_(torch.cat([text.adaptor.phrase_encoder(phrases), text.adaptor.prompt_table.weight]))
    layout = torch.tensor([[[0.1, 0.1, 0.5, 0.6, 0.0], [0.5, 0.5, 0.4, 0.4, 1.0], [0, 0, 0, 0, -1]],
                           [[0.2, 0.0, 0.7, 0.7, 2.0], [0.0, 0.6, 0.3, 0.3, 0.0], [0.6, 0.1, 0.3, 0.3, 1.0]]])
    box_text = [[phrases[0], phrases[1]], [phrases[2], phrases[0], phrases[1]]]
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        got = text(x, t, {"layout": layout, "box_text": box_text})
        torch.testing.assert_close(got, klass(x, t, {"layout": layout}))
        swapped = text(x, t, {"layout": layout, "box_text": [[phrases[1], phrases[0]], box_text[1]]})
    assert (swapped - got).abs().max() > 1e-4  # the phrases are read


def test_a_text_adaptor_refuses_missing_or_misaligned_phrases():
    model = UNet(**SMALL, layout=TEXT)
    layout = torch.tensor([[[0.1, 0.1, 0.5, 0.6, 0.0], [0, 0, 0, 0, -1]]])
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([3])
    with pytest.raises(UserError, match="reads a phrase per box"):
        model(x, t, {"layout": layout})
    with pytest.raises(UserError, match=r"one phrase per box: the layout has \[1\] boxes per image, box_text \[2\]"):
        model(x, t, {"layout": layout, "box_text": [["red 1", "blue 2"]]})
    assert model(x, t, {"layout": torch.zeros(1, 0, 5), "box_text": [[]]}).shape == x.shape  # the empty layout
    assert model.condition_classes == {}
    check_condition({"layout": layout, "box_text": [["red 1"]]}, 1, model.condition_classes)


def test_text_options_are_checked_in_one_line():
    from layoutdiffuse.nn.options import LayoutAdaptorOptions
    from layoutdiffuse.schema import ConfigError

    with pytest.raises(ConfigError, match="num_classes' does not apply to instance_prompt 'text'"):
        LayoutAdaptorOptions.parse({**TEXT, "num_classes": 10})
    with pytest.raises(ConfigError, match="vocabulary' .* is needed with instance_prompt 'text'"):
        LayoutAdaptorOptions.parse({"instance_prompt": "text"})
    with pytest.raises(ConfigError, match="distinct single words"):
        LayoutAdaptorOptions.parse({**TEXT, "vocabulary": ["red", "dark red"]})
    assert "num_classes" not in LayoutAdaptorOptions.parse(TEXT).to_dict()
    assert LayoutAdaptorOptions.parse({"num_classes": 10}).to_dict() == {"num_classes": 10, "levels": [0, 1], "embed_dim": 128,
                                                                       "num_heads": 1, "num_task_prompts": 64, "mask": False,
                                                                       "region_mask_attention": False, "mask_pick": "top_left"}


# --- layouts with text at the front doors ------------------------------------------------------------------


def test_phrase_layouts_parse_save_and_load(tmp_path):
    rows, phrases = parse_phrase_layout([{"text": "a  red 7", "box": [0.1, 0.1, 0.3, 0.3]}, {"label": 3, "box": [0.5, 0.5, 0.3, 0.3]},
                                         {"text": "a red 7", "box": [0.1, 0.5, 0.2, 0.2]}])
    assert phrases == ["a red 7", "3"] and rows[:, 4].tolist() == [0, 1, 0]
    save_layout(rows, tmp_path / "l.json", phrases, text=True)
    again, names = load_phrase_layout(tmp_path / "l.json")
    assert names == phrases and torch.allclose(again, rows, atol=1e-4)
    with pytest.raises(UserError, match="object 0: a box's text must be a non-empty phrase"):
        parse_phrase_layout([{"text": " ", "box": [0, 0, 1, 1]}])
    with pytest.raises(UserError, match=r"reads classes \(0, 1\), not text"):
        parse_layout([{"text": "a red 7", "box": [0, 0, 1, 1]}], ["0", "1"])
    assert parse_layout([{"text": "1", "box": [0, 0, 1, 1]}], ["0", "1"])[0, 4] == 1  # a phrase that is a class name


def test_other_projects_layouts_load_for_both_kinds_of_model(tmp_path):
    import json

    path = tmp_path / "gligen.json"
    path.write_text(json.dumps({"prompt": "", "gligen_phrases": ["a red seven", "3"], "gligen_boxes": [[0.1, 0.1, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9]]}))
    rows, phrases = load_phrase_layout(path)
    assert phrases == ["a red seven", "3"]
    torch.testing.assert_close(rows[0, :4], torch.tensor([0.1, 0.1, 0.4, 0.5]))
    from layoutdiffuse.layout_file import load_layout

    with pytest.raises(UserError, match="reads classes"):
        load_layout(path, [str(d) for d in range(10)])
    path.write_text(json.dumps({"prompt": "", "gligen_phrases": ["7", "3"], "gligen_boxes": [[0.1, 0.1, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9]]}))
    assert load_layout(path, [str(d) for d in range(10)])[:, 4].tolist() == [7, 3]


@pytest.fixture(scope="module")
def phrase_module():
    from layoutdiffuse.factory import build_module

    config = {"expt_name": "t", "denoising_model": {**SMALL, "layout": TEXT},
              "diffusion": {"num_timesteps": 50, "sampling": {"sampler": "ddim", "steps": 3, "guidance": 2.0}},
              "data": {"dataset": "layout_mnist_color", "image_size": 16}}
    module = build_module(config).eval()
    with torch.no_grad():  # zero-initialised outputs made non-zero, so the phrases change the samples
        for p in module.parameters():
            if not p.any():
                p.normal_(std=0.2)
    return module


def test_sample_reads_text_objects_and_labels_as_text(phrase_module):
    import layoutdiffuse

    layout = [{"text": "a red seven", "box": [0.1, 0.1, 0.5, 0.6]}, {"label": "3", "box": [0.5, 0.5, 0.4, 0.4]}]
    images, layouts = layoutdiffuse.sample(layout, n=2, ckpt=phrase_module)
    assert images.shape == (2, 3, 16, 16) and layouts[:, :, 4].tolist() == [[0, 1], [0, 1]]
    same, _ = layoutdiffuse.sample([layout[0], {"text": "3", "box": layout[1]["box"]}], n=2, ckpt=phrase_module)
    torch.testing.assert_close(images, same)  # a label is its text
    other, _ = layoutdiffuse.sample([{"text": "a blue seven", "box": layout[0]["box"]}, layout[1]], n=2, ckpt=phrase_module)
    assert (other - images).abs().max() > 0
    batch, _ = layoutdiffuse.sample(layouts[:, :, :].clone(), ckpt=phrase_module, phrases=["a red seven", "3"])
    torch.testing.assert_close(batch, images)
    with pytest.raises(UserError, match="needs phrases="):
        layoutdiffuse.sample(layouts, ckpt=phrase_module)
    assert phrase_module.is_phrase_model and phrase_module.label_names == []


def test_a_collated_colour_batch_trains_a_text_model(phrase_module, mnist_root):
    from layoutdiffuse.data.color_mnist import ColorLayoutMNIST

    ds = ColorLayoutMNIST(root=mnist_root, split="train", canvas_size=16, digit_scale=(0.5, 0.9), length=4, max_digits=3)
    batch = collate([ds[i] for i in range(4)])
    inputs = phrase_module.process_batch(batch)
    assert set(inputs["cond"]) >= {"layout", "box_text"}
    phrase_module.train()
    loss = phrase_module.training_step(batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    loss.backward()
    assert phrase_module.model.adaptor.phrase_encoder.embed.weight.grad.abs().sum() > 0
    phrase_module.eval()


# --- warm starts --------------------------------------------------------------------------------------------


def test_a_grey_model_warm_starts_an_rgb_one(tmp_path):
    from layoutdiffuse.warm_start import tiled, warm_start

    grey = torch.randn(8, 1, 3, 3)
    torch.manual_seed(0)
    stem = tiled(grey, torch.Size([8, 3, 3, 3]))
    assert stem.shape == (8, 3, 3, 3)
    noise = stem - grey.repeat(1, 3, 1, 1) / 3
    assert 0.5 < noise.std() / (grey / 3).std() < 1.5  # the copies are perturbed by their own spread
    last = torch.randn(1, 8, 3, 3)
    assert torch.equal(tiled(last, torch.Size([3, 8, 3, 3])), last.repeat(3, 1, 1, 1))  # output channels: exact copies
    assert tiled(torch.randn(2, 8), torch.Size([3, 8])) is None and tiled(torch.randn(1, 8), torch.Size([3, 9])) is None

    from layoutdiffuse.factory import build_module

    small_grey = {**SMALL, "in_channel": 1, "out_channel": 1}
    config = {"expt_name": "g", "denoising_model": small_grey, "diffusion": {"num_timesteps": 100}, "data": {"dataset": "mnist", "image_size": 16}}
    source = build_module(config)
    from layoutdiffuse.checkpoints import export_weights

    path = export_weights(source, tmp_path / "grey.safetensors", half=False)
    rgb = UNet(**SMALL, layout=TEXT)
    counts = warm_start(rgb, path, "backbone")
    src = source.sampling_model.state_dict()
    dst = rgb.state_dict()
    assert counts["tiled"] == 3 and counts["kept"] == 0  # stem weight, last conv weight and bias
    assert all(torch.equal(dst[k], v) for k, v in src.items() if dst[k].shape == v.shape)
    last = [k for k in src if src[k].shape[:1] == (1,) and k.startswith("out")]
    assert last and all(torch.equal(dst[k], src[k].expand_as(dst[k])) for k in last)
