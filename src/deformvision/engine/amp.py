"""Automatic mixed precision: ``torch.autocast`` contexts and the gradient scaler for fp16."""

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(device: torch.device, amp: str) -> str:
    """The precision to run: ``"auto"`` is bf16 on a CUDA device that supports it, else none.

    Raises a ValueError for an unknown mode, or fp16 off CUDA (CPU autocast supports bf16 only).
    """
    if amp not in ("auto", "none", *AMP_DTYPES):
        raise ValueError(f"amp must be one of auto, none, bf16, fp16; got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp=fp16 needs a CUDA device (got {device}); use bf16 or none")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The forward-pass context: ``torch.autocast`` in the given precision, or nothing for ``"none"``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
