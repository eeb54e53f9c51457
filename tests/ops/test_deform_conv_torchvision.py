"""deformvision.ops.deform_conv2d as a drop-in peer of torchvision.ops.deform_conv2d.

Values and gradients against torchvision over the argument space (parametrised cases and a hypothesis
property test), half precision on wide images, TorchScript and torch.fx.
"""

import inspect

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

from deformvision.layers.deform_conv import DeformConv2d
from deformvision.ops.deform_conv import deform_conv2d

F64 = torch.float64


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _make_tensors(config: dict, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """input, offset, weight, bias, mask (float64 draws cast to ``dtype``) for ``config``."""
    generator = torch.Generator().manual_seed(seed)
    batch, in_channels, height, width = config["input"]
    out_channels, k_h, k_w = config["out_channels"], *config["kernel"]
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = config["stride"], config["padding"], config["dilation"]
    out_h, out_w = _out_size(height, k_h, s_h, p_h, d_h), _out_size(width, k_w, s_w, p_w, d_w)
    taps, offset_groups = k_h * k_w, config["offset_groups"]
    offset_shape = (batch, 2 * offset_groups * taps, out_h, out_w)
    if config.get("integer_offsets"):  # samples exactly on pixels: the bilinear kinks
        offset = torch.randint(-2, 3, offset_shape, generator=generator).to(F64)
    else:  # up to a few pixels: many samples land partly or fully outside the image
        offset = config.get("offset_scale", 2.0) * torch.randn(offset_shape, dtype=F64, generator=generator)
    tensors = [
        torch.randn(batch, in_channels, height, width, dtype=F64, generator=generator),
        offset,
        torch.randn(out_channels, in_channels // config["groups"], k_h, k_w, dtype=F64, generator=generator),
        torch.randn(out_channels, dtype=F64, generator=generator),
        torch.rand(batch, offset_groups * taps, out_h, out_w, dtype=F64, generator=generator),
    ]
    return [t.to(dtype) for t in tensors]


def _run(op, tensors: list[torch.Tensor], config: dict, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Output and the gradients of input, offset, weight, bias (and mask) for ``op``."""
    x, offset, weight, bias, mask = [t.clone().requires_grad_() for t in tensors]
    use_mask, use_bias = config["mask"], config.get("bias", True)
    out = op(
        x,
        offset,
        weight,
        bias if use_bias else None,
        config["stride"],
        config["padding"],
        config["dilation"],
        mask if use_mask else None,
    )
    out.backward(grad_out)
    leaves = [x, offset, weight] + ([bias] if use_bias else []) + ([mask] if use_mask else [])
    return [out] + [t.grad for t in leaves]


def _compare_with_torchvision(config: dict, dtype: torch.dtype, tolerance: float, seed: int = 0) -> None:
    tensors = _make_tensors(config, dtype, seed)
    out_shape = torchvision.ops.deform_conv2d(
        *tensors[:3], None, config["stride"], config["padding"], config["dilation"]
    ).shape
    grad_out = torch.randn(out_shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    ours = _run(deform_conv2d, tensors, config, grad_out)
    theirs = _run(torchvision.ops.deform_conv2d, tensors, config, grad_out)
    names = ["output", "grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]
    if not config.get("bias", True):
        names.remove("grad_bias")
    if not config["mask"]:
        names.remove("grad_mask")
    for name, a, b in zip(names, ours, theirs, strict=True):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _config(input, out_channels, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, og=1, **kw):
    return {
        "input": input,
        "out_channels": out_channels,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "offset_groups": og,
        **kw,
    }


CONFIGS = {
    "3x3": _config((2, 3, 7, 8), 4, (3, 3), padding=(1, 1)),
    "1x1": _config((1, 4, 5, 6), 3, (1, 1)),
    "no_bias": _config((1, 3, 6, 6), 2, (3, 3), padding=(1, 1), bias=False),
    "non_square_kernel": _config((2, 2, 8, 7), 3, (3, 2), padding=(1, 0)),
    "wide_kernel": _config((1, 2, 6, 9), 2, (1, 5), padding=(0, 2)),
    "stride2": _config((2, 3, 9, 8), 5, (3, 3), stride=(2, 2), padding=(1, 1)),
    "stride_hw": _config((1, 2, 9, 10), 3, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    "dilation2": _config((1, 2, 10, 9), 3, (3, 3), padding=(2, 2), dilation=(2, 2)),
    "groups2": _config((2, 4, 6, 7), 6, (3, 3), padding=(1, 1), groups=2),
    "groups4_og2": _config((1, 8, 6, 5), 4, (2, 2), padding=(1, 1), groups=4, og=2),
    "og3": _config((3, 6, 9, 10), 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, og=3),
    "depthwise": _config((1, 4, 6, 6), 4, (3, 3), padding=(1, 1), groups=4, og=4),
    "tiny_image": _config((2, 2, 1, 2), 2, (3, 3), padding=(1, 1)),
    "far_offsets": _config((1, 2, 5, 5), 2, (3, 3), padding=(1, 1), offset_scale=6.0),
    "integer_offsets": _config((1, 3, 6, 7), 2, (3, 3), padding=(1, 1), og=3, integer_offsets=True),
}


@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2_mask"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torchvision_float64(name, use_mask):
    _compare_with_torchvision({**CONFIGS[name], "mask": use_mask}, F64, 1e-10)


@pytest.mark.parametrize("use_mask", [False, True], ids=["v1", "v2_mask"])
@pytest.mark.parametrize("name", ["3x3", "og3", "groups4_og2", "far_offsets"])
def test_matches_torchvision_float32(name, use_mask):
    _compare_with_torchvision({**CONFIGS[name], "mask": use_mask}, torch.float32, 1e-5)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    groups=st.integers(1, 2),
    offset_groups=st.sampled_from([1, 2]),
    group_in=st.integers(1, 2),
    group_out=st.integers(1, 2),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    extra=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    use_mask=st.booleans(),
    use_bias=st.booleans(),
    offset_scale=st.sampled_from([0.5, 2.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_torchvision_property(
    batch,
    groups,
    offset_groups,
    group_in,
    group_out,
    kernel,
    stride,
    padding,
    dilation,
    extra,
    use_mask,
    use_bias,
    offset_scale,
    seed,
):
    # Input channels divisible by both groups and offset groups; the image at least one kernel extent
    # (after padding) so that the output is not empty.
    in_channels = groups * offset_groups * group_in
    size = [max(1, dilation[i] * (kernel[i] - 1) + 1 - 2 * padding[i]) + extra[i] for i in range(2)]
    config = _config(
        (batch, in_channels, size[0], size[1]),
        groups * group_out,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        offset_groups,
        mask=use_mask,
        bias=use_bias,
        offset_scale=offset_scale,
    )
    _compare_with_torchvision(config, F64, 1e-10, seed)


def test_signature_matches_torchvision():
    def parameters(fn):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    assert parameters(deform_conv2d) == parameters(torchvision.ops.deform_conv2d)
    assert parameters(DeformConv2d.__init__) == parameters(torchvision.ops.DeformConv2d.__init__)
    assert parameters(DeformConv2d.forward) == parameters(torchvision.ops.DeformConv2d.forward)


# Half precision: a bfloat16 (float16) sample location beyond 256 (2,048) pixels cannot be represented to
# the pixel, so the locations must be computed in float32. One channel, two rows, a 1x3 kernel.
HALF_WIDTHS = {torch.bfloat16: 700, torch.float16: 2600}


def _wide_image_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    width = HALF_WIDTHS[dtype]
    tensors = [
        torch.randn(1, 1, 2, width, generator=generator),  # input
        torch.rand(1, 6, 2, width, generator=generator) * 2 - 1,  # offset in (-1, 1): fractional locations
        torch.randn(1, 1, 1, 3, generator=generator),  # weight
        torch.rand(1, 3, 2, width, generator=generator),  # mask
    ]
    return [t.to(dtype) for t in tensors]  # rounded to the half type once; the references start from these


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_wide_image(dtype):
    x, offset, weight, mask = _wide_image_inputs(dtype)
    out = deform_conv2d(x, offset, weight, padding=(0, 1), mask=mask)
    assert out.dtype == dtype
    reference = deform_conv2d(x.double(), offset.double(), weight.double(), padding=(0, 1), mask=mask.double())
    # Only the final rounding to the half type: relative error 2^-8 (bfloat16) or 2^-11 (float16).
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)
    torchvision_reference = torchvision.ops.deform_conv2d(
        x.double(), offset.double(), weight.double(), padding=(0, 1), mask=mask.double()
    )
    torch.testing.assert_close(reference, torchvision_reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_gradients_match_float32(dtype):
    inputs = _wide_image_inputs(dtype)
    grad_out = torch.randn(1, 1, 2, HALF_WIDTHS[dtype], generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = {}
    for compute in (dtype, torch.float32):
        x, offset, weight, mask = [t.detach().to(compute).requires_grad_() for t in inputs]
        deform_conv2d(x, offset, weight, padding=(0, 1), mask=mask).backward(grad_out.to(compute))
        grads[compute] = [t.grad for t in (x, offset, weight, mask)]
    for name, low, high in zip(["input", "offset", "weight", "mask"], grads[dtype], grads[torch.float32], strict=True):
        assert low.dtype == dtype
        error = (low.float() - high).norm() / high.norm()
        assert error < 1e-2, f"grad of {name}: relative error {error:.3g}"


def _script_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, generator=generator)
    offset = torch.randn(2, 2 * 2 * 6, 4, 8, generator=generator)  # 3x2 kernel, offset_groups = 2
    mask = torch.rand(2, 2 * 6, 4, 8, generator=generator)
    return x, offset, mask


def test_scripted_function_matches_eager():
    scripted = torch.jit.script(deform_conv2d)
    x, offset, mask = _script_inputs()
    weight, bias = torch.randn(6, 2, 3, 2), torch.randn(6)
    for use_mask in (False, True):
        m = mask if use_mask else None
        expected = deform_conv2d(x, offset, weight, bias, (2, 1), (1, 2), (1, 2), m)
        torch.testing.assert_close(scripted(x, offset, weight, bias, (2, 1), (1, 2), (1, 2), m), expected)
    # ints for the pairs, and the argument checks, work in the script too
    offset = offset[:, :, :4, :4]  # (7, 6) -> (4, 4) with stride 2, padding 1
    expected = deform_conv2d(x, offset, weight, None, 2, 1, 1)
    torch.testing.assert_close(scripted(x, offset, weight, None, 2, 1, 1), expected)
    with pytest.raises(torch.jit.Error, match=r"offset.shape\[1\] \(24\) must be a positive multiple of 2 \* kH \* kW"):
        scripted(x, offset, torch.randn(6, 2, 3, 3))


def test_scripted_module_matches_eager():
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    scripted = torch.jit.script(layer)
    x, offset, mask = _script_inputs()
    torch.testing.assert_close(scripted(x, offset), layer(x, offset))
    torch.testing.assert_close(scripted(x, offset, mask), layer(x, offset, mask))
    # the scripted op is differentiable too
    x.requires_grad_()
    scripted(x, offset, mask).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


class _OffsetNet(nn.Module):
    """A regular convolution predicts the offsets of a DeformConv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Conv2d(3, 18, 3, padding=1)
        self.deform = DeformConv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deform(x, self.offset(x)).relu()


def test_fx_leaf():
    model = _OffsetNet()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    # The op is one node (not its argument checks), after the parameters it reads.
    assert train_nodes == ["x", "offset", "deform.deform_weight", "deform.deform_bias", "deform.deform_conv2d", "relu"]

    traced = torch.fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls == [deform_conv2d]
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)

    # Called from a module that does not wrap it (FX patches wrapped names per module), the traced graph
    # holds the op itself: one node, no argument checks.
    def fn(x, offset, weight):
        return deform_conv2d(x, offset, weight, padding=1)

    traced_fn = torch.fx.symbolic_trace(fn)
    assert [node.op for node in traced_fn.graph.nodes] == ["placeholder"] * 3 + ["call_function", "output"]
    offset, weight = torch.randn(2, 18, 6, 5), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(traced_fn(x, offset, weight), fn(x, offset, weight), rtol=0, atol=0)
