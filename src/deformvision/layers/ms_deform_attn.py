"""Multi-scale deformable attention module of Deformable DETR (Zhu et al., ICLR 2021).

Every query attends to ``num_points`` learned locations around its reference point on each of the
``num_levels`` feature maps, per head; the sampling itself is :func:`deformvision.ops.ms_deform_attn`.
Parameter names, layouts and initialisation are those of the official ``MSDeformAttn``
(fundamentalvision/Deformable-DETR@11169a6, ``models/ops/modules/ms_deform_attn.py``), so its weights
load unchanged.
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformvision._checks import check_int, check_tensor
from deformvision.layers.linear import Linear
from deformvision.ops.msda import ms_deform_attn


def directional_offset_bias(num_heads: int, num_levels: int, num_points: int) -> Tensor:
    """The official initial ``sampling_offsets.bias``: ``(num_heads * num_levels * num_points * 2,)`` float32.

    Head ``m`` looks in the direction ``theta_m = 2 pi m / num_heads``, as ``(cos, sin)`` divided by
    ``max(|cos|, |sin|)`` (a point on the square of radius 1, computed in float32 as the official code,
    so e.g. the "0" of head 2 of 8 is ``-4.37e-8``); point ``k`` sits ``k + 1`` times as far out, the same
    on every level. Layout ``[head][level][point][x, y]``, in pixels of the level for 2-d references.
    """
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([thetas.cos(), thetas.sin()], -1)  # num_heads, 2
    directions = directions / directions.abs().max(-1, keepdim=True).values
    scale = torch.arange(1, num_points + 1, dtype=torch.float32)  # point k -> k + 1
    grid = directions[:, None, None, :] * scale[None, None, :, None]  # num_heads, 1, num_points, 2
    return grid.expand(num_heads, num_levels, num_points, 2).flatten()


class MSDeformSampling(nn.Module):
    """The sampling step of :class:`MSDeformAttn` as a parameter-free module: :func:`deformvision.ops.ms_deform_attn`.

    It exists so that a forward hook can read the sampling locations and attention weights exactly as the
    layer computed them (:mod:`deformvision.layers.inspection`); it adds nothing to the state dict.
    """

    def forward(
        self, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, locations: Tensor, weights: Tensor
    ) -> Tensor:
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (the official ``MSDeformAttn``).

    For a query ``q`` with reference point ``r`` (per level), head ``m``, level ``l`` and point ``k``:
    the offset ``sampling_offsets(q)[m, l, k]`` moves ``r`` to a sampling location, the value map of level
    ``l`` (``value_proj`` of the input, head ``m``'s channels ``m*D:(m+1)*D``) is sampled bilinearly there,
    and the samples are summed with weights ``softmax_{l,k}(attention_weights(q)[m])`` (one softmax over all
    levels and points of a head); ``output_proj`` mixes the heads.

    Sampling locations are normalised to the *padded* level map: ``(0, 0)`` is its top-left corner, ``(1, 1)``
    its bottom-right corner, pixel centre ``(i, j)`` at ``((j + 0.5) / W_l, (i + 0.5) / H_l)``:

    * 2-d reference points ``(x, y)``: ``loc = ref + offset / (W_l, H_l)`` (offsets in pixels of level l);
    * 4-d reference boxes ``(cx, cy, w, h)``: ``loc = (cx, cy) + offset / num_points * (w, h) * 0.5``.

    Initialisation (official): ``sampling_offsets.weight = 0`` and its bias the directional grid of
    :func:`directional_offset_bias`; ``attention_weights`` weight and bias 0 (uniform attention);
    ``value_proj`` / ``output_proj`` Xavier-uniform weights, zero biases.

    Args:
        d_model: channels of queries, inputs and output.
        num_levels: feature levels ``L``.
        num_heads: attention heads ``M`` (``d_model`` divisible by it; a head size that is not a power of
            2 only triggers a warning, as in the official code, where it was slower in CUDA).
        num_points: sampling points ``P`` per head and level.

    Shape:
        - query: ``(N, Lq, d_model)``
        - reference_points: ``(N, Lq, L, 2)`` ``(x, y)`` or ``(N, Lq, L, 4)`` ``(cx, cy, w, h)``, per level
        - input_flatten: ``(N, S, d_model)`` the levels flattened row-major and concatenated,
          ``S = sum_l H_l * W_l``
        - spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``
        - level_start_index: ``(L,)`` int64 start of each level in ``S``
        - input_padding_mask: ``(N, S)`` bool, True = padding (its values are zeroed), or None
        - Output: ``(N, Lq, d_model)``; batch 0 gives an empty output.

    Raises:
        ValueError: sizes that are not positive ints or ``num_heads`` not dividing ``d_model``; in ``forward``,
            tensors of the wrong rank or size (``d_model``, batch, ``num_levels`` rows of ``spatial_shapes``) or a
            padding mask that is not a bool ``(N, S)`` tensor.
        TypeError: in ``forward``, an argument that is not a tensor (the mask may be None).
    """

    def __init__(self, d_model: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4) -> None:
        super().__init__()
        sizes = {"d_model": d_model, "num_levels": num_levels, "num_heads": num_heads, "num_points": num_points}
        for name, size in sizes.items():
            check_int(name, size, 1)
        if d_model % num_heads:
            raise ValueError(f"d_model must be divisible by num_heads, got {d_model} and {num_heads}")
        head_dim = d_model // num_heads
        if head_dim & (head_dim - 1):
            warnings.warn(f"MSDeformAttn head size {head_dim} is not a power of 2", stacklevel=2)
        self.d_model = d_model
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self.sampling = MSDeformSampling()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation (see the class docstring)."""
        with torch.no_grad():
            nn.init.zeros_(self.sampling_offsets.weight)
            self.sampling_offsets.bias.copy_(directional_offset_bias(self.num_heads, self.num_levels, self.num_points))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        sizes = f"num_levels={self.num_levels}, num_heads={self.num_heads}, num_points={self.num_points}"
        return f"d_model={self.d_model}, {sizes}"

    def _check_forward_arguments(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        input_padding_mask: Tensor | None,
    ) -> None:
        """The module's side of the contract (``ms_deform_attn`` checks the rest): types, ranks, d_model, L."""
        check_tensor("query", query)
        check_tensor("reference_points", reference_points)
        check_tensor("input_flatten", input_flatten)
        check_tensor("spatial_shapes", spatial_shapes)
        check_tensor("input_padding_mask", input_padding_mask, optional=True)
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must have shape (N, Lq, d_model={self.d_model}), got {tuple(query.shape)}")
        N = query.shape[0]
        if input_flatten.dim() != 3 or input_flatten.shape[0] != N or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"input_flatten must have shape (N={N}, S, d_model={self.d_model}), got {tuple(input_flatten.shape)}"
            )
        if tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(
                f"spatial_shapes must have shape (num_levels={self.num_levels}, 2), got {tuple(spatial_shapes.shape)}"
            )
        if input_padding_mask is not None and (
            input_padding_mask.dtype != torch.bool or input_padding_mask.shape != input_flatten.shape[:2]
        ):
            raise ValueError(
                f"input_padding_mask must be a bool tensor of shape (N, S) = {tuple(input_flatten.shape[:2])}, got "
                f"{input_padding_mask.dtype} {tuple(input_padding_mask.shape)}"
            )

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        self._check_forward_arguments(query, reference_points, input_flatten, spatial_shapes, input_padding_mask)
        N, Lq, _ = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if reference_points.shape[-1] not in (2, 4) or tuple(reference_points.shape[:3]) != (N, Lq, L):
            raise ValueError(
                f"reference_points must be (N, Lq, L, 2) points (x, y) or (N, Lq, L, 4) boxes (cx, cy, w, h) = "
                f"({N}, {Lq}, {L}, 2|4), got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, self.d_model // M)  # N, S, M, D
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P)
        weights = F.softmax(weights, -1).view(N, Lq, M, L, P)
        ref = reference_points[:, :, None, :, None, :]  # N, Lq, 1, L, 1, 2|4
        if reference_points.shape[-1] == 2:
            size_xy = spatial_shapes.flip(-1).to(offsets.dtype)  # L, 2: (W, H)
            # ref + offsets / size_xy with contiguous inner axes, so that the CPU's vectorised loops run: the
            # quotient on the flat (M*L*P*2) axis, then the reference repeated over the points (L*P*2, a small
            # copy) added in place, broadcast over the heads. The same quotients and sums as broadcasting
            # (L, 1, 2) and (Lq, 1, L, 1, 2) over (Lq, M, L, P, 2), with an inner axis of 2, but about 10x
            # faster at the encoder's size, which is also spared the reference expanded over the heads (an
            # (N, Lq, M, L, P, 2) copy).
            divisor = size_xy[None, :, None, :].expand(M, L, P, 2).reshape(-1)  # M*L*P*2
            ref_points = ref.expand(N, Lq, 1, L, P, 2).reshape(N, Lq, 1, L * P * 2)
            quotient = offsets.reshape(N, Lq, M * L * P * 2) / divisor  # N, Lq, M*L*P*2
            quotient = quotient.to(torch.promote_types(quotient.dtype, ref_points.dtype))  # the sum's dtype
            locations = quotient.view(N, Lq, M, L * P * 2).add_(ref_points).view(N, Lq, M, L, P, 2)
        else:
            locations = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
        # Reference points may be float32 in a float64 model (the official valid ratios are float32): the
        # sampling runs in the wider dtype, the result comes back in the model's.
        dtype = torch.promote_types(value.dtype, locations.dtype)
        output = self.sampling(
            value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype), weights.to(dtype)
        )  # N, Lq, M * D
        return self.output_proj(output.to(value.dtype))
