"""Smoke test of benchmarks/improved_ddpm.py on a tiny model and budget (the real run is in its docstring)."""

import importlib.util
import json

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # ~25 s on an idle 2-core CPU: two tiny trainings, NLL, a classifier and six sample sets
def test_improved_ddpm_benchmark_runs_tiny(tmp_path, tiny_config_file, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))  # the cached classifier stays in tmp
    spec = importlib.util.spec_from_file_location("improved_ddpm", REPO / "benchmarks" / "improved_ddpm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    r = bench.main(["--config", str(tiny_config_file), "--seconds", "5", "--n-nll", "4",
                    "--n-fid", "16", "--respaced", "5", "10", "--classifier-epochs", "1", "--device", "cpu",
                    "--batch-size", "16", "--out", str(out)])
    assert set(r["models"]) == {"simple", "hybrid"}
    assert set(r["models"]["simple"]["nll"]) == {"beta", "beta_tilde"}
    hybrid = r["models"]["hybrid"]
    assert set(hybrid["fid"]) == {"20", "10", "5"} and hybrid["fid"]["20"]["relative_to_T_steps"] == 1.0
    for name in ("results.json", "results.md", "vlb_terms.png"):  # loss_quartiles.png needs a logged interval
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["models"]["hybrid"]["loss"] == "hybrid"
    d = r["nll_difference"]
    assert d["n"] == 4 and d["stderr"] >= 0

    # fast_sampling.py takes the hybrid model's T-step ancestral row from these results instead of sampling it
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("fast_sampling", REPO / "benchmarks" / "fast_sampling.py")
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    common = ["--checkpoint", str(out / "run-hybrid"), "--nfe", "5", "--samplers", "dpm++2m", "--diffusers",
              "--classifier-epochs", "1", "--batch-size", "16", "--ancestral-from", str(out / "results.json")]
    f = fs.main([*common, "--n", "16", "--out", str(tmp_path / "fast")])
    anc = [row for row in f["rows"] if row["method"] == "ancestral"]
    assert len(anc) == 1 and anc[0]["nfe"] == 20 and anc[0]["fid"] == hybrid["fid"]["20"]["fid"]
    assert "dpm++2m (even) @ 20 NFE within 10% of ancestral @ 20" not in f["targets"]  # NFE 5 only
    with pytest.raises(fs.UserError, match="n=16 seed=0, this run n=8"):
        fs.main([*common, "--n", "8", "--out", str(tmp_path / "fast8")])


def test_timed_training_stops_where_sigint_is_ignored(tmp_path, monkeypatch):
    """A background job of a non-interactive shell (`nohup ... &`) starts with SIGINT ignored, where
    _thread.interrupt_main does nothing: the timer must still end the training at its budget."""
    import signal

    from ddpm.config import derive
    from ddpm.data.datasets import load_dataset
    from ddpm.pipeline import load_run
    from tests.conftest import tiny_config

    spec = importlib.util.spec_from_file_location("improved_ddpm", REPO / "benchmarks" / "improved_ddpm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = tiny_config(steps=10**9, checkpoint_every=10**9)
    cfg.runtime.device = "cpu"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seconds = bench.train_for(derive(cfg), tmp_path / "run", load_dataset("digits"), 8.0)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert 8.0 <= seconds < 60.0
    assert 0 < load_run(tmp_path / "run").step < 10**9
