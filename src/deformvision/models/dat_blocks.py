"""The pieces a DAT stage is made of: patch embedding, the pre-norm transformer block, the stage.

Blocks work channels last, ``(B, H, W, C)``; :class:`~deformvision.models.dat.DAT` assembles four stages.
"""

from collections.abc import Sequence

import torch
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from deformvision.layers import SamplingPoints, linear_gelu_linear
from deformvision.layers.recomputed_norm import apply_to_layer_norm
from deformvision.ops.linear import linear


class PatchEmbed(nn.Module):
    """Non-overlapping ``k x k`` stride-``k`` conv followed by LayerNorm (stem and downsampling).

    Shape:
        - Input: ``(B, C_in, H, W)``
        - Output: ``(B, H // k, W // k, C_out)`` (channels last, as the blocks work)
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, bias=bias)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    One :class:`DropPath` (stochastic depth) serves both residual branches, as in the official code. In training the
    normalised tensors are recomputed in backward rather than kept by the MLP and by deformable attention's
    ``proj_q`` (:func:`~deformvision.layers.apply_to_layer_norm`); window attention keeps its own window-partitioned
    copy of them (the padding, shift and partition copy the tensor before ``qkv`` sees it).

    Shape:
        - Input: ``(B, H, W, C)`` (channels last)
        - Output: ``(B, H, W, C)`` and the block's :class:`SamplingPoints` (``None`` unless ``D``).
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: int, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim, drop=drop)  # timm: fc1 -> GELU -> drop -> fc2 -> drop
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SamplingPoints | None]:
        # Training: the normalised tensors are recomputed in backward instead of kept by attn and the MLP.
        points = None
        y = apply_to_layer_norm(self.norm1, x, self.attn)
        if isinstance(y, tuple):  # deformable attention also returns its sampling points
            y, points = y
        x = x + self.drop_path(y)
        return x + self.drop_path(apply_to_layer_norm(self.norm2, x, self._mlp)), points

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)``. Without dropout or autocast it is computed from the MLP's weights (forward hooks
        on ``self.mlp``'s submodules do not run then): with gradients, as one autograd function that recomputes
        the GELU in backward (less memory); without, with the GELU fused into the first product."""
        mlp = self.mlp
        dropout = self.training and (mlp.drop1.p > 0 or mlp.drop2.p > 0)
        if dropout or (x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)):
            return mlp(x)
        if not torch.is_grad_enabled():
            return linear(linear(x, mlp.fc1.weight, mlp.fc1.bias, "gelu"), mlp.fc2.weight, mlp.fc2.bias)
        return linear_gelu_linear(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)


class Stage(nn.Module):
    """Optional downsampling followed by the stage's blocks.

    With ``grad_checkpointing`` each block's activations are recomputed in the backward pass instead
    of being stored (less memory, about one more forward pass of time).
    """

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[SamplingPoints | None]]:
        """``(B, H, W, C_in)`` -> ``(B, H', W', C)`` (halved by the downsampling, if any)."""
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        points = []
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, block_points = checkpoint(block, x, use_reentrant=False)
            else:
                x, block_points = block(x)
            points.append(block_points)
        return x, points
