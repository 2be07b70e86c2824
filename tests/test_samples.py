"""samples.json for the browser page: format, a deterministic pick per class, exact pixels, clear errors."""

import base64
import json

import numpy as np
import pytest

from conftest import synthetic_images
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.samples import build_samples, decode_sample


def test_first_images_of_each_class_in_label_order():
    labels = np.array([3, 1, 3, 0, 1, 3, 9, 1, 0, 3])
    images = synthetic_images(labels, seed=0)
    document = build_samples(images, labels, per_class=2)
    assert [(s["label"], s["index"]) for s in document["samples"]] == \
        [(0, 3), (0, 8), (1, 1), (1, 4), (3, 0), (3, 2), (9, 6)]  # classes 2, 4..8 have none here
    assert document["class_names"] == list(CLASS_NAMES) and document["image_shape"] == [28, 28]
    assert document["format"] == "fmnist-seq-samples" and document["version"] == 1
    for sample in document["samples"]:
        assert len(base64.b64decode(sample["pixels"])) == 784
        assert np.array_equal(decode_sample(sample), images[sample["index"]])


def test_json_round_trip_and_determinism():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5))
    images = synthetic_images(labels, seed=1)
    text = json.dumps(build_samples(images, labels))
    assert text == json.dumps(build_samples(images.copy(), labels.astype(np.int32)))
    document = json.loads(text)
    assert len(document["samples"]) == 30 and {s["label"] for s in document["samples"]} == set(range(10))


@pytest.mark.parametrize("images, labels, per_class, message", [
    (np.zeros((2, 28, 28), np.float32), [0, 1], 3, "must be uint8"),
    (np.zeros((2, 32, 32), np.uint8), [0, 1], 3, "must be uint8"),
    (np.zeros((2, 28, 28), np.uint8), [0], 3, "one integer per image"),
    (np.zeros((2, 28, 28), np.uint8), [0, 10], 3, "0..9"),
    (np.zeros((2, 28, 28), np.uint8), [0, 1], 0, "at least 1"),
])
def test_bad_input_is_refused_with_the_reason(images, labels, per_class, message):
    with pytest.raises(ValueError, match=message):
        build_samples(images, np.asarray(labels), per_class=per_class)
