"""Job configs: every option in `--help` with its choices, each default stated once, and a saved
config.json that re-runs its job (`saescope JOB --config PATH`, flags given beside it win)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.cli import JOBS, build_parser, layered, main
from saescope.compare import CompareConfig
from saescope.config import choices, from_namespace, save_config
from saescope.evaluate.metrics import EvalConfig
from saescope.run import RUN_SCALE, RunConfig
from saescope.train.job import TrainConfig
from saescope.train.schedule import Schedule


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer) -> Path:
    cfg = HarvestConfig(
        sites="res",
        layers="0",
        tokens=2048,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=512,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer)


def train_argv(store: Path, out: Path) -> list[str]:
    """Two ReLU SAEs, one of whose L1 coefficients a six-digit folder name cannot hold."""
    return [
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--arch",
        "relu",
        "--widths",
        "32",
        "--sweep",
        "0.30000001,3",
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
        "--seed",
        "3",
    ]


def test_a_saved_config_json_reruns_the_job(store, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(train_argv(store, first)) == 0
    assert main(["train", "--config", str(first / "train" / "config.json"), "--out", str(again)]) == 0
    saved = json.loads((first / "train" / "config.json").read_text())
    assert json.loads((again / "train" / "config.json").read_text()) == saved | {"out": str(again)}
    names = sorted(p.name for p in (first / "saes").iterdir())
    assert len(names) == 2 and names == sorted(p.name for p in (again / "saes").iterdir())
    for name in names:
        assert (first / "saes" / name / "sae.safetensors").read_bytes() == (
            again / "saes" / name / "sae.safetensors"
        ).read_bytes()


def parsed(cls: type, *argv: str):
    return from_namespace(cls, layered(list(argv), build_parser().parse_args(list(argv))))


def test_flags_beside_the_file_win_and_a_preset_over_it(tmp_path):
    path = tmp_path / "config.json"
    save_config(TrainConfig(lr=1e-3, batch_size=512, seed=5), path)
    cfg = parsed(TrainConfig, "train", "--config", str(path), "--seed", "6")
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.preset) == (1e-3, 512, 6, "")
    cfg = parsed(TrainConfig, "train", "--config", str(path), "--preset", "gemma-scope", "--batch-size", "8")
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.preset) == (7e-5, 8, 5, "gemma-scope")


@pytest.mark.parametrize(
    "job, config",
    [
        ("run", RunConfig(widths=[64, 128], l0_coefficients=[0.1234567891], preset="gemma-scope", text="other.txt")),
        ("compare", CompareConfig(lr=1e-3, baseline="saelens", normalize="scalar")),
        ("train", TrainConfig(transcoder="skip", normalize="scalar", train_sites="mlp_in.3")),
    ],
)
def test_every_saved_config_reads_back_as_it_was(job, config, tmp_path):
    save_config(config, tmp_path / "config.json")
    assert parsed(type(config), job, "--config", str(tmp_path / "config.json")) == config


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "--config CONFIG does not exist"),
        ("{", "--config CONFIG is not a readable JSON file"),
        ("[]", "--config CONFIG holds no JSON object"),
        (
            '{"job": "RunConfig"}',
            "--config CONFIG is the config of another job (RunConfig), not of this one (TrainConfig)",
        ),
        (
            '{"job": "TrainConfig", "lr": 0.001, "colour": 1}',
            "--config CONFIG holds options this job does not have: colour",
        ),
        ('{"job": "TrainConfig", "lr": [1]}', "--lr [1] is not a float"),
        ('{"job": "TrainConfig", "arch": "bogus"}', "--arch 'bogus' is not one of 'jumprelu', 'relu'"),
    ],
)
def test_a_bad_config_file_is_one_line(content, expect, tmp_path, capsys):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("saescope: error: ")
    assert expect.replace("CONFIG", str(path)) in err
    assert not (tmp_path / "out").exists()


def help_of(job: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([job, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("job", list(JOBS))
def test_help_lists_every_option_and_a_bad_choice_fails_on_parsing(job, capsys):
    """`saescope JOB --help` lists every option (`run`: every size) and each Literal option's choices;
    a value outside them is one line naming the option and the choices, before anything runs."""
    cls = JOBS[job][0]
    text = help_of(job, capsys)
    for f in fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in text, flag
        allowed = choices(cls, f.name)
        if allowed:
            assert f"{flag} {{{','.join(filter(None, allowed))}}}" in text
            with pytest.raises(SystemExit) as exit:
                main([job, flag, "bogus"])
            err = capsys.readouterr().err
            assert exit.value.code == 2 and err.count("\n") == 1
            assert f"argument {flag}: invalid choice: 'bogus' (choose from {allowed[0]!r}" in err


def test_the_run_scale_states_only_what_differs():
    """`saescope run`'s defaults are the harvest, train and evaluate jobs' own except RUN_SCALE's (and
    its folders); compare trains on the run's schedule."""
    run = RunConfig()
    for cls in (HarvestConfig, TrainConfig, EvalConfig):
        for f in fields(cls):
            if f.name not in RUN_SCALE and f.name not in ("out", "store"):
                assert getattr(run, f.name) == getattr(cls(), f.name), (cls.__name__, f.name)
    assert {k: getattr(run, k) for k in RUN_SCALE} == RUN_SCALE
    compare = CompareConfig()
    assert {f.name: getattr(compare, f.name) for f in fields(Schedule)} == {
        f.name: getattr(run, f.name) for f in fields(Schedule)
    }
    assert RunConfig().widths is not RunConfig().widths  # a list default is never shared
