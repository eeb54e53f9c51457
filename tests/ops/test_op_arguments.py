"""Argument validation of the two ops at their public boundary, over the argument space (hypothesis).

Every invalid argument raises the documented error type with the argument's name in the message; valid
calls with batch 0 give empty outputs of the right shape (like ``torch.nn.functional.conv2d``).
"""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from deformvision.ops import deform_conv2d, ms_deform_attn


def conv_arguments() -> dict:
    """A valid deform_conv2d call: 4 -> 6 channels, 2 groups, 2 offset groups, 3x3, input 5x5, output 5x5."""
    return {
        "input": torch.randn(2, 4, 5, 5),
        "offset": torch.randn(2, 36, 5, 5),
        "weight": torch.randn(6, 2, 3, 3),
        "bias": torch.randn(6),
        "stride": 1,
        "padding": 1,
        "dilation": 1,
        "mask": torch.rand(2, 18, 5, 5),
    }


NOT_TENSORS = [[1.0, 2.0], 3.0, "tensor", (torch.zeros(1),)]
BAD_INTS = [1.5, 2.0, True, "1", None, (1,), (1, 2, 3), (1, 1.5), [1, True]]
CONV_INVALID = (
    [(name, bad, TypeError) for name in ("input", "offset", "weight") for bad in [*NOT_TENSORS, None]]
    + [(name, bad, TypeError) for name in ("bias", "mask") for bad in NOT_TENSORS]
    + [(name, bad, ValueError) for name in ("stride", "padding", "dilation") for bad in BAD_INTS]
    + [(name, bad, ValueError) for name in ("stride", "dilation") for bad in (0, -1, (1, 0))]
    + [("padding", -1, ValueError), ("padding", (0, -2), ValueError)]
    + [
        ("input", torch.randn(2, 0, 5, 5), ValueError),  # C_in = 0
        ("input", torch.randn(2, 4, 5), ValueError),  # rank
        ("input", torch.ones(2, 4, 5, 5, dtype=torch.int64), ValueError),  # not floating
        ("offset", torch.randn(2, 36, 5, 5, dtype=torch.float64), ValueError),  # dtype mismatch
        ("offset", torch.randn(2, 36, 5, 5, device="meta"), ValueError),  # device mismatch
        ("offset", torch.randn(2, 35, 5, 5), ValueError),  # not a multiple of 2 * kH * kW
        ("weight", torch.randn(6, 3, 3, 3), ValueError),  # groups: 4 input channels, 3 per group
        ("weight", torch.randn(5, 2, 3, 3), ValueError),  # 5 outputs for 2 groups
        ("bias", torch.randn(5), ValueError),
        ("mask", torch.rand(2, 9, 5, 5), ValueError),
    ]
)


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(CONV_INVALID))
def test_deform_conv2d_invalid_argument_is_named(case):
    name, bad, error = case
    arguments = conv_arguments()
    arguments[name] = bad
    if name == "weight":
        arguments["bias"] = None  # else a weight with 5 outputs is reported through the bias of 6
    with pytest.raises(error, match=name):
        deform_conv2d(**arguments)


