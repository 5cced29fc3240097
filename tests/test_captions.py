"""Captioned data: image folders with a metadata.jsonl, hf: sets with a caption column, and mnist-pairs
(two MNIST digits side by side, with held-out pairs for a compositional test)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.data import pairs
from ddpm.data.datasets import load_dataset
from ddpm.errors import UserError
from tests.conftest import SHARED_DATA

MNIST = SHARED_DATA / "mnist"
needs_mnist = pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="no shared MNIST")


def _png(path: Path, value: int, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _metadata(folder: Path, *lines) -> None:
    """metadata.jsonl from dicts (written as JSON) and strings (written as they are)."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (folder / "metadata.jsonl").write_text(text)


def _grey(x: torch.Tensor) -> list[int]:
    """The uniform grey value of each image of a set, back in 0..255."""
    return [round((v + 1) * 127.5) for v in x.mean(dim=(1, 2, 3)).tolist()]


# ---- captioned image folders ----------------------------------------------------------------------------

def test_metadata_lists_the_images_in_file_order_with_their_captions(tmp_path):
    # Class-like sub-folders and an image the metadata leaves out: neither labels nor extra images.
    _png(tmp_path / "cats" / "a.png", 10)
    _png(tmp_path / "dogs" / "b.png", 20)
    _png(tmp_path / "dogs" / "c.png", 30)
    _png(tmp_path / "dogs" / "unlisted.png", 40)
    _metadata(tmp_path, {"file_name": "dogs/c.png", "text": "a dog", "extra": 1}, "",
              {"file_name": "cats/a.png", "text": "a cat"}, {"file_name": "dogs/b.png", "text": ""})
    data = load_dataset(str(tmp_path), image_size=(8, 8), channels=1)
    assert _grey(data.images) == [30, 10, 20]
    assert data.captions == ("a dog", "a cat", "")
    assert data.labels is None and data.num_classes is None
    # Another key for the caption, and the cache notices the metadata changing.
    _metadata(tmp_path, {"file_name": "dogs/unlisted.png", "text": "x", "caption": "the fourth"})
    data = load_dataset(str(tmp_path), caption_column="caption")
    assert _grey(data.images) == [40] and data.captions == ("the fourth",) and data.shape == (1, 8, 8)


def test_plain_sets_have_no_captions(tmp_path):
    _png(tmp_path / "a.png", 10)
    assert load_dataset(str(tmp_path)).captions is None
    assert load_dataset("digits").captions is None


def test_bad_images_in_the_metadata_follow_skip_bad_images(tmp_path):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "c.png", 30)
    _metadata(tmp_path, *({"file_name": f, "text": f[0]} for f in ("a.png", "broken.png", "c.png")))
    with pytest.raises(UserError, match="broken.png"):
        load_dataset(str(tmp_path), image_size=(8, 8), channels=1)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = load_dataset(str(tmp_path), image_size=(8, 8), channels=1, skip_bad_images=True)
    assert _grey(data.images) == [10, 30] and data.captions == ("a", "c")
    assert len(data.skipped) == 1 and data.skipped[0].endswith("broken.png")


def _outside_link(folder: Path) -> None:
    _png(folder.parent / "secret.png", 99)
    (folder / "link.png").symlink_to(folder.parent / "secret.png")
    _metadata(folder, {"file_name": "a.png", "text": "ok"}, {"file_name": "link.png", "text": "escape"})


def _outside_dir_link(folder: Path) -> None:
    _png(folder.parent / "elsewhere" / "s.png", 99)
    (folder / "sub").symlink_to(folder.parent / "elsewhere")
    _metadata(folder, {"file_name": "sub/s.png", "text": "escape"})


