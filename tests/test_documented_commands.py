"""The commands the README, the docs and the benchmark pages show are ones the CLI and the benchmark
scripts accept (no mkdocs needed, so this runs in the default suite)."""

import argparse
import inspect
import re
import shlex
import sys

from tests.conftest import REPO as ROOT
from tests.conftest import load_script

PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "RESULTS.md",
         *sorted((ROOT / "docs").rglob("*.md"))]


def code_lines(page):
    """The lines of a page's code blocks, with ``\\`` continuations joined, comments dropped and shell
    variables (``$S``) read as 0."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", page.read_text(), flags=re.M | re.S)
    for line in (line for block in blocks for line in block.replace("\\\n", " ").splitlines()):
        yield re.sub(r"\$\w+", "0", line.split(" #")[0])


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``ddpm SUBCOMMAND ...`` (or ``python -m ddpm ...``) in the code blocks of the
    README, the docs and the benchmark pages."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            for part in re.split(r"&&|;|\|", line):
                words = part.split()
                starts = [i for i, w in enumerate(words) if w == "ddpm" and (i == 0 or words[i - 1] == "-m")]
                if starts:
                    found.append((str(page.relative_to(ROOT)), " ".join(words[starts[0]:])))
    return found


def test_every_documented_command_parses():
    """A command in the documentation is one a reader can paste: the CLI's own parser accepts it (nothing
    runs; ``...``, ``[a|b]`` and ``-h`` forms, which stand for a family of commands, are left out)."""
    from ddpm.cli import build_parser

    parser, bad = build_parser(), []
    commands = [(page, c) for page, c in documented_commands()
                if not re.search(r"\.\.\.|\[|-h\b|--help|<", c) and len(c.split()) > 1]
    assert len(commands) > 20, commands
    for page, command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            bad.append(f"{page}: {command}")
    assert not bad, "commands the CLI refuses:\n" + "\n".join(bad)


def documented_benchmark_commands() -> list[tuple[str, str, list[str]]]:
    """(page, script, argv) for every ``python benchmarks/NAME.py ...`` in the code blocks of the README, the
    docs and the benchmark pages."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            for part in re.split(r"&&|;|\||>", line):
                match = re.search(r"(?:^|\s)\S*python[0-9.]*\s+benchmarks/(\w+)\.py(.*)$", part)
                if match:
                    found.append((str(page.relative_to(ROOT)), match[1], shlex.split(match[2].rstrip(' &'))))
    return found


class _Parsed(Exception):
    """Raised in place of running a benchmark once its parser has accepted the arguments."""


def test_every_documented_benchmark_command_parses(monkeypatch, capsys):
    """A benchmark command on a page is one a reader can paste: the script's own parser accepts it. Each
    script's ``main`` runs up to its ``parse_args`` and stops there, so nothing is trained or written."""
    commands = documented_benchmark_commands()
    assert len(commands) > 20, commands
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    bad, scripts = [], {}
    for page, script, argv in commands:
        if script not in scripts:
            scripts[script] = load_script(f"benchmarks/{script}.py", f"documented_{script}")
        main = scripts[script].main
        monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}.py", *argv])
        try:
            main(argv) if inspect.signature(main).parameters else main()
            bad.append(f"{page}: benchmarks/{script}.py {shlex.join(argv)} (ran past its parser)")
        except _Parsed:
            pass
        except SystemExit:
            error = capsys.readouterr().err.strip().splitlines()
            bad.append(f"{page}: benchmarks/{script}.py {shlex.join(argv)}: {error[-1] if error else '?'}")
    assert not bad, "benchmark commands their scripts refuse:\n" + "\n".join(bad)
