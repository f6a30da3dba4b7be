"""``--malloc``: freed activations stay in the process instead of being faulted back in each step."""
import platform
import subprocess
import sys
import textwrap

import pytest

from reid.engine.allocator import configure_allocator
from reid.engine.config import Config, ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A "step" that allocates, touches and frees 64 MiB ten times; prints the minor page faults it cost.
STEPS = textwrap.dedent("""
    import resource, sys, torch
    from reid.engine.allocator import configure_allocator
    print(configure_allocator(sys.argv[1]), file=sys.stderr)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # warm-up: the first touches always fault
        torch.ones(16 << 20).sum()
    before = faults()
    for _ in range(10):
        torch.ones(16 << 20).sum()
    print(faults() - before)
""")


def page_faults(choice: str) -> int:
    proc = subprocess.run([sys.executable, "-c", STEPS, choice], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's mallopt")
def test_auto_reuses_freed_blocks_instead_of_faulting_them_in_again():
    system, auto = page_faults("system"), page_faults("auto")
    assert system > 10 * 16384 * 0.9  # glibc's default: every 64 MiB block is a fresh mmap, 16,384 pages each time
    assert auto < system / 20  # reused: a few pages, not 160,000


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
