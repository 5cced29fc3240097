"""The README's two set-up commands on a fresh clone, timed: what a new user waits for.

Reads the first two ``bash`` blocks under the README's "Set up and run" heading (the install-and-train
command and the install-and-test command), clones the repository's committed HEAD into a new temporary
folder for each, and runs the block there with ``bash -c`` in an environment without this shell's
virtual environment, so each starts from nothing: a new venv, a new install from the package index,
then the work. Writes OUT/fresh_clone.json (commit, Python, CPU, each command's wall time and exit status)
and OUT/fresh_clone.md; each command's output goes to LOGS/<name>.log (``--logs``, outside the results).

    .venv/bin/python benchmarks/fresh_clone.py --out benchmarks/results/fresh_clone     # ~20 min on 2 cores
    .venv/bin/python benchmarks/fresh_clone.py --only test --out bench_out/fresh_test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddpm.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_line, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("setup", "test")


def readme_commands(readme: str) -> dict[str, str]:
    """{"setup": ..., "test": ...}: the first two bash blocks of the README's "Set up and run" section."""
    section = re.search(r"^## Set up and run\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    if not section:
        raise SystemExit("README.md has no '## Set up and run' section")
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), flags=re.S)
    if len(blocks) < 2:
        raise SystemExit("README.md's 'Set up and run' section has fewer than two bash blocks")
    return {name: block.strip() for name, block in zip(NAMES, blocks)}


def clean_env() -> dict[str, str]:
    """This environment without the virtual environment that runs this script (its bin/ off PATH)."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    hidden = {str(Path(sys.executable).parent)} | ({str(Path(venv) / "bin")} if venv else set())
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in hidden)
    env.pop("PYTHONPATH", None)
    return env


def run_fresh(name: str, command: str, repo: Path, logs: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"ddpm-fresh-{name}-"))
    try:
        clone = work / "ddpm"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        print(f"{name}: {command}  (output: {logs / f'{name}.log'}; minutes, no bar: tail it)", flush=True)
        t0 = time.perf_counter()
        with open(logs / f"{name}.log", "w") as log:
            rc = subprocess.run(["bash", "-c", command], cwd=clone, env=clean_env(), stdout=log,
                                stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        print(f"{name}: exit {rc} after {wall / 60:.1f} min", flush=True)
        return {"name": name, "command": command, "wall_s": wall, "exit_status": rc}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def to_markdown(r: dict) -> str:
    lines = [f"# The README's set-up commands on a fresh clone (commit {r['commit'][:10]})", "",
             *cpu_line(r.get("cpu"), "fresh_clone.json"),
             f"Python {r['python']}; each command in a new clone, from no virtual environment.", "",
             "| command | minutes | exit status |", "|---|---|---|"]
    for c in r["commands"]:
        lines.append(f"| {c['name']} | {c['wall_s'] / 60:.1f} | {c['exit_status']} |")
    lines += ["", *[f"- {c['name']}: `{c['command']}`" for c in r["commands"]], "",
              f"Command: `{r['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=NAMES, help="run one of the two commands (default: both)")
    p.add_argument("--out", default="bench_out/fresh_clone")
    p.add_argument("--logs", default="bench_out/fresh_clone_logs", help="folder for each command's output")
    args = p.parse_args(argv)
    out, logs = Path(args.out), Path(args.logs)
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    commands = readme_commands((ROOT / "README.md").read_text())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    python = subprocess.run(["bash", "-c", "python3 --version"], env=clean_env(), capture_output=True,
                            text=True).stdout.strip().removeprefix("Python ")
    rows = [run_fresh(name, cmd, ROOT, logs) for name, cmd in commands.items() if args.only in (None, name)]
    result = {"commit": commit, "python": python, "commands": rows, **provenance("fresh_clone.py", argv, "cpu")}
    write_text_atomic(out / "fresh_clone.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "fresh_clone.md", to_markdown(result))
    print(to_markdown(result))
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
