"""A few real test images per class as a small JSON document, for the browser page to ship with the models.

The export stage writes it next to the ONNX files as `models/onnx/samples.json`. Format (version 1):

    {
      "format": "fmnist-seq-samples",
      "version": 1,
      "image_shape": [28, 28],
      "dtype": "uint8",
      "encoding": "base64 of the raw row-major bytes, light item on a dark background, as in Fashion-MNIST",
      "class_names": ["T-shirt/top", ...],           # index = label
      "samples": [{"index": 0, "label": 9, "pixels": "<base64 of 784 bytes>"}, ...]
    }

`index` is the image's position in the test set. The pick is deterministic: for each class in label order,
the first `per_class` images of that class in test-set order, so the same test set always gives the same file.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

from fmnist_seq.classes import CLASS_NAMES, IMAGE_SIZE

FORMAT = "fmnist-seq-samples"
VERSION = 1
DEFAULT_PER_CLASS = 3


def build_samples(images: np.ndarray, labels: np.ndarray, per_class: int = DEFAULT_PER_CLASS,
                  class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """The samples document for uint8 images (N, 28, 28) and their int labels (N,); JSON-serializable.

    A class with fewer than `per_class` images contributes the ones it has; one with none is left out.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"samples: images must be uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}) raw pixels, got "
                         f"{images.dtype} {images.shape}; pass the test set before normalization")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"samples: labels must be one integer per image, got {labels.dtype} {labels.shape} "
                         f"for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"samples: labels must lie in 0..{len(class_names) - 1}, got {labels.min()}..{labels.max()}")
    if per_class < 1:
        raise ValueError(f"samples: per_class must be at least 1, got {per_class}")
    samples = []
    for label in range(len(class_names)):
        for index in np.flatnonzero(labels == label)[:per_class]:
            samples.append({"index": int(index), "label": label,
                            "pixels": base64.b64encode(images[index].tobytes()).decode("ascii")})
    return {
        "format": FORMAT,
        "version": VERSION,
        "image_shape": [IMAGE_SIZE, IMAGE_SIZE],
        "dtype": "uint8",
        "encoding": "base64 of the raw row-major bytes, light item on a dark background, as in Fashion-MNIST",
        "class_names": list(class_names),
        "samples": samples,
    }


def decode_sample(sample: dict[str, Any]) -> np.ndarray:
    """One entry of `samples` back to its uint8 (28, 28) image."""
    return np.frombuffer(base64.b64decode(sample["pixels"]), dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
