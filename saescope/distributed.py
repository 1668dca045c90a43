"""Running saescope on many processes and machines with torch.distributed.

saescope does not start processes itself: `torchrun` does (on one machine, or on each machine
of a cluster), and sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the rendezvous
address in each worker's environment. `saescope train --nproc N` is only a shortcut that runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m saescope train ...`.

Inside a worker, `setup()` joins the process group (NCCL for CUDA tensors, gloo for CPU ones)
with a timeout, so a rank that stops answering turns into an error on the others instead of
a job that hangs forever; torchrun itself ends every worker when one of them exits with an error.

`Layout` arranges the ranks in a grid of SAE groups x data ranks for training: each SAE group
owns a share of the suite's SAEs, and the ranks inside a group split every batch between them
and sum their gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from saescope.errors import SaescopeError

DEFAULT_TIMEOUT_S = 1800  # longer than any checkpoint write or shard flush between two collectives
PARALLEL_MODES = ("auto", "data", "sae", "both")


def launched_by_torchrun() -> bool:
    """True inside a worker that torchrun (or another launcher setting WORLD_SIZE) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def is_main() -> bool:
    """Rank 0 prints progress and writes what exists once per job."""
    return rank() == 0


def timeout_s() -> float:
    value = os.environ.get("SAESCOPE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise SaescopeError(f"SAESCOPE_DIST_TIMEOUT={value!r} is not a positive number of seconds: set e.g. 1800")
    return seconds


def setup() -> None:
    """Join the process group torchrun described in the environment (no-op in one process).

    The backend string routes CUDA tensors to NCCL and CPU tensors to gloo, so the same code
    runs on GPU clusters and CPU boxes, and small CPU-side collectives work on GPU jobs too.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 or is_distributed():
        return
    if not dist.is_available():
        raise SaescopeError("this PyTorch build has no torch.distributed: install a regular PyTorch wheel")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device_for(requested: str) -> str:
    """Each worker of a GPU job takes the GPU of its local rank when the device is left to us."""
    if is_distributed() and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank()}"
    return requested


def launch(argv: list[str], nproc: int) -> int:
    """Run `saescope ARGV` in `nproc` processes on this machine through torchrun; its exit code.

    --standalone gives torchrun a private rendezvous on a free local port, so several jobs can
    share a machine. For several machines, call torchrun yourself (README: Running on a cluster).
    """
    if nproc < 1:
        raise SaescopeError(f"--nproc must be at least 1, got {nproc}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "saescope",
        *argv,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))),
    }
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        print(
            f"saescope: error: a worker of the {nproc}-process job failed (exit code {code}); its error is above; "
            f"run the same command again to resume from the last checkpoint",
            file=sys.stderr,
        )
    return code


@dataclass(frozen=True)
class Layout:
    """Ranks as a grid: `sae_groups` groups of `data_ways` consecutive ranks.

    Every rank of group g trains the same SAEs (g's share of the suite) on its own slice of
    every global batch, and the group sums its gradients. Consecutive ranks share a machine
    under torchrun, so the per-step all-reduce stays inside a machine when data_ways is at most
    the GPUs per machine, while SAE groups need no communication at all.
    """

    rank: int = 0
    world: int = 1
    sae_groups: int = 1
    group_index: int = 0  # which SAE group this rank belongs to
    data_index: int = 0  # this rank's slice of each batch within its group
    data_group: object = None  # the process group of this rank's data ranks (None when alone)

    @property
    def data_ways(self) -> int:
        return self.world // self.sae_groups

    @property
    def group_leader(self) -> bool:
        """The rank that writes its group's checkpoint, log and SAEs."""
        return self.data_index == 0

    @classmethod
    def create(cls, parallel: str, sae_groups: int, n_saes: int) -> Layout:
        """Choose the grid for this job's ranks.

        auto: SAE parallel when there are at least as many SAEs as ranks (no communication
        per step), else data parallel. both: `sae_groups` groups, by default one per machine.
        """
        if parallel not in PARALLEL_MODES:
            raise SaescopeError(f"unknown --parallel '{parallel}': use one of {', '.join(PARALLEL_MODES)}")
        world, me = world_size(), rank()
        if parallel == "auto":
            parallel = "sae" if n_saes >= world else "data"
        groups = {"data": 1, "sae": world, "both": sae_groups or max(1, world // local_world_size())}[parallel]
        if groups < 1 or world % groups:
            raise SaescopeError(
                f"--sae-groups {groups} does not divide the {world} processes: pass a divisor of {world}"
            )
        if groups > n_saes:
            raise SaescopeError(
                f"{groups} SAE groups for {n_saes} SAEs leaves some ranks idle: "
                f"use --parallel data or fewer --sae-groups"
            )
        ways = world // groups
        data_group = None
        if ways > 1 and groups > 1:
            # new_group must be called by every rank for every group, in the same order.
            for g in range(groups):
                pg = dist.new_group(list(range(g * ways, (g + 1) * ways)))
                if g == me // ways:
                    data_group = pg
        elif ways > 1:
            data_group = dist.group.WORLD
        return cls(me, world, groups, me // ways, me % ways, data_group)


def partition(costs: list[float], groups: int) -> list[list[int]]:
    """Cut items (kept in order) into `groups` contiguous runs of about equal total cost.

    Contiguous runs keep a site's SAEs together (the suite is listed site by site), so each
    rank reads few sites. Every run gets at least one item when there are enough items.
    """
    runs: list[list[int]] = [[] for _ in range(groups)]
    g, load, left = 0, 0.0, float(sum(costs))
    target = left / groups
    for i, cost in enumerate(costs):
        if runs[g] and g < groups - 1:
            must_move = len(costs) - i == groups - 1 - g  # one item left for each later run
            if must_move or load + cost / 2 > target:
                g, left = g + 1, left - load
                load, target = 0.0, left / (groups - g)
        runs[g].append(i)
        load += cost
    return runs
