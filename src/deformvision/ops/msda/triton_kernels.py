"""Triton kernels of multi-scale deformable attention: plain ``@triton.jit`` functions.

Imported only by :mod:`deformvision.ops.msda.triton_launch`, on first launch: ``triton.jit`` builds interpreted
kernels when ``TRITON_INTERPRET=1`` is set at that import and compiled ones otherwise. Shapes, layout and the
two ways of reducing ``grad_value`` are described in the launcher's docstring.
"""

import triton
import triton.language as tl


@triton.jit
def _bilinear_tap(loc_ptr, attn_ptr, tap, q_mask, H, W):
    """Attention weight and bilinear corners of the taps ``tap`` ([BLOCK_Q] int64, masked by ``q_mask``).

    The taps sample a level of H x W pixels (int32 scalars). Returns ``(a, x0, y0, lx, ly, hx, hy, ok_x0, ok_x1,
    ok_y0, ok_y1)``, all [BLOCK_Q]: the attention weight (fp32); the top-left corner (x0, y0) (int32); the weights
    lx of column x0 + 1 and ly of row y0 + 1, hx = 1 - lx and hy = 1 - ly (fp32); whether columns x0 and x0 + 1
    lie inside the map, and whether rows y0 and y0 + 1 do for a tap that touches the map (both false for masked
    taps and taps outside it). Corner (x0 + j, y0 + i) is inside the map where ``ok_y{i} & ok_x{j}``.

    The attention weight is loaded here, between the coordinates and the tests on them, on purpose: ptxas
    allocates registers by instruction order, and loading it in the kernels instead costs the backward kernel up
    to 17 more registers on sm_90.
    """
    H_f = H.to(tl.float32)
    W_f = W.to(tl.float32)
    x = tl.load(loc_ptr + 2 * tap, mask=q_mask, other=0.0).to(tl.float32) * W_f - 0.5
    y = tl.load(loc_ptr + 2 * tap + 1, mask=q_mask, other=0.0).to(tl.float32) * H_f - 0.5
    a = tl.load(attn_ptr + tap, mask=q_mask, other=0.0).to(tl.float32)

    # Taps outside (-1, W) x (-1, H) touch no pixel; nan/inf fail the test too. Zeroing their coordinates keeps
    # floor() and the int32 conversion in range.
    inside = q_mask & (x >= -1.0) & (x < W_f) & (y >= -1.0) & (y < H_f)
    x = tl.where(inside, x, 0.0)
    y = tl.where(inside, y, 0.0)
    x0_f = tl.floor(x)
    y0_f = tl.floor(y)
    lx = x - x0_f  # weight of the x0 + 1 column
    ly = y - y0_f  # weight of the y0 + 1 row
    hx = 1.0 - lx
    hy = 1.0 - ly
    x0 = x0_f.to(tl.int32)
    y0 = y0_f.to(tl.int32)
    ok_x0 = x0 >= 0
    ok_x1 = x0 + 1 < W
    ok_y0 = inside & (y0 >= 0)
    ok_y1 = inside & (y0 + 1 < H)
    return a, x0, y0, lx, ly, hx, hy, ok_x0, ok_x1, ok_y0, ok_y1


@triton.jit
def _corner_offsets(pixel00, W, row_stride):
    """Offsets of the four corner rows of a tap in a tensor laid out like ``value`` (N, S, M, D).

    ``pixel00`` ([BLOCK_Q] int64) is the index of corner (x0, y0) among the image's S pixels, W the width of its
    level and ``row_stride`` (M * D) the number of elements between pixels s and s + 1. Returns ``(offset00,
    offset01, offset10, offset11)``, [BLOCK_Q, 1] int64: ``offset{i}{j}`` is that of corner (x0 + j, y0 + i),
    counted from the head's row of the image's first pixel.
    """
    offset00 = (pixel00 * row_stride)[:, None]
    offset01 = offset00 + row_stride
    offset10 = offset00 + W.to(tl.int64) * row_stride
    offset11 = offset10 + row_stride
    return offset00, offset01, offset10, offset11


