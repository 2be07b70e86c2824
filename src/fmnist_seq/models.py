"""The classifiers: uint8 pixels in, logits out. The sequence classifiers read each 28x28 image as 28 steps
(rows) of 28 features (pixels); a small CNN, which sees the whole image at once, serves only as a distillation
teacher for them during training (it is never exported).

A model owns its input normalization (the train split's statistics, as buffers saved in its checkpoint), so
training, evaluation, export and the ONNX graph all feed it raw pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from fmnist_seq.classes import IMAGE_SIZE, NUM_CLASSES
from fmnist_seq.config import ModelConfig



class Classifier(nn.Module):
    """What every model shares: its config and its pixel normalization; subclasses define `classify`."""

    def __init__(self, cfg: ModelConfig, mean: float, std: float) -> None:
        super().__init__()
        self.cfg = cfg
        # float32 buffers: the same arithmetic as the ONNX graph's Cast/Div/Sub/Div, in every consumer.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32))

    @property
    def normalization(self) -> tuple[float, float]:
        """(mean, std) of the train split's pixels on the [0, 1] scale, as this model applies them."""
        return float(self.pixel_mean), float(self.pixel_std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 28, 28) uint8 pixels -> (batch, 10) logits."""
        return self.classify(self.normalize(pixels))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 28, 28) uint8 pixels -> normalized float32, the train split's statistics."""
        return (pixels.to(torch.float32) / 255.0 - self.pixel_mean) / self.pixel_std

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _all_steps_head(features: int, cfg: ModelConfig) -> nn.Sequential:
    """The report's RNN head: every step's (or position's) output, flattened -> Linear -> Dropout -> ReLU -> Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(features, cfg.head_hidden), nn.Dropout(cfg.dropout), nn.ReLU(),
                         nn.Linear(cfg.head_hidden, NUM_CLASSES))


class SequenceClassifier(Classifier):
    """Pixel normalization, a recurrent encoder over image rows, then one of the heads of `ModelConfig.head`."""

    def __init__(self, cfg: ModelConfig, mean: float, std: float) -> None:
        super().__init__(cfg, mean, std)
        recurrent = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cfg.cell]
        self.encoder = recurrent(
            input_size=IMAGE_SIZE,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.layer_dropout if cfg.num_layers > 1 else 0.0,
        )
        features = (2 if cfg.bidirectional else 1) * cfg.hidden_size
        if cfg.head == "all_steps":
            self.head = _all_steps_head(IMAGE_SIZE * features, cfg)
        else:
            # The report's GRU head (on the last step, or on all steps pooled): Dropout -> Linear.
            self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(features, NUM_CLASSES))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (batch, 28, 28) float32 -> (batch, 10) logits."""
        # -> outputs (batch, 28, directions*hidden), h_n (layers*directions, batch, hidden)
        outputs, state = self.encoder(x)
        h_n = state[0] if self.cfg.cell == "lstm" else state  # an LSTM's state is (h_n, c_n)
        if self.cfg.head == "all_steps":
            return self.head(outputs)  # (batch, 28*directions*hidden) -> (batch, 10)
        if self.cfg.head == "mean_steps":
            return self.head(outputs.mean(dim=1))  # (batch, directions*hidden) -> (batch, 10)
        if self.cfg.head == "max_steps":
            return self.head(outputs.amax(dim=1))
        # The last layer's final state of each direction; for a forward-only model this is outputs[:, -1].
        directions = 2 if self.cfg.bidirectional else 1
        final = torch.cat([h_n[-d] for d in range(directions, 0, -1)], dim=1)  # (batch, directions*hidden)
        return self.head(final)


class ConvClassifier(Classifier):
    """A small CNN over the whole image, a distillation teacher: `num_layers` blocks of 3x3 conv, BatchNorm,
    ReLU and 2x2 max-pooling, the first `hidden_size` channels wide and each next one twice as wide, then the
    all-steps head over every position of the last feature map."""

    def __init__(self, cfg: ModelConfig, mean: float, std: float) -> None:
        super().__init__(cfg, mean, std)
        blocks: list[nn.Module] = []
        channels, side = 1, IMAGE_SIZE
        for layer in range(cfg.num_layers):
            width = cfg.hidden_size * 2 ** layer
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels, side = width, side // 2
        # channels_last (NHWC): oneDNN's convolutions, pooling and BatchNorm run faster in it on the CPU (1.34x the
        # images per second of a training epoch in fp32, 1.56x in bf16; docs/performance.md#the-teachers-layout-
        # channels_last). The 1-channel input is the same in either layout, so the weights' format carries through.
        self.encoder = nn.Sequential(*blocks).to(memory_format=torch.channels_last)
        self.head = _all_steps_head(channels * side * side, cfg)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (batch, 28, 28) float32 -> (batch, 10) logits."""
        # (batch, 1, 28, 28) -> (batch, channels, side, side), flattened by the head
        return self.head(self.encoder(x.unsqueeze(1)))


def build_model(cfg: ModelConfig, mean: float, std: float) -> Classifier:
    """The model `cfg` describes, normalizing with the train split's (mean, std)."""
    return (ConvClassifier if cfg.cell == "cnn" else SequenceClassifier)(cfg, mean, std)


@torch.inference_mode()
def predict_logits(model: nn.Module, pixels: torch.Tensor, batch_size: int,
                   device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Logits for every image, in order, computed in eval mode (the model's training flag is restored)."""
    was_training = model.training
    model.eval()
    out = [model(pixels[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(pixels), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


def forward_flops(cfg: ModelConfig) -> int:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass; the matmuls and convolutions dominate."""
    if cfg.cell == "cnn":
        flops, channels, side = 0, 1, IMAGE_SIZE
        for layer in range(cfg.num_layers):
            width = cfg.hidden_size * 2 ** layer
            flops += 2 * side * side * channels * width * 9
            channels, side = width, side // 2
        return flops + 2 * (channels * side * side * cfg.head_hidden + cfg.head_hidden * NUM_CLASSES)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cfg.cell]
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
    """Trainable parameters (the normalization buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters())
