"""Deformable convolution (DCN v1, and DCN v2 when a modulation mask is given) in pure PyTorch.

The argument layout and the sampling rule are those of ``torchvision.ops.deform_conv2d``, so
offsets, masks and weights can be moved between the two unchanged.

Coordinate conventions
----------------------
* Offsets and sample locations are in **pixel units** of the input feature map: pixel ``(r, c)``
  sits at integer location ``(y=r, x=c)``. This is ``align_corners=True`` in
  :func:`torch.nn.functional.grid_sample` terms, but with unnormalised coordinates.
* For output pixel ``(h_out, w_out)`` and kernel tap ``(i, j)`` the sample location is::

      y = h_out * stride_h - pad_h + i * dilation_h + dy
      x = w_out * stride_w - pad_w + j * dilation_w + dx

  where ``(dy, dx)`` is the offset of that tap: **dy (rows) comes first, dx (columns) second**.
* The value at ``(y, x)`` is bilinear interpolation of the four surrounding pixels, each pixel
  outside the image counting as zero (zero padding per corner). A location with ``y <= -1``,
  ``y >= H``, ``x <= -1`` or ``x >= W`` therefore reads 0, and a location within one pixel of the
  border blends the inside pixels with zeros. torchvision tests that outer rule explicitly; per-corner
  zero padding gives the same values, and at integer locations the offset gradient is the one-sided
  derivative from the right, as in torchvision's backward kernel.

Memory
------
The op is an im2col: it materialises the sampled columns, ``N * C_in * kH * kW * H_out * W_out``
elements, then multiplies them with the weight. The four bilinear corners are gathered at once,
so the forward pass holds about 9x that many elements at its peak (four gathered corners, their
weighted copy, the columns) and keeps about 5x for the backward pass. For example N=8, C_in=256,
a 3x3 kernel and a 64x64 output give 75.5M column elements: about 0.3 GB in float32, 2.7 GB at
the peak. Split the batch if that is too much.
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Return ``(value, value)`` for an int, or the two ints of a pair."""
    if isinstance(value, int):
        return value, value
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair[0], pair[1]


def _check_tensor(name: str, tensor: Tensor, input: Tensor) -> None:
    """Check that ``tensor`` is 4-D and has the dtype and device of ``input``."""
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor, got shape {tuple(tensor.shape)}")
    if tensor.dtype != input.dtype:
        raise ValueError(f"{name} dtype {tensor.dtype} does not match input dtype {input.dtype}")
    if tensor.device != input.device:
        raise ValueError(f"{name} device {tensor.device} does not match input device {input.device}")


