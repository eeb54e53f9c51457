"""Backend choice, the ``torch.library`` registration and the public entry :func:`ms_deform_attn`.

The op is registered as ``torch.ops.deformvision.ms_deform_attn`` (with a fake implementation and a backward op
``torch.ops.deformvision.ms_deform_attn_backward``), so ``torch.compile(fullgraph=True)`` traces through it
without a graph break. See :mod:`deformvision.ops.msda` for the backends.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from deformvision.ops.msda import triton_launch
from deformvision.ops.msda.contract import check_inputs
from deformvision.ops.msda.cpu import cpu_backward, cpu_forward
from deformvision.ops.msda.reference import ms_deform_attn_reference, reference_backward

BACKENDS = ("auto", "reference", "cpu", "triton")

# Whether the Triton backend can be used at all. Looking for the module does not import it: triton must not be
# imported by the CPU paths, because the Triton interpreter (TRITON_INTERPRET=1) only works when that variable
# is set before triton's first import.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    backend: str = "auto",
    check_values: bool | None = None,
) -> Tensor:
    """Multi-scale deformable attention (the core of Deformable DETR's ``MSDeformAttn``).

    Args:
        value: (N, S, M, D) values of all levels, flattened level after level (row-major within a level);
            N batch, S = sum_l H_l * W_l, M heads, D channels per head.
        spatial_shapes: (L, 2) integer tensor, row l = (H_l, W_l).
        level_start_index: (L,) integer tensor, the exclusive cumulative sum of H_l * W_l (where each
            level starts along S).
        sampling_locations: (N, Lq, M, L, P, 2) sampling points, last dim (x, y), normalised so that
            (0, 0) is the top-left corner and (1, 1) the bottom-right corner of the level's map: pixel
            centre (i, j) of level l sits at ((j + 0.5) / W_l, (i + 0.5) / H_l).
        attention_weights: (N, Lq, M, L, P) weight of every sample (usually a softmax over L * P).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (see :mod:`deformvision.ops.msda`). A
            backend that cannot run the given tensors raises a ValueError.
        check_values: whether to check the *values* of ``spatial_shapes`` and ``level_start_index``
            (S = sum H*W, exclusive cumulative sum). ``None`` (default) checks them when both live on the
            CPU and skips them on accelerators, where reading them would synchronise the device; ``True``
            always checks, ``False`` never does. They are never checked while tracing (torch.compile,
            torch.export, ONNX export). Shapes, dtypes and devices are always checked.

    Returns:
        (N, Lq, M * D) tensor of ``value.dtype``; channels are head-major (head m owns ``m*D:(m+1)*D``).
        N = 0, Lq = 0 or P = 0 give an empty or all-zero output of that shape.

    Raises:
        TypeError: a tensor argument that is not a ``torch.Tensor``, or ``check_values`` neither a bool nor None.
        ValueError: wrong ranks, shapes, dtypes or devices, level layout values (when checked), an unknown
            backend or one that cannot run the given tensors.

    Bilinear sampling at a location (x, y) of level l reads the pixel coordinates
    ``(x * W_l - 0.5, y * H_l - 0.5)``; each of the four neighbouring pixels contributes with its bilinear
    weight if it lies inside the map and zero otherwise (``F.grid_sample(..., mode="bilinear",
    padding_mode="zeros", align_corners=False)`` at ``2 * location - 1``). A point with a non-finite
    coordinate (NaN or +-inf) samples zero and gets zero gradients (``grid_sample`` itself would return
    NaN there); so does a finite location outside the map however far (3e38 included), and a level
    with H = 0 or W = 0 contributes nothing. Every backend agrees on these. Gradients (first order) flow to
    ``value``, ``sampling_locations`` and ``attention_weights``.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, check_values)
    if torch.onnx.is_in_onnx_export():
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    resolved = _resolve_backend(backend, value)
    return torch.ops.deformvision.ms_deform_attn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, resolved
    )


def _resolve_backend(backend: str, value: Tensor) -> str:
    """The concrete backend ("reference", "cpu" or "triton") for ``backend`` and the value's device/dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = value.device.type
    if backend == "auto":
        if device == "cpu":
            return "cpu"
        if device == "cuda" and value.dtype in _TRITON_DTYPES and _TRITON_INSTALLED:
            return "triton"
        return "reference"
    if backend == "cpu" and device != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {value.device}")
    if backend == "triton":
        if not _TRITON_INSTALLED:
            raise ValueError("backend='triton' needs the triton package, which is not installed")
        if value.dtype not in _TRITON_DTYPES:
            raise ValueError(f"backend='triton' supports float32, float16 and bfloat16, got {value.dtype}")
        interpreted = device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
        if device != "cuda" and not interpreted:
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                f"triton is imported, for the Triton interpreter), got tensors on {value.device}"
            )
    return backend


@torch.library.custom_op("deformvision::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str = "auto",
) -> Tensor:
    """``torch.ops.deformvision.ms_deform_attn``: :func:`ms_deform_attn` without validation."""
    backend = _resolve_backend(backend, value)
    if backend == "cpu":
        return cpu_forward(value, spatial_shapes, sampling_locations, attention_weights)
    if backend == "triton":
        return triton_launch.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend="auto"):
    N, _, M, D = value.shape
    return value.new_empty(N, sampling_locations.shape[1], M * D)


@torch.library.custom_op("deformvision::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.ops.deformvision.ms_deform_attn_backward``: (grad_value, grad_locations, grad_weights)."""
    backend = _resolve_backend(backend, value)
    if backend == "cpu":
        return cpu_backward(grad_output, value, spatial_shapes, sampling_locations, attention_weights)
    if backend == "triton":
        return triton_launch.ms_deform_attn_backward(
            grad_output,
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            deterministic=torch.are_deterministic_algorithms_enabled(),
        )
    return reference_backward(grad_output, value, spatial_shapes, sampling_locations, attention_weights)


@_ms_deform_attn_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend="auto"):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.backend = backend


def _backward(ctx, grad_output):
    grad_value, grad_locations, grad_attention = torch.ops.deformvision.ms_deform_attn_backward(
        grad_output, *ctx.saved_tensors, ctx.backend
    )
    return grad_value, None, None, grad_locations, grad_attention, None


torch.library.register_autograd("deformvision::ms_deform_attn", _backward, setup_context=_setup_context)
