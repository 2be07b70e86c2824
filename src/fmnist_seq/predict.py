"""fmnist-predict: classify image files with an exported ONNX model (needs no PyTorch, no repository).

Each image, of any size or colour mode, becomes 28x28 grayscale with the item light on a dark
background, as in Fashion-MNIST: pass --dark-on-light for ordinary photos (dark item, light background).
Each file is classified on its own (one image per call) and printed as soon as it is done, so an answer
never depends on the other files given (an int8 model scales its activations over the whole call) and
thousands of files take little memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_seq.classes import IMAGE_SIZE, NUM_CLASSES
from fmnist_seq.errors import InferenceError
from fmnist_seq.runtime import metadata, open_session, run, select_providers


def to_pixels(path: str | Path, dark_on_light: bool = False) -> np.ndarray:
    """A file -> uint8 (28, 28): grayscale, aspect kept by padding to a square with the background."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            # Transparent areas are background: flatten onto white for photos, black otherwise.
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255) if dark_on_light else (0, 0, 0, 255))
            image = Image.alpha_composite(canvas, image.convert("RGBA"))
        gray = image.convert("L")
    if dark_on_light:
        gray = ImageOps.invert(gray)
    side = max(gray.size)
    square = Image.new("L", (side, side), 0)
    square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
    return np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


@dataclass
class Prediction:
    file: str
    top: list[dict] = field(default_factory=list)
    error: str | None = None


def predict_files(session, files: Iterable[str], top_k: int, dark_on_light: bool) -> Iterator[Prediction]:
    """One Prediction per file, in order, each from a call with that image alone."""
    class_names = metadata(session).get("class_names") or [str(i) for i in range(NUM_CLASSES)]
    for file in files:
        prediction = Prediction(file=file)
        try:
            pixels = to_pixels(file, dark_on_light)
        except FileNotFoundError:
            prediction.error = "file not found"
        except UnidentifiedImageError:
            prediction.error = "not an image file Pillow can read (PNG, JPEG, ...)"
        except (OSError, ValueError) as exc:
            prediction.error = f"cannot read image: {exc}"
        else:
            _, probabilities = run(session, pixels[np.newaxis])
            order = np.argsort(-probabilities[0])[:top_k]
            prediction.top = [{"class": class_names[i], "index": int(i), "probability": float(probabilities[0][i])}
                              for i in order]
        yield prediction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmnist-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported .onnx file, e.g. models/onnx/gru.onnx")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...), any size or colour mode")
    parser.add_argument("-k", "--top-k", type=int, default=3, help="how many classes to print per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--dark-on-light", action="store_true",
                        help="invert images that show a dark item on a light background (ordinary photos)")
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                        help="onnxruntime execution provider (default auto: CUDA if it starts, else the CPU; "
                             "cuda: fail rather than fall back)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        session = open_session(args.model, select_providers(args.provider), require=args.provider == "cuda")
    except InferenceError as exc:
        print(f"fmnist-predict: error: {exc}", file=sys.stderr)
        return 2
    failed = False
    if args.json:  # one JSON document with every file, errors included, written one entry at a time
        print("[")
    for i, r in enumerate(predict_files(session, args.images, min(args.top_k, NUM_CLASSES), args.dark_on_light)):
        failed |= r.error is not None
        if args.json:
            print(("," if i else "") + json.dumps(vars(r)), flush=True)
        elif r.error:  # predictions on stdout, each failed file once on stderr
            print(f"fmnist-predict: {r.file}: error: {r.error}", file=sys.stderr)
        else:
            print(f"{r.file}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r.top), flush=True)
    if args.json:
        print("]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
