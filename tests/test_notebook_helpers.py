"""Helpers of the notebooks: a results JSON as table rows, the untrained colour stand-in."""
from __future__ import annotations

from layoutdiffuse.data.color_phrases import VOCABULARY
from layoutdiffuse.notebook_helpers import colour_results_table, random_color_model


def test_the_colour_results_table_reads_the_benchmarks_json():
    score = lambda r: {"ratio": r, "ci95": [r - 0.1, r + 0.1]}  # noqa: E731
    split = lambda r: {"all": {k: score(r) for k in ("digit", "colour", "both")},  # noqa: E731
                       "forms": {"a-colour-digit": {"both": score(r / 2)}, "colour-digit": {"both": score(r / 4)}}}
    table = colour_results_table({"text_model": {"seen": split(0.9), "held_out": split(0.8)},
                                  "pair_class_baseline": {"seen": split(0.7), "held_out": "cannot be expressed"}})
    lines = table.splitlines()
    assert lines[2] == "| seen pairs | 90.0 % [80, 100] | 90.0 % [80, 100] | 90.0 % [80, 100] |"
    assert lines[4].startswith("| pair-class baseline, seen pairs | 70.0 %")
    assert lines[-1] == "| held-out pairs | 40.0 % [30, 50] | 20.0 % [10, 30] |"


def test_the_colour_stand_in_reads_phrases_with_the_grammars_words():
    module = random_color_model(steps=3)
    assert module.is_phrase_model and module.image_shape == (3, 32, 32) and module.label_names == []
    assert module.sampling_model.adaptor.phrase_encoder.words == VOCABULARY
    assert module.sampling_args["steps"] == 3 and module.sampling_args["guidance"] == 4.0
