"""Data-parallel training processes: how many, how each one joins the group, and how a stage launches them.

A training stage with `workers` > 1 launches that many copies of itself through PyTorch's elastic launcher,
exactly as `torchrun --standalone --nproc-per-node N` would (its own free port, so runs side by side never
collide). Each copy reads its rank from the environment that torchrun sets, joins the process group (gloo on
the CPU, nccl on CUDA) and trains its shard of every batch. Started by `torchrun` on several machines, the same
script joins their group instead. With one worker nothing is launched: the stage trains in its own process.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from fmnist_seq.config import check_workers
from fmnist_seq.errors import TrainingError
from fmnist_seq.machine import physical_cores, usable_cpus

# What torchrun puts in every worker's environment.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Worker:
    """This process's place in a training run; the defaults describe a run without other workers."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, validates the selection and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device: cuda was asked for but no CUDA GPU is visible to PyTorch; use device: auto or cpu")
    return torch.device(name)


def resolve_workers(setting: int | str, device: torch.device, batch_size: int, where: str = "train") -> int:
    """`workers: auto` is one per physical core within the CPU quota on the CPU, one per GPU on CUDA, and never
    more than a global batch has images; the count is then checked as an explicit one is."""
    if setting == "auto":
        available = max(1, torch.cuda.device_count()) if device.type == "cuda" else physical_cores()
        workers = min(available, batch_size)
    else:
        workers = int(setting)
    check_workers(workers, batch_size, where, resolved_from="auto" if setting == "auto" else None)
    return workers


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in _TORCHRUN_ENV)


def worker_rank() -> int:
    """This worker's global rank as torchrun set it (0 outside a launched run)."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def join(device_name: str) -> Iterator[Worker]:
    """This process's Worker: a member of the process group under torchrun, a lone worker otherwise."""
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        yield Worker(device=device)
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        # Small matmuls scale poorly over threads: N workers with cores/N threads each beat one with all.
        torch.set_num_threads(max(1, usable_cpus() // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Worker(rank=rank, world_size=world_size, device=device)
    finally:
        dist.destroy_process_group()


def launch(workers: int, script: str, args: list[str]) -> None:
    """Run `python script args` as `workers` processes on this machine, like `torchrun --standalone`.

    The launcher watches the workers; when one fails or is killed it stops the others, so the stage ends
    within seconds with a TrainingError that names the rank, and no worker is left waiting for it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # port 0: a free port, chosen now
                          max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)(script, *args)
    except ChildFailedError as exc:
        raise TrainingError(describe_failure(exc.failures)) from None


def describe_failure(failures: dict) -> str:
    """One line for the first worker that failed (the launcher then stopped the others)."""
    rank, first = min(failures.items(), key=lambda item: item[1].timestamp)
    if first.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-first.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-first.exitcode}"
    else:
        how = f"exited with code {first.exitcode} (its error is above)"
    others = len(failures) - 1
    return (f"training worker rank {rank} (pid {first.pid}) {how}; the launcher stopped the other workers"
            + (f" ({others} more failed)" if others else "") + ". No checkpoint was written")


def shard(indices: torch.Tensor, worker: Worker) -> torch.Tensor:
    """This worker's share of one global batch: every world_size-th image, starting at its rank."""
    return indices[worker.rank::worker.world_size]


def all_reduce_sum(values: torch.Tensor, worker: Worker) -> torch.Tensor:
    if worker.distributed:
        dist.all_reduce(values)
    return values


def gather_chunks(chunk: torch.Tensor, worker: Worker) -> torch.Tensor:
    """Concatenate every worker's `chunk` in rank order (chunks may differ in length by a few rows)."""
    if not worker.distributed:
        return chunk
    sizes = [torch.zeros(1, dtype=torch.long, device=chunk.device) for _ in range(worker.world_size)]
    dist.all_gather(sizes, torch.tensor([len(chunk)], device=chunk.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device)
    padded[:len(chunk)] = chunk
    gathered = [torch.empty_like(padded) for _ in range(worker.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(n.item())] for g, n in zip(gathered, sizes)])


def broadcast_flag(flag: bool, worker: Worker) -> bool:
    """Rank 0's decision, on every rank, so that all of them stop at the same epoch."""
    if not worker.distributed:
        return flag
    value = torch.tensor([int(flag)], device=worker.device)
    dist.broadcast(value, src=0)
    return bool(value.item())
