"""Data-parallel training through the real stage script: reproducible, equivalent to one process, and failing
cleanly (the rank named, no checkpoint, no process left behind) when a worker dies."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import (NORM, easy_split, prepare_synthetic, train_command, train_project as project, train_stage,
                      workers_of)
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import DistillConfig, ModelConfig, TrainConfig, build
from fmnist_seq.data import load_normalization, load_split
from fmnist_seq.distributed import Worker, join
from fmnist_seq.models import Classifier, build_model
from fmnist_seq.teacher import compute_teacher_logits
from fmnist_seq.training import Step, TrainingJob, fit, validate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("distributed"), per_class_train=60)


def test_two_workers_reproduce_bit_for_bit(prepared, tmp_path):
    runs = []
    for name in ("a", "b"):
        folder = project(tmp_path / name, workers=2, epochs=2)
        result = train_stage(folder, prepared)
        assert result.returncode == 0, result.stderr
        runs.append(folder)
    a, b = runs
    assert json.loads((a / "timings.json").read_text())["workers"] == 2
    assert (a / "gru.pt").read_bytes() == (b / "gru.pt").read_bytes()  # weights, history, everything
    assert (a / "live" / "metrics.json").read_text() == (b / "live" / "metrics.json").read_text()
    for series in ("train/loss.tsv", "valid/accuracy.tsv"):
        assert (a / "live/plots/metrics" / series).read_text() == (b / "live/plots/metrics" / series).read_text()


def test_one_worker_is_a_plain_single_process_run(prepared, tmp_path):
    folder = project(tmp_path, workers=1, epochs=2)
    result = train_stage(folder, prepared)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "timings.json").read_text())["workers"] == 1
    cfg = build(TrainConfig, yaml.safe_load((folder / "params.yaml").read_text())["train_gru"], "train_gru")
    seed = yaml.safe_load((folder / "params.yaml").read_text())["seed"]
    direct = fit(TrainingJob(cfg, load_split(prepared, "train"), load_split(prepared, "valid"),
                             load_normalization(prepared), seed), log=lambda _: None)
    staged = load_checkpoint(folder / "gru.pt")
    for key, value in direct.model.state_dict().items():
        assert torch.equal(value, staged.model.state_dict()[key]), key
    assert [r["valid_loss"] for r in staged.history] == [r.valid_loss for r in direct.history]


def test_bad_worker_counts_fail_before_any_work(prepared, tmp_path):
    for value, message in ((0, "train_gru.workers = 0 is out of range: must be >= 1"),
                           (-1, "train_gru.workers = -1 is out of range: must be >= 1"),
                           (64, "train_gru.workers = 64 is out of range: must be <= train_gru.batch_size (32)")):
        folder = project(tmp_path / str(value), workers=value)
        result = train_stage(folder, prepared)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (folder / "live").exists()


def test_a_failing_worker_fails_the_stage_with_its_error(prepared, tmp_path):
    folder = project(tmp_path, workers=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.pt", "stats.json"):
        (broken / name).write_bytes((prepared / name).read_bytes())
    (broken / "valid.pt").write_bytes(b"truncated")
    result = train_stage(folder, broken)
    assert result.returncode == 1
    assert "valid.pt is not a prepared split" in result.stderr  # the worker's own error
    assert "training worker rank" in result.stderr and "exited with code 1" in result.stderr
    assert not (folder / "gru.pt").exists() and not (folder / "live").exists()


def test_a_killed_worker_stops_the_stage_within_seconds_and_a_rerun_succeeds(prepared, tmp_path):
    """With max_restarts 0, as before restarts existed (tests/test_resume.py restarts the workers)."""
    folder = project(tmp_path, workers=2, epochs=400, patience=0, max_restarts=0)
    stage = subprocess.Popen(train_command(folder, prepared), cwd=folder, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, psutil.Process] = {}
        # dvclive appends to the curves after each epoch (its summary, metrics.json, comes only at the end:
        # waiting for that one sat out the whole deadline)
        first_epoch = folder / "live" / "plots" / "metrics" / "train" / "loss.tsv"
        while time.monotonic() < deadline and not first_epoch.exists():
            time.sleep(0.2)
        assert first_epoch.exists(), "no epoch finished within 120 s"
        workers = workers_of(psutil.Process(stage.pid))
        assert set(workers) == {0, 1}, "two workers should be training"
        workers[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = stage.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 1 and took < 15, (stage.returncode, took)
    assert "training worker rank 1" in stderr and "SIGKILL" in stderr, stderr[-2000:]
    assert not (folder / "gru.pt").exists() and not (folder / "live").exists()
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers.values())
    again = project(folder, workers=2, epochs=2)
    rerun = train_stage(again, prepared)
    assert rerun.returncode == 0, rerun.stderr
    assert (folder / "gru.pt").is_file()


def test_two_nodes_started_by_torchrun_train_like_the_stage(prepared, tmp_path):
    """The multi-node recipe of docs/distributed.md, both "nodes" on this machine: two torchrun agents meet
    at one rendezvous endpoint, one worker each. Same world size, same params: the stage's own two-worker
    launch gives the same checkpoint, byte for byte."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = project(tmp_path / "nodes", workers=2, epochs=2)
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                "--rdzv-id", "fmnist-test", *train_command(nodes, prepared)[1:]],
                               cwd=nodes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    assert json.loads((nodes / "timings.json").read_text())["workers"] == 2
    stage = project(tmp_path / "stage", workers=2, epochs=2)
    assert train_stage(stage, prepared).returncode == 0
    assert (nodes / "gru.pt").read_bytes() == (stage / "gru.pt").read_bytes()


