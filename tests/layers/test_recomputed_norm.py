"""apply_to_layer_norm: the consumer of a LayerNorm does not keep the normalised tensor; it is recomputed."""

import weakref

import pytest
import torch
from timm.layers import Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from deformvision.layers import apply_to_layer_norm, linear_gelu_linear, recomputed_norm


def _modules():
    torch.manual_seed(0)
    norm = nn.LayerNorm(8).double()
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    return norm, Mlp(8, 16).double()


def _fused_mlp(mlp):
    return lambda y: linear_gelu_linear(y, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)


@pytest.mark.parametrize("fused", [False, True])  # autograd's Linear or a custom Function keeps the normalised tensor
def test_values_and_gradients_equal_the_plain_composition_float64(fused):
    norm, mlp = _modules()
    consumer = _fused_mlp(mlp) if fused else mlp
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    params = [x, *norm.parameters(), *mlp.parameters()]
    out = apply_to_layer_norm(norm, x, consumer)
    ref = consumer(norm(x))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, grad_out)
    for g, g_ref in zip(grads, torch.autograd.grad(ref, params, grad_out), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-15)


def test_gradcheck():
    norm, mlp = _modules()
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_to_layer_norm(norm, t, _fused_mlp(mlp)), (x,))


def test_the_normalised_tensor_is_not_kept():
    norm, mlp = _modules()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)  # nn.Linear keeps a 2-d view of 3-d input
    seen = []

    def consumer(y):
        seen.append(weakref.ref(y))
        return mlp(y)

    out = apply_to_layer_norm(norm, x, consumer)
    assert seen[0]() is None  # nothing holds it after the forward pass
    out.sum().backward()
    kept = consumer(norm(x))
    assert seen[1]() is not None  # the plain composition keeps it (the test can tell)
    del kept


def test_in_place_change_of_the_input_is_an_error():
    norm, mlp = _modules()
    x = torch.randn(4, 8, dtype=torch.float64)
    out = apply_to_layer_norm(norm, x.requires_grad_(), mlp)
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_stays_out_of_activation_checkpointing(monkeypatch):
    """Inside checkpoint's own saved-tensor hooks the plain composition runs (checkpoint owns the saved tensors)."""
    made = []

    class CountingRecipe(recomputed_norm._NormRecipe):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(recomputed_norm, "_NormRecipe", CountingRecipe)
    norm, mlp = _modules()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    apply_to_layer_norm(norm, x, mlp)
    assert len(made) == 1  # outside checkpoint: the recipe replaces the normalised tensor kept by fc1
    out = checkpoint(lambda t: apply_to_layer_norm(norm, t, mlp), x, use_reentrant=False)
    assert len(made) == 1
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (grad_ref,) = torch.autograd.grad(mlp(norm(x)).square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-15)
