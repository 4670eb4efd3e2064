"""Per-box text on the diffusers foundations: phrases read by the foundation's own frozen text encoder
(CLIP's pooled output, LDMBert's token mean) through a trainable projection into the one layout
attention; encoded once per distinct phrase per sampling run; trained through the projection only;
the text encoder never saved with the adaptor."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from test_latent import sd_config
from tiny_sd import box_layouts, perturbed, save_sd_folder, tiny_ldm, tiny_sd

from layoutdiffuse.conditions import collate
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.errors import UserError
from layoutdiffuse.schema import ConfigError
from layoutdiffuse.sd.layout_unet import LayoutDiffusersUNet
from layoutdiffuse.sd.phrases import FoundationPhraseEncoder

pytestmark = pytest.mark.usefixtures("one_thread")
#: phrases the tiny stand-in CLIP tokenizer reads whole (it reads 8 tokens: byte-level, "cat" is one)
PHRASES = ["cat", "dog", "a cat", "red", "a dog"]
TEXT = {"instance_prompt": "text", "levels": [0, 1], "embed_dim": 8, "num_task_prompts": 4, "num_heads": 2}
IMAGE = 16


def text_model(sd: dict) -> LayoutDiffusersUNet:
    """A text-prompt model on ``sd``'s UNet (a copy) holding its text encoder, every adaptor weight random (no identity)."""
    model = perturbed(LayoutDiffusersUNet(copy.deepcopy(sd["unet"]), TEXT, foundation="stable_diffusion").eval())
    model.use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    return model


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


@pytest.fixture(scope="module")
def ldm_bert(tmp_path_factory):
    """A tiny random LDMBert and its BERT tokenizer (the LAION LDM's text encoder)."""
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "on", "the", "grass", "red"]) + "\n")
    torch.manual_seed(0)
    bert = LDMBertModel(LDMBertConfig(vocab_size=11, max_position_embeddings=8, encoder_layers=1, encoder_ffn_dim=32,
                                      encoder_attention_heads=2, head_dim=16, d_model=32)).eval()
    return bert, BertTokenizer(str(vocab), model_max_length=8)


# --- the phrase vectors ------------------------------------------------------------------------------------


