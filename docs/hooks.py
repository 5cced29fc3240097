"""mkdocs hooks: the pages generated at build time, so nothing on the site is retyped.

- ``cli.md``: every ``ddpm`` sub-command's ``--help``, from ``ddpm.cli.build_parser()``;
- ``benchmarks/index.md`` and ``benchmarks/results.md``: ``benchmarks/README.md`` and
  ``benchmarks/RESULTS.md`` as they are in the repository;
- ``benchmarks/result-files.md``: every result file under ``benchmarks/results/`` (JSON, CSV) as a table,
  with the command that wrote it;
- ``images/forward.png``, ``images/schedules.png``: pictures drawn by the library's own functions.

Links written for GitHub from ``docs/`` into the repository (``../benchmarks/RESULTS.md#speed``,
``../README.md``) are rewritten to the site's copies of those files, so one source serves both.
``tests/test_docs.py`` checks the CLI reference without running mkdocs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import posixpath
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Repository files that docs/ links to (as GitHub shows them) -> the site page that carries them.
REPO_LINKS = {
    "benchmarks/RESULTS.md": "benchmarks/results.md",
    "benchmarks/README.md": "benchmarks/index.md",
    "README.md": "index.md",
}

# The command that wrote each result folder, for files that do not record their own ``command``
# (speed.py's JSON predates that field); taken from benchmarks/README.md, which documents each run.
COMMANDS = {
    "fp32_baseline": ".venv/bin/python benchmarks/speed.py --presets mnist,cifar10 --clock wall --seconds 12 "
                     "--rounds 3 --ours-variants fp32 --peers diffusers --out bench_out/speed",
    "pipeline_redesign": ".venv/bin/python benchmarks/speed.py --presets mnist,cifar10 --clock cpu --seconds 12 "
                         "--rounds 3 --ours-variants auto --peers diffusers --out bench_out/speed_ab",
    "fid_spread": "for S in 0 1000 2000 3000 4000 5000; do .venv/bin/ddpm evaluate --checkpoint bench_out/q3k/ours "
                  "--sampler dpm++2m-sde --steps 20 --n 1000 --metrics fid --seed $S "
                  "--out bench_out/fid_spread/seed$S.json; done",
}
NOTES = {
    "pipeline_redesign": "`old*` ran the code before the pipeline redesign (commit e46ccf2), `new*` the code after "
                         "it, the two at the same time; `1` is mnist only, `2` mnist and cifar10.",
}


# --------------------------------------------------------------------------- the CLI reference

def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every sub-command of ``parser``, nested ones included, as {"train": parser, ...}."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                found[full] = sub
                found.update(subcommands(sub, full + " "))
    return found


def cli_reference() -> str:
    """The CLI reference page: ``ddpm --help``, then one section per sub-command with its ``--help``."""
    from ddpm.cli import build_parser  # imported when the page is built: it imports torch

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page should not depend on it
    try:
        parser = build_parser()
        out = [
            "# Command-line reference\n",
            "Generated at build time from `ddpm.cli.build_parser()` (`docs/hooks.py`): each section is the "
            "sub-command's `--help`, word for word. Timesteps are 0-based everywhere; see "
            "[Getting started](getting-started.md) for a first run.\n",
            "```text\n" + parser.format_help().rstrip() + "\n```\n",
        ]
        for name, sub in subcommands(parser).items():
            first = (sub.description or "").strip().splitlines()
            out.append(f"## ddpm {name}\n")
            if first:
                out.append(first[0] + "\n")
            out.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
        return "\n".join(out)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# --------------------------------------------------------------------------- benchmark result files

def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v) if len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v) \
            else f"({len(v)} values)"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# speed.py's rows: the columns that matter on a page (every field stays in the JSON).
SPEED_COLUMNS = ["preset", "model", "precision", "params", "train_images_per_s", "train_vs_diffusers",
                 "train_share_bf16_peak", "sample_evals_per_s", "sample_vs_diffusers", "sample_share_bf16_peak"]


def json_tables(data) -> str:
    """A JSON result as tables: its list of row dicts as one table, every other field in a key/value table."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return markdown_table(data)
    if not isinstance(data, dict):
        return f"`{_cell(data)}`\n"
    parts = []
    scalars = {k: v for k, v in data.items()
               if k != "command" and not (isinstance(v, list) and v and all(isinstance(r, dict) for r in v))}
    if scalars:
        parts.append(markdown_table([{"field": k, "value": _cell(v)} for k, v in scalars.items()]))
    for k, v in data.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            cols = [c for c in SPEED_COLUMNS if c in v[0]] if "train_images_per_s" in v[0] else None
            parts.append(f"**{k}**" + (" (main columns; every field is in the file)" if cols else "") + ":\n\n"
                         + markdown_table(v, cols))
    return "\n".join(parts)


