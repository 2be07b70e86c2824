"""`make web` serves the page and the models, and nothing else of the repository."""

import urllib.error
import urllib.request

import pytest

from conftest import serve_page


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A folder laid out like a checkout: the page, the models, and what must never leave the machine."""
    tmp_path = tmp_path_factory.mktemp("checkout")
    files = {"examples/web/index.html": "<html>page</html>", "examples/web/app.mjs": "export {};",
             "examples/web/node_modules/onnxruntime-web/dist/ort.wasm": "wasm",
             "examples/common/onnx_metadata.mjs": "export {};", "examples/node/classify.mjs": "node",
             "models/onnx/gru.onnx": "model", "models/gru.pt": "checkpoint", ".git/config": "[remote]",
             ".dvc/config.local": "[remote] password = secret", "params.yaml": "seed: 1", "secret.txt": "x"}
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / ".dvc" / "cache").mkdir()
    (tmp_path / ".dvc" / "cache" / "rnn").write_text("cached model")
    (tmp_path / "models" / "onnx" / "rnn.onnx").symlink_to(tmp_path / ".dvc" / "cache" / "rnn")  # DVC's links
    with serve_page(tmp_path) as url:
        yield url


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, b"", ""


@pytest.mark.parametrize("path", ["/examples/web/", "/examples/web/app.mjs", "/examples/common/onnx_metadata.mjs",
                                  "/examples/web/node_modules/onnxruntime-web/dist/ort.wasm",
                                  "/models/onnx/gru.onnx", "/models/onnx/rnn.onnx", "/examples/web/%61pp.mjs"])
def test_the_page_and_the_models_are_served(repository, path):
    status, body, content_type = _get(repository + path)
    assert status == 200 and body
    if path.endswith(".mjs"):
        assert content_type == "text/javascript"
    if path.endswith(".wasm"):
        assert content_type == "application/wasm"


@pytest.mark.parametrize("path", ["/.git/config", "/.dvc/config.local", "/.dvc/cache/rnn", "/params.yaml",
                                  "/secret.txt", "/models/gru.pt", "/examples/node/classify.mjs", "/examples/",
                                  "/models/onnx/", "/examples/web/../../.git/config", "/examples/web/%2e%2e/%2e%2e/.git/config",
                                  "/models/onnx/..%2f..%2f.dvc/config.local", "//.git/config",
                                  "//.git/models/onnx/../../config", "/examples/web/%00.html", "/.git"])
def test_nothing_else_is(repository, path):
    assert _get(repository + path)[0] == 404


def test_the_root_leads_to_the_page(repository):
    status, body, _ = _get(repository + "/")
    assert status == 200 and body == b"<html>page</html>"
