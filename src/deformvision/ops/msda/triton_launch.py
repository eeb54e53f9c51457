"""Launching the Triton kernels of multi-scale deformable attention (forward and backward).

Shapes (all tensors contiguous, on one device):

- ``value``               (N, S, M, D)          S = sum_l H_l * W_l, M heads, D head dim (any D)
- ``spatial_shapes``      (L, 2) int64          rows (H_l, W_l)
- ``level_start_index``   (L,) int64            exclusive cumsum of H_l * W_l
- ``sampling_locations``  (N, Lq, M, L, P, 2)   normalised to [0, 1], last dim (x, y)
- ``attention_weights``   (N, Lq, M, L, P)
- output                  (N, Lq, M * D)

For every query and head the output is ``sum_{l, p} w * bilinear(value_l, loc)`` where ``bilinear`` is
``F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)``: pixel coordinates are
``x = loc_x * W - 0.5`` and ``y = loc_y * H - 0.5``; each of the four corners contributes only if it lies
inside the feature map. Non-finite locations sample zeros and get zero gradients.

Kernel layout
-------------
Forward and backward use a 1-D grid with one program per (n, block of BLOCK_Q queries, head m); the head
index varies fastest, so programs running side by side share the queries and the image. A program holds a
(BLOCK_Q, BLOCK_D) tile, BLOCK_D being the next power of two >= D with the tail masked, and loops over
the L levels and P points. Each tap gathers four corner rows of D values with masked loads and
accumulates in fp32; results are cast to the dtype of the matching input when stored. Both kernels set up a
tap with the same device functions: ``_bilinear_tap`` (attention weight, corner pixel, interpolation weights,
which corners lie inside the map) and ``_corner_offsets`` (where the four corner rows lie).

The backward kernel recomputes the four corner rows. ``grad_attention_weights`` and
``grad_sampling_locations`` belong to one tap each, so they are plain stores (the reduction over D happens
inside the program). ``grad_value`` receives contributions from many taps:

- default mode: ``tl.atomic_add`` into an fp32 buffer that is cast to ``value.dtype`` at the end. The
  order of the additions, hence the rounding, may differ from run to run on a GPU.
- deterministic mode: the kernel writes, for every (tap, corner), the destination row of ``grad_value``
  (viewed as (N * S * M, D)) and the scalar coefficient ``w * corner_weight`` (the contribution is this
  coefficient times the tap's ``grad_output`` row). The entries are grouped by destination with a stable
  ``torch.sort`` (its result is unique, hence deterministic on CUDA as well) and ``torch.searchsorted``
  gives each destination its segment. A second kernel runs one program per destination row and sums its
  segment sequentially in sorted (= original entry) order, so the result is bitwise reproducible. Cost:
  two buffers of N * Lq * M * L * P * 4 entries (int64 keys, fp32 coefficients) plus the sort.

Triton is imported lazily, so the library imports without it: the kernels (plain ``@triton.jit`` functions in
:mod:`deformvision.ops.msda.triton_kernels`) are imported on first launch. They run in the Triton interpreter
when ``TRITON_INTERPRET=1`` is set (the only way to run them on CPU tensors), compiled otherwise. The interpreter
needs the variable set before triton is first imported (triton builds its own helpers such as ``tl.zeros`` and
``tl.sum`` for the interpreter at import, and ``triton.jit`` picks the mode when the kernels are defined) and
still set at launch (triton imports more modules lazily); a clear error is raised otherwise.
"""

from __future__ import annotations

import os
import types

import torch

# Query-kernel tiles hold (at least) this many values, 4 per thread: compiled ahead of time for sm_80/sm_90
# (Triton 3.9's ptxas, no GPU), the forward kernel then needs about 100 registers and the backward kernel about
# 170, with at most 8 bytes of spill stores (forward, D <= 64). Never measured on a GPU yet.
_TILE = 512


