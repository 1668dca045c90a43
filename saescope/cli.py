"""`saescope` command line: one subcommand per job, each job's options are its config dataclass.

Errors caused by input are printed as one line (`saescope: error: ...`) with exit code 2, never
as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.config import add_arguments, from_namespace, option
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.release.formats import release
from saescope.run import RunConfig, run, summary_table
from saescope.train.trainer import TrainConfig, Trainer


@dataclass
class SitesConfig:
    model: str = option("embedded", "model: 'embedded', a local folder or a Hugging Face name")


def cmd_sites(cfg: SitesConfig) -> None:
    from saescope.models.loading import load_model
    from saescope.models.sites import family_of, list_sites

    model, _ = load_model(cfg.model, "bfloat16", "cpu")
    family_of(model)
    print(f"{'site':8s}{'layers':>8s}{'width':>8s}   model: {cfg.model} ({model.config.model_type})")
    for kind, layers, width in list_sites(model):
        print(f"{kind:8s}{layers:8d}{width:8d}")


def cmd_harvest(cfg: HarvestConfig) -> None:
    path = harvest(cfg)
    print(f"saescope: activation store ready in {path}")


def cmd_train(cfg: TrainConfig) -> None:
    saes = Trainer(cfg).train()
    print(f"saescope: {len(saes)} trained SAEs in {cfg.out}/saes")


def cmd_evaluate(cfg: EvalConfig) -> None:
    evaluate(cfg)
    print(summary_table(cfg.out))


@dataclass
class ReleaseConfig:
    out: str = option("runs/default", "run folder whose evaluated SAEs are released")
    dest: str = option("", "release folder (default: OUT/release)")


def cmd_release(cfg: ReleaseConfig) -> None:
    print(f"saescope: release written to {release(cfg.out, cfg.dest or None)}")


JOBS: dict[str, tuple[type, object, str]] = {
    "run": (RunConfig, run, "the whole pipeline: harvest, train, evaluate, release, summary"),
    "sites": (SitesConfig, cmd_sites, "list a model's sites and their widths"),
    "harvest": (HarvestConfig, cmd_harvest, "store activations of many sites from one forward pass per batch"),
    "train": (TrainConfig, cmd_train, "train SAEs for many sites, widths and sparsities from one read of a store"),
    "evaluate": (EvalConfig, cmd_evaluate, "L0, FVU, delta LM loss, KL, CE recovered, dead/dense latents per SAE"),
    "release": (ReleaseConfig, cmd_release, "write evaluated SAEs in Gemma Scope's layout with suite.json"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saescope", description="Sparse autoencoders for every layer of a language model.")
    sub = parser.add_subparsers(dest="job")
    for name, (cls, _, helptext) in JOBS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        add_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["run"] if "run" in JOBS else ["--help"]
    args = build_parser().parse_args(argv)
    cls, fn, _ = JOBS[args.job]
    try:
        fn(from_namespace(cls, args))
    except SaescopeError as e:
        print(f"saescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saescope: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
