"""Job configs: every option in `--help` with its choices, each default stated once."""

from __future__ import annotations

from dataclasses import fields

import pytest

from saescope.activations.harvest import HarvestConfig
from saescope.cli import JOBS, main
from saescope.compare import CompareConfig
from saescope.config import choices
from saescope.evaluate.metrics import EvalConfig
from saescope.run import RUN_SCALE, RunConfig
from saescope.train.schedule import Schedule
from saescope.train.trainer import TrainConfig


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
    assert {f.name: getattr(compare, f.name) for f in fields(Schedule)} == \
        {f.name: getattr(run, f.name) for f in fields(Schedule)}
    assert RunConfig().widths is not RunConfig().widths  # a list default is never shared
