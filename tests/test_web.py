"""The browser page (examples/web) in a real headless Chromium: same input pixels and same answers as Python.

The page is served with the ONNX models from a folder laid out like the repository, on 127.0.0.1, and driven
through its own controls (file input, drawing canvas, test-image buttons, model picker). Each answer is read
from the page's result element (`data-pixels`: the 28x28 bytes the model saw, base64; `data-probabilities`)
and compared with `fmnist-predict`'s preprocessing and onnxruntime in Python on the same model.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import ROOT, pillow_pad_and_resize, serve_page, synthetic_images
from fmnist_seq.images import resize_padded
from fmnist_seq.predict import to_pixels
from fmnist_seq.runtime import open_session, run
from fmnist_seq.samples import build_samples, decode_sample

WEB = ROOT / "examples" / "web"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEBIAN_TEST_SET = Path("/usr/share/datasets/fashion-mnist")
N_IMAGES = 60  # real test images classified through the page (GRU); a third as many again with the RNN


def real_test_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first n test images and labels: Debian's dataset-fashion-mnist, else the synthetic ones."""
    images_gz, labels_gz = (DEBIAN_TEST_SET / "t10k-images-idx3-ubyte.gz", DEBIAN_TEST_SET / "t10k-labels-idx1-ubyte.gz")
    if images_gz.is_file() and labels_gz.is_file():
        images = np.frombuffer(gzip.decompress(images_gz.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
        labels = np.frombuffer(gzip.decompress(labels_gz.read_bytes()), np.uint8, offset=8)
        return images[:n].copy(), labels[:n].astype(np.int64), "Fashion-MNIST test set (Debian)"
    labels = np.arange(n) % 10
    return synthetic_images(labels, seed=5), labels, "synthetic images (install dataset-fashion-mnist for real ones)"


def png_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# --- the page, served and opened --------------------------------------------------------------------

def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements.txt)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (apt-get install chromium; `make setup` does it as root)"
    if shutil.which("npm") is None:
        return "needs Node.js and npm (apt-get install nodejs npm); `make test` then installs onnxruntime-web"
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        return ("examples/web/node_modules is missing: `make test` installs it (npm ci), so npm ci failed "
                "(offline?); `make web-example` shows why")
    return None


browser_only = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
pytestmark = pytest.mark.e2e  # a real browser: slow, left out of the quick `-m "not e2e"` loop


@pytest.fixture(scope="module")
def site(exported, tmp_path_factory):
    """A folder laid out like the repository: examples/web (+ the shared module) and models/onnx."""
    out, _, _, _ = exported
    root = tmp_path_factory.mktemp("site")
    (root / "examples").mkdir()
    for folder in ("web", "common"):  # links, so node_modules is not copied
        (root / "examples" / folder).symlink_to(ROOT / "examples" / folder, target_is_directory=True)
    models = root / "models" / "onnx"
    models.mkdir(parents=True)
    for name in ("lstm", "gru", "rnn"):
        shutil.copy2(out / f"{name}.onnx", models / f"{name}.onnx")
    images, labels, _ = real_test_images(N_IMAGES)
    (models / "samples.json").write_text(json.dumps(build_samples(images, labels, per_class=2)))
    return root


@pytest.fixture(scope="module")
def page(site):
    from playwright.sync_api import sync_playwright

    with serve_page(site) as url, sync_playwright() as playwright:  # `make web`'s own server
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page()
        page_errors: list[str] = []
        tab.on("pageerror", lambda exc: page_errors.append(str(exc)))
        tab.goto(f"{url}/examples/web/")
        tab.wait_for_selector("body[data-ready]", timeout=30_000)
        yield PageDriver(tab, site)
        browser.close()
    assert not page_errors, f"uncaught errors in the page: {page_errors}"


class PageDriver:
    """Acts on the page through its controls and reads what it shows."""

    def __init__(self, tab, site: Path) -> None:
        self.tab, self.site = tab, site

    def _counters(self) -> list[str]:
        return self.tab.eval_on_selector("#result", "r => [r.dataset.count, r.dataset.errors]")

    def submit(self, action) -> dict:
        """Do `action`, wait until the page has a new result or a new error; what it shows then."""
        before = self._counters()
        action()
        self.tab.wait_for_function(
            "([count, errors]) => { const r = document.getElementById('result');"
            " return r.dataset.count !== count || r.dataset.errors !== errors; }", arg=before, timeout=15_000)
        count, errors = self._counters()
        if errors != before[1]:
            return {"error": self.tab.inner_text("#error"), "model": self.model()}
        data = self.tab.eval_on_selector("#result", "r => ({...r.dataset})")
        return {"error": None if self.tab.is_hidden("#error") else self.tab.inner_text("#error"),
                "pixels": np.frombuffer(base64.b64decode(data["pixels"]), np.uint8).reshape(28, 28),
                "probabilities": np.array(json.loads(data["probabilities"]), dtype=np.float32),
                "predicted": int(data["predicted"]), "model": data["model"],
                "top": self.tab.inner_text("#top")}

    def image(self, data: bytes, name: str = "image.png", mime: str = "image/png", dark_on_light: bool = False):
        # set the box without its change event, which would re-run the last file (tested on its own)
        self.tab.eval_on_selector("#dark-on-light", "(box, on) => { box.checked = on; }", dark_on_light)
        return self.submit(lambda: self.tab.set_input_files(
            "#image-file", files=[{"name": name, "mimeType": mime, "buffer": data}]))

    def drop(self, data: bytes, name: str, mime: str = "image/png"):
        """Drop a file on the drop zone, as a drag and drop from the desktop does."""
        def action():
            transfer = self.tab.evaluate_handle(
                "([bytes, name, mime]) => { const t = new DataTransfer();"
                " t.items.add(new File([new Uint8Array(bytes)], name, { type: mime })); return t; }",
                [list(data), name, mime])
            self.tab.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
        self.tab.eval_on_selector("#dark-on-light", "box => { box.checked = false; }")
        return self.submit(action)

    def model_file(self, data: bytes, name: str):
        return self.submit(lambda: self.tab.set_input_files(
            "#model-file", files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}]))

    def pick_model(self, option_value: str):
        return self.submit(lambda: self.tab.select_option("#model-select", option_value))

    def model(self) -> str:
        return self.tab.get_attribute("#result", "data-model")

    def ensure_model(self, name: str) -> None:
        if self.model() != f"{name}.onnx":
            self.tab.select_option("#model-select", f"../../models/onnx/{name}.onnx")
            self.tab.wait_for_function("n => document.getElementById('result').dataset.model === n",
                                       arg=f"{name}.onnx")


