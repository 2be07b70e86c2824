"""The two sequence classifiers: each 28x28 image is 28 steps (rows) of 28 features (pixels)."""

from __future__ import annotations

import torch
from torch import nn

from fmnist_seq.classes import IMAGE_SIZE, NUM_CLASSES
from fmnist_seq.config import ModelConfig


class SequenceClassifier(nn.Module):
    """A recurrent encoder over image rows followed by one of the report's two heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        recurrent = {"rnn": nn.RNN, "gru": nn.GRU}[cfg.cell]
        self.encoder = recurrent(
            input_size=IMAGE_SIZE,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.layer_dropout if cfg.num_layers > 1 else 0.0,
        )
        directions = 2 if cfg.bidirectional else 1
        if cfg.head == "all_steps":
            # The report's RNN head: every step's output, flattened -> Linear -> Dropout -> ReLU -> Linear.
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(IMAGE_SIZE * directions * cfg.hidden_size, cfg.head_hidden),
                nn.Dropout(cfg.dropout),
                nn.ReLU(),
                nn.Linear(cfg.head_hidden, NUM_CLASSES),
            )
        else:
            # The report's GRU head: the final hidden state -> Dropout -> Linear.
            self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(directions * cfg.hidden_size, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (batch, 28, 28) -> outputs (batch, 28, directions*hidden), h_n (layers*directions, batch, hidden)
        outputs, h_n = self.encoder(images)
        if self.cfg.head == "all_steps":
            return self.head(outputs)  # (batch, 28*directions*hidden) -> (batch, 10)
        # The last layer's final state of each direction; for a forward-only model this is outputs[:, -1].
        directions = 2 if self.cfg.bidirectional else 1
        final = torch.cat([h_n[-d] for d in range(directions, 0, -1)], dim=1)  # (batch, directions*hidden)
        return self.head(final)


def forward_flops(cfg: ModelConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass; the matmuls dominate all else."""
    gates = {"rnn": 1, "gru": 3}[cfg.cell]
    directions = 2 if cfg.bidirectional else 1
    flops, layer_input = 0, IMAGE_SIZE
    for _ in range(cfg.num_layers):
        per_step = gates * (layer_input + cfg.hidden_size) * cfg.hidden_size
        flops += 2 * per_step * IMAGE_SIZE * directions
        layer_input = directions * cfg.hidden_size
    if cfg.head == "all_steps":
        flops += 2 * (IMAGE_SIZE * layer_input * cfg.head_hidden + cfg.head_hidden * NUM_CLASSES)
    else:
        flops += 2 * layer_input * NUM_CLASSES
    return flops


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
