"""Screenshot the browser page after it classified a shipped test image, with headless Chromium.

    python examples/web/screenshot.py --out docs/web_page.png [--model rnn] [--sample 7] [--image shoe.jpg]

Serves the page on 127.0.0.1 (a free port) with `make web`'s server (serve.py), opens /examples/web/, picks the
model, classifies one of the test images from models/onnx/samples.json (or --image), and saves the page.
Needs what the page needs (models/onnx/ from `make repro`, `make web-example`), Playwright for
Python and Debian's chromium (`make setup`).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from serve import make_server  # beside this script

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screenshot(out: Path, root: Path, model: str, sample: int, image: Path | None, chromium: str) -> str:
    """Save the page to `out`; returns the text of its result. Raises RuntimeError with the page's error."""
    from playwright.sync_api import sync_playwright

    server = make_server(root, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/examples/web/")
            page.wait_for_selector("body[data-ready]", timeout=60_000)
            if page.is_visible("#error"):
                raise RuntimeError(page.inner_text("#error"))
            # The page opens on its first model (the LSTM); picking the selected one again fires no change.
            if page.input_value("#model-select") != f"../../models/onnx/{model}.onnx":
                page.select_option("#model-select", f"../../models/onnx/{model}.onnx")
            page.wait_for_function("m => document.getElementById('result').dataset.model === m", arg=f"{model}.onnx")
            if image is not None:
                page.set_input_files("#image-file", str(image))
            else:
                buttons = page.locator("#sample-list button")
                if buttons.count() == 0:
                    raise RuntimeError(f"no test images on the page: {page.inner_text('#samples-note')}")
                buttons.nth(min(sample, buttons.count() - 1)).click()
            page.wait_for_function("() => { const r = document.getElementById('result');"
                                   " return r.dataset.count !== '0' || r.dataset.errors !== '0'; }", timeout=60_000)
            if page.is_visible("#error"):
                raise RuntimeError(page.inner_text("#error"))
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            text = page.inner_text("#source") + "\n" + page.inner_text("#top")
            browser.close()
            return text
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write, e.g. docs/web_page.png")
    parser.add_argument("--model", choices=("lstm", "gru", "rnn"), default="lstm", help="the model to pick (default lstm, the page's first)")
    parser.add_argument("--sample", type=int, default=0, help="which shipped test image to classify (default 0)")
    parser.add_argument("--image", type=Path, help="classify this image file instead of a test image")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder to serve (default: this repository)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable (default /usr/bin/chromium)")
    args = parser.parse_args(argv)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        parser.error("needs Playwright for Python: pip install -r requirements.txt")
    if not Path(args.chromium).is_file():
        parser.error(f"{args.chromium} not found: apt-get install chromium (or pass --chromium)")
    if not (args.root / "examples" / "web" / "index.html").is_file():
        parser.error(f"{args.root}: no examples/web/index.html there: --root must be the repository root")
    if args.image is not None and not args.image.is_file():
        parser.error(f"{args.image}: file not found")
    from playwright.sync_api import Error as PlaywrightError

    try:
        shown = screenshot(args.out, args.root.resolve(), args.model, args.sample, args.image, args.chromium)
    except RuntimeError as exc:
        print(f"screenshot.py: the page shows an error: {exc}", file=sys.stderr)
        return 1
    except PlaywrightError as exc:  # the browser did not start, or the page never became ready
        print(f"screenshot.py: error: {exc.message.splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"{args.out}: {' | '.join(line for line in shown.splitlines() if line.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
