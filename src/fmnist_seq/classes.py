"""The one place that names Fashion-MNIST's classes and the image geometry."""

import re

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)

# Each image is read as a sequence: IMAGE_SIZE steps (rows) of IMAGE_SIZE features (pixels).
IMAGE_SIZE = 28


def class_key(name: str) -> str:
    """A metric-key-safe form of a class name: 'T-shirt/top' -> 't_shirt_top'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


CLASS_KEYS: tuple[str, ...] = tuple(class_key(n) for n in CLASS_NAMES)
