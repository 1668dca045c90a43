"""What the JumpReLU step's safeguards cost a real training step: the revival term with the
trainer's floor under dead latents' Adam moments (`--knob revive_coefficient`, both off at 0), or
the clipping of gradient jolts (`--knob jolt_clip`, off at 0). The default run's 54 SAEs from its
last checkpoint (where some latents are silent past `dead_tokens`, so the term has work to do),
stepped on its own batches, alternating two steps with the part and two without, so that machine
noise hits both alike. Prints the CPU and the ratio of the medians.

    saescope run --out runs/default
    python benchmarks/revival.py runs/default [--steps 60] [--knob jolt_clip]

The steps train on: the SAEs move a little between measurements, the same for both arms.
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import cpu

from saescope.memory import keep_freed_memory
from saescope.run import RunConfig
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a finished `saescope run` folder (its train/checkpoint.pt is read)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--knob", choices=("revive_coefficient", "jolt_clip"), default="revive_coefficient")
    args = p.parse_args()
    keep_freed_memory()
    trainer = Trainer(RunConfig(out=args.run).part(TrainConfig))
    if not trainer.load_checkpoint():
        raise SystemExit(f"no training checkpoint in {args.run}: run `saescope run --out {args.run}` first")
    values = {k: getattr(sae, args.knob) for k, sae in trainer.saes.items()}
    dead = [int((s.tokens_since_fired > s.dead_tokens).sum()) for s in trainer.saes.values()]
    print(f"{cpu()}\n{len(dead)} SAEs from step {trainer.step}; latents dead now: {sum(dead)} (max {max(dead)})")
    times: dict[str, list[float]] = {"with": [], "without": []}
    for i, batch in enumerate(trainer.loader.iterate(0, args.steps, epochs=None)):
        arm = "with" if (i // 2) % 2 == 0 else "without"
        for key, sae in trainer.saes.items():
            setattr(sae, args.knob, values[key] if arm == "with" else 0.0)
        start = time.perf_counter()
        trainer.train_step(batch.acts)
        if i >= 4:  # the first steps warm caches and allocators
            times[arm].append(time.perf_counter() - start)
    med = {arm: statistics.median(t) for arm, t in times.items()}
    for arm, t in times.items():
        print(f"{arm:>7} {args.knob} on: median {med[arm]:.3f} s per step over {len(t)} steps")
    print(f"with / without: {med['with'] / med['without']:.3f}")


if __name__ == "__main__":
    main()
