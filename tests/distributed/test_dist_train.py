"""Training on 2 CPU processes (gloo): data parallel, SAE parallel, a dying rank, resume."""

from __future__ import annotations

import json
import time

import pytest
import torch
from dist_helpers import as_args, cli, dying_worker, first_step_grads, free_port, grads_worker, train_cfg, trained
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.train.trainer import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res,mlp",
        layers="0,1",
        tokens=6144,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1024,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer)


@pytest.fixture
def one_thread():
    """Two workers on two cores run one thread each; the one-process reference does the same,
    since a sparse step's index_add order (hence its float rounding) depends on the threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def short(store, out, **kw):
    """4 steps with the sparsity term at full weight from the start, a checkpoint every 2."""
    return train_cfg(store, out, **{"train_tokens": 256 * 4, "l0_warmup_steps": 0, "checkpoint_every": 2, **kw})


@pytest.fixture(scope="module")
def data_parallel_run(store, tmp_path_factory):
    """`saescope train --nproc 2 --parallel data`, the way a user starts it."""
    out = tmp_path_factory.mktemp("dp")
    result = cli(*as_args(short(store, out, parallel="data")), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes: 1 SAE group(s) of 2 data rank(s), 8 SAEs" in result.stdout
    return out


def test_data_parallel_gradient_equals_one_process(store, tmp_path, one_thread):
    """The summed gradients of two half batches are the one-process gradient of the whole batch."""
    cfg = train_cfg(store, tmp_path / "dp", parallel="data", l0_warmup_steps=0)  # sparsity term at full weight
    torch.multiprocessing.spawn(grads_worker, args=(2, free_port(), cfg, str(tmp_path / "g.pt")), nprocs=2)
    summed = torch.load(tmp_path / "g.pt", weights_only=True)
    single = first_step_grads(train_cfg(store, tmp_path / "one", l0_warmup_steps=0))
    assert summed.keys() == single.keys() and len(single) == 8 * 5
    for name, g in single.items():
        assert g.abs().max() > 0, name
        # float32 sums in another order: differences measured here stay below 5e-5 of the largest entry
        torch.testing.assert_close(summed[name], g, rtol=1e-3, atol=2e-4 * g.abs().max().item(), msg=name)


def test_data_parallel_weights_equal_one_process(store, data_parallel_run, tmp_path, one_thread):
    """The launcher's run (`--nproc 2`): weights against how far training moved them, SAEs written
    once, and the log's token means."""
    single_trainer = Trainer(short(store, tmp_path))
    init = {k: {n: v.clone() for n, v in sae.state_dict().items()} for k, sae in single_trainer.saes.items()}
    single_trainer.train()
    single = torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)
    parallel = torch.load(data_parallel_run / "train" / "checkpoint.pt", weights_only=True)
    assert single["step"] == parallel["step"] == 4 and single["scales"] == parallel["scales"]
    assert single["saes"].keys() == parallel["saes"].keys() and len(single["saes"]) == 8
    for key, params in single["saes"].items():
        for name, value in params.items():
            if not value.is_floating_point():  # JumpReLU's tokens_since_fired counts each rank's slice
                continue
            moved = (value - init[key][name]).norm()
            assert moved > 0, (key, name)
            assert (parallel["saes"][key][name] - value).norm() < 1e-2 * moved, (key, name)
    assert trained(data_parallel_run).keys() == trained(tmp_path).keys()
    logs = [json.loads(line) for line in (data_parallel_run / "train" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logs] == [2, 4]  # rank 0 alone writes the log
    single_log = json.loads((tmp_path / "train" / "log.jsonl").read_text().splitlines()[-1])
    for key, stats in logs[-1].items():  # L0 and MSE are token means: the ranks' halves average exactly
        if key != "step":
            assert stats["l0"] == pytest.approx(single_log[key]["l0"], rel=1e-3)
            assert stats["mse"] == pytest.approx(single_log[key]["mse"], rel=1e-3)


def test_sae_parallel_equals_one_process_exactly(store, tmp_path, one_thread):
    result = cli(*as_args(train_cfg(store, tmp_path / "sp", parallel="sae")), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 SAE group(s) of 1 data rank(s), 8 SAEs" in result.stdout
    assert "saescope: 8 trained SAEs" in result.stdout
    Trainer(train_cfg(store, tmp_path / "one")).train()
    single, parallel = trained(tmp_path / "one"), trained(tmp_path / "sp")
    assert single.keys() == parallel.keys() and len(single) == 8
    for key, params in single.items():
        for name, value in params.items():
            assert torch.equal(parallel[key][name], value), (key, name)
    # Each group checkpointed and logged only its SAEs: sites res.0,mlp.0 | res.1,mlp.1 (store order).
    train = tmp_path / "sp" / "train"
    parts = [torch.load(train / f"checkpoint.g{g}of2.pt", weights_only=True) for g in range(2)]
    assert [sorted({k.split("__")[0] for k in p["saes"]}) for p in parts] == [["mlp.0", "res.0"], ["mlp.1", "res.1"]]
    assert [sorted(p["scales"]) for p in parts] == [["mlp.0", "res.0"], ["mlp.1", "res.1"]]
    # Restarting with another grouping is refused rather than silently starting SAEs over (with the same
    # settings otherwise: other settings are refused before that, by the rerun check in saescope/cli.py).
    refused = cli(*as_args(train_cfg(store, tmp_path / "sp", parallel="data")), "--nproc", "2")
    assert refused.returncode != 0 and "other SAE groups (checkpoint.g0of2.pt)" in refused.stderr


def test_dead_rank_fails_the_job_and_restart_resumes(store, data_parallel_run, tmp_path):
    """Rank 1 vanishes mid-run: rank 0 must fail on its own (no launcher to kill it), quickly,
    and the same command then resumes from the last checkpoint to the uninterrupted result."""
    cfg = short(store, tmp_path, parallel="data")
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=dying_worker, args=(r, 2, port, cfg, 3)) for r in range(2)]
    started = time.time()
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
        assert procs[1].exitcode == 3
        assert procs[0].exitcode not in (0, None), "rank 0 should fail, not hang or succeed"
        assert time.time() - started < 120
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)["step"] == 2
    result = cli(*as_args(cfg), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming 8 SAEs at step 2/4" in result.stdout
    resumed, whole = trained(tmp_path), trained(data_parallel_run)
    for key, params in whole.items():
        for name, value in params.items():
            assert torch.equal(resumed[key][name], value), (key, name)


def test_launcher_reports_a_failed_job(store, tmp_path):
    result = cli(*as_args(train_cfg(store, tmp_path, parallel="both", sae_groups=3)), "--nproc", "2")
    assert result.returncode != 0
    assert "saescope: error: [rank 0] --sae-groups 3 does not divide the 2 processes" in result.stderr
    assert "a worker of the 2-process job failed" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("steered", [False, True], ids=["recipe", "steered"])
def test_data_parallel_weights_equal_one_process_to_float_tolerance(store, tmp_path, one_thread, steered):
    """Entry by entry, with the recipe's optimiser, after the sparsity term has acted for 4 steps;
    steered: the L0 penalty's lambda, a checkpointed buffer, moves by the whole batch's L0 on every rank."""
    recipe = train_cfg(store, tmp_path).knobs
    kw = dict(knobs=recipe.replace("l0_penalty=l0", "l0_penalty=steered"), l0_coefficients=[4, 16]) if steered else {}
    cfg = short(store, tmp_path / "dp", parallel="data", **kw)
    result = cli(*as_args(cfg), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    one = Trainer(short(store, tmp_path / "one", **kw))
    one.train()
    if steered:
        steers = {k: sae.l0_steer for k, sae in one.saes.items()}
        parallel_steers = torch.load(tmp_path / "dp" / "train" / "checkpoint.pt", weights_only=True)["saes"]
        for key, steer in steers.items():
            assert steer[1] != 1
            torch.testing.assert_close(parallel_steers[key]["l0_steer"], steer, rtol=1e-4, atol=0)
    single, parallel = trained(tmp_path / "one"), trained(tmp_path / "dp")
    assert single.keys() == parallel.keys() and len(single) == 8
    for key, params in single.items():
        for name, value in params.items():
            torch.testing.assert_close(parallel[key][name], value, rtol=1e-4, atol=1e-5, msg=f"{key} {name}")
