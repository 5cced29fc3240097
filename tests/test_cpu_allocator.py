"""ddpm.runtime's cpu_allocator: glibc keeps freed memory for reuse, so a large tensor made again and again
stops faulting its pages in from the system every time."""

import subprocess
import sys
import textwrap

import pytest

from ddpm import runtime as rt
from ddpm.errors import UserError

GLIBC = rt._glibc() is not None

# Makes and frees a 64 MiB tensor 30 times (above glibc's largest mmap threshold, so by default every one
# is a fresh mmap whose 16,384 pages fault in), then prints the minor page faults of each round.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from ddpm import runtime as rt
    rt.configure_cpu_allocator(sys.argv[1], "cpu")
    x = torch.ones(16 << 20); del x
    faults = []
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 << 20); del x
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")
PAGES = 16_384  # 64 MiB in 4 KiB pages


def page_faults(choice: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, choice], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()[-30:]]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_stops_a_large_tensor_faulting_its_pages_in_each_time():
    system, keep = page_faults("system"), page_faults("keep")
    assert all(n > 0.9 * PAGES for n in system), system  # every round faulted all its pages in again
    # The first few rounds may still grow the heap (how many depends on where small allocations land between
    # them); after that the freed block is reused and a round faults (almost) nothing in.
    assert sum(n > 0.1 * PAGES for n in keep) <= 15, keep
    assert all(n < 0.1 * PAGES for n in keep[-5:]), keep


def test_auto_keeps_on_a_glibc_cpu_only_and_unknown_names_are_one_line_errors():
    assert rt.resolve_cpu_allocator("auto", "cpu") == ("keep" if GLIBC else "system")
    assert rt.resolve_cpu_allocator("auto", "cuda") == "system"
    assert rt.resolve_cpu_allocator("system", "cpu") == "system"
    with pytest.raises(UserError, match="unknown cpu_allocator 'fast'"):
        rt.resolve_cpu_allocator("fast", "cpu")


def test_page_faults_benchmark_measures_each_allocator_in_its_own_process(tmp_path):
    """benchmarks/page_faults.py runs a training step under each allocator (a process each, since the
    setting is process-wide) and writes what getrusage counted."""
    import json
    import os

    from tests.conftest import load_script

    module = load_script("benchmarks/page_faults.py")
    r = module.main(["--preset", "digits", "--batch", "8", "--steps", "1", "--allocators", "system",
                     "--out", str(tmp_path)])
    (row,) = r["allocators"]
    assert row["allocator"] == "system" and row["batch"] == 8
    assert row["pid"] != os.getpid()  # measured in a process of its own
    assert row["minor_faults"] > 0 and row["elapsed_s"] > 0 and row["user_s"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["command"].startswith("python benchmarks/page_faults.py")
    assert "| system |" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit):
        module.main(["--allocators", "bogus", "--out", str(tmp_path)])
