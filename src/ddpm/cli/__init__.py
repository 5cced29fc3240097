"""The ``ddpm`` command. Each sub-command is a module in this package with ``add_parser`` and ``run``.

User mistakes raise ``UserError`` and end as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from ddpm.errors import UserError
from ddpm.io import QUIET_ENV
from ddpm.training import distributed as dist


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, without the multi-line usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            before = set(sub.choices)
            module.add_parser(sub)
            for name in set(sub.choices) - before:
                _common_manners(sub.choices[name], module.EXAMPLES)
    return parser


def _common_manners(p: argparse.ArgumentParser, examples: str) -> None:
    """What every sub-command has: examples at the end of its --help, and -q/--quiet."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n" + "".join(f"  {line}\n" for line in examples.splitlines())
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or progress messages (errors and warnings still print)")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"ddpm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # a warning is one line too, without the code that raised it
    args = build_parser().parse_args(argv)
    was_quiet = os.environ.get(QUIET_ENV)
    if args.quiet:  # read by ddpm.io.progress_bar and ddpm.io.say, here and in the processes this one starts
        os.environ[QUIET_ENV] = "1"
    try:
        return _run(args)
    finally:
        if was_quiet is None:
            os.environ.pop(QUIET_ENV, None)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system refused a read or write the code did not name itself
        where = f"{e.filename}: " if e.filename else ""
        print(f"ddpm {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not dist.peer_failed(e):
            raise
        rank = dist.DistEnv.from_environ().rank
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"ddpm {args.command}: error: rank {rank} stopped: a collective failed, most likely because another "
              f"process of the job failed (see its error): {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
