"""Attention collapse: hand-built cases, uniform attention, an independent float64 reference, one entry per block."""

import itertools
import math

import pytest
import timm
import torch
from torch import nn

import deformvision as dv
from deformvision.analysis import AttentionRecord, attention_collapse
from deformvision.analysis.collapse import cross_layer_sum, cross_query_sum

SPEC = (("L", "S"), ("L", "S"), ("L", "D", "L", "D"), ("L", "D"))
DAT_BLOCKS = [f"stages.{i}.blocks.{j}" for i, spec in enumerate(SPEC) for j in range(len(spec))]


def small_dat() -> nn.Module:
    torch.manual_seed(0)
    return dv.create_model("dat_tiny", dims=(24, 48, 96, 192), depths=(2, 2, 4, 2), stage_spec=SPEC, num_classes=5)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=0)


def small_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=56,
        depths=(2, 2, 2, 2),
        embed_dim=24,
        num_heads=(1, 2, 2, 2),
        num_classes=0,
    )


def test_two_queries_hand_built_cosines():
    a, b = [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]  # cos = 0.25 / (sqrt(0.5) * sqrt(0.5)) = 0.5
    record = AttentionRecord("block", "global", torch.tensor([a, b]).view(1, 1, 1, 2, 3))
    total, count = cross_query_sum(record)
    assert count == 2  # (a, b) and (b, a)
    assert total / count == pytest.approx(0.5, abs=1e-12)
    previous = AttentionRecord("prev", "global", torch.tensor([[1.0, 0.0, 0.0], b]).view(1, 1, 1, 2, 3))
    total, count = cross_layer_sum(record, previous)  # query 0: cos(a, e0) = 1/sqrt(2); query 1: cos(b, b) = 1
    assert count == 2
    assert total / count == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-12)


def test_pairs_with_other_keys_or_padding_are_left_out():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).view(1, 1, 1, 3, 2)
    same_keys = torch.ones(1, 3, 3, dtype=torch.bool)
    same_keys[0, 1, :] = same_keys[0, :, 1] = False  # query 1 attends over other keys: only (0, 2) counts
    record = AttentionRecord("w", "window", probs, same_keys=same_keys)
    assert cross_query_sum(record) == (pytest.approx(2.0), 2)
    padded = AttentionRecord("w", "window", probs, real_queries=torch.tensor([[True, True, False]]))
    assert cross_query_sum(padded) == (pytest.approx(0.0), 2)  # only (0, 1), orthogonal


class TokenAttention(nn.Module):
    """Two timm attention blocks on the pixels of an image taken as tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": timm.layers.Attention(dim, num_heads=2)}) for _ in "ab")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # B, H*W, C
        for block in self.blocks:
            x = block["attn"](x)
        return x


def reference_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) softmax(q k^T / sqrt(d)) in float64, from the module's weights."""
    b, n, c = x.shape
    qkv = x.double() @ attn.qkv.weight.double().T  # timm Attention: no qkv bias by default
    q, k, _ = qkv.view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-1, -2) / math.sqrt(c // attn.num_heads)).softmax(-1)


def test_matches_an_independent_float64_computation():
    torch.manual_seed(0)
    model = TokenAttention(8).eval()
    for block in model.blocks:
        nn.init.normal_(block["attn"].qkv.weight, std=0.5)  # peaked, unlike a uniform init
    images = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        x0 = images.flatten(2).transpose(1, 2)
        p0 = reference_probs(model.blocks[0]["attn"], x0)
        p1 = reference_probs(model.blocks[1]["attn"], model.blocks[0]["attn"](x0))

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    cross_query = [
        cos(p1[i, h, q], p1[i, h, r])
        for i, h in itertools.product(range(2), range(2))
        for q, r in itertools.permutations(range(9), 2)
    ]
    cross_layer = [cos(p1[i, h, q], p0[i, h, q]) for i, h, q in itertools.product(range(2), range(2), range(9))]
    result = attention_collapse(model, images, batch_size=1)
    assert list(result) == ["blocks.0", "blocks.1"]
    assert result["blocks.0"]["cross_layer"] is None
    assert result["blocks.1"]["cross_query"] == pytest.approx(sum(cross_query) / len(cross_query), abs=1e-5)
    assert result["blocks.1"]["cross_layer"] == pytest.approx(sum(cross_layer) / len(cross_layer), abs=1e-5)
    assert result["blocks.1"]["cross_query"] < 0.95  # not trivially uniform
    assert all(block["attn"].fused_attn for block in model.blocks)  # restored


def test_uniform_attention_gives_one_on_dat_with_windows_shifts_padding_and_deformable_keys():
    model = small_dat()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(
                (
                    "attn.qkv.weight",
                    "attn.qkv.bias",
                    "proj_q.weight",
                    "proj_q.bias",
                    "rpe_table",
                    "relative_position_bias_table",
                )
            ):
                param.zero_()  # logits 0: uniform over each query's allowed keys
    result = attention_collapse(model, torch.randn(2, 3, 64, 64))  # 16x16 stage-0 map: padded windows
    assert list(result) == DAT_BLOCKS
    for name, entry in result.items():
        assert entry["cross_query"] == pytest.approx(1.0, abs=1e-9), name
        assert entry["cross_layer"] is None or entry["cross_layer"] == pytest.approx(1.0, abs=1e-9), name
    # a block is compared with the previous one of its kind in the stage
    assert [n for n, e in result.items() if e["cross_layer"] is not None] == ["stages.2.blocks.2", "stages.2.blocks.3"]


def test_uniform_attention_gives_one_on_timm_vit():
    model = small_vit()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
    result = attention_collapse(model, torch.randn(3, 3, 32, 32), batch_size=2)
    assert list(result) == ["blocks.0", "blocks.1", "blocks.2"]
    assert result["blocks.0"] == {"cross_query": pytest.approx(1.0, abs=1e-9), "cross_layer": None}
    for name in ("blocks.1", "blocks.2"):
        assert result[name] == {"cross_query": pytest.approx(1.0, abs=1e-9), "cross_layer": pytest.approx(1.0)}


def test_one_entry_per_block_on_timm_swin_and_random_dat():
    swin = small_swin()
    result = attention_collapse(swin, torch.randn(1, 3, 56, 56))
    assert list(result) == [f"layers.{i}.blocks.{j}" for i in range(4) for j in range(2)]
    # shifted (masked) windows are not compared with plain ones; at stage 1 (7x7 map, window 7) timm drops the shift
    assert result["layers.0.blocks.1"]["cross_layer"] is None
    assert result["layers.1.blocks.1"]["cross_layer"] is not None
    dat = attention_collapse(small_dat(), torch.randn(1, 3, 64, 64))
    assert list(dat) == DAT_BLOCKS
    assert all(0.0 < entry["cross_query"] <= 1.0 + 1e-9 for entry in dat.values())


def test_bad_inputs_are_refused():
    model = small_vit()
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        attention_collapse(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images must be a floating-point tensor, got list"):
        attention_collapse(model, [torch.zeros(3, 32, 32)])
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\) batch, got shape \(3, 32, 32\)"):
        attention_collapse(model, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        attention_collapse(model, torch.zeros(1, 3, 32, 32), batch_size=0)
    with pytest.raises(ValueError, match="Sequential has no attention module"):
        attention_collapse(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        attention_collapse("vit", torch.zeros(1, 3, 8, 8))
