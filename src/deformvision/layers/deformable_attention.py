"""DAT's deformable multi-head attention (Xia et al., "Vision Transformer with Deformable Attention",
CVPR 2022).

Keys and values are not taken at the query positions but bilinearly sampled from the feature map at
a set of *deformed points* shared by all queries (query-agnostic): a uniform reference grid with
stride ``r`` plus offsets predicted from the queries by a small offset network. Channels are split
into ``G`` offset groups; every group predicts its own offsets and the heads of a group attend to
that group's sampled keys.

Coordinate convention (as the official code): positions are normalised so that -1/+1 are the
centres of the border pixels (``grid_sample(align_corners=True)``), stored in **(y, x)** order.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from deformvision.layers.linear import Linear
from deformvision.layers.recomputed_attention import attention_probs, qk_backward, softmax_attention, softmax_backward


def reference_points(height: int, width: int, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uniform grid of cell centres ``(i + 0.5) / H * 2 - 1`` in normalised (y, x) coordinates.

    Returns:
        ``(batch, height, width, 2)`` tensor, last dim (y, x).
    """
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(0.5, height - 0.5, height, dtype=dtype, device=device),
        torch.linspace(0.5, width - 0.5, width, dtype=dtype, device=device),
        indexing="ij",
    )
    ref = torch.stack((ref_y / height * 2 - 1, ref_x / width * 2 - 1), dim=-1)  # H, W, 2
    return ref[None].expand(batch, -1, -1, -1)


