"""deformvision.ops.linear / layers.Linear against float64 ``F.linear`` (values and gradients), the oneDNN
path actually taken where it should be, and the plain path where it must be."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deformvision.layers import Linear
from deformvision.ops import linear, linear_relu_dropout
from deformvision.ops.linear import onednn_available

ACTIVATION = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}


def _ops_called(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {event.name for event in prof.events()}


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, 24, generator=g)
    weight = torch.randn(40, 24, generator=g) / 5
    bias = torch.randn(40, generator=g)
    return x, weight, bias


def test_onednn_is_available_here():
    # the CPU wheels we install are built with oneDNN; if this fails every other test only checks F.linear
    assert onednn_available()


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_match_float64(activation, shape, with_bias):
    x, weight, bias = _inputs(shape)
    bias = bias if with_bias else None
    grad = torch.randn(*shape, 40, generator=torch.Generator().manual_seed(1))
    ours = [t.clone().requires_grad_() for t in (x, weight)] + ([bias.clone().requires_grad_()] if with_bias else [])
    out = linear(ours[0], ours[1], ours[2] if with_bias else None, activation)
    out.backward(grad)
    ref = [t.double().requires_grad_() for t in (x, weight)] + ([bias.double().requires_grad_()] if with_bias else [])
    ref_out = ACTIVATION[activation](F.linear(ref[0], ref[1], ref[2] if with_bias else None))
    ref_out.backward(grad.double())
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for t, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_the_onednn_op_runs_for_float32_cpu(grad):
    x, weight, bias = _inputs((3, 5))
    weight.requires_grad_(grad)
    assert "mkldnn::_linear_pointwise" in _ops_called(lambda: linear(x, weight, bias, "relu"))


def test_non_contiguous_input_and_transposed_weight():
    x, weight, bias = _inputs((6, 5))
    x_t = x.transpose(0, 1)  # (5, 6, 24), not contiguous
    w_t = weight.t().contiguous().t()  # same values, column-major
    torch.testing.assert_close(linear(x_t, w_t, bias), F.linear(x_t.double(), weight.double(), bias.double()).float())


def test_plain_path_under_flop_counting_autocast_and_other_dtypes():
    x, weight, bias = _inputs((4,))
    with FlopCounterMode(display=False) as counter:
        linear(x, weight, bias)
    assert counter.get_total_flops() == 2 * 4 * 24 * 40  # counted as aten.addmm: the oneDNN op is invisible to it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, weight, bias).dtype == torch.bfloat16  # autocast's cast, as F.linear
    called = _ops_called(lambda: linear(x.double(), weight.double(), bias.double()))
    assert "mkldnn::_linear_pointwise" not in called and "aten::addmm" in called


def test_bad_arguments():
    x, weight, bias = _inputs((3,))
    with pytest.raises(ValueError, match="activation must be one of none, relu, gelu, got 'tanh'"):
        linear(x, weight, bias, "tanh")
    with pytest.raises(ValueError, match=r"x \(3, 24\) and weight \(40, 23\) do not fit"):
        linear(x, weight[:, :23], bias)


def test_linear_module_is_a_drop_in_nn_linear():
    torch.manual_seed(0)
    ours = Linear(24, 40)
    torch.manual_seed(0)
    theirs = nn.Linear(24, 40)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    torch.testing.assert_close(ours.weight, theirs.weight)  # same initialisation
    x = _inputs((2, 3))[0]
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the oneDNN path and the plain one
def test_linear_relu_dropout_is_relu_then_dropout_with_the_drawn_mask(dtype):
    x, weight, bias = (t.to(dtype) for t in _inputs((50, 3)))
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    torch.manual_seed(7)
    out = linear_relu_dropout(*leaves, 0.3)
    grad = torch.randn(out.shape, dtype=dtype)
    out.backward(grad)
    torch.manual_seed(7)
    keep = torch.rand(out.shape, dtype=dtype) >= 0.3  # the same draw (the mask is drawn after the product)
    ref = [t.double().requires_grad_() for t in (x, weight, bias)]
    ref_out = F.relu(F.linear(*ref)) * keep / 0.7
    ref_out.backward(grad.double())
    assert 0.2 < 1 - keep.double().mean() < 0.4
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for t, r in zip(leaves, ref, strict=True):
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-5, atol=1e-4)


def test_linear_relu_dropout_keeps_no_mask_for_backward():
    x, weight, bias = (t.requires_grad_() for t in _inputs((64, 4)))
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_relu_dropout(x, weight, bias, 0.1)
    assert sorted(saved) == sorted([x.shape, weight.shape, torch.Size([64, 4, 40])])  # x, weight, the output


def test_linear_relu_dropout_p_zero_and_bad_p():
    x, weight, bias = _inputs((5,))
    torch.testing.assert_close(linear_relu_dropout(x, weight, bias, 0.0), F.relu(F.linear(x, weight, bias)))
    for p in (1.0, -0.5, True):
        with pytest.raises(ValueError, match=r"p must be a dropout probability in \[0, 1\)"):
            linear_relu_dropout(x, weight, bias, p)
