"""``nn.Dropout`` whose forward is :func:`deformvision.ops.dropout` (a faster CPU mask). A drop-in subclass
with the same ``p`` and no parameters; ``inplace=True`` is ``F.dropout``'s."""

import torch.nn.functional as F
from torch import Tensor, nn

from deformvision.ops.dropout import dropout


class Dropout(nn.Dropout):
    """``nn.Dropout`` computed by :func:`deformvision.ops.dropout`.

    Shape:
        - Input: any
        - Output: same as the input
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
