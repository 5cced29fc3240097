"""Golden samples: the pipeline draws, bit for bit, what the code before its redesign drew.

``tests/golden/samples.safetensors`` was recorded with the old ``ddpm.api.sample_images`` (see
``tests/golden_cases.py``) for every sampler, with and without guidance, on tiny fixed models whose
weights it stores. Bitwise equality holds on the machine kind it was recorded on (the file's metadata
names the torch build and CPU capability); elsewhere floating-point kernels may round differently, and
the samples are compared to float32 round-off instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ddpm.config import RuntimeConfig
from ddpm.pipeline import GuidanceOptions, Run, SamplingOptions, interpolate_images, interpolate_seeds
from ddpm.sampling.noise import seed_generators
from tests.golden_cases import CASES, FIXED, build_models

GOLDEN = Path(__file__).parent / "golden" / "samples.safetensors"
SAMPLING_FIELDS = ("sampler", "steps", "grid", "eta", "variance", "clip_x0")


def _same_machine_kind() -> bool:
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
    return (meta["torch"], meta["cpu"]) == (torch.__version__, torch.backends.cpu.get_cpu_capability())


@pytest.fixture(scope="module")
def golden():
    tensors = load_file(str(GOLDEN))
    models = build_models()
    for name, (model, _) in models.items():
        prefix = f"weights.{name}."
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return tensors, models


def _draw(case: dict, models) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model, cfg = models[case["model"]]
    opts = dict(case.get("options", {}))
    run = Run.of(model, cfg)
    sampling = SamplingOptions(**{k: opts.pop(k) for k in SAMPLING_FIELDS if k in opts})
    if "sampling_steps" in opts:
        sampling = SamplingOptions(sampling.sampler, steps=opts.pop("sampling_steps"))
    classifier = models["classifier"][0] if opts.pop("classifier", False) else None
    guidance = GuidanceOptions(opts.pop("guidance", None), classifier, opts.pop("classifier_scale", 0.0))
    y = opts.pop("y", None)
    assert not opts, f"unused options {opts}"
    kw = dict(sampling=sampling, guidance=guidance, runtime=RuntimeConfig("cpu", **FIXED))
    if case.get("kind") == "interp_seeds":
        return interpolate_seeds(run, 3, 4, [0, 0.5, 1], progress=False, **kw), []
    if case.get("kind") == "interp_images":
        xa, xb = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8), -torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
        return interpolate_images(run, xa, xb, [5, 15], [0, 0.5, 1], seed=7, **kw), []
    x0s = []
    steps = run.steps(3, generator=seed_generators(range(10, 13)), y=y, **kw)
    x = None
    for step in steps:
        x0s.append(step.x0)
        x = step.x_next
    return x, x0s


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_reproduces_the_recorded_samples(golden, name):
    tensors, models = golden
    case = CASES[name]
    x, x0s = _draw(case, models)
    want = tensors[f"case.{name}"]
    if _same_machine_kind():
        assert torch.equal(x, want)
    else:
        torch.testing.assert_close(x, want, rtol=1e-4, atol=1e-5)
    if case.get("trajectory"):
        recorded = tensors[f"trajectory.{name}"]
        assert len(x0s) == len(recorded)
        assert all(torch.equal(a, b) if _same_machine_kind() else torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                   for a, b in zip(x0s, recorded))