def _bias_grid(pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Half the displacement from each query of a ``height x width`` grid to each sampled key, in (x, y) order.

    ``pos``: ``(B*G, Hk, Wk, 2)`` (y, x) -> ``(B*G, H*W, Hk*Wk, 2)`` (x, y), the ``grid_sample`` grid that reads
    the relative position table.
    """
    bg = pos.shape[0]
    # (y, x) -> (x, y) and the halving on the small operands: the large grid is then made once, with the same
    # values as ((q_grid - pos) * 0.5)[..., (1, 0)] (no gather over it)
    q_xy = reference_points(height, width, bg, pos.dtype, pos.device)[..., (1, 0)] * 0.5  # B*G, H, W, 2
    pos_xy = pos[..., (1, 0)] * 0.5  # B*G, Hk, Wk, 2
    return q_xy.reshape(bg, -1, 1, 2) - pos_xy.reshape(bg, 1, -1, 2)  # B*G, HW, Ns, 2 (x, y)


def _group_tables(table: torch.Tensor, batch: int, num_groups: int) -> torch.Tensor:
    """The ``(heads, 2Hc-1, 2Wc-1)`` table per sample and group: ``(B*G, heads/G, 2Hc-1, 2Wc-1)``."""
    expanded = table[None].expand(batch, -1, -1, -1)  # B, heads, 2Hc-1, 2Wc-1
    return expanded.reshape(batch * num_groups, table.shape[0] // num_groups, *table.shape[1:])


def _position_bias(table: torch.Tensor, pos: torch.Tensor, height: int, width: int, num_groups: int) -> torch.Tensor:
    """Deformable relative position bias ``(B*G, heads/G, H*W, Ns)``: the table read bilinearly at the grid."""
    tables = _group_tables(table, pos.shape[0] // num_groups, num_groups)
    grid = _bias_grid(pos, height, width)
    return F.grid_sample(tables, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class _DeformableBiasAttention(torch.autograd.Function):
    """``softmax(q k^T * scale + position_bias(table, pos)) v`` that keeps ``q, k, v, table, pos`` only.

    The ``(B, heads, HW, Ns)`` bias, its ``(B*G, HW, Ns, 2)`` sampling grid and the probabilities are
    recomputed in backward (autograd would keep the grid and the probabilities); gradients reach ``table``
    and ``pos`` through ``grid_sampler_2d_backward``, as autograd's.
    """

    @staticmethod
    def forward(ctx, q, k, v, table, pos, height, width, num_groups, scale):
        # q: B, heads, HW, hd; k, v: B, heads, Ns, hd; table: heads, 2Hc-1, 2Wc-1; pos: B*G, Hk, Wk, 2 (y, x)
        bias = _position_bias(table, pos, height, width, num_groups).view(*q.shape[:3], k.shape[2])
        ctx.save_for_backward(q, k, v, table, pos)
        ctx.args = height, width, num_groups, scale
        return attention_probs(q, k, bias, scale) @ v  # B, heads, HW, hd

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, table, pos = ctx.saved_tensors
        height, width, num_groups, scale = ctx.args
        b, heads, hw, num_keys = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        tables = _group_tables(table, b, num_groups)  # B*G, heads/G, 2Hc-1, 2Wc-1
        grid = _bias_grid(pos, height, width)  # B*G, HW, Ns, 2 (x, y)
        bias = F.grid_sample(tables, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # recomputed
        grad_logits, grad_v = softmax_backward(
            grad_out, q, k, v, bias.view(b, heads, hw, num_keys), scale, ctx.needs_input_grad[2]
        )  # grad_logits: B, heads, HW, Ns (= the bias's gradient)
        del bias
        grad_table = grad_pos = None
        need_table, need_pos = ctx.needs_input_grad[3:5]
        if need_table or need_pos:
            grad_tables, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                grad_logits.view(b * num_groups, heads // num_groups, hw, num_keys),
                tables,
                grid,
                0,  # bilinear
                0,  # zeros padding
                True,  # align_corners
                [need_table, need_pos],
            )
            if need_table:  # B*G, heads/G, ... -> heads, ...
                grad_table = grad_tables.reshape(b, heads, *table.shape[1:]).sum(0)
            if need_pos:  # grid = ((q_grid - pos) * 0.5)[..., (1, 0)]
                grad_displacement = grad_grid[..., (1, 0)] * 0.5  # B*G, HW, Ns, 2 (y, x)
                grad_pos = (-grad_displacement).sum(1).view(pos.shape)
        grad_q, grad_k = qk_backward(grad_logits, q, k, scale, ctx.needs_input_grad[:2])
        return grad_q, grad_k, grad_v, grad_table, grad_pos, None, None, None, None


class _OffsetNetwork(torch.autograd.Function):
    """The offset network ``conv1x1(gelu(layer_norm(dwconv(q_groups))))`` keeping only its input ``q``.

    Autograd would keep the grouped copy of ``q``, the depthwise conv output, the LayerNorm output and the GELU
    output: four ``(B*G, C/G, Hk, Wk)`` tensors per call. Here only ``q`` is kept (the attention keeps it anyway)
    with the LayerNorm's statistics; the chain is recomputed in backward and differentiated with the aten
    backward kernels autograd uses (``convolution_backward``, ``native_layer_norm_backward``, ``gelu_backward``).
    """

    @staticmethod
    def forward(ctx, q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight, num_groups, stride, padding, eps):
        # q: B, C, H, W (any strides); dw_weight: C/G, 1, k, k; ln_*: C/G; pw_weight: 2, C/G, 1, 1
        ctx.save_for_backward(q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight)
        ctx.args = num_groups, stride, padding, eps
        return _offset_chain(q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight, num_groups, stride, padding, eps)[-1]

    @staticmethod
    def backward(ctx, grad_offset):
        q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight = ctx.saved_tensors
        num_groups, stride, padding, eps = ctx.args
        needs = ctx.needs_input_grad
        q_groups, a0, a1, mean, rstd, a2, _ = _offset_chain(
            q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight, num_groups, stride, padding, eps
        )  # recomputed
        gc = q_groups.shape[1]
        grad_a2, grad_pw, _ = torch.ops.aten.convolution_backward(
            grad_offset, a2, pw_weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, needs[5], False]
        )  # B*G, C/G, Hk, Wk
        del a2
        grad_a1 = torch.ops.aten.gelu_backward(grad_a2.permute(0, 2, 3, 1), a1)  # B*G, Hk, Wk, C/G
        del grad_a2, a1
        grad_a0, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
            grad_a1, a0, [gc], mean, rstd, ln_weight, ln_bias, [True, needs[3], needs[4]]
        )  # B*G, Hk, Wk, C/G
        del grad_a1, a0
        grad_q_groups, grad_dw, grad_dw_bias = torch.ops.aten.convolution_backward(
            grad_a0.permute(0, 3, 1, 2),
            q_groups,
            dw_weight,
            None if dw_bias is None else [gc],
            [stride, stride],
            [padding, padding],
            [1, 1],
            False,
            [0, 0],
            gc,
            [needs[0], needs[1], needs[2] and dw_bias is not None],
        )  # B*G, C/G, H, W
        grad_q = None if grad_q_groups is None else grad_q_groups.reshape(q.shape)
        return grad_q, grad_dw, grad_dw_bias, grad_ln_weight, grad_ln_bias, grad_pw, None, None, None, None


def _offset_chain(q, dw_weight, dw_bias, ln_weight, ln_bias, pw_weight, num_groups, stride, padding, eps):
    """The offset network's forward, every intermediate returned (see :class:`_OffsetNetwork`).

    Returns ``q_groups (B*G, C/G, H, W)``, the depthwise conv output channels last ``(B*G, Hk, Wk, C/G)``, the
    LayerNorm output, its mean and rstd, the GELU output ``(B*G, C/G, Hk, Wk)`` (channels-last strides) and the
    offsets ``(B*G, 2, Hk, Wk)``.
    """
    b, c, h, w = q.shape
    q_groups = q.reshape(b * num_groups, c // num_groups, h, w)  # B*G, C/G, H, W
    a0 = F.conv2d(q_groups, dw_weight, dw_bias, stride, padding, groups=q_groups.shape[1]).permute(0, 2, 3, 1)
    a1, mean, rstd = torch.native_layer_norm(a0, [a0.shape[-1]], ln_weight, ln_bias, eps)  # B*G, Hk, Wk, C/G
    a2 = F.gelu(a1).permute(0, 3, 1, 2)  # B*G, C/G, Hk, Wk
    return q_groups, a0, a1, mean, rstd, a2, F.conv2d(a2, pw_weight)


@dataclass
class SamplingPoints:
    """The deformed sampling positions and the reference points of one deformable attention call.

    Both are ``(B, G, Hk, Wk, 2)`` with the last dim in **(y, x)** order, normalised so that -1/+1 are
    the centres of the border pixels of the attended map (``grid_sample(align_corners=True)``).
    """

    positions: torch.Tensor
    references: torch.Tensor


class DeformableAttention(nn.Module):
    """Deformable multi-head attention of DAT (the official ``DAttentionBaseline``, v1).

    For an input map ``x`` (already normalised by the block):

    1. ``q = proj_q(x)``; the offset network (depthwise ``k x k`` conv with stride ``r``, LayerNorm,
       GELU, 1x1 conv to 2 channels) runs on each group's query channels and gives offsets on a
       ``Hk x Wk`` key grid (``Hk = ceil(H / r)``).
    2. With ``offset_range_factor s > 0`` the offsets are ``s * tanh(offset) / (Hk, Wk)`` (at most
       ``s/2`` key-grid cells); positions are reference points + offsets, unclamped (points outside
       the map read zeros).
    3. Each group's channels of ``x`` are sampled bilinearly at its positions; keys and values are
       1x1 projections of the samples.
    4. Attention logits ``q k^T / sqrt(d)`` plus the deformable relative position bias, a table of
       ``(heads, 2H-1, 2W-1)`` per block sampled at the continuous query-to-key displacement.

    Any input size works. The relative position table has the size of the map the module was built
    for and is read by ``grid_sample`` in normalised coordinates, so at another size it is sampled
    at the same *relative* displacement (a fraction of the map); to adapt it to a new resolution
    instead, build the model at that size and load the checkpoint, which bicubic-resizes the table.

    Args:
        dim: channels ``C``.
        num_heads: attention heads.
        num_groups: offset groups ``G``; ``num_heads`` and ``C`` must be divisible by it.
        fmap_size: ``(H, W)`` of the map the model is built for (sizes the position tables).
        offset_kernel_size: kernel of the depthwise conv of the offset network (9/7/5/3 by stage).
        stride: reference-grid stride ``r`` (1: one key per input position).
        offset_range_factor: ``s``; if ``<= 0`` offsets are used raw and positions are
            ``tanh(reference + offset)``.
        use_pe: add a relative position encoding.
        dwc_pe: position encoding by a depthwise 3x3 conv on the queries added to the output
            (ablation) instead of the relative position bias.
        fixed_pe: a free ``(heads, H*W, Hk*Wk)`` bias (ablation); only valid at ``fmap_size``.
        no_offset: no offsets: keys at the reference grid, taken by average pooling (ablation).
        attn_drop: dropout on attention probabilities.
        proj_drop: dropout after the output projection.

    Shape:
        - Input: ``(B, H, W, C)`` (channels last)
        - Output: ``(B, H, W, C)`` and the :class:`SamplingPoints` of this call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_groups: int,
        fmap_size: tuple[int, int],
        offset_kernel_size: int,
        stride: int = 1,
        offset_range_factor: float = 2.0,
        use_pe: bool = True,
        dwc_pe: bool = False,
        fixed_pe: bool = False,
        no_offset: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads or num_heads % num_groups:
            raise ValueError(
                f"dim ({dim}) must be divisible by num_heads ({num_heads}), and num_heads by num_groups ({num_groups})"
            )
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.head_dim = dim // num_heads
        self.group_dim = dim // num_groups
        self.scale = self.head_dim**-0.5
        self.stride = stride
        self.offset_range_factor = offset_range_factor
        self.use_pe, self.dwc_pe, self.fixed_pe = use_pe, dwc_pe, fixed_pe
        self.no_offset = no_offset
        self.fmap_size = tuple(fmap_size)

        k, gc = offset_kernel_size, self.group_dim
        padding = k // 2 if k != stride else 0
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, k, stride, padding, groups=gc),  # depthwise, shared by all groups
            LayerNorm2d(gc, eps=1e-5),  # the official LayerNormProxy: nn.LayerNorm defaults
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, bias=False),  # (dy, dx) per key-grid point
        )
        if no_offset:
            self.conv_offset.requires_grad_(False)
        # 1x1 convolutions in the official code (weights (C, C, 1, 1)); linear layers on channels-last here.
        self.proj_q = Linear(dim, dim)
        self.proj_k = Linear(dim, dim)
        self.proj_v = Linear(dim, dim)
        self.proj_out = Linear(dim, dim)
        # Fused attention keeps no probabilities; with ``fused_attn = False`` they are computed explicitly and
        # pass through ``attn_drop``, where a hook can read them (layers/inspection.py), as in timm.
        self.fused_attn = True
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

        h, w = self.fmap_size
        self.rpe_table: nn.Module | nn.Parameter | None = None
        if use_pe and not no_offset:
            if dwc_pe:
                self.rpe_table = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            elif fixed_pe:
                hk, wk = -(-h // stride), -(-w // stride)
                self.rpe_table = nn.Parameter(torch.zeros(num_heads, h * w, hk * wk))
                nn.init.trunc_normal_(self.rpe_table, std=0.01)
            else:
                self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * h - 1, 2 * w - 1))
                nn.init.trunc_normal_(self.rpe_table, std=0.01)

    def sampling_points(self, q: torch.Tensor) -> SamplingPoints:
        """Deformed positions ``(B*G, Hk, Wk, 2)`` and references (y, x) from the queries ``(B, C, H, W)``."""
        b = q.shape[0]
        offset = self._offsets(q)  # B*G, 2, Hk, Wk
        hk, wk = offset.shape[2:]
        if self.offset_range_factor > 0:
            # As the official code: [1/Hk, 1/Wk] rounded to float32, also in float64 runs.
            offset_range = torch.tensor([1.0 / hk, 1.0 / wk], device=q.device).to(offset.dtype).view(1, 2, 1, 1)
            offset = offset.tanh() * offset_range * self.offset_range_factor
        offset = offset.permute(0, 2, 3, 1)  # B*G, Hk, Wk, 2
        ref = reference_points(hk, wk, b * self.num_groups, q.dtype, q.device)
        if self.no_offset:
            offset = torch.zeros_like(offset)
        if self.offset_range_factor >= 0:
            pos = offset + ref
        else:
            pos = torch.tanh(offset + ref)
        return SamplingPoints(pos, ref)

    def _offsets(self, q: torch.Tensor) -> torch.Tensor:
        """``conv_offset`` on each group's query channels: ``(B, C, H, W)`` -> ``(B*G, 2, Hk, Wk)``; when training
        (without autocast) through :class:`_OffsetNetwork`, which keeps only ``q`` for backward."""
        conv, norm, _, pw = self.conv_offset
        plain = (
            not torch.is_grad_enabled()
            or torch.is_autocast_enabled(q.device.type)
            or getattr(norm, "_fast_norm", False)
            or not any(t.requires_grad for t in (q, *self.conv_offset.parameters()))
        )
        if plain:
            return self.conv_offset(q.reshape(q.shape[0] * self.num_groups, self.group_dim, *q.shape[2:]))
        stride, padding = conv.stride[0], conv.padding[0]
        return _OffsetNetwork.apply(
            q, conv.weight, conv.bias, norm.weight, norm.bias, pw.weight, self.num_groups, stride, padding, norm.eps
        )

    def position_bias(self, pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Deformable relative position bias ``(B*heads, H*W, Ns)`` for positions ``(B*G, Hk, Wk, 2)``.

        The displacement from each query to each sampled key, halved so that it spans [-1, 1], reads
        the table of its group's heads bilinearly.
        """
        bias = _position_bias(self.rpe_table, pos, height, width, self.num_groups)  # B*G, heads/G, HW, Ns
        b = pos.shape[0] // self.num_groups
        return bias.reshape(b * self.num_heads, height * width, -1)

    def _plain_bias(self, height: int, width: int) -> torch.Tensor | None:
        """The bias that is not the deformable position bias: the ``fixed_pe`` table (at ``fmap_size`` only)."""
        if self.rpe_table is None or self.dwc_pe or not self.fixed_pe:
            return None
        if (height, width) != self.fmap_size:
            raise ValueError(
                f"fixed_pe deformable attention only runs at its construction size {self.fmap_size}, "
                f"got {(height, width)}"
            )
        return self.rpe_table[None]  # 1, heads, HW, Ns: broadcast over the batch (its gradient summed, not copied)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SamplingPoints]:
        b, h, w, c = x.shape
        g, heads, hd = self.num_groups, self.num_heads, self.head_dim
        q = self.proj_q(x)  # B, H, W, C
        points = self.sampling_points(q.permute(0, 3, 1, 2))
        pos = points.positions  # B*G, Hk, Wk, 2
        hk, wk = pos.shape[1:3]
        num_keys = hk * wk

        x = x.permute(0, 3, 1, 2)  # B, C, H, W
        if self.no_offset:
            x_sampled = F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride, ceil_mode=True)
        else:
            x_sampled = F.grid_sample(
                x.reshape(b * g, self.group_dim, h, w),  # the block input, not q
                pos[..., (1, 0)],  # grid_sample wants (x, y)
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )  # B*G, C/G, Hk, Wk
        # one contiguous copy that proj_k and proj_v share (each would otherwise copy and keep its own)
        x_sampled = x_sampled.reshape(b, c, num_keys).transpose(1, 2).contiguous()  # B, Ns, C

        q = q.reshape(b, h * w, heads, hd).transpose(1, 2)  # B, heads, HW, hd
        k = self.proj_k(x_sampled).view(b, num_keys, heads, hd).transpose(1, 2)  # B, heads, Ns, hd
        v = self.proj_v(x_sampled).view(b, num_keys, heads, hd).transpose(1, 2)  # B, heads, Ns, hd

        dropout = self.training and self.attn_drop.p > 0
        deformable_bias = self.rpe_table is not None and not self.dwc_pe and not self.fixed_pe
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, pos, *self.parameters()))
        if self.fused_attn and needs_grad and not dropout and not torch.is_autocast_enabled(x.device.type):
            # Training: keep no probabilities (nor the position bias and its grid) for backward; recompute them.
            if deformable_bias:
                out = _DeformableBiasAttention.apply(q, k, v, self.rpe_table, pos, h, w, g, self.scale)
            else:
                out = softmax_attention(q, k, v, self._plain_bias(h, w), self.scale)
        else:
            bias = self.position_bias(pos, h, w).view(b, heads, h * w, num_keys) if deformable_bias else None
            if bias is None:
                bias = self._plain_bias(h, w)
            if self.fused_attn:  # softmax(q k^T * scale + bias) v (inference, or attention dropout, or autocast)
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
                )  # B, heads, HW, hd
            else:
                logits = q @ k.transpose(-2, -1) * self.scale  # B, heads, HW, Ns
                out = self.attn_drop((logits if bias is None else logits + bias).softmax(-1)) @ v
        out = out.transpose(1, 2).reshape(b, h, w, c)  # B, H, W, C
        if self.rpe_table is not None and self.dwc_pe:  # depthwise-conv position encoding of the queries
            out = out + self.rpe_table(q.transpose(2, 3).reshape(b, c, h, w)).permute(0, 2, 3, 1)
        y = self.proj_drop(self.proj_out(out))
        points = SamplingPoints(pos.reshape(b, g, hk, wk, 2), points.references.reshape(b, g, hk, wk, 2))
        return y, points
