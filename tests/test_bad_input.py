"""The bad-input catalogue: every case is a command a user could type, with something wrong in it.

Each must end with exit status 2 and one line on stderr that names the culprit (a flag, a key, a file),
never a traceback, and must leave the files it was given and every output folder exactly as they were.
A separate table checks that unusual but valid images (CMYK, 16-bit, palette, alpha, EXIF rotation) are
read correctly rather than refused.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ddpm.cli import main
from ddpm.data.transforms import fit_image
from ddpm.training.loop import train
from tests.conftest import tiny_config


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # split on spaces; {tmp} is the case's folder, {run} a trained tiny run
    culprit: str  # the error line must contain this
    setup: Callable[[Path], None] | None = None


# ---- inputs the cases set up -----------------------------------------------------------------------------

def _png(path: Path, size=(8, 8), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def _folder_with(name: str, write: Callable[[Path], None]) -> Callable[[Path], None]:
    """A folder ``imgs`` of two good 8x8 PNGs and the bad file ``name`` written by ``write``."""
    def setup(tmp: Path) -> None:
        _png(tmp / "imgs" / "a.png")
        _png(tmp / "imgs" / "b.png")
        write(tmp / "imgs" / name)
    return setup


def _truncated_png(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bomb_png(path: Path) -> None:
    """A valid PNG header declaring 100,000 x 100,000 pixels, and no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _unreadable_png(path: Path) -> None:
    _png(path)
    os.chmod(path, 0)


def _symlink_loop(tmp: Path) -> None:
    (tmp / "loop").mkdir()
    os.symlink("x.png", tmp / "loop" / "y.png")
    os.symlink("y.png", tmp / "loop" / "x.png")
    os.symlink(".", tmp / "loop" / "again")


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def _npz(name: str, array) -> Callable[[Path], None]:
    return lambda tmp: np.savez(tmp / name, array)


def _foreign_safetensors(tmp: Path) -> None:
    (tmp / "other").mkdir()
    save_file({"encoder.weight": torch.zeros(3, 3)}, tmp / "other" / "ema.safetensors", metadata={"format": "x"})


def _pickle_checkpoint(tmp: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}}, tmp / "model.pt")