@triton.jit
def forward_kernel(
    value_ptr,  # (N, S, M, D)
    shapes_ptr,  # (L, 2) int64, rows (H, W)
    level_start_ptr,  # (L,) int64
    loc_ptr,  # (N, Lq, M, L, P, 2)
    attn_ptr,  # (N, Lq, M, L, P)
    out_ptr,  # (N, Lq, M * D)
    S,
    Lq,
    M,
    D,
    L,
    P,
    num_q_blocks,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    m = pid % M
    q_block = (pid // M) % num_q_blocks
    n = (pid // (M * num_q_blocks)).to(tl.int64)

    q = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q]
    q_mask = q < Lq
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_mask = d < D
    d_mask_2d = d_mask[None, :]
    row = (n * Lq + q) * M + m  # [BLOCK_Q] int64, row of the (N * Lq * M, D) view of the output
    value_row_stride = M * D  # elements between value[n, s] and value[n, s + 1]
    value_head = value_ptr + n * S * value_row_stride + m * D + d[None, :]  # [1, BLOCK_D] pointers

    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for lvl in range(L):
        H = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(level_start_ptr + lvl)  # int64
        for pt in range(P):
            tap = (row * L + lvl) * P + pt  # [BLOCK_Q] int64
            a, x0, y0, lx, ly, hx, hy, ok_x0, ok_x1, ok_y0, ok_y1 = _bilinear_tap(loc_ptr, attn_ptr, tap, q_mask, H, W)
            offset00, offset01, offset10, offset11 = _corner_offsets(start + y0 * W + x0, W, value_row_stride)
            v00 = tl.load(value_head + offset00, mask=(ok_y0 & ok_x0)[:, None] & d_mask_2d, other=0.0)
            v01 = tl.load(value_head + offset01, mask=(ok_y0 & ok_x1)[:, None] & d_mask_2d, other=0.0)
            v10 = tl.load(value_head + offset10, mask=(ok_y1 & ok_x0)[:, None] & d_mask_2d, other=0.0)
            v11 = tl.load(value_head + offset11, mask=(ok_y1 & ok_x1)[:, None] & d_mask_2d, other=0.0)

            acc += (a * hy * hx)[:, None] * v00.to(tl.float32)
            acc += (a * hy * lx)[:, None] * v01.to(tl.float32)
            acc += (a * ly * hx)[:, None] * v10.to(tl.float32)
            acc += (a * ly * lx)[:, None] * v11.to(tl.float32)

    out_ptrs = out_ptr + row[:, None] * D + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask_2d)


@triton.jit
def backward_kernel(
    grad_out_ptr,  # (N, Lq, M * D)
    value_ptr,  # (N, S, M, D)
    shapes_ptr,  # (L, 2) int64, rows (H, W)
    level_start_ptr,  # (L,) int64
    loc_ptr,  # (N, Lq, M, L, P, 2)
    attn_ptr,  # (N, Lq, M, L, P)
    grad_value_acc_ptr,  # (N, S, M, D) fp32, zero-initialised; used when not DETERMINISTIC
    keys_ptr,  # (N, Lq, M, L, P, 4) int64; used when DETERMINISTIC
    coefs_ptr,  # (N, Lq, M, L, P, 4) fp32; used when DETERMINISTIC
    grad_loc_ptr,  # (N, Lq, M, L, P, 2)
    grad_attn_ptr,  # (N, Lq, M, L, P)
    S,
    Lq,
    M,
    D,
    L,
    P,
    num_q_blocks,
    invalid_key,  # N * S * M: key of corners outside the map, sorts after every real row
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    pid = tl.program_id(0)
    m = pid % M
    q_block = (pid // M) % num_q_blocks
    n = (pid // (M * num_q_blocks)).to(tl.int64)

    q = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q]
    q_mask = q < Lq
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_mask = d < D
    d_mask_2d = d_mask[None, :]
    row = (n * Lq + q) * M + m  # [BLOCK_Q] int64, row of the (N * Lq * M, D) view of grad_output
    value_row_stride = M * D
    value_head_offset = n * S * value_row_stride + m * D + d[None, :]  # [1, BLOCK_D] int64
    value_head = value_ptr + value_head_offset
    grad_value_head = grad_value_acc_ptr + value_head_offset
    # Destination row of a pixel s in the (N * S * M, D) view of grad_value is key_base + s * M.
    key_base = n * S * M + m

    g = tl.load(grad_out_ptr + row[:, None] * D + d[None, :], mask=q_mask[:, None] & d_mask_2d, other=0.0)
    g = g.to(tl.float32)  # [BLOCK_Q, BLOCK_D]

    for lvl in range(L):
        H = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(level_start_ptr + lvl)  # int64
        H_f = H.to(tl.float32)
        W_f = W.to(tl.float32)
        for pt in range(P):
            tap = (row * L + lvl) * P + pt  # [BLOCK_Q] int64
            a, x0, y0, lx, ly, hx, hy, ok_x0, ok_x1, ok_y0, ok_y1 = _bilinear_tap(loc_ptr, attn_ptr, tap, q_mask, H, W)
            ok00 = ok_y0 & ok_x0  # [BLOCK_Q], corner (x0 + j, y0 + i) inside the map: ok{i}{j}
            ok01 = ok_y0 & ok_x1
            ok10 = ok_y1 & ok_x0
            ok11 = ok_y1 & ok_x1

            pixel00 = start + y0 * W + x0  # [BLOCK_Q] int64, may be negative where masked
            offset00, offset01, offset10, offset11 = _corner_offsets(pixel00, W, value_row_stride)
            mask00 = ok00[:, None] & d_mask_2d  # [BLOCK_Q, BLOCK_D]
            mask01 = ok01[:, None] & d_mask_2d
            mask10 = ok10[:, None] & d_mask_2d
            mask11 = ok11[:, None] & d_mask_2d
            v00 = tl.load(value_head + offset00, mask=mask00, other=0.0)
            v01 = tl.load(value_head + offset01, mask=mask01, other=0.0)
            v10 = tl.load(value_head + offset10, mask=mask10, other=0.0)
            v11 = tl.load(value_head + offset11, mask=mask11, other=0.0)

            # <grad_output, corner value> for each corner, [BLOCK_Q]
            gv00 = tl.sum(g * v00.to(tl.float32), axis=1)
            gv01 = tl.sum(g * v01.to(tl.float32), axis=1)
            gv10 = tl.sum(g * v10.to(tl.float32), axis=1)
            gv11 = tl.sum(g * v11.to(tl.float32), axis=1)

            grad_a = hy * hx * gv00 + hy * lx * gv01 + ly * hx * gv10 + ly * lx * gv11
            grad_x = hy * (gv01 - gv00) + ly * (gv11 - gv10)  # d/dx of <grad_output, sample>
            grad_y = hx * (gv10 - gv00) + lx * (gv11 - gv01)
            tl.store(grad_attn_ptr + tap, grad_a.to(grad_attn_ptr.dtype.element_ty), mask=q_mask)
            grad_loc_dtype = grad_loc_ptr.dtype.element_ty
            tl.store(grad_loc_ptr + 2 * tap, (a * W_f * grad_x).to(grad_loc_dtype), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * tap + 1, (a * H_f * grad_y).to(grad_loc_dtype), mask=q_mask)

            c00 = a * hy * hx  # [BLOCK_Q] coefficient of grad_output in grad_value of each corner
            c01 = a * hy * lx
            c10 = a * ly * hx
            c11 = a * ly * lx
            if DETERMINISTIC:
                entry = tap * 4  # [BLOCK_Q] int64, first of the tap's 4 corner entries
                key00 = key_base + pixel00 * M
                key10 = key00 + W.to(tl.int64) * M
                tl.store(keys_ptr + entry, tl.where(ok00, key00, invalid_key), mask=q_mask)
                tl.store(keys_ptr + entry + 1, tl.where(ok01, key00 + M, invalid_key), mask=q_mask)
                tl.store(keys_ptr + entry + 2, tl.where(ok10, key10, invalid_key), mask=q_mask)
                tl.store(keys_ptr + entry + 3, tl.where(ok11, key10 + M, invalid_key), mask=q_mask)
                tl.store(coefs_ptr + entry, c00, mask=q_mask)
                tl.store(coefs_ptr + entry + 1, c01, mask=q_mask)
                tl.store(coefs_ptr + entry + 2, c10, mask=q_mask)
                tl.store(coefs_ptr + entry + 3, c11, mask=q_mask)
            else:
                tl.atomic_add(grad_value_head + offset00, c00[:, None] * g, mask=mask00, sem="relaxed")
                tl.atomic_add(grad_value_head + offset01, c01[:, None] * g, mask=mask01, sem="relaxed")
                tl.atomic_add(grad_value_head + offset10, c10[:, None] * g, mask=mask10, sem="relaxed")
                tl.atomic_add(grad_value_head + offset11, c11[:, None] * g, mask=mask11, sem="relaxed")


@triton.jit
def grad_value_gather_kernel(
    grad_out_ptr,  # (N * Lq * M, D) view of grad_output
    order_ptr,  # (E,) int64, entries sorted by destination row (stable)
    coefs_ptr,  # (E,) fp32, indexed by entry
    segment_ptr,  # (N * S * M + 1,) int64, first sorted position of each destination row
    grad_value_ptr,  # (N * S * M, D) view of grad_value
    D,
    entries_per_row,  # L * P * 4 entries per (n, q, m) row of grad_output
    BLOCK_D: tl.constexpr,
):
    dest = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    begin = tl.load(segment_ptr + dest)
    end = tl.load(segment_ptr + dest + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(begin, end):  # fixed order: the sort is stable
        entry = tl.load(order_ptr + i)
        coef = tl.load(coefs_ptr + entry)
        source_row = entry // entries_per_row
        g = tl.load(grad_out_ptr + source_row * D + d, mask=d_mask, other=0.0)
        acc += coef * g.to(tl.float32)
    tl.store(grad_value_ptr + dest * D + d, acc.to(grad_value_ptr.dtype.element_ty), mask=d_mask)