def _check_arguments(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Validate the arguments of :func:`deform_conv2d`.

    Returns:
        ``(groups, offset_groups, out_h, out_w)``.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be a 4-D tensor (N, C_in, H, W), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {input.dtype}")
    _check_tensor("offset", offset, input)
    _check_tensor("weight", weight, input)
    if mask is not None:
        _check_tensor("mask", mask, input)
    if bias is not None:
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias ({bias.dtype}, {bias.device}) does not match input ({input.dtype}, {input.device})")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"stride and dilation must be positive and padding non-negative, "
            f"got stride={stride}, padding={padding}, dilation={dilation}"
        )

    batch, in_channels, height, width = input.shape
    out_channels, group_channels, k_h, k_w = weight.shape
    if group_channels == 0 or k_h == 0 or k_w == 0:
        raise ValueError(f"weight must have non-zero in-channel and kernel sizes, got {tuple(weight.shape)}")
    if in_channels % group_channels != 0:
        raise ValueError(f"input channels ({in_channels}) must be divisible by weight.shape[1] ({group_channels})")
    groups = in_channels // group_channels
    if out_channels % groups != 0:
        raise ValueError(f"weight.shape[0] ({out_channels}) must be divisible by groups ({groups})")

    taps = k_h * k_w
    offset_groups = offset.shape[1] // (2 * taps)
    if offset_groups == 0 or offset.shape[1] != 2 * offset_groups * taps:
        raise ValueError(f"offset.shape[1] ({offset.shape[1]}) must be a positive multiple of 2 * kH * kW = {2 * taps}")
    if in_channels % offset_groups != 0:
        raise ValueError(f"input channels ({in_channels}) must be divisible by the offset groups ({offset_groups})")

    out_h = (height + 2 * padding[0] - dilation[0] * (k_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (k_w - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"computed output size ({out_h}, {out_w}) is too small")
    if offset.shape[0] != batch or offset.shape[2:] != (out_h, out_w):
        raise ValueError(
            f"offset must have shape ({batch}, {offset.shape[1]}, {out_h}, {out_w}) to match the "
            f"computed output size, got {tuple(offset.shape)}"
        )
    if mask is not None and mask.shape != (batch, offset_groups * taps, out_h, out_w):
        raise ValueError(
            f"mask must have shape ({batch}, offset_groups * kH * kW = {offset_groups * taps}, "
            f"{out_h}, {out_w}), got {tuple(mask.shape)}"
        )
    return groups, offset_groups, out_h, out_w


def _deformable_columns(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
) -> Tensor:
    """Sample the deformed im2col columns.

    Args:
        input: ``(N, C_in, H, W)``.
        offset: ``(N, 2 * offset_groups * kH * kW, H_out, W_out)``, ``(dy, dx)`` pairs.
        mask: ``(N, offset_groups * kH * kW, H_out, W_out)`` or ``None``.

    Returns:
        ``(N, C_in, kH * kW, H_out * W_out)``: the (masked) bilinear samples of every input
        channel at every tap of every output pixel.
    """
    batch, in_channels, height, width = input.shape
    k_h, k_w = kernel_size
    out_h, out_w = offset.shape[2:]
    taps, positions = k_h * k_w, out_h * out_w
    og_channels = in_channels // offset_groups  # channels per offset group
    options = {"dtype": input.dtype, "device": input.device}

    # Undeformed sample locations of tap (i, j) at output pixel (h_out, w_out).
    tap_rows = torch.arange(k_h, **options) * dilation[0]
    tap_cols = torch.arange(k_w, **options) * dilation[1]
    out_rows = torch.arange(out_h, **options) * stride[0] - padding[0]
    out_cols = torch.arange(out_w, **options) * stride[1] - padding[1]
    base_y = tap_rows.view(k_h, 1, 1, 1) + out_rows.view(1, 1, out_h, 1)  # (kH, 1, H_out, 1)
    base_x = tap_cols.view(1, k_w, 1, 1) + out_cols.view(1, 1, 1, out_w)  # (1, kW, 1, W_out)

    # (N, og, kH, kW, 2, H_out, W_out), dim 4 being (dy, dx).
    offset = offset.reshape(batch, offset_groups, k_h, k_w, 2, out_h, out_w)
    y = (base_y + offset[:, :, :, :, 0]).reshape(batch, offset_groups, taps * positions)  # (N, og, K*P)
    x = (base_x + offset[:, :, :, :, 1]).reshape(batch, offset_groups, taps * positions)  # (N, og, K*P)

    # Bilinear corners: top-left (y0, x0) and its three neighbours, with their weights. The
    # fractional parts carry the gradient with respect to the offsets (floor has none).
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    frac_y = y - y0
    frac_x = x - x0
    y0 = y0.long()
    x0 = x0.long()
    corner_y = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=2)  # (N, og, 4, K*P)
    corner_x = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=2)  # (N, og, 4, K*P)
    corner_weight = torch.stack(
        [(1 - frac_y) * (1 - frac_x), (1 - frac_y) * frac_x, frac_y * (1 - frac_x), frac_y * frac_x], dim=2
    )  # (N, og, 4, K*P)

    # Zero padding per corner: a corner outside the image gets weight 0 and a clamped index.
    inside = (corner_y >= 0) & (corner_y < height) & (corner_x >= 0) & (corner_x < width)
    corner_weight = corner_weight.masked_fill(~inside, 0)
    if mask is not None:
        corner_weight = corner_weight * mask.reshape(batch, offset_groups, 1, taps * positions)
    index = corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)  # (N, og, 4, K*P)

    # One gather reads the four corners of every tap for every channel of the offset group.
    flat_input = input.reshape(batch, offset_groups, og_channels, height * width)  # (N, og, C_in/og, H*W)
    index = index.reshape(batch, offset_groups, 1, 4 * taps * positions)  # (N, og, 1, 4*K*P)
    index = index.expand(-1, -1, og_channels, -1)  # (N, og, C_in/og, 4*K*P)
    corners = torch.gather(flat_input, 3, index)  # (N, og, C_in/og, 4*K*P)
    corners = corners.view(batch, offset_groups, og_channels, 4, taps * positions)  # (N, og, C_in/og, 4, K*P)

    columns = (corners * corner_weight.unsqueeze(2)).sum(dim=3)  # (N, og, C_in/og, K*P)
    return columns.reshape(batch, in_channels, taps, positions)  # (N, C_in, K, P)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = (1, 1),
    padding: int | tuple[int, int] = (0, 0),
    dilation: int | tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    r"""Deformable convolution: DCN v1 (`arXiv:1703.06211 <https://arxiv.org/abs/1703.06211>`__),
    or DCN v2 (`arXiv:1811.11168 <https://arxiv.org/abs/1811.11168>`__) when ``mask`` is given.

    Same arguments and results as ``torchvision.ops.deform_conv2d``. Every tap ``(i, j)`` of the
    kernel reads the input at its regular location moved by a learned offset ``(dy, dx)``, with
    bilinear interpolation and zero padding outside the image (see the module docstring for the
    exact coordinate rule), and, with a mask, is multiplied by the mask value of that tap.

    Args:
        input: ``(N, C_in, H, W)``, floating point.
        offset: ``(N, 2 * offset_groups * kH * kW, H_out, W_out)``. Channel
            ``2 * (g * kH * kW + i * kW + j)`` is the row offset ``dy`` and the next channel the
            column offset ``dx`` of tap ``(i, j)`` for offset group ``g``, in pixels. The input
            channels are split into ``offset_groups`` consecutive groups, which is inferred as
            ``offset.shape[1] // (2 * kH * kW)`` and must divide ``C_in``.
        weight: ``(C_out, C_in // groups, kH, kW)``; ``groups = C_in // weight.shape[1]``.
        bias: ``(C_out,)`` or ``None``.
        stride: int or ``(stride_h, stride_w)``.
        padding: int or ``(pad_h, pad_w)``: implicit zeros on each side of the input.
        dilation: int or ``(dilation_h, dilation_w)``: spacing between kernel taps.
        mask: ``(N, offset_groups * kH * kW, H_out, W_out)`` or ``None``. Channel
            ``g * kH * kW + i * kW + j`` multiplies tap ``(i, j)`` of offset group ``g``.

    Returns:
        ``(N, C_out, H_out, W_out)`` with ``H_out = (H + 2 * pad_h - dilation_h * (kH - 1) - 1)
        // stride_h + 1`` and likewise ``W_out``, as for :func:`torch.nn.functional.conv2d`.

    Raises:
        ValueError: on wrong ranks, shapes, group divisibility, dtypes or devices.
    """
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    dilation = _pair(dilation, "dilation")
    groups, offset_groups, out_h, out_w = _check_arguments(input, offset, weight, bias, mask, stride, padding, dilation)
    batch = input.shape[0]
    out_channels, group_channels, k_h, k_w = weight.shape

    columns = _deformable_columns(
        input, offset, mask, (k_h, k_w), stride, padding, dilation, offset_groups
    )  # (N, C_in, kH*kW, H_out*W_out)
    columns = columns.reshape(batch, groups, group_channels * k_h * k_w, out_h * out_w)
    # (groups, C_out/groups, C_in/groups*kH*kW): rows match the (channel, tap) order of the columns.
    weight_matrix = weight.reshape(groups, out_channels // groups, group_channels * k_h * k_w)
    out = torch.matmul(weight_matrix, columns)  # (N, groups, C_out/groups, H_out*W_out)
    out = out.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, out_channels, 1, 1)
    return out
