"""What a training worker makes of a failed collective: a lost peer in one line that keeps the real cause, and
any other error (NCCL's own CUDA failures included) as it is. No process group is started."""

import pytest
import torch
import torch.distributed as dist

from fmnist_seq.distributed import join
from fmnist_seq.errors import TrainingError

# As PyTorch words NCCL's errors: the cause is on the last lines, not the first.
NCCL_PEER_GONE = ("NCCL error in: ProcessGroupNCCL.cpp:3356, remote process exited or there was a network error, "
                  "NCCL version 2.30.7\nncclRemoteError: A call failed possibly due to a network error or a remote "
                  "process exiting prematurely.\nLast error:\nsocket recv failed: rank 1 closed the connection")
NCCL_OWN_FAILURE = ("NCCL error in: ProcessGroupNCCL.cpp:3356, unhandled cuda error (run with NCCL_DEBUG=INFO for "
                    "details), NCCL version 2.30.7\nncclUnhandledCudaError: Call to CUDA function failed.\n"
                    "Last error:\nCuda failure 'out of memory'")


@pytest.fixture
def in_a_launched_run(monkeypatch):
    """This process as rank 0 of 2 under torchrun, without a process group."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the session's other tests keep theirs


def _raised_in_join(error: Exception) -> BaseException:
    with pytest.raises(BaseException) as caught:
        with join("cpu"):
            raise error
    return caught.value


def test_a_lost_peer_keeps_the_real_cause(in_a_launched_run):
    for error in (dist.DistBackendError(NCCL_PEER_GONE), RuntimeError(NCCL_PEER_GONE)):
        lost = _raised_in_join(error)
        assert isinstance(lost, TrainingError) and lost.__cause__ is error
        assert str(lost).startswith("lost contact with another training worker (")
        assert "ncclRemoteError" in str(lost) and "socket recv failed: rank 1 closed the connection" in str(lost)
    gloo = _raised_in_join(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5"))
    assert isinstance(gloo, TrainingError) and "Connection closed by peer" in str(gloo)


def test_a_workers_own_nccl_failure_is_not_a_lost_peer(in_a_launched_run):
    """An NCCL error is a DistError whatever its cause: this one is the worker's own, and stays as it is."""
    for error in (dist.DistBackendError(NCCL_OWN_FAILURE), RuntimeError(NCCL_OWN_FAILURE)):
        assert _raised_in_join(error) is error
    store = dist.DistNetworkError("failed to recv, got 0 bytes: Connection reset by peer")  # rank 0's store is gone
    assert isinstance(_raised_in_join(store), TrainingError)
