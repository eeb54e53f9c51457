"""Property tests: ``deform_conv2d`` equals ``torchvision.ops.deform_conv2d`` in float64 over the argument space.

Random strides, padding, dilation, groups, offset groups, mask or none, integer and fractional offsets (zero
offsets with padding put taps exactly on the y = -1 / x = -1 lines), offsets far outside the image, and
non-finite input pixels, which must reach exactly the outputs torchvision's bilinear reads reach.
"""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from deformvision.ops import deform_conv2d


@st.composite
def conv_case(draw: st.DrawFn) -> dict:
    """Keyword arguments of a valid deform_conv2d call (float64) with the same seed-driven tensors."""
    groups = draw(st.integers(1, 2))
    offset_groups = draw(st.integers(1, 2))
    in_channels = groups * offset_groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    k_h, k_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    height = draw(st.integers(max(1, dilation[0] * (k_h - 1) + 1 - 2 * padding[0]), 5))
    width = draw(st.integers(max(1, dilation[1] * (k_w - 1) + 1 - 2 * padding[1]), 5))
    batch = draw(st.integers(1, 2))
    out_h = (height + 2 * padding[0] - dilation[0] * (k_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (k_w - 1) - 1) // stride[1] + 1
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    offset_kind = draw(st.sampled_from(["zero", "integer", "fractional", "far"]))
    offset = torch.randn(batch, 2 * offset_groups * k_h * k_w, out_h, out_w, generator=g, dtype=torch.float64) * 2
    if offset_kind == "zero":
        offset.zero_()
    elif offset_kind == "integer":
        offset.round_()
    elif offset_kind == "far":
        offset[:, ::3] = 1e6
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(batch, offset_groups * k_h * k_w, out_h, out_w, generator=g, dtype=torch.float64)
    return dict(
        input=torch.randn(batch, in_channels, height, width, generator=g, dtype=torch.float64),
        offset=offset,
        weight=torch.randn(out_channels, in_channels // groups, k_h, k_w, generator=g, dtype=torch.float64),
        bias=torch.randn(out_channels, generator=g, dtype=torch.float64) if draw(st.booleans()) else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        mask=mask,
    )


def forward_backward(fn, case: dict) -> list[torch.Tensor]:
    """[output, grad input, grad offset, grad weight, grad mask (or None)]."""
    names = ["input", "offset", "weight", "mask"]
    leaves = {name: case[name].detach().clone().requires_grad_() for name in names if case[name] is not None}
    output = fn(**{**case, **leaves})
    output.backward(torch.ones_like(output))
    return [output.detach()] + [leaves[name].grad if name in leaves else None for name in names]


@settings(max_examples=40, deadline=None)
@given(case=conv_case())
def test_equals_torchvision_forward_and_gradients(case):
    ours = forward_backward(deform_conv2d, case)
    theirs = forward_backward(torchvision.ops.deform_conv2d, case)
    for name, result, want in zip(["output", "input", "offset", "weight", "mask"], ours, theirs, strict=True):
        torch.testing.assert_close(result, want, rtol=1e-9, atol=1e-9, msg=name)


@settings(max_examples=40, deadline=None)
@given(
    case=conv_case(),
    pixels=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from([float("nan"), float("inf")])), min_size=1, max_size=3
    ),
)
def test_non_finite_pixels_reach_the_outputs_torchvision_reaches(case, pixels):
    """A NaN/inf pixel leaks into no output that torchvision keeps finite, e.g. one whose taps all lie outside."""
    flat = case["input"].view(-1)
    for position, bad in pixels:
        flat[position % flat.numel()] = bad
    ours = deform_conv2d(**case)
    theirs = torchvision.ops.deform_conv2d(**case)
    assert torch.equal(ours.isnan(), theirs.isnan())
    torch.testing.assert_close(ours.nan_to_num(), theirs.nan_to_num(), rtol=1e-9, atol=1e-9)


def test_nan_pixel_does_not_leak_into_taps_outside_the_image():
    """Every tap moved far outside reads zero: the output is the bias although a NaN pixel sits next to the
    row an implementation may clamp such taps to."""
    input = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    input[0, 0, :, 0] = float("nan")  # the whole left column
    offset = torch.zeros(1, 18, 4, 4, dtype=torch.float64)
    offset[:, 1::2] = -100.0  # every dx: far to the left
    bias = torch.tensor([0.25], dtype=torch.float64)
    output = deform_conv2d(input, offset, torch.ones(1, 1, 3, 3, dtype=torch.float64), bias, padding=1)
    torch.testing.assert_close(output, torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64), rtol=0, atol=0)


def test_nan_pixel_on_the_padding_line_reads_zero():
    """Zero offsets and padding 1 put the taps of the first output row on y = -1 exactly (x = -1 for the first
    column): torchvision reads nothing there, so the NaN pixel (0, 0) one step inside must not leak in."""
    input = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    input[0, 0, 0, 0] = float("nan")
    offset = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    output = deform_conv2d(input, offset, torch.ones(1, 1, 1, 1, dtype=torch.float64), padding=1)  # (1, 1, 5, 5)
    expected = torch.nn.functional.pad(input, (1, 1, 1, 1))  # a 1x1 kernel at integer taps copies the input
    assert torch.equal(output.isnan(), expected.isnan())  # only output (1, 1), which reads pixel (0, 0) itself
    torch.testing.assert_close(output.nan_to_num(), expected.nan_to_num(), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_offsets(bad):
    """NaN offsets propagate NaN to the output pixels that use them (and only there); +-inf ones read zero."""
    input = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 4, 4, dtype=torch.float64)
    offset[0, 4, 2, 1] = bad  # dy of tap (0, 2) at output pixel (2, 1)
    output = deform_conv2d(input, offset, weight, bias, padding=1)
    expected = torchvision.ops.deform_conv2d(input, offset.nan_to_num(0.0, 1e9, -1e9), weight, bias, padding=1)
    if bad != bad:  # NaN
        assert output[0, :, 2, 1].isnan().all()
        output[0, :, 2, 1] = 0.0
        expected[0, :, 2, 1] = 0.0
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
