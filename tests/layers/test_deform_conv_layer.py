"""Tests for deformvision.layers.deform_conv: DeformConv2d and DeformConv2dPack."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deformvision.layers.deform_conv import DeformConv2d, DeformConv2dPack
from deformvision.ops.deform_conv import deform_conv2d

# Keyword arguments shared by nn.Conv2d and both layers: groups, non-square kernel, stride, dilation.
CONV_KWARGS = {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}


def test_deform_conv2d_init_matches_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **CONV_KWARGS)
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, **CONV_KWARGS)
    torch.testing.assert_close(layer.weight, conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias, conv.bias, rtol=0, atol=0)
    assert DeformConv2d(4, 6, 3, bias=False).bias is None


@pytest.mark.parametrize("use_mask", [False, True])
def test_deform_conv2d_forward_is_the_op(use_mask):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, **CONV_KWARGS).double()
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    offset = torch.randn(2, 2 * 2 * 6, 4, 9, dtype=torch.float64)  # offset_groups = 2
    mask = torch.rand(2, 2 * 6, 4, 9, dtype=torch.float64) if use_mask else None
    expected = deform_conv2d(x, offset, layer.weight, layer.bias, (2, 1), (1, 2), (1, 2), mask)
    torch.testing.assert_close(layer(x, offset, mask), expected, rtol=0, atol=0)


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_conv2d_init_is_plain_conv(modulated):
    """Zero offsets at init; the modulated layer's mask is sigmoid(0) = 0.5 on every tap."""
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, offset_groups=2, modulated=modulated, **CONV_KWARGS).double()
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    scale = 0.5 if modulated else 1.0
    expected = F.conv2d(x, scale * layer.weight, layer.bias, (2, 1), (1, 2), (1, 2), groups=2)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_conv2d_state_dict(modulated):
    layer = DeformConv2dPack(4, 6, 3, offset_groups=2, modulated=modulated)
    shapes = {name: tuple(value.shape) for name, value in layer.state_dict().items()}
    predicted = (3 if modulated else 2) * 2 * 9
    assert shapes == {
        "weight": (6, 4, 3, 3),
        "bias": (6,),
        "conv_offset.weight": (predicted, 4, 3, 3),
        "conv_offset.bias": (predicted,),
    }
    assert "bias" not in DeformConv2dPack(4, 6, 3, bias=False).state_dict()


def test_deformable_conv2d_loads_conv2d_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = DeformConv2dPack(4, 6, 3, padding=1, modulated=False)
    result = layer.load_state_dict(conv.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["conv_offset.bias", "conv_offset.weight"]
    assert result.unexpected_keys == []
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_conv2d_backward(modulated):
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, 3, padding=1, offset_groups=2, modulated=modulated)
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 6, 7, 6)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        # The zero-initialised offset (and mask) predictor must still receive a gradient.
        assert parameter.grad.abs().sum() > 0, name


def test_deformable_conv2d_uses_predicted_offsets():
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, 3, padding=1, offset_groups=2).double()
    nn.init.normal_(layer.conv_offset.weight, std=0.1)
    x = torch.randn(1, 4, 7, 6, dtype=torch.float64)
    prediction = layer.conv_offset(x)
    offset, mask = prediction[:, :36], prediction[:, 36:].sigmoid()
    expected = deform_conv2d(x, offset, layer.weight, layer.bias, padding=1, mask=mask)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, F.conv2d(x, 0.5 * layer.weight, layer.bias, padding=1))


def test_invalid_groups():
    with pytest.raises(ValueError, match=r"must be divisible by groups \(3\)"):
        DeformConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match=r"in_channels \(4\) must be divisible by offset_groups \(3\)"):
        DeformConv2dPack(4, 6, 3, offset_groups=3)
    with pytest.raises(ValueError, match=r"kernel_size must be an int or a pair"):
        DeformConv2dPack(4, 6, (3, 3, 3))


