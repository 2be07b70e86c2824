"""The `fmnist-predict` command: images of any kind in, one answer per file that depends on that file alone."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import foreign_onnx_model, header_only_png
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


def test_min_confidence_answers_unsure_below_it_in_text_and_json(exported, tmp_path, capsys):
    out, _, pixels, _ = exported
    files = [_save(tmp_path / f"{i}.png", pixels[i]) for i in range(12)]
    assert predict_main([str(out / "lstm.onnx"), *files, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [r["answer"] for r in plain] == [r["top"][0]["class"] for r in plain]  # no threshold: always an answer
    tops = sorted(r["top"][0]["probability"] for r in plain)
    threshold = (tops[5] + tops[6]) / 2  # half the images below it
    assert predict_main([str(out / "lstm.onnx"), *files, "--json", "--min-confidence", str(threshold)]) == 0
    gated = json.loads(capsys.readouterr().out)
    for before, after in zip(plain, gated):
        sure = before["top"][0]["probability"] >= threshold
        assert after["answer"] == (before["top"][0]["class"] if sure else "unsure") and after["top"] == before["top"]
    assert sum(r["answer"] == "unsure" for r in gated) == 6
    assert predict_main([str(out / "lstm.onnx"), *files, "--min-confidence", str(threshold)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(f"{f}: unsure (below {threshold:g}): ") for f, line in zip(files, lines)) == 6
    assert predict_main([str(out / "lstm.onnx"), files[0], "--min-confidence", "1"]) == 0  # 1: never sure
    assert ": unsure (below 1): " in capsys.readouterr().out


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high"])
def test_min_confidence_outside_0_to_1_is_one_line(exported, tmp_path, capsys, value):
    out, _, pixels, _ = exported
    png = _save(tmp_path / "item.png", pixels[0])
    assert predict_main([str(out / "gru.onnx"), png, f"--min-confidence={value}"]) == 2
    text = capsys.readouterr()
    assert text.out == "" and text.err == (f"fmnist-predict: error: --min-confidence must be a probability from 0 to 1, "
                                           f"got {value!r}\n")


@pytest.mark.parametrize("model", ["lstm.onnx", "gru.onnx", "rnn.onnx", "rnn.int8.onnx"])
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


# --- odd and hostile input: each file its own answer, a model checked once, the JSON always complete --------

def test_a_decompression_bomb_is_that_files_error_and_the_others_are_answered(exported, tmp_path, capsys):
    out, _, pixels, _ = exported
    first, last = _save(tmp_path / "first.png", pixels[0]), _save(tmp_path / "last.png", pixels[1])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_png(15000, 15000))  # what Pillow refuses with DecompressionBombError
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes((tmp_path / "first.png").read_bytes()[:-30])
    assert predict_main([str(out / "gru.onnx"), first, str(bomb), str(damaged), last, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)  # a complete document
    assert [r["file"] for r in result] == [first, str(bomb), str(damaged), last]
    assert result[0]["error"] is None and result[3]["error"] is None
    assert "over the limit of 89,478,485" in result[1]["error"] and "cannot read image" in result[2]["error"]
    assert predict_main([str(out / "gru.onnx"), str(bomb), last]) == 1  # text mode: the same, on stderr
    text = capsys.readouterr()
    assert text.out.startswith(f"{last}: ") and "bomb.png: error: image refused:" in text.err


def test_json_stays_complete_when_interrupted(exported, tmp_path, capsys, monkeypatch):
    import fmnist_seq.predict as predict

    out, _, pixels, _ = exported
    files = [_save(tmp_path / f"{i}.png", pixels[i]) for i in range(3)]
    real = predict.to_pixels

    def interrupted(path, dark_on_light=False):
        if path == files[1]:
            raise KeyboardInterrupt
        return real(path, dark_on_light)

    monkeypatch.setattr(predict, "to_pixels", interrupted)
    assert predict_main([str(out / "gru.onnx"), *files, "--json"]) == 130
    captured = capsys.readouterr()
    assert [r["file"] for r in json.loads(captured.out)] == files[:1] and "interrupted" in captured.err


@pytest.mark.parametrize("changes, message", [
    ({"input_name": "input", "input_type": onnx.TensorProto.FLOAT, "dims": (1, 3, 32, 32)},
     "its input is 'input' tensor(float) [1, 3, 32, 32]; expected one input 'pixels' tensor(uint8) [batch, 28, 28]"),
    ({"input_type": onnx.TensorProto.FLOAT}, "its input is 'pixels' tensor(float) [batch, 28, 28]"),
    ({"dims": ("batch", 32, 32)}, "its input is 'pixels' tensor(uint8) [batch, 32, 32]"),
    ({"output_name": "scores_out"}, "no 'probabilities' output (it has 'scores_out' tensor(float) [batch, 10])"),
    ({"extra_input": True}, "it takes 2 inputs"),
    ({"class_names": ["a", "b", "c"]}, 'its "class_names" metadata is not a list of 10 names'),
])
def test_a_model_of_another_contract_is_refused_in_one_line(tmp_path, capsys, changes, message):
    model = foreign_onnx_model(tmp_path / "foreign.onnx", **changes)
    image = _save(tmp_path / "x.png", np.zeros((28, 28), np.uint8))
    assert predict_main([model, image]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_foreign_model_of_this_contract_works(tmp_path, capsys):
    model = foreign_onnx_model(tmp_path / "uniform.onnx", class_names=[f"c{i}" for i in range(10)])
    image = _save(tmp_path / "x.png", np.zeros((28, 28), np.uint8))
    assert predict_main([model, image, "--json", "-k", "1"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert top["class"] == "c0" and top["index"] == 0 and top["probability"] == pytest.approx(0.1)
    assert predict_main([str(tmp_path), image]) == 2
    assert "a folder, not a model file" in capsys.readouterr().err


def test_a_16_bit_copy_gets_the_answer_of_the_8_bit_original(exported, tmp_path, capsys):
    out, _, pixels, _ = exported
    item = np.asarray(Image.fromarray(pixels[5]).resize((84, 84)))
    original = _save(tmp_path / "item8.png", item)
    Image.fromarray(item.astype(np.uint16) * 257).save(tmp_path / "item16.png")
    Image.fromarray(item.astype(np.float32) / 255, "F").save(tmp_path / "item32.tif")
    assert predict_main([str(out / "gru.onnx"), original, str(tmp_path / "item16.png"), str(tmp_path / "item32.tif"),
                         "--json", "-k", "10"]) == 0
    eight, sixteen, float32 = json.loads(capsys.readouterr().out)
    for deep in (sixteen, float32):
        assert deep["top"][0]["class"] == eight["top"][0]["class"]
        np.testing.assert_allclose([t["probability"] for t in deep["top"]],
                                   [t["probability"] for t in eight["top"]], atol=1e-6)


def test_help_states_the_limits(capsys):
    with pytest.raises(SystemExit):
        predict_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "89,478,485 pixels" in text and "131,072 pixels a side" in text and "16-bit and 32-bit" in text


def test_a_reader_that_stops_early_gets_no_traceback(exported, tmp_path):
    import subprocess
    import sys

    out, _, pixels, _ = exported
    files = [_save(tmp_path / f"{i}.png", pixels[i % len(pixels)]) for i in range(300)]
    process = subprocess.Popen([sys.executable, "-m", "fmnist_seq.predict", str(out / "gru.onnx"), *files, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()  # as `| head -c 10` does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1 and b"Traceback" not in err, err.decode()[-2000:]
