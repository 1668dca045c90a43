"""Feature browser speed, measured on one run in one process.

1. The statistics pass against one evaluation pass over the same held-out tokens: the evaluation
   pass is `store_metrics` for every SAE, exactly as `saescope evaluate` runs it (encode + decode,
   one loader per SAE). Reported: the streaming store pass alone (target < 1.5x), and the total
   including the weight-only analyses (logit lens over the whole vocabulary, decoder cosines) and
   the SQLite writes.
2. Latent page render time: median over 200 random latents, through the real app (HTTP request to
   HTML response) with FastAPI's test client. Target < 200 ms.

    python benchmarks/browse.py [RUN]       (default: runs/default, once its summary.md exists)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch


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


def page_times(run: Path, n: int, seed: int = 0) -> list[float]:
    from fastapi.testclient import TestClient

    from saescope.browse.app import create_app

    app = create_app(run)
    client = TestClient(app)
    db = app.state.db
    rng = random.Random(seed)
    picks = [(name, rng.randrange(db.saes[name].d_sae)) for name in rng.choices(sorted(db.saes), k=n)]
    client.get(f"/latent/{picks[0][0]}/{picks[0][1]}")  # warm-up: first request imports and opens things
    times = []
    for name, latent in picks:
        start = time.perf_counter()
        r = client.get(f"/latent/{name}/{latent}")
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, (name, latent, r.status_code)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="runs/default")
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "summary.md").exists():
        print(f"benchmark: {run}/summary.md is missing: finish `saescope run --out {run}` first", file=sys.stderr)
        return 2
    from saescope.browse.stats import compute_stats

    print(f"benchmark: run {run}, torch threads {torch.get_num_threads()}")
    start = time.perf_counter()
    t = compute_stats(run, force=True)
    total = time.perf_counter() - start
    ev = eval_pass(run, t["rows"])
    print(f"statistics pass over {t['rows']} held-out tokens, {t['saes']} SAEs:")
    print(f"  store pass (encode, sparse stats, examples): {t['store_pass']:.1f} s")
    print(f"  weight-only (logit lens, decoder cosines):   {t['weights']:.1f} s")
    print(f"  SQLite writes:                               {t['write']:.1f} s")
    print(f"  total incl. model load:                      {total:.1f} s")
    print(f"evaluation pass (store_metrics, every SAE):    {ev:.1f} s")
    print(f"RATIO store pass / evaluation pass:  {t['store_pass'] / ev:.2f}x  (target < 1.5x)")
    print(f"RATIO whole browse stats / evaluation pass: {total / ev:.2f}x")
    times = page_times(run, args.pages)
    ms = sorted(x * 1000 for x in times)
    print(f"latent page over {len(ms)} random latents: median {statistics.median(ms):.1f} ms, "
          f"p95 {ms[int(0.95 * len(ms)) - 1]:.1f} ms, max {ms[-1]:.1f} ms  (target median < 200 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
