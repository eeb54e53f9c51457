"""Deformable convolution layers (DCN v1 / v2) built on :func:`deformvision.ops.deform_conv.deform_conv2d`.

Two layers, not to be confused:

- :class:`DeformConv2d`: the drop-in peer of ``torchvision.ops.DeformConv2d``. It holds only the
  convolution ``weight`` and ``bias``; the caller supplies the offsets (and the optional DCN v2 mask):
  ``layer(input, offset, mask=None)``.
- :class:`DeformConv2dPack`: a :class:`DeformConv2d` that packs its own offset convolution, a self-contained
  DCN v2 block (mmcv's name; ``modulated=True`` is mmcv's ``ModulatedDeformConv2dPack``): a zero-initialised
  ``conv_offset`` predicts the offsets and mask from the input, so it replaces an ``nn.Conv2d``:
  ``layer(input)``.
"""

import math

import torch
from torch import Tensor, nn

from deformvision._checks import check_bool, check_int, check_tensor
from deformvision.ops.deform_conv import _fx_symbolic_tracing, _pair, _shape, deform_conv2d

# A leaf for torch.fx here too: FX patches wrapped functions in the globals of the module that calls them.
torch.fx.wrap("deform_conv2d")


class _DeformConvBase(nn.Module):
    """Weight, bias and hyper-parameters shared by the deformable convolution layers.

    Subclasses call :meth:`reset_parameters` at the end of their ``__init__``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        dilation: int | tuple[int, int],
        groups: int,
        bias: bool,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("groups", groups, 1)
        check_bool("bias", bias)
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    def _check_input(self, input: Tensor) -> None:
        """A TypeError unless ``input`` is a tensor, a ValueError unless it is ``(N, in_channels, H, W)``.

        (``deform_conv2d`` infers the groups from the channel count: a wrong count could pass silently.)
        """
        if not torch.jit.is_scripting():
            if _fx_symbolic_tracing():  # the input is a proxy: nothing to check
                return
            check_tensor("input", input)
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"input must have shape (N, {self.in_channels}, H, W), got {_shape(input)}")

    def reset_parameters(self) -> None:
        """Initialise weight and bias as :class:`torch.nn.Conv2d` does (Kaiming-uniform)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class DeformConv2d(_DeformConvBase):
    r"""Deformable 2-D convolution with externally supplied offsets (and optional DCN v2 mask).

    The drop-in peer of ``torchvision.ops.DeformConv2d``: same constructor arguments in the same
    order, same ``forward(input, offset, mask=None)``, same parameters and state-dict keys
    (``weight``, ``bias``), same results. For a layer that predicts its own offsets, see
    :class:`DeformConv2dPack`. Scriptable with ``torch.jit.script``; ``deform_conv2d`` is a leaf for
    ``torch.fx`` tracing.

    Holds the convolution weight and bias; ``forward`` applies
    :func:`deformvision.ops.deform_conv.deform_conv2d`, whose offsets are ``(dy, dx)`` pairs in
    input pixels. Parameters are initialised like :class:`torch.nn.Conv2d`.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or ``(kH, kW)``.
        stride: int or pair. Default: 1.
        padding: int or pair of implicit zeros on each side. Default: 0.
        dilation: int or pair, spacing between kernel taps. Default: 1.
        groups: blocked connections from input to output channels, as in ``nn.Conv2d``. Default: 1.
        bias: if ``True``, adds a learnable bias. Default: ``True``.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Offset: ``(N, 2 * offset_groups * kH * kW, H_out, W_out)``, where ``offset_groups``
          is inferred from the channel count and must divide ``C_in``
        - Mask: ``(N, offset_groups * kH * kW, H_out, W_out)`` or ``None``
        - Output: ``(N, C_out, H_out, W_out)`` with
          ``H_out = (H + 2 * padding[0] - dilation[0] * (kH - 1) - 1) // stride[0] + 1``
          and likewise ``W_out``

    Attributes:
        weight: ``(C_out, C_in // groups, kH, kW)``.
        bias: ``(C_out,)`` or ``None``.

    Raises:
        ValueError: channels or groups not positive ints, groups not dividing both channel counts,
            kernel_size / stride / dilation not positive ints (or pairs), padding not non-negative; in
            ``forward``, an input that is not ``(N, in_channels, H, W)`` (and the op's own checks).
        TypeError: ``bias`` not a bool; in ``forward``, a non-tensor input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.reset_parameters()

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_input(input)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


class DeformConv2dPack(_DeformConvBase):
    r"""Self-contained DCN v2 block: a drop-in replacement for :class:`torch.nn.Conv2d` that predicts
    its own offsets (and mask) from its input.

    Unlike :class:`DeformConv2d` (torchvision's layer, which takes the offsets as an argument),
    ``forward`` takes only the input. Not a torchvision layer; it follows mmcv's
    ``ModulatedDeformConv2dPack`` (``modulated=True``) and ``DeformConv2dPack`` (``modulated=False``).

    A regular convolution ``conv_offset`` (same kernel size, stride, padding and dilation, no
    grouping) reads the input and predicts, for every output pixel, the ``(dy, dx)`` offsets of
    every kernel tap and, when ``modulated``, a mask logit per tap; the mask is its sigmoid. The
    deformable convolution then samples the input at the shifted taps (DCN v1, or DCN v2 when
    ``modulated``).

    ``conv_offset`` is initialised to zero, as in DCN v2 and mmcv's ``ModulatedDeformConv2dPack``,
    so training starts from the regular sampling grid. At that point:

    - ``modulated=False``: the output equals ``nn.Conv2d`` with the same weight and bias.
    - ``modulated=True``: every mask value is ``sigmoid(0) = 0.5``, so the output equals
      ``0.5 * conv(input, weight) + bias``. This is the DCN v2 convention (also mmcv's);
      to start exactly from pretrained ``nn.Conv2d`` weights, double the loaded weight (not the
      bias) or use ``modulated=False``.

    The output of ``conv_offset`` has ``2 * offset_groups * kH * kW`` offset channels in the
    layout of :func:`deformvision.ops.deform_conv.deform_conv2d`, followed (if ``modulated``) by
    ``offset_groups * kH * kW`` mask logits. The parameter names (``weight``, ``bias``,
    ``conv_offset.weight``, ``conv_offset.bias``) follow mmcv's DCN packs, and ``weight`` /
    ``bias`` match those of ``nn.Conv2d``, so a Conv2d state dict loads with ``strict=False``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or ``(kH, kW)``.
        stride: int or pair. Default: 1.
        padding: int or pair of implicit zeros on each side. Default: 0.
        dilation: int or pair, spacing between kernel taps. Default: 1.
        groups: blocked connections from input to output channels, as in ``nn.Conv2d``. Default: 1.
        offset_groups: number of consecutive input-channel groups with their own offsets (and
            masks); must divide ``in_channels``. Default: 1.
        bias: if ``True``, the deformable convolution adds a learnable bias. Default: ``True``.
        modulated: if ``True``, predict a sigmoid mask per tap (DCN v2). Default: ``True``.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)``, as for ``nn.Conv2d`` with the same arguments

    Attributes:
        weight: ``(C_out, C_in // groups, kH, kW)``.
        bias: ``(C_out,)`` or ``None``.
        conv_offset: ``nn.Conv2d(C_in, (3 if modulated else 2) * offset_groups * kH * kW, ...)``.

    Raises:
        ValueError / TypeError: as :class:`DeformConv2d`; also ``offset_groups`` not a positive int dividing
            ``in_channels`` (ValueError) and ``modulated`` not a bool (TypeError).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        modulated: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        check_int("offset_groups", offset_groups, 1)
        check_bool("modulated", modulated)
        if in_channels % offset_groups != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})")
        self.offset_groups = offset_groups
        self.modulated = modulated
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * offset_groups * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and bias (as ``nn.Conv2d``); zero offset/mask predictor."""
        super().reset_parameters()
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        prediction = self.conv_offset(input)  # (N, (3 or 2) * og * kH * kW, H_out, W_out)
        offset_channels = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = prediction[:, :offset_channels]  # (N, 2 * og * kH * kW, H_out, W_out)
        mask = prediction[:, offset_channels:].sigmoid() if self.modulated else None  # (N, og * kH * kW, ...)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.offset_groups != 1:
            s += f", offset_groups={self.offset_groups}"
        return s + f", modulated={self.modulated}"
