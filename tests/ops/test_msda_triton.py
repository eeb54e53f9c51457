"""Triton multi-scale deformable attention kernels against a float64 ``F.grid_sample`` reference.

Without CUDA the kernels run in the Triton interpreter, which needs ``TRITON_INTERPRET=1`` both before
triton is first imported in the process (triton builds its own helpers such as ``tl.zeros`` and ``tl.sum``
for the interpreter at import time) and at launch (triton imports more modules lazily then). This module
therefore sets the variable around the first import of triton and, through a fixture, during its own tests
only, so that the rest of the session is unaffected. When another test module imported triton first, the
CPU cases are skipped here and ``test_cpu_cases_in_child_process`` runs them in a child pytest process
started with ``TRITON_INTERPRET=1``. With CUDA, the same cases run compiled on the GPU.
"""

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available() and "triton" not in sys.modules:
    _previous_interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        if _previous_interpret is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous_interpret

pytest.importorskip("triton")

from msda_float64_loop import msda_loop_forward_backward  # noqa: E402

import deformvision  # noqa: E402
from deformvision.ops.msda import triton_launch as msda  # noqa: E402

_CHILD_MARKER = "DEFORMVISION_MSDA_TRITON_CHILD"
_INTERPRETER_READY = msda._triton_built_for_interpreter()

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not _INTERPRETER_READY,
            reason="no Triton interpreter here (needs TRITON_INTERPRET=1 before triton is imported)",
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]

SHAPES = ((6, 4), (3, 2))


@pytest.fixture(autouse=True, scope="module")
def _interpret_during_these_tests() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        if _INTERPRETER_READY:
            patch.setenv("TRITON_INTERPRET", "1")
        yield


