"""Window and shifted-window attention at any size, against a per-token loop of Swin's definition."""

import math

import pytest
import torch

from deformvision.layers import WindowAttention
from deformvision.layers.window_attention import relative_position_index, window_attention_mask


def naive_window_attention(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Swin's (shifted) window attention written token by token, in the input's own coordinates.

    The map is conceptually padded to a multiple of ``w`` (``Hp x Wp``) and rolled by ``-s``. A real
    query at (i, j) sits at rolled position ((i - s) mod Hp, (j - s) mod Wp); it attends to the real
    tokens of the same rolled window that lie in the same shift region, with the relative position
    bias of their rolled in-window displacement.
    """
    b, h, w, c = x.shape
    ws, s, heads = attn.window_size, attn.shift_size, attn.num_heads
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws

    def region(r: int, size: int) -> int:  # Swin's three slices per axis, in rolled coordinates
        if s == 0:
            return 0
        return 0 if r < size - ws else (1 if r < size - s else 2)

    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    q = q * attn.scale
    table = attn.relative_position_bias_table  # (2w-1)^2, heads
    out = torch.zeros(b, h, w, c, dtype=x.dtype)
    rolled = {(i, j): ((i - s) % hp, (j - s) % wp) for i in range(h) for j in range(w)}
    for (i, j), (ri, rj) in rolled.items():
        keys = [
            (ki, kj)
            for (ki, kj), (rki, rkj) in rolled.items()
            if (rki // ws, rkj // ws) == (ri // ws, rj // ws)
            and (region(rki, hp), region(rkj, wp)) == (region(ri, hp), region(rj, wp))
        ]
        bias = torch.stack(
            [
                table[(ri % ws - rolled[kk][0] % ws + ws - 1) * (2 * ws - 1) + rj % ws - rolled[kk][1] % ws + ws - 1]
                for kk in keys
            ]
        )  # n_keys, heads
        kk = torch.stack([k[:, a, bb] for a, bb in keys], dim=1).view(b, len(keys), heads, -1)
        vv = torch.stack([v[:, a, bb] for a, bb in keys], dim=1).view(b, len(keys), heads, -1)
        qq = q[:, i, j].view(b, heads, -1)
        logits = torch.einsum("bhd,bnhd->bhn", qq, kk) + bias.T[None]
        out[:, i, j] = torch.einsum("bhn,bnhd->bhd", logits.softmax(-1), vv).reshape(b, c)
    return attn.proj(out)


@pytest.mark.parametrize(
    "window, shift, size",
    [(3, 0, (6, 9)), (3, 0, (7, 5)), (4, 2, (8, 8)), (3, 2, (6, 6)), (3, 2, (7, 8)), (4, 2, (5, 10)), (3, 2, (2, 2))],
)
def test_matches_naive_definition(window, shift, size):
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=window, shift_size=shift).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
        attn.qkv.bias.normal_()  # padded zeros get non-zero keys: they must still be masked
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), naive_window_attention(attn, x), atol=1e-12, rtol=0)


def test_relative_position_index_is_swin_layout():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9)
    assert idx.diagonal().unique().tolist() == [(3 - 1) * 5 + 3 - 1]  # zero displacement: centre of table
    assert idx[0, 8] == 0 and idx[8, 0] == 24  # (dy, dx) = (-2, -2) and (+2, +2)


def test_mask_is_none_without_shift_or_padding():
    assert window_attention_mask(8, 8, 4, 0) is None
    assert window_attention_mask(9, 8, 4, 0) is not None


def test_any_size_runs_and_backpropagates():
    attn = WindowAttention(dim=16, num_heads=4, window_size=7, shift_size=4)
    for size in [(3, 5), (7, 7), (13, 20), (28, 28)]:
        x = torch.randn(2, *size, 16, requires_grad=True)
        y = attn(x)
        assert y.shape == x.shape
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WindowAttention(dim=10, num_heads=3, window_size=7)
    with pytest.raises(ValueError, match="shift_size"):
        WindowAttention(dim=8, num_heads=2, window_size=4, shift_size=4)


@pytest.mark.parametrize("window, shift, size", [(3, 0, (6, 9)), (3, 2, (7, 8))])
def test_training_path_values_and_gradients_match_naive_definition(window, shift, size):
    """With a gradient flowing into the bias table the explicit softmax runs instead of SDPA: same numbers."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=window, shift_size=shift).double().train()
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    params = list(attn.parameters())
    out = attn(x)
    grads = torch.autograd.grad(out.square().sum(), params)
    ref = naive_window_attention(attn, x)
    grads_ref = torch.autograd.grad(ref.square().sum(), params)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-10)
