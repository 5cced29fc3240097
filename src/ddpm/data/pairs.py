"""``mnist-pairs``: two MNIST digits side by side, captioned, for text-to-image with a held-out test.

Each image is a 32x64 grey canvas, black like MNIST, holding digit ``a`` in the left 32x32 half and
digit ``b`` in the right half; each 28x28 digit sits at a random offset of 0..4 pixels in both
directions, so it moves a little but never leaves its half. The caption names the two digits and how
they sit, from ``PAIR_TEMPLATES``: some name the left digit first ("a 3 to the left of a 7"), some the
right one ("a 7 to the right of a 3"), some use number words ("three and seven"), so a text model must
read the relation, not only the order of the words.

Compositional generalisation is the point: the ten pairs of ``HELD_OUT_PAIRS``, (d, (d + 3) % 10),
never appear in the training set, though every digit appears on both sides in the 90 others
(``seen_pairs()``). A model that draws "a 3 to the left of a 6" has combined what it learned about 3s
on the left and 6s on the right (the kind of test of Rombach et al. 2022's text conditioning that
needs no human rater).

Digits come from ``ddpm.data.named.load_mnist_family("mnist", data_dir)``: the training split when its
files are in ``data_dir`` (or downloaded without one), else the t10k **test** split (the only one in
``../shared/data/mnist``). The last ``EVAL_DIGITS`` digits of that pool (by index) are reserved for
evaluation and never drawn into the training canvases, so a benchmark can build test canvases
(``make_canvases(*eval_pool(data_dir), HELD_OUT_PAIRS, seed)``) and train a digit classifier from
digits the diffusion model never saw.

Labels are ``10 * a + b`` (100 classes named "a-b"), so a class-conditional model can train on the
same set as a baseline for the text model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ddpm.data.named import load_mnist_family
from ddpm.errors import UserError

CANVAS = (32, 64)  # (H, W): two 32x32 halves
DIGIT = 28  # MNIST's side; 32 - 28 = 4 pixels of jitter each way
EVAL_DIGITS = 1000  # the pool's last digits, kept for evaluation
NUM_CANVASES = 20_000
SEED = 0
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# (d, (d + 3) % 10): each digit once on each side, and no digit with itself.
HELD_OUT_PAIRS = tuple((d, (d + 3) % 10) for d in range(10))

# Format strings over the left digit a and the right digit b: {a}, {b} digits; {wa}, {wb} number words;
# {na}, {nb} digits with their article ("a 3", "an 8"). No punctuation, so a word tokenizer needs none.
PAIR_TEMPLATES: tuple[str | Callable[[int, int], str], ...] = (
    "{na} to the left of {nb}",
    "{nb} to the right of {na}",  # right digit first
    "{a} then {b}",
    "{wa} and {wb}",
    "{nb} on the right and {na} on the left",  # right digit first
    "{wa} on the left and {wb} on the right",
    "{wb} to the right of {wa}",  # right digit first
    "{a} and {b} side by side",
)


def _with_article(word: str) -> str:
    return ("an " if word[0] in "8e" else "a ") + word  # "an 8", "an eight"; every other digit takes "a"


def caption(a: int, b: int, template: int | str | Callable[[int, int], str]) -> str:
    """The caption of a canvas with digit ``a`` on the left and ``b`` on the right.

    ``template`` is one of ``PAIR_TEMPLATES`` or its index there.
    """
    if isinstance(template, (int, np.integer)):
        template = PAIR_TEMPLATES[int(template)]
    if callable(template):
        return template(int(a), int(b))
    return template.format(a=a, b=b, wa=NUMBER_WORDS[a], wb=NUMBER_WORDS[b], na=_with_article(str(a)),
                           nb=_with_article(str(b)))


def seen_pairs() -> tuple[tuple[int, int], ...]:
    """The 90 (left, right) pairs of the training set: all of them but ``HELD_OUT_PAIRS``."""
    held = set(HELD_OUT_PAIRS)
    return tuple((a, b) for a in range(10) for b in range(10) if (a, b) not in held)


def _rng(generator: np.random.Generator | int | None) -> np.random.Generator:
    return generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)


def make_canvases(digits: np.ndarray, labels: np.ndarray, pairs, generator: np.random.Generator | int | None = 0,
                  *, return_sources: bool = False):
    """uint8 (M, 32, 64): for each (a, b) of ``pairs`` a canvas of a random ``a`` and a random ``b``.

    Digits are drawn uniformly, with replacement, among those of ``digits`` (uint8 (N, 28, 28)) whose
    ``labels`` match; offsets are uniform in 0..4 (rows and columns) within each half. With
    ``return_sources`` also the (M, 2) indices into ``digits`` of the left and right digit.
    """
    digits, labels = np.asarray(digits), np.asarray(labels)
    if digits.ndim != 3 or digits.shape[1:] != (DIGIT, DIGIT) or len(digits) != len(labels):
        raise UserError(f"make_canvases needs digits (N, 28, 28) and labels (N,), got {digits.shape} and "
                        f"{labels.shape}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    rng = _rng(generator)
    by_class = [np.flatnonzero(labels == d) for d in range(10)]
    missing = sorted({int(d) for d in pairs.ravel() if len(by_class[d]) == 0})
    if missing:
        raise UserError(f"no digit {', '.join(map(str, missing))} in the pool of {len(digits)} digits")
    # One uniform draw per slot, scaled to the size of that slot's class: vectorised, and the same
    # sequence of random numbers whatever the classes.
    u = rng.random(pairs.shape)
    sources = np.empty(pairs.shape, dtype=np.int64)
    for d in range(10):
        mask = pairs == d
        if mask.any():
            sources[mask] = by_class[d][(u[mask] * len(by_class[d])).astype(np.int64)]
    offsets = rng.integers(0, CANVAS[0] - DIGIT + 1, size=(len(pairs), 2, 2))  # (canvas, side, row/col)
    out = np.zeros((len(pairs), *CANVAS), dtype=np.uint8)
    half = CANVAS[1] // 2
    for i in range(len(pairs)):
        for side in (0, 1):
            r, c = offsets[i, side]
            c += side * half
            out[i, r:r + DIGIT, c:c + DIGIT] = digits[sources[i, side]]
    return (out, sources) if return_sources else out


def load_pool(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """All MNIST digits ``load_mnist_family`` finds (uint8 (N, 28, 28), labels, description)."""
    digits, labels, _, description = load_mnist_family("mnist", data_dir)
    if len(digits) <= EVAL_DIGITS:
        raise UserError(f"mnist-pairs needs more than {EVAL_DIGITS} MNIST digits; {description} has {len(digits)}")
    return digits, labels, description


def eval_pool(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The last ``EVAL_DIGITS`` digits of the pool and their labels: never in a training canvas."""
    digits, labels, _ = load_pool(data_dir)
    return digits[-EVAL_DIGITS:], labels[-EVAL_DIGITS:]


