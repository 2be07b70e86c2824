"""Random changes to training images: mirroring left to right and shifts of a few pixels, drawn from the run's own
seeded generator for a whole global batch at once (so an image's change does not depend on the worker count)."""

from __future__ import annotations

import torch
from torch import nn

from fmnist_seq.config import AugmentConfig


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(batch, 28, 28) uint8 images -> the same images, each mirrored with probability `cfg.flip` and moved by up to
    `cfg.shift` pixels in each direction (the uncovered border is background, 0)."""
    batch, height, width = images.shape
    mirrored = torch.rand(batch, generator=generator) < cfg.flip  # drawn on the CPU: the same stream on any device
    offsets = torch.randint(0, 2 * cfg.shift + 1, (batch, 2), generator=generator)
    device = images.device
    out = torch.where(mirrored.to(device)[:, None, None], images.flip(-1), images)
    if cfg.shift:
        k = cfg.shift
        padded = nn.functional.pad(out, (k, k, k, k))  # (batch, 28 + 2k, 28 + 2k)
        rows = offsets[:, 0, None].to(device) + torch.arange(height, device=device)  # (batch, 28)
        cols = offsets[:, 1, None].to(device) + torch.arange(width, device=device)
        out = padded[torch.arange(batch, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out
