"""The fast CPU backend of multi-scale deformable attention: one ``F.embedding_bag`` over a zero-bordered table.

All levels are sampled with one ``F.embedding_bag`` over a value table in which every level is bordered by one
row/column of zeros: each point's four bilinear corners become four table rows whose weights (bilinear weight
times attention weight) are precomputed, and taps outside the map read the zero border. With few taps per
table row (few queries, like the decoder's) copying the values into that table would cost more than the
sampling: the taps' rows are translated to rows of the values instead, and the border taps dropped. The
backward recomputes the taps, gets the tap-weight gradients from one sampled dense-dense product
(``torch.sparse.sampled_addmm``), the value gradient by sorting the taps or the points by table row and
gathering with ``F.embedding_bag`` again (no serial scatter), and applies the chain rule to the locations and
attention weights by hand.

Fresh large tensors cost page faults (the CPU allocator returns big blocks to the system), more than the
arithmetic on them at these sizes: intermediates live in spent buffers and the arithmetic works in place.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# With fewer taps than this per row of the padded table (few queries over large maps, like the decoder),
# the values are read in place instead of copied into the zero-bordered table (see _unpadded_taps), and the
# value gradient is gathered row by row (see _grad_value; the two ways cross at 2-4 taps per row on a 2-core
# CPU).
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

    extent: Tensor  # (2, K) width (row 0) and height (row 1) of each point's level
    frac: Tensor  # (B, 2, K) (fx; fy) the fractional part of the clamped pixel coordinate: corner 1's weight
    tap_weights: Tensor  # (B, 2, 2, K) [cy, cx] weight of each corner: attention * wy * wx
    rows: Tensor  # (B, 2, 2, K) [cy, cx] row of the corner in the (N * S' * M, D) table
    outside: Tensor | None  # (B, 2, K) pixel coordinate outside [-1, size) or NaN; only with for_backward


def _bilinear_taps(
    shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    for_backward: bool,
) -> _Taps:
    """Table rows and weights of every point's four corners (and, ``for_backward``, the clamped-away points).

    Only the results are allocated (fresh tensors cost page faults): the intermediates live in slots of them
    that are written last.
    """
    N, Lq, M, L, P, _ = sampling_locations.shape
    B, K = N * Lq * M, L * P
    dtype = sampling_locations.dtype

    sizes_hw = torch.tensor(shapes, dtype=dtype).view(L, 2)  # (L, 2) rows (H, W)
    extent = sizes_hw.flip(1).t().repeat_interleave(P, dim=1)  # (2, K): W of each point (row 0), H (row 1)
    frac = torch.empty(B, 2, K, dtype=dtype)  # (x; y)
    # always a copy into our own buffer: the in-place arithmetic below must not write into the caller's locations
    frac.copy_(sampling_locations.reshape(B, K, 2).transpose(1, 2))  # (B, 2, K) locations (x; y)
    frac.mul_(extent).sub_(0.5)  # grid_sample's align_corners=False pixel coordinate
    outside = None
    if for_backward:  # frac moves with the pixel coordinate only strictly inside the clamp range
        outside = frac.ge(extent).logical_or_(frac.ge(-1.0).logical_not_())  # (B, 2, K); NaN compares False
    # Clamp to [-1, size], NaN to -1 (nan_to_num_ and clamp_ are vectorised, fmax is not). Between -1 and size
    # the corners stay within the zero border, so every point outside the map (or non-finite) samples zeros.
    frac.nan_to_num_(nan=-1.0).clamp_(frac.new_tensor(-1.0), extent)  # the clamped coordinate
    tap_weights = torch.empty(B, 2, 2, K, dtype=dtype)  # [cy, cx]
    lower = tap_weights[:, 0]  # (B, 2, K) floor(coordinate) (x; y), until the weights of corners (0, *) are written
    torch.floor(frac, out=lower)
    torch.minimum(lower, extent - 1, out=lower)  # in [-1, size - 1]
    frac.sub_(lower)  # in [0, 1]
    rows = _corner_rows(shapes, N, M, lower)  # (B, 2, 2, K)
    _corner_weights(frac, attention_weights.reshape(B, K), out=tap_weights)
    return _Taps(extent, frac, tap_weights, rows, outside)


def _corner_weights(frac: Tensor, attention: Tensor, out: Tensor) -> None:
    """Tap weights out[:, cy, cx] = attention * wy[cy] * wx[cx], with (w0, w1) = (1 - f, f) along each axis.

    frac: (B, 2, K) (fx; fy); attention: (B, K); out: (B, 2, 2, K), written in place.
    """
    fx, fy = frac.unbind(1)  # (B, K) each
    weighted_y = out[:, :, 1]  # (B, 2, K) [cy] attention * wy[cy], until the last multiplication
    torch.mul(attention, fy, out=weighted_y[:, 1])
    torch.sub(1.0, fy, out=weighted_y[:, 0]).mul_(attention)
    torch.sub(1.0, fx, out=out[:, 0, 0])
    out[:, 1, 0].copy_(out[:, 0, 0])
    out[:, :, 0].mul_(weighted_y)  # [cy] wx[0] * attention * wy[cy]
    weighted_y.mul_(fx[:, None, :])


def _corner_rows(shapes: list[tuple[int, int]], N: int, M: int, lower: Tensor) -> Tensor:
    """(B, 2, 2, K) [cy, cx] table rows of the corners, from the (B, 2, K) floored pixel coordinates (x; y).

    Corner (cy, cx) of a point of level l, batch n and head m sits at row
    ((n * S' + start_l + (y + 1 + cy) * (W_l + 2) + x + 1 + cx) * M + m) of the (N * S' * M, D) table.
    """
    B, _, K = lower.shape
    L = len(shapes)
    P = K // L
    padded = [(h + 2, w + 2) for h, w in shapes]
    padded_total = sum(h * w for h, w in padded)
    index_dtype = torch.int32 if N * padded_total * M < 2**31 else torch.int64
    padded_starts = [sum(h * w for h, w in padded[:level]) for level in range(L)]
    row_length = torch.tensor([w for _, w in padded], dtype=index_dtype).repeat_interleave(P)  # (K,)
    origin = torch.tensor(padded_starts, dtype=index_dtype).repeat_interleave(P) + row_length + 1  # (K,)
    batch_start = torch.arange(N, dtype=index_dtype).view(N, 1, 1, 1) * (padded_total * M)  # (N, 1, 1, 1)
    head = torch.arange(M, dtype=index_dtype).view(1, 1, M, 1)  # (1, 1, M, 1)
    first_row = batch_start + head + origin * M  # (N, 1, M, K) row of pixel (0, 0) of each point's level
    step_y = row_length * M  # (K,) one row down
    rows = torch.empty(B, 2, 2, K, dtype=index_dtype)
    lower_index = rows[:, 0]  # (B, 2, K) the integer coordinates (x; y), until corner row (0, *) is written
    lower_index.copy_(lower)
    base = rows[:, 1, 1]  # (B, K) row of corner (0, 0), until corner (1, 1) is written last
    torch.mul(lower_index[:, 1], step_y, out=base)
    base.add_(lower_index[:, 0], alpha=M)
    base.view(N, -1, M, K).add_(first_row)  # (N, Lq, M, K) view of base
    torch.add(base, M, out=rows[:, 0, 1])
    rows[:, 0, 0].copy_(base)
    torch.add(base, step_y, out=rows[:, 1, 0])
    base.add_(step_y + M)
    return rows


def _few_taps(taps: _Taps, shapes: list[tuple[int, int]], value_shape: torch.Size) -> bool:
    """Whether there are fewer than _SPARSE_TAPS_PER_ROW taps per row of the padded table."""
    N, _, M, _ = value_shape
    return taps.rows.numel() < _SPARSE_TAPS_PER_ROW * N * sum((h + 2) * (w + 2) for h, w in shapes) * M


def _padded_to_value_rows(shapes: list[tuple[int, int]], value_shape: torch.Size) -> Tensor:
    """(N*S'*M,) the row of the (N * S * M, D) values of every row of the padded table, -1 on the zero border."""
    N, S, M, _ = value_shape
    return _pad_levels(torch.arange(1, N * S * M + 1).view(N, S, M, 1), shapes).view(-1).sub_(1)


def _unpadded_taps(taps: _Taps, shapes: list[tuple[int, int]], value_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """The taps' (B, 2, 2, K) rows of the unpadded (N * S * M, D) values and whether they lie inside the map.

    Taps on the zero border get row 0: their weight or gradient must be dropped (``inside`` is False there).
    Translating few taps is cheaper than copying the whole value tensor into the padded table.
    """
    rows = _padded_to_value_rows(shapes, value_shape).index_select(0, taps.rows.view(-1))  # (B*4K,)
    inside = rows >= 0
    return rows.clamp_(min=0).view(taps.rows.shape), inside.view(taps.rows.shape)


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
    taps = _bilinear_taps(shapes, sampling_locations.to(dtype), attention_weights.to(dtype), for_backward=False)
    if _few_taps(taps, shapes, value.shape):
        # only the taps inside the maps, as bags of varying size (a border tap may not read a real value:
        # weight 0 times an infinite value would be NaN)
        rows, inside = _unpadded_taps(taps, shapes, value.shape)  # (B, 2, 2, K) each
        per_query = inside.view(B, 4 * K).sum(1)  # (B,) taps inside the maps
        output = F.embedding_bag(
            rows.view(-1)[inside.view(-1)],  # (T,) T taps inside the maps, query after query
            value.to(dtype).reshape(-1, D),  # (N*S*M, D)
            per_query.cumsum(0) - per_query,  # (B,) where each query's taps start
            per_sample_weights=taps.tap_weights.view(-1)[inside.view(-1)],
            mode="sum",
        )  # (B, D)
    else:
        table = _pad_levels(value.to(dtype), shapes).view(-1, D)  # (N*S'*M, D)
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
    if _few_taps(taps, shapes, value_shape):
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

    value_rows = _padded_to_value_rows(shapes, value_shape).index_select(0, used_rows)  # (R,), -1 for border rows
    # the border rows' sums go to one extra row, cut off at the end (cheaper than selecting the others)
    value_rows.masked_fill_(value_rows < 0, N * S * M)
    grad_value = grad_out.new_zeros(N * S * M + 1, D)
    return grad_value.index_copy_(0, value_rows, sums)[:-1].view(N, S, M, D)


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
    queries = torch.div(order, K, rounding_mode="floor")  # (B*K,) query row b = (n, q, m) of each sorted point
    # point b * K + k has its corner (cy, cx) weight at b * 4K + (2 * cy + cx) * K + k of the tap weights
    weight_index = order.add_(queries, alpha=3 * K)  # (B*K,) in place: `order` is not needed any more
    flat_weights = taps.tap_weights.view(-1)  # (B*4K,)
    weights = flat_weights.new_empty(B * K)  # (B*K,) one corner's weights in sorted order, reused

    grad_value = grad_out.new_empty(N, S, M, D)
    grad_levels = grad_value.split([h * w for h, w in shapes], dim=1)
    for cy, cx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        torch.index_select(flat_weights[(2 * cy + cx) * K :], 0, weight_index, out=weights)
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


def _grad_tap_weights(rows: Tensor, grad_out: Tensor, table: Tensor, out: Tensor) -> Tensor:
    """d loss / d tap weight = <grad_out[query], table[row]>: a dense-dense product sampled at the taps.

    rows: (B, 2, 2, K) rows of the taps in table: (R, D), the padded table or the values; grad_out: (B, D);
    out: (B, 2, 2, K), a buffer that is no longer needed (a fresh one would cost page faults), overwritten and
    returned.
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
            crow, rows.view(-1), out.view(-1).zero_(), size=(B, table.shape[0]), check_invariants=False
        )  # (B, R)
        # in place (out=pattern) spares a copy of the pattern; beta=0 still multiplies the old values (a NaN
        # would stay), hence the zeros
        torch.sparse.sampled_addmm(pattern, grad_out, table.t(), beta=0.0, out=pattern)
    return out


def _chain_rule(taps: _Taps, grad_taps: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K, 2) location and (B, K) attention gradients from the (B, 2, 2, K) [cy, cx] tap-weight gradients g.

    tap_weights[cy, cx] = attention * wy[cy] * wx[cx] with (w0, w1) = (1 - f, f) along each axis. With
    by_y[cy] = sum_cx wx[cx] * g[cy, cx] = g[cy, 0] + fx * (g[cy, 1] - g[cy, 0]): d/d fy = attention * (by_y[1]
    - by_y[0]), d/d attention = sum_cy wy[cy] * by_y[cy] = by_y[0] + fy * (by_y[1] - by_y[0]), and with
    across[cy] = g[cy, 1] - g[cy, 0]: d/d fx = attention * (across[0] + fy * (across[1] - across[0])).
    Works in place in grad_taps.
    """
    B, _, _, K = grad_taps.shape
    fx, fy = taps.frac.unbind(1)  # (B, K) each
    by_y, across = grad_taps.unbind(2)  # (B, 2, K) each, [cy]: g[cy, 0] and g[cy, 1] until overwritten
    across.sub_(by_y)
    by_y.addcmul_(across, fx[:, None, :])
    grad_frac = by_y  # (B, 2, K) d/d fx; d/d fy, written over by_y
    grad_frac[:, 1].sub_(by_y[:, 0])  # by_y[1] - by_y[0]
    grad_attention = torch.addcmul(by_y[:, 0], grad_frac[:, 1], fy)  # (B, K)
    across[:, 1].sub_(across[:, 0])
    torch.addcmul(across[:, 0], across[:, 1], fy, out=grad_frac[:, 0])
    grad_frac.mul_(attention[:, None, :])
    # frac moves with the pixel coordinate only strictly inside the clamp range; d pixel / d loc = size
    grad_frac.masked_fill_(taps.outside, 0.0).mul_(taps.extent)
    # (B, K, 2) result: written once at the end, its axis of two would slow every operation above
    grad_locations = grad_taps.new_empty(B, K, 2)
    grad_locations.transpose(1, 2).copy_(grad_frac)
    return grad_locations, grad_attention


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
    attention = attention_weights.to(dtype)
    taps = _bilinear_taps(shapes, sampling_locations.to(dtype), attention, for_backward=True)
    grad_out = grad_output.to(dtype).reshape(B, D).contiguous()  # (B, D)
    grad_value = _grad_value(taps, grad_out, shapes, value.shape)  # (N, S, M, D)
    # the tap weights are spent: their buffer takes the tap-weight gradients
    if _few_taps(taps, shapes, value.shape):
        rows, inside = _unpadded_taps(taps, shapes, value.shape)  # (B, 2, 2, K) each
        grad_taps = _grad_tap_weights(rows, grad_out, value.to(dtype).reshape(-1, D), out=taps.tap_weights)
        grad_taps.masked_fill_(inside.logical_not_(), 0.0)  # the border taps read zeros
    else:
        table = _pad_levels(value.to(dtype), shapes).view(-1, D)  # (N*S'*M, D)
        grad_taps = _grad_tap_weights(taps.rows, grad_out, table, out=taps.tap_weights)  # (B, 2, 2, K)
    grad_locations, grad_attention = _chain_rule(taps, grad_taps, attention.reshape(B, K))
    return (
        grad_value.to(value.dtype),
        grad_locations.view(N, Lq, M, L, P, 2).to(sampling_locations.dtype),
        grad_attention.view(N, Lq, M, L, P).to(attention_weights.dtype),
    )
