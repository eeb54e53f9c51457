"""Multiply-adds of the Deformable DETR detectors, MSDA sampling included.

PyTorch's counter does not see the bilinear sampling of multi-scale deformable attention; it is counted
through the registered op ``deformvision.ms_deform_attn`` as ``5 * Len_q * heads * levels * points *
head_dim`` per attention layer (4 bilinear taps + 1 attention weighting per channel). Measured at 800x1066
(the ``deformvision flops`` command): multi-scale 166.19 GMACs (conv 74.10, linear 89.56, matmul 0.30,
sampling 2.23), i.e. the official 164.0 GMACs of the counter + 2.2 of sampling; single-scale 76.39 GMACs
(sampling 0.035). The README's 173 G (78 G single-scale) is an average over COCO images of other aspect
ratios, not the count at one size.
"""

import math

import pytest
import torch
from torch import nn

from deformvision.analysis import count_macs
from deformvision.cli import main
from deformvision.models import create_model

HEIGHT, WIDTH = 128, 160
LAYERS, HEADS, POINTS, HEAD_DIM, QUERIES = 6, 8, 4, 32, 300


def msda_macs(levels: int, strides: list[int]) -> int:
    """``layers * Len_q * heads * levels * points * head_dim * 5`` summed over the encoder and the decoder."""
    tokens = sum(math.ceil(HEIGHT / s) * math.ceil(WIDTH / s) for s in strides)  # encoder queries: every token
    per_query = HEADS * levels * POINTS * HEAD_DIM * 5
    return LAYERS * tokens * per_query + LAYERS * QUERIES * per_query


@pytest.mark.parametrize(
    ("name", "levels", "strides"),
    [("deformable_detr_r50", 4, [8, 16, 32, 64]), ("deformable_detr_r50_single_scale", 1, [32])],
)
def test_sampling_macs_match_the_formula_on_cpu_and_meta(name, levels, strides):
    model = create_model(name)
    shape = (1, 3, HEIGHT, WIDTH)
    report = count_macs(model, shape)  # a real forward pass on a zero image
    assert report.categories["sampling"] == msda_macs(levels, strides)
    assert report.total == sum(report.categories.values()) and report.categories["conv"] > 0
    assert count_macs(model.to("meta"), shape) == report  # the flops command counts on the meta device


def test_flops_command_counts_the_detector(capsys):
    assert main(["flops", "deformable_detr_r50", "--input-size", str(HEIGHT), str(WIDTH)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| deformable_detr_r50 "))
    sampling = float(row.strip("| \n").split("|")[-1])
    assert sampling == pytest.approx(msda_macs(4, [8, 16, 32, 64]) / 1e9, abs=1e-3)


class ParameterViewInput(nn.Module):
    """Feeds a view of its own parameter to a submodule, as DETR does with its query embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(3, 8))
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = self.queries.split(4, dim=1)[1]  # made under no_grad: requires grad, has no autograd node
        return self.linear(content[None].expand(x.shape[0], -1, -1)) + x


def test_parameter_views_as_module_inputs_are_counted_and_requires_grad_is_restored():
    model = ParameterViewInput()
    model.linear.bias.requires_grad_(False)
    assert count_macs(model, (2, 3, 2)).total == 2 * 3 * 4 * 2
    assert model.queries.requires_grad and model.linear.weight.requires_grad and not model.linear.bias.requires_grad
