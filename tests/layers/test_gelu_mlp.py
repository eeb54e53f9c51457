import pytest
import torch
from saved_bytes import saved_bytes
from timm.layers import Mlp

from deformvision.layers import linear_gelu_linear


@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_timm_mlp_float64(bias):
    torch.manual_seed(0)
    mlp = Mlp(6, 24, 5, bias=bias).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    fc1, fc2 = mlp.fc1, mlp.fc2
    y = linear_gelu_linear(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    grad = torch.randn_like(y)
    params = [p for p in mlp.parameters()]
    grads = torch.autograd.grad(y, [x, *params], grad)
    y_ref = mlp(x_ref)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *params], grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(0)
    args = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in [(3, 4), (5, 4), (5,), (2, 5), (2,)]]
    assert torch.autograd.gradcheck(linear_gelu_linear, args)


def test_keeps_less_for_backward_than_the_plain_composition():
    torch.manual_seed(0)
    mlp = Mlp(8, 32)
    x = torch.randn(64, 8, requires_grad=True)
    plain = saved_bytes(lambda: mlp(x))
    fused = saved_bytes(lambda: linear_gelu_linear(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias))
    hidden_bytes = 64 * 32 * 4
    assert plain - fused >= hidden_bytes  # the GELU output (N, hidden) is no longer kept


def test_rejects_shapes_that_do_not_chain():
    with pytest.raises(ValueError, match=r"shapes do not chain: x \(3, 4\)"):
        linear_gelu_linear(torch.randn(3, 4), torch.randn(5, 6), None, torch.randn(2, 5), None)