def test_clip_phrase_vectors_are_the_end_of_text_states_whatever_the_padding(sd):
    enc = FoundationPhraseEncoder(32, 8)
    enc.use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    phrases = ["cat", "a dog", "red"]  # 1, 4 and 3 tokens: the short ones are padded
    got = enc.features(phrases)
    for i, text in enumerate(phrases):  # the naive version: the phrase alone, unpadded, its last (end-of-text) token
        ids = torch.tensor([sd["tokenizer"](text).input_ids])
        assert ids[0, -1] == sd["tokenizer"].eos_token_id
        with torch.no_grad():
            states = sd["text_encoder"](ids).last_hidden_state  # after CLIP's final layer norm
        torch.testing.assert_close(got[i], states[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(phrases), enc.proj(got))
    assert not torch.allclose(got[0], got[1], atol=1e-3)


def test_ldm_bert_phrase_vectors_are_the_mean_over_the_phrase_tokens(ldm_bert):
    bert, tok = ldm_bert
    enc = FoundationPhraseEncoder(32, 8)
    enc.use_text_encoder(bert, tok)
    phrases = ["a red cat on the grass", "cat"]
    got = enc.features(phrases)
    for i, text in enumerate(phrases):
        ids = torch.tensor([tok(text).input_ids])  # [CLS] ... [SEP], unpadded
        with torch.no_grad():
            states = bert(ids)[0][0]
        torch.testing.assert_close(got[i], states.mean(0), atol=1e-5, rtol=1e-5)
    model = LayoutDiffusersUNet(copy.deepcopy(tiny_sd()["unet"]), TEXT, foundation="ldm_text")  # the LAION LDM's UNet reads 32-wide text too
    model.use_text_encoder(bert, tok)
    layout = torch.tensor([[[0.1, 0.1, 0.5, 0.6, 0.0], [0.5, 0.5, 0.4, 0.4, 1.0]]])
    out = model(torch.randn(1, 4, 8, 8), torch.tensor([7]), {"layout": layout, "box_text": [phrases], "context": torch.randn(1, 8, 32)})
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_bad_phrases_and_a_missing_or_foreign_encoder_are_refused_in_one_line(sd, ldm_bert):
    enc = FoundationPhraseEncoder(32, 8)
    with pytest.raises(UserError, match="none was handed to it"):
        enc(["cat"])
    enc.use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    with pytest.raises(UserError, match=r"'a cat on grass' is 11 tokens long; this model's text encoder reads at most 8"):
        enc(["cat", "a cat on grass"])
    with pytest.raises(UserError, match="phrase is empty"):
        enc(["  "])
    with pytest.raises(UserError, match="reads 16-wide text states, but the given CLIPTextModel gives 32"):
        FoundationPhraseEncoder(16, 8).use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    assert enc([]).shape == (0, 8)


def test_text_options_on_a_diffusers_foundation_are_checked_in_one_line(sd):
    from layoutdiffuse.nn.options import DiffusersLayoutOptions

    with pytest.raises(ConfigError, match="'layout.vocabulary' does not apply to text prompts on a diffusers foundation"):
        DiffusersLayoutOptions.parse({**TEXT, "vocabulary": ["red", "cat"]})
    with pytest.raises(ConfigError, match="'layout.num_classes' does not apply"):
        DiffusersLayoutOptions.parse({**TEXT, "num_classes": 3})
    with pytest.raises(ConfigError, match="unknown phrase_encoder 'clip'; choose one of: foundation"):
        DiffusersLayoutOptions.parse({**TEXT, "phrase_encoder": "clip"})
    with pytest.raises(ConfigError, match="'layout.phrase_encoder' applies to instance_prompt 'text' only"):
        DiffusersLayoutOptions.parse({"num_classes": 3, "phrase_encoder": "foundation"})
    with pytest.raises(ConfigError, match="text prompts need box layouts"):
        DiffusersLayoutOptions.parse({**TEXT, "mask": True})
    stored = DiffusersLayoutOptions.parse(TEXT).to_dict()
    assert stored["instance_prompt"] == "text" and stored["phrase_encoder"] == "foundation"
    assert not {"num_classes", "vocabulary", "max_words"} & set(stored)
    assert not {"instance_prompt", "phrase_encoder"} & set(DiffusersLayoutOptions.parse({"num_classes": 3}).to_dict())
    with pytest.raises(UserError, match="this UNet2DModel foundation .* has none"):
        LayoutDiffusersUNet(tiny_ldm()["unet"], {**TEXT, "levels": [1, 2]}, foundation="ldm")


# --- text prompts through the one layout attention -----------------------------------------------------------


def test_text_prompts_equal_class_prompts_whose_rows_are_the_projected_phrase_encodings(sd):
    text = text_model(sd)
    klass = LayoutDiffusersUNet(copy.deepcopy(sd["unet"]), {k: v for k, v in TEXT.items() if k != "instance_prompt"} | {"num_classes": 3},
                                foundation="stable_diffusion").eval()
    shared = {k: v for k, v in text.state_dict().items() if k != "adaptor.prompt_table.weight"}
    missing, unexpected = klass.load_state_dict(shared, strict=False)
    assert missing == ["adaptor.prompt_table.weight"]
    assert unexpected == ["adaptor.phrase_encoder.proj.weight", "adaptor.phrase_encoder.proj.bias"]  # no text encoder in it
    phrases = ["a cat", "dog", "red"]
    with torch.no_grad():
        klass.adaptor.prompt_table.weight.copy_(torch.cat([text.adaptor.phrase_encoder(phrases), text.adaptor.prompt_table.weight]))
    layout = torch.tensor([[[0.1, 0.1, 0.5, 0.6, 0.0], [0.5, 0.5, 0.4, 0.4, 1.0], [0, 0, 0, 0, -1]],
                           [[0.2, 0.0, 0.7, 0.7, 2.0], [0.0, 0.6, 0.3, 0.3, 0.0], [0.6, 0.1, 0.3, 0.3, 1.0]]])
    box_text = [[phrases[0], phrases[1]], [phrases[2], phrases[0], phrases[1]]]
    g = torch.Generator().manual_seed(3)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 8, 32, generator=g)
    with torch.no_grad():
        got = text(x, t, {"layout": layout, "box_text": box_text, "context": ctx})
        torch.testing.assert_close(got, klass(x, t, {"layout": layout, "context": ctx}))
        swapped = text(x, t, {"layout": layout, "box_text": [[phrases[1], phrases[0]], box_text[1]], "context": ctx})
        empty = text(x, t, {"layout": torch.zeros(2, 0, 5), "box_text": [[], []], "context": ctx})  # the null layout
        torch.testing.assert_close(empty, klass(x, t, {"layout": torch.zeros(2, 0, 5), "context": ctx}))
    assert (swapped - got).abs().max() > 1e-4  # the phrases are read
    assert text.condition_classes == {}
    with pytest.raises(UserError, match="reads a phrase per box"):
        text(x, t, {"layout": layout, "context": ctx})


