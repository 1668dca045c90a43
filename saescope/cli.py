"""`saescope` command line: one subcommand per job, each job's options are its config dataclass.

Errors caused by input are printed as one line (`saescope: error: ...`) with exit code 2, never
as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from saescope import distributed
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.compare import CompareConfig, compare
from saescope.config import (
    RUN_FOLDER,
    add_arguments,
    changed_fields,
    from_namespace,
    option,
    preset_values,
    read_config,
)
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import metrics_file, summary_rows
from saescope.evaluate.report import suite_summary
from saescope.evaluate.suite import SUITE_HELP, SuiteConfig, run_suite
from saescope.memory import keep_freed_memory
from saescope.outputs import check_outside_stores, check_writable
from saescope.release.export import EXPORT_FORMATS
from saescope.release.formats import release
from saescope.release.interop import FORMATS
from saescope.run import RunConfig, run, summary_table, write_readme_table
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer


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
    if distributed.is_main():
        print(f"saescope: activation store ready in {path}")


def cmd_train(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    trainer.train()
    if distributed.is_main():
        print(f"saescope: {trainer.n_suite} trained SAEs in {cfg.out}/saes")


# Settings that say how fast a training runs or where its folder now lies, not what it trains: a
# resume may change them.
RUNTIME_FIELDS = ("out", "device", "parallel", "sae_groups")


def refuse_changed_training(cfg: TrainConfig, force: bool) -> None:
    """A checkpoint in OUT/train belongs to the config.json beside it: resuming it with other
    settings would keep the old weights under a config that no longer describes them. Refuse,
    or with --force start that training again from scratch."""
    train = Path(cfg.out) / "train"
    checkpoints = sorted(train.glob("checkpoint*.pt"))
    if not checkpoints or not (train / "config.json").exists():
        return
    try:
        saved = json.loads((train / "config.json").read_text())
        changed = changed_fields(saved, cfg, RUNTIME_FIELDS) if isinstance(saved, dict) else ["config.json: no object"]
    except (OSError, ValueError):
        changed = ["config.json is unreadable"]
    if changed and not force:
        raise SaescopeError(
            f"--out {cfg.out} already holds a training with other settings ({'; '.join(changed)}): "
            f"choose another --out, or pass --force to train again from scratch there"
        )
    if changed:
        for path in [*checkpoints, train / "log.jsonl"]:
            path.unlink(missing_ok=True)


def cmd_evaluate(cfg: SuiteConfig) -> None:
    run_suite(cfg)
    print(suite_summary(cfg))


@dataclass
class ReleaseConfig:
    out: str = option(RUN_FOLDER, "run folder whose evaluated SAEs are released")
    dest: str = option("", "release folder (default: OUT/release)")


def cmd_release(cfg: ReleaseConfig) -> None:
    print(f"saescope: release written to {release(cfg.out, cfg.dest or None)}")


@dataclass
class LoadConfig:
    path: str = option("", "SAE folder or file, or Hugging Face id OWNER/REPO[/FOLDER] (also positional)")
    format: Literal[("", *FORMATS)] = option("", "the SAE's format (default: detected)")
    positional: ClassVar[tuple[str, ...]] = ("path",)


def cmd_load(cfg: LoadConfig) -> None:
    from saescope.release.formats import read

    if not cfg.path:
        raise SaescopeError("no SAE given: pass a folder, file or hub id, e.g. `saescope load runs/x/release/res/...`")
    print(read(cfg.path, cfg.format or None).summary())


@dataclass
class ExportConfig:
    format: Literal[EXPORT_FORMATS] = option("gemma-scope", "the format to write")
    src: str = option("", "a run folder, a release, a folder of SAEs, one SAE, or a hub id (also positional)")
    dest: str = option("", "output folder (also positional)")
    source_format: Literal[("", *FORMATS)] = option("", "format of SRC's SAEs (default: detected)")
    store: str = option("", "neuronpedia: activation store for top activations (default: SRC/activations)")
    model: str = option("", "neuronpedia: model for logit-lens tokens (default: the SAE's recorded model)")
    positional: ClassVar[tuple[str, ...]] = ("src", "dest")


def cmd_export(cfg: ExportConfig) -> None:
    from saescope.release.export import export

    if not cfg.src or not cfg.dest:
        raise SaescopeError("export needs SRC and DEST: `saescope export --format saelens RUN_OR_SAE OUT`")
    written = export(
        cfg.src,
        cfg.dest,
        cfg.format,
        source_format=cfg.source_format or None,
        store=cfg.store or None,
        model=cfg.model or None,
    )
    print(f"saescope: {len(written)} SAE(s) written as {cfg.format} under {cfg.dest}")


@dataclass
class PushConfig:
    release: str = option(f"{RUN_FOLDER}/release", "release folder (with suite.json) or run folder")
    repo: str = option("", "OWNER/NAME; per-kind layout pushes OWNER/NAME-res, OWNER/NAME-mlp, ...")
    layout: Literal["per-kind", "single"] = option(
        "per-kind", "per-kind (one repository per site kind, as Gemma Scope) or single"
    )
    private: bool = option(False, "create private repositories")
    license: str = option("apache-2.0", "license in the model card")
    base_model: str = option("", "base model id in the model card (default: the suite's model)")
    saelens: bool = option(True, "also upload an SAELens copy of every SAE under saelens/")


def cmd_push(cfg: PushConfig) -> None:
    from saescope.release.hub import push

    if not cfg.repo:
        raise SaescopeError("no repository given: pass --repo OWNER/NAME")
    pushed = push(
        cfg.release,
        cfg.repo,
        layout=cfg.layout,
        private=cfg.private,
        license=cfg.license,
        base_model=cfg.base_model or None,
        saelens=cfg.saelens,
    )
    print("saescope: pushed " + ", ".join(f"https://huggingface.co/{r}" for r in pushed))


@dataclass
class BrowseConfig:
    positional = ("run",)  # `saescope browse RUN`
    run: str = option(RUN_FOLDER, "run folder whose SAEs are browsed")
    export: str = option("", "write a static HTML site to this folder instead of serving")
    export_latents: int = option(0, "with --export: latents per SAE, most frequent first (0 = all)")
    host: str = option("127.0.0.1", "address to serve on (127.0.0.1 = this machine only)")
    port: int = option(8765, "port to serve on")
    top_k: int = option(16, "top activating examples kept per latent")
    max_rows: int = option(65536, "held-out tokens the statistics are computed over")
    recompute: bool = option(False, "recompute statistics even for unchanged SAEs")


def cmd_browse(cfg: BrowseConfig) -> None:
    from saescope.browse.stats import StatsOptions, compute_stats

    if cfg.export:  # a destination or address that would be refused is refused before minutes of statistics
        from saescope.browse.export import check_destination

        check_destination(cfg.run, cfg.export)
    else:
        from saescope.browse.app import check_address

        check_address(cfg.host, cfg.port)
    compute_stats(cfg.run, StatsOptions(top_k=cfg.top_k, max_rows=cfg.max_rows), force=cfg.recompute)
    if cfg.export:
        from saescope.browse.export import export_site

        print(f"saescope: static site written to {export_site(cfg.run, cfg.export, cfg.export_latents)}/index.html")
        return
    from saescope.browse.app import serve

    serve(cfg.run, cfg.host, cfg.port)


@dataclass
class TableConfig:
    out: str = option(RUN_FOLDER, "run folder")
    readme: str = option("", "also write the table into this README between its saescope-table markers")
    text: str = option(
        "", "the metrics `saescope evaluate --text FILE` measured on that text, instead of the held-out corpus"
    )


def cmd_table(cfg: TableConfig) -> None:
    if not (Path(cfg.out) / "saes").is_dir():
        raise SaescopeError(f"--out {cfg.out} is not a run folder (no saes/ in it): pass the --out of a trained run")
    if not summary_rows(cfg.out, cfg.text):
        raise SaescopeError(
            f"no SAE in {cfg.out}/saes has {metrics_file(cfg.text)}: run `saescope evaluate --out "
            f"{cfg.out}{' --text ' + cfg.text if cfg.text else ''}` first"
        )
    print(summary_table(cfg.out, cfg.text))
    if cfg.readme:
        write_readme_table(cfg.out, cfg.readme)


JOBS: dict[str, tuple[type, object, str]] = {
    "run": (RunConfig, run, "the whole pipeline: harvest, train, evaluate, release, the browser's database, summary"),
    "sites": (SitesConfig, cmd_sites, "list a model's sites and their widths"),
    "harvest": (HarvestConfig, cmd_harvest, "store activations of many sites from one forward pass per batch"),
    "train": (TrainConfig, cmd_train, "train SAEs for many sites, widths and sparsities from one read of a store"),
    "evaluate": (SuiteConfig, cmd_evaluate, SUITE_HELP),
    "table": (TableConfig, cmd_table, "print a run's metrics table (and write it into a README)"),
    "release": (ReleaseConfig, cmd_release, "write evaluated SAEs in Gemma Scope's layout with suite.json"),
    "release-push": (
        PushConfig,
        cmd_push,
        "upload a release to the Hugging Face Hub with a model card (also: release push)",
    ),
    "load": (LoadConfig, cmd_load, "load an SAE in any supported format or from the Hub and summarise it"),
    "export": (
        ExportConfig,
        cmd_export,
        "write an SAE or a suite as gemma-scope, gemma-scope-2, saelens, sparsify or neuronpedia",
    ),
    "browse": (
        BrowseConfig,
        cmd_browse,
        "feature browser: compute latent statistics, then serve or --export a static site",
    ),
    "compare": (
        CompareConfig,
        compare,
        "train several SAE families on one site with the same tokens; table and plot of "
        "delta LM loss and FVU against L0",
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line (`--widths abc`), like every other error,
    instead of a usage block; subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"saescope: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser(defaults: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """`defaults` replaces some jobs' option defaults (a --preset's values), so flags given on the
    command line still win over the preset."""
    parser = OneLineParser(prog="saescope", description="Sparse autoencoders for every layer of a language model.")
    sub = parser.add_subparsers(dest="job")
    for name, (cls, _, helptext) in JOBS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        add_arguments(p, cls)
        p.set_defaults(**(defaults or {}).get(name, {}))
        p.add_argument(
            "--config",
            default="",
            metavar="CONFIG_JSON",
            help="the config.json a job saved (RUN/config.json, RUN/train/config.json): run with its "
            "options; flags given beside it win",
        )
        for field_name in getattr(cls, "positional", ()):  # e.g. `saescope load PATH` as well as --path
            p.add_argument(field_name, nargs="?", default=argparse.SUPPRESS, help=f"same as --{field_name}")
        if name in ("train", "run"):
            p.add_argument(
                "--force",
                action="store_true",
                help="train again from scratch in an --out whose saved training has other settings",
            )
        if name in DISTRIBUTED_JOBS:
            p.add_argument(
                "--nproc",
                type=int,
                default=1,
                help="processes on this machine: runs the job under torchrun (default: 1)",
            )
    return parser


# The option naming each job's output folder, checked for being writable before the job starts.
OUTPUTS = {
    "harvest": "store",
    "train": "out",
    "run": "out",
    "evaluate": "out",
    "compare": "out",
    "release": "dest",
    "export": "dest",
    "browse": "export",
}


# Jobs that run as one job across many processes under torchrun (saescope/distributed.py).
DISTRIBUTED_JOBS = ("harvest", "train")


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line a torchrun worker gets: the same job, minus --nproc."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


# What a newcomer runs first (the README's first lines, from a clone).
START = (
    "start with:\n"
    "  saescope run   # the whole pipeline on the embedded Gemma 3 270M and corpus (make run from a clone)\n"
    "  make test      # the test suite, from a clone"
)


def layered(argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """The job's options: its defaults, under a --config file's values, under a --preset's, under
    the flags given (argparse's defaults are replaced, so the flags still win)."""
    cls = JOBS[args.job][0]
    defaults = read_config(cls, args.config) if args.config else {}
    if getattr(args, "preset", ""):
        defaults |= preset_values(cls, args.preset)
    return build_parser({args.job: defaults}).parse_args(argv) if defaults else args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a bare `saescope` is a question, not a half-hour job
        build_parser().print_help()
        print(f"\n{START}")
        return 0
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in JOBS:  # two-word jobs: `release push`
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    cls, fn, _ = JOBS[args.job]
    keep_freed_memory()
    many = distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1
    try:
        args = layered(argv, args)
        if getattr(args, "nproc", 1) < 1:
            raise SaescopeError(f"--nproc must be at least 1, got {args.nproc}")
        if getattr(args, "nproc", 1) > 1 and not distributed.launched_by_torchrun():
            return distributed.launch(_without_nproc(argv), args.nproc)
        if many and args.job not in DISTRIBUTED_JOBS:
            raise SaescopeError(
                f"saescope {args.job} runs in one process: start it without torchrun "
                f"(only {' and '.join(DISTRIBUTED_JOBS)} run distributed)"
            )
        if many:
            distributed.setup()
        cfg = from_namespace(cls, args)
        if getattr(cfg, OUTPUTS.get(args.job, ""), ""):
            output, option = getattr(cfg, OUTPUTS[args.job]), f"--{OUTPUTS[args.job]}"
            check_writable(output, option)
            check_outside_stores(output, option, may_be_store=args.job == "harvest")
        if args.job in ("train", "run"):  # before a run's harvest stage, which can take minutes
            refuse_changed_training(cfg if args.job == "train" else cfg.part(TrainConfig), args.force)
        fn(cfg)
        distributed.barrier()  # no rank leaves gloo while a peer still uses it (that can abort the peer)
    except SaescopeError as e:
        where = f"[rank {os.environ.get('RANK')}] " if many else ""
        print(f"saescope: error: {where}{e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named cannot be read or written: one line, not a traceback
        print(
            f"saescope: error: {e.strerror or e}: {e.filename or ''}: check the path and its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("saescope: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
