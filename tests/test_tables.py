"""benchmarks/tables.py: the tables of the benchmark pages are copies of the result files' tables."""

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def tables():
    return load_script("benchmarks/tables.py", "bench_tables")


def test_every_table_block_of_the_pages_matches_its_result_file(tables):
    assert tables.stale_pages() == [], "run .venv/bin/python benchmarks/tables.py"


def test_a_block_is_rewritten_from_the_chosen_table_and_columns(tables, tmp_path):
    (tmp_path / "r.md").write_text("# title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n\n| x | y | z |\n"
                                   "|---|---|---|\n| 3 | 4 | 5 |\n| 6 | 7 | 8 |\n")
    page = ("before\n<!-- table: r.md#2 columns=z;x -->\n| old |\n<!-- /table -->\nafter\n"
            "<!-- table: r.md -->\n<!-- /table -->\n")
    out = tables.sync(page, tmp_path)
    assert out == ("before\n<!-- table: r.md#2 columns=z;x -->\n| z | x |\n| --- | --- |\n| 5 | 3 |\n| 8 | 6 |\n"
                   "<!-- /table -->\nafter\n<!-- table: r.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /table -->\n")
    assert tables.sync(out, tmp_path) == out


def test_a_repeated_column_name_is_picked_by_its_occurrence(tables, tmp_path):
    (tmp_path / "r.md").write_text("| a | vs | b | vs |\n|---|---|---|---|\n| 1 | 2 | 3 | 4 |\n")
    out = tables.sync("<!-- table: r.md columns=a;vs#2;vs -->\n<!-- /table -->\n", tmp_path)
    assert "| 1 | 4 | 2 |" in out


@pytest.mark.parametrize("spec, message", [("gone.md", "no file gone.md"),
                                           ("r.md#3", r"has 1 table\(s\), not a table 3"),
                                           ("r.md columns=a;q", "no column 'q'"),
                                           ("r.md columns=a#2", "no column 'a#2'")])
def test_a_block_naming_a_missing_file_table_or_column_is_an_error(tables, tmp_path, spec, message):
    (tmp_path / "r.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    with pytest.raises(tables.TableError, match=message):
        tables.sync(f"<!-- table: {spec} -->\n<!-- /table -->\n", tmp_path)
