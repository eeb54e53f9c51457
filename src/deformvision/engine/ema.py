"""Exponential moving average of model weights (as timm's ``ModelEmaV2``)."""

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """A frozen copy of a model whose floating-point weights track ``decay * ema + (1 - decay) * model``.

    Integer buffers (counters) are copied. Call :meth:`update` after every optimizer step; evaluate
    ``ema.module``; save and load with ``state_dict`` / ``load_state_dict`` (keys ``module.*``).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the averaged weights towards ``model``'s (same architecture, unwrapped from DDP)."""
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - self.decay)
            else:
                ema_value.copy_(value)

    def train(self, mode: bool = True) -> "ModelEma":
        """The average stays in eval mode."""
        return super().train(False)
