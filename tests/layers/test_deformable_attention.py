"""DAT's deformable attention layer: offsets, reference grid, ablation switches, gradients."""

import pytest
import torch
from saved_bytes import saved_bytes

from deformvision.layers import DeformableAttention, reference_points


def make(**kwargs) -> DeformableAttention:
    torch.manual_seed(0)
    args = dict(dim=16, num_heads=4, num_groups=2, fmap_size=(6, 6), offset_kernel_size=5)
    return DeformableAttention(**{**args, **kwargs})


def test_reference_points_are_cell_centres():
    ref = reference_points(2, 4, batch=1, dtype=torch.float64, device=torch.device("cpu"))
    assert ref.shape == (1, 2, 4, 2)
    torch.testing.assert_close(ref[0, :, 0, 0], torch.tensor([-0.5, 0.5], dtype=torch.float64))  # y
    torch.testing.assert_close(ref[0, 0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64))


def test_offsets_are_bounded_by_range_factor():
    attn = make(offset_range_factor=2.0)
    with torch.no_grad():
        attn.conv_offset[3].weight.mul_(100)  # saturate tanh
        _, points = attn(torch.randn(2, 6, 4, 16))
    delta = points.positions - points.references
    assert delta.shape == (2, 2, 6, 4, 2)
    assert delta[..., 0].abs().max() <= 2 / 6 + 1e-6 and delta[..., 1].abs().max() <= 2 / 4 + 1e-6
    assert delta[..., 0].abs().max() > 0.9 * 2 / 6  # saturated: the bound is reached


def test_zero_offset_network_samples_the_reference_grid():
    attn = make()
    with torch.no_grad():
        attn.conv_offset[3].weight.zero_()
        _, points = attn(torch.randn(1, 6, 6, 16))
    torch.testing.assert_close(points.positions, points.references, atol=0, rtol=0)


def test_runs_at_sizes_other_than_construction():
    attn = make()
    for size in [(3, 3), (6, 6), (9, 13)]:
        y, points = attn(torch.randn(2, *size, 16))
        assert y.shape == (2, *size, 16) and points.positions.shape == (2, 2, *size, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dwc_pe=True),
        dict(use_pe=False),
        dict(no_offset=True, stride=2),
        dict(offset_range_factor=-1),
        dict(stride=2, offset_kernel_size=3),
        dict(fixed_pe=True),
    ],
)
def test_ablation_switches_run_and_backpropagate(kwargs):
    attn = make(**kwargs)
    x = torch.randn(2, 6, 6, 16, requires_grad=True)
    y, points = attn(x)
    y.square().sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()
    if kwargs.get("no_offset"):
        torch.testing.assert_close(points.positions, points.references)
        assert points.positions.shape[2:4] == (3, 3)  # stride 2 key grid


def test_fixed_pe_only_at_construction_size():
    with pytest.raises(ValueError, match="construction size"):
        make(fixed_pe=True)(torch.randn(1, 5, 6, 16))


def test_gradcheck_float64():
    attn = make(dim=8, num_heads=2, num_groups=2, fmap_size=(3, 3), offset_kernel_size=3).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(1, 3, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t)[0], (x,), eps=1e-6, atol=1e-5)


def test_rejects_indivisible_heads_and_groups():
    with pytest.raises(ValueError, match="divisible"):
        make(num_heads=3)


def _training_step_grads(attn: DeformableAttention, x: torch.Tensor) -> list[torch.Tensor]:
    y, points = attn(x)
    loss = y.square().sum() + points.positions.sin().sum()  # gradients also reach the offsets through pos
    return torch.autograd.grad(loss, [x, *attn.parameters()], allow_unused=True)


@pytest.mark.parametrize("kwargs", [{}, dict(stride=2, offset_kernel_size=4), dict(fixed_pe=True), dict(use_pe=False)])
def test_recomputing_training_path_matches_autograd_composition_float64(kwargs, monkeypatch):
    """The training path (offset network, position bias and probabilities recomputed in backward) against autograd
    through the module's plain ops: the ``conv_offset`` modules and the explicit softmax (``fused_attn = False``)."""
    attn = make(**kwargs).double().train()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 6, 6, 16, dtype=torch.float64, requires_grad=True)
    y = attn(x)[0]
    grads = _training_step_grads(attn, x)
    plain_offsets = lambda self, q: self.conv_offset(q.reshape(q.shape[0] * self.num_groups, -1, *q.shape[2:]))  # noqa: E731
    monkeypatch.setattr(DeformableAttention, "_offsets", plain_offsets)
    attn.fused_attn = False
    torch.testing.assert_close(attn(x)[0], y, rtol=0, atol=1e-13)
    for g, g_ref in zip(grads, _training_step_grads(attn, x), strict=True):
        if g_ref is None:
            assert g is None
        else:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_recomputing_training_path_keeps_less(monkeypatch):
    attn = make()
    x = torch.randn(2, 6, 6, 16, requires_grad=True)

    recomputed = saved_bytes(lambda: attn(x))
    attn.fused_attn = False  # the explicit softmax path (the offset network still recomputes)
    probs_and_bias_grid = 2 * 4 * 36 * 36 * 4 + 2 * 2 * 36 * 36 * 2 * 4  # B*heads*HW*Ns, B*G*HW*Ns*2 floats
    explicit = saved_bytes(lambda: attn(x))
    assert explicit - recomputed >= probs_and_bias_grid
    plain_offsets = lambda self, q: self.conv_offset(q.reshape(q.shape[0] * self.num_groups, -1, *q.shape[2:]))  # noqa: E731
    monkeypatch.setattr(DeformableAttention, "_offsets", plain_offsets)
    offset_net_hidden = 3 * 2 * 2 * 8 * 36 * 4  # at least three of: grouped q, conv, norm, GELU outputs (B*G*C/G*HW)
    assert saved_bytes(lambda: attn(x)) - explicit >= offset_net_hidden


def test_fixed_pe_training_path_matches_the_explicit_softmax_float64():
    """The recomputing training path gets the fixed table's gradient summed over the batch (a broadcast bias), equal to
    autograd through the explicit softmax."""
    torch.manual_seed(0)
    attn = make(fixed_pe=True).double().train()
    x = torch.randn(2, 6, 6, 16, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        attn.fused_attn = fused
        attn.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        attn(xi)[0].square().sum().backward()
        grads.append((xi.grad, attn.rpe_table.grad))
    for recomputed, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, explicit, rtol=1e-10, atol=1e-12)
