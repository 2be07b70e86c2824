"""fmnist-predict: classify image files with an exported ONNX model (needs no PyTorch, no repository).

Each image becomes 28x28 grayscale with the item light on a dark background, as in Fashion-MNIST: pass
--dark-on-light for ordinary photos (dark item, light background). Each file is classified on its own (one
image per call) and printed as soon as it is done, so an answer never depends on the other files given (an
int8 model scales its activations over the whole call) and thousands of files take little memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from PIL import UnidentifiedImageError

from fmnist_seq import interrupts
from fmnist_seq.errors import InferenceError
from fmnist_seq.images import MAX_PIXELS, MAX_SIDE, ImageRefused, to_pixels
from fmnist_seq.runtime import check_classifier, class_names, open_session, probabilities_of, select_providers

__all__ = ["Prediction", "main", "predict_files", "to_pixels"]

LIMITS = f"""\
images:
  PNG, JPEG, TIFF, WebP, GIF, BMP, ... (what Pillow reads), of any colour mode and size up to
  {MAX_PIXELS:,} pixels (Pillow's decompression-bomb limit) and {MAX_SIDE:,} pixels a side. Any aspect
  ratio: the image is padded to a square, but memory grows with the image, not the square. 16-bit and 32-bit
  images are scaled to 8 bits by their bit depth (floating-point ones by the smallest of 1, 255 or 65535 that
  holds their values). A file that cannot be read or is past a limit gets its own error; the others are still
  answered, and --json always prints a complete document.

exit status: 0 every file answered, 1 some file failed, 2 the model cannot be used."""


UNSURE = "unsure"


@dataclass
class Prediction:
    file: str
    top: list[dict] = field(default_factory=list)
    error: str | None = None
    answer: str | None = None  # the top class, or "unsure" where its probability is below --min-confidence


def answer_of(top: list[dict], min_confidence: float) -> str:
    """The top class, or UNSURE when the model gives it less than `min_confidence` (the exported probabilities are
    calibrated: of the images answered above 0.9, about 90% or more are right)."""
    return top[0]["class"] if top[0]["probability"] >= min_confidence else UNSURE


def _read_error(exc: Exception) -> str:
    """One file's failure to become pixels, in words."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not an image file"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read (PNG, JPEG, ...)"
    if isinstance(exc, ImageRefused):
        return f"image refused: {exc}"
    if isinstance(exc, (OSError, ValueError, EOFError)):
        return f"cannot read image: {exc}"
    # Pillow's decoders raise more than OSError on a damaged file (SyntaxError, struct.error, MemoryError,
    # DecompressionBombError, ...): whatever one file does, it is that file's error and the others go on.
    return f"cannot read image ({type(exc).__name__}: {exc})"


def predict_files(session, files: Iterable[str], top_k: int, dark_on_light: bool,
                  min_confidence: float = 0.0) -> Iterator[Prediction]:
    """One Prediction per file, in order, each from a call with that image alone."""
    names = class_names(session)
    for file in files:
        prediction = Prediction(file=file)
        try:
            pixels = to_pixels(file, dark_on_light)
        except Exception as exc:
            prediction.error = _read_error(exc)
            yield prediction
            continue
        try:
            probabilities = probabilities_of(session, pixels[np.newaxis])[0]
        except Exception as exc:  # onnxruntime's own error types; the model passed check_classifier
            prediction.error = f"the model failed on this image ({type(exc).__name__}: {exc})"
        else:
            order = np.argsort(-probabilities)[:top_k]
            prediction.top = [{"class": names[i] if i < len(names) else str(i), "index": int(i),
                               "probability": float(probabilities[i])} for i in order]
            prediction.answer = answer_of(prediction.top, min_confidence)
        yield prediction


def _predict(args: argparse.Namespace) -> int:
    try:
        session = open_session(args.model, select_providers(args.provider), require=args.provider == "cuda")
        check_classifier(session, args.model)
    except InferenceError as exc:
        print(f"fmnist-predict: error: {exc}", file=sys.stderr)
        return 2
    failed = False
    if args.json:  # one JSON document with every file, errors included, written one entry at a time
        print("[")
    try:
        for i, r in enumerate(predict_files(session, args.images, args.top_k, args.dark_on_light, args.min_confidence)):
            failed |= r.error is not None
            if args.json:
                print(("," if i else "") + json.dumps(vars(r)), flush=True)
            elif r.error:  # predictions on stdout, each failed file once on stderr
                print(f"fmnist-predict: {r.file}: error: {r.error}", file=sys.stderr)
            else:
                unsure = f"{UNSURE} (below {args.min_confidence:g}): " if r.answer == UNSURE else ""
                print(f"{r.file}: {unsure}" + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r.top),
                      flush=True)
    finally:  # the document stays complete, even when interrupted
        if args.json:
            print("]", flush=True)
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmnist-predict", description=__doc__, epilog=LIMITS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an exported .onnx file, e.g. models/onnx/gru.onnx")
    p.add_argument("images", nargs="+", help="image files (see `images` below for formats and limits)")
    p.add_argument("-k", "--top-k", type=int, default=3, help="how many classes to print per image (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--min-confidence", default="0", metavar="P",
                   help="answer \"unsure\" for an image whose top probability is below P, from 0 to 1 (default 0: always "
                        "answer); docs/export.md lists, per model, the P that gives 95%%, 98%% or 99%% accuracy")
    p.add_argument("--dark-on-light", action="store_true",
                   help="invert images that show a dark item on a light background (ordinary photos)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime execution provider (default auto: CUDA if it starts, else the CPU; "
                        "cuda: fail rather than fall back)")
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.top_k < 1:
        cli.error("--top-k must be at least 1")
    given = args.min_confidence
    try:
        args.min_confidence = float(given)
    except ValueError:
        args.min_confidence = math.nan
    if not 0.0 <= args.min_confidence <= 1.0:  # NaN fails both comparisons, so it is refused too
        print(f"fmnist-predict: error: --min-confidence must be a probability from 0 to 1, got {given!r}",
              file=sys.stderr)
        return 2
    try:
        return _predict(args)
    except KeyboardInterrupt as exc:
        print("fmnist-predict: interrupted", file=sys.stderr)
        return interrupts.exit_code(exc)
    except BrokenPipeError:  # the reader stopped reading (`| head`): nothing more to say, and no traceback
        try:  # Python would report the pipe again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
