"""Shared by the distributed tests: a tiny store, train configs, the CLI, and the functions that
spawned processes run as ranks of a gloo process group."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from saescope import distributed
from saescope.train.job import TrainConfig
from saescope.train.normalize import estimate_scale
from saescope.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def train_cfg(store, out, **kw) -> TrainConfig:
    """8 SAEs (4 sites x 2 coefficients), 12 steps of 256 tokens: seconds on a CPU. The recipe's
    JumpReLU (lambda * L0, unit rows, one learning rate) without the frequency penalty or the revival
    term: a mean over tokens, whose data-parallel gradient is exactly the one-process gradient
    (saescope's default penalties use each slice's statistics). Thresholds at 10x the learning rate
    would turn float-rounding differences in near-zero gradients into 10x larger Adam steps."""
    base = dict(
        store=str(store),
        out=str(out),
        widths=[128],
        l0_coefficients=[1e-3, 1e-2],
        train_tokens=256 * 12,
        knobs="l0_penalty=l0,freq_coefficient=0,matmul_dtype=float32,revive_coefficient=0,"
        "unit_decoder=true,threshold_lr=1",
        normalize="scalar",
        batch_size=256,
        lr=3e-3,
        lr_warmup_steps=4,
        l0_warmup_steps=6,
        buffer_rows=2048,
        checkpoint_every=4,
        log_every=2,
        device="cpu",
        norm_rows=4096,
    )
    return TrainConfig(**{**base, **kw})


def as_args(cfg: TrainConfig) -> list[str]:
    """The `saescope train` command line that builds this config."""
    args = ["train"]
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), f.name.replace("_", "-")
        if isinstance(value, bool):  # argparse's BooleanOptionalAction: --flag / --no-flag
            args.append(f"--{flag}" if value else f"--no-{flag}")
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        args += [f"--{flag}", text]
    return args


def cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "saescope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


def trained(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every released (folded) SAE of a run folder, by key."""
    return {p.name: load_file(p / "sae.safetensors") for p in sorted((Path(out) / "saes").iterdir())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """What torchrun does for a worker: the rendezvous in the environment, then saescope's setup."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # as the launcher's OMP_NUM_THREADS does with 2 processes on 2 cores
    distributed.setup()


def first_step_grads(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Gradients (summed over data ranks, decoder-projected) that the first optimiser step uses."""
    trainer = Trainer(cfg)
    trainer.scales = {s: estimate_scale(trainer.store, s, cfg.norm_rows) for s in trainer.sites}
    captured: dict[str, torch.Tensor] = {}

    def capture() -> None:
        captured.update(
            {f"{k}.{n}": p.grad.clone() for k, sae in trainer.saes.items() for n, p in sae.named_parameters()}
        )

    trainer.opt.step = capture
    trainer.train_step(next(trainer.loader.iterate(0, 1)).acts)
    return captured


def grads_worker(rank: int, world: int, port: int, cfg: TrainConfig, out_file: str) -> None:
    join_group(rank, world, port)
    grads = first_step_grads(cfg)
    if rank == 0:
        torch.save(grads, out_file)
    distributed.barrier()  # as the command does before leaving the group
    distributed.teardown()


def dying_worker(rank: int, world: int, port: int, cfg: TrainConfig, die_at: int) -> None:
    """A data-parallel run whose rank 1 vanishes (as a killed or crashed machine does) at step `die_at`."""
    os.environ["SAESCOPE_DIST_TIMEOUT"] = "30"
    join_group(rank, world, port)
    trainer = Trainer(cfg)
    real_step = trainer.train_step

    def step(acts):
        if rank == 1 and trainer.step == die_at:
            os._exit(3)
        return real_step(acts)

    trainer.train_step = step
    trainer.train()
