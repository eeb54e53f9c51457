"""The chunked im2col implementation of :func:`deformvision.ops.deform_conv2d` (forward and backward).

No argument checks here: :mod:`deformvision.ops.deform_conv` validates and dispatches to these through
its ``torch.library`` custom op. Conventions and the memory layout are described there.
"""

from typing import NamedTuple

import torch
from torch import Tensor

# Elements of the gathered corners per chunk (4 * pixels * kH * kW * C_in). Small enough for a chunk's
# corners, columns and their gradients to stay in a CPU's L2 cache, large enough to keep the Python
# overhead small and the chunk's matrix products efficient (measured at C_in=256, 3x3: 2^19 is best).
_CHUNK_ELEMENTS = 1 << 19

# --------------------------------------------------------------------------------------------------------
# CPU/GPU implementation in PyTorch operations
# --------------------------------------------------------------------------------------------------------
#
# Every (output pixel p, tap k, offset group g) is one "sample": a row of C_in / offset_groups channel
# values, the bilinear blend of four corner rows of a zero-bordered, channels-last copy of the input.
# Samples are ordered (n, p, k, g), so the blended rows of one output pixel, read consecutively, are its
# im2col column in (tap, channel) order, and a chunk of consecutive output pixels is one matrix product
# with the weight. Processing chunks that fit in cache keeps every large temporary out of main memory;
# the backward pass recomputes the chunk's columns instead of saving them.


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 (sample positions beyond 256 or 2,048 pixels need it), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Samples(NamedTuple):
    """Corner rows and bilinear factors of every sample; ``S = N * H_out * W_out * kH * kW * offset_groups``."""

    index: Tensor  # (S, 4) rows of the corners (top-left, top-right, bottom-left, bottom-right) in _padded_rows
    weights: Tensor  # (S, 4) their blend weights, zero outside the image, times the mask; NaN for a NaN offset
    frac_y: Tensor  # (S,) fractional row position, zero outside the image
    frac_x: Tensor  # (S,) fractional column position, zero outside the image
    scale: Tensor  # (S,) the mask (or one), zero outside the image
    valid: Tensor  # (S,) bool, the sample lies in [-1, H) x [-1, W) (torchvision's rule for the gradient)
    edge: Tensor  # (S,) bool, a valid sample on the line y = -1 or x = -1, whose value is exactly zero


