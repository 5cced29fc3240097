"""ddpm.runtime's cpu_allocator: glibc keeps freed memory for reuse, so a large tensor made again and again
stops faulting its pages in from the system every time."""

import subprocess
import sys
import textwrap

import pytest

from ddpm import runtime as rt
from ddpm.errors import UserError

GLIBC = rt._glibc() is not None

# Makes and frees a 64 MiB tensor 20 times (above glibc's largest mmap threshold, so by default every one
# is a fresh mmap whose 16,384 pages fault in), then prints the minor page faults of those 20 rounds.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from ddpm import runtime as rt
    rt.configure_cpu_allocator(sys.argv[1], "cpu")
    x = torch.ones(16 << 20); del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        x = torch.ones(16 << 20); del x
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(choice: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, choice], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_stops_a_large_tensor_faulting_its_pages_in_each_time():
    system, keep = page_faults("system"), page_faults("keep")
    assert system > 20 * 16_000 * 0.9  # every round faulted its 16,384 pages in again
    # A few rounds may still grow the heap while small allocations between them settle; then it is reused.
    assert keep <= 5 * 16_384 < system / 3, (system, keep)


def test_auto_keeps_on_a_glibc_cpu_only_and_unknown_names_are_one_line_errors():
    assert rt.resolve_cpu_allocator("auto", "cpu") == ("keep" if GLIBC else "system")
    assert rt.resolve_cpu_allocator("auto", "cuda") == "system"
    assert rt.resolve_cpu_allocator("system", "cpu") == "system"
    with pytest.raises(UserError, match="unknown cpu_allocator 'fast'"):
        rt.resolve_cpu_allocator("fast", "cpu")
