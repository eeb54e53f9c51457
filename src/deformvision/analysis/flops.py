"""Parameter and multiply-add (MAC) counts of a model's forward pass.

Convention
----------
One multiply-add (MAC) is one multiplication followed by one addition, the unit of the "FLOPs" in
the DAT, Swin and Deformable DETR papers. :func:`count_macs` runs the model once under
:class:`torch.utils.flop_counter.FlopCounterMode` (which reports 2 FLOPs per MAC) and halves its
counts. Every counted op falls into one category:

- ``conv``: convolutions (``aten.convolution`` and its backend variants), ``N * C_out * H_out * W_out
  * C_in / groups * k_h * k_w``; 1x1 convolutions used as projections count here too.
- ``linear``: 2-D matrix products ``aten.mm`` / ``aten.addmm``, i.e. ``nn.Linear`` (on inputs of any rank)
  and plain matrix products, ``M * K * N``.
- ``matmul``: batched matrix products ``aten.bmm`` / ``aten.baddbmm`` (``@`` and ``einsum`` on
  batched operands: attention scores and attention-weighted sums) and fused scaled-dot-product
  attention.
- ``sampling``: bilinear sampling, which PyTorch's counter ignores:

  - ``grid_sample`` (``aten.grid_sampler_2d``, ``aten.cudnn_grid_sampler``): 4 MACs per output
    element ``(N, C, H_out, W_out)`` for bilinear (one per corner: weight times value, accumulated),
    16 for bicubic, 0 for nearest (a gather);
  - ``deformvision.ms_deform_attn`` (multi-scale deformable attention, when that op is registered):
    per sampling tap (query, head, level, point) and per channel of a head, 4 MACs of bilinear
    interpolation plus 1 MAC of attention weighting, i.e. ``5 * N * Lq * M * L * P * D``.
- ``other``: any further op the counter knows (present only when non-zero).

Not counted, as in the papers' and fvcore's convention: biases, normalisation, softmax,
activations, pooling and element-wise arithmetic (residual additions, scaling, position biases
added to attention logits). With this convention the paper models land on their published counts:
e.g. DAT-T at 224x224 has 4.56 GMACs without sampling (the official count) and 0.007 G of sampling.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

CATEGORIES = ("conv", "linear", "matmul", "sampling")
"""Categories every :class:`MacReport` lists (``other`` is added only when non-zero)."""

# Categories of the ops PyTorch's counter knows; the sampling ops are those of `_sampling_flop_formulas`.
_CATEGORY_OF_OP = {
    aten.convolution: "conv",
    aten._convolution: "conv",
    aten.cudnn_convolution: "conv",
    aten.convolution_overrideable: "conv",
    aten._slow_conv2d_forward: "conv",
    aten.mm: "linear",
    aten.addmm: "linear",
    aten.bmm: "matmul",
    aten.baddbmm: "matmul",
    aten._scaled_dot_product_efficient_attention: "matmul",
    aten._scaled_dot_product_flash_attention: "matmul",
    aten._scaled_dot_product_cudnn_attention: "matmul",
    aten._flash_attention_forward: "matmul",
    aten._efficient_attention_forward: "matmul",
    aten._scaled_dot_product_flash_attention_for_cpu: "matmul",
}

# MACs per output element and channel of grid_sample, by its `interpolation_mode` argument.
_GRID_SAMPLE_MACS = {0: 4, 1: 0, 2: 16}  # bilinear, nearest, bicubic
_MSDA_MACS_PER_TAP = 4 + 1  # bilinear interpolation + attention weighting, per channel


@dataclass(frozen=True)
class MacReport:
    """Multiply-adds of one forward pass.

    Attributes:
        total: all counted MACs (the sum of ``categories``).
        categories: MACs by category: every name of :data:`CATEGORIES`, plus ``other`` when non-zero
            (see the module docstring for what each covers).
    """

    total: int
    categories: dict[str, int]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of ``model`` (shared parameters counted once, frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor] | Sequence[int]) -> MacReport:
    """Count the multiply-adds of ``model(*inputs)`` in eval mode, without gradients.

    Args:
        model: the model; its training mode is restored afterwards. Models on the ``meta`` device
            are counted without computing anything (fast; DAT supports it), others run for real.
        inputs: an input shape such as ``(1, 3, 224, 224)`` (a zero tensor of that shape is made on
            the model's device with its dtype), one tensor, or a sequence of positional tensors.

    Returns:
        The total and per-category MACs, counted as described in the module docstring.

    Example:
        >>> report = count_macs(nn.Linear(8, 4), (2, 8))
        >>> report.total, report.categories["linear"]
        (64, 64)
    """
    args = _as_args(model, inputs)
    sampling_formulas = _sampling_flop_formulas()
    was_training = model.training
    # The counter's module tracker hooks every module input that requires grad; a view of a parameter
    # made under no_grad (e.g. DETR's query embedding split into halves) requires grad but has no autograd
    # node, which the hook rejects. Parameters are therefore frozen while counting.
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=sampling_formulas) as counter:
            model(*args)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)

    categories = dict.fromkeys(CATEGORIES, 0)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        category = _CATEGORY_OF_OP.get(op, "sampling" if op in sampling_formulas else "other")
        categories[category] = categories.get(category, 0) + flops // 2
    return MacReport(total=sum(categories.values()), categories=categories)


def _as_args(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor] | Sequence[int]) -> tuple:
    """Positional model arguments from a shape, a tensor or a sequence of tensors."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if all(isinstance(size, int) for size in inputs):
        reference = next(model.parameters(), None)
        if reference is None:
            reference = next(model.buffers(), torch.empty(0))
        return (torch.zeros(tuple(inputs), device=reference.device, dtype=reference.dtype),)
    return tuple(inputs)


def _sampling_flop_formulas() -> dict[torch._ops.OpOverloadPacket, Callable[..., int]]:
    """FLOP formulas (2 per MAC, as PyTorch's) of the ops PyTorch's counter misses, keyed by op.

    The sampling ops, and the CPU kernel of fused attention (``F.scaled_dot_product_attention`` on
    the CPU), which the counter does not know. Built at each call so that
    ``deformvision.ms_deform_attn`` is counted whenever it is registered.
    """
    formulas = {
        aten.grid_sampler_2d: _grid_sampler_2d_flops,
        aten.cudnn_grid_sampler: _cudnn_grid_sampler_flops,
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    }
    if hasattr(torch.ops.deformvision, "ms_deform_attn"):
        formulas[torch.ops.deformvision.ms_deform_attn] = _ms_deform_attn_flops
    return formulas


# The formulas receive the op's arguments with tensors replaced by their shapes (see FlopCounterMode).
def _grid_sampler_2d_flops(
    input_shape: torch.Size,
    grid_shape: torch.Size,
    interpolation_mode: int,
    padding_mode: int,
    align_corners: bool,
    out_shape: torch.Size,
) -> int:
    return 2 * _GRID_SAMPLE_MACS[interpolation_mode] * math.prod(out_shape)


def _cpu_attention_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: object, **kwargs: object
) -> int:
    """``softmax(q k^T) v`` for ``q (B, h, L, E)``, ``k (B, h, S, E)``, ``v (B, h, S, Ev)``: two matmuls."""
    *batch, length, embed = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * keys * (embed + value_dim)


def _cudnn_grid_sampler_flops(input_shape: torch.Size, grid_shape: torch.Size, out_shape: torch.Size) -> int:
    return 2 * _GRID_SAMPLE_MACS[0] * math.prod(out_shape)  # cuDNN's sampler is bilinear


def _ms_deform_attn_flops(
    value_shape: torch.Size,
    spatial_shapes_shape: torch.Size,
    level_start_index_shape: torch.Size,
    sampling_locations_shape: torch.Size,
    attention_weights_shape: torch.Size,
    *args: object,
    out_shape: torch.Size,
    **kwargs: object,
) -> int:
    """``value (N, S, M, D)``, ``attention_weights (N, Lq, M, L, P)``: one tap per attention weight."""
    taps = math.prod(attention_weights_shape)
    return 2 * _MSDA_MACS_PER_TAP * taps * value_shape[-1]
