"""Keeps the tables of the benchmark pages in step with the result files the benchmarks wrote.

A table on a page (``README.md``, ``benchmarks/README.md``, ``benchmarks/RESULTS.md``) that reports a
result file is not typed: it sits between two comments and is copied from the markdown file that the
benchmark wrote beside its JSON::

    <!-- table: benchmarks/results/speed_presets/speed.md#1 columns=preset;model;train img/s -->
    | preset | model | train img/s |
    ...
    <!-- /table -->

``#N`` picks the N-th table of the file (default 1); ``columns=`` keeps those columns, in that order
(``;`` between names, default all; ``name#2`` is the second column of that name). GitHub shows the page
as it is committed, so the copy is kept in the page itself: this script rewrites every block from its
file, ``--check`` exits with status 1 and names the stale blocks instead. ``tests/test_tables.py`` runs
the check, so a page cannot drift from its result file.

    .venv/bin/python benchmarks/tables.py           # rewrite the blocks
    .venv/bin/python benchmarks/tables.py --check   # fail on a stale block
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ddpm.io import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "benchmarks/README.md", "benchmarks/RESULTS.md")

BLOCK = re.compile(r"(?P<open><!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /table -->)", re.S)


class TableError(ValueError):
    """A block names a missing file, table or column."""


def tables_of(markdown: str) -> list[list[str]]:
    """The markdown tables of a text, each as its list of lines (header, rule, rows)."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def column_index(header: list[str], name: str, where: str) -> int:
    """The index of column ``name``; ``name#k`` is the k-th column of that name (a table may repeat one)."""
    base, _, k = name.rpartition("#") if re.fullmatch(r".+#\d+", name) else (name, "", "1")
    hits = [i for i, h in enumerate(header) if h == base]
    if len(hits) < int(k):
        raise TableError(f"{where}: no column {name!r} (the table has: {', '.join(header)})")
    return hits[int(k) - 1]


def select_columns(table: list[str], names: list[str], where: str) -> list[str]:
    header = cells(table[0])
    idx = [column_index(header, n, where) for n in names]
    out = []
    for i, line in enumerate(table):
        row = cells(line)
        out.append("| " + " | ".join("---" if i == 1 else row[j] for j in idx) + " |")
    return out


def render(spec: str, root: Path = ROOT) -> str:
    """The table a block's ``spec`` ("PATH[#N] [columns=a;b]") stands for, as markdown lines."""
    parts = spec.split(maxsplit=1)
    target, options = parts[0], (parts[1] if len(parts) > 1 else "")
    path, _, number = target.partition("#")
    file = root / path
    if not file.is_file():
        raise TableError(f"{spec}: no file {path}")
    found = tables_of(file.read_text())
    n = int(number or 1)
    if not 1 <= n <= len(found):
        raise TableError(f"{spec}: {path} has {len(found)} table(s), not a table {n}")
    table = found[n - 1]
    if options:
        key, _, value = options.partition("=")
        if key.strip() != "columns" or not value:
            raise TableError(f"{spec}: unknown option {options!r} (only columns=a;b;c)")
        table = select_columns(table, [c.strip() for c in value.split(";")], spec)
    return "\n".join(table) + "\n"


def sync(text: str, root: Path = ROOT) -> str:
    """``text`` with every table block rewritten from its result file."""
    return BLOCK.sub(lambda m: m["open"] + render(m["spec"], root) + m["close"], text)


def stale_pages(root: Path = ROOT, pages=PAGES) -> list[str]:
    return [p for p in pages if (root / p).is_file() and sync((root / p).read_text(), root) != (root / p).read_text()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit with status 1 when a block is stale; change nothing")
    args = p.parse_args(argv)
    try:
        stale = stale_pages()
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        for page in stale:
            print(f"{page}: a table differs from its result file (run benchmarks/tables.py)", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        write_text_atomic(ROOT / page, sync((ROOT / page).read_text()))
        print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
