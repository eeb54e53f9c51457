"""Helpers of the deformable transformer that the golden parity tests do not isolate."""

import torch

from deformvision.models.deformable_detr.encoder_decoder import inverse_sigmoid


def test_inverse_sigmoid():
    x = torch.tensor([0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    torch.testing.assert_close(inverse_sigmoid(x), torch.logit(x))
    torch.testing.assert_close(torch.sigmoid(inverse_sigmoid(x)), x)
    # clamped to [0, 1], then both sides to eps: finite at and beyond the ends
    ends = inverse_sigmoid(torch.tensor([-3.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    limit = torch.log(torch.tensor(1e5, dtype=torch.float64))
    torch.testing.assert_close(ends, torch.stack((-limit, -limit, limit, limit)))
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.0]), eps=1e-3), torch.log(torch.tensor([1e-3])))