def _kernels(device: torch.device) -> types.ModuleType:
    """The kernels' module for tensors on ``device``, imported on first use (see the module docstring)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not interpret and device.type == "cpu":
        raise RuntimeError(
            "The Triton deformable-attention kernels run on CPU tensors only in the Triton interpreter: "
            "set TRITON_INTERPRET=1 before triton is first imported."
        )
    if interpret and not _triton_built_for_interpreter():
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton had been imported; set it before.")
    from triton.runtime.interpreter import InterpretedFunction

    from deformvision.ops.msda import triton_kernels

    if isinstance(triton_kernels.forward_kernel, InterpretedFunction) != interpret:
        raise RuntimeError(
            f"The Triton kernels were built with TRITON_INTERPRET={'0' if interpret else '1'} but it is now "
            f"{'1' if interpret else '0'}; set it once, before triton is first imported."
        )
    return triton_kernels


def _triton_built_for_interpreter() -> bool:
    """Whether triton's own jitted helpers were built for the interpreter (TRITON_INTERPRET=1 at import)."""
    import triton.language
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.zeros, InterpretedFunction)


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _launch_config(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_D, num_warps) of the query kernels; BLOCK_D is the next power of two >= head_dim."""
    block_d = 1 << max(head_dim - 1, 0).bit_length()
    block_q = max(1, _TILE // block_d)
    num_warps = min(16, max(4, block_q * block_d // 128))
    return block_q, block_d, num_warps


def _prepare(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous inputs, with the int64 level metadata on the value's device (no-ops when already so)."""
    device = value.device
    return (
        value.contiguous(),
        spatial_shapes.to(device=device, dtype=torch.int64).contiguous(),
        level_start_index.to(device=device, dtype=torch.int64).contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


def ms_deform_attn_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; returns (N, Lq, M * D) in ``value.dtype``."""
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out = torch.empty((N, Lq, M * D), device=value.device, dtype=value.dtype)
    if out.numel() == 0:
        return out
    block_q, block_d, num_warps = _launch_config(D)
    num_q_blocks = _cdiv(Lq, block_q)
    _kernels(value.device).forward_kernel[(N * num_q_blocks * M,)](
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        out,
        S,
        Lq,
        M,
        D,
        L,
        P,
        num_q_blocks,
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out


def ms_deform_attn_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (grad_value, grad_sampling_locations, grad_attention_weights), each in its input's dtype.

    ``deterministic=True`` reduces ``grad_value`` with a stable sort and a sequential per-row sum instead of
    atomic adds, which makes it bitwise reproducible (and slower, with O(N * Lq * M * L * P) extra memory).
    """
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    grad_output = grad_output.contiguous()
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    device = value.device
    if N * Lq * M == 0 or L * P == 0:
        grad_value = torch.zeros_like(value)
        return grad_value, torch.zeros_like(sampling_locations), torch.zeros_like(attention_weights)
    grad_loc = torch.empty_like(sampling_locations)  # every tap is written by the kernel
    grad_attn = torch.empty_like(attention_weights)

    block_q, block_d, num_warps = _launch_config(D)
    num_q_blocks = _cdiv(Lq, block_q)
    num_entries = N * Lq * M * L * P * 4
    if deterministic:
        keys = torch.empty(num_entries, device=device, dtype=torch.int64)
        coefs = torch.empty(num_entries, device=device, dtype=torch.float32)
        grad_value_acc = coefs  # unused by the kernel in this mode
    else:
        grad_value_acc = torch.zeros((N, S, M, D), device=device, dtype=torch.float32)
        keys = coefs = grad_value_acc  # unused by the kernel in this mode

    _kernels(device).backward_kernel[(N * num_q_blocks * M,)](
        grad_output,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_value_acc,
        keys,
        coefs,
        grad_loc,
        grad_attn,
        S,
        Lq,
        M,
        D,
        L,
        P,
        num_q_blocks,
        N * S * M,
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
        DETERMINISTIC=deterministic,
        num_warps=num_warps,
    )
    if not deterministic:
        return grad_value_acc.to(value.dtype), grad_loc, grad_attn

    grad_value = torch.empty_like(value)
    num_rows = N * S * M
    if num_rows == 0:
        return grad_value, grad_loc, grad_attn
    sorted_keys, order = torch.sort(keys, stable=True)
    rows = torch.arange(num_rows + 1, device=device, dtype=torch.int64)
    segments = torch.searchsorted(sorted_keys, rows)  # (N * S * M + 1,)
    _kernels(device).grad_value_gather_kernel[(num_rows,)](
        grad_output,
        order,
        coefs,
        segments,
        grad_value,
        D,
        L * P * 4,
        BLOCK_D=block_d,
        num_warps=min(8, max(1, block_d // 128)),
    )
    return grad_value, grad_loc, grad_attn
