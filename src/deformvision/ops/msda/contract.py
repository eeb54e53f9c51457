"""The tensor contract of :func:`deformvision.ops.ms_deform_attn`: ranks, shapes, dtypes, devices, level layout.

Shared by every backend: the public entry checks its arguments here once, before dispatching.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deformvision._checks import check_bool, check_tensor


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    check_values: bool | None,
) -> None:
    """Raise an error naming the first argument that breaks the tensor contract: a TypeError for a non-tensor
    or a ``check_values`` that is neither a bool nor None, a ValueError for anything else."""
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in named.items():
        check_tensor(name, t)
    ranks = {"value": 4, "spatial_shapes": 2, "level_start_index": 1, "sampling_locations": 6, "attention_weights": 5}
    layouts = {
        "value": "(N, S, M, D)",
        "spatial_shapes": "(L, 2)",
        "level_start_index": "(L,)",
        "sampling_locations": "(N, Lq, M, L, P, 2)",
        "attention_weights": "(N, Lq, M, L, P)",
    }
    for name, rank in ranks.items():
        if named[name].dim() != rank:
            raise ValueError(f"{name} must have {rank} dims {layouts[name]}, got shape {tuple(named[name].shape)}")
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")

    N, S, M, D = value.shape
    L = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2 or not _is_integer(spatial_shapes):
        raise ValueError(
            "spatial_shapes must be an integer tensor of shape (L, 2) with rows (H, W), got "
            f"shape {tuple(spatial_shapes.shape)} and dtype {spatial_shapes.dtype}"
        )
    if tuple(level_start_index.shape) != (L,) or not _is_integer(level_start_index):
        raise ValueError(
            f"level_start_index must be an integer tensor of shape (L,) = ({L},), got shape "
            f"{tuple(level_start_index.shape)} and dtype {level_start_index.dtype}"
        )
    if sampling_locations.shape[-1] != 2:
        raise ValueError(
            "the last dim of sampling_locations (N, Lq, M, L, P, 2) must be 2 (x, y), got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    n, lq, m, levels, p, _ = sampling_locations.shape
    if (n, m) != (N, M):
        raise ValueError(
            f"sampling_locations (N, Lq, M, L, P, 2) = {tuple(sampling_locations.shape)} does not match "
            f"value (N, S, M, D) = {tuple(value.shape)} in N or M"
        )
    if levels != L:
        raise ValueError(f"sampling_locations has L = {levels} levels (dim 3) but spatial_shapes has {L} rows")
    if tuple(attention_weights.shape) != (n, lq, m, levels, p):
        raise ValueError(
            f"attention_weights must have shape (N, Lq, M, L, P) = {(n, lq, m, levels, p)} to match "
            f"sampling_locations, got {tuple(attention_weights.shape)}"
        )
    float_inputs = {"value": value, "sampling_locations": sampling_locations, "attention_weights": attention_weights}
    dtypes = {name: t.dtype for name, t in float_inputs.items()}
    if not value.is_floating_point() or len(set(dtypes.values())) > 1:
        raise ValueError(f"value, sampling_locations and attention_weights must share one floating dtype, got {dtypes}")

    if check_values is not None:
        check_bool("check_values", check_values)
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if check_values is None:
        check_values = spatial_shapes.device.type == "cpu"
    if check_values and not tracing:
        _check_level_values(spatial_shapes, level_start_index, S)


def _check_level_values(spatial_shapes: Tensor, level_start_index: Tensor, S: int) -> None:
    """S == sum H*W and level_start_index == exclusive cumsum of H*W (reads the values: syncs a GPU)."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    if any(h < 0 or w < 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be non-negative (H, W) rows, got {shapes}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != S:
        raise ValueError(f"value has S = {S} positions but spatial_shapes {shapes} describe sum(H * W) = {sum(sizes)}")
    expected = [sum(sizes[:level]) for level in range(len(sizes))]
    if starts != expected:
        raise ValueError(f"level_start_index must be the exclusive cumulative sum of H * W = {expected}, got {starts}")
