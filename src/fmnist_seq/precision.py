"""The training step's arithmetic (a train_* block's `precision`): fp32, or bf16 autocast of the forward pass.

bf16 keeps fp32 master weights and optimizer state (autocast casts each op's inputs, never the parameters), and
the loss is computed in fp32 by the step itself (training.Step). Only the training step runs in bf16: validation,
the selected epoch and every exported file are fp32, so the epoch is chosen on what ships.

A processor without native bf16 multiplies it in emulation: slower than fp32, and with figures that may differ
from the committed ones. A bf16 block runs there all the same (never silently in another precision), after one
line that says so and how to get full speed back (check_precision; docs/performance.md#precision).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager

import torch

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# What oneDNN (PyTorch's CPU kernels) may use at most, lowest first, as its ONEDNN_MAX_CPU_ISA names it; aliases
# share a rank. Below AVX512_CORE_BF16 it has no bf16 instructions to use, whatever the processor has.
ISA_ENV = "ONEDNN_MAX_CPU_ISA"
LEGACY_ISA_ENV = "DNNL_MAX_CPU_ISA"  # its older name, still read when the new one is unset
_ISA_ORDER: tuple[tuple[str, ...], ...] = (
    ("SSE41",), ("AVX",), ("AVX2",), ("AVX2_VNNI",), ("AVX2_VNNI_2",), ("AVX512_CORE",), ("AVX512_CORE_VNNI",),
    ("AVX512_CORE_BF16",), ("AVX10_1_512", "AVX512_CORE_FP16"), ("AVX10_1_512_AMX", "AVX512_CORE_AMX"),
    ("AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16"), ("AVX10_2_512",), ("AVX10_2_512_AMX_2",), ("DEFAULT", "ALL"),
)
ISA_RANK: dict[str, int] = {name: rank for rank, names in enumerate(_ISA_ORDER) for name in names}
FIRST_BF16_ISA = "AVX512_CORE_BF16"


def autocast(precision: str, device: torch.device) -> ContextManager[object]:
    """The context the forward pass runs in: bf16 autocast, or nothing at all for fp32 (not even a disabled
    autocast), so that fp32 computes exactly what it computed before this setting existed."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return contextlib.nullcontext()


def isa_allows_bf16(value: str | None) -> bool:
    """Whether an ONEDNN_MAX_CPU_ISA value leaves oneDNN its bf16 instructions. Unset, or a name oneDNN does not
    know (it ignores those and uses everything the processor has), restricts nothing."""
    if not value:
        return True
    rank = ISA_RANK.get(value.strip().upper())
    return rank is None or rank >= ISA_RANK[FIRST_BF16_ISA]


def _cpu_has_bf16() -> bool:
    """The processor multiplies bf16 itself: AVX512_BF16, or AMX tiles. A torch without these probes (or a
    processor that is not x86) counts as without: the warning is then at worst one line too many."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and bool(probe()) for probe in probes)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 natively: on CUDA, the GPU (not emulated: pre-Ampere GPUs emulate it); on
    the CPU, the processor, and oneDNN not restricted below its bf16 instructions by ONEDNN_MAX_CPU_ISA (how a
    machine without them is emulated here)."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch before the argument: it reported native support only
            return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return _cpu_has_bf16() and isa_allows_bf16(_isa_limit())


def _isa_limit() -> str | None:
    return os.environ.get(ISA_ENV) or os.environ.get(LEGACY_ISA_ENV)


def _why_emulated(device: torch.device) -> str:
    if device.type == "cuda":
        return f"the GPU ({torch.cuda.get_device_name(device)}) has no native bf16"
    if device.type == "cpu" and _cpu_has_bf16():
        return f"{ISA_ENV}={_isa_limit()} keeps oneDNN below {FIRST_BF16_ISA}"
    return f"the {device.type} has no native bf16 (no AVX512_BF16 or AMX)"


def check_precision(block: str, precision: str, device: torch.device, log: Callable[[str], None] = print) -> bool:
    """Say, in one line, when a bf16 block runs on a device without native bf16; it runs in bf16 all the same (a
    silent fall-back to fp32 would train another recipe than the block names). Called once per run, by the
    process that reports (rank 0, or the stage). True when the block runs at its full speed."""
    if precision != "bf16" or native_bf16(device):
        return True
    log(f"{block}: warning: precision bf16, but {_why_emulated(device)}: training in bf16 anyway, emulated and "
        "slower than fp32 here, and its figures may differ from the committed ones (docs/performance.md#precision); "
        f"set {block}.precision: fp32 for full speed")
    return False
