"""What fresh memory pages cost on this machine, and what saescope does about it, in one run.

    python benchmarks/pages.py [--mb 800] [--dir /tmp]

1. Copy MB megabytes into freshly allocated memory vs into memory already used once.
2. Allocate, fill and free a tensor of MB megabytes three times, in a child process with glibc's
   defaults and in one after `saescope.memory.keep_freed_memory()`.
3. Write MB megabytes to a new shard file buffered (page cache) vs through `ShardFile`'s
   O_DIRECT path, each including fsync.
4. The memory-bound part of a default run's training step, with `keep_freed_memory` in both children,
   once on 4 KiB pages (THP_MEM_ALLOC_ENABLE=0) and once on the 2 MiB pages it asks torch for: --saes
   SAEs' 640 x 2048 encoder and decoder each cast to bfloat16, a bfloat16 gradient of that size cast
   back, then one fused Adam step over all of them (median of 7 steps after 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from harvest import timed  # benchmarks/ is on sys.path when a script in it runs

from saescope.activations.store import ShardFile, new_staging
from saescope.memory import HUGE_PAGES_VARIABLE

CHILD = """
import sys, time, torch
from saescope.memory import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
n = int(sys.argv[2]) << 20
src = torch.ones(n, dtype=torch.uint8)
torch.empty(n, dtype=torch.uint8).copy_(src)  # first touch happens in both modes
start = time.perf_counter()
for _ in range(3):
    torch.empty(n, dtype=torch.uint8).copy_(src)
print(time.perf_counter() - start)
"""

STEP_CHILD = """
import statistics, sys, time, torch
from saescope.memory import keep_freed_memory
keep_freed_memory()
params = [torch.nn.Parameter(torch.randn(640, 2048) * 0.03) for _ in range(2 * int(sys.argv[1]))]
opt = torch.optim.Adam(params, lr=1e-4, fused=True)
times = []
for _ in range(9):
    start = time.perf_counter()
    for w in params:
        w.grad = w.to(torch.bfloat16).mul_(1e-3).float()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(statistics.median(times[2:]))
"""


def child_seconds(code: str, *args: str, env: dict | None = None) -> float:
    run = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, env=env)
    return float(run.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=800)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--saes", type=int, default=54, help="SAEs in the training-step part (a default run has 54)")
    args = p.parse_args()
    n = args.mb << 20
    src = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    reused = np.empty(n, np.uint8)
    reused[:] = src
    fresh_copy = timed(lambda: np.empty(n, np.uint8).__setitem__(slice(None), src))
    reused_copy = timed(lambda: reused.__setitem__(slice(None), src))

    child = {mode: child_seconds(CHILD, mode, str(args.mb)) for mode in ("default", "keep")}
    step = {
        pages: child_seconds(STEP_CHILD, str(args.saes), env=os.environ | {HUGE_PAGES_VARIABLE: flag})
        for pages, flag in (("4k", "0"), ("2m", "1"))
    }

    folder = Path(tempfile.mkdtemp(dir=args.dir))
    rows = src.reshape(-1, 1024)

    def write(staging) -> None:
        shard = ShardFile(folder / "shard.bin", staging)
        shard.append(rows)
        shard.finish()
        (folder / "shard.bin").unlink()

    buffered, direct = timed(lambda: write(None)), timed(lambda: write(new_staging()))
    folder.rmdir()
    print(f"{args.mb} MB")
    print(
        f"copy into fresh memory  {fresh_copy:7.2f} s   into reused memory {reused_copy:7.2f} s   "
        f"-> {fresh_copy / reused_copy:.1f}x"
    )
    print(
        f"3 x allocate+fill, glibc defaults {child['default']:7.2f} s   keep_freed_memory {child['keep']:7.2f} s   "
        f"-> {child['default'] / child['keep']:.1f}x"
    )
    print(f"shard write buffered    {buffered:7.2f} s   O_DIRECT {direct:7.2f} s   -> {buffered / direct:.1f}x")
    print(
        f"{args.saes} SAEs' weight casts + Adam, 4 KiB pages {step['4k']:7.3f} s   2 MiB pages {step['2m']:7.3f} s   "
        f"-> {step['4k'] / step['2m']:.2f}x"
    )


if __name__ == "__main__":
    main()