def python_probabilities(site: Path, name: str, pixels: np.ndarray) -> np.ndarray:
    session = open_session(site / "models" / "onnx" / f"{name}.onnx", ["CPUExecutionProvider"])
    return run(session, pixels.reshape(-1, 28, 28))[1]


def assert_same_answers(results: list[dict], reference: np.ndarray) -> None:
    predicted = np.array([r["predicted"] for r in results])
    assert (predicted == reference.argmax(1)).all(), "the page predicts other classes than onnxruntime in Python"
    probabilities = np.stack([r["probabilities"] for r in results])
    np.testing.assert_allclose(probabilities, reference, atol=1e-4, rtol=0)


# --- the page's answers against Python ---------------------------------------------------------------

@browser_only
@pytest.mark.parametrize("name, count", [("lstm", N_IMAGES), ("gru", N_IMAGES // 3), ("rnn", N_IMAGES // 3)])
def test_page_classifies_test_images_like_onnxruntime(page, name, count):
    images, _, source = real_test_images(count)
    page.ensure_model(name)
    results = [page.image(png_bytes(Image.fromarray(image)), f"test_{i}.png") for i, image in enumerate(images)]
    assert all(r["error"] is None and r["model"] == f"{name}.onnx" for r in results), results[0]
    # a 28x28 grey image reaches the model with its exact pixel values, no resampling
    assert np.array_equal(np.stack([r["pixels"] for r in results]), images), source
    assert_same_answers(results, python_probabilities(page.site, name, images))
    # what it shows: the top class first, as a percentage
    names = json.loads((page.site / "models/onnx/samples.json").read_text())["class_names"]
    first = results[-1]
    assert first["top"].splitlines()[0] == names[first["predicted"]]


def _test_files(tmp_path: Path) -> list[tuple[str, bool]]:
    """Files of other sizes, modes and formats, and whether to treat them as dark-on-light."""
    images, _, _ = real_test_images(6)
    rng = np.random.default_rng(3)
    item = Image.fromarray(images[0]).resize((300, 200))
    files = {
        "rgb_300x200.png": (Image.merge("RGB", [item, item.point(lambda v: v // 2), item.point(lambda v: 255 - v)]),
                            {}, False),
        "photo_dark_on_light.jpg": (Image.fromarray(255 - images[1]).resize((120, 160)).convert("RGB"),
                                    {"quality": 85}, True),
        "grey_dark_on_light.jpg": (Image.fromarray(255 - images[1]).resize((90, 60)), {"quality": 90}, True),
        "semi_transparent_64.png": (Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
                                    {}, False),
        "semi_transparent_light.png": (Image.fromarray(rng.integers(0, 256, (40, 70, 4), dtype=np.uint8), "RGBA"),
                                       {}, True),
        "palette_transparent.png": (Image.fromarray(images[3]).resize((56, 40)).convert("P"), {"transparency": 0},
                                    False),
        "tiny_10x7.png": (Image.fromarray(images[4]).resize((10, 7)), {}, False),  # odd padding above/below
        "odd_pad_33x40.png": (Image.fromarray(images[5]).resize((33, 40)), {}, False),  # and left/right
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: the browser and exif_transpose must both apply it
    files["exif_rotated.jpg"] = (Image.fromarray(images[2]).resize((80, 50)).convert("RGB"),
                                 {"exif": exif.tobytes(), "quality": 95}, False)
    written = []
    for name, (image, options, dark_on_light) in files.items():
        image.save(tmp_path / name, **options)
        written.append((name, dark_on_light))
    return written


@browser_only
def test_page_preprocesses_files_like_fmnist_predict(page, tmp_path):
    page.ensure_model("gru")
    results, expected = [], []
    for name, dark_on_light in _test_files(tmp_path):
        path = tmp_path / name
        mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
        result = page.image(path.read_bytes(), name, mime, dark_on_light=dark_on_light)
        assert result["error"] is None, (name, result["error"])
        reference = to_pixels(path, dark_on_light)
        assert np.array_equal(result["pixels"], reference), \
            f"{name}: the page's 28x28 input differs from to_pixels in {int((result['pixels'] != reference).sum())} pixels"
        results.append(result)
        expected.append(reference)
    # the box re-runs the last file: photo_dark_on_light.jpg read as it is, without inverting
    name = next(name for name, dark_on_light in _test_files(tmp_path) if dark_on_light)
    page.image((tmp_path / name).read_bytes(), name, "image/jpeg", dark_on_light=True)
    rerun = page.submit(lambda: page.tab.set_checked("#dark-on-light", False))
    assert np.array_equal(rerun["pixels"], to_pixels(tmp_path / name, False)) and name in page.tab.inner_text("#source")
    assert_same_answers(results, python_probabilities(page.site, "gru", np.stack(expected)))


@browser_only
def test_shipped_test_images_and_drawing(page):
    page.ensure_model("gru")
    samples = json.loads((page.site / "models/onnx/samples.json").read_text())["samples"]
    buttons = page.tab.locator("#sample-list button")
    assert buttons.count() == len(samples) == 20
    results = [page.submit(lambda i=i: buttons.nth(i).click()) for i in (0, 7, 19)]
    images = np.stack([decode_sample(samples[i]) for i in (0, 7, 19)])
    assert np.array_equal(np.stack([r["pixels"] for r in results]), images)
    assert_same_answers(results, python_probabilities(page.site, "gru", images))
    names = json.loads((page.site / "models/onnx/samples.json").read_text())["class_names"]
    assert f"true class: {names[samples[19]['label']]}" in page.tab.inner_text("#source")

    box = page.tab.locator("#sketch").bounding_box()

    def draw():
        page.tab.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.2 * box["height"])
        page.tab.mouse.down()
        for step in range(1, 11):
            page.tab.mouse.move(box["x"] + 0.3 * box["width"] + step * 0.04 * box["width"],
                                box["y"] + 0.2 * box["height"] + step * 0.06 * box["height"])
        page.tab.mouse.up()

    drawn = page.submit(draw)
    assert drawn["error"] is None and "your drawing" in page.tab.inner_text("#source")
    assert drawn["pixels"].max() > 200 and drawn["pixels"][0, 0] == 0  # a light stroke on a dark background
    assert_same_answers([drawn], python_probabilities(page.site, "gru", drawn["pixels"]))
    page.tab.click("#clear")

    dropped = page.drop(png_bytes(Image.fromarray(images[1])), "dropped.png")
    assert dropped["error"] is None and "dropped.png" in page.tab.inner_text("#source")
    assert np.array_equal(dropped["pixels"], images[1])


# --- bad input: an error in the page, and the next input still works --------------------------------

@browser_only
def test_bad_image_shows_error_and_page_recovers(page, tmp_path):
    page.ensure_model("gru")
    image = real_test_images(1)[0][0]
    for data, name in [(b"this is not an image\n" * 20, "notes.png"),
                       (png_bytes(Image.fromarray(image))[:60], "truncated.png"),
                       (b"", "empty.jpg")]:
        failed = page.image(data, name)
        assert failed["error"] is not None and name in failed["error"] and "not an image" in failed["error"], failed
        assert page.tab.is_visible("#error")
        recovered = page.image(png_bytes(Image.fromarray(image)), "next.png")
        assert recovered["error"] is None and page.tab.is_hidden("#error")
        assert np.array_equal(recovered["pixels"], image)
        assert_same_answers([recovered], python_probabilities(page.site, "gru", image))


@browser_only
def test_bad_model_shows_error_and_previous_model_stays(page):
    page.ensure_model("gru")
    image = real_test_images(1)[0][0]
    good = (page.site / "models/onnx/gru.onnx").read_bytes()
    no_metadata = onnx.load_from_string(good)
    del no_metadata.metadata_props[:]
    cases = [
        (b"\x00not a model at all" * 50, "garbage.onnx", "not an ONNX model file"),
        (good[: len(good) // 2], "truncated.onnx", "not an ONNX model file"),
        (no_metadata.SerializeToString(), "no_metadata.onnx", 'no "class_names" metadata'),
    ]
    for data, name, message in cases:
        failed = page.model_file(data, name)
        assert failed["error"] is not None and name in failed["error"] and message in failed["error"], failed
        assert failed["model"] == "gru.onnx"
        still = page.image(png_bytes(Image.fromarray(image)), "next.png")
        assert still["error"] is None and still["model"] == "gru.onnx"
        assert_same_answers([still], python_probabilities(page.site, "gru", image))

    # a model the server does not have (404): an error naming the fix; the picker returns to the model in use
    page.tab.route("**/models/onnx/rnn.onnx", lambda route: route.fulfill(status=404, body="not found"))
    try:
        failed = page.pick_model("../../models/onnx/rnn.onnx")
    finally:
        page.tab.unroute("**/models/onnx/rnn.onnx")
    assert "HTTP 404" in failed["error"] and "make repro" in failed["error"] and failed["model"] == "gru.onnx"
    assert page.tab.eval_on_selector("#model-select", "s => s.value").endswith("gru.onnx")

    # and a good file picked by the user is used
    loaded = page.model_file((page.site / "models/onnx/rnn.onnx").read_bytes(), "my_rnn.onnx")
    assert loaded["error"] is None and loaded["model"] == "my_rnn.onnx"  # re-ran the last image with it
    assert_same_answers([loaded], python_probabilities(page.site, "rnn", image))


# --- the shared modules, in Node.js (no browser needed) ---------------------------------------------

node_only = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt-get install nodejs)")


def node(script: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run an ES module script from the repository root; `stdin` is readable as readFileSync(0)."""
    return subprocess.run(["node", "--input-type=module", "-e", script], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@node_only
def test_metadata_parser_reads_what_onnx_wrote(exported, tmp_path):
    out, _, _, _ = exported
    model = onnx.load(out / "gru.onnx")
    expected = {p.key: p.value for p in model.metadata_props}
    (tmp_path / "garbage.onnx").write_bytes(b"\x08" + b"\xff" * 20)  # a varint that never ends
    result = node(f"""
        import {{ readFileSync }} from "node:fs";
        import {{ readMetadata }} from "./examples/common/onnx_metadata.mjs";
        const failures = {{}};
        for (const name of ["garbage.onnx", "gru.onnx"]) {{
          const path = name === "gru.onnx" ? {json.dumps(str(out / 'gru.onnx'))} : {json.dumps(str(tmp_path))} + "/" + name;
          try {{ failures[name] = readMetadata(new Uint8Array(readFileSync(path))); }}
          catch (err) {{ failures[name] = err.message; }}
        }}
        console.log(JSON.stringify(failures));
    """)
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["gru.onnx"] == expected and json.loads(parsed["gru.onnx"]["class_names"])[0] == "T-shirt/top"
    assert parsed["garbage.onnx"].startswith("not an ONNX model file")


@node_only
def test_resize_and_grey_match_pillow():
    """preprocess.mjs against Pillow on arrays: LANCZOS down and up, and the "L" weights, bit for bit."""
    rng = np.random.default_rng(7)
    cases = [rng.integers(0, 256, (side, side), dtype=np.uint8) for side in (29, 57, 300, 1000, 13, 1)]
    edge = np.zeros((280, 280), np.uint8)
    edge[100:180, 40:240] = 255  # hard edges: Lanczos rings past 0 and 255, so clipping is exercised
    cases.append(edge)
    rgb = rng.integers(0, 256, (4096, 3), dtype=np.uint8)
    expected = {"resized": [np.asarray(Image.fromarray(c).resize((28, 28), Image.Resampling.LANCZOS)).ravel().tolist()
                            for c in cases],
                "grey": np.asarray(Image.fromarray(rgb[None]).convert("L")).ravel().tolist()}
    inputs = {"cases": [{"side": len(c), "pixels": base64.b64encode(c.tobytes()).decode()} for c in cases],
              "rgba": base64.b64encode(np.concatenate([rgb, np.full((4096, 1), 255, np.uint8)], 1).tobytes()).decode()}
    result = node(f"""
        import {{ readFileSync }} from "node:fs";
        import {{ resizeLanczos, grey }} from "./examples/web/preprocess.mjs";
        const inputs = JSON.parse(readFileSync(0, "utf8"));
        const bytes = (b64) => Uint8Array.from(Buffer.from(b64, "base64"));
        console.log(JSON.stringify({{
          resized: inputs.cases.map((c) => Array.from(resizeLanczos(bytes(c.pixels), c.side))),
          grey: Array.from(grey(bytes(inputs.rgba))),
        }}));
    """, stdin=json.dumps(inputs))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    for side, mine, pillow in zip((len(c) for c in cases), got["resized"], expected["resized"]):
        assert mine == pillow, f"LANCZOS {side}x{side} -> 28x28 differs from Pillow"
    assert got["grey"] == expected["grey"]


@node_only
def test_padded_resize_and_limits_match_fmnist_predict():
    """preprocess.mjs resizes any aspect ratio without building the padded square, as fmnist-predict does,
    bit for bit with Pillow on that square; and refuses what fmnist-predict refuses, before any work."""
    rng = np.random.default_rng(11)
    shapes = [(1, 1), (2, 1), (1, 2), (28, 27), (27, 28), (7, 10), (40, 33), (200, 300), (600, 57), (300, 1),
              (3, 500), (1, 29)]
    cases = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    inputs = [{"width": c.shape[1], "height": c.shape[0], "pixels": base64.b64encode(c.tobytes()).decode()}
              for c in cases]
    result = node("""
        import { readFileSync } from "node:fs";
        import { resizePadded, toPixels } from "./examples/web/preprocess.mjs";
        const cases = JSON.parse(readFileSync(0, "utf8"));
        const bytes = (b64) => Uint8Array.from(Buffer.from(b64, "base64"));
        const refused = [];
        for (const [w, h] of [[15000, 15000], [10000, 9000], [140000, 2]]) {
          try { toPixels(new Uint8Array(0), w, h); refused.push("accepted"); } catch (err) { refused.push(err.message); }
        }
        const started = Date.now();
        const strip = resizePadded(new Uint8Array(100000).fill(255), 1, 100000);
        console.log(JSON.stringify({
          resized: cases.map((c) => Array.from(resizePadded(bytes(c.pixels), c.width, c.height))),
          refused, strip: Array.from(strip), stripMs: Date.now() - started,
        }));
    """, stdin=json.dumps(inputs))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    for case, mine in zip(cases, got["resized"]):
        assert mine == pillow_pad_and_resize(case).ravel().tolist(), f"{case.shape} differs from Pillow"
    assert got["refused"] == ["15000x15000 is 225,000,000 pixels, over the limit of 89,478,485",
                              "10000x9000 is 90,000,000 pixels, over the limit of 89,478,485",
                              "140000x2: a side over 131,072 pixels"]
    assert got["strip"] == resize_padded(np.full((100000, 1), 255, np.uint8)).ravel().tolist()
    assert got["stripMs"] < 10_000


@browser_only
def test_screenshot_script(site, tmp_path):
    out = tmp_path / "docs" / "web_page.png"
    result = subprocess.run([sys.executable, str(WEB / "screenshot.py"), "--out", str(out), "--root", str(site),
                             "--model", "rnn", "--sample", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(out).size[0] >= 800
    assert "→ rnn.onnx" in result.stdout and "test image #" in result.stdout


@browser_only
def test_the_page_offers_the_most_accurate_model_first(page):
    # The options the page ships with; a file a user (or an earlier test on this page) picked adds a `local:` one.
    options = page.tab.eval_on_selector_all("#model-select option:not([data-local])",
                                            "options => options.map(o => o.value)")
    assert [o.rsplit("/", 1)[-1] for o in options] == ["lstm.onnx", "gru.onnx", "rnn.onnx"]


@browser_only
def test_page_marks_answers_below_the_threshold_the_user_sets(page):
    """The calibrated confidence is shown, and an answer below the threshold box is marked unsure; changing the
    box judges the last answer again without running the model."""
    page.ensure_model("lstm")
    assert "probabilities calibrated with temperature 0.600" in page.tab.inner_text("#model-status")  # the fixture's T
    page.tab.fill("#min-confidence", "1")
    result = page.submit(lambda: page.tab.locator("#sample-list button").nth(0).click())
    names = json.loads((page.site / "models/onnx/samples.json").read_text())["class_names"]
    best = names[result["predicted"]]
    confidence = f"{100 * result['probabilities'].max():.1f}%"
    assert page.tab.get_attribute("#result", "data-answer") == "unsure"
    assert page.tab.inner_text("#verdict") == (f"Unsure: the best guess, {best}, has a calibrated confidence of "
                                               f"{confidence}, below 1.")
    count = page.tab.get_attribute("#result", "data-count")
    page.tab.fill("#min-confidence", "0")
    assert page.tab.get_attribute("#result", "data-answer") == best and page.tab.get_attribute("#result", "data-count") == count
    assert page.tab.inner_text("#verdict") == f"{best}, calibrated confidence {confidence}."
    page.tab.fill("#min-confidence", "1.5")
    assert page.tab.inner_text("#verdict") == "The threshold must be a probability from 0 to 1."
    page.tab.fill("#min-confidence", "0.9")
