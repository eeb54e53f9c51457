"""Multi-scale deformable attention: every backend against the official op's golden tensors and the
grid_sample reference, gradients, validation, non-finite locations, torch.compile and ONNX export.

The golden fixture comes from the official Deformable DETR code (float64, plus float32 outputs and
gradients); its locations lie in [-0.2, 1.2], so taps outside the maps are exercised. The Triton kernels
run here only in the Triton interpreter, in a child process started with TRITON_INTERPRET=1 (the variable
must be set before triton is first imported, which this process may already have done).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from msda_float64_loop import msda_loop_forward_backward
from safetensors.torch import load_file

from deformvision.ops import ms_deform_attn
from deformvision.ops.msda import ms_deform_attn_reference

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "msda_core_small.safetensors"
GRAD_KEYS = ("grad_value", "grad_sampling_locations", "grad_attention_weights")
CPU_BACKENDS = ["reference", "cpu"]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def random_inputs(
    N: int,
    Lq: int,
    M: int,
    D: int,
    shapes: list[tuple[int, int]],
    P: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, locations in [-0.2, 1.2], attention weights."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    S = int(spatial_shapes.prod(1).sum())
    L = len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    locations = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index(spatial_shapes), locations, weights


def forward_backward(inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """[output, grad_value, grad_sampling_locations, grad_attention_weights]."""
    value, spatial_shapes, start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    output = ms_deform_attn(leaves[0], spatial_shapes, start_index, leaves[1], leaves[2], **kwargs)
    output.backward(grad_output)
    return [output.detach()] + [leaf.grad for leaf in leaves]


def reference_forward_backward(inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor) -> list[torch.Tensor]:
    """The same through autograd of the plain grid_sample reference (not the custom op)."""
    value, spatial_shapes, start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    output = ms_deform_attn_reference(leaves[0], spatial_shapes, start_index, leaves[1], leaves[2])
    output.backward(grad_output)
    return [output.detach()] + [leaf.grad for leaf in leaves]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


def golden_inputs(golden: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return (
        golden["value"].to(dtype),
        golden["spatial_shapes"],
        golden["level_start_index"],
        golden["sampling_locations"].to(dtype),
        golden["attention_weights"].to(dtype),
    )


# ---------------------------------------------------------------------------------------------------------
# Golden values of the official implementation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("tag", "dtype", "atol"), [("f64", torch.float64, 1e-12), ("f32", torch.float32, 1e-5)])
def test_matches_official_golden_values(golden, backend, tag, dtype, atol):
    results = forward_backward(golden_inputs(golden, dtype), golden["grad_output"].to(dtype), backend=backend)
    for name, result in zip(("output",) + GRAD_KEYS, results, strict=True):
        expected = golden[f"{name}_{tag}"]
        assert result.dtype == dtype
        torch.testing.assert_close(result, expected, rtol=0, atol=atol, msg=f"{backend} {name} {tag}")


def test_plain_reference_matches_official_golden_values(golden):
    results = reference_forward_backward(golden_inputs(golden, torch.float64), golden["grad_output"])
    for name, result in zip(("output",) + GRAD_KEYS, results, strict=True):
        torch.testing.assert_close(result, golden[f"{name}_f64"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Gradients and agreement between paths
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("head_dim", [30, 32, 64, 71])
def test_gradcheck(backend, head_dim):
    value, spatial_shapes, start_index, locations, weights = random_inputs(
        N=1, Lq=2, M=2, D=head_dim, shapes=[(3, 2), (2, 1)], P=2, seed=head_dim
    )
    value, locations, weights = (t.requires_grad_() for t in (value, locations, weights))

    def op(value, locations, weights):
        return ms_deform_attn(value, spatial_shapes, start_index, locations, weights, backend=backend)

    assert torch.autograd.gradcheck(op, (value, locations, weights), eps=1e-6, atol=1e-5, rtol=1e-3)


SHAPE_CASES = {
    "batch1": dict(N=1, Lq=7, M=2, D=4, shapes=[(6, 4), (3, 2)], P=2),
    "batch3": dict(N=3, Lq=5, M=3, D=5, shapes=[(5, 7), (1, 1), (2, 3)], P=3),
    "batch5": dict(N=5, Lq=4, M=1, D=8, shapes=[(4, 4)], P=4),
    "levels_1x1": dict(N=2, Lq=3, M=2, D=3, shapes=[(1, 1), (1, 1)], P=1),
    "wide_and_tall": dict(N=2, Lq=6, M=4, D=16, shapes=[(1, 9), (9, 1), (2, 2), (3, 5)], P=4),
}


@pytest.mark.parametrize("case", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_float64_loop(backend, case):
    """Each backend (the reference included: it is not its own yardstick) against the independent float64 loop
    over points and corners of msda_float64_loop: output and the three gradients."""
    inputs = random_inputs(**case, seed=len(case["shapes"]) + case["N"])
    value, _, _, locations, weights = inputs
    grad_output = torch.randn(case["N"], case["Lq"], case["M"] * case["D"], dtype=torch.float64)
    expected = msda_loop_forward_backward(value, case["shapes"], locations, weights, grad_output)
    assert expected[0].abs().max() > 0.1 and expected[2].abs().max() > 0.1  # the case samples the maps
    results = forward_backward(inputs, grad_output, backend=backend)
    for name, result, want in zip(("output",) + GRAD_KEYS, results, expected, strict=True):
        torch.testing.assert_close(result, want, rtol=0, atol=1e-12, msg=f"{backend} {name}")


@pytest.mark.parametrize("taps_per_row", [0.0, float("inf")], ids=["by_first_corner", "by_row"])
@pytest.mark.parametrize("case", [*SHAPE_CASES.values(), dict(N=2, Lq=3, M=2, D=4, shapes=[(3, 3), (0, 2)], P=2)])
def test_cpu_value_gradient_both_ways(monkeypatch, taps_per_row, case):
    """The CPU value gradient has two ways (chosen by taps per table row): force each, compare to the reference."""
    msda = sys.modules["deformvision.ops.msda.cpu"]
    monkeypatch.setattr(msda, "_SPARSE_TAPS_PER_ROW", taps_per_row)
    inputs = random_inputs(**case, seed=case["N"] * 7 + case["P"])
    grad_output = torch.randn(case["N"], case["Lq"], case["M"] * case["D"], dtype=torch.float64)
    result = forward_backward(inputs, grad_output, backend="cpu")[1]
    if any(h * w == 0 for h, w in case["shapes"]):  # grid_sample rejects empty levels: leave them out
        value, spatial_shapes, _, locations, weights = inputs
        keep = [level for level, (h, w) in enumerate(case["shapes"]) if h * w > 0]
        inputs = (
            value,
            spatial_shapes[keep],
            level_start_index(spatial_shapes[keep]),
            locations[:, :, :, keep],
            weights[:, :, :, keep],
        )
    expected = reference_forward_backward(inputs, grad_output)[1]
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_low_precision_matches_reference(dtype):
    inputs = random_inputs(N=2, Lq=5, M=2, D=8, shapes=[(6, 4), (3, 2)], P=4, seed=1)
    grad_output = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = reference_forward_backward(inputs, grad_output)
    low = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
    results = forward_backward(low, grad_output.to(dtype), backend="cpu")
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for result, want in zip(results, expected, strict=True):
        assert result.dtype == dtype
        # gradients w.r.t. pixel coordinates are scaled by the map size: compare relative to the magnitude
        torch.testing.assert_close(result.double(), want, rtol=tolerance, atol=tolerance * want.abs().max().item())


def test_non_contiguous_inputs_and_auto_backend():
    value, spatial_shapes, start_index, locations, weights = random_inputs(
        N=2, Lq=5, M=3, D=4, shapes=[(4, 3), (2, 2)], P=2, seed=3
    )
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    locations_t = locations.flip(-1).contiguous().flip(-1)
    expected = ms_deform_attn_reference(value, spatial_shapes, start_index, locations, weights)
    result = ms_deform_attn(value_t, spatial_shapes, start_index, locations_t, weights)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("Lq", "P"), [(0, 2), (3, 0)])
def test_empty_queries_or_points(backend, Lq, P):
    inputs = random_inputs(N=2, Lq=Lq, M=2, D=4, shapes=[(3, 3)], P=P)
    results = forward_backward(inputs, torch.ones(2, Lq, 8, dtype=torch.float64), backend=backend)
    assert results[0].shape == (2, Lq, 8) and (results[0] == 0).all()
    for result, like in zip(results[1:], (inputs[0], inputs[3], inputs[4]), strict=True):
        assert result.shape == like.shape and (result == 0).all()


# ---------------------------------------------------------------------------------------------------------
# Non-finite locations sample zeros
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_finite_locations_sample_zeros(backend):
    inputs = random_inputs(N=2, Lq=3, M=2, D=4, shapes=[(4, 5), (2, 2)], P=3, seed=7)
    value, spatial_shapes, start_index, locations, weights = inputs
    bad = locations.clone()
    bad[0, 0, 0, 0, 0] = float("nan")  # both coordinates
    bad[0, 1, 1, 1, 2, 0] = float("inf")
    bad[1, 2, 0, 0, 1, 1] = -float("inf")
    bad[1, 0, 1, 1, 0, 1] = float("nan")  # one coordinate only
    bad[1, 1, 0, 0, 2] = 1e30  # huge but finite: outside, so zero as well
    non_finite = ~torch.isfinite(bad).all(-1) | (bad.abs() > 1e29).any(-1)  # (N, Lq, M, L, P)
    zero_weights = weights.masked_fill(non_finite, 0.0)
    grad_output = torch.randn(2, 3, 8, dtype=torch.float64)

    results = forward_backward((value, spatial_shapes, start_index, bad, weights), grad_output, backend=backend)
    # same as dropping those points: zero attention on them and any finite location
    expected = reference_forward_backward((value, spatial_shapes, start_index, locations, zero_weights), grad_output)
    output, grad_value, grad_locations, grad_weights = results
    for result in results:
        assert torch.isfinite(result).all()
    torch.testing.assert_close(output, expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_value, expected[1], rtol=0, atol=1e-12)
    assert (grad_locations[non_finite] == 0).all()
    assert (grad_weights[non_finite] == 0).all()
    torch.testing.assert_close(grad_locations[~non_finite], expected[2][~non_finite], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def valid() -> dict[str, torch.Tensor]:
    value, spatial_shapes, start_index, locations, weights = random_inputs(
        N=2, Lq=3, M=2, D=4, shapes=[(4, 3), (2, 2)], P=2
    )
    return dict(
        value=value,
        spatial_shapes=spatial_shapes,
        level_start_index=start_index,
        sampling_locations=locations,
        attention_weights=weights,
    )


def call_with(valid: dict[str, torch.Tensor], **changes) -> torch.Tensor:
    kwargs = {**valid, **{k: v for k, v in changes.items() if k in valid}}
    options = {k: v for k, v in changes.items() if k not in valid}
    return ms_deform_attn(
        kwargs["value"],
        kwargs["spatial_shapes"],
        kwargs["level_start_index"],
        kwargs["sampling_locations"],
        kwargs["attention_weights"],
        **options,
    )


def test_valid_inputs_pass(valid):
    assert call_with(valid).shape == (2, 3, 8)


def test_rejects_wrong_rank(valid):
    with pytest.raises(ValueError, match=r"value must have 4 dims \(N, S, M, D\)"):
        call_with(valid, value=valid["value"].flatten(2))
    with pytest.raises(ValueError, match=r"sampling_locations must have 6 dims"):
        call_with(valid, sampling_locations=valid["sampling_locations"][0])


def test_rejects_mismatched_batch_or_heads(valid):
    with pytest.raises(ValueError, match="does not match value .* in N or M"):
        call_with(valid, value=valid["value"][:1])
    with pytest.raises(ValueError, match="does not match value .* in N or M"):
        call_with(valid, value=valid["value"][:, :, :1])


def test_rejects_mismatched_levels(valid):
    with pytest.raises(ValueError, match="L = 2 levels .* spatial_shapes has 1 rows"):
        call_with(valid, spatial_shapes=valid["spatial_shapes"][:1], level_start_index=valid["level_start_index"][:1])


def test_rejects_mismatched_points_or_queries(valid):
    with pytest.raises(ValueError, match=r"attention_weights must have shape \(N, Lq, M, L, P\)"):
        call_with(valid, attention_weights=valid["attention_weights"][..., :1])
    with pytest.raises(ValueError, match=r"attention_weights must have shape \(N, Lq, M, L, P\)"):
        call_with(valid, attention_weights=valid["attention_weights"][:, :2])


def test_rejects_bad_spatial_shapes(valid):
    with pytest.raises(ValueError, match=r"spatial_shapes must be an integer tensor of shape \(L, 2\)"):
        call_with(valid, spatial_shapes=valid["spatial_shapes"].float())
    with pytest.raises(ValueError, match=r"spatial_shapes must be an integer tensor of shape \(L, 2\)"):
        call_with(valid, spatial_shapes=torch.tensor([[4, 3, 1], [2, 2, 1]]))


def test_rejects_inconsistent_level_start_index(valid):
    with pytest.raises(ValueError, match=r"exclusive cumulative sum of H \* W = \[0, 12\], got \[0, 11\]"):
        call_with(valid, level_start_index=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"level_start_index must be an integer tensor of shape \(L,\)"):
        call_with(valid, level_start_index=torch.tensor([0.0, 12.0]))


def test_rejects_value_length_not_sum_of_level_sizes(valid):
    with pytest.raises(ValueError, match=r"value has S = 15 positions but .* sum\(H \* W\) = 16"):
        call_with(valid, value=valid["value"][:, :15])


def test_value_checks_can_be_skipped(valid):
    out = call_with(valid, level_start_index=torch.tensor([0, 11]), check_values=False)
    assert out.shape == (2, 3, 8)  # level_start_index is implied by spatial_shapes on these paths


def test_rejects_inputs_on_different_devices(valid):
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        call_with(valid, attention_weights=valid["attention_weights"].to("meta"))


def test_rejects_locations_without_xy_last_dim(valid):
    locations = valid["sampling_locations"][..., :1]
    with pytest.raises(ValueError, match=r"last dim of sampling_locations .* must be 2 \(x, y\)"):
        call_with(valid, sampling_locations=locations)


def test_rejects_mixed_dtypes(valid):
    with pytest.raises(ValueError, match="must share one floating dtype"):
        call_with(valid, attention_weights=valid["attention_weights"].float())


def test_auto_backend_choice():
    from deformvision.ops.msda.dispatch import _resolve_backend

    assert _resolve_backend("auto", torch.zeros(1)) == "cpu"
    assert _resolve_backend("auto", torch.zeros(1, device="meta", dtype=torch.float64)) == "reference"


def test_registered_op_defaults_to_auto(valid):
    args = [
        valid[k] for k in ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    ]
    torch.testing.assert_close(torch.ops.deformvision.ms_deform_attn(*args), call_with(valid), rtol=0, atol=0)


def test_rejects_unknown_or_unavailable_backend(valid):
    with pytest.raises(ValueError, match="backend must be one of"):
        call_with(valid, backend="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="backend='triton'"):
            call_with(valid, backend="triton")  # float64 CPU tensors: never a Triton input
    valid_f32 = {k: (v.float() if v.is_floating_point() else v) for k, v in valid.items()}
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="backend='triton'"):
            call_with(valid_f32, backend="triton")


# ---------------------------------------------------------------------------------------------------------
# torch.compile and ONNX
# ---------------------------------------------------------------------------------------------------------


class SmallAttention(torch.nn.Module):
    """A module around the op, with the level layout as buffers."""

    def __init__(self, spatial_shapes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("spatial_shapes", spatial_shapes)
        self.register_buffer("level_start_index", level_start_index(spatial_shapes))

    def forward(self, value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = ms_deform_attn(value, self.spatial_shapes, self.level_start_index, locations, weights)
        return out.relu() + out


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor
def test_torch_compile_fullgraph_no_graph_breaks(golden):
    torch._dynamo.reset()
    value, spatial_shapes, _, locations, weights = golden_inputs(golden, torch.float32)
    module = SmallAttention(spatial_shapes)
    explanation = torch._dynamo.explain(module)(value, locations, weights)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1

    compiled = torch.compile(module, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    compiled_out = compiled(*leaves)
    compiled_out.backward(golden["grad_output"].float())
    eager = [t.clone().requires_grad_() for t in (value, locations, weights)]
    eager_out = module(*eager)
    eager_out.backward(golden["grad_output"].float())
    torch.testing.assert_close(compiled_out, eager_out, rtol=0, atol=0)
    for compiled_leaf, eager_leaf in zip(leaves, eager, strict=True):
        torch.testing.assert_close(compiled_leaf.grad, eager_leaf.grad, rtol=0, atol=0)


def test_custom_op_registration():
    value, spatial_shapes, start_index, locations, weights = random_inputs(
        N=2, Lq=3, M=2, D=4, shapes=[(3, 2), (2, 2)], P=2, dtype=torch.float32
    )
    for backend in CPU_BACKENDS:
        torch.library.opcheck(
            torch.ops.deformvision.ms_deform_attn.default,
            (value.requires_grad_(), spatial_shapes, start_index, locations.requires_grad_(), weights, backend),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are needed",
)
def test_onnx_export_runs_in_onnxruntime(golden, tmp_path):
    import onnxruntime

    value, spatial_shapes, _, locations, weights = golden_inputs(golden, torch.float32)
    locations = locations.clone()
    locations[0, 0, 0, 0, 0] = float("nan")
    module = SmallAttention(spatial_shapes)
    path = tmp_path / "msda.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
        torch.onnx.export(
            module,
            (value, locations, weights),
            str(path),
            dynamo=False,
            input_names=["value", "locations", "weights"],
            output_names=["output"],
            opset_version=17,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"value": value.numpy(), "locations": locations.numpy(), "weights": weights.numpy()})
    torch.testing.assert_close(torch.from_numpy(result), module(value, locations, weights), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels, in the Triton interpreter (child process)
# ---------------------------------------------------------------------------------------------------------

TRITON_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import load_file
    sys.path.insert(0, sys.argv[2])
    import test_ms_deform_attn as t

    golden = load_file(sys.argv[1])
    results = t.forward_backward(t.golden_inputs(golden, torch.float32), golden["grad_output"].float(),
                                 backend="triton")
    for name, result in zip(("output",) + t.GRAD_KEYS, results, strict=True):
        torch.testing.assert_close(result, golden[name + "_f32"], rtol=0, atol=1e-5, msg=name)

    inputs = t.random_inputs(N=3, Lq=4, M=2, D=5, shapes=[(3, 4), (1, 1)], P=2, dtype=torch.float32, seed=5)
    grad_output = torch.randn(3, 4, 10)
    expected = t.reference_forward_backward(inputs, grad_output)
    for result, want in zip(t.forward_backward(inputs, grad_output, backend="triton"), expected, strict=True):
        torch.testing.assert_close(result, want, rtol=1e-4, atol=1e-4)

    value, spatial_shapes, start_index, locations, weights = inputs
    locations = locations.clone()
    locations[0, 0, 0, 0, 0] = float("nan")
    locations[1, 1, 1, 1, 1, 0] = float("inf")
    results = t.forward_backward((value, spatial_shapes, start_index, locations, weights), grad_output,
                                 backend="triton")
    cpu = t.forward_backward((value, spatial_shapes, start_index, locations, weights), grad_output,
                             backend="cpu")
    for result, want in zip(results, cpu, strict=True):
        assert torch.isfinite(result).all()
        torch.testing.assert_close(result, want, rtol=1e-4, atol=1e-4)
    print("TRITON_OK")
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", TRITON_CHILD, str(FIXTURE), str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0 and "TRITON_OK" in completed.stdout, completed.stderr[-4000:]
