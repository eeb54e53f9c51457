"""MSDeformAttn module against the official module's golden outputs and gradients (2-d and 4-d references)."""

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from deformvision.layers.ms_deform_attn import MSDeformAttn, directional_offset_bias

FIXTURE = Path(__file__).parents[1] / "fixtures" / "msda_module_small.safetensors"
PARAM_NAMES = [
    f"{layer}.{kind}"
    for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for kind in ("weight", "bias")
]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


def build(golden: dict[str, torch.Tensor], dtype: torch.dtype) -> MSDeformAttn:
    module = MSDeformAttn(d_model=16, num_levels=2, num_heads=2, num_points=4)
    module.load_state_dict({name: golden[f"param.{name}"] for name in PARAM_NAMES})
    return module.to(dtype)


@pytest.mark.parametrize("ref", ["ref2", "ref4"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_outputs_and_gradients_equal_official(golden, ref, dtype, tol):
    module = build(golden, dtype)
    query, reference_points, input_flatten = (
        golden[key].to(dtype, copy=True).requires_grad_()
        for key in ("query", f"reference_points_{ref[-1]}", "input_flatten")
    )
    out = module(
        query,
        reference_points,
        input_flatten,
        golden["spatial_shapes"],
        golden["level_start_index"],
        golden["input_padding_mask"],
    )
    assert out.dtype == dtype and out.shape == (2, 5, 16)
    out.backward(golden["grad_output"].to(dtype))
    got = {
        "output": out,
        "grad_query": query.grad,
        "grad_input_flatten": input_flatten.grad,
        "grad_reference_points": reference_points.grad,
        **{f"grad_param.{name}": module.get_parameter(name).grad for name in PARAM_NAMES},
    }
    for key, value in got.items():
        expected = golden[f"{key}_{ref}"]
        torch.testing.assert_close(value.double(), expected, rtol=tol, atol=tol, msg=key)


def test_padded_values_are_ignored(golden):
    module = build(golden, torch.float64)
    mask = golden["input_padding_mask"]
    args = (golden["spatial_shapes"], golden["level_start_index"], mask)
    noisy = golden["input_flatten"].clone()
    noisy[mask] = 1e3
    out = module(golden["query"], golden["reference_points_2"], golden["input_flatten"], *args)
    torch.testing.assert_close(module(golden["query"], golden["reference_points_2"], noisy, *args), out)


def test_official_initialisation(golden):
    expected = golden["init.sampling_offsets.bias_h8_l4_p4"]
    assert torch.equal(directional_offset_bias(8, 4, 4), expected)
    module = MSDeformAttn(d_model=256, num_levels=4, num_heads=8, num_points=4)
    assert torch.equal(module.sampling_offsets.bias.detach(), expected)
    assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
    assert not module.attention_weights.bias.any()
    assert not module.value_proj.bias.any() and not module.output_proj.bias.any()
    head_1 = expected.view(8, 4, 4, 2)[1]  # direction (1, 1), point k at (k + 1) * (1, 1) on every level
    assert torch.equal(head_1, torch.arange(1.0, 5.0)[None, :, None].expand(4, 4, 2))


def test_uniform_attention_at_init():
    """At initialisation every point of every level gets weight 1 / (L * P): constant values give constant output."""
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, num_levels=2, num_heads=2, num_points=2).double()
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    query = torch.randn(1, 3, 16, dtype=torch.float64)
    ref = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64)
    offsets = module.sampling_offsets(query).view(1, 3, 2, 2, 2, 2)
    assert torch.equal(offsets[0, 0], directional_offset_bias(2, 2, 2).view(2, 2, 2, 2).double())
    weights = module.attention_weights(query).view(1, 3, 2, 4).softmax(-1)
    torch.testing.assert_close(weights, torch.full_like(weights, 0.25))
    out = module(query, ref, torch.randn(1, 20, 16, dtype=torch.float64), shapes, start)
    assert out.shape == (1, 3, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(2, 5, 2, 3), (2, 5, 3, 2), (2, 4, 2, 2)])
def test_bad_reference_points_raise(golden, shape):
    module = build(golden, torch.float64)
    with pytest.raises(ValueError, match="reference_points"):
        module(
            golden["query"],
            torch.rand(shape, dtype=torch.float64),
            golden["input_flatten"],
            golden["spatial_shapes"],
            golden["level_start_index"],
        )