def build_pairs(digits: np.ndarray, labels: np.ndarray, n: int = NUM_CANVASES, seed: int = SEED):
    """The training set from a pool: (canvases uint8 (n, 32, 64), pairs (n, 2), template indices (n,),
    sources (n, 2) indices into the pool).

    Each canvas takes a uniformly drawn pair of ``seen_pairs()``, a uniformly drawn template, and its
    digits from the pool less its last ``EVAL_DIGITS``.
    """
    rng = np.random.default_rng(seed)
    seen = np.asarray(seen_pairs(), dtype=np.int64)
    pairs = seen[rng.integers(0, len(seen), size=n)]
    templates = rng.integers(0, len(PAIR_TEMPLATES), size=n)
    canvases, sources = make_canvases(digits[:-EVAL_DIGITS], labels[:-EVAL_DIGITS], pairs, rng,
                                      return_sources=True)
    return canvases, pairs, templates, sources


def load_mnist_pairs(data_dir: str | None, n: int = NUM_CANVASES, seed: int = SEED):
    """(canvases uint8 (n, 32, 64), labels 10a + b (n,), class names "a-b" (100), captions (n,), description)."""
    digits, labels, description = load_pool(data_dir)
    canvases, pairs, templates, _ = build_pairs(digits, labels, n, seed)
    captions = tuple(caption(a, b, t) for (a, b), t in zip(pairs.tolist(), templates.tolist()))
    class_names = tuple(f"{a}-{b}" for a in range(10) for b in range(10))
    return (canvases, pairs[:, 0] * 10 + pairs[:, 1], class_names, captions,
            f"mnist-pairs: {n} canvases (seed {seed}) from {description}, less its last {EVAL_DIGITS} digits")
