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
  derivative from the right, as in torchvision's backward kernel (also at ``y = -1`` or ``x = -1``,
  where the value is 0 but moving right enters the image).

Non-finite values
-----------------
As in torchvision, a NaN/inf input pixel reaches the outputs whose bilinear samples read it, including
with a zero bilinear weight (an integer location also reads the next row and column), and every output
channel of its convolution group there; it never reaches a sample outside the image or on the lines
``y = -1`` / ``x = -1``, which read nothing. A ``+-inf`` offset moves its sample outside the image (zero).
A NaN offset makes the output pixels that use its sample NaN (torchvision's kernel reads out of bounds
there).

Precision
---------
float16 and bfloat16 inputs are computed in float32 (sample locations, bilinear weights, columns and
the matrix products) and the results cast back: in bfloat16 a location beyond x = 256 (float16:
2,048) cannot even be represented to the pixel.

Memory and speed
----------------
The op is an im2col followed by a matrix product with the weight, done in chunks of output pixels:
for each chunk, the four bilinear corners of every sample are gathered from a zero-bordered
channels-last copy of the input, blended into the chunk's columns and multiplied with the weight,
all while the chunk is in cache. Neither pass materialises the full ``N * C_in * kH * kW * H_out *
W_out`` columns: the forward pass holds the padded input copy, the per-sample indices and weights
(``4 * N * og * kH * kW * H_out * W_out`` each) and the output; the backward pass saves only the
inputs and recomputes each chunk's columns, like torchvision's kernel.
"""

import torch
from torch import Tensor

from deformvision._checks import check_tensor
from deformvision.ops._deform_conv_impl import _backward, _forward


def _check_int_or_pair(value: object, name: str, minimum: int) -> None:
    """A ValueError unless ``value`` is an int or a tuple/list of ints, bools excluded (not scriptable)."""

    def is_int(item: object) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if not (is_int(value) or (isinstance(value, (tuple, list)) and all(is_int(item) for item in value))):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")


def _pair(value: int | tuple[int, int] | list[int], name: str, minimum: int) -> tuple[int, int]:
    """``(value, value)`` for an int, or the two ints of a pair; a ValueError unless both are >= ``minimum``.

    Scriptable (a script's argument types already exclude floats, bools and other types).
    """
    if not torch.jit.is_scripting():
        _check_int_or_pair(value, name, minimum)
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, tuple):
        if not torch.jit.is_scripting():  # a script's tuple type already fixes the length
            if len(value) != 2:
                raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value}")
        pair = (value[0], value[1])
    else:
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value}")
        pair = (value[0], value[1])
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value}")
    return pair


def _shape(tensor: Tensor) -> str:
    """``tensor.shape`` as ``(2, 3)`` (scriptable)."""
    return "(" + ", ".join([str(size) for size in tensor.shape]) + ")"


def _check_tensor(name: str, tensor: Tensor, input: Tensor) -> None:
    """Check that ``tensor`` is 4-D and has the dtype and device of ``input``."""
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor, got shape {_shape(tensor)}")
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
    """Validate the arguments of :func:`deform_conv2d` (scriptable).

    Returns:
        ``(groups, offset_groups, out_h, out_w)``.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be a 4-D tensor (N, C_in, H, W), got shape {_shape(input)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {input.dtype}")
    _check_tensor("offset", offset, input)
    _check_tensor("weight", weight, input)
    if mask is not None:
        _check_tensor("mask", mask, input)
    if bias is not None:
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias ({bias.dtype}, {bias.device}) does not match input ({input.dtype}, {input.device})")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {_shape(bias)}")
    batch, in_channels, height, width = input.shape
    if in_channels == 0:
        raise ValueError(f"input must have at least one channel (N, C_in >= 1, H, W), got shape {_shape(input)}")
    out_channels, group_channels, k_h, k_w = weight.shape
    if group_channels == 0 or k_h == 0 or k_w == 0:
        raise ValueError(f"weight must have non-zero in-channel and kernel sizes, got shape {_shape(weight)}")
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
    if offset.shape[0] != batch or offset.shape[2] != out_h or offset.shape[3] != out_w:
        raise ValueError(
            f"offset must have shape ({batch}, {offset.shape[1]}, {out_h}, {out_w}) to match the "
            f"computed output size, got {_shape(offset)}"
        )
    if mask is not None and list(mask.shape) != [batch, offset_groups * taps, out_h, out_w]:
        raise ValueError(
            f"mask must have shape ({batch}, offset_groups * kH * kW = {offset_groups * taps}, "
            f"{out_h}, {out_w}), got {_shape(mask)}"
        )
    return groups, offset_groups, out_h, out_w


# --------------------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("deformvision::deform_conv2d", mutates_args=())
def _deform_conv2d_op(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
) -> Tensor:
    """``torch.ops.deformvision.deform_conv2d``: :func:`deform_conv2d` without validation."""
    return _forward(input, offset, weight, bias, mask, (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w))


@_deform_conv2d_op.register_fake
def _(input, offset, weight, bias, mask, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


@torch.library.custom_op("deformvision::deform_conv2d_backward", mutates_args=())
def _deform_conv2d_backward_op(
    grad_out: Tensor,
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    need_input: bool,
    need_offset: bool,
    need_weight: bool,
    need_mask: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_input, grad_offset, grad_weight, grad_mask)``; an empty tensor for each one not needed."""
    return _backward(
        grad_out,
        input,
        offset,
        weight,
        mask,
        (stride_h, stride_w),
        (pad_h, pad_w),
        (dilation_h, dilation_w),
        need_input,
        need_offset,
        need_weight,
        need_mask,
    )


@_deform_conv2d_backward_op.register_fake
def _(grad_out, input, offset, weight, mask, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, *needs):
    need_input, need_offset, need_weight, need_mask = needs
    shapes = (input, offset, weight, mask if mask is not None else offset)
    return tuple(t.new_empty(t.shape if need else (0,)) for t, need in zip(shapes, needs, strict=True))


def _setup_context(ctx, inputs, output) -> None:
    input, offset, weight, bias, mask, *arguments = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.arguments = arguments
    ctx.has_bias = bias is not None


def _backward_autograd(ctx, grad_out):
    input, offset, weight, mask = ctx.saved_tensors
    need_input, need_offset, need_weight, need_bias, need_mask = ctx.needs_input_grad[:5]
    grad_input, grad_offset, grad_weight, grad_mask = torch.ops.deformvision.deform_conv2d_backward(
        grad_out, input, offset, weight, mask, *ctx.arguments, need_input, need_offset, need_weight, need_mask
    )
    grad_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias and need_bias else None
    return (
        grad_input if need_input else None,
        grad_offset if need_offset else None,
        grad_weight if need_weight else None,
        grad_bias,
        grad_mask if need_mask else None,
    ) + (None,) * 6


torch.library.register_autograd("deformvision::deform_conv2d", _backward_autograd, setup_context=_setup_context)


def _fx_symbolic_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` is running (``is_fx_tracing`` on older PyTorch, which warns)."""
    trace = torch.fx._symbolic_trace
    return getattr(trace, "is_fx_symbolic_tracing", trace.is_fx_tracing)()


@torch.fx.wrap
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

    Batch 0 gives an empty ``(0, C_out, H_out, W_out)`` output, as ``torch.nn.functional.conv2d`` does.

    Raises:
        TypeError: ``input``, ``offset`` or ``weight`` is not a tensor, or ``bias`` / ``mask`` neither a
            tensor nor ``None``.
        ValueError: on wrong ranks, shapes, group divisibility, dtypes or devices; ``stride`` or ``dilation``
            not positive ints (or pairs of them), ``padding`` not non-negative ones.
    """
    stride_h, stride_w = _pair(stride, "stride", 1)
    pad_h, pad_w = _pair(padding, "padding", 0)
    dilation_h, dilation_w = _pair(dilation, "dilation", 1)
    if not torch.jit.is_scripting():
        if _fx_symbolic_tracing():
            # Traced from a module where this function is not wrapped (FX patches the wrapped name only
            # in the modules that register it): the shapes are proxies, so skip the checks and record the op.
            return torch.ops.deformvision.deform_conv2d(
                input, offset, weight, bias, mask, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
            )
        for name, tensor in (("input", input), ("offset", offset), ("weight", weight)):
            check_tensor(name, tensor)
        check_tensor("bias", bias, optional=True)
        check_tensor("mask", mask, optional=True)
    _check_arguments(input, offset, weight, bias, mask, (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w))
    return torch.ops.deformvision.deform_conv2d(
        input, offset, weight, bias, mask, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    )
