"""The ground floor: atomic file writes, safetensors reading and device resolution.

Everything that writes a file people keep goes through ``atomic_write`` (a temporary file in the same
folder, fsync, then one rename), so a crash or a kill leaves either the old file or the new one, never
half of one. Nothing here knows about diffusion, models or runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from tqdm.auto import tqdm

from ddpm.errors import UserError

QUIET_ENV = "DDPM_QUIET"  # set (by ``ddpm -q``) to silence progress bars and progress messages


def quiet() -> bool:
    return bool(os.environ.get(QUIET_ENV))


def progress_bar(iterable=None, *, disable: bool = False, **options):
    """A tqdm progress bar (rate and ETA), off when asked, when ``ddpm -q`` runs, or when stderr is not a
    terminal (a log file or a pipe would fill with carriage returns) unless in a Jupyter notebook."""
    shown = sys.stderr.isatty() or _in_notebook()
    return tqdm(iterable, disable=disable or quiet() or not shown, **options)


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (an imported ipykernel alone, as in a test, is not one)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def say(message: str) -> None:
    """A progress message for people (``wrote ...``), which ``ddpm -q`` silences; results still print."""
    if not quiet():
        print(message)


_UMASK = os.umask(0)  # read once (it can only be read by setting it) and put straight back
os.umask(_UMASK)


def umask() -> int:
    """The process's file-mode creation mask (read once, at import)."""
    return _UMASK


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; a crash never leaves a half-written file.

    A write the system refuses (a full disk, a read-only folder, no permission) is a UserError naming
    ``path``, and leaves the old file as it was and no temporary file behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        # mkstemp makes the file private (0600), and some writers (safetensors) create it anew: the saved file
        # gets the usual mode, set after writing.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except SafetensorError as e:  # safetensors reports its I/O errors as its own kind
        raise UserError(f"cannot write {path}: {str(e).rpartition('I/O error: ')[2]}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_npz_atomic(path: str | Path, *arrays, **named) -> None:
    """``numpy.savez`` with ``atomic_write`` (through a file object: numpy would append .npz to a name)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays, **named)

    atomic_write(path, write)


def save_image_atomic(image, path: str | Path, **options) -> Path:
    """Save a PIL image (the format from the file's suffix) with ``atomic_write``."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG")
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))
    return Path(path)


def save_figure_atomic(fig, path: str | Path, **options) -> Path:
    """Save a matplotlib figure (the format from the file's suffix) with ``atomic_write``."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **options))
    return Path(path)


def read_safetensors(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; an unreadable one is a UserError naming ``what``."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        if _looks_pickled(path):
            raise UserError(f"{path} is a PyTorch pickle (torch.save), not a {what}: ddpm reads only safetensors, "
                            "which cannot run code (for a diffusers model use ddpm convert)") from None
        raise UserError(f"cannot read {what} {path}: {e}") from None


def _looks_pickled(path: str | Path) -> bool:
    """A torch.save file: a zip archive (PyTorch >= 1.6) or a raw pickle (protocol 2+ starts with 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


@contextlib.contextmanager
def pid_lock(path: str | Path, what: str):
    """Hold ``path`` (a file with this process's pid and host) while the block runs, so a second process
    working on ``what`` is refused; a lock left by a process that is gone is taken over with a warning."""
    path = Path(path)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = path.read_text().split() if path.is_file() else []
            pid, host = (int(owner[0]), owner[1]) if len(owner) == 2 and owner[0].isdigit() else (None, None)
            if pid is not None and host == socket.gethostname() and _alive(pid):
                raise UserError(f"{what} is in use by another ddpm process (pid {pid}); wait for it or stop it")
            if pid is not None and host != socket.gethostname():
                raise UserError(f"{what} is in use by a ddpm process on {host} (pid {pid}); if it is gone, "
                                f"delete {path}")
            warnings.warn(f"taking over the lock of {what} left by a process that is gone ({path})", stacklevel=3)
            path.unlink(missing_ok=True)
        except OSError as e:  # a read-only or someone else's folder
            raise UserError(f"cannot write in {path.parent}: {e.strerror or e}") from None
    else:
        raise UserError(f"cannot lock {what}: {path} keeps reappearing")
    with os.fdopen(fd, "w") as f:
        f.write(me)
    try:
        yield
    finally:
        if path.is_file() and path.read_text() == me:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two device names mean the same device (``"mps"`` is ``mps:0``, ``"cuda"`` is ``cuda:0``)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | ``"mps"`` as a device; a missing GPU is a UserError.

    Under torchrun pass the process's ``local_rank``: each process then takes its own GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device cuda was requested but no CUDA GPU is available")
        try:
            index = torch.device(name).index
        except RuntimeError:
            raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
        return torch.device("cuda", local_rank if local_rank is not None else index or 0)
    if name not in ("cpu", "mps"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)
