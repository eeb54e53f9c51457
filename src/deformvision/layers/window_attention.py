"""Local window attention and shifted window attention (Swin Transformer, Liu et al., ICCV 2021).

Both work for any feature size: the map is padded at the bottom/right to a multiple of the window,
padded tokens are masked out as keys, and the shift mask is built for the size actually seen, so
no construction-size buffer decides the result. At sizes that are multiples of the window the
output is exactly that of the unpadded Swin/DAT formulation.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from deformvision.layers.linear import Linear
from deformvision.layers.recomputed_attention import qkv_attention

# Added to the attention logits of token pairs in different shift regions (Swin's value). Finite,
# so that a padded query whose window holds only padding still gets a well-defined softmax.
MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index of each (query, key) token pair of a window into a ``(2w-1)^2`` bias table.

    Tokens are row-major in the window. Entry ``[i, j]`` is ``(dy + w - 1) * (2w - 1) + dx + w - 1``
    with ``(dy, dx)`` the displacement from token ``j`` to token ``i``.

    Returns:
        int64 tensor of shape ``(w*w, w*w)``.
    """
    w = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2, w*w
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)  # 2, w*w, w*w
    return rel[0] * (2 * w - 1) + rel[1]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a ``(B, H, W, C)`` map into row-major windows: ``(B * nW, w*w, C)``, tokens row-major."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c)  # B, nH, w, nW, w, C
    x = x.permute(0, 1, 3, 2, 4, 5)  # B, nH, nW, w, w, C
    return x.reshape(-1, ws * ws, c)  # B*nH*nW, w*w, C


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, w*w, C)`` -> ``(B, height, width, C)``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, height // ws, width // ws, ws, ws, c)  # B, nH, nW, w, w, C
    x = x.permute(0, 1, 3, 2, 4, 5)  # B, nH, w, nW, w, C
    return x.reshape(-1, height, width, c)


def window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """Attention mask for a ``height x width`` map padded to a multiple of the window, then shifted.

    Every token of the padded, cyclically shifted map gets a label: Swin's shift region (3 x 3
    regions, slices ``[0:-w]``, ``[-w:-s]``, ``[-s:]`` per axis) combined with whether it is padding.
    Two tokens of a window may attend to each other only when their labels agree, so real queries
    never see padding or tokens wrapped around by the shift.

    Returns:
        ``(nW, w*w, w*w)`` float tensor with 0 (allowed) or ``MASK_VALUE``, windows row-major, or
        ``None`` when nothing needs masking (no shift and no padding).
    """
    ws, s = window_size, shift_size
    padded_h, padded_w = math.ceil(height / ws) * ws, math.ceil(width / ws) * ws
    if s == 0 and (padded_h, padded_w) == (height, width):
        return None
    is_pad = torch.ones(padded_h, padded_w, dtype=torch.long, device=device)
    is_pad[:height, :width] = 0
    labels = is_pad
    if s > 0:
        is_pad = torch.roll(is_pad, shifts=(-s, -s), dims=(0, 1))  # padding in shifted coordinates
        region = torch.zeros(padded_h, padded_w, dtype=torch.long, device=device)
        bounds = ((0, -ws), (-ws, -s), (-s, None))
        for i, (h0, h1) in enumerate(bounds):
            for j, (w0, w1) in enumerate(bounds):
                region[h0:h1, w0:w1] = 3 * i + j
        labels = region * 2 + is_pad
    windows = window_partition(labels[None, :, :, None], ws)[..., 0]  # nW, w*w
    different = windows[:, :, None] != windows[:, None, :]  # nW, w*w, w*w
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``w x w`` windows, with relative position bias.

    With ``shift_size > 0`` the map is cyclically shifted by ``(-shift_size, -shift_size)`` before the
    window partition and shifted back afterwards, with a mask that keeps attention inside each
    original region (Swin's SW-MSA; DAT's ``S`` block uses ``shift_size = ceil(w / 2)``).

    Any ``H x W`` is accepted: the map is padded to a multiple of ``w`` and padded keys are masked.

    Args:
        dim: channels ``C``.
        num_heads: attention heads; ``C`` must be divisible by it.
        window_size: window side ``w``.
        shift_size: cyclic shift ``s`` (0 for plain window attention); ``0 <= s < w``.
        attn_drop: dropout on the attention probabilities.
        proj_drop: dropout after the output projection.

    Shape:
        - Input: ``(B, H, W, C)`` (channels last)
        - Output: ``(B, H, W, C)``
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        # Fused attention (used where no gradient reaches the bias) keeps no probabilities; with ``fused_attn =
        # False`` they are computed explicitly and pass through ``attn_drop``, where a hook can read them
        # (layers/inspection.py), as in timm.
        self.fused_attn = True
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        """The ``(heads, w*w, w*w)`` bias added to the attention logits of every window."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # w^4, heads
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))  # B, Hp, Wp, C
        padded_h, padded_w = x.shape[1:3]
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))

        windows = window_partition(x, ws)  # B*nW, N, C with N = w*w
        n, heads = windows.shape[1], self.num_heads
        qkv = self.qkv(windows)  # B*nW, N, 3C
        bias = self.relative_position_bias()[None]  # 1, heads, N, N
        mask = window_attention_mask(h, w, ws, s, device=x.device)
        dropout = self.training and self.attn_drop.p > 0
        needs_grad = torch.is_grad_enabled() and (qkv.requires_grad or bias.requires_grad)
        if self.fused_attn and needs_grad and not dropout and not torch.is_autocast_enabled(x.device.type):
            # Training: keep neither the probabilities nor qkv for backward; both are recomputed from the windows,
            # which self.qkv keeps anyway. The windows are split off the batch so that the per-window mask
            # broadcasts: (B, nW, heads, N, N) logits.
            if mask is not None:
                bias = bias[0] + mask.to(bias.dtype)[:, None]  # nW, heads, N, N
            out = qkv_attention(qkv, windows, self.qkv.weight, self.qkv.bias, bias, self.scale, b, heads)  # B*nW, N, C
        else:
            q, k, v = qkv.view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)  # B*nW, heads, N, hd
            if mask is not None:
                # Fold the windows into the head dimension so that the per-window mask broadcasts over the
                # batch: (B, nW * heads, N, *) with a (1, nW * heads, N, N) bias.
                num_windows = mask.shape[0]
                q, k, v = (t.reshape(b, num_windows * heads, n, -1) for t in (q, k, v))
                bias = (bias + mask.to(bias.dtype)[:, None]).reshape(1, num_windows * heads, n, n)
            # softmax(q k^T * scale + bias) v. When the bias needs a gradient (training under autocast or with
            # attention dropout), SDPA on CPU falls back to its math kernel, which keeps as much as the explicit
            # form but is slower (~8% on DAT-T's first stage): the explicit form is used then.
            if self.fused_attn and not (torch.is_grad_enabled() and bias.requires_grad):
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
                )
            else:
                out = self.attn_drop((q @ k.transpose(-2, -1) * self.scale + bias).softmax(-1)) @ v
            out = out.reshape(-1, heads, n, c // heads).transpose(1, 2).reshape(-1, n, c)  # B*nW, N, C
        out = self.proj_drop(self.proj(out))

        x = window_reverse(out, ws, padded_h, padded_w)  # B, Hp, Wp, C
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x[:, :h, :w]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}"