# The training launcher under a stop: `launch` in a stage, its monitoring loop told the signal once both workers
# are up (in a destructor, or plainly); the workers wait to be stopped.
LAUNCHER = textwrap.dedent("""
    import signal, sys, threading, time
    from pathlib import Path
    from fmnist_seq.distributed import launch
    from fmnist_seq.stage import run_stage

    folder, sig, where = Path(sys.argv[1]), signal.Signals[sys.argv[2]], sys.argv[3]
    sleep, told = time.sleep, []

    class Bar:  # like tqdm's progress bar: its destructor runs whenever the collector gets to it
        def __del__(self):
            signal.raise_signal(sig)  # the launcher's handler runs inside this destructor
            sum(range(1000))

    def between_looks(seconds):  # the launcher's monitoring loop sleeps between looks at its workers
        if not told and threading.current_thread() is threading.main_thread() and \\
                len(list(folder.glob("ready-*"))) == 2:
            told.append(sig)
            if where == "destructor":
                Bar()  # gone at once
            else:
                signal.raise_signal(sig)
        sleep(seconds)

    def main():
        (folder / "out.txt").write_text("half-written")
        time.sleep = between_looks
        launch(2, str(folder / "worker.py"), [])

    run_stage("demo", main, [folder / "out.txt"])
""")
WORKER = textwrap.dedent("""
    import os, time
    from pathlib import Path
    from fmnist_seq.stage import run_stage

    def main():
        folder = Path(__file__).parent
        (folder / f"ready-{os.environ['RANK']}").write_text(str(os.getpid()))
        time.sleep(30)  # until the launcher stops it
        (folder / f"finished-{os.environ['RANK']}").touch()

    run_stage("worker", main, [], quiet_interrupt=True)  # as a training worker: its launcher speaks for it
""")


@pytest.mark.parametrize("sig, where", [(signal.SIGINT, "signal"), (signal.SIGTERM, "signal"),
                                        (signal.SIGTERM, "destructor")], ids=["ctrl-c", "kill", "kill-in-a-destructor"])