OK = {"file_name": "a.png", "text": "ok"}
BAD_METADATA = {  # case: (write metadata.jsonl into the folder, its line number or None, culprit in the message)
    "bad-json": (lambda d: _metadata(d, OK, '{"file_name": "a.png", "text": '), 2, "not valid JSON"),
    "not-an-object": (lambda d: _metadata(d, '["a.png", "ok"]'), 1, "JSON object"),
    "no-file-name": (lambda d: _metadata(d, OK, OK, {"text": "ok"}), 3, "'file_name'"),
    "no-caption": (lambda d: _metadata(d, {"file_name": "a.png", "caption": "ok"}), 1, "'text'"),
    "caption-not-a-string": (lambda d: _metadata(d, {"file_name": "a.png", "text": 3}), 1, "must be a string"),
    "missing-image": (lambda d: _metadata(d, OK, {"file_name": "nope.png", "text": "ok"}), 2, "nope.png"),
    "absolute-path": (lambda d: _metadata(d, {"file_name": str(d / "a.png"), "text": "ok"}), 1, "absolute"),
    "dot-dot": (lambda d: _metadata(d, {"file_name": "../data/a.png", "text": "ok"}), 1, "outside"),
    "symlink-escape": (_outside_link, 2, "link.png"),
    "dir-symlink-escape": (_outside_dir_link, 1, "outside"),
    "empty": (lambda d: _metadata(d, "", "  "), None, "empty"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_a_one_line_error_naming_file_and_line(case, tmp_path, capsys):
    write, line, culprit = BAD_METADATA[case]
    folder = tmp_path / "data"
    _png(folder / "a.png", 10)
    write(folder)
    rc = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(folder / "metadata.jsonl") in err and culprit in err, err
    if line is not None:
        assert f"line {line}:" in err, err
    assert not (tmp_path / "run").exists()


# ---- hf: sets with a caption column ---------------------------------------------------------------------

def _fake_datasets(rows: list[dict], features: dict) -> types.ModuleType:
    """Just enough of the `datasets` package for ddpm.data.folder.load_hf: load_dataset, Image, ClassLabel."""
    mod = types.ModuleType("datasets")

    class Image_:  # noqa: N801 - stands for datasets.Image
        pass

    class ClassLabel:
        def __init__(self, names):
            self.names = names

    class Split:
        def __init__(self):
            self.features = {k: (Image_() if v == "image" else ClassLabel(v) if isinstance(v, list) else v)
                             for k, v in features.items()}

        def __len__(self):
            return len(rows)

        def __getitem__(self, key):
            return [r[key] for r in rows] if isinstance(key, str) else rows[key]

    mod.Image, mod.ClassLabel = Image_, ClassLabel
    mod.load_dataset = lambda name, split: Split()
    return mod


def test_hf_sets_take_captions_from_the_caption_column(monkeypatch):
    rows = [{"img": Image.new("L", (8, 8), v), "label": i % 2, "text": f"grey {v}", "other": [f"first {v}", "x"]}
            for i, v in enumerate((10, 20, 30))]
    features = {"img": "image", "label": ["even", "odd"], "text": "string", "other": "sequence"}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(rows, features))
    data = load_dataset("hf:fake/captioned")
    assert _grey(data.images) == [10, 20, 30] and data.labels.tolist() == [0, 1, 0]
    assert data.captions == ("grey 10", "grey 20", "grey 30") and data.class_names == ("even", "odd")
    # Several captions an image (COCO's style): the first; a set without the column has none.
    assert load_dataset("hf:fake/captioned", caption_column="other").captions == ("first 10", "first 20", "first 30")
    assert load_dataset("hf:fake/captioned", caption_column="prompt").captions is None
    rows[1]["text"] = None
    with pytest.raises(UserError, match="row 1 .*'text'"):
        load_dataset("hf:fake/other-name")


# ---- mnist-pairs ----------------------------------------------------------------------------------------

def _mentions(text: str, d: int) -> list[int]:
    """Word positions where digit d is named, as a numeral or a number word."""
    return [i for i, w in enumerate(text.split()) if w in (str(d), pairs.NUMBER_WORDS[d])]


def test_templates_name_both_digits_and_some_name_the_right_one_first():
    order = []
    for t in pairs.PAIR_TEMPLATES:
        text = pairs.caption(1, 2, t)
        assert _mentions(text, 1) and _mentions(text, 2), text
        order.append(_mentions(text, 1)[0] < _mentions(text, 2)[0])
    assert any(order) and not all(order)  # some left-first, some right-first
    assert pairs.caption(8, 3, 0) == "an 8 to the left of a 3"
    assert pairs.caption(3, 7, pairs.PAIR_TEMPLATES[3]) == "three and seven"
    assert len(pairs.seen_pairs()) == 90 and not set(pairs.seen_pairs()) & set(pairs.HELD_OUT_PAIRS)
    assert pairs.HELD_OUT_PAIRS == tuple((d, (d + 3) % 10) for d in range(10))


def test_canvases_put_each_digit_in_its_half_within_the_jitter():
    rng = np.random.default_rng(1)
    digits = rng.integers(1, 256, size=(20, 28, 28), dtype=np.uint8)  # no zero pixel: placement is exact
    labels = np.arange(20) % 10
    want = [(a, b) for a in range(10) for b in range(10)]
    canvases, sources = pairs.make_canvases(digits, labels, want, 5, return_sources=True)
    assert canvases.shape == (100, 32, 64) and canvases.dtype == np.uint8
    assert (labels[sources] == np.array(want)).all()
    for canvas, src in zip(canvases, sources):
        for side, half in enumerate((canvas[:, :32], canvas[:, 32:])):
            rows, cols = np.nonzero(half)
            r, c = rows.min(), cols.min()
            assert r <= 4 and c <= 4 and rows.max() == r + 27 and cols.max() == c + 27
            assert (half[r:r + 28, c:c + 28] == digits[src[side]]).all()
    assert (pairs.make_canvases(digits, labels, want, 5) == canvases).all()
    with pytest.raises(UserError, match="no digit 7"):
        pairs.make_canvases(digits[:5], labels[:5], [(1, 7)])


@needs_mnist
def test_mnist_pairs_set():
    data = load_dataset("mnist-pairs", str(MNIST))
    n = pairs.NUM_CANVASES
    assert data.images.shape == (n, 1, 32, 64) and data.images.min() == -1 and data.images.max() == 1
    assert data.num_classes == 100 and data.class_names[37] == "3-7" and len(data.captions) == n
    codes = set(data.labels.tolist())
    assert not codes & {10 * a + b for a, b in pairs.HELD_OUT_PAIRS}
    assert codes == {10 * a + b for a, b in pairs.seen_pairs()}
    # Black background, the digits in their halves: ink in each half, none on the middle seam.
    ink = (data.images > 0).float()
    assert ink[..., :32].sum(dim=(1, 2, 3)).min() > 0 and ink[..., 32:].sum(dim=(1, 2, 3)).min() > 0
    assert (data.images[..., 0, :, 30:34] == -1).float().mean() > 0.97
    # Each caption names its two digits; the set is build_pairs' with the default seed.
    pool, pool_labels, _ = pairs.load_pool(str(MNIST))
    canvases, drawn, templates, sources = pairs.build_pairs(pool, pool_labels)
    assert torch.equal(data.labels, torch.from_numpy(drawn[:, 0] * 10 + drawn[:, 1]))
    assert torch.equal(data.images[:, 0], torch.from_numpy(canvases).float() / 127.5 - 1)
    assert data.captions == tuple(pairs.caption(a, b, t) for (a, b), t in zip(drawn.tolist(), templates.tolist()))
    assert set(templates.tolist()) == set(range(len(pairs.PAIR_TEMPLATES)))
    for text, label in zip(data.captions[:2000], data.labels[:2000].tolist()):
        assert _mentions(text, label // 10) and _mentions(text, label % 10), text
    right_first = [c for c, y in zip(data.captions[:2000], data.labels[:2000].tolist())
                   if y // 10 != y % 10 and _mentions(c, y % 10)[0] < _mentions(c, y // 10)[0]]
    assert len(right_first) > 200
    # Evaluation digits are never drawn.
    assert sources.max() < len(pool) - pairs.EVAL_DIGITS
    eval_digits, eval_labels = pairs.eval_pool(str(MNIST))
    assert (eval_digits == pool[-pairs.EVAL_DIGITS:]).all() and len(eval_labels) == pairs.EVAL_DIGITS


@needs_mnist
def test_mnist_pairs_is_deterministic_and_leaves_the_eval_digits_out():
    pool, labels, _ = pairs.load_pool(str(MNIST))
    pool = pool.copy()
    pool[-pairs.EVAL_DIGITS:] = 255  # a solid square no MNIST digit draws: any use would show
    a = pairs.build_pairs(pool, labels, n=3000, seed=7)
    b = pairs.build_pairs(pool, labels, n=3000, seed=7)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (pairs.build_pairs(pool, labels, n=3000, seed=8)[0] == a[0]).all()
    assert ((a[0] == 255).reshape(3000, -1).sum(axis=1) < 28 * 28).all()
    # A benchmark's test canvases: held-out pairs drawn from the evaluation digits only.
    held = pairs.make_canvases(pool[-pairs.EVAL_DIGITS:], labels[-pairs.EVAL_DIGITS:], pairs.HELD_OUT_PAIRS, 0)
    assert held.shape == (10, 32, 64) and ((held == 255).reshape(10, -1).sum(axis=1) == 2 * 28 * 28).all()


def test_mnist_pairs_without_the_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path))):
        load_dataset("mnist-pairs", str(tmp_path))
