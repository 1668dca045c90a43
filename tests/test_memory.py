"""saescope.memory in a fresh process each time: torch reads THP_MEM_ALLOC_ENABLE at its first large
allocation, so the test process itself cannot switch it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saescope.memory import HUGE_PAGES_VARIABLE

CHILD = """
import torch
from saescope.memory import keep_freed_memory
keep_freed_memory()
kept = [torch.ones(1 << 24) for _ in range(4)]  # 4 x 64 MiB
huge = [line.split()[1] for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")]
print(huge[0] if huge else "?")
"""

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_kib(env: dict) -> str:
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return run.stdout.strip()


@pytest.mark.skipif(
    not THP_MODE.exists() or "[never]" in THP_MODE.read_text(), reason="kernel without transparent huge pages"
)
def test_jobs_back_large_tensors_with_huge_pages_unless_the_environment_says_not():
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}
    assert int(huge_kib(env)) >= 128 * 1024  # most of the 256 MiB
    if "[madvise]" in THP_MODE.read_text():  # under [always] the kernel gives huge pages to everything
        assert int(huge_kib(env | {HUGE_PAGES_VARIABLE: "0"})) == 0
