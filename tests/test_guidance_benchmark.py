"""Smoke test of benchmarks/guidance.py on a tiny conditional run (the real runs are in its docstring)."""

import importlib.util
import json

import pytest

from tests.conftest import REPO, tiny_config


@pytest.mark.slow  # ~35 s of CPU time: a tiny training, two small classifiers, four sample sets of 20
def test_guidance_benchmark_runs_tiny(tmp_path, monkeypatch):
    from ddpm.training.loop import train

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))  # the evaluation classifier stays in tmp
    cfg = tiny_config(steps=2)
    cfg.model.num_classes = 10
    run = train(cfg, tmp_path / "run", progress=False)
    spec = importlib.util.spec_from_file_location("guidance_bench", REPO / "benchmarks" / "guidance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    r = bench.main(["--checkpoint", str(run), "--classifier-epochs", "1", "--classifier-base-channels", "8",
                    "--eval-classifier-epochs", "1", "--n-per-class", "2", "--steps", "3", "--guidance", "0,2",
                    "--classifier-scales", "1", "--device", "cpu", "--out", str(out)])
    assert [row["setting"] for row in r["rows"]] == ["unconditional", "cfg_w0", "cfg_w2", "classifier_s1"]
    assert "accuracy" not in r["rows"][0]
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["fid"] >= 0 for row in r["rows"][1:])
    assert all(row["fid_se"] > 0 for row in r["rows"])  # bootstrap spread of a set of 20 samples
    assert r["fid_real_floor_images"] == "20 of 1797"
    assert "from 20 of 1797 real images" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["rows"] == r["rows"]
    assert "| cfg_w2 | 2 |" in (out / "results.md").read_text()
    for name in ("tradeoff.png", "unconditional.png", "cfg_w0.png", "classifier_s1.png"):
        assert (out / name).stat().st_size > 0
