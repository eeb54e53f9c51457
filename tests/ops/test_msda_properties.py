"""Property tests: every CPU backend of ``ms_deform_attn`` equals a float64 loop over points and corners.

Random shapes, empty levels (H = 0 or W = 0), batch 0, no queries, locations far outside [0, 1] (up to 3e38)
and non-finite ones; forward and the three gradients. The Triton kernels get the same edge cases as fixed
cases in ``test_msda_triton.py`` (the interpreter is too slow for many examples).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from msda_float64_loop import msda_loop_forward_backward

from deformvision.ops import ms_deform_attn
from deformvision.ops.msda import cpu as msda_cpu

FAR = [3e38, -3e38, 1e10, -1e10, 2.5, -1.5, float("nan"), float("inf"), float("-inf")]


def level_start_index(shapes: list[tuple[int, int]]) -> torch.Tensor:
    sizes = [h * w for h, w in shapes]
    return torch.tensor([sum(sizes[:level]) for level in range(len(sizes))], dtype=torch.int64)


@st.composite
def msda_inputs(draw: st.DrawFn) -> tuple:
    """(value, shapes, locations, weights, grad_output), float64, with some locations replaced by FAR values."""
    N = draw(st.integers(0, 2))
    Lq = draw(st.integers(0, 3))
    M = draw(st.integers(1, 2))
    D = draw(st.integers(1, 3))
    shapes = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=3))
    P = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    locations = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    far = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(FAR)), max_size=4))
    flat = locations.view(-1)
    for position, far_value in far:
        if flat.numel():
            flat[position % flat.numel()] = far_value
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=torch.float64)
    grad_output = torch.randn(N, Lq, M * D, generator=g, dtype=torch.float64)
    return value, shapes, locations, weights, grad_output


def backend_forward_backward(backend: str, value, shapes, locations, weights, grad_output) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)
    output = ms_deform_attn(leaves[0], spatial_shapes, level_start_index(shapes), leaves[1], leaves[2], backend=backend)
    output.backward(grad_output)
    return [output.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@settings(max_examples=40, deadline=None)
@given(inputs=msda_inputs())
def test_backend_equals_float64_loop(backend, inputs):
    expected = msda_loop_forward_backward(*inputs)
    results = backend_forward_backward(backend, *inputs)
    for name, result, want in zip(("output", "value", "locations", "weights"), results, expected, strict=True):
        assert result.shape == want.shape, name
        torch.testing.assert_close(result, want, rtol=1e-10, atol=1e-10, msg=f"{backend} {name}")


@pytest.mark.parametrize("taps_per_row", [0.0, float("inf")], ids=["padded table", "values in place"])
@settings(max_examples=40, deadline=None)
@given(inputs=msda_inputs())
def test_cpu_table_layouts_equal_float64_loop(taps_per_row, inputs):
    """The CPU backend reads a zero-bordered copy of the values or, with few taps per row, the values in place
    (the random small shapes mostly pick the latter): both ways, forced, against the loop."""
    expected = msda_loop_forward_backward(*inputs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(msda_cpu, "_SPARSE_TAPS_PER_ROW", taps_per_row)
        results = backend_forward_backward("cpu", *inputs)
    for name, result, want in zip(("output", "value", "locations", "weights"), results, expected, strict=True):
        torch.testing.assert_close(result, want, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [3e38, -3e38])
def test_huge_finite_locations_sample_zero(backend, dtype, far):
    """3e38 overflows to inf once scaled (float32): it must still read as out of bounds, not NaN."""
    value = torch.randn(1, 6, 1, 2, dtype=dtype)
    locations = torch.tensor([[far, 0.5], [0.5, far], [far, far]], dtype=dtype).view(1, 1, 1, 1, 3, 2)
    weights = torch.ones(1, 1, 1, 1, 3, dtype=dtype)
    results = backend_forward_backward(backend, value, [(2, 3)], locations, weights, torch.ones(1, 1, 2, dtype=dtype))
    for result in results:
        assert not result.isnan().any() and not result.any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_empty_level_contributes_nothing(backend):
    """A level with H = 0 or W = 0 changes nothing: same result as without it."""
    g = torch.Generator().manual_seed(3)
    value = torch.randn(2, 6, 2, 3, generator=g, dtype=torch.float64)
    locations = torch.rand(2, 4, 2, 3, 2, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(2, 4, 2, 3, 2, generator=g, dtype=torch.float64)
    grad_output = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    with_empty = backend_forward_backward(backend, value, [(0, 4), (2, 3), (5, 0)], locations, weights, grad_output)
    without = backend_forward_backward(
        backend, value, [(2, 3)], locations[:, :, :, 1:2], weights[:, :, :, 1:2], grad_output
    )
    torch.testing.assert_close(with_empty[0], without[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(with_empty[1], without[1], rtol=0, atol=1e-12)  # summation order may differ
    assert not with_empty[2][:, :, :, [0, 2]].any() and not with_empty[3][:, :, :, [0, 2]].any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_inputs_are_left_unchanged_with_one_point(backend):
    """L * P = 1: the CPU backend once scaled the caller's locations in place (and its backward read them)."""
    value = torch.randn(1, 1, 1, 1, dtype=torch.float64)
    locations = torch.tensor([0.435, 1.1732], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.tensor(0.645, dtype=torch.float64).view(1, 1, 1, 1, 1)
    copies = [t.clone() for t in (value, locations, weights)]
    grad_output = torch.full((1, 1, 1), -0.3, dtype=torch.float64)
    results = backend_forward_backward(backend, value, [(1, 1)], locations, weights, grad_output)
    for original, copy in zip((value, locations, weights), copies, strict=True):
        assert torch.equal(original, copy)
    expected = msda_loop_forward_backward(copies[0], [(1, 1)], copies[1], copies[2], grad_output)
    for result, want in zip(results, expected, strict=True):
        torch.testing.assert_close(result, want, rtol=1e-12, atol=1e-12)
