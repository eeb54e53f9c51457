"""``nn.Linear`` whose forward is :func:`deformvision.ops.linear` (oneDNN on float32 CPU tensors).

A drop-in subclass: same parameters, state-dict keys, initialisation and values (to float32 rounding) as
``nn.Linear``; ``isinstance(layer, nn.Linear)`` holds. The models use it for every projection they own.
"""

from torch import Tensor, nn

from deformvision.ops.linear import linear


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`deformvision.ops.linear`.

    Shape:
        - Input: ``(..., in_features)``
        - Output: ``(..., out_features)``

    Example:
        >>> layer = Linear(8, 16)
        >>> layer(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 16])
    """

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