def csv_table(text: str) -> str:
    return markdown_table(list(csv.DictReader(io.StringIO(text))))


def result_command(path: Path, data) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("command"), str):
        cmd = data["command"]
        return cmd if cmd.startswith((".venv", "python")) else f".venv/bin/python {cmd}"
    return COMMANDS.get(path.parent.name)


def result_files_page(results: Path = RESULTS) -> str:
    """Every JSON and CSV result file under ``results`` as a table, each with the command that wrote it."""
    out = ["# Result files\n",
           "Every result file under `benchmarks/results/`, rendered at build time by `docs/hooks.py` (the files "
           "are what the benchmark scripts wrote; nothing here is retyped). The prose and the other tables are "
           "in [Benchmarks](index.md) and [Measured results](results.md).\n"]
    files = sorted(p for p in results.rglob("*") if p.suffix in (".json", ".csv"))
    if not files:
        out.append("No result files yet.\n")
    for path in files:
        rel = (path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.relative_to(results.parent)).as_posix()
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else None
        out.append(f"## {rel}\n")
        cmd = result_command(path, data)
        out.append(f"Written by:\n\n```bash\n{cmd}\n```\n" if cmd else "Written by: (the file names no command)\n")
        if path.parent.name in NOTES:
            out.append(NOTES[path.parent.name] + "\n")
        out.append(json_tables(data) if data is not None else csv_table(text))
        sibling = path.with_suffix(".md")
        if sibling.exists():
            out.append(f"The script's own summary of this file, `{sibling.name}`:\n")
            summary = sibling.read_text()
            out.append(re.sub(r"^#+ ", "**", summary, count=1, flags=re.M).replace("\n", "**\n", 1)
                       if summary.startswith("#") else summary)
    return "\n".join(out)


# --------------------------------------------------------------------------- pictures

def pictures() -> dict[str, bytes]:
    """The site's pictures, drawn by the library: the forward process on digits, the two schedules."""
    import torch

    from ddpm import make_schedule
    from ddpm.data.datasets import load_dataset
    from ddpm.viz.plots import plot_schedules
    from ddpm.viz.process import save_forward_strip

    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        x0 = load_dataset("digits").images[:4]
        strip = save_forward_strip(x0, make_schedule("linear", 1000), [0, 5, 10, 50, 100, 999],
                                   Path(tmp) / "forward.png", generator=torch.Generator().manual_seed(0),
                                   title="q(x_t | x_0), linear schedule, T = 1000")
        images["images/forward.png"] = Path(strip).read_bytes()
        plot = plot_schedules(Path(tmp) / "schedules.png", 1000)
        images["images/schedules.png"] = Path(plot).read_bytes()
    return images


# --------------------------------------------------------------------------- mkdocs events

def generated_pages() -> dict[str, str | bytes]:
    pages: dict[str, str | bytes] = {
        "cli.md": cli_reference(),
        "benchmarks/index.md": (ROOT / "benchmarks" / "README.md").read_text(),
        "benchmarks/results.md": (ROOT / "benchmarks" / "RESULTS.md").read_text(),
        "benchmarks/result-files.md": result_files_page(),
    }
    pages.update(pictures())
    return pages


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in generated_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def rewrite_repo_links(markdown: str, page_uri: str) -> str:
    """Links from a page of docs/ to a repository file the site carries -> links to the site's page."""
    page_dir = posixpath.dirname(page_uri)

    def fix(m: re.Match) -> str:
        target, anchor = m.group(1), m.group(2) or ""
        if "://" in target:
            return m.group(0)
        # Where the link points in the repository (the page lives at docs/<page_uri>).
        repo_path = posixpath.normpath(posixpath.join("docs", page_dir, target))
        site = REPO_LINKS.get(repo_path)
        if site is None:
            return m.group(0)
        return f"]({posixpath.relpath(site, page_dir or '.')}{anchor})"

    return _LINK.sub(fix, markdown)


def on_page_markdown(markdown, page, config, files):
    if page.file.generated_by is None:  # our own pages; the generated ones are already right
        return rewrite_repo_links(markdown, page.file.src_uri)
    return markdown
