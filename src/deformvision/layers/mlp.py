"""Transformer feed-forward network."""

import torch
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last dimension (the transformer FFN).

    Args:
        dim: input and output channels.
        hidden_dim: hidden channels (``expansion * dim`` in DAT).
        drop: dropout after the activation and after the second linear layer.

    Shape:
        - Input: ``(*, dim)``
        - Output: ``(*, dim)``
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))