def test_float32_reference_points_in_a_float64_module(golden):
    """The detector feeds float32 reference points (official valid ratios) to a float64 model: sampled in float64."""
    module = build(golden, torch.float64)
    args = (
        golden["input_flatten"],
        golden["spatial_shapes"],
        golden["level_start_index"],
        golden["input_padding_mask"],
    )
    ref32 = golden["reference_points_2"].float()
    out = module(golden["query"], ref32, *args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, module(golden["query"], ref32.double(), *args), rtol=0, atol=0)


def test_float64_reference_points_in_a_float32_module_are_not_rounded(golden):
    """float64 reference points in a float32 module: the locations are their float64 sums with the float32 offsets
    (type promotion, as ``ref + offsets / size`` written out), not rounded to float32."""
    module = build(golden, torch.float32)
    seen = {}
    module.sampling.register_forward_hook(lambda mod, inputs, out: seen.update(locations=inputs[3]))
    ref64 = golden["reference_points_2"].double() + 1e-9  # not representable in float32
    args = (golden["input_flatten"].float(), golden["spatial_shapes"], golden["level_start_index"])
    module(golden["query"].float(), ref64, *args, golden["input_padding_mask"])
    N, Lq = ref64.shape[:2]
    offsets = module.sampling_offsets(golden["query"].float()).view(N, Lq, 2, 2, 4, 2)  # N, Lq, M, L, P, 2
    expected = ref64[:, :, None, :, None, :] + offsets / golden["spatial_shapes"].flip(-1).float()[:, None, :]
    assert seen["locations"].dtype == torch.float64
    torch.testing.assert_close(seen["locations"], expected, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from(
        [
            (name, bad)
            for name in ("d_model", "num_levels", "num_heads", "num_points")
            for bad in (0, -1, 2.0, True, None)
        ]
        + [("num_heads", 3)]  # does not divide d_model = 16
    )
)
def test_constructor_rejects_invalid_argument_by_name(case):
    name, bad = case
    arguments = {"d_model": 16, "num_levels": 2, "num_heads": 2, "num_points": 4, name: bad}
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError  # 2.0, True, None: types
    with pytest.raises(error, match=name):
        MSDeformAttn(**arguments)


def forward_arguments(golden: dict[str, torch.Tensor]) -> dict:
    return {
        "query": golden["query"],
        "reference_points": golden["reference_points_2"],
        "input_flatten": golden["input_flatten"],
        "spatial_shapes": golden["spatial_shapes"],
        "level_start_index": golden["level_start_index"],
        "input_padding_mask": golden["input_padding_mask"],
    }


FORWARD_TENSORS = ("query", "reference_points", "input_flatten", "spatial_shapes", "level_start_index")


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from(
        [(name, bad, TypeError) for name in FORWARD_TENSORS for bad in (None, [1.0], 2.0)]
        + [("input_padding_mask", [True], TypeError)]
        + [
            ("query", lambda q: q[..., :8], ValueError),  # d_model 8 in a 16-channel module
            ("query", lambda q: q[0], ValueError),  # rank 2
            ("input_flatten", lambda x: x[..., :8], ValueError),
            ("input_flatten", lambda x: torch.cat([x, x]), ValueError),  # batch 2 for queries of batch 1
            ("spatial_shapes", lambda s: s[:1], ValueError),  # 1 level in a 2-level module
            ("input_padding_mask", lambda m: m.double(), ValueError),
            ("input_padding_mask", lambda m: m[:, :5], ValueError),
        ]
    )
)
def test_forward_rejects_invalid_argument_by_name(golden, case):
    name, bad, error = case
    arguments = forward_arguments(golden)
    arguments[name] = bad(arguments[name]) if callable(bad) else bad
    module = build(golden, torch.float64)
    with pytest.raises(error, match=name):
        module(**arguments)


def test_forward_batch_0(golden):
    module = build(golden, torch.float64)
    arguments = {name: value[:0] for name, value in forward_arguments(golden).items()}
    arguments["spatial_shapes"] = golden["spatial_shapes"]
    arguments["level_start_index"] = golden["level_start_index"]
    assert module(**arguments).shape == (0, golden["query"].shape[1], 16)
