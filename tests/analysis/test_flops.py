"""Parameter and multiply-add counting: analytic formulas per op, the DAT models, the published counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deformvision as dv
from deformvision.analysis import CATEGORIES, count_macs, count_parameters
from deformvision.layers import DeformableAttention


def narrow_dat() -> nn.Module:
    """DAT-T's heads, groups and block kinds (L/S and L/D stages), narrow and shallow."""
    spec = (("L", "S"), ("L", "S"), ("L", "D"), ("L", "D"))
    return dv.create_model("dat_tiny", dims=(24, 48, 96, 192), depths=(2, 2, 2, 2), stage_spec=spec)


class GridSample(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=self.mode, align_corners=True)


class BatchedMatmul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def only(category: str, macs: int) -> dict[str, int]:
    return {name: macs if name == category else 0 for name in CATEGORIES}


def test_count_parameters_is_sum_of_numel_with_shared_counted_once():
    shared = nn.Linear(5, 5)
    model = nn.Sequential(shared, nn.Conv2d(3, 4, 3), shared)
    assert count_parameters(model) == 5 * 5 + 5 + 4 * 3 * 9 + 4


def test_count_parameters_of_a_deformable_attention_by_hand_frozen_ones_included():
    # no_offset freezes the offset network: its parameters still count
    dim, heads, groups, (h, w), k = 12, 4, 2, (5, 7), 3
    layer = DeformableAttention(dim, heads, groups, (h, w), offset_kernel_size=k, no_offset=True, use_pe=False)
    gc = dim // groups
    offset_net = (gc * k * k + gc) + 2 * gc + gc * 2  # depthwise conv + bias, LayerNorm2d, 1x1 conv without bias
    assert count_parameters(layer) == offset_net + 4 * (dim * dim + dim)  # + q, k, v, out projections
    with_table = DeformableAttention(dim, heads, groups, (h, w), offset_kernel_size=k)
    assert count_parameters(with_table) == offset_net + 4 * (dim * dim + dim) + heads * (2 * h - 1) * (2 * w - 1)


def test_linear_macs():
    report = count_macs(nn.Linear(16, 8), (2, 5, 16))  # any leading dims; the bias is not counted
    assert report.total == 2 * 5 * 16 * 8
    assert report.categories == only("linear", 2 * 5 * 16 * 8)


def test_conv_macs():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
    report = count_macs(conv, (2, 4, 9, 11))
    out_h, out_w = (9 + 2 - 3) // 2 + 1, (11 + 2 - 3) // 2 + 1
    expected = 2 * 6 * out_h * out_w * (4 // 2) * 3 * 3  # N * C_out * H_out * W_out * C_in/groups * k * k
    assert report.total == expected
    assert report.categories == only("conv", expected)


def test_batched_matmul_macs():
    report = count_macs(BatchedMatmul(), (torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 5, 6)))
    assert report.categories == only("matmul", 2 * 3 * 4 * 5 * 6)


@pytest.mark.parametrize(("mode", "macs_per_element"), [("bilinear", 4), ("bicubic", 16), ("nearest", 0)])
def test_grid_sample_macs(mode, macs_per_element):
    x, grid = torch.zeros(2, 3, 5, 6), torch.zeros(2, 4, 7, 2)
    report = count_macs(GridSample(mode), (x, grid))
    assert report.categories == only("sampling", macs_per_element * 2 * 3 * 4 * 7)  # per (N, C, H_out, W_out)


def test_input_forms_agree_and_training_mode_is_restored():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).train()
    by_shape = count_macs(model, (2, 3, 6, 6))
    assert count_macs(model, torch.randn(2, 3, 6, 6)) == by_shape
    assert count_macs(model, [torch.randn(2, 3, 6, 6)]) == by_shape
    assert by_shape.total == 2 * 8 * 4 * 4 * 3 * 9 + 2 * 128 * 10
    assert model.training


def test_dat_sampling_macs_follow_the_formula_and_meta_counts_equal_cpu():
    model = narrow_dat()
    size = 64
    expected_sampling = 0
    for stage_index, stage in enumerate(model.stages):
        side = size // (4 * 2**stage_index)
        for block in stage.blocks:
            if isinstance(block.attn, DeformableAttention):
                keys = side * side  # reference stride 1: one key per query position
                channels = block.attn.num_heads * block.attn.head_dim
                features = 4 * channels * keys  # the block input at the deformed points
                position_bias = 4 * block.attn.num_heads * side * side * keys  # table read per (head, query, key)
                expected_sampling += features + position_bias

    report = count_macs(model, (1, 3, size, size))
    assert report.categories["sampling"] == expected_sampling
    assert report.total == sum(report.categories.values())
    assert all(report.categories[name] > 0 for name in CATEGORIES)
    assert count_macs(model.to("meta"), (1, 3, size, size)) == report


@pytest.mark.skipif(
    not hasattr(torch.ops.deformvision, "ms_deform_attn"), reason="torch.ops.deformvision.ms_deform_attn not registered"
)
def test_ms_deform_attn_macs():
    n, lq, heads, head_dim, points = 2, 5, 2, 8, 4
    shapes = torch.tensor([[6, 4], [3, 2]])
    start = torch.tensor([0, 24])
    value = torch.zeros(n, 30, heads, head_dim)
    locations = torch.rand(n, lq, heads, 2, points, 2)
    weights = torch.rand(n, lq, heads, 2, points)

    class MSDA(nn.Module):
        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return torch.ops.deformvision.ms_deform_attn(*args)

    report = count_macs(MSDA(), (value, shapes, start, locations, weights))
    assert report.categories == only("sampling", 5 * n * lq * heads * 2 * points * head_dim)


def test_dat_tiny_matches_the_published_counts():
    model = dv.create_model("dat_tiny")
    assert count_parameters(model) == 28_319_138
    report = count_macs(model.to("meta"), (1, 3, 224, 224))
    dense = report.total - report.categories["sampling"]
    assert math.isclose(report.total / 1e9, 4.56, rel_tol=0.03)  # official count 4.56, paper 4.6
    assert round(dense / 1e9, 2) == 4.56  # the official count: PyTorch's (conv, linear, matmul) / 2
