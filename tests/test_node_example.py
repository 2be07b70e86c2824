"""The Node.js example (onnxruntime-node) classifies the same images as Python, with the same accuracy."""

import gzip
import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, idx_bytes
from fmnist_seq.parity import onnx_logits
from fmnist_seq.runtime import open_session

EXAMPLE = ROOT / "examples" / "node"

def _missing() -> str | None:
    """What this machine lacks to run the example, and how to get it (`make test` installs the npm packages
    itself where npm is present)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "needs Node.js and npm (apt-get install nodejs npm); `make test` then installs the example's packages"
    if not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        return ("examples/node/node_modules is missing: `make test` installs it (npm ci), so npm ci failed "
                "(offline?); `make node-example` shows why")
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.mark.parametrize("name", ["lstm", "rnn", "gru"])
def test_node_accuracy_matches_python(exported, tmp_path, name):
    out, _, pixels, labels = exported
    images, label_file = tmp_path / "images.gz", tmp_path / "labels"
    images.write_bytes(gzip.compress(idx_bytes(pixels)))
    label_file.write_bytes(idx_bytes(labels.astype(np.uint8)))
    result = subprocess.run(["node", str(EXAMPLE / "classify.mjs"), str(out / f"{name}.onnx"), str(images),
                             str(label_file), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    logits = onnx_logits(open_session(out / f"{name}.onnx", ["CPUExecutionProvider"]), pixels)
    assert report["images"] == len(labels)
    assert report["correct"] == int((logits.argmax(1) == labels).sum())
    assert report["first_predictions"][0] in json.loads(
        open_session(out / f"{name}.onnx", ["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map["class_names"])


def test_node_reports_bad_input(tmp_path):
    bogus = tmp_path / "x.idx"
    bogus.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 16)
    result = subprocess.run(["node", str(EXAMPLE / "classify.mjs"), "missing.onnx", str(bogus), str(bogus)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not an IDX ubyte file" in result.stderr


def test_node_refuses_a_model_of_another_contract_and_a_gzip_bomb(tmp_path):
    from conftest import foreign_onnx_model

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    labels.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    model = foreign_onnx_model(tmp_path / "foreign.onnx", input_name="input")
    result = subprocess.run(["node", str(EXAMPLE / "classify.mjs"), model, str(images), str(labels)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not a classifier of this project: inputs [input]" in result.stderr
    member = gzip.compress(b"\0" * (1 << 24))
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(b"\x00\x00\x08\x03") + member * 80)  # 1.3 GB of zeros from 1.3 MB
    result = subprocess.run(["node", str(EXAMPLE / "classify.mjs"), model, str(bomb), str(labels)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not a gzip file of an IDX file under" in result.stderr
    assert result.stderr.count("\n") == 1
