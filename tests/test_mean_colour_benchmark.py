"""benchmarks/mean_colour.py: its two measures against closed forms, and the whole script on a tiny run."""

import json
import math

import numpy as np
import pytest
import torch

from ddpm.training.loop import train
from tests.conftest import load_script, tiny_config


@pytest.fixture(scope="module")
def module():
    return load_script("benchmarks/mean_colour.py")


def test_mean_error_ratio_is_one_for_zero_and_zero_for_the_noise(module):
    eps = torch.randn(4096, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    zero = module.mean_error_ratio(torch.zeros_like(eps), eps)
    # 4096 squared standard normals over 4096: mean 1, standard deviation sqrt(2 / 4096) = 0.022.
    assert abs(zero - 1.0) < 0.1
    assert module.mean_error_ratio(eps, eps) == 0.0
    # A prediction right in every pixel but its mean errs by exactly the noise's mean: the same as zero.
    e = eps.double()
    no_mean = e - e.mean(dim=(-2, -1), keepdim=True)
    assert module.mean_error_ratio(no_mean, e) == pytest.approx(zero, rel=1e-9)
    # A constant offset c in every pixel adds c^2 * pixels to a ratio of 0.
    assert module.mean_error_ratio(eps + 0.25, eps) == pytest.approx(0.25 ** 2 * 64)


def test_colourfulness_of_grey_and_pure_red(module):
    grey = torch.full((2, 3, 4, 4), 77 / 127.5 - 1)
    assert module.colourfulness(grey) == pytest.approx(0.0, abs=1e-12)
    red = torch.full((1, 3, 4, 4), -1.0)
    red[:, 0] = 1.0
    # Channels 1, -1, -1: mean -1/3, population standard deviation sqrt((16/9 + 2 * 4/9) / 3).
    assert module.colourfulness(red) == pytest.approx(math.sqrt(24 / 27))


def test_the_script_writes_both_tables(tmp_path, module, capsys):
    run_dir = train(tiny_config(steps=2), tmp_path / "run", progress=False)
    npz = tmp_path / "s.npz"
    np.savez(npz, np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    r = module.main(["--runs", f"tiny={run_dir}", "--samples", f"noise={npz}", "--n", "8", "--t", "0,19",
                     "--out", str(tmp_path / "out")])
    ratios = r["runs"]["tiny"]["mean_error_ratio"]
    assert set(ratios) == {"0", "19"} and all(math.isfinite(v) and v >= 0 for v in ratios.values())
    assert r["samples"]["noise"]["images"] == 5 and r["samples"]["noise"]["colourfulness"] > 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"]["tiny"]["mean_error_ratio"] == ratios
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 19 |" in md and "| noise | 5 |" in md


def test_bad_input_is_one_line_and_status_2(tmp_path, module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--runs", f"x={tmp_path / 'missing'}"])
    assert e.value.code == 2 and "no such file or folder" in capsys.readouterr().err
    gray = tmp_path / "g.npz"
    np.savez(gray, np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(SystemExit) as e:
        module.main(["--samples", f"g={gray}", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "not (N, H, W, 3)" in capsys.readouterr().err
    run_dir = train(tiny_config(steps=1), tmp_path / "run", progress=False)
    with pytest.raises(SystemExit) as e:
        module.main(["--runs", f"x={run_dir}", "--t", "20", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "outside its timesteps 0..19" in capsys.readouterr().err
