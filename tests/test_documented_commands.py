"""The commands the README, the docs and the benchmark page show are ones the CLI accepts (no mkdocs needed,
so this runs in the default suite)."""

import re
import shlex

from tests.conftest import REPO as ROOT


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``ddpm SUBCOMMAND ...`` (or ``python -m ddpm ...``) in the code blocks of the
    README, the docs and the benchmark page, with ``\\`` continuations joined, comments dropped and shell
    variables (``$S``) read as 0."""
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", page.read_text(), flags=re.M | re.S)
        for line in (line for block in blocks for line in block.replace("\\\n", " ").splitlines()):
            for part in re.split(r"&&|;|\|", re.sub(r"\$\w+", "0", line.split(" #")[0])):
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