@settings(max_examples=20, deadline=None)
@given(
    stride=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), min_size=2, max_size=2)),
    dilation=st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))),
)
def test_deform_conv2d_valid_int_or_pair_arguments_match_torchvision(stride, padding, dilation):
    g = torch.Generator().manual_seed(0)
    pair = [v if isinstance(v, (tuple, list)) else (v, v) for v in (stride, padding, dilation)]
    out_size = [(7 + 2 * pair[1][i] - 2 * pair[2][i] - 1) // pair[0][i] + 1 for i in range(2)]
    input = torch.randn(1, 2, 7, 7, generator=g, dtype=torch.float64)
    offset = torch.randn(1, 18, *out_size, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    ours = deform_conv2d(input, offset, weight, stride=stride, padding=padding, dilation=dilation)
    theirs = torchvision.ops.deform_conv2d(
        input, offset, weight, stride=tuple(pair[0]), padding=tuple(pair[1]), dilation=tuple(pair[2])
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_deform_conv2d_batch_0_gives_an_empty_output():
    arguments = conv_arguments()
    for name in ("input", "offset", "mask"):
        arguments[name] = arguments[name][:0].requires_grad_()
    output = deform_conv2d(**arguments)
    assert output.shape == (0, 6, 5, 5)
    output.sum().backward()
    assert arguments["input"].grad.shape == (0, 4, 5, 5) and arguments["offset"].grad.shape == (0, 36, 5, 5)


def msda_arguments() -> dict:
    """A valid ms_deform_attn call: N=2, two levels (3x2, 2x2), Lq=3, M=2, D=4, P=2."""
    return {
        "value": torch.randn(2, 10, 2, 4),
        "spatial_shapes": torch.tensor([[3, 2], [2, 2]]),
        "level_start_index": torch.tensor([0, 6]),
        "sampling_locations": torch.rand(2, 3, 2, 2, 2, 2),
        "attention_weights": torch.rand(2, 3, 2, 2, 2),
    }


MSDA_TENSORS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
MSDA_INVALID = (
    [(name, bad, TypeError) for name in MSDA_TENSORS for bad in [*NOT_TENSORS, None]]
    + [("check_values", bad, TypeError) for bad in ("yes", 1, 0.0)]
    + [("backend", bad, ValueError) for bad in ("gpu", 3, None)]
    + [
        ("value", torch.randn(2, 10, 8), ValueError),  # rank
        ("value", torch.randn(2, 11, 2, 4), ValueError),  # S != sum H * W
        ("value", torch.randn(2, 10, 2, 4, dtype=torch.float64), ValueError),  # dtype mismatch
        ("value", torch.ones(2, 10, 2, 4, dtype=torch.int64), ValueError),  # not floating
        ("spatial_shapes", torch.tensor([[3.0, 2.0], [2.0, 2.0]]), ValueError),
        ("spatial_shapes", torch.tensor([[3, 2, 1], [2, 2, 1]]), ValueError),
        ("spatial_shapes", torch.tensor([[-3, -2], [2, 2]]), ValueError),
        ("level_start_index", torch.tensor([0, 5]), ValueError),
        ("level_start_index", torch.tensor([0]), ValueError),
        ("sampling_locations", torch.rand(2, 3, 2, 2, 2, 3), ValueError),
        ("sampling_locations", torch.rand(2, 3, 2, 3, 2, 2), ValueError),  # L = 3 for 2 levels
        ("sampling_locations", torch.rand(2, 3, 2, 2, 2, 2, device="meta"), ValueError),
        ("attention_weights", torch.rand(2, 3, 2, 2, 3), ValueError),
    ]
)


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(MSDA_INVALID))
def test_ms_deform_attn_invalid_argument_is_named(case):
    name, bad, error = case
    arguments = msda_arguments()
    keywords = {name: bad} if name in ("backend", "check_values") else {}
    if not keywords:
        arguments[name] = bad
    # a level-layout conflict names the tensors that disagree: value's S against spatial_shapes, say
    aliases = {"value": "value|S", "level_start_index": "level_start_index", "attention_weights": "attention_weights"}
    with pytest.raises(error, match=aliases.get(name, name)):
        ms_deform_attn(*arguments.values(), **keywords)


def test_ms_deform_attn_batch_0_gives_an_empty_output():
    arguments = msda_arguments()
    for name in ("value", "sampling_locations", "attention_weights"):
        arguments[name] = arguments[name][:0].requires_grad_()
    output = ms_deform_attn(*arguments.values())
    assert output.shape == (0, 3, 8)
    output.sum().backward()
    assert arguments["value"].grad.shape == (0, 10, 2, 4)
