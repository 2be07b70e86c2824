"""Data-parallel training processes: how many, how each one joins the group, and how a stage launches them.

A training stage with `workers` > 1 launches that many copies of itself through PyTorch's elastic launcher,
exactly as `torchrun --standalone --nproc-per-node N` would (its own free port, so runs side by side never
collide). Each copy reads its rank from the environment that torchrun sets, joins the process group (gloo on
the CPU, nccl on CUDA) and trains its shard of every batch. Started by `torchrun` on several machines, the same
script joins their group instead. With one worker nothing is launched: the stage trains in its own process.
A worker never outlives the process that launched it, and the launcher restarts the whole group up to
`max_restarts` times when a worker dies (the workers then resume from the last epoch's snapshot).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from fmnist_seq.config import check_workers
from fmnist_seq import interrupts
from fmnist_seq.errors import ParamsError, TrainingError
from fmnist_seq.machine import physical_cores, usable_cpus

# What torchrun puts in every worker's environment.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# The pid of the stage process that launched the workers, so that a worker can tell it is gone.
LAUNCHER_PID_ENV = "FMNIST_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What a collective raises when another worker is gone: gloo's transport errors, and NCCL's remote error (its own
# CUDA failures, out of memory or invalid usage read "NCCL error in: ..." as well, and are this worker's).
_GLOO_PEER_LOST = ("gloo/transport", "Connection reset by peer", "Connection closed by peer")
_NCCL_PEER_LOST = ("ncclRemoteError", "remote process exited", "NCCL communicator was aborted")


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
    more than a global batch has images; the count is then checked as an explicit one is.

    On CUDA each worker this machine launches takes a GPU of its own (cuda:LOCAL_RANK), so an explicit count
    past the GPUs visible here is refused before the launch: otherwise the extra ranks fail in set_device, as
    often as max_restarts allows. (Workers that torchrun starts on several machines never come here.)
    """
    if setting == "auto":
        available = max(1, torch.cuda.device_count()) if device.type == "cuda" else physical_cores()
        workers = min(available, batch_size)
    else:
        workers = int(setting)
    check_workers(workers, batch_size, where, resolved_from="auto" if setting == "auto" else None)
    if device.type == "cuda" and workers > (gpus := torch.cuda.device_count()):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ParamsError(
            f"params.yaml: {where}.workers = {workers} is more than the {gpus} CUDA GPU(s) visible on this machine"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + f": each worker trains on a GPU of its own; set {where}.workers to at most {gpus}, or to auto")
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
    except RuntimeError as exc:
        if not _peer_lost(exc):
            raise
        # Another worker died (killed, out of memory): the launcher reports it, and restarts or stops the run.
        # The whole message stays: NCCL puts the cause on its last lines ("Last error: ...").
        cause = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise TrainingError(f"lost contact with another training worker ({type(exc).__name__}: "
                            f"{cause[:2000]})") from exc
    finally:
        dist.destroy_process_group()


def _peer_lost(exc: RuntimeError) -> bool:
    """Whether a failed collective says another worker is gone, rather than that something failed here."""
    text = str(exc)
    if "nccl" in text.lower():  # NCCL errors are DistErrors too, whatever their cause
        return any(s in text for s in _NCCL_PEER_LOST)
    return isinstance(exc, dist.DistError) or any(s in text for s in _GLOO_PEER_LOST)


def die_with_launcher() -> None:
    """End this worker as soon as the process that launched it dies, whatever killed it (SIGKILL included).

    The elastic launcher starts each worker in a session of its own, so a signal to the stage's process group
    (Ctrl-C, `kill -- -PGID`) never reaches the workers: without this they would train on, and rank 0 would
    write outputs that no DVC run records. Linux delivers SIGKILL to a child whose parent dies (a kill writes
    nothing); elsewhere a thread watches the parent.
    """
    launcher = int(os.environ.get(LAUNCHER_PID_ENV, os.getppid()))
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == launcher:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
    if os.getppid() != launcher:  # it died before the line above took effect
        os._exit(1)


def launch(workers: int, script: str, args: list[str], max_restarts: int = 0) -> None:
    """Run `python script args` as `workers` processes on this machine, like `torchrun --standalone`.

    The launcher watches the workers; when one fails or is killed it stops the others and, up to
    `max_restarts` times, starts them all again (they resume from the last snapshot). Past that the stage ends
    within seconds with a TrainingError that names the rank, and no worker is left waiting for it. SIGINT or
    SIGTERM stops the workers and raises Interrupted, as interrupts.py does everywhere else.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher's own warnings (each restart, each signal) would bury the stage's one-line messages; each of
    # its modules sets its logger's level itself, so each is quieted.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # Restarted workers would read the first attempt's stale addresses from the launcher's shared store and
    # hang in init_process_group (pytorch/pytorch#135712): a new store for every attempt.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # port 0: a free port, chosen now
                          max_restarts=max_restarts, monitor_interval=0.1)
    try:
        # The launcher installs its own SIGINT/SIGTERM/SIGHUP/SIGQUIT handlers each time it starts the workers, and
        # must: only its SignalException makes its agent pass the signal on to them before it returns.
        with interrupts.handled_elsewhere(SignalException, lambda exc: exc.sigval):
            elastic_launch(config, entrypoint=sys.executable)(script, *args)
    except ChildFailedError as exc:
        raise TrainingError(describe_failure(exc.failures)) from None
    except SignalException as exc:  # the launcher has already passed the signal on to the workers
        raise interrupts.interrupted(exc.sigval) from None


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


def broadcast_buffers(module: torch.nn.Module, worker: Worker) -> None:
    """Rank 0's buffers (a BatchNorm's running statistics among them) in `module` on every rank, in place."""
    if worker.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(obj: object, worker: Worker) -> object:
    """Rank 0's `obj` on every rank (pickled between this run's own processes, never read from a file)."""
    if not worker.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=worker.device if worker.device.type == "cuda" else None)
    return box[0]


def all_gather_objects(obj: object, worker: Worker) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not worker.distributed:
        return [obj]
    gathered: list = [None] * worker.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