def _samples(
    input_shape: list[int],
    offset: Tensor,
    mask: Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    dtype: torch.dtype,
) -> _Samples:
    """Corner rows and bilinear factors of every sample, computed in ``dtype``.

    A sample outside the image reads the all-zero last row of :func:`_padded_rows` at all four corners, so
    a non-finite input pixel never leaks into it through a zero weight (as in torchvision, which reads
    nothing there). A sample with a NaN offset gets NaN weights: its output pixel becomes NaN.
    """
    batch, _, height, width = input_shape
    k_h, k_w = kernel_size
    out_h, out_w = offset.shape[2], offset.shape[3]
    taps = k_h * k_w
    offset_groups = offset.shape[1] // (2 * taps)
    device = offset.device

    # Undeformed location of tap (i, j) at output pixel (h_out, w_out), as (H_out, W_out, kH, kW, 1).
    out_rows = torch.arange(out_h, dtype=dtype, device=device) * stride[0] - padding[0]
    out_cols = torch.arange(out_w, dtype=dtype, device=device) * stride[1] - padding[1]
    tap_rows = torch.arange(k_h, dtype=dtype, device=device) * dilation[0]
    tap_cols = torch.arange(k_w, dtype=dtype, device=device) * dilation[1]
    base_y = out_rows.view(out_h, 1, 1, 1, 1) + tap_rows.view(1, 1, k_h, 1, 1)  # (H_out, 1, kH, 1, 1)
    base_x = out_cols.view(1, out_w, 1, 1, 1) + tap_cols.view(1, 1, 1, k_w, 1)  # (1, W_out, 1, kW, 1)

    # (N, og, kH, kW, 2, H_out, W_out) -> (N, H_out, W_out, kH, kW, og, 2): sample order, then (dy, dx).
    offset = offset.reshape(batch, offset_groups, k_h, k_w, 2, out_h, out_w).permute(0, 5, 6, 2, 3, 1, 4)
    offset = offset.to(dtype)
    y = (base_y + offset[..., 0]).reshape(-1)  # (S,)
    x = (base_x + offset[..., 1]).reshape(-1)  # (S,)

    # torchvision's rule: a sample at y <= -1, y >= H, x <= -1 or x >= W reads zero; otherwise each
    # corner outside the image reads zero, which the one-pixel zero border of the padded input provides.
    # y = -1 (x = -1) is kept: the border gives it the value 0 and the derivative from the right.
    valid = (y >= -1) & (y < height) & (x >= -1) & (x < width)  # False for NaN
    edge = valid & ((y == -1) | (x == -1))
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    frac_y = y - y0
    frac_x = x - x0
    if mask is None:
        scale = valid.to(dtype)
    else:
        # (N, og * kH * kW, H_out, W_out) -> (N, H_out, W_out, kH*kW, og) -> (S,)
        scale = mask.reshape(batch, offset_groups, taps, out_h, out_w).permute(0, 3, 4, 2, 1).reshape(-1)
        scale = scale.to(dtype)
        scale = torch.where(valid, scale, scale * 0)  # torchvision's mask * 0 outside: NaN for a NaN mask
    scale = torch.where(y.isnan() | x.isnan(), torch.nan, scale)
    frac_y = torch.where(valid, frac_y, torch.zeros_like(frac_y))  # finite even for far or NaN offsets
    frac_x = torch.where(valid, frac_x, torch.zeros_like(frac_x))
    top, left = 1 - frac_y, 1 - frac_x
    row_weights = torch.stack([top, frac_y], dim=1) * scale.unsqueeze(1)  # (S, 2): (top, bottom) * scale
    col_weights = torch.stack([left, frac_x], dim=1)  # (S, 2): (left, right)
    weights = (row_weights.unsqueeze(2) * col_weights.unsqueeze(1)).view(-1, 4)  # (S, 4)

    # Padded input: (N, og, H + 2, W + 2, C_in/og) rows; pixel (r, c) of plane (n, g) is row
    # ((n * og + g) * (H + 2) + r + 1) * (W + 2) + c + 1; samples outside the image read the zero row.
    padded_w = width + 2
    plane = torch.arange(batch, device=device).view(batch, 1, 1, 1) * offset_groups + torch.arange(
        offset_groups, device=device
    )  # (N, 1, 1, og)
    plane = plane.expand(batch, out_h * out_w, taps, offset_groups).reshape(-1)  # (S,)
    row = y0.clamp(-1, height - 1).long() + 1
    col = x0.clamp(-1, width - 1).long() + 1
    top_left = (plane * (height + 2) + row) * padded_w + col  # (S,)
    index = top_left.unsqueeze(1) + torch.tensor([0, 1, padded_w, padded_w + 1], device=device)  # (S, 4)
    zero_row = batch * offset_groups * (height + 2) * padded_w
    index = torch.where(valid.unsqueeze(1), index, zero_row)
    return _Samples(index, weights, frac_y, frac_x, scale, valid, edge)


def _padded_rows(input: Tensor, offset_groups: int, dtype: torch.dtype) -> Tensor:
    """``input`` ``(N, C_in, H, W)`` as zero-bordered channels-last rows ``(N * og * (H+2) * (W+2) + 1, C_in/og)``.

    The last row is all zeros too: the row that samples outside the image read.
    """
    batch, in_channels, height, width = input.shape
    og_channels = in_channels // offset_groups
    planes = batch * offset_groups * (height + 2) * (width + 2)
    rows = input.new_zeros((planes + 1, og_channels), dtype=dtype)
    padded = rows[:planes].view(batch, offset_groups, height + 2, width + 2, og_channels)
    # (N, C_in, H, W) -> (N, og, H, W, C_in/og)
    padded[:, :, 1:-1, 1:-1] = input.reshape(batch, offset_groups, og_channels, height, width).permute(0, 1, 3, 4, 2)
    return rows


