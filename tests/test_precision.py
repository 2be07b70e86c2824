"""The training step's precision: bf16 autocast of the forward pass with fp32 weights, optimizer state and loss;
fp32 exactly as before; a device without native bf16 told once and trained in bf16 all the same; a bf16 run
resumes exactly and exports to an fp32 ONNX file that passes the parity gate."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import NORM, easy_split, prepare_synthetic, train_project
from fmnist_seq import precision, training, training_stage
from fmnist_seq.checkpoint import load_checkpoint, save_checkpoint
from fmnist_seq.config import DistillConfig, ExportConfig, ModelConfig, TrainConfig, as_dict
from fmnist_seq.onnx_export import ModelToExport, export_checkpoint
from fmnist_seq.parity import LabelledImages
from fmnist_seq.precision import ISA_ENV, LEGACY_ISA_ENV, autocast, check_precision, native_bf16
from fmnist_seq.snapshot import RunKey, Snapshots
from fmnist_seq.training import TrainingJob, fit, make_step
from fmnist_seq.distributed import Worker

CPU = torch.device("cpu")
RNN = ModelConfig(cell="rnn", hidden_size=16, bidirectional=True, head="all_steps", head_hidden=32, dropout=0.1)
TRAIN, VALID = easy_split(12, 0), easy_split(4, 1)


def cfg(precision_: str, **overrides) -> TrainConfig:
    base = dict(model=RNN, lr=0.01, schedule="onecycle", batch_size=32, epochs=3, patience=0, grad_clip=1.0,
                label_smoothing=0.05, device="cpu", workers=1, precision=precision_)
    return TrainConfig(**{**base, **overrides})


def built_step(config: TrainConfig, seed: int = 0) -> training.Step:
    torch.manual_seed(seed)
    model = training.build_model(config.model, NORM.mean, NORM.std)
    return make_step(config, model, Worker(), steps_per_epoch=10)


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return TRAIN.images[:n], TRAIN.labels[:n]


# --- the step ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_isa_limit(monkeypatch):
    monkeypatch.delenv(ISA_ENV, raising=False)
    monkeypatch.delenv(LEGACY_ISA_ENV, raising=False)


@pytest.mark.parametrize("precision_, matmul", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_forward_runs_in_the_blocks_precision_and_the_loss_weights_and_optimizer_in_fp32(precision_, matmul,
                                                                                              monkeypatch):
    step = built_step(cfg(precision_, distill=DistillConfig(alpha=0.5)))
    linear_out: list[torch.dtype] = []
    for module in step.model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: linear_out.append(out.dtype))
    seen: dict[str, torch.dtype] = {}
    criterion = step.criterion

    def watched_criterion(logits, y):
        loss = criterion(logits, y)
        seen["criterion input"], seen["loss"] = logits.dtype, loss.dtype
        return loss
    step.criterion = watched_criterion
    kl_div = nn.functional.kl_div

    def watched_kl_div(log_p, q, **kwargs):
        seen["kl_div input"] = log_p.dtype
        return kl_div(log_p, q, **kwargs)
    monkeypatch.setattr(nn.functional, "kl_div", watched_kl_div)
    x, y = batch()
    teacher = torch.softmax(torch.randn(len(y), 10, generator=torch.Generator().manual_seed(0)), dim=1)
    logits = step(x, y, teacher=teacher)
    assert linear_out and set(linear_out) == {matmul}  # the head's matmuls
    assert seen == {"criterion input": torch.float32, "loss": torch.float32, "kl_div input": torch.float32}
    assert logits.dtype == torch.float32  # what train_epoch sums into the epoch's loss and accuracy
    # fp32 master weights and optimizer state: autocast never converts the parameters
    assert {p.dtype for p in step.model.parameters()} == {torch.float32}
    states = [v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert states and {v.dtype for v in states} == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")  # the context ended with the forward pass


def test_fp32_computes_bit_for_bit_what_the_step_computed_before_the_setting():
    """The committed figures are fp32 runs: the fp32 step must not move them by a bit. The reference is the step as
    it was (no autocast code, loss on the model's own logits), with autocast explicitly off."""
    ours = built_step(cfg("fp32"))
    reference = built_step(cfg("fp32"))
    for i in range(3):
        x, y = TRAIN.images[32 * i:32 * (i + 1)], TRAIN.labels[32 * i:32 * (i + 1)]
        torch.manual_seed(i)  # the same dropout masks for both
        got = ours(x, y)
        torch.manual_seed(i)
        with torch.autocast("cpu", enabled=False):
            logits = reference.model(x)
            loss = reference.criterion(logits, y)
        reference.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(reference.model.parameters(), reference.grad_clip)
        reference.optimizer.step()
        reference.scheduler.step()
        assert torch.equal(got, logits.detach())
    for (name, a), b in zip(ours.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name
    # ... and bf16 does move them: the setting is not a no-op
    bf16, fp32 = built_step(cfg("bf16")), built_step(cfg("fp32"))
    for step in (bf16, fp32):
        torch.manual_seed(0)
        step(TRAIN.images[:32], TRAIN.labels[:32])
    assert not all(torch.equal(a, b) for a, b in zip(bf16.model.parameters(), fp32.model.parameters()))


def test_autocast_is_nothing_at_all_for_fp32_and_refuses_an_unknown_precision():
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        autocast("fp16", CPU)


# --- native bf16 ---------------------------------------------------------------------------------------------

def fake_processor(monkeypatch, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def test_this_torch_has_the_processor_probes():
    """native_bf16 counts a torch without them as a processor without bf16: they must be there (torch 2.14)."""
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)


@pytest.mark.parametrize("isa, native", [
    (None, True), ("ALL", True), ("default", True), ("AVX512_CORE_BF16", True), ("avx512_core_amx", True),
    ("AVX10_1_512", True), ("AVX512_CORE_FP16", True), ("AVX10_1_512_AMX_FP16", True),
    ("AVX512_CORE_VNNI", False), ("AVX512_CORE", False), ("avx2", False), ("AVX2_VNNI_2", False), ("SSE41", False),
])
def test_native_bf16_honours_onednn_max_cpu_isa(monkeypatch, isa, native):
    fake_processor(monkeypatch, avx512_bf16=True)
    if isa is not None:
        monkeypatch.setenv(ISA_ENV, isa)
    assert native_bf16(CPU) is native


def test_native_bf16_needs_the_processor_whatever_the_isa_limit(monkeypatch):
    fake_processor(monkeypatch, avx512_bf16=False)
    assert native_bf16(CPU) is False
    fake_processor(monkeypatch, avx512_bf16=False, amx=True)  # AMX tiles multiply bf16 too
    assert native_bf16(CPU) is True
    monkeypatch.setenv(LEGACY_ISA_ENV, "AVX2")  # oneDNN's older name for the limit
    assert native_bf16(CPU) is False


def test_native_bf16_on_cuda_does_not_count_emulation(monkeypatch):
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # a pre-Ampere GPU: emulated only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert native_bf16(torch.device("cuda")) is False and asked == [False]


def test_check_precision_names_an_isa_limit_as_the_reason(monkeypatch):
    lines: list[str] = []
    fake_processor(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv(ISA_ENV, "AVX2")  # how a machine without AVX512_BF16 is emulated on one with it
    assert not check_precision("train_rnn", "bf16", CPU, lines.append)
    assert lines == ["train_rnn: warning: precision bf16, but ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN below "
                     "AVX512_CORE_BF16: training in bf16 anyway, emulated and slower than fp32 here, and its figures "
                     "may differ from the committed ones (docs/performance.md#precision); set train_rnn.precision: "
                     "fp32 for full speed"]


def test_check_precision_says_nothing_for_fp32_or_native_bf16(monkeypatch):
    lines: list[str] = []
    fake_processor(monkeypatch, avx512_bf16=False)
    assert check_precision("train_gru", "fp32", CPU, lines.append)
    fake_processor(monkeypatch, avx512_bf16=True)
    assert check_precision("train_gru", "bf16", CPU, lines.append)
    assert lines == []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("precision-data"), per_class_train=10)


def test_a_bf16_block_without_native_bf16_says_so_once_and_trains_in_bf16(tmp_path, prepared, monkeypatch, capsys):
    """The training stage, in this process: one line naming the block, the emulation, the figures and the fix;
    then every step in bf16 (no silent fall-back to fp32), recorded in timings.json and the checkpoint."""
    train_project(tmp_path, epochs=2, workers=1, precision="bf16")
    monkeypatch.chdir(tmp_path)
    fake_processor(monkeypatch, avx512_bf16=False)  # a machine without AVX512_BF16 or AMX
    steps: list[str] = []
    real_autocast = training.autocast
    monkeypatch.setattr(training, "autocast", lambda p, d: steps.append(p) or real_autocast(p, d))
    files = training_stage.StageFiles("gru", prepared, tmp_path / "gru.pt", tmp_path / "live", tmp_path / "timings.json")
    training_stage.run(files, "stages/train.py", [], [])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "emulated" in line] == [
        "train_gru: warning: precision bf16, but the cpu has no native bf16 (no AVX512_BF16 or AMX): training in bf16 "
        "anyway, emulated and slower than fp32 here, and its figures may differ from the committed ones "
        "(docs/performance.md#precision); set train_gru.precision: fp32 for full speed"], out  # once, not per epoch
    assert steps and set(steps) == {"bf16"}
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert (timings["precision"], timings["native_bf16"]) == ("bf16", False)
    assert load_checkpoint(tmp_path / "gru.pt").precision == "bf16"


def test_an_older_checkpoint_without_precision_means_fp32(tmp_path):
    result = fit(TrainingJob(cfg("fp32", epochs=1), TRAIN, VALID, NORM, 0), log=lambda _: None)
    old_params = {k: v for k, v in as_dict(cfg("fp32")).items() if k != "precision"}
    save_checkpoint(tmp_path / "old.pt", result.model, old_params, 1, {"loss": 1.0, "accuracy": 0.5}, [])
    assert load_checkpoint(tmp_path / "old.pt").precision == "fp32"
    save_checkpoint(tmp_path / "new.pt", result.model, as_dict(cfg("bf16")), 1, {"loss": 1.0, "accuracy": 0.5}, [])
    assert load_checkpoint(tmp_path / "new.pt").precision == "bf16"


# --- a bf16 run end to end -----------------------------------------------------------------------------------

class Killed(Exception):
    """Stands in for a kill: training stops inside an epoch, after the previous one was saved."""


def test_a_bf16_run_resumes_exactly_and_exports_fp32_onnx_that_passes_the_parity_gate(tmp_path):
    config = cfg("bf16", epochs=3)
    job = TrainingJob(config, TRAIN, VALID, NORM, 0)
    uninterrupted = fit(job, log=lambda _: None)

    key = RunKey.of("train_rnn", config, 0, CPU, 1, [], [])
    snapshots = Snapshots(key, tmp_path / "snapshots", log=lambda _: None)

    def kill_in_epoch_2(record) -> None:
        if record.epoch == 2:  # before epoch 2's snapshot: the kill lands inside it
            raise Killed
    with pytest.raises(Killed):
        fit(job, on_epoch=kill_in_epoch_2, log=lambda _: None, snapshots=snapshots)
    assert snapshots.saved_epoch() == 1
    resumed = fit(job, log=lambda _: None, snapshots=snapshots)
    assert [r.results() for r in resumed.history] == [r.results() for r in uninterrupted.history]
    assert resumed.selected_epoch == uninterrupted.selected_epoch
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, uninterrupted.model.state_dict()[name]), name
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name  # fp32 weights to ship

    save_checkpoint(tmp_path / "rnn.pt", resumed.model, as_dict(config), resumed.selected_epoch,
                    {"loss": resumed.selected.valid_loss, "accuracy": resumed.selected.valid_accuracy},
                    [r.results() for r in resumed.history])
    test = easy_split(4, 3)
    export = ExportConfig(models=["rnn"], exporters={"rnn": "dynamo"}, bench_seconds=0.05, bench_batch_size=32)
    model = ModelToExport.load("rnn", tmp_path / "rnn.pt", RNN, 1.0)
    result = export_checkpoint(model, LabelledImages("test", test.images.numpy(), test.labels.numpy()), export,
                               tmp_path, ["CPUExecutionProvider"], log=lambda _: None)  # raises past the gate
    assert result.figures["max_logit_diff"] <= export.max_logit_diff and result.figures["mismatched_predictions"] == 0
    proto = onnx.load(str(tmp_path / "rnn.onnx"))
    floats = {init.data_type for init in proto.graph.initializer if init.data_type != onnx.TensorProto.INT64}
    assert floats == {onnx.TensorProto.FLOAT}  # no bf16 weights in what ships
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {onnx.TensorProto.FLOAT}
