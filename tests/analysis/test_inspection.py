"""The inspection hooks: explicit attention equals the fused one, records hold the model's own tensors."""

import pytest
import torch
import torch.nn.functional as F

from deformvision.analysis import record_attention, record_msda_sampling
from deformvision.layers import DeformableAttention, MSDeformAttn, WindowAttention


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_explicit_path_equals_fused_and_records_rows(shift):
    torch.manual_seed(0)
    layer = WindowAttention(8, num_heads=2, window_size=4, shift_size=shift).eval()
    x = torch.randn(2, 6, 7, 8)  # padded to 8 x 8: 4 windows
    fused = layer(x)
    with torch.no_grad(), record_attention(layer) as records:
        explicit = layer(x)
    assert layer.fused_attn
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    (record,) = records
    assert record.kind == "window" and record.probs.shape == (2, 4, 2, 16, 16)
    torch.testing.assert_close(record.probs.sum(-1), torch.ones(2, 4, 2, 16))
    # window 0 holds rows 0-3, columns 0-3 of the (shifted) map: all real; the last window has padding
    assert record.real_queries[0].all() and not record.real_queries[-1].all()


def test_deformable_attention_records_probabilities_and_the_forward_points():
    torch.manual_seed(0)
    layer = DeformableAttention(8, num_heads=2, num_groups=2, fmap_size=(6, 6), offset_kernel_size=3).eval()
    x = torch.randn(1, 6, 6, 8)
    fused, points = layer(x)
    with torch.no_grad(), record_attention(layer) as records:
        explicit, _ = layer(x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    (record,) = records
    assert record.kind == "deformable" and record.map_size == (6, 6)
    assert record.probs.shape == (1, 1, 2, 36, 36)
    torch.testing.assert_close(record.points.positions, points.positions.detach())
    # an independent float64 softmax(q k^T / sqrt(d) + bias) for head 0 (group 0) from the sampled keys
    grid = points.positions[0, :, :, :, (1, 0)].double()  # G, Hk, Wk, (x, y)
    groups = x.permute(0, 3, 1, 2).double().reshape(2, 4, 6, 6)  # G, C/G, H, W
    sampled = F.grid_sample(groups, grid, align_corners=True).reshape(8, 36).T  # Ns, C
    k = (sampled @ layer.proj_k.weight.double().T + layer.proj_k.bias.double())[:, :4]  # Ns, hd of head 0
    q = (x.double().reshape(36, 8) @ layer.proj_q.weight.double().T + layer.proj_q.bias.double())[:, :4]
    bias = layer.position_bias(points.positions.reshape(2, 6, 6, 2), 6, 6).double()[0]  # head 0: HW, Ns
    probs = (q @ k.T / 2.0 + bias).softmax(-1)
    torch.testing.assert_close(record.probs[0, 0, 0].double(), probs, atol=1e-5, rtol=1e-4)


def test_msda_records_the_layer_locations():
    torch.manual_seed(0)
    layer = MSDeformAttn(d_model=16, num_levels=2, num_heads=2, num_points=3)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.1)
    shapes = torch.tensor([[4, 6], [2, 3]])
    value = torch.randn(1, 30, 16)
    query, ref = torch.randn(1, 5, 16), torch.rand(1, 5, 2, 2)
    with torch.no_grad(), record_msda_sampling(layer) as calls:
        layer(query, ref, value, shapes, torch.tensor([0, 24]))
    (call,) = calls
    offsets = query.double() @ layer.sampling_offsets.weight.double().T + layer.sampling_offsets.bias.double()
    offsets = offsets.view(1, 5, 2, 2, 3, 2)  # N, Q, M, L, P, (x, y) in pixels of each level
    expected = ref.double()[:, :, None, :, None] + offsets / torch.tensor([[6.0, 4.0], [3.0, 2.0]])[:, None].double()
    torch.testing.assert_close(call.locations.double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(call.weights.sum((-1, -2)), torch.ones(1, 5, 2))
    assert torch.equal(call.reference_points, ref)
    assert not layer._forward_pre_hooks and not layer.sampling._forward_pre_hooks


def test_recording_refuses_modules_without_attention():
    with pytest.raises(TypeError, match="must be a deformvision.layers.MSDeformAttn, got Linear"):
        with record_msda_sampling(torch.nn.Linear(2, 2)):
            pass