def _weight_matrix(weight: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """``(C_out, C_in/groups, kH, kW)`` -> ``(groups, C_out/groups, kH*kW*C_in/groups)``, (tap, channel) columns."""
    out_channels, group_channels, k_h, k_w = weight.shape
    matrix = weight.to(dtype).reshape(groups, out_channels // groups, group_channels, k_h * k_w)
    return matrix.transpose(2, 3).reshape(groups, out_channels // groups, k_h * k_w * group_channels)


def _chunk_pixels(input: Tensor, weight: Tensor) -> int:
    """Output pixels per chunk."""
    taps = weight.shape[2] * weight.shape[3]
    return max(1, _CHUNK_ELEMENTS // (4 * taps * input.shape[1]))


def _columns(padded: Tensor, index: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Blend the corners of a chunk of samples: ``(corners (s, 4, C), columns (s, C))``."""
    corners = padded.index_select(0, index.view(-1)).view(index.shape[0], 4, padded.shape[1])  # (s, 4, C)
    columns = torch.bmm(weights.unsqueeze(1), corners).squeeze(1)  # (s, C): sum of weight * corner
    return corners, columns


def _forward(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    batch, in_channels, _, _ = input.shape
    out_channels, group_channels, k_h, k_w = weight.shape
    groups = in_channels // group_channels
    taps = k_h * k_w
    offset_groups = offset.shape[1] // (2 * taps)
    out_h, out_w = offset.shape[2], offset.shape[3]
    dtype = _compute_dtype(input.dtype)
    pixels = batch * out_h * out_w

    samples = _samples(list(input.shape), offset, mask, (k_h, k_w), stride, padding, dilation, dtype)
    padded = _padded_rows(input, offset_groups, dtype)  # (rows, C_in/og)
    # torchvision reads nothing on the lines y = -1 and x = -1 (the value is 0 there, only the gradient is not)
    index = torch.where(samples.edge.unsqueeze(1), padded.shape[0] - 1, samples.index)  # (S, 4)
    weights = samples.weights
    matrix = _weight_matrix(weight, groups, dtype)  # (groups, C_out/groups, K * C_in/groups)
    out = input.new_empty((pixels, out_channels), dtype=dtype)  # (N * H_out * W_out, C_out)
    step = _chunk_pixels(input, weight)
    per_pixel = taps * offset_groups  # samples per output pixel
    for start in range(0, pixels, step):
        stop = min(start + step, pixels)
        rows = slice(start * per_pixel, stop * per_pixel)
        _, columns = _columns(padded, index[rows], weights[rows])  # (s, C_in/og), s = pixels * K * og
        if groups == 1:
            # (pixels, K * C_in) @ (K * C_in, C_out)
            torch.mm(columns.view(stop - start, -1), matrix[0].t(), out=out[start:stop])
        else:
            # (pixels, K, groups, C_in/groups) -> (groups, pixels, K * C_in/groups)
            grouped = columns.view(stop - start, taps, groups, group_channels).permute(2, 0, 1, 3)
            grouped = grouped.reshape(groups, stop - start, taps * group_channels)
            result = torch.bmm(grouped, matrix.transpose(1, 2))  # (groups, pixels, C_out/groups)
            out[start:stop] = result.transpose(0, 1).reshape(stop - start, out_channels)
    if bias is not None:
        out += bias.to(dtype)
    # (N * H_out * W_out, C_out) -> (N, C_out, H_out, W_out)
    out = out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    return out.to(input.dtype, memory_format=torch.contiguous_format)


def _backward(
    grad_out: Tensor,
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    need_input: bool,
    need_offset: bool,
    need_weight: bool,
    need_mask: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients with respect to input, offset, weight and mask (empty where not needed)."""
    batch, in_channels, height, width = input.shape
    out_channels, group_channels, k_h, k_w = weight.shape
    groups = in_channels // group_channels
    taps = k_h * k_w
    offset_groups = offset.shape[1] // (2 * taps)
    og_channels = in_channels // offset_groups
    out_h, out_w = offset.shape[2], offset.shape[3]
    dtype = _compute_dtype(input.dtype)
    pixels = batch * out_h * out_w
    need_samples = need_offset or need_mask  # gradient of the blend weights

    index, weights, frac_y, frac_x, scale, valid, _ = _samples(
        list(input.shape), offset, mask, (k_h, k_w), stride, padding, dilation, dtype
    )
    padded = _padded_rows(input, offset_groups, dtype)  # (rows, C_in/og)
    matrix = _weight_matrix(weight, groups, dtype)  # (groups, C_out/groups, K * C_in/groups)
    # (N, C_out, H_out, W_out) -> (N * H_out * W_out, C_out)
    grad_rows = grad_out.permute(0, 2, 3, 1).to(dtype).reshape(pixels, out_channels)
    grad_padded = torch.zeros_like(padded) if need_input else padded.new_empty(0)
    grad_matrix = torch.zeros_like(matrix) if need_weight else matrix.new_empty(0)
    grad_weights = weights.new_empty(weights.shape) if need_samples else weights.new_empty(0)  # (S, 4)

    step = _chunk_pixels(input, weight)
    per_pixel = taps * offset_groups
    for start in range(0, pixels, step):
        stop = min(start + step, pixels)
        count = stop - start
        rows = slice(start * per_pixel, stop * per_pixel)
        grad_chunk = grad_rows[start:stop]  # (pixels, C_out)
        if need_weight or need_samples:
            corners, columns = _columns(padded, index[rows], weights[rows])  # (s, 4, C_in/og), (s, C_in/og)
        else:
            corners, columns = padded.new_empty(0), padded.new_empty(0)
        if groups == 1:
            if need_weight:
                # (C_out, pixels) @ (pixels, K * C_in)
                grad_matrix[0].addmm_(grad_chunk.t(), columns.view(count, -1))
            grad_columns = torch.mm(grad_chunk, matrix[0])  # (pixels, K * C_in)
        else:
            grad_grouped = grad_chunk.view(count, groups, -1).transpose(0, 1)  # (groups, pixels, C_out/groups)
            if need_weight:
                # (pixels, K, groups, C_in/groups) -> (groups, pixels, K * C_in/groups)
                grouped = columns.view(count, taps, groups, group_channels).permute(2, 0, 1, 3)
                grouped = grouped.reshape(groups, count, taps * group_channels)
                grad_matrix.baddbmm_(grad_grouped.transpose(1, 2), grouped)
            grad_columns = torch.bmm(grad_grouped, matrix)  # (groups, pixels, K * C_in/groups)
            # -> (pixels, K, groups, C_in/groups), the sample-row order
            grad_columns = grad_columns.view(groups, count, taps, group_channels).permute(1, 2, 0, 3)
        grad_columns = grad_columns.reshape(-1, og_channels)  # (s, C_in/og)
        if need_samples:
            # d loss / d weight of each corner: (s, 4, C) @ (s, C, 1)
            torch.bmm(corners, grad_columns.unsqueeze(2), out=grad_weights[rows].unsqueeze(2))
        if need_input:
            # Each corner row receives weight * column gradient: (s, 4, 1) * (s, 1, C) -> (s * 4, C)
            spread = weights[rows].unsqueeze(2) * grad_columns.unsqueeze(1)
            grad_padded.index_add_(0, index[rows].view(-1), spread.view(-1, og_channels))

    grad_input = input.new_empty(0)
    if need_input:
        # (N * og * (H+2) * (W+2), C_in/og) -> interior (N, og, H, W, C_in/og) -> (N, C_in, H, W)
        # (the last, all-zero row only collects the gradients of the samples outside the image)
        grad_padded = grad_padded[:-1].view(batch, offset_groups, height + 2, width + 2, og_channels)
        grad_padded = grad_padded[:, :, 1:-1, 1:-1].permute(0, 1, 4, 2, 3)
        grad_input = grad_padded.reshape(batch, in_channels, height, width).to(input.dtype)
    grad_weight = weight.new_empty(0)
    if need_weight:
        # (groups, C_out/groups, K * C_in/groups) -> (C_out, C_in/groups, kH, kW)
        grad_weight = grad_matrix.view(out_channels, taps, group_channels).transpose(1, 2)
        grad_weight = grad_weight.reshape(out_channels, group_channels, k_h, k_w).to(weight.dtype)
    grad_offset = offset.new_empty(0)
    grad_mask = offset.new_empty(0)
    if need_samples:
        # weights = (top, bottom) x (left, right) * scale, with top = 1 - frac_y and left = 1 - frac_x.
        g_tl, g_tr, g_bl, g_br = grad_weights.unbind(1)  # (S,) each
        top, left = 1 - frac_y, 1 - frac_x
        if need_offset:
            grad_y = ((g_bl - g_tl) * left + (g_br - g_tr) * frac_x) * scale  # (S,)
            grad_x = ((g_tr - g_tl) * top + (g_br - g_bl) * frac_y) * scale  # (S,)
            # (N, H_out, W_out, kH, kW, og, 2) -> (N, og, kH, kW, 2, H_out, W_out)
            grad_offset = torch.stack([grad_y, grad_x], dim=1).view(batch, out_h, out_w, k_h, k_w, offset_groups, 2)
            grad_offset = grad_offset.permute(0, 5, 3, 4, 6, 1, 2).reshape(offset.shape).to(offset.dtype)
        if need_mask and mask is not None:
            blend = (g_tl * left + g_tr * frac_x) * top + (g_bl * left + g_br * frac_x) * frac_y  # (S,)
            blend = torch.where(valid, blend, torch.zeros_like(blend))
            # (N, H_out, W_out, kH*kW, og) -> (N, og * kH * kW, H_out, W_out)
            grad_mask = blend.view(batch, out_h, out_w, taps, offset_groups).permute(0, 4, 3, 1, 2)
            grad_mask = grad_mask.reshape(mask.shape).to(mask.dtype)
    return grad_input, grad_offset, grad_weight, grad_mask
