import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import MODELS, NORM, TEMPERATURES
from fmnist_seq import quantization
from fmnist_seq.checkpoint import checkpoint_sha256, load_checkpoint
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.config import ExportConfig, ModelConfig
from fmnist_seq.errors import ExportError, InferenceError
from fmnist_seq.inference_bench import MODEL_IR_VERSION, benchmark, matmul_model, session_engine, torch_engine
from fmnist_seq.models import SequenceClassifier
from fmnist_seq.onnx_export import ModelToExport, export_checkpoint, export_model
from fmnist_seq.parity import LabelledImages, Outputs, check_parity, onnx_logits, require_parity, torch_logits
from fmnist_seq.quantization import quantize_checked
from fmnist_seq.runtime import CPU, CUDA, active_provider, metadata, open_session, run, select_providers

quiet = lambda _: None  # noqa: E731


def _cfg(**changes) -> ExportConfig:
    base = ExportConfig(models=["gru"], exporters={"rnn": "dynamo", "gru": "dynamo"}, bench_seconds=0.02,
                        bench_batch_size=32, quantize=[])
    return dataclasses.replace(base, **changes)


def _gru(out) -> ModelToExport:
    """The fixture's GRU, as the export stage reads it."""
    return ModelToExport.load("gru", out / "gru.pt", temperature=TEMPERATURES["gru"])


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_parity_and_figures(exported, name):
    out, figures, pixels, labels = exported
    f = figures[name]
    assert f["mismatched_predictions"] == 0 and f["max_logit_diff"] < 1e-4 and f["max_probability_diff"] < 5e-5
    torch_accuracy = float((torch_logits(load_checkpoint(out / f"{name}.pt").model, pixels).argmax(1) == labels).mean())
    assert f["test_accuracy"] == torch_accuracy > 0.3
    assert f["file_bytes"] == (out / f"{name}.onnx").stat().st_size


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_dynamic_batch_matches_pytorch(exported, name, batch):
    out, _, pixels, _ = exported
    session = open_session(out / f"{name}.onnx", [CPU])
    logits, probabilities = run(session, pixels[:batch])
    assert logits.shape == (batch, 10) and probabilities.shape == (batch, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    reference = torch_logits(load_checkpoint(out / f"{name}.pt").model, pixels[:batch])
    np.testing.assert_allclose(logits, reference, atol=1e-4)


# With the default models (an RNN with all_steps, a GRU with last_step), every cell and every head at least
# once; each export takes seconds, so not all twelve pairs, and only in the full suite.
@pytest.mark.e2e
@pytest.mark.parametrize("cell, head", [("gru", "max_steps"), ("lstm", "mean_steps"), ("lstm", "last_step")])
def test_every_variant_exports_and_matches_pytorch(cell, head):
    """The variants the sweeps train (docs/accuracy.md) export like the defaults: bidirectional, 2 layers."""
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(cell=cell, hidden_size=8, num_layers=2, bidirectional=True,
                                           head=head, head_hidden=16), mean=0.29, std=0.35).eval()
    proto = export_model(model, "dynamo", opset=18)
    session = ort.InferenceSession(proto.SerializeToString(), providers=[CPU])
    pixels = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    logits, probabilities = session.run(None, {"pixels": pixels})
    np.testing.assert_allclose(logits, torch_logits(model, pixels), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("file", ["rnn.onnx", "gru.onnx", "lstm.onnx", "rnn.int8.onnx", "lstm.int8.onnx"])
def test_probabilities_are_softmax_of_logits_over_the_temperature(exported, file):
    """The temperature is baked into every shipped graph, int8 included: probabilities = softmax(logits / T) on
    any input, the logits unchanged (PyTorch's), and T in the file's metadata."""
    out, _, _, _ = exported
    name = file.split(".")[0]
    if not (out / file).exists():
        pytest.skip(f"{file} was dropped by the fixture's accuracy budget")
    session = open_session(out / file, [CPU])
    pixels = np.random.default_rng(7).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    logits, probabilities = run(session, pixels)
    t = TEMPERATURES[name]
    expected = torch.softmax(torch.from_numpy(logits).double() / t, dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert np.abs(probabilities - torch.softmax(torch.from_numpy(logits), dim=1).numpy()).max() > 1e-3
    assert (probabilities.argmax(1) == logits.argmax(1)).all()
    meta = metadata(session)
    assert meta["temperature"] == t and "logits / temperature" in meta["outputs"]["probabilities"]
    if "int8" not in file:
        np.testing.assert_allclose(logits, torch_logits(load_checkpoint(out / f"{name}.pt").model, pixels), atol=1e-4)


def test_the_export_reports_each_files_calibration_on_test(exported):
    _, figures, _, _ = exported
    for name in ("rnn", "gru", "lstm"):
        f = figures[name]
        assert f["temperature"] == TEMPERATURES[name] and 0 <= f["test_ece"] <= 1 and f["test_nll"] > 0
        assert 0 <= f["int8"]["test_ece"] <= 1 and f["int8"]["valid_nll"] > 0


def test_input_contract_is_uint8_pixels(exported):
    out, _, pixels, _ = exported
    session = ort.InferenceSession(str(out / "gru.onnx"), providers=[CPU])
    (inp,) = session.get_inputs()
    assert inp.name == "pixels" and inp.type == "tensor(uint8)" and inp.shape[1:] == [28, 28]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    with pytest.raises(Exception, match="(?i)type"):
        session.run(None, {"pixels": pixels[:2].astype(np.float32)})


def test_metadata_round_trip(exported):
    out, figures, _, _ = exported
    meta = metadata(open_session(out / "rnn.onnx", [CPU]))
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["input"]["dtype"] == "uint8" and "dark background" in meta["input"]["polarity"]
    assert meta["normalization"]["mean"] == pytest.approx(NORM.mean)
    assert meta["normalization"]["std"] == pytest.approx(NORM.std)
    assert meta["model_params"]["model"] == dataclasses.asdict(MODELS["rnn"])  # the model's own train block
    assert meta["test_accuracy"] == figures["rnn"]["test_accuracy"]
    assert meta["checkpoint_sha256"] == checkpoint_sha256(out / "rnn.pt")
    assert "git_commit" not in meta


def test_same_checkpoint_exports_the_same_bytes_whatever_the_git_commit(exported, tmp_path, monkeypatch):
    """The file records the checkpoint's hash, not the commit: a new commit alone must not change it."""
    out, _, pixels, labels = exported
    model = _gru(out)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    bytes_by_commit = []
    for commit in ("first", "second"):
        subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", commit], cwd=repo, check=True)
        monkeypatch.chdir(repo)
        result = export_checkpoint(model, LabelledImages("test", pixels, labels), _cfg(), tmp_path / commit, [CPU],
                                   log=quiet)
        bytes_by_commit.append(result.path.read_bytes())
    assert bytes_by_commit[0] == bytes_by_commit[1]
    assert bytes_by_commit[0] == (out / "gru.onnx").read_bytes()
    graph = onnx.load_from_string(bytes_by_commit[0]).graph  # no stack traces with this machine's paths
    assert not any(node.metadata_props for node in graph.node) and not graph.metadata_props


def test_parity_failure_stops_the_export_and_writes_nothing(exported, tmp_path):
    """A checkpoint that computes NaN: both engines agree on every predicted class (argmax of a NaN row is 0)
    and `NaN > tolerance` is false, so the gate must fail on the NaN itself."""
    out, _, pixels, labels = exported
    model = _gru(out)
    torch.nn.init.constant_(model.checkpoint.model.head[-1].bias, float("nan"))
    with pytest.raises(ExportError, match=r"onnxruntime disagrees with PyTorch on the test set: max \|logits diff\| "
                                          r"nan .*NaN or inf in 2600 of onnxruntime's and 2600 of PyTorch's logits.*"
                                          r"No model file was written.*checkpoint is broken"):
        export_checkpoint(model, LabelledImages("test", pixels, labels), _cfg(), tmp_path / "nan", [CPU], log=quiet)
    assert not (tmp_path / "nan").exists() or not any((tmp_path / "nan").iterdir())


def _outputs(logits: np.ndarray) -> Outputs:
    return Outputs(logits, torch.softmax(torch.from_numpy(logits), dim=1).numpy())


def test_parity_gate_names_the_output_that_broke_it():
    reference = _outputs(np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32))
    labels = reference.logits.argmax(1)

    def gate(exported: Outputs, max_logit_diff: float = 1e-4, max_probability_diff: float = 5e-5) -> None:
        require_parity("m", check_parity(reference, exported, labels), "test", max_logit_diff, max_probability_diff)

    gate(reference)
    near = _outputs(reference.logits + np.float32(1e-5))
    gate(near)
    with pytest.raises(ExportError, match=r"on the test set: max \|logits diff\| [\d.e-]+ \(allowed 1e-06\)\. No model"):
        gate(near, max_logit_diff=1e-6)
    # Apps read the probabilities: a graph whose softmax is off fails even with exact logits.
    off = Outputs(reference.logits, reference.probabilities * np.float32(1.01))
    with pytest.raises(ExportError, match=r"on the test set: max \|probabilities diff\| .* \(allowed 5e-05\)\. No model"):
        gate(off)
    # NaN where the largest logit was: the same predicted class, a NaN difference, and a failed gate.
    nan_logits = reference.logits.copy()
    nan_logits[3, labels[3]] = np.nan
    with pytest.raises(ExportError, match=r"NaN or inf in 1 of onnxruntime's and 0 of PyTorch's logits.*other exporter"):
        gate(Outputs(nan_logits, reference.probabilities))
    inf_probabilities = reference.probabilities.copy()
    inf_probabilities[0, 0] = np.inf
    with pytest.raises(ExportError, match=r"max \|probabilities diff\| inf"):
        gate(Outputs(reference.logits, inf_probabilities))


def test_quantized_variant_kept_only_within_tolerance(exported):
    out, figures, _, _ = exported
    for name in ("rnn", "gru"):
        q = figures[name]["int8"]
        assert q["kept"] == (q["valid_accuracy_drop"] <= 0.05)
        assert (out / f"{name}.int8.onnx").exists() == q["kept"]
        for split in ("valid", "test"):  # the worse of one image per call and batches of 1000, on each split
            assert q[f"{split}_accuracy"] == min(q[f"{split}_accuracy_batch_1"], q[f"{split}_accuracy_batch_1000"])
    kept = [name for name in ("rnn", "gru") if figures[name]["int8"]["kept"]]
    assert kept, "the synthetic models should quantize well enough to keep at least one int8 file"
    for name in kept:  # the file describes itself, not the fp32 model it was made from
        meta = metadata(open_session(out / f"{name}.int8.onnx", [CPU]))
        assert meta["test_accuracy"] == figures[name]["int8"]["test_accuracy"]
        assert "batch" in meta["quantization"] and meta["class_names"] == list(CLASS_NAMES)


def test_int8_file_states_its_own_accuracy(exported):
    out, _, pixels, labels = exported
    fp32 = onnx.load(out / "rnn.onnx")
    assert metadata(open_session(out / "rnn.onnx", [CPU]))["test_accuracy"] == 1.0
    wrong = (labels + 1) % 10  # int8 scores ~0 against these; the fp32 file's metadata says 1.0
    int8 = quantize_checked(fp32, LabelledImages("valid", pixels, labels), LabelledImages("test", pixels, wrong),
                            max_accuracy_drop=0.05)
    assert int8.kept and int8.figures["test_accuracy"] < 0.1
    meta = {p.key: p.value for p in int8.model.metadata_props}
    assert json.loads(meta["test_accuracy"]) == int8.figures["test_accuracy"] and meta["model_name"] == "rnn"


def _always_class_0() -> onnx.ModelProto:
    """A classifier of the project's contract that answers class 0 for every image (its logit: the pixel sum)."""
    h = onnx.helper
    weights = np.zeros((28 * 28, 10), np.float32)
    weights[:, 0] = 1.0
    graph = h.make_graph(
        [h.make_node("Cast", ["pixels"], ["x"], to=onnx.TensorProto.FLOAT),
         h.make_node("Reshape", ["x", "shape"], ["rows"]),
         h.make_node("MatMul", ["rows", "weights"], ["logits"]),
         h.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "always_class_0",
        [h.make_tensor_value_info("pixels", onnx.TensorProto.UINT8, ["batch", 28, 28])],
        [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", 10]) for n in ("logits", "probabilities")],
        [onnx.numpy_helper.from_array(np.array([-1, 28 * 28], np.int64), "shape"),
         onnx.numpy_helper.from_array(weights, "weights")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=MODEL_IR_VERSION)


def test_int8_variant_is_kept_or_dropped_on_validation_never_on_test(exported, monkeypatch):
    """Issue 26: the figure that decides must not be the one reported. An "int8" model that always answers class 0
    loses 90 points where the labels are the real ones and gains where they are all 0: whichever split decides
    shows in `kept`."""
    out, _, pixels, labels = exported
    monkeypatch.setattr(quantization, "quantized", lambda _: _always_class_0())
    fp32 = onnx.load(out / "rnn.onnx")  # right on every one of these images
    real, zeros = (pixels, labels), (pixels, np.zeros_like(labels))
    dropped = quantize_checked(fp32, LabelledImages("valid", *real), LabelledImages("test", *zeros), 0.002)
    assert not dropped.kept
    assert dropped.figures["valid_accuracy_drop"] == pytest.approx(0.9) and dropped.figures["test_accuracy"] == 1.0
    assert dropped.figures["test_accuracy_drop"] < 0  # would have kept it, had the test split decided
    kept = quantize_checked(fp32, LabelledImages("valid", *zeros), LabelledImages("test", *real), 0.002)
    assert kept.kept and kept.figures["test_accuracy_drop"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="not both on 'test'"):
        quantize_checked(fp32, LabelledImages("test", *real), LabelledImages("test", *real), 0.002)


def test_files_load_in_older_onnxruntime_builds(exported):
    """IR 10 as the exporter writes it: onnxruntime-gpu 1.31 rejects IR 14, onnx.helper's default."""
    out = exported[0]
    assert {onnx.load(out / f"{name}.onnx").ir_version for name in ("rnn", "gru", "rnn.int8")} == {MODEL_IR_VERSION}
    assert matmul_model(np.ones((2, 2), np.float32)).ir_version == MODEL_IR_VERSION


def test_benchmark_times_every_engine_in_the_same_rounds(exported):
    out, _, pixels, _ = exported
    engines = {"torch": torch_engine(load_checkpoint(out / "rnn.pt").model),
               "onnxruntime_cpu": session_engine(open_session(out / "rnn.onnx", [CPU], threads=1)),
               "onnxruntime_cpu_int8": session_engine(open_session(out / "rnn.int8.onnx", [CPU], threads=1))}
    calls = {label: 0 for label in engines}

    def counted(label):
        def call(x):
            calls[label] += 1
            return engines[label](x)
        return call

    figures = benchmark({label: counted(label) for label in engines}, pixels, 32, seconds=0.1)
    for label in engines:
        assert figures[f"{label}_images_per_s"] > 0 and figures[f"{label}_latency_ms"] > 0
        assert calls[label] >= 3 * 2 * 4  # 3 rounds x (batch, single) x (warm-up + at least 3 timed calls)
    assert figures["onnxruntime_cpu_int8_speedup"] == pytest.approx(
        figures["onnxruntime_cpu_int8_images_per_s"] / figures["torch_images_per_s"], rel=1e-2)
    assert "torch_speedup" not in figures


def test_provider_selection(monkeypatch):
    assert select_providers("cpu") == [CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert select_providers("auto") == [CUDA, CPU] and select_providers("cuda") == [CUDA, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert select_providers("auto") == [CPU]
    with pytest.raises(InferenceError, match="onnxruntime-gpu"):
        select_providers("cuda")


# Without a working GPU, onnxruntime (CPU build, or the GPU build missing a driver) quietly runs a CUDA
# session on the CPU; these pin down what the package makes of that. Where the GPU build meets a GPU,
# the test after them checks that CUDA really starts instead.
CUDA_WORKS = CUDA in ort.get_available_providers() and torch.cuda.is_available()
no_gpu = pytest.mark.skipif(CUDA_WORKS, reason="onnxruntime-gpu and a GPU: CUDA would start")


@pytest.mark.skipif(not CUDA_WORKS, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_provider_starts_and_is_measured(exported, tmp_path):
    out, _, pixels, labels = exported
    assert active_provider(open_session(out / "gru.onnx", [CUDA, CPU], require=True)) == CUDA
    result = export_checkpoint(_gru(out), LabelledImages("test", pixels, labels), _cfg(provider="cuda"), tmp_path,
                               [CUDA, CPU], log=quiet)
    assert result.providers == [CUDA, CPU]
    assert result.figures["cuda_test_accuracy"] == pytest.approx(result.test_accuracy, abs=0.01)


def test_cuda_library_preload_keeps_stdout_clean(exported, monkeypatch, capsys):
    """onnxruntime's preloader print()s its warnings; `fmnist-predict --json` owns stdout.

    The real preloader runs, made to warn by the CUDA version it believes it was built for (the CPU build has
    none, so it would return silently)."""
    monkeypatch.setitem(ort.preload_dlls.__globals__, "cuda_version", "11.8")
    monkeypatch.delitem(sys.modules, "torch")  # an app without PyTorch, which would have loaded the libraries
    open_session(exported[0] / "gru.onnx", [CUDA, CPU])
    captured = capsys.readouterr()
    assert "built with CUDA 11.8" in captured.err and "CUDA" not in captured.out


@no_gpu
def test_required_provider_that_does_not_start_is_an_error(exported):
    out = exported[0]
    with pytest.raises(InferenceError, match=r"could not start CUDAExecutionProvider.*onnxruntime-gpu"):
        open_session(out / "gru.onnx", [CUDA, CPU], require=True)
    assert active_provider(open_session(out / "gru.onnx", [CUDA, CPU])) == CPU  # what `auto` gets


@no_gpu
def test_export_with_cuda_that_does_not_start(exported, tmp_path):
    out, _, pixels, labels = exported
    model, test = _gru(out), LabelledImages("test", pixels, labels)
    lines: list[str] = []
    result = export_checkpoint(model, test, _cfg(provider="auto"), tmp_path, [CUDA, CPU], log=lines.append)
    assert result.providers == [CPU]  # no CPU figures passed off as CUDA
    assert "cuda_test_accuracy" not in result.figures
    assert any("CUDA provider did not start" in line for line in lines)
    with pytest.raises(InferenceError, match="could not start CUDAExecutionProvider"):
        export_checkpoint(model, test, _cfg(provider="cuda"), tmp_path / "strict", [CUDA, CPU], log=lines.append)
    assert not (tmp_path / "strict" / "gru.onnx").exists()


def test_onnx_logits_in_any_batch_size_match(exported):
    out, _, pixels, _ = exported
    session = open_session(out / "gru.onnx", [CPU])
    np.testing.assert_allclose(onnx_logits(session, pixels, 1), onnx_logits(session, pixels, 1000), atol=1e-5)
