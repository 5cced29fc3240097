"""Runtime options: how the network runs (precision, memory format, compilation), with defaults per device.

Three named options form the ``runtime`` section of a run's config (``RuntimeConfig``; ``ddpm train
--precision ...``), saved with the run and overridable when sampling (``ddpm sample --precision ...``);
the AdamW implementation is a training option of the same kind. ``"auto"`` picks the choice that
measured fastest on that kind of device without changing what the model learns. The figures behind
each choice, with the commands that measure them, are in ``benchmarks/README.md``
(``benchmarks/speed.py`` times the options, ``benchmarks/speed_quality.py`` checks quality).

``precision``: ``"fp32"`` | ``"bf16"`` | ``"fp16"``
    bf16 runs the network under ``torch.autocast``: convolutions, matmuls and attention compute in
    bfloat16 while the master weights, gradients and optimizer state stay float32 (mixed precision,
    Micikevicius et al. 2018; bfloat16 keeps float32's exponent range, so no loss scaling is needed).
    The network's output is cast back to float32, so losses and every sampler's arithmetic are float32.
    auto: bf16 where the hardware computes it natively (CPU with AVX512-BF16 or AMX, CUDA with compute
    capability >= 8.0), else fp32: emulated bf16 is slower than fp32 (about half its speed with oneDNN kept
    off the bf16 instructions; ``benchmarks/README.md``, "Float32 on the CPU").
    fp16 (asked for by name: GPUs with fast float16 but no bf16, such as V100 and T4) autocasts to float16,
    whose narrow exponent range underflows small gradients, so training scales the loss
    (``torch.amp.GradScaler``, ``grad_scaler``) and skips the steps whose gradients overflow.
``memory_format``: ``"contiguous"`` | ``"channels_last"``
    auto: contiguous. On CPUs PyTorch's channels_last GroupNorm kernels are much slower than the
    contiguous ones, more than the convolutions gain by skipping oneDNN's layout reorders
    (``benchmarks/speed_profile.py`` shows where the time goes).
``compile``: ``"none"`` | ``"default"`` | ``"reduce-overhead"`` | ``"max-autotune"`` (``torch.compile`` modes;
    ``"reduce-overhead"`` replays CUDA graphs)
    auto: none on CPU, where inductor's code was slower for training and saved less in sampling than
    its minutes of compiling cost; on CUDA (with Triton installed) ``"default"`` for training and
    ``"reduce-overhead"`` (CUDA graphs: one launch per network call) for sampling.
``adamw_impl``: ``"fused"`` | ``"foreach"`` | ``"for-loop"``
    auto: fused where PyTorch has a fused AdamW kernel (CPU, CUDA), foreach elsewhere: one kernel for
    all parameters instead of one per tensor.
``cpu_allocator``: ``"keep"`` | ``"system"`` (the C library's malloc, for the whole process)
    ``"keep"`` tells glibc's malloc to keep freed memory for reuse instead of handing it back to the
    system: no ``mmap`` for large blocks and no trimming of the heap (``configure_cpu_allocator``). PyTorch's
    CPU allocator takes every tensor from malloc and frees it when the tensor dies, and glibc serves
    blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and returns them with
    ``munmap``, so a training step whose activations are large faults in and zeroes every page of them
    again, step after step: the kernel's time, not the arithmetic. With ``"keep"`` the process reaches
    its peak memory once and reuses it; its resident memory then stays at that peak until it exits.
    auto: keep on a CPU device where the C library is glibc, system elsewhere (GPU memory has its own
    caching allocator, and other C libraries have other knobs). It changes no value computed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ddpm.errors import UserError

# The options' names ("auto" is resolved per device by the resolve_* functions below).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune")
ADAMW_IMPLS = ("auto", "fused", "foreach", "for-loop")
CPU_ALLOCATORS = ("auto", "keep", "system")


def check_options(**options: str) -> None:
    """One-line errors for unknown option names (keys: precision, memory_format, compile, adamw_impl,
    cpu_allocator)."""
    known = {"precision": PRECISIONS, "memory_format": MEMORY_FORMATS, "compile": COMPILE_MODES,
             "adamw_impl": ADAMW_IMPLS, "cpu_allocator": CPU_ALLOCATORS}
    for name, value in options.items():
        if value not in known[name]:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(known[name])}")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively (not by emulation, which is slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_precision(name: str, device) -> str:
    check_options(precision=name)
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def resolve_memory_format(name: str, device) -> str:
    check_options(memory_format=name)
    return "contiguous" if name == "auto" else name


def resolve_compile(name: str, device, *, sampling: bool = False) -> str:
    check_options(compile=name)
    if name != "auto":
        return name
    if torch.device(device).type == "cuda" and _has_triton():
        return "reduce-overhead" if sampling else "default"
    return "none"


def resolve_adamw_impl(name: str, device) -> str:
    check_options(adamw_impl=name)
    if name != "auto":
        return name
    return "fused" if torch.device(device).type in ("cpu", "cuda") else "foreach"


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_allocator_kept = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (looked up once: ``platform.libc_ver`` reads the interpreter's binary,
    and every ``Run.network`` call resolves the allocator)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def resolve_cpu_allocator(name: str, device) -> str:
    check_options(cpu_allocator=name)
    if name != "auto":
        return name
    return "keep" if torch.device(device).type == "cpu" and _glibc() is not None else "system"


def configure_cpu_allocator(name: str, device) -> str:
    """Apply ``cpu_allocator`` (see the module's docstring) to this process and return what it resolved to.

    ``"keep"``: ``mallopt(M_MMAP_MAX, 0)`` (no block is served by ``mmap``), ``M_TRIM_THRESHOLD`` 2^30 and
    ``M_TOP_PAD`` 64 MiB (freed memory stays in the heap). Process-wide and not undone: ``ddpm train`` and
    the runs' sampling call it once; ``"system"`` leaves malloc as it is (it does not undo an earlier
    ``"keep"``). Where glibc is missing, ``"keep"`` asked for by name is a one-line error."""
    global _allocator_kept
    choice = resolve_cpu_allocator(name, device)
    if choice == "keep" and not _allocator_kept:
        libc = _glibc()
        if libc is None:
            raise UserError("cpu_allocator 'keep' needs glibc (Linux); use --cpu-allocator system")
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) and \
            libc.mallopt(_M_TOP_PAD, 64 << 20)
        if not ok:
            raise UserError("the C library refused the cpu_allocator 'keep' settings; use --cpu-allocator system")
        _allocator_kept = True
    return choice


@dataclass(frozen=True)
class Resolved:
    """Runtime options with "auto" resolved for one device: what ``ModelRunner`` takes."""

    device: torch.device
    precision: str = "fp32"
    memory_format: str = "contiguous"
    compile: str = "none"


def resolve(device, *, precision: str = "auto", memory_format: str = "auto", compile: str = "auto",
            sampling: bool = False) -> Resolved:
    """The options as they apply on ``device`` (``sampling`` picks the sampling default of ``compile``)."""
    device = torch.device(device)
    return Resolved(device, resolve_precision(precision, device), resolve_memory_format(memory_format, device),
                    resolve_compile(compile, device, sampling=sampling))


def grad_scaler(precision: str, device) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs (None for the other precisions, which need none)."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def make_adamw(params, *, lr: float, weight_decay: float, impl: str, device) -> torch.optim.AdamW:
    """AdamW with the named implementation; all three compute the same update (Loshchilov & Hutter 2019)."""
    impl = resolve_adamw_impl(impl, device)
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)


def to_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """``model`` (in place) with its 4-D weights in ``memory_format``; values are unchanged."""
    if memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state (saved contiguous) its parameter's memory layout, in place.

    The fused AdamW kernel walks a parameter and its moments as flat memory, so a channels_last weight with
    contiguous moments would be updated with the wrong entries' moments (``--resume`` would then diverge).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# Compiled wrappers of sampling models, so repeated sampling calls (one per batch) compile once.
# Kept outside the module: an attribute would register the wrapper as a submodule and enter state_dict.
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]]" = weakref.WeakKeyDictionary()


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(model, mode=mode)``, cached per model and mode; ``model`` itself for ``"none"``."""
    if mode == "none":
        return model
    per_model = _COMPILED.setdefault(model, {})
    if mode not in per_model:
        # Static shapes: a batch or resolution seen later compiles again rather than turning every size into
        # a symbol; with symbolic sizes, inductor 2.14 stops on the CPU training step ("cannot determine
        # truth value of Relational"), and our batches take few distinct shapes anyway.
        per_model[mode] = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    return per_model[mode]