def test_no_gradient_reaches_the_text_encoder_and_copies_share_it(sd):
    model = text_model(sd).train()
    clip = sd["text_encoder"]
    clip.requires_grad_(True)  # even an unfrozen encoder gets no gradient through the phrases
    try:
        layout = box_layouts(3, len(PHRASES), seed=4)
        box_text = [[PHRASES[int(c)] for c in row[:, 4].tolist() if c >= 0] for row in layout]
        out = model(torch.randn(3, 4, 8, 8), torch.tensor([1, 300, 900]), {"layout": layout, "box_text": box_text,
                                                                           "context": torch.randn(3, 8, 32)})
        out.square().mean().backward()
        proj = model.adaptor.phrase_encoder.proj
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in clip.parameters())
    finally:
        clip.requires_grad_(False)
    ema = copy.deepcopy(model)
    assert ema.adaptor.phrase_encoder.frozen.text_encoder is clip and ema.adaptor.phrase_encoder.proj is not proj


# --- in the latent training module: sampling, training, checkpoints -------------------------------------------


class TinyLayoutPhrases(Dataset):
    """Random images with box layouts, a phrase per box and captions (the layout-dataset sample format)."""

    collate = staticmethod(collate)

    def __init__(self, split: str = "train", image_size: int = IMAGE, length: int = 8):
        self.image_size, self.length, self.seed = image_size, length, 0 if split == "train" else 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.seed + i)
        layout = box_layouts(4, len(PHRASES), seed=i)[i % 4]
        layout = layout[layout[:, 4] >= 0]
        return {"image": torch.rand(3, self.image_size, self.image_size, generator=g) * 2 - 1, "layout": layout,
                "box_text": [PHRASES[int(c)] for c in layout[:, 4].tolist()], "caption": ["a cat", "", "cat"][i % 3]}


if "tiny_layout_phrases" not in DATASETS:
    DATASETS.register("tiny_layout_phrases")(TinyLayoutPhrases)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_sd_folder(tmp_path_factory.mktemp("pretrained") / "tiny-sd")


def text_config(folder: Path, tmp: Path) -> dict:
    """test_latent's tiny Stable Diffusion config with text prompts on the phrase dataset."""
    config = sd_config(folder, tmp, ema_decay=0.9, optimizer={"lr": 1e-2})
    config["adapt"]["layout"] = dict(TEXT)
    config["data"]["dataset"] = "tiny_layout_phrases"
    return config


def phrase_calls(text_encoder: torch.nn.Module) -> list[int]:
    """The number of phrases of every phrase-encoding call of ``text_encoder`` (captions are encoded without a mask)."""
    calls: list[int] = []
    text_encoder.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0])
                                       if "attention_mask" in kwargs else None, with_kwargs=True)
    return calls


def test_sampling_runs_the_text_encoder_once_per_distinct_phrase_per_run(sd_folder, tmp_path):
    from layoutdiffuse.factory import build_module

    module = build_module(text_config(sd_folder, tmp_path)).eval()
    calls = phrase_calls(module.text_encoder)
    steps = []
    module.model.register_forward_pre_hook(lambda m, args: steps.append(args[2]["box_text"]))
    layout = torch.tensor([[[0.1, 0.1, 0.5, 0.5, 0.0], [0.5, 0.5, 0.4, 0.4, 1.0]], [[0.2, 0.2, 0.6, 0.6, 0.0], [0, 0, 0, 0, -1]]])
    cond = {"layout": layout, "box_text": [["cat", "dog"], ["cat"]], "caption": ["a cat", ""]}
    images = module.sample(2, cond, generator=torch.Generator().manual_seed(0), steps=3, guidance=5.0, use_ema=False)
    assert images.shape == (2, 3, IMAGE, IMAGE) and torch.isfinite(images).all()
    assert len(steps) >= 3 and steps[0] == [["cat", "dog"], ["cat"], [], []]  # guided: the null half has no phrases
    assert calls == [2]  # "cat" and "dog" once for the whole run, not once per step
    module.sample(2, cond, generator=torch.Generator().manual_seed(0), steps=3, guidance=5.0)  # a new run (the EMA model)
    assert calls == [2, 2]
    module.model.train()  # training: the frozen states of phrases seen before are kept across steps
    module.model(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), module.encode_condition(cond, 2))
    module.model(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), {**module.encode_condition(cond, 2), "box_text": [["red", "cat"], ["cat"]]})
    assert calls == [2, 2, 1]  # only "red" is new