def test_repr():
    assert repr(DeformConv2d(4, 6, 3, padding=1, bias=False)) == (
        "DeformConv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    )
    assert "offset_groups=2, modulated=True" in repr(DeformConv2dPack(4, 6, 3, offset_groups=2))


def test_deform_conv2d_is_torchvision_compatible():
    """Same init for the same seed, same state-dict keys, each other's state dicts load strictly, same results."""
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(4, 6, **CONV_KWARGS)
    torch.manual_seed(0)
    ours = DeformConv2d(4, 6, **CONV_KWARGS)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    assert list(DeformConv2d(4, 6, 3, bias=False).state_dict()) == ["weight"]

    theirs.double()
    ours = DeformConv2d(4, 6, **CONV_KWARGS).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    offset = torch.randn(2, 2 * 2 * 6, 4, 9, dtype=torch.float64)
    mask = torch.rand(2, 2 * 6, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(ours(x, offset), theirs(x, offset), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours(x, offset, mask=mask), theirs(x, offset, mask=mask), rtol=1e-10, atol=1e-10)
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_deformable_conv2d_scripts():
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)
    nn.init.normal_(layer.conv_offset.weight, std=0.1)
    x = torch.randn(1, 4, 7, 6)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))


def _count_error(bad: object) -> type[Exception]:
    """A channel or group count that is not an int (a float, a bool, a string, None) is a TypeError; an int
    out of range or not dividing the channels is a ValueError."""
    return ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError


LAYER_INVALID = [
    *[("in_channels", bad, _count_error(bad)) for bad in (0, -4, 4.0, True, "4", None)],
    *[("out_channels", bad, _count_error(bad)) for bad in (0, -6, 6.0, None)],
    *[("kernel_size", bad, ValueError) for bad in (0, (3, 0), 1.5, (3, 3, 3), "3")],
    *[("stride", bad, ValueError) for bad in (0, 1.5, (1, 0), True)],
    *[("padding", bad, ValueError) for bad in (-1, (0, -1), 0.5)],
    *[("dilation", bad, ValueError) for bad in (0, (1, -1), 2.0)],
    *[("groups", bad, _count_error(bad)) for bad in (0, -1, 1.0, 3)],  # 3 divides neither 4 nor 6
    *[("bias", bad, TypeError) for bad in (1, "yes", None)],
]
PACK_INVALID = [
    *[("offset_groups", bad, _count_error(bad)) for bad in (0, -2, 2.0, 3)],  # 3 does not divide 4
    *[("modulated", bad, TypeError) for bad in (1, "yes", None)],
]


@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from([(DeformConv2d, *c) for c in LAYER_INVALID] + [(DeformConv2dPack, *c) for c in PACK_INVALID])
)
def test_constructor_rejects_invalid_argument_by_name(case):
    layer_class, name, bad, error = case
    arguments = {"in_channels": 4, "out_channels": 6, "kernel_size": 3, name: bad}
    with pytest.raises(error, match=name):
        layer_class(**arguments)


@settings(max_examples=20, deadline=None)
@given(
    groups=st.sampled_from([1, 2]),
    kernel_size=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
)
def test_valid_constructor_arguments_match_torchvision(groups, kernel_size, stride, padding, dilation, bias):
    """Same seed, same parameters, same output as torchvision.ops.DeformConv2d for every valid combination."""
    arguments = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    torch.manual_seed(0)
    ours = DeformConv2d(4, 6, kernel_size, **arguments).double()
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(4, 6, kernel_size, **arguments).double()
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    k_h, k_w = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
    out_h = (7 + 2 * padding - dilation * (k_h - 1) - 1) // stride + 1
    out_w = (7 + 2 * padding - dilation * (k_w - 1) - 1) // stride + 1
    offset = torch.randn(1, 2 * k_h * k_w, out_h, out_w, dtype=torch.float64)
    torch.testing.assert_close(ours(x, offset), theirs(x, offset), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", [DeformConv2d(4, 6, 3, padding=1), DeformConv2dPack(4, 6, 3, padding=1)])
def test_forward_rejects_bad_input_and_accepts_batch_0(layer):
    offset = (torch.zeros(1, 18, 5, 5),) if isinstance(layer, DeformConv2d) else ()
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        layer([[1.0]], *offset)
    # 8 channels would pass deform_conv2d's own checks as 2 groups of 4: the layer knows it has 4
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4, H, W\), got \(1, 8, 5, 5\)"):
        layer(torch.randn(1, 8, 5, 5), *offset)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4, H, W\), got \(4, 5, 5\)"):
        layer(torch.randn(4, 5, 5), *offset)
    empty_offset = (torch.zeros(0, 18, 5, 5),) if offset else ()
    assert layer(torch.randn(0, 4, 5, 5), *empty_offset).shape == (0, 6, 5, 5)