def test_a_stop_of_the_launcher_stops_its_workers_in_one_line(tmp_path, sig, where):
    (tmp_path / "worker.py").write_text(WORKER)
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(tmp_path), sig.name, where], capture_output=True,
                            text=True, timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 128 + sig, result.stderr
    assert result.stderr.strip() == f"demo: interrupted by {sig.name}; its outputs were removed"
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob("finished-*"))
    pids = [int(ready.read_text()) for ready in tmp_path.glob("ready-*")]
    assert len(pids) == 2 and not [pid for pid in pids if psutil.pid_exists(pid)
                                   and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


# --- fit() in two gloo workers on the CPU, each a process of its own (as torchrun would start them) -------------

def _fit_as_rank(rank: int, port: int, job: TrainingJob, out: Path, check_teacher_shards: Classifier | None) -> None:
    """One worker of `job`: joins the group as a launched worker does, trains, and saves what it saw in out/<rank>;
    `check_teacher_shards`: the teacher module whose cached logits the job holds."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    shards = []
    if check_teacher_shards is not None:  # every step: the teacher's probabilities given with x are those of x itself
        train_step = Step.__call__

        def checked(step, x, y, weight=1.0, teacher=None):
            own = torch.softmax(check_teacher_shards.eval()(x).detach() / step.distill.temperature, dim=1)
            shards.append((len(x), (teacher - own).abs().max().item()))
            return train_step(step, x, y, weight, teacher)
        Step.__call__ = checked
    with join("cpu") as worker:
        result = fit(dataclasses.replace(job, worker=worker), log=lambda _: None)
    torch.save({"model": result.model.state_dict(), "selected": result.selected.valid_loss, "shards": shards},
               out / str(rank))


def fit_in_two_workers(job: TrainingJob, out: Path, check_teacher_shards: Classifier | None = None) -> list[dict]:
    """What each of the two ranks saved, in rank order."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_fit_as_rank, (port, job, out, check_teacher_shards), nprocs=2)
    return [torch.load(out / str(rank)) for rank in range(2)]


CNN = ModelConfig(cell="cnn", hidden_size=4, num_layers=2, head="all_steps", head_hidden=16, dropout=0.1)
TRAIN, VALID = easy_split(20, 0), easy_split(5, 1)


def two_worker_cfg(model: ModelConfig, **overrides) -> TrainConfig:
    return TrainConfig(model=model, lr=0.01, batch_size=32, epochs=3, patience=0, device="cpu", workers=2, **overrides)


def test_two_workers_validate_a_batchnorm_model_as_rank_0_saves_it(tmp_path):
    """Each rank's BatchNorm statistics move with its own shard; the epoch figures, and so the selected epoch, are
    those of rank 0's model, the one the checkpoint keeps, on the whole validation split."""
    cfg = two_worker_cfg(CNN)
    saved, _ = fit_in_two_workers(TrainingJob(cfg, TRAIN, VALID, NORM, 0), tmp_path)
    model = build_model(CNN, NORM.mean, NORM.std)
    model.load_state_dict(saved["model"])
    alone, _ = validate(model, VALID, Worker())  # rank 0's selected weights and statistics, in one process
    assert alone == pytest.approx(saved["selected"], rel=1e-6, abs=0)


class PixelTeacher(Classifier):
    """A teacher whose probabilities differ from image to image: a fixed random map of the pixels."""

    def __init__(self) -> None:
        super().__init__(CNN, NORM.mean, NORM.std)
        self.scores = torch.nn.Linear(28 * 28, 10)
        torch.nn.init.normal_(self.scores.weight, std=0.2, generator=torch.Generator().manual_seed(0))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x.flatten(1))


def test_each_worker_distills_from_the_teachers_probabilities_of_its_own_images(tmp_path):
    cfg = two_worker_cfg(ModelConfig(cell="gru", hidden_size=8), distill=DistillConfig(alpha=0.5, temperature=2.0))
    teacher = PixelTeacher()
    logits = compute_teacher_logits(teacher, TRAIN.images, "pixels")  # every worker holds all rows
    ranks = fit_in_two_workers(TrainingJob(cfg, TRAIN, VALID, NORM, 0, teacher=logits), tmp_path,
                               check_teacher_shards=teacher)
    for saved in ranks:
        steps = saved["shards"]
        assert len(steps) == 3 * 7 and sum(n for n, _ in steps) == 3 * len(TRAIN) // 2  # every step of 3 epochs
        assert max(diff for _, diff in steps) < 1e-6