def test_frozen_phrase_states_are_kept_across_steps_exactly_and_bounded(sd, monkeypatch):
    from layoutdiffuse.sd import phrases as phrases_module

    enc = FoundationPhraseEncoder(32, 8).train()
    enc.use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    calls = phrase_calls(sd["text_encoder"])
    first = enc(["cat", "a dog"])
    again = enc(["a dog", "cat", "red"])
    assert calls == [2, 1]
    torch.testing.assert_close(again[:2], first.flip(0))
    torch.testing.assert_close(enc.features(["a dog", "cat", "red"]), enc.read(["a dog", "cat", "red"]))  # cached == read afresh
    again.sum().backward()
    assert enc.proj.weight.grad is not None  # the projection still learns
    monkeypatch.setattr(phrases_module, "FEATURE_CACHE_SIZE", 2)
    enc.features(["cat", "dog", "red"])  # three phrases in one call: all returned, then the oldest dropped
    assert [key[0] for key in enc._features] == ["dog", "red"]
    enc.use_text_encoder(sd["text_encoder"], sd["tokenizer"])
    assert not enc._features


def test_training_moves_the_projection_and_never_clip_and_the_checkpoint_round_trips(sd_folder, tmp_path):
    from layoutdiffuse.experiment import load_checkpoint, read_checkpoint, train
    from layoutdiffuse.factory import build_module

    config = text_config(sd_folder, tmp_path)
    fresh = build_module(config)  # the same seed: the weights training starts from
    trained = train(config)
    proj = "model.adaptor.phrase_encoder.proj.weight"
    assert not torch.equal(trained.state_dict()[proj], fresh.state_dict()[proj])  # the projection trained
    clip_now, clip_then = trained.text_encoder.state_dict(), fresh.text_encoder.state_dict()
    assert all(torch.equal(v, clip_then[k]) for k, v in clip_now.items())  # CLIP did not
    assert trained.ema.module.adaptor.phrase_encoder.frozen.text_encoder is trained.text_encoder  # shared, not copied

    path = tmp_path / config["expt_name"] / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    phrase_keys = sorted(k for k in ckpt["state_dict"] if "phrase_encoder" in k)
    assert phrase_keys == ["ema.module.adaptor.phrase_encoder.proj.bias", "ema.module.adaptor.phrase_encoder.proj.weight",
                           "model.adaptor.phrase_encoder.proj.bias", "model.adaptor.phrase_encoder.proj.weight"]
    assert not any(k.startswith(("autoencoder.", "text_encoder.")) for k in ckpt["state_dict"])
    assert ckpt["layoutdiffuse"]["model"]["layout"]["instance_prompt"] == "text"
    loaded = load_checkpoint(path)
    a, b = trained.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a)
    assert loaded.is_phrase_model and loaded.sampling_model.adaptor.phrase_encoder.frozen.text_encoder is loaded.text_encoder
    cond = {"layout": box_layouts(2, len(PHRASES), seed=3), "caption": ["a cat", ""]}
    cond["box_text"] = [[PHRASES[int(c)] for c in row[:, 4].tolist() if c >= 0] for row in cond["layout"]]
    torch.testing.assert_close(loaded.sample(2, cond, generator=torch.Generator().manual_seed(1), steps=2),
                               trained.sample(2, cond, generator=torch.Generator().manual_seed(1), steps=2))
    clone = pickle.loads(pickle.dumps(loaded))  # ddp_spawn: the hand-over survives pickling, the encoder still shared
    assert clone.model.adaptor.phrase_encoder.frozen.text_encoder is clone.text_encoder

    import layoutdiffuse  # the front door: text objects of a layout, from the checkpoint file

    objects = [{"text": "a cat", "box": [0.1, 0.1, 0.5, 0.6]}, {"text": "red", "box": [0.5, 0.5, 0.4, 0.4]}]
    images, layouts = layoutdiffuse.sample(objects, n=2, ckpt=path, prompt="cat", steps=2, device="cpu")
    assert images.shape == (2, 3, IMAGE, IMAGE) and layouts[:, :, 4].tolist() == [[0, 1], [0, 1]]
    with pytest.raises(UserError, match="is 11 tokens long"):
        layoutdiffuse.sample([{"text": "a cat on grass", "box": [0.1, 0.1, 0.5, 0.6]}], n=1, ckpt=loaded, steps=2)