def _truncated_run(tmp: Path, run: Path) -> None:
    (tmp / "broken").mkdir()
    for name in ("config.json", "ema.safetensors"):
        data = (run / name).read_bytes()
        (tmp / "broken" / name).write_bytes(data[: len(data) // 3] if name.endswith("safetensors") else data)


# ---- the catalogue -----------------------------------------------------------------------------------------

T = "train --out {tmp}/out"  # a train command that would write to {tmp}/out
S = "sample --checkpoint {run} --out {tmp}/out"
CASES = [
    # CLI values: negative, zero, NaN, too large, wrong type, unknown names
    Case("steps-negative", f"{T} --steps -5", "--steps"),
    Case("steps-zero", f"{T} --steps 0", "--steps"),
    Case("batch-size-wrong-type", f"{T} --batch-size abc", "--batch-size"),
    Case("lr-nan", f"{T} --lr nan", "lr"),
    Case("lr-negative", f"{T} --lr -1", "lr"),
    Case("ema-decay-above-1", f"{T} --ema-decay 1.5", "ema_decay"),
    Case("dropout-above-1", f"{T} --dropout 2", "dropout"),
    Case("grad-clip-negative", f"{T} --grad-clip -1", "grad_clip"),
    Case("timesteps-zero", f"{T} --timesteps 0", "--timesteps"),
    Case("timesteps-too-large", f"{T} --timesteps 100000000", "timesteps"),
    Case("image-size-zero", f"{T} --image-size 0,8", "image"),
    Case("image-size-too-large", f"{T} --image-size 100000,100000", "image"),
    Case("image-size-empty", f"{T} --image-size=", "--image-size"),
    Case("channel-mult-not-numbers", f"{T} --channel-mult a,b", "--channel-mult"),
    Case("stem-not-divisible-into-groups", f"{T} --base-channels 12 --channel-mult 2 --norm-groups 8", "12 channels are not divisible into 8"),
    Case("unknown-preset", f"{T} --preset nope", "nope"),
    Case("unknown-schedule", f"{T} --schedule sigmoidal", "--schedule"),
    Case("unknown-device", f"{T} --device tpu", "tpu"),
    Case("p-uncond-without-conditional", f"{T} --p-uncond 0.2", "--p-uncond"),
    Case("sample-n-zero", f"{S} --n 0", "--n"),
    Case("sample-n-negative", f"{S} --n -3", "--n"),
    Case("sample-steps-more-than-T", f"{S} --steps 5000", "steps"),
    Case("sample-eta-nan", f"{S} --sampler ddim --eta nan", "eta"),
    Case("sample-guidance-nan", f"{S} --guidance nan", "guidance"),
    Case("sample-unknown-sampler", f"{S} --sampler euler", "--sampler"),
    Case("sample-class-out-of-range", f"{S} --class 99", "class"),
    Case("interpolate-lambda-out-of-range", "interpolate --checkpoint {run} --out {tmp}/out --lambdas 0,2", "2"),
    Case("forward-t-beyond-T", "forward --data digits --t 5000 --out {tmp}/out.png", "5000"),
    # config files: syntax, unknown keys, wrong types, values out of range
    Case("config-missing", f"{T} --config {{tmp}}/nope.toml", "nope.toml"),
    Case("config-toml-syntax", f"{T} --config {{tmp}}/c.toml", "c.toml", _write("c.toml", "[train\nsteps = 3")),
    Case("config-json-syntax", f"{T} --config {{tmp}}/c.json", "c.json", _write("c.json", '{"train": {"steps": }')),
    Case("config-unknown-key", f"{T} --config {{tmp}}/c.json", "stpes", _write("c.json", '{"train": {"stpes": 3}}')),
    Case("config-unknown-section", f"{T} --config {{tmp}}/c.json", "trian", _write("c.json", '{"trian": {}}')),
    Case("config-wrong-type", f"{T} --config {{tmp}}/c.json", "steps", _write("c.json", '{"train": {"steps": "x"}}')),
    Case("config-out-of-range", f"{T} --config {{tmp}}/c.json", "steps",
         _write("c.json", '{"train": {"steps": -1}}')),
    Case("config-not-a-table", f"{T} --config {{tmp}}/c.json", "c.json", _write("c.json", "[1, 2]")),
    Case("config-unknown-suffix", f"{T} --config {{tmp}}/c.yaml", "c.yaml", _write("c.yaml", "train: {}")),
    # data
    Case("data-missing", f"{T} --data {{tmp}}/nope", "nope"),
    Case("data-empty-folder", f"{T} --data {{tmp}}/empty", "empty", lambda tmp: (tmp / "empty").mkdir()),
    Case("data-zero-byte-png", f"{T} --data {{tmp}}/imgs", "c.png", _folder_with("c.png", lambda p: p.touch())),
    Case("data-truncated-png", f"{T} --data {{tmp}}/imgs", "c.png", _folder_with("c.png", _truncated_png)),
    Case("data-text-named-png", f"{T} --data {{tmp}}/imgs", "c.png",
         _folder_with("c.png", lambda p: p.write_text("not an image"))),
    Case("data-decompression-bomb", f"{T} --data {{tmp}}/imgs", "c.png", _folder_with("c.png", _bomb_png)),
    Case("data-unreadable-file", f"{T} --data {{tmp}}/imgs", "c.png", _folder_with("c.png", _unreadable_png)),
    Case("data-symlink-loops", f"{T} --data {{tmp}}/loop", "loop", _symlink_loop),
    Case("data-single-image-missing", "forward --image {tmp}/nope.png --out {tmp}/out.png", "nope.png"),
    Case("data-unknown-named-set", f"{T} --data imagenet", "imagenet"),
    # checkpoints
    Case("checkpoint-missing", "sample --checkpoint {tmp}/nope --out {tmp}/out", "nope"),
    Case("checkpoint-empty-folder", "sample --checkpoint {tmp}/empty --out {tmp}/out", "empty",
         lambda tmp: (tmp / "empty").mkdir()),
    Case("checkpoint-wrong-format", "sample --checkpoint {tmp}/x.safetensors --out {tmp}/out", "x.safetensors",
         _write("x.safetensors", "hello")),
    Case("checkpoint-another-model", "sample --checkpoint {tmp}/other --out {tmp}/out", "other",
         _foreign_safetensors),
    Case("checkpoint-pickle", "sample --checkpoint {tmp}/model.pt --out {tmp}/out", "model.pt",
         _pickle_checkpoint),
    Case("checkpoint-truncated", "sample --checkpoint {tmp}/broken --out {tmp}/out", "broken", "truncated-run"),
    Case("resume-other-model", "train --out {run} --resume --base-channels 32", "differ"),
    Case("resume-nothing", f"{T} --resume", "out"),
    Case("convert-not-diffusers", "convert --from-diffusers {tmp}/empty --out {tmp}/out", "empty",
         lambda tmp: (tmp / "empty").mkdir()),
    # sample files (ddpm evaluate --samples)
    Case("samples-wrong-dtype", "evaluate --samples {tmp}/s.npz --out {tmp}/r.json", "float64",
         _npz("s.npz", np.zeros((4, 8, 8)))),
    Case("samples-wrong-shape", "evaluate --samples {tmp}/s.npz --out {tmp}/r.json", "s.npz",
         _npz("s.npz", np.zeros((4, 8), np.uint8))),
    Case("samples-not-npz", "evaluate --samples {tmp}/s.npz --out {tmp}/r.json", "s.npz", _write("s.npz", "text")),
    Case("samples-pickled-objects", "evaluate --samples {tmp}/s.npz --out {tmp}/r.json", "s.npz",
         _npz("s.npz", np.array([{"a": 1}], dtype=object))),
    Case("samples-folder-bad-image", "evaluate --samples {tmp}/imgs --out {tmp}/r.json", "c.png",
         _folder_with("c.png", lambda p: p.write_text("no"))),
]


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def _snapshot(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalogue") / "run"
    train(tiny_config(), path, progress=False)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, run, capsys, monkeypatch):
    if case.setup == "truncated-run":
        _truncated_run(tmp_path, run)
    elif case.setup is not None:
        case.setup(tmp_path)
    if case.id == "data-unreadable-file" and os.geteuid() == 0:  # root reads anything: refuse it as the OS would
        real_open = Image.open

        def refusing(fp, *a, **k):
            if str(fp).endswith("c.png"):
                raise PermissionError(errno.EACCES, "Permission denied", str(fp))
            return real_open(fp, *a, **k)

        monkeypatch.setattr(Image, "open", refusing)
    # A case that got past its checks must not start hours of work.
    monkeypatch.setattr("ddpm.training.loop._loop", _must_not_train)
    before = _snapshot(tmp_path, run)
    argv = case.argv.format(tmp=tmp_path, run=run).split()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("ddpm: warning:")]
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.culprit in lines[0], f"{case.culprit!r} not named in: {lines[0]}"
    after = _snapshot(tmp_path, run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the command left files behind or changed its inputs: {changed}"


def _must_not_train(*args, **kwargs):
    raise AssertionError("training started: the bad input was not caught")


# ---- unusual but valid images are read, not refused ------------------------------------------------------

def _exif_rotated(tmp: Path) -> Image.Image:
    """A 4x8 image, black on the left half, stored sideways with EXIF orientation 6 (rotate 90 clockwise)."""
    a = np.zeros((8, 4), np.uint8)
    a[:, 2:] = 255
    stored = Image.fromarray(a).transpose(Image.Transpose.ROTATE_90)  # what a camera writes
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp / "rot.jpg", exif=exif, quality=100)
    return Image.open(tmp / "rot.jpg")


VALID = {
    "cmyk": (lambda tmp: Image.new("CMYK", (8, 8), (0, 0, 0, 0)), 3, 255),  # no ink: white
    "16-bit-grey": (lambda tmp: Image.fromarray(np.full((8, 8), 32768, np.uint16)), 1, 128),
    "palette": (lambda tmp: Image.new("RGB", (8, 8), (200, 200, 200)).convert("P", palette=Image.Palette.ADAPTIVE),
                3, 200),
    "alpha": (lambda tmp: Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 3, 255),  # transparent: on white
    "grey-alpha": (lambda tmp: Image.new("LA", (8, 8), (0, 0)), 1, 255),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_unusual_but_valid_images_are_converted(name, tmp_path):
    make, channels, value = VALID[name]
    a = fit_image(make(tmp_path), (8, 8), channels)
    assert a.shape == (8, 8, channels) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - value).max() <= 1, (name, a.min(), a.max())


def test_exif_rotation_is_applied(tmp_path):
    a = fit_image(_exif_rotated(tmp_path), (8, 4), 1)[..., 0]
    assert a[:, :2].mean() < 30 and a[:, 2:].mean() > 225  # upright again: dark left, light right
