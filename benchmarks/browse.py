"""Feature browser speed: what the user waits for, on one run, in one session of the benchmark.

1. Cold start: `saescope browse COPY` as the user types it (a subprocess serving on a free port),
   where COPY is RUN without a feature database (its SAEs and store linked, not copied), from the
   command to the first served page `/`. Target: 2 minutes for the default run on a 2-core CPU.
2. Latent pages from that server over HTTP while its background logit-lens fill runs: the first
   latent page (it may wait for the model to load), then random latents viewed for the first time
   (logit lens computed on demand) and the same latents again (stored lens). Target: median < 200 ms.
3. `saescope run`'s browse stage (`compute_stats` on another copy without a database), beside one
   evaluation pass over the same held-out rows: `store_metrics` for every SAE, exactly as
   `saescope evaluate` runs it (encode + decode, one loader per SAE).

    python benchmarks/browse.py [RUN] [--pages 200] [--wait-fill]     (default RUN: runs/default)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from machine import cpu  # benchmarks/machine.py, beside this script


def cold_copy(run: Path) -> Path:
    """RUN's SAEs and store linked into a new folder that has no browser database yet."""
    copy = Path(tempfile.mkdtemp(prefix="saescope-browse-bench-"))
    for part in ("saes", "activations"):
        (copy / part).symlink_to((run / part).resolve())
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 60) -> float:
    """Seconds from request to the whole page; anything but 200 is an error."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        r.read()
        assert r.status == 200, (url, r.status)
    return time.perf_counter() - start


def wait_for_first_page(url: str, server: subprocess.Popen, start: float, limit: float = 1800) -> float:
    while time.perf_counter() - start < limit:
        if server.poll() is not None:
            raise SystemExit(f"benchmark: saescope browse exited with code {server.returncode}")
        try:
            get(url, timeout=5)
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"benchmark: no page from {url} after {limit:.0f} s")


def page_stats(seconds: list[float]) -> str:
    ms = sorted(x * 1000 for x in seconds)
    return (
        f"median {statistics.median(ms):.0f} ms, p95 {ms[max(0, round(0.95 * len(ms)) - 1)]:.0f} ms, "
        f"max {ms[-1]:.0f} ms over {len(ms)} latents"
    )


def serve_and_view(run: Path, pages: int, wait_fill: bool, log: Path) -> dict:
    from saescope.browse.db import FeatureDB, db_path

    copy, port = cold_copy(run), free_port()
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "saescope", "browse", str(copy), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        result = {"cold_start": wait_for_first_page(base + "/", server, start)}
        db = FeatureDB(db_path(copy))
        rng = random.Random(0)
        picks = [(name, rng.randrange(db.saes[name].d_sae)) for name in rng.choices(sorted(db.saes), k=pages + 1)]
        result["first_latent"] = get(f"{base}/latent/{picks[0][0]}/{picks[0][1]}")
        result["first_view"] = [get(f"{base}/latent/{n}/{i}") for n, i in picks[1:]]
        result["cached_view"] = [get(f"{base}/latent/{n}/{i}") for n, i in picks[1:]]
        if wait_fill:
            while "logit lens of every latent stored" not in log.read_text():
                if server.poll() is not None:
                    raise SystemExit(f"benchmark: saescope browse exited with code {server.returncode}")
                time.sleep(1)
            result["fill"] = time.perf_counter() - start
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(copy)


def run_stage(run: Path) -> dict:
    """`saescope run`'s browse stage, on a copy without a database."""
    from saescope.browse.stats import compute_stats

    copy = cold_copy(run)
    try:
        start = time.perf_counter()
        t = compute_stats(copy, progress=False)
        return t | {"total": time.perf_counter() - start}
    finally:
        shutil.rmtree(copy)


def eval_pass(run: Path, rows: int) -> float:
    from saescope.activations.loader import ShuffledLoader
    from saescope.activations.store import ActivationStore
    from saescope.browse.suite import list_saes
    from saescope.evaluate.metrics import store_metrics
    from saescope.release.formats import load

    store = ActivationStore(run / "activations")
    start = time.perf_counter()
    for s in list_saes(run):
        sae = load(s.folder)
        loader = ShuffledLoader(store, [s.site.name], batch_size=4096, split="eval", eval_shards=1, drop_last=False)
        assert loader.rows == rows, f"evaluation split has {loader.rows} rows, the browser pass {rows}"
        store_metrics(sae, loader, s.site.name)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="runs/default")
    parser.add_argument("--pages", type=int, default=200, help="random latents viewed (first view, then cached)")
    parser.add_argument("--wait-fill", action="store_true", help="also wait for the background logit lens to finish")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "summary.md").exists():
        print(f"benchmark: {run}/summary.md is missing: finish `saescope run --out {run}` first", file=sys.stderr)
        return 2
    print(f"benchmark: run {run}; CPU: {cpu()}; torch threads {torch.get_num_threads()}")
    log = Path(tempfile.mkstemp(prefix="saescope-browse-bench-", suffix=".log")[1])
    served = serve_and_view(run, args.pages, args.wait_fill, log)
    print(f"saescope browse, no database -> first page served: {served['cold_start']:.1f} s  (target <= 120 s)")
    print(f"  first latent page after that (may wait for the model): {served['first_latent'] * 1000:.0f} ms")
    print(f"  latent pages, first view (lens on demand, fill running): {page_stats(served['first_view'])}")
    print(f"  latent pages, cached view:                               {page_stats(served['cached_view'])}")
    if "fill" in served:
        print(f"  background logit lens of every latent done {served['fill']:.0f} s after the command")
    stage = run_stage(run)
    ev = eval_pass(run, stage["rows"])
    print(
        f"saescope run's browse stage, {stage['saes']} SAEs x {stage['rows']} held-out tokens: {stage['total']:.1f} s "
        f"(encoding {stage['encode']:.1f} s; statistics and SQLite writes {stage['stats_write']:.1f} s, beside it)"
    )
    print(f"evaluation pass over the same rows (store_metrics, every SAE): {ev:.1f} s")
    print(
        f"RATIO browse stage / evaluation pass: {stage['total'] / ev:.2f}x; cold start to first page / evaluation "
        f"pass: {served['cold_start'] / ev:.2f}x"
    )
    print(f"benchmark: done; load average now {os.getloadavg()[0]:.2f}; server log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
