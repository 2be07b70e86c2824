import dataclasses
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import NORM
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.errors import ExportError
from fmnist_seq.config import ExportConfig
from fmnist_seq.onnx_export import (MODEL_IR_VERSION, Parity, PixelClassifier, export_checkpoint, matmul_model,
                                    providers_that_ran, quantize_variant, require_parity, torch_outputs)
from fmnist_seq.predict import main as predict_main, to_pixels
from fmnist_seq.runtime import CPU, CUDA, active_provider, metadata, open_session, run, select_providers


@pytest.mark.parametrize("name", ["rnn", "gru"])
def test_parity_and_figures(exported, name):
    out, figures, pixels, labels = exported
    f = figures[name]
    assert f["mismatched_predictions"] == 0 and f["max_logit_diff"] < 1e-4
    assert f["test_accuracy_onnxruntime"] == f["test_accuracy_torch"] > 0.3
    assert f["onnxruntime_cpu_images_per_s"] > 0 and f["torch_latency_ms"] > 0
    assert f["file_bytes"] == (out / f"{name}.onnx").stat().st_size


@pytest.mark.parametrize("name", ["rnn", "gru"])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_dynamic_batch_matches_pytorch(exported, name, batch):
    out, _, pixels, _ = exported
    session = open_session(out / f"{name}.onnx", ["CPUExecutionProvider"])
    logits, probabilities = run(session, pixels[:batch])
    assert logits.shape == (batch, 10) and probabilities.shape == (batch, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    ckpt = load_checkpoint(out / f"{name}.pt")
    reference = torch_outputs(PixelClassifier(ckpt.model, NORM.mean, NORM.std), pixels[:batch])
    np.testing.assert_allclose(logits, reference, atol=1e-4)


def test_input_contract_is_uint8_pixels(exported):
    out, _, pixels, _ = exported
    session = ort.InferenceSession(str(out / "gru.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "pixels" and inp.type == "tensor(uint8)" and inp.shape[1:] == [28, 28]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    with pytest.raises(Exception, match="(?i)type"):
        session.run(None, {"pixels": pixels[:2].astype(np.float32)})


def test_metadata_round_trip(exported):
    out, figures, _, _ = exported
    meta = metadata(open_session(out / "rnn.onnx", ["CPUExecutionProvider"]))
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["input"]["dtype"] == "uint8" and "dark background" in meta["input"]["polarity"]
    assert meta["normalization"]["mean"] == pytest.approx(NORM.mean)
    assert meta["model_params"]["model"]["cell"] == "rnn"
    assert meta["test_accuracy"] == figures["rnn"]["test_accuracy_onnxruntime"]
    assert len(meta["git_commit"]) in (40, len("unknown"))
    props = {p.key for p in onnx.load(out / "rnn.onnx").metadata_props}
    assert {"class_names", "input", "normalization", "model_params", "test_accuracy", "git_commit"} <= props


def test_quantized_variant_kept_only_within_tolerance(exported):
    out, figures, _, _ = exported
    for name in ("rnn", "gru"):
        q = figures[name]["int8"]
        assert q["kept"] == (q["accuracy_drop"] <= 0.05)
        assert (out / f"{name}.int8.onnx").exists() == q["kept"]
        assert q["test_accuracy"] == min(q["test_accuracy_batch_1"], q["test_accuracy_batch_1000"])
    kept = [name for name in ("rnn", "gru") if figures[name]["int8"]["kept"]]
    assert kept, "the synthetic models should quantize well enough to keep at least one int8 file"
    for name in kept:  # the file describes itself, not the fp32 model it was made from
        meta = metadata(open_session(out / f"{name}.int8.onnx", ["CPUExecutionProvider"]))
        assert meta["test_accuracy"] == figures[name]["int8"]["test_accuracy"]
        assert "batch" in meta["quantization"] and meta["class_names"] == list(CLASS_NAMES)


def test_int8_file_states_its_own_accuracy(exported, tmp_path):
    out, _, pixels, labels = exported
    fp32 = onnx.load(out / "rnn.onnx")
    assert metadata(open_session(out / "rnn.onnx", [CPU]))["test_accuracy"] == 1.0
    wrong = (labels + 1) % 10  # int8 scores ~0 against these; the fp32 file's metadata says 1.0
    cfg = ExportConfig(models=["rnn"], exporters={"rnn": "dynamo"}, bench_seconds=0.02, bench_batch_size=32,
                       quantize=["rnn"], quantize_max_accuracy_drop=0.999)
    q = quantize_variant("rnn", fp32, cfg, pixels, wrong, 0.5, tmp_path, log=lambda _: None)
    assert q["kept"] and q["test_accuracy"] < 0.1
    meta = metadata(open_session(tmp_path / "rnn.int8.onnx", [CPU]))
    assert meta["test_accuracy"] == q["test_accuracy"] and meta["model_name"] == "rnn"


def test_files_load_in_older_onnxruntime_builds(exported):
    """IR 10 as the exporter writes it: onnxruntime-gpu 1.31 rejects IR 14, onnx.helper's default."""
    out = exported[0]
    assert {onnx.load(out / f"{name}.onnx").ir_version for name in ("rnn", "gru", "rnn.int8")} == {MODEL_IR_VERSION}
    assert matmul_model(np.ones((2, 2), np.float32)).ir_version == MODEL_IR_VERSION


def test_providers_that_ran():
    assert providers_that_ran({"rnn": {"onnxruntime_cpu_images_per_s": 1.0}}) == [CPU]
    assert providers_that_ran({"rnn": {"onnxruntime_cpu_images_per_s": 1.0},
                               "gru": {"onnxruntime_cuda_images_per_s": 2.0}}) == [CUDA, CPU]


def test_parity_failure_is_a_clear_error():
    with pytest.raises(ExportError, match=r"3 different predicted classes.*No model file was written"):
        require_parity("gru", Parity(0.5, 3, 0.9, 0.91), 1e-4)


def test_provider_selection():
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    assert select_providers("auto")[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ExportError, match="onnxruntime-gpu"):
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
    cfg = ExportConfig(models=["gru"], exporters={"gru": "dynamo"}, bench_seconds=0.02, bench_batch_size=32,
                       quantize=[], provider="cuda")
    figures = export_checkpoint("gru", load_checkpoint(out / "gru.pt"), cfg, pixels, labels, tmp_path, [CUDA, CPU],
                                log=lambda _: None)
    assert figures["onnxruntime_cuda_images_per_s"] > 0
    assert figures["test_accuracy_onnxruntime_cuda"] == pytest.approx(figures["test_accuracy_onnxruntime"], abs=0.01)
    assert providers_that_ran({"gru": figures}) == [CUDA, CPU]


def test_cuda_library_preload_keeps_stdout_clean(exported, monkeypatch, capsys):
    """onnxruntime's preloader print()s what it cannot find; `fmnist-predict --json` owns stdout."""
    calls = []

    def noisy_preload(*args, **kwargs):
        calls.append(1)
        print("Failed to load libcublasLt.so.13")

    monkeypatch.setattr(ort, "preload_dlls", noisy_preload, raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # an app without PyTorch, which would have loaded the libraries
    open_session(exported[0] / "gru.onnx", [CUDA, CPU])
    captured = capsys.readouterr()
    assert calls and "libcublasLt" in captured.err and "libcublasLt" not in captured.out


@no_gpu
def test_required_provider_that_does_not_start_is_an_error(exported):
    out = exported[0]
    with pytest.raises(ExportError, match=r"could not start CUDAExecutionProvider.*onnxruntime-gpu"):
        open_session(out / "gru.onnx", [CUDA, CPU], require=True)
    assert active_provider(open_session(out / "gru.onnx", [CUDA, CPU])) == CPU  # what `auto` gets


@no_gpu
def test_export_with_cuda_that_does_not_start(exported, tmp_path):
    out, _, pixels, labels = exported
    ckpt = load_checkpoint(out / "gru.pt")
    cfg = ExportConfig(models=["gru"], exporters={"gru": "dynamo"}, bench_seconds=0.02, bench_batch_size=32,
                       quantize=[], provider="auto")
    lines: list[str] = []
    figures = export_checkpoint("gru", ckpt, cfg, pixels, labels, tmp_path, [CUDA, CPU], log=lines.append)
    assert not any(key.startswith("onnxruntime_cuda") for key in figures)  # no CPU figures passed off as CUDA
    assert "test_accuracy_onnxruntime_cuda" not in figures
    assert any("CUDA provider did not start" in line for line in lines)
    strict = dataclasses.replace(cfg, provider="cuda")
    with pytest.raises(ExportError, match="could not start CUDAExecutionProvider"):
        export_checkpoint("gru", ckpt, strict, pixels, labels, tmp_path / "strict", [CUDA, CPU], log=lines.append)
    assert not (tmp_path / "strict" / "gru.onnx").exists()


@no_gpu
def test_predict_command_cuda_without_gpu(exported, tmp_path, capsys):
    out, _, pixels, _ = exported
    png = _save(tmp_path / "item.png", pixels[0])
    assert predict_main([str(out / "gru.onnx"), png, "--provider", "cuda"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err
    assert predict_main([str(out / "gru.onnx"), png, "--provider", "auto", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["error"] is None


# --- the prediction command -------------------------------------------------------------------

def _save(path, array: np.ndarray, mode: str = "L") -> str:
    image = Image.fromarray(array)
    image = image.convert(mode) if mode != "L" else image
    image.save(path)
    return str(path)


def test_to_pixels_resizes_and_handles_polarity(tmp_path):
    photo = np.full((90, 60, 3), 255, dtype=np.uint8)  # white background, dark item
    photo[20:70, 10:50] = 10
    path = _save(tmp_path / "photo.jpg", photo, "RGB")
    inverted = to_pixels(path, dark_on_light=True)
    assert inverted.shape == (28, 28) and inverted.dtype == np.uint8
    assert inverted[14, 14] > 200 and inverted[14, 0] < 30  # item light, padding dark
    assert to_pixels(path)[14, 14] < 40  # without the option the item stays dark


def test_predict_command_text_json_and_bad_files(exported, tmp_path, capsys):
    out, _, pixels, labels = exported
    png = _save(tmp_path / "item.png", pixels[0])
    jpg = _save(tmp_path / "big.jpg", np.kron(pixels[1], np.ones((4, 4), dtype=np.uint8)), "RGB")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    code = predict_main([str(out / "gru.onnx"), png, jpg, str(not_image), str(tmp_path / "missing.png"),
                         "--json", "-k", "2"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [r["error"] is None for r in result] == [True, True, False, False]
    assert "not an image" in result[2]["error"] and result[3]["error"] == "file not found"
    assert len(result[0]["top"]) == 2 and result[0]["top"][0]["class"] in CLASS_NAMES
    assert result[0]["top"][0]["probability"] >= result[0]["top"][1]["probability"]
    session = open_session(out / "gru.onnx", ["CPUExecutionProvider"])
    expected = CLASS_NAMES[int(run(session, pixels[:1])[0].argmax())]
    assert result[0]["top"][0]["class"] == expected  # a 28x28 PNG is fed exactly as its pixels
    assert predict_main([str(out / "rnn.onnx"), png]) == 0
    assert capsys.readouterr().out.startswith(f"{png}: ")
    assert predict_main([str(out / "rnn.onnx"), png, str(tmp_path / "missing.png")]) == 1
    text = capsys.readouterr()
    assert text.out.count("\n") == 1 and text.out.startswith(f"{png}: ")  # predictions only
    assert text.err.count("missing.png") == 1 and "file not found" in text.err


def test_predict_command_broken_model(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    assert predict_main([str(broken), "x.png"]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert predict_main([str(tmp_path / "none.onnx"), "x.png"]) == 2
    assert "model file not found" in capsys.readouterr().err
