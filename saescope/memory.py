"""Keep freed memory in the process instead of handing it back to the operating system.

glibc serves every allocation above 32 MiB with its own mmap and unmaps it on free, and trims the
heap as soon as its top is free. Each forward pass therefore faults in all of its activation
memory again, and on virtual machines that report free pages to the host (as these 2-core
machines do) a fresh page costs microseconds: `python benchmarks/pages.py` copied 800 MB into
fresh memory in 1.98 s and into reused memory in 0.08 s, and allocating and filling 800 MB three
times took 0.93 s with glibc's defaults and 0.14 s after `keep_freed_memory`. With large blocks
served from the heap and no trimming, each batch reuses the pages of the one before. The price is
that the process keeps its peak heap until exit, which is what a harvest or a training run wants anyway.

It also asks torch to back its large CPU tensors with 2 MiB pages (`THP_MEM_ALLOC_ENABLE`, read by
torch's CPU allocator at its first large allocation; these kernels give huge pages only to memory
that asks for them). A default run's training step streams ~0.7 GB of weights, gradients and Adam
moments each step: `python benchmarks/pages.py` timed its weight casts and Adam for 54 SAEs at 0.133 s
on 4 KiB pages and 0.104 s on 2 MiB pages (1.27x); the whole step of `saescope run`'s 54 SAEs ran
7-15% faster in four interleaved runs, and the held-out evaluation the same within noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process, and torch's to huge pages unless the environment
    already says (`THP_MEM_ALLOC_ENABLE=0` keeps 4 KiB pages); a no-op (False) where there is no glibc."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _done = ok
    return ok
