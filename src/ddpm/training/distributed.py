"""Everything rank-aware in one place: torchrun's environment, the device, who logs and saves."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ddpm import io
from ddpm.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls) -> "DistEnv":
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(name: str, env: DistEnv) -> torch.device:
    """The device of this process: under torchrun each rank takes the GPU of its local rank."""
    return io.resolve_device(name, env.local_rank if env.enabled else None)


def setup(env: DistEnv, device: torch.device) -> None:
    if env.enabled and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise."""
    if not env.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def per_rank_batch(batch_size: int, env: DistEnv) -> int:
    """Each rank's share of the global batch; it must split evenly."""
    if batch_size % env.world_size:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {env.world_size} processes")
    return batch_size // env.world_size


def barrier(env: DistEnv) -> None:
    if env.enabled:
        torch.distributed.barrier()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer, so all stop at the same step)."""
    if not env.enabled:
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def all_true_fn(env: DistEnv):
    """A function telling whether a bool tensor is True on every rank (identity in a single process)."""
    if not env.enabled:
        return lambda flag: flag

    def all_true(flag: torch.Tensor) -> torch.Tensor:
        t = flag.to(device=_collective_device(), dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return t.to(flag.device).bool()
    return all_true


def gather_fn(env: DistEnv):
    """A function concatenating a tensor over all ranks (identity in a single process)."""
    if not env.enabled:
        return lambda x: x

    def gather(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(env.world_size)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return gather


def start(device_name: str) -> tuple[DistEnv, torch.device]:
    """torchrun's environment and this process's device, with the process group up when under torchrun."""
    env = DistEnv.from_environ()
    device = rank_device(device_name, env)
    setup(env, device)
    return env, device


def shard(n: int, env: DistEnv) -> range:
    """This rank's block of ``range(n)``: contiguous blocks of ceil(n / world_size), in rank order."""
    k = -(-n // env.world_size)
    return range(min(n, env.rank * k), min(n, (env.rank + 1) * k))


def gather_shards(x: torch.Tensor, n: int, env: DistEnv) -> torch.Tensor:
    """Every rank's ``shard`` rows of a set of ``n`` concatenated in index order, on every rank (CPU)."""
    if not env.enabled:
        return x
    k = -(-n // env.world_size)
    device = _collective_device()
    rows = max(1, (1 << 27) // max(1, x[0].numel() * x.element_size()) if len(x) else k)  # ~128 MB a round
    per_rank = [[] for _ in range(env.world_size)]
    for start in range(0, k, rows):  # in rounds, so a GPU never holds the whole set
        chunk = torch.zeros((min(rows, k - start), *x.shape[1:]), dtype=x.dtype, device=device)
        mine = x[start:start + len(chunk)]
        chunk[: len(mine)] = mine.to(device)
        parts = [torch.empty_like(chunk) for _ in range(env.world_size)]
        torch.distributed.all_gather(parts, chunk)
        for r, part in enumerate(parts):
            per_rank[r].append(part.cpu())
    return torch.cat([torch.cat(p) for p in per_rank])[:n]


def _collective_device() -> torch.device:
    """nccl reduces CUDA tensors, gloo CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# What the collectives raise when another process of the job is gone (gloo: the TCP pair closes; nccl: the
# watchdog aborts the communicator).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
              "ProcessGroupNCCL")


def peer_failed(error: BaseException) -> bool:
    """Whether ``error`` is this process learning that another process of a torchrun job failed."""
    if not DistEnv.from_environ().enabled:
        return False
    return isinstance(error, torch.distributed.DistError) or any(s in str(error) for s in _PEER_GONE)


def teardown(env: DistEnv) -> None:
    if env.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
