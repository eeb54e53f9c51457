"""The reference backend of multi-scale deformable attention: one ``F.grid_sample`` per level.

Plain PyTorch, any floating dtype and device; the source of truth the other backends are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _reference_grids(sampling_locations: Tensor) -> tuple[Tensor, Tensor]:
    """grid_sample grids 2 * loc - 1, with non-finite points moved far outside the map; and the finite mask.

    Locations are clamped to [-1, 2] first: every location outside that range already samples zero with a zero
    gradient, and a huge one (3e38) would overflow to an infinite grid, which grid_sample turns into NaN.
    """
    finite = torch.isfinite(sampling_locations).all(-1, keepdim=True)  # (N, Lq, M, L, P, 1)
    # -1 becomes grid -3, i.e. pixel -W - 0.5: all four corners are outside, the sample and its gradient are 0
    locations = torch.where(finite, sampling_locations, -1.0).clamp(-1.0, 2.0)
    return 2 * locations - 1, finite


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Plain-PyTorch multi-scale deformable attention, one ``F.grid_sample`` per level.

    Same contract as :func:`ms_deform_attn` (no validation, differentiable by autograd, any floating dtype
    and device). ``level_start_index`` is implied by ``spatial_shapes`` and unused.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if L * P == 0:
        return value.new_zeros(N, Lq, M * D)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids, _ = _reference_grids(sampling_locations)
    samples = []
    for level, (h, w) in enumerate(shapes):
        if h * w == 0:  # an empty level contributes nothing (grid_sample rejects it)
            samples.append(value.new_zeros(N * M, D, Lq, P))
            continue
        value_l = value_levels[level].permute(0, 2, 3, 1).reshape(N * M, D, h, w)  # (N*M, D, H, W)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(N * M, Lq, P, 2)  # (N*M, Lq, P, 2)
        samples.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)  # (N*M, 1, Lq, L*P)
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    output = (sampled * weights).sum(-1).view(N, M * D, Lq)  # (N, M*D, Lq)
    return output.transpose(1, 2).contiguous()  # (N, Lq, M*D)


def reference_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_attn_reference`, written out per level with grid_sample's backward.

    (Autograd is not available inside a custom op's implementation, hence the explicit form.)
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if L * P == 0:
        return torch.zeros_like(value), torch.zeros_like(sampling_locations), torch.zeros_like(attention_weights)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids, finite = _reference_grids(sampling_locations)
    grad_out = grad_output.reshape(N, Lq, M, D).permute(0, 2, 3, 1).reshape(N * M, D, Lq, 1)  # (N*M, D, Lq, 1)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)  # (N*M, 1, Lq, L, P)
    grad_values, grad_grids, grad_weights = [], [], []
    for level, (h, w) in enumerate(shapes):
        if h * w == 0:  # an empty level: no value to sample, zero gradients for its points
            grad_values.append(value_levels[level])  # (N, 0, M, D)
            grad_grids.append(value.new_zeros(N * M, Lq, P, 2))
            grad_weights.append(value.new_zeros(N * M, Lq, P))
            continue
        value_l = value_levels[level].permute(0, 2, 3, 1).reshape(N * M, D, h, w)  # (N*M, D, H, W)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(N * M, Lq, P, 2)  # (N*M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        grad_weights.append((sampled * grad_out).sum(1))  # (N*M, Lq, P)
        grad_sampled = grad_out * weights[..., level, :]  # (N*M, D, Lq, P)
        # interpolation_mode 0 = bilinear, padding_mode 0 = zeros
        grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
            grad_sampled, value_l, grid_l, 0, 0, False, [True, True]
        )
        grad_values.append(grad_value_l.view(N, M, D, h * w).permute(0, 3, 1, 2))  # (N, H*W, M, D)
        grad_grids.append(grad_grid_l)  # (N*M, Lq, P, 2)
    grad_value = torch.cat(grad_values, dim=1)  # (N, S, M, D)
    grad_grid = torch.stack(grad_grids, dim=2).view(N, M, Lq, L, P, 2).transpose(1, 2)  # (N, Lq, M, L, P, 2)
    grad_locations = torch.where(finite, 2 * grad_grid, 0.0)  # d grid / d location = 2
    grad_attention = torch.stack(grad_weights, dim=2).view(N, M, Lq, L, P).transpose(1, 2)  # (N, Lq, M, L, P)
    return grad_value.contiguous(), grad_locations.contiguous(), grad_attention.contiguous()
