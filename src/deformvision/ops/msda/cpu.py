"""The fast CPU backend of multi-scale deformable attention: one ``F.embedding_bag`` over a zero-bordered table.

All levels are sampled with one ``F.embedding_bag`` over a value table in which every level is bordered by one
row/column of zeros: each point's four bilinear corners become four table rows whose weights (bilinear weight
times attention weight) are precomputed, and taps outside the map read the zero border. The backward recomputes
the taps, gets the tap-weight gradients from one sampled dense-dense product (``torch.sparse.sampled_addmm``),
the value gradient by sorting the taps or the points by table row and gathering with ``F.embedding_bag`` again
(no serial scatter), and applies the chain rule to the locations and attention weights by hand.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# maps), the value gradient is gathered row by row (see _grad_value; the two ways cross at 2-4 taps per
# row on a 2-core CPU).
_SPARSE_TAPS_PER_ROW = 2.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _pad_levels(value: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """(N, S, M, D) -> (N, S', M, D): every level's (H, W) map bordered by zeros to (H + 2, W + 2)."""
    N, _, M, D = value.shape
    padded_sizes = [(h + 2) * (w + 2) for h, w in shapes]
    table = value.new_empty(N, sum(padded_sizes), M, D)
    levels = value.split([h * w for h, w in shapes], dim=1)
    for (h, w), level, padded in zip(shapes, levels, table.split(padded_sizes, dim=1), strict=True):
        padded = padded.view(N, h + 2, w + 2, M, D)
        padded[:, 1 : h + 1, 1 : w + 1] = level.reshape(N, h, w, M, D)
        for border in (padded[:, 0], padded[:, h + 1], padded[:, :, 0], padded[:, :, w + 1]):
            border.zero_()
    return table


class _Taps(NamedTuple):
    """The four bilinear corners of every sampling point, as rows of the padded value table.

    B = N * Lq * M (query, head) rows and K = L * P points each; axis 0 is x, axis 1 is y; corner 0 is the
    lower pixel along an axis (floor) and corner 1 the next one.
    """

    pixel: Tensor  # (B, 2, K) unclamped pixel coordinates (x; y), loc * size - 0.5
    extent: Tensor  # (2, K) width (row 0) and height (row 1) of each point's level
    axis_weights: Tensor  # (B, 2, 2, K) [axis, corner] linear weights (1 - frac, frac)
    weighted_y: Tensor  # (B, 2, K) y weights times the attention weight
    tap_weights: Tensor  # (B, 2, 2, K) [cy, cx] weight of each corner: attention * wy * wx
    rows: Tensor  # (B, 2, 2, K) [cy, cx] row of the corner in the (N * S' * M, D) table


def _bilinear_taps(
    shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> _Taps:
    N, Lq, M, L, P, _ = sampling_locations.shape
    B, K = N * Lq * M, L * P
    dtype = sampling_locations.dtype

    sizes_hw = torch.tensor(shapes, dtype=dtype).view(L, 2)  # (L, 2) rows (H, W)
    extent = sizes_hw.flip(1).t().repeat_interleave(P, dim=1)  # (2, K): W of each point (row 0), H (row 1)
    # Every large temporary costs page faults (the CPU allocator returns big blocks to the system): the
    # arithmetic below works in place wherever it can (about 1.2x faster at Deformable DETR encoder size).
    # a copy, always: with K = 1 the transpose is already contiguous, and the in-place arithmetic below would
    # write into the caller's sampling_locations
    pixel = sampling_locations.reshape(B, K, 2).transpose(1, 2)  # (B, 2, K)
    pixel = pixel.clone(memory_format=torch.contiguous_format)
    pixel.mul_(extent).sub_(0.5)  # grid_sample's align_corners=False pixel coordinate
    # Clamp to [-1, size]; fmax sends NaN to -1 too. Between -1 and size the corners stay within the zero
    # border, so every point outside the map (or non-finite) samples zeros.
    axis_weights = torch.empty(B, 2, 2, K, dtype=dtype)  # [axis, corner]: (1 - frac, frac)
    frac = axis_weights[:, :, 1]  # (B, 2, K)
    torch.fmax(pixel, pixel.new_tensor(-1.0), out=frac)
    torch.minimum(frac, extent, out=frac)  # the clamped coordinate
    lower = frac.floor()  # (B, 2, K)
    torch.minimum(lower, extent - 1, out=lower)  # in [-1, size - 1]
    frac.sub_(lower)  # (B, 2, K) in [0, 1]
    torch.sub(1.0, frac, out=axis_weights[:, :, 0])
    weighted_y = axis_weights[:, 1] * attention_weights.reshape(B, 1, K)  # (B, 2, K)
    tap_weights = weighted_y[:, :, None, :] * axis_weights[:, 0, None, :, :]  # (B, 2, 2, K)

    # Table row of corner (cy, cx): ((n * S' + start_l + (y + 1 + cy) * (W_l + 2) + x + 1 + cx) * M + m).
    padded = [(h + 2, w + 2) for h, w in shapes]
    padded_total = sum(h * w for h, w in padded)
    index_dtype = torch.int32 if N * padded_total * M < 2**31 else torch.int64
    padded_starts = [sum(h * w for h, w in padded[:level]) for level in range(L)]
    row_length = torch.tensor([w for _, w in padded], dtype=index_dtype).repeat_interleave(P)  # (K,)
    origin = torch.tensor(padded_starts, dtype=index_dtype).repeat_interleave(P) + row_length + 1  # (K,)
    lower_index = lower.to(index_dtype)  # (B, 2, K)
    position = lower_index[:, 1].mul_(row_length).add_(lower_index[:, 0]).add_(origin)  # (B, K) padded position
    batch_start = torch.arange(N, dtype=index_dtype).view(N, 1, 1, 1) * (padded_total * M)  # (N, 1, 1, 1)
    batch_head = batch_start + torch.arange(M, dtype=index_dtype).view(1, 1, M, 1)  # (N, 1, M, 1)
    base = position.view(N, Lq, M, K).mul_(M).add_(batch_head).view(B, 1, 1, K)  # (B, 1, 1, K) row of corner (0, 0)
    corner = torch.arange(2, dtype=index_dtype)
    corner_step = (corner.view(2, 1, 1) * row_length + corner.view(1, 2, 1)) * M  # (2, 2, K)
    rows = base + corner_step  # (B, 2, 2, K)
    return _Taps(pixel, extent, axis_weights, weighted_y, tap_weights, rows)


def cpu_forward(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    B, K = N * Lq * M, L * P
    if B == 0 or K == 0 or D == 0:
        return value.new_zeros(N, Lq, M * D)
    dtype = _compute_dtype(value.dtype)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    table = _pad_levels(value.to(dtype), shapes).view(-1, D)  # (N*S'*M, D)
    taps = _bilinear_taps(shapes, sampling_locations.to(dtype), attention_weights.to(dtype))
    output = F.embedding_bag(
        taps.rows.view(B, 4 * K), table, per_sample_weights=taps.tap_weights.view(B, 4 * K), mode="sum"
    )  # (B, D)
    return output.view(N, Lq, M * D).to(value.dtype)


def _grad_value(taps: _Taps, grad_out: Tensor, shapes: list[tuple[int, int]], value_shape: torch.Size) -> Tensor:
    """d loss / d value: every tap adds tap weight * grad_out[query] to its corner's row of the table.

    Scatters are serial on CPU, so both ways below turn the scatter into gathers (``embedding_bag``,
    deterministic). With few taps per table row (the decoder: few queries over large maps) the taps are
    sorted by row (:func:`_grad_value_by_row`); with many (the encoder) that sort would dominate, and only
    the points are sorted, by their corner (0, 0) (:func:`_grad_value_by_first_corner`).
    Both gather with ``index_select``: for 1-d indices on CPU it is about 3x faster than ``tensor[index]``.
    """
    N, S, M, D = value_shape
    table_rows = N * sum((h + 2) * (w + 2) for h, w in shapes) * M
    if taps.rows.numel() < _SPARSE_TAPS_PER_ROW * table_rows:
        return _grad_value_by_row(taps, grad_out, shapes, value_shape)
    return _grad_value_by_first_corner(taps, grad_out, shapes, value_shape)


def _grad_value_by_row(taps: _Taps, grad_out: Tensor, shapes: list[tuple[int, int]], value_shape: torch.Size) -> Tensor:
    """The taps sorted by table row: one weighted sum of output gradients per row that some tap reads.

    The rows of the padded table that lie on a level's zero border are dropped; the others are written
    to their rows of the (N * S * M, D) value gradient.
    """
    N, S, M, D = value_shape
    taps_per_query = taps.rows[0].numel()
    rows = taps.rows.view(-1)  # (B*4K,)
    order = torch.argsort(rows, stable=True)  # (B*4K,) taps grouped by row, in query order
    used_rows, counts = torch.unique_consecutive(rows.index_select(0, order), return_counts=True)  # (R,) each
    sums = F.embedding_bag(
        order // taps_per_query,  # the query row b = (n, q, m) of each sorted tap
        grad_out,
        counts.cumsum(0) - counts,  # where each used row's taps start in `order`
        mode="sum",
        per_sample_weights=taps.tap_weights.view(-1).index_select(0, order),
    )  # (R, D)

    # value row + 1 of every row of the padded table, 0 on the zero border (the padding of an arange)
    value_row_plus_one = _pad_levels(torch.arange(1, N * S * M + 1).view(N, S, M, 1), shapes).view(-1)  # (N*S'*M,)
    value_rows = value_row_plus_one.index_select(0, used_rows) - 1  # (R,), -1 for border rows
    interior = value_rows >= 0
    value_rows = value_rows[interior]  # (R',)
    grad_value = grad_out.new_zeros(N * S * M, D)
    return grad_value.index_copy_(0, value_rows, sums[interior]).view(N, S, M, D)


def _grad_value_by_first_corner(
    taps: _Taps, grad_out: Tensor, shapes: list[tuple[int, int]], value_shape: torch.Size
) -> Tensor:
    """The points sorted by the table row of their corner (0, 0): one ``embedding_bag`` per corner sums, for
    every table row, the weighted output gradients of the points whose corner (0, 0) is that row. The sums
    of corner (cy, cx) then belong cy rows and cx columns further on in the same level, a shifted slice.
    """
    N, S, M, D = value_shape
    B, _, _, K = taps.rows.shape
    num_rows = N * sum((h + 2) * (w + 2) for h, w in shapes) * M
    first_corner = taps.rows[:, 0, 0].reshape(-1)  # (B*K,) table row of each point's corner (0, 0)
    order = torch.argsort(first_corner, stable=True)  # (B*K,) points grouped by that row, in query order
    counts = torch.bincount(first_corner, minlength=num_rows)  # (N*S'*M,)
    starts = counts.cumsum(0) - counts  # (N*S'*M,) where each row's points start in `order`
    queries = order // K  # (B*K,) query row b = (n, q, m) of each sorted point

    grad_value = grad_out.new_empty(N, S, M, D)
    grad_levels = grad_value.split([h * w for h, w in shapes], dim=1)
    for cy, cx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        weights = taps.tap_weights[:, cy, cx].reshape(-1).index_select(0, order)  # (B*K,)
        sums = F.embedding_bag(queries, grad_out, starts, mode="sum", per_sample_weights=weights)  # (N*S'*M, D)
        padded_levels = sums.view(N, -1, M, D).split([(h + 2) * (w + 2) for h, w in shapes], dim=1)
        for (h, w), grad_level, padded in zip(shapes, grad_levels, padded_levels, strict=True):
            # pixel (i, j) is corner (cy, cx) of the points whose corner (0, 0) is padded (i + 1 - cy, j + 1 - cx)
            shifted = padded.view(N, h + 2, w + 2, M, D)[:, 1 - cy : h + 1 - cy, 1 - cx : w + 1 - cx]
            target = grad_level.view(N, h, w, M, D)
            if (cy, cx) == (0, 0):
                target.copy_(shifted)
            else:
                target.add_(shifted)
    return grad_value


def _grad_tap_weights(rows: Tensor, grad_out: Tensor, table: Tensor) -> Tensor:
    """d loss / d tap weight = <grad_out[query], table[row]>: a dense-dense product sampled at the taps.

    rows: (B, 2, 2, K) table rows of the taps; grad_out: (B, D); table: (N*S'*M, D). Returns (B, 2, 2, K).
    """
    B = rows.shape[0]
    taps_per_query = rows[0].numel()
    crow = torch.arange(0, rows.numel() + 1, taps_per_query, dtype=rows.dtype)  # (B + 1,)
    if table.shape[0] < taps_per_query:
        # sampled_addmm keeps at most one value per column of a row: a table smaller than a query's taps (tiny
        # or empty levels) gets zero rows appended, so that every tap keeps its value
        table = torch.cat([table, table.new_zeros(taps_per_query - table.shape[0], table.shape[1])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        pattern = torch.sparse_csr_tensor(
            crow, rows.view(-1), grad_out.new_zeros(rows.numel()), size=(B, table.shape[0]), check_invariants=False
        )  # (B, N*S'*M)
        # in place (out=pattern) spares a copy of the pattern; beta=0 ignores its (zero) values
        torch.sparse.sampled_addmm(pattern, grad_out, table.t(), beta=0.0, out=pattern)
    return pattern.values().view(rows.shape)


def cpu_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    B, K = N * Lq * M, L * P
    if B == 0 or K == 0 or D == 0:
        return torch.zeros_like(value), torch.zeros_like(sampling_locations), torch.zeros_like(attention_weights)
    dtype = _compute_dtype(value.dtype)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    table = _pad_levels(value.to(dtype), shapes)  # (N, S', M, D)
    taps = _bilinear_taps(shapes, sampling_locations.to(dtype), attention_weights.to(dtype))
    grad_out = grad_output.to(dtype).reshape(B, D).contiguous()  # (B, D)
    grad_value = _grad_value(taps, grad_out, shapes, value.shape)  # (N, S, M, D)
    grad_taps = _grad_tap_weights(taps.rows, grad_out, table.view(-1, D))  # (B, 2, 2, K)

    # Chain rule through tap_weights[cy, cx] = (attention * wy[cy]) * wx[cx], with (w0, w1) = (1 - f, f).
    wx, wy = taps.axis_weights.unbind(1)  # (B, 2, K) each
    by_x = grad_taps * taps.weighted_y[:, :, None, :]  # (B, 2, 2, K)
    grad_wx = by_x[:, 0] + by_x[:, 1]  # (B, 2, K) summed over cy
    by_y = grad_taps * wx[:, None, :, :]  # (B, 2, 2, K)
    grad_weighted_y = by_y[:, :, 0] + by_y[:, :, 1]  # (B, 2, K) summed over cx
    grad_attention = grad_weighted_y[:, 0] * wy[:, 0] + grad_weighted_y[:, 1] * wy[:, 1]  # (B, K)
    attention = attention_weights.to(dtype).reshape(B, K)
    grad_frac = torch.stack(
        [grad_wx[:, 1] - grad_wx[:, 0], (grad_weighted_y[:, 1] - grad_weighted_y[:, 0]) * attention], dim=1
    )  # (B, 2, K)
    # frac moves with the pixel coordinate only strictly inside the clamp range; d pixel / d loc = size
    outside = (taps.pixel < -1) | (taps.pixel >= taps.extent) | taps.pixel.isnan()  # (B, 2, K)
    grad_locations = grad_out.new_empty(B, K, 2)
    torch.mul(grad_frac.masked_fill_(outside, 0.0), taps.extent, out=grad_locations.transpose(1, 2))
    return (
        grad_value.to(value.dtype),
        grad_locations.view(N, Lq, M, L, P, 2).to(sampling_locations.dtype),
        grad_attention.view(N, Lq, M, L, P).to(attention_weights.dtype),
    )
