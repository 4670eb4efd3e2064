"""Helpers of the notebooks: a results JSON as table rows, the untrained colour stand-in."""
from __future__ import annotations

from layoutdiffuse.data.color_phrases import VOCABULARY
from layoutdiffuse.notebook_helpers import random_color_model, results_rows


def test_results_rows_flatten_nested_results():
    result = {"model": "layout-mnist-color", "seen": {"both_ok": 0.97, "forms": {"red 7": 0.9}}, "held_out": [{"pair": [7, 5], "ok": 0.8}],
              "steps": [25, 50]}
    assert results_rows(result) == [("model", "layout-mnist-color"), ("seen.both_ok", 0.97), ("seen.forms.red 7", 0.9),
                                    ("held_out[0].pair", [7, 5]), ("held_out[0].ok", 0.8), ("steps", [25, 50])]


def test_the_colour_stand_in_reads_phrases_with_the_grammars_words():
    module = random_color_model(steps=3)
    assert module.is_phrase_model and module.image_shape == (3, 32, 32) and module.label_names == []
    assert module.sampling_model.adaptor.phrase_encoder.words == VOCABULARY
    assert module.sampling_args["steps"] == 3 and module.sampling_args["guidance"] == 4.0
