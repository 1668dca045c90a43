"""Job configs are plain dataclasses: the same object is the CLI, the Python API and `config.json`.

Each field's `help` metadata becomes its `--flag` help, so `saescope JOB --help` always documents
every option with its default; a field typed `Literal[...]` lists its choices there and refuses
any other value where the command line is parsed. A job's saved `config.json` re-runs it with
`saescope JOB --config PATH/config.json` (flags given beside it win).

A job that runs on another scale (`saescope run`'s 20-minute CPU schedule) states only the values
that differ, as nanoGPT's config files override train.py's defaults: see `rescaled`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from saescope.errors import SaescopeError
from saescope.outputs import strict_json

T = TypeVar("T")

RUN_FOLDER = "runs/default"  # where every job looks unless told otherwise
STORE_FOLDER = f"{RUN_FOLDER}/activations"


def _default(default: Any) -> dict[str, Any]:
    """A mutable default becomes a factory, so two configs never share one list."""
    if isinstance(default, (list, dict)):
        return {"default_factory": (lambda d=default: type(d)(d))}
    return {"default": default}


def option(default: Any, help: str, *aliases: str) -> Any:
    """A config field with CLI help (and optional extra flag names)."""
    return dataclasses.field(metadata={"help": help, "aliases": aliases}, **_default(default))


def device_option() -> Any:
    """Every job that runs a model or trains picks its device the same way."""
    return option("auto", "auto, cpu, cuda, cuda:N or mps")


def held_out_option() -> Any:
    """Training and evaluation must agree on which shards are held out, so both say it here."""
    return option(1, "last shards of the store held out for evaluation")


def same_as(cls: type, name: str) -> Any:
    """A field declared like `cls`'s field `name`, with its default and help: a job that shares one
    option of another job then states it once."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(metadata=f.metadata, **_default(_default_of(f)))


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def rescaled(cls: type[T], values: dict[str, Any]) -> type[T]:
    """`cls` with other defaults for some fields, each keeping its help: a job's scale stated as the
    values that differ (like nanoGPT's config files), so every other default stays stated once."""
    hints = _hints(cls)
    metadata = {f.name: f.metadata for f in dataclasses.fields(cls)}
    fields = [(k, hints[k], dataclasses.field(metadata=metadata[k], **_default(v))) for k, v in values.items()]
    scaled = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    scaled.__module__, scaled.__qualname__, scaled.__doc__ = cls.__module__, cls.__qualname__, cls.__doc__
    return scaled


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field types resolved (the modules use `from __future__ import annotations`, so they are strings)."""
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple | None:
    """The values a `Literal[...]` field allows; None for any other field."""
    hint = _hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in dataclasses.fields(cls):
        default = _default_of(f)
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": default,
            "help": f"{f.metadata.get('help', '')} (default: {default})",
        }
        allowed = choices(cls, f.name)
        if allowed:  # "" (the option unset) is allowed but not listed: the help says what it means
            listed = ",".join(filter(None, allowed))
            kw |= {"type": type(allowed[-1]), "choices": allowed, "metavar": f"{{{listed}}}"}
        elif isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw["type"] = _list_of(type(default[0]) if default else str)
        else:
            kw["type"] = type(default) if default is not None else str
        parser.add_argument(*flags, **kw)


def _list_of(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from e

    return parse


# The Gemma Scope recipe's exact optimisation settings (the project's recipe notes; the JumpReLU
# and Gemma Scope papers), for `--preset gemma-scope`: every other default of saescope differs
# from the paper where a measurement said it trains better SAEs for the same tokens (README,
# "JumpReLU defaults"). Scale (tokens, widths, sites) is not part of a preset: the recipe's
# 4B tokens per SAE is `saescope train`'s default anyway.
PRESETS: dict[str, dict[str, Any]] = {
    "gemma-scope": {
        "lr": 7e-5,
        "batch_size": 4096,
        "lr_warmup_steps": 1000,
        "l0_warmup_steps": 10_000,
        "lr_decay": 0.0,
        "adam_beta1": 0.0,
        "adam_beta2": 0.999,
        "adam_eps": 1e-8,
        "normalize": "scalar",
        "l0_coefficients": [1e-3],
        "knobs": (
            "l0_penalty=l0,bandwidth=0.001,threshold_init=0.001,init_l0=0,freq_coefficient=0,revive_coefficient=0,"
            "jolt_clip=0,unit_decoder=true,threshold_lr=1"
        ),
    },
}


def preset_values(cls: type, name: str) -> dict[str, Any]:
    """The preset's values for the fields `cls` has (a compare job has no --knobs, say)."""
    if name not in PRESETS:
        raise SaescopeError(
            f"unknown --preset {name!r}: use one of {sorted(PRESETS)} (or none for saescope's defaults)"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in PRESETS[name].items() if k in names}


