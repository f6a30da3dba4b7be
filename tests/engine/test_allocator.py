"""``--malloc``: freed activations stay in the process instead of being faulted back in each step."""
import platform
import subprocess
import sys
import textwrap

import pytest

from reid.engine.allocator import configure_allocator
from reid.engine.config import Config, ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Ten "steps" that each allocate, touch and free 64 MiB (16,384 pages); prints each step's minor
# page faults.
STEPS = textwrap.dedent("""
    import resource, sys, torch
    from reid.engine.allocator import configure_allocator
    print(configure_allocator(sys.argv[1]), file=sys.stderr)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # warm-up: the first touches always fault
        torch.ones(16 << 20).sum()
    per_step = []
    for _ in range(10):
        before = faults()
        torch.ones(16 << 20).sum()
        per_step.append(faults() - before)
    print(*per_step)
""")
BLOCK_PAGES = 16384


def page_faults_per_step(choice: str) -> list:
    proc = subprocess.run([sys.executable, "-c", STEPS, choice], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return sorted(int(n) for n in proc.stdout.split())


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt")
def test_auto_reuses_freed_blocks_instead_of_faulting_them_in_again():
    system, auto = page_faults_per_step("system"), page_faults_per_step("auto")
    # glibc's default: every step's block is a fresh mmap, faulted in page by page
    assert min(system) > 0.9 * BLOCK_PAGES
    # reused: a typical step faults a few pages, not 16,384. (The median, because the kernel may
    # still fault a block in now and then on a loaded machine: a CI run once counted two blocks'
    # worth of faults over the ten steps.)
    assert auto[len(auto) // 2] < BLOCK_PAGES / 20


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt")
def test_the_choice_is_described_and_system_undoes_auto():
    assert configure_allocator("auto").startswith("malloc reuse (auto: glibc keeps freed blocks")
    assert configure_allocator("auto").startswith("malloc reuse")  # idempotent
    assert configure_allocator("system") == "malloc system (--malloc system: the C library's defaults)"


def test_a_bad_choice_is_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"malloc: got 'jemalloc', expected one of auto, system"):
        configure_allocator("jemalloc")
    with pytest.raises(ConfigError, match=r"malloc: got 'tcmalloc', expected one of auto, system"):
        Config(malloc="tcmalloc").validate()
