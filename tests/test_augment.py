"""Augmentation: each image mirrored or moved by a few pixels (zeros fill in), the same for the same generator."""

import torch

from conftest import easy_split
from fmnist_seq.augment import augment
from fmnist_seq.config import AugmentConfig

IMAGES = easy_split(3, 0).images  # 30 images


def moved(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved down by dy and right by dx (negative: up, left), zeros filling in."""
    out = torch.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                    max(-dx, 0):w - max(dx, 0)]
    return out


def test_a_flip_mirrors_left_to_right():
    out = augment(IMAGES, AugmentConfig(flip=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(out, IMAGES.flip(-1))
    assert torch.equal(augment(IMAGES, AugmentConfig(flip=0.0, shift=0), torch.Generator()), IMAGES)


def test_a_shift_moves_each_image_by_at_most_k_pixels():
    out = augment(IMAGES, AugmentConfig(shift=2), torch.Generator().manual_seed(1))
    offsets = set()
    for image, shifted in zip(IMAGES, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(moved(image, dy, dx), shifted)]
        assert found, "not a shift of at most 2 pixels"
        offsets.add(found[0])
    assert len(offsets) > 5  # drawn per image


def test_the_same_generator_state_gives_the_same_images():
    cfg = AugmentConfig(flip=0.5, shift=1)
    a = augment(IMAGES, cfg, torch.Generator().manual_seed(7))
    b = augment(IMAGES, cfg, torch.Generator().manual_seed(7))
    c = augment(IMAGES, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