def with_preset(cls: type[T], name: str, **values: Any) -> T:
    """A config with a preset's values under any given ones: `with_preset(TrainConfig, "gemma-scope", store=...)`
    is what `saescope train --preset gemma-scope --store ...` builds."""
    return cls(**(preset_values(cls, name) | values | {"preset": name}))


def part(config: Any, cls: type[T], **values: Any) -> T:
    """The config of a job that another job runs (run's train stage, compare's evaluation): every
    field of `cls` that `config` has, then `values`."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
    return cls(**(shared | values))


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return validate(cls(**{k: v for k, v in vars(ns).items() if k in names}))


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


# Ranges of the options every job shares, by field name, so each job that has the field gets the
# check where its command line is parsed (a zero --shard-rows once harvested forever).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        name: _at_least(1)
        for name in (
            "tokens",
            "shard_rows",
            "context_len",
            "forward_batch",
            "train_tokens",
            "batch_size",
            "norm_rows",
            "buffer_rows",
            "checkpoint_every",
            "log_every",
            "eval_sequences",
            "eval_context_len",
            "eval_batch_size",
            "top_k",
            "max_rows",
            "width",
            "seeds",
        )
    },
    **{
        name: _at_least(0)
        for name in ("eval_shards", "eval_offset", "lr_warmup_steps", "l0_warmup_steps", "sae_groups", "export_latents")
    },
    "lr": ((lambda v: 0 < v < math.inf), "a positive number"),
    "adam_eps": ((lambda v: 0 < v < math.inf), "a positive number"),
    "adam_beta1": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "adam_beta2": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "lr_decay": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    "port": ((lambda v: 0 <= v <= 65535), "a TCP port in 0-65535"),
    "widths": ((lambda v: len(v) > 0 and all(w >= 1 for w in v)), "a list of positive sizes"),
    "l0_coefficients": ((lambda v: len(v) > 0 and all(0 <= c < math.inf for c in v)), "a list of numbers >= 0"),
}


FOLDERS = ("out", "store", "dest", "export", "run")  # options that name a folder, never a file


def _problem(cls: type, name: str, value: Any) -> str | None:
    """What is wrong with one option's value (its type, its choices, its range), or None. A
    config.json edited by hand or a Python caller reaches here without argparse's checks."""
    hint, allowed, rule = _hints(cls)[name], choices(cls, name), RANGES.get(name)
    if allowed is not None:
        return None if value in allowed else f"is not one of {', '.join(map(repr, allowed))}"
    kinds = {float: (int, float), int: int, str: str, bool: bool, list: list}.get(hint)
    if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and hint is not bool)):
        return f"is not a{'n' if hint is int else ''} {hint.__name__}"
    if rule and not rule[0](value):
        return f"is out of range: it must be {rule[1]}"
    return None


def validate(config: T) -> T:
    """Check every option's type, choices and range, and the device; a bad value is a one-line
    error naming the option, the value and what it must be."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        problem = _problem(type(config), f.name, value)
        if problem:
            raise SaescopeError(f"--{f.name.replace('_', '-')} {value!r} {problem}")
        if f.name in FOLDERS and isinstance(value, str) and "://" not in value and Path(value).is_file():
            raise SaescopeError(f"--{f.name} {value} is an existing file, not a folder: pass a folder")
    if getattr(config, "device", "auto") != "auto":
        from saescope.models.loading import resolve_device

        resolve_device(config.device)
    return config


def changed_fields(saved: dict, config: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """`name: old -> new` for each field of `config` that differs from a saved config.json's."""
    now = dataclasses.asdict(config)
    return [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items() if k in saved and k not in ignore and saved[k] != v]


def save_config(config: Any, path: str | Path) -> None:
    """Every option as the job ran with it, named by its job: `--config` reads it back."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(strict_json({"job": type(config).__name__, **dataclasses.asdict(config)}, indent=2))


def read_config(cls: type, path: str | Path) -> dict[str, Any]:
    """The options saved in a job's config.json, for `saescope JOB --config PATH` (flags given
    beside it win). Another job's file, or options this job does not have, are refused: running
    with some of them dropped would not be the run that file describes."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SaescopeError(f"--config {path} does not exist: pass the config.json a job saved") from None
    except (OSError, ValueError) as e:
        raise SaescopeError(f"--config {path} is not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise SaescopeError(f"--config {path} holds no JSON object: pass the config.json a job saved")
    job = data.pop("job", cls.__name__)
    if job != cls.__name__:
        raise SaescopeError(f"--config {path} is the config of another job ({job}), not of this one ({cls.__name__})")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise SaescopeError(f"--config {path} holds options this job does not have: {', '.join(unknown)}")
    return data