def make_inputs(
    device: str,
    batch: int = 2,
    num_queries: int = 5,
    num_heads: int = 2,
    head_dim: int = 8,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    num_points: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """value, spatial_shapes, level_start_index, sampling_locations in [-0.2, 1.2], attention_weights."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_levels = len(shapes)
    value = torch.randn(batch, int(areas.sum()), num_heads, head_dim, generator=generator)
    locations_shape = (batch, num_queries, num_heads, num_levels, num_points, 2)
    sampling_locations = torch.rand(locations_shape, generator=generator) * 1.4 - 0.2
    attention_weights = torch.rand(locations_shape[:-1], generator=generator)
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        sampling_locations.to(device, dtype),
        attention_weights.to(device, dtype),
    )


def reference_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Plain PyTorch multi-scale deformable attention: (N, Lq, M * D)."""
    N, _, M, D = value.shape
    _, Lq, _, _, P, _ = sampling_locations.shape
    out = value.new_zeros(N * M, D, Lq)
    start = 0
    for level, (H, W) in enumerate(spatial_shapes.tolist()):
        value_l = value[:, start : start + H * W].permute(0, 2, 3, 1).reshape(N * M, D, H, W)
        grid_l = 2 * sampling_locations[:, :, :, level] - 1  # (N, Lq, M, P, 2)
        grid_l = grid_l.transpose(1, 2).reshape(N * M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights_l = attention_weights[:, :, :, level].transpose(1, 2).reshape(N * M, 1, Lq, P)
        out = out + (sampled * weights_l).sum(-1)  # (N * M, D, Lq)
        start += H * W
    return out.view(N, M, D, Lq).permute(0, 3, 1, 2).reshape(N, Lq, M * D)


def reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Float64 CPU output and (grad_value, grad_sampling_locations, grad_attention_weights)."""
    differentiable = (value, sampling_locations, attention_weights)
    inputs = [t.detach().cpu().double().requires_grad_() for t in differentiable]
    out = reference_forward(inputs[0], spatial_shapes.cpu(), inputs[1], inputs[2])
    grads = torch.autograd.grad(out, inputs, grad_output.detach().cpu().double())
    return out.detach(), grads


def run_triton(
    inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, deterministic: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = msda.ms_deform_attn_forward(*inputs)
    grads = msda.ms_deform_attn_backward(grad_output, *inputs, deterministic)
    return out, grads


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=rtol, atol=atol)


def test_launcher_imports_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher imports triton only when launching: loaded where triton cannot be imported, it defines its
    entry points, and only a launch fails, with triton's ImportError."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = importlib.util.spec_from_file_location("msda_launch_without_triton", msda.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.ms_deform_attn_forward) and callable(module.ms_deform_attn_backward)
    with pytest.raises(ImportError, match="triton"):
        module.ms_deform_attn_forward(*make_inputs("cpu"))


def test_cpu_tensors_without_interpreter_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        msda.ms_deform_attn_forward(*make_inputs("cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [8, 30])
def test_forward_matches_grid_sample(device: str, head_dim: int) -> None:
    value, shapes, starts, locations, weights = make_inputs(device, head_dim=head_dim)
    out = msda.ms_deform_attn_forward(value, shapes, starts, locations, weights)
    assert out.shape == (2, 5, 2 * head_dim) and out.dtype == torch.float32
    value, locations, weights = (t.cpu().double() for t in (value, locations, weights))
    expected = reference_forward(value, shapes.cpu(), locations, weights)
    assert_close_to(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [8, 30])
@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_matches_grid_sample(device: str, head_dim: int, deterministic: bool) -> None:
    inputs = make_inputs(device, head_dim=head_dim)
    value, shapes, _, locations, weights = inputs
    grad_output = torch.randn(2, 5, 2 * head_dim, generator=torch.Generator().manual_seed(1)).to(device)
    grads = msda.ms_deform_attn_backward(grad_output, *inputs, deterministic)
    _, expected = reference(value, shapes, locations, weights, grad_output)
    for grad, like, grad_expected in zip(grads, (value, locations, weights), expected, strict=True):
        assert grad.shape == like.shape and grad.dtype == like.dtype
        assert_close_to(grad, grad_expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_mode_is_reproducible(device: str) -> None:
    # 24 queries on small maps: about 13 taps per grad_value row, so the summation order matters.
    inputs = make_inputs(device, num_queries=24, head_dim=30)
    grad_output = torch.randn(2, 24, 60, generator=torch.Generator().manual_seed(1)).to(device)
    atomic = msda.ms_deform_attn_backward(grad_output, *inputs, False)
    first = msda.ms_deform_attn_backward(grad_output, *inputs, True)
    second = msda.ms_deform_attn_backward(grad_output, *inputs, True)
    for grad_first, grad_second, grad_atomic in zip(first, second, atomic, strict=True):
        assert torch.equal(grad_first, grad_second)
        torch.testing.assert_close(grad_first, grad_atomic, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device: str, dtype: torch.dtype) -> None:
    inputs = make_inputs(device, head_dim=30, dtype=dtype)
    value, shapes, _, locations, weights = inputs
    grad_output = torch.randn(2, 5, 60, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, grads = run_triton(inputs, grad_output)
    # The reference sees the same rounded inputs, so only the kernels' rounding is measured.
    out_expected, grads_expected = reference(value, shapes, locations, weights, grad_output)
    assert out.dtype == dtype
    assert_close_to(out, out_expected, rtol=1e-2, atol=1e-2 * out_expected.abs().max().item())
    for grad, grad_expected in zip(grads, grads_expected, strict=True):
        assert grad.dtype == dtype
        assert_close_to(grad, grad_expected, rtol=1e-2, atol=1e-2 * grad_expected.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
def test_batch_sizes_three_levels_and_several_query_blocks(device: str, batch: int) -> None:
    # head_dim 64 gives 8 queries per program, so 20 queries span 3 query blocks (the last one partial).
    inputs = make_inputs(device, batch=batch, num_queries=20, head_dim=64, shapes=((6, 4), (3, 2), (2, 2)))
    value, shapes, _, locations, weights = inputs
    grad_output = torch.randn(batch, 20, 128, generator=torch.Generator().manual_seed(1)).to(device)
    out, grads = run_triton(inputs, grad_output, deterministic=batch == 3)
    out_expected, grads_expected = reference(value, shapes, locations, weights, grad_output)
    assert_close_to(out, out_expected, rtol=1e-5, atol=1e-5)
    for grad, grad_expected in zip(grads, grads_expected, strict=True):
        assert_close_to(grad, grad_expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_head_dim_71(device: str) -> None:
    inputs = make_inputs(device, num_heads=3, head_dim=71, num_points=3)
    value, shapes, _, locations, weights = inputs
    grad_output = torch.randn(2, 5, 3 * 71, generator=torch.Generator().manual_seed(1)).to(device)
    out, grads = run_triton(inputs, grad_output)
    out_expected, grads_expected = reference(value, shapes, locations, weights, grad_output)
    assert_close_to(out, out_expected, rtol=1e-5, atol=1e-5)
    for grad, grad_expected in zip(grads, grads_expected, strict=True):
        assert_close_to(grad, grad_expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_locations_sample_zeros(device: str) -> None:
    inputs = make_inputs(device)
    value, shapes, starts, locations, weights = inputs
    locations = locations.clone()
    bad_taps = [(0, 0, 0, 0, 0), (0, 1, 1, 1, 2), (1, 2, 0, 0, 3), (1, 4, 1, 1, 0), (0, 3, 1, 0, 1)]
    nan, inf = float("nan"), float("inf")
    bad_values = [(nan, 0.5), (0.5, nan), (inf, 0.5), (0.3, -inf), (1e30, -1e30)]
    for tap, xy in zip(bad_taps, bad_values, strict=True):
        locations[tap] = torch.tensor(xy, dtype=locations.dtype, device=device)
    grad_output = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)).to(device)
    out, grads = run_triton((value, shapes, starts, locations, weights), grad_output)

    # Expected: the same taps moved far outside the feature maps, where they sample zeros.
    outside = locations.clone()
    for tap in bad_taps:
        outside[tap] = 10.0
    out_expected, grads_expected = reference(value, shapes, outside, weights, grad_output)
    assert_close_to(out, out_expected, rtol=1e-5, atol=1e-5)
    for grad, grad_expected in zip(grads, grads_expected, strict=True):
        assert torch.isfinite(grad).all()
        assert_close_to(grad, grad_expected, rtol=1e-5, atol=1e-5)
    for tap in bad_taps:
        assert (grads[1][tap] == 0).all() and grads[2][tap] == 0


EDGE_CASES = {
    "empty_levels": dict(batch=2, shapes=((0, 3), (3, 2), (2, 0)), far=None),
    "huge_locations": dict(batch=2, shapes=((3, 2),), far=3e38),
    "huge_negative_locations": dict(batch=1, shapes=((2, 2), (1, 3)), far=-3e38),
    "batch_0": dict(batch=0, shapes=((3, 2),), far=None),
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases_match_float64_loop(device: str, case: dict) -> None:
    """Empty levels, locations that overflow once scaled, batch 0: the float64 loop of msda_float64_loop."""
    value, shapes, starts, locations, weights = make_inputs(device, batch=case["batch"], shapes=case["shapes"])
    if case["far"] is not None:
        locations = locations.clone()
        locations[..., 0, :, 0] = case["far"]  # x of every point of the first level
        locations[..., 1] = torch.where(locations[..., 1] > 0.9, case["far"], locations[..., 1])
    grad_output = torch.randn(case["batch"], 5, 16, generator=torch.Generator().manual_seed(2)).to(device)
    expected = msda_loop_forward_backward(
        value.cpu(), list(case["shapes"]), locations.cpu(), weights.cpu(), grad_output.cpu()
    )
    for deterministic in (False, True):
        out, grads = run_triton((value, shapes, starts, locations, weights), grad_output, deterministic)
        for result, want in zip((out, *grads), expected, strict=True):
            assert result.shape == want.shape
            assert_close_to(result, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_no_queries(device: str) -> None:
    inputs = make_inputs(device, num_queries=0)
    grad_output = torch.zeros(2, 0, 16, device=device)
    out, (grad_value, grad_locations, grad_weights) = run_triton(inputs, grad_output, deterministic=True)
    assert out.shape == (2, 0, 16)
    assert grad_value.shape == inputs[0].shape and not grad_value.any()
    assert grad_locations.shape == inputs[3].shape and grad_weights.shape == inputs[4].shape


@pytest.mark.skipif(
    _INTERPRETER_READY or torch.cuda.is_available() or os.environ.get(_CHILD_MARKER) == "1",
    reason="the CPU cases run in this process",
)
def test_cpu_cases_in_child_process() -> None:
    src = str(Path(deformvision.__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD_MARKER: "1", "PYTHONPATH": python_path}
    selection = ["-k", "cpu and not child"]  # the CPU cases; any skip among them is a failure
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", *selection]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-6000:]
