"""Run under torchrun by tests/test_distributed.py: ``python -m torch.distributed.run ... THIS MODE OUT [ARGS]``.

Modes:
  grads OUT        each rank's gradient of its share of one fixed global batch (micro-batched, under DDP),
                   and on rank 0 a single process's gradient of the whole batch; saved to OUT.
  train OUT ARGS   ``ddpm train ARGS``, recording on every rank the batches it drew and, at the end, its
                   weights and EMA (OUT/rank{r}.safetensors, OUT/batches_rank{r}.jsonl).
  fail OUT ARGS    ``ddpm train ARGS`` in which rank 1 raises at its third step.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import ddpm.training.loop as loop
from ddpm import runtime as rt
from ddpm.cli import main
from ddpm.data.datasets import load_dataset
from ddpm.training import distributed as dist
from ddpm.training.step import accumulate_gradients
from tests.conftest import tiny_config


def grads(out: Path) -> None:
    env = dist.DistEnv.from_environ()
    cfg = tiny_config(batch_size=8, micro_batch_size=2)
    cfg.model.dropout = 0.0
    dist.setup(env, torch.device("cpu"))
    options = rt.resolve(torch.device("cpu"), precision="fp32", memory_format="contiguous", compile="none")
    torch.manual_seed(0)
    state = loop._train_state(cfg, options, env, None)
    single = copy.deepcopy(state.model)  # the same initial weights, outside DDP
    g = torch.Generator().manual_seed(1)
    x0 = load_dataset("digits", None, image_size=(8, 8), channels=1).images[:8]
    t = torch.randint(0, cfg.diffusion.timesteps, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    w = torch.ones(8)
    share = slice(env.rank * 4, env.rank * 4 + 4)
    accumulate_gradients(state, x0[share], t[share], noise[share], w[share])
    tensors = {f"ddp.{k}": p.grad for k, p in state.model.named_parameters()}
    if env.is_main:
        loss = state.objective.loss(single, x0, t, noise, w)
        loss.backward()
        tensors.update({f"single.{k}": p.grad for k, p in single.named_parameters()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"grads_rank{env.rank}.safetensors"))
    dist.teardown(env)


def train(out: Path, args: list[str], fail: bool = False) -> int:
    env = dist.DistEnv.from_environ()
    real_step, real_loop = loop.train_step, loop._loop
    log = open(out / f"batches_rank{env.rank}.jsonl", "a")

    def recording_step(state, x0, y=None):
        if fail and env.rank == 1 and state.step == 2:
            raise RuntimeError("rank 1 failed on purpose")
        digest = hashlib.sha256(x0.cpu().numpy().tobytes()).hexdigest()[:16]
        log.write(json.dumps({"step": state.step + 1, "batch": digest}) + "\n")
        log.flush()
        return real_step(state, x0, y)

    def keeping_loop(state, *a, **k):
        real_loop(state, *a, **k)
        save_file({**{f"model.{k}": v.contiguous() for k, v in state.model.state_dict().items()},
                   **{f"ema.{k}": v.contiguous() for k, v in state.ema.state_dict().items()},
                   **{f"objective.{k}": v.contiguous() for k, v in state.objective.state_dict().items()}},
                  str(out / f"rank{env.rank}.safetensors"))

    loop.train_step, loop._loop = recording_step, keeping_loop
    return main(["train", *args])


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if mode == "grads":
        grads(out)
    else:
        sys.exit(train(out, sys.argv[3:], fail=mode == "fail"))
