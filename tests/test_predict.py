"""The `fmnist-predict` command: images of any kind in, one answer per file that depends on that file alone."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.predict import main as predict_main, to_pixels
from fmnist_seq.runtime import CPU, CUDA, open_session, run


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
    session = open_session(out / "gru.onnx", [CPU])
    expected = CLASS_NAMES[int(run(session, pixels[:1])[0].argmax())]
    assert result[0]["top"][0]["class"] == expected  # a 28x28 PNG is fed exactly as its pixels
    assert predict_main([str(out / "rnn.onnx"), png]) == 0
    assert capsys.readouterr().out.startswith(f"{png}: ")
    assert predict_main([str(out / "rnn.onnx"), png, str(tmp_path / "missing.png")]) == 1
    text = capsys.readouterr()
    assert text.out.count("\n") == 1 and text.out.startswith(f"{png}: ")  # predictions only
    assert text.err.count("missing.png") == 1 and "file not found" in text.err


@pytest.mark.parametrize("model", ["gru.onnx", "rnn.onnx", "rnn.int8.onnx"])
def test_an_answer_does_not_depend_on_the_other_files(exported, tmp_path, capsys, model):
    """The same image alone and among 50 others gets exactly the same probabilities; the int8 model scales
    its activations over the whole call, so this holds only if every file gets a call of its own."""
    out, _, pixels, _ = exported
    files = [_save(tmp_path / f"{i}.png", pixels[i]) for i in range(51)]
    assert predict_main([str(out / model), files[0], "--json", "-k", "10"]) == 0
    alone = json.loads(capsys.readouterr().out)[0]["top"]
    assert predict_main([str(out / model), *files[1:26], files[0], *files[26:], "--json", "-k", "10"]) == 0
    among = json.loads(capsys.readouterr().out)
    assert len(among) == 51 and among[25]["file"] == files[0]
    assert among[25]["top"] == alone


def test_predict_command_broken_model(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    assert predict_main([str(broken), "x.png"]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert predict_main([str(tmp_path / "none.onnx"), "x.png"]) == 2
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.skipif(CUDA in ort.get_available_providers() and torch.cuda.is_available(),
                    reason="onnxruntime-gpu and a GPU: CUDA would start")
def test_predict_command_cuda_without_gpu(exported, tmp_path, capsys):
    out, _, pixels, _ = exported
    png = _save(tmp_path / "item.png", pixels[0])
    assert predict_main([str(out / "gru.onnx"), png, "--provider", "cuda"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err
    assert predict_main([str(out / "gru.onnx"), png, "--provider", "auto", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["error"] is None
