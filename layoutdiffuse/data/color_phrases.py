"""The colours and the phrase grammar of colour Layout-MNIST (no torch: the judges and the widget read it).

Six colours, the pure RGB corners, indexed in this order (:data:`COLOURS`): red 0, green 1,
blue 2, yellow 3, magenta 4, cyan 5. A digit ``d`` in colour ``c`` is a *pair* ``(d, c)``; the ten
pairs with ``(d + c) % 6 == 0`` are **held out** (:func:`is_held_out`): never in training data, so
a text model that draws them has composed a digit and a colour it never saw together.

A box's phrase names its digit as a numeral or a word and its colour before or after it, in one of
four forms (:data:`PHRASE_FORMS`)::

    "a red seven"   "red 7"   "7 in red"   "the seven is red"

:func:`normalise_phrase` is what every reader applies first: case and extra spaces do not matter.
"""
from __future__ import annotations

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
#: each colour's RGB in [0, 1] (a digit's ink intensity times this, on a black background)
RGB = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: phrase templates by form name; ``{d}``: the digit (numeral or word), ``{c}``: the colour, ``{a}``: the article
PHRASE_FORMS = {"a-colour-digit": "{a} {c} {d}", "colour-digit": "{c} {d}", "digit-in-colour": "{d} in {c}",
                "the-digit-is-colour": "the {d} is {c}"}
#: every word the grammar uses: the toy phrase encoder's vocabulary
VOCABULARY = (*[str(d) for d in range(10)], *DIGIT_WORDS, *COLOURS, "a", "the", "in", "is")


def is_held_out(digit: int, colour: int) -> bool:
    """True for the ten (digit, colour) pairs that never appear in training: ``(digit + colour) % 6 == 0``."""
    return (digit + colour) % 6 == 0


#: the fifty seen pairs in order (digit-major): the class table of the pair-class baseline
SEEN_PAIRS = tuple((d, c) for d in range(10) for c in range(len(COLOURS)) if not is_held_out(d, c))
HELD_OUT_PAIRS = tuple((d, c) for d in range(10) for c in range(len(COLOURS)) if is_held_out(d, c))


def allowed_colours(digit: int, held_out: bool = False) -> list[int]:
    """The colours a digit may take in a split: the five seen ones, or (``held_out``) its held-out one."""
    return [c for c in range(len(COLOURS)) if is_held_out(digit, c) == held_out]


def phrase(digit: int, colour: int, form: str, word: bool) -> str:
    """The phrase of a pair in one form, the digit as a word (``word``) or a numeral: ``phrase(7, 0,
    "a-colour-digit", True) == "a red seven"``."""
    d = DIGIT_WORDS[digit] if word else str(digit)
    return PHRASE_FORMS[form].format(a="a", c=COLOURS[colour], d=d)


def normalise_phrase(text: str) -> str:
    """Lower case, single spaces, no leading or trailing space."""
    return " ".join(text.lower().split())


def pair_name(digit: int, colour: int) -> str:
    """The class name of a pair in the pair-class baseline, e.g. ``"red 7"``."""
    return f"{COLOURS[colour]} {digit}"