def runner(model: nn.Module, options: Resolved) -> "ModelRunner":
    """``model`` (its weights converted to the memory format in place) called with ``options``."""
    return ModelRunner(to_memory_format(model, options.memory_format), precision=options.precision,
                       memory_format=options.memory_format, compile=options.compile)


class ModelRunner:
    """Calls ``model(x, t[, y])`` with resolved runtime options; returns float32 in the contiguous format.

    Not a module (it owns no weights), so wrapping leaves state dicts and checkpoints unchanged. The
    model must already be in ``memory_format`` (``to_memory_format``); the input is converted here.
    """

    def __init__(self, model: nn.Module, *, precision: str = "fp32", memory_format: str = "contiguous",
                 compile: str = "none"):
        check_options(precision=precision, memory_format=memory_format, compile=compile)
        if "auto" in (precision, memory_format, compile):
            raise ValueError("resolve 'auto' options first (resolve_precision, ...)")
        self.model = model
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = memory_format == "channels_last"
        self.cuda_graphs = compile == "reduce-overhead"
        self.fn = compiled(model, compile)
        self.device_type = next(model.parameters()).device.type

    @property
    def config(self):
        """The wrapped network's ModelConfig (through DistributedDataParallel too)."""
        inner = getattr(self.model, "module", self.model)
        return getattr(inner, "config", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:  # a new replay may overwrite the previous call's output buffers
            torch.compiler.cudagraph_mark_step_begin()
        autocast = (torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            out = self.fn(x, t) if y is None else self.fn(x, t, y)
        out = out.float()  # the loss and the samplers compute in float32 (a no-op when already float32)
        if self.cuda_graphs:
            out = out.clone()
        return out.contiguous()
