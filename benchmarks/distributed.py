"""Training throughput with 1 and 2 processes on this machine (torch.distributed, gloo on CPU).

Variants, all on the same synthetic store and the same suite of SAEs:
  1 process x 2 threads     what `saescope train` does on this 2-core box
  1 process x 1 thread      the unit of work each of two workers gets
  2 processes, --parallel data   every batch split in two, gradients all-reduced each step
  2 processes, --parallel sae    the SAEs split in two, every process reads the whole batch

Each variant runs under torchrun (or alone), trains `--warmup` steps untimed, then times
`--steps` steps between two barriers, so process start-up and model building are excluded.
Throughput is global-batch tokens per second for the whole suite (every SAE sees each token).

The store holds sums of 32 random unit directions out of 4096 per row, scaled to E||x||^2 = 1
(a sparse dictionary, as in benchmarks/train_step.py), and the SAEs start with threshold 0.08
so ~2% of latents fire, the sparsity the sparse step is built for.

    python benchmarks/distributed.py [--d-in 640] [--width 4096] [--sites 2] [--coefficients 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saescope import distributed
from saescope.activations.store import ShardColumn
from saescope.io import write_json_atomic
from saescope.train.job import TrainConfig
from saescope.train.normalize import estimate_scale
from saescope.train.trainer import Trainer


def make_store(path: Path, d_in: int, sites: int, rows: int, shard_rows: int) -> None:
    """A float32 store of `sites` sites with sparse-dictionary rows, in saescope's layout."""
    rng = np.random.default_rng(0)
    names = [f"res.{i}" for i in range(sites)]
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path / "store.json",
        {
            "format": "saescope-store-1",
            "sites": names,
            "dtype": "float32",
            "complete": True,
            "rows": rows,
            "model": "synthetic",
        },
    )
    columns = {"tokens": ShardColumn(path / "tokens", 3, "int32", {})}
    columns |= {
        n: ShardColumn(path / n, d_in, "float32", {"site": "res", "layer": i, "d_in": d_in})
        for i, n in enumerate(names)
    }
    for c in columns.values():
        c.folder.mkdir(exist_ok=True)
    for shard in range(rows // shard_rows):
        ids = np.arange(shard * shard_rows, (shard + 1) * shard_rows, dtype=np.int32)
        columns["tokens"].write_shard(shard, np.stack([ids % 600, ids // 64, ids % 64 + 1], 1).astype(np.int32))
        for n in names:
            dictionary = rng.standard_normal((4096, d_in)).astype(np.float32)
            dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
            picks = rng.integers(0, 4096, (shard_rows, 32))
            x = (dictionary[picks] * rng.exponential(1.0, (shard_rows, 32, 1)).astype(np.float32)).sum(1)
            columns[n].write_shard(shard, x.astype(np.float32))


def worker(args: argparse.Namespace) -> None:
    """One process of a variant: time `steps` training steps of its share of the suite."""
    distributed.setup()
    cfg = TrainConfig(
        store=args.store,
        out=args.out,
        widths=[args.width],
        l0_coefficients=[1e-3 * 2**i for i in range(args.coefficients)],
        batch_size=args.batch,
        train_tokens=args.batch * (args.warmup + args.steps),
        lr=7e-5,
        lr_warmup_steps=1,
        l0_warmup_steps=1,
        buffer_rows=args.batch * 4,
        eval_shards=1,
        device="cpu",
        norm_rows=args.batch,
        knobs="threshold_init=0.08",
        parallel=args.parallel,
    )
    trainer = Trainer(cfg)
    trainer.scales = {s: estimate_scale(trainer.store, s, cfg.norm_rows) for s in trainer.sites}
    batches = trainer.loader.iterate(0, args.warmup + args.steps, epochs=None)
    for _ in range(args.warmup):
        trainer.train_step(next(batches).acts)
        trainer.step += 1
    distributed.barrier()
    started = time.perf_counter()
    for batch in batches:  # reading the shards is part of what is timed
        trainer.train_step(batch.acts)
        trainer.step += 1
    distributed.barrier()
    elapsed = time.perf_counter() - started
    if distributed.is_main():
        Path(args.result).write_text(
            json.dumps({"seconds": elapsed, "tokens_per_s": args.steps * args.batch / elapsed, "saes": trainer.n_suite})
        )
    distributed.teardown()


def run_variant(args: argparse.Namespace, nproc: int, threads: int, parallel: str, tmp: Path) -> dict:
    result = tmp / f"{nproc}-{threads}-{parallel}.json"
    flags = [
        "--worker",
        "--store",
        str(tmp / "store"),
        "--out",
        str(tmp / "out"),
        "--result",
        str(result),
        "--parallel",
        parallel,
        *[
            f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("d_in", "width", "batch", "coefficients", "steps", "warmup")
        ],
    ]
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*launcher, __file__, *flags], env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--coefficients", type=int, default=2, help="SAEs per site")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--parallel", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = args.batch * (args.warmup + args.steps + 2)
        make_store(tmp / "store", args.d_in, args.sites, rows, args.batch)
        variants = [
            ("1 process x 2 threads", 1, 2, "auto"),
            ("1 process x 1 thread", 1, 1, "auto"),
            ("2 processes, --parallel data", 2, 1, "data"),
            ("2 processes, --parallel sae", 2, 1, "sae"),
        ]
        results = {name: run_variant(args, n, t, p, tmp) for name, n, t, p in variants}
    default = results["1 process x 2 threads"]["tokens_per_s"]
    unit = results["1 process x 1 thread"]["tokens_per_s"]
    n_saes = results["1 process x 2 threads"]["saes"]
    print(
        f"{n_saes} JumpReLU SAEs (d_in {args.d_in}, width {args.width}), batch {args.batch}, {args.steps} timed steps"
    )
    print(f"{'variant':32s}{'tokens/s':>10s}{'vs 1 proc x 2 threads':>24s}{'vs 1 proc x 1 thread':>24s}")
    for name, r in results.items():
        print(
            f"{name:32s}{r['tokens_per_s']:10.0f}{r['tokens_per_s'] / default:23.2f}x{r['tokens_per_s'] / unit:23.2f}x"
        )


if __name__ == "__main__":
    main()
