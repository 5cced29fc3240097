"""The documentation site's generated pages (docs/hooks.py), without running mkdocs."""

import json
import re

import pytest

from tests.conftest import REPO as ROOT
from tests.conftest import load_script

pytest.importorskip("mkdocs")


@pytest.fixture(scope="module")
def hooks():
    return load_script("docs/hooks.py", "docs_hooks")


def test_cli_reference_has_every_subcommand(hooks):
    from ddpm.cli import build_parser

    page = hooks.cli_reference()
    names = hooks.subcommands(build_parser())
    assert {"train", "sample"} <= set(names)
    for name, parser in names.items():
        section = re.search(rf"^## ddpm {re.escape(name)}\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S)
        assert section, f"no section for ddpm {name}"
        # The section is the parser's own --help (usage line and the examples every sub-command ends with).
        assert f"usage: ddpm {name}" in section.group(1)
        assert "examples:" in section.group(1)


def test_result_files_page_names_every_file_and_its_command(hooks, tmp_path):
    (tmp_path / "speed_x").mkdir()
    (tmp_path / "speed_x" / "a.json").write_text(json.dumps(
        {"device": "cpu", "rows": [{"preset": "mnist", "train_images_per_s": 12.5}], "command": "benchmarks/x.py"}))
    (tmp_path / "b.csv").write_text("steps,fid\n10,1.5\n")
    page = hooks.result_files_page(tmp_path)
    assert "| mnist | 12.5 |" in page and "| 10 | 1.5 |" in page
    assert ".venv/bin/python benchmarks/x.py" in page


def test_repo_links_are_rewritten_to_site_pages(hooks):
    md = "[a](../../benchmarks/RESULTS.md#speed) [b](../cli.md) [c](https://x.org/README.md)"
    out = hooks.rewrite_repo_links(md, "how-to/speed.md")
    assert "(../benchmarks/results.md#speed)" in out
    assert "(../cli.md)" in out and "(https://x.org/README.md)" in out


def test_readme_links_into_docs_exist():
    readme = (ROOT / "README.md").read_text()
    targets = {m.split("#")[0] for m in re.findall(r"\]\(((?:docs|notebooks)/[^)\s]+)\)", readme)}
    assert targets, "the README links to no documentation page"
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README links to missing files: {missing}"
