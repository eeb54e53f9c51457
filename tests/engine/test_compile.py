"""torch.compile: the models trace as one graph (no graph breaks), compiled outputs equal eager, and the
``compile`` config key / ``--compile`` flags reach the model.

The equality checks compile with the ``aot_eager`` backend: the same Dynamo graph, functionalised by AOT
autograd through our ops' fake implementations, run without Inductor's C++ code generation (minutes on a
small CPU). ``deformvision --compile`` uses Inductor; its output was checked against eager by hand.
"""

import pytest
import torch
from engine_utils import CONFIGS, TINY_DAT, tiny_config

import deformvision as dv
from deformvision.cli import main
from deformvision.engine import ConfigError, Trainer, load_config
from deformvision.engine.builders import compile_model
from deformvision.engine.config import config_from_dict
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.predict import load_predictor

# TINY_DAT with one block per stage (window, shifted window, deformable, deformable): tracing time grows with blocks
ONE_BLOCK_DAT = {**TINY_DAT, "depths": [1, 1, 1, 1], "stage_spec": [["L"], ["S"], ["D"], ["D"]]}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # no compiled code or recompile counts carried between tests
    yield
    torch._dynamo.reset()


def tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return dv.create_model("dat_tiny", num_classes=3, **ONE_BLOCK_DAT).eval()


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return dv.create_model("dat_tiny", features_only=True, out_indices=(1, 2, 3), **ONE_BLOCK_DAT).eval()


def tiny_detr() -> torch.nn.Module:
    """A Deformable DETR on the tiny DAT backbone (3 levels, strides 8/16/32)."""
    small = dict(d_model=32, num_heads=2, enc_layers=1, dec_layers=1, dim_feedforward=32, enc_n_points=2)
    return DeformableDETR(tiny_backbone(), 3, num_queries=4, num_feature_levels=3, dec_n_points=2, **small).eval()


MODELS = {"dat classifier": tiny_classifier, "dat backbone": tiny_backbone, "deformable detr": tiny_detr}


@pytest.mark.parametrize("name", MODELS)
def test_models_trace_without_graph_breaks(name):
    model, x = MODELS[name](), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.break_reasons == [], [str(reason.reason) for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


def _leaves(output) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, a list of maps, or a dict of tensors (and lists of dicts)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _leaves(output[key])]
    return [t for item in output for t in _leaves(item)]


@pytest.mark.parametrize("name", ["dat classifier", "deformable detr"])  # the detector holds the backbone
def test_compiled_output_equals_eager(name):
    model = MODELS[name]()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    with torch.no_grad():
        expected, actual = _leaves(model(x)), _leaves(compiled(x))
    assert len(actual) == len(expected) > 0
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_compile_model_none_is_eager_and_a_mode_wraps_the_same_module():
    model = tiny_classifier()
    assert compile_model(model, "none") is model
    compiled = compile_model(model, "default")  # compiles lazily: nothing runs here
    assert compiled is not model and compiled._orig_mod is model
    assert dict(compiled.named_parameters()).keys() == {f"_orig_mod.{k}" for k, _ in model.named_parameters()}


def test_compile_key_is_validated():
    assert load_config(None).compile == "none"  # eager is the default
    assert load_config(None, ["compile=max-autotune"]).compile == "max-autotune"
    with pytest.raises(ConfigError, match=r"compile = 'fast': must be one of none, default, reduce-overhead"):
        load_config(None, ["compile=fast"])


@pytest.mark.parametrize("command", ["train", "eval"])
def test_compile_flag_sets_the_key(command, capsys):
    assert main([command, str(CONFIGS / "dat_digits.yaml"), "--compile", "--print-config"]) == 0
    assert "\ncompile: default\n" in capsys.readouterr().out
    assert main([command, str(CONFIGS / "dat_digits.yaml"), "--print-config"]) == 0
    assert "\ncompile: none\n" in capsys.readouterr().out


def test_trainer_compiles_its_training_and_evaluation_models(image_folder, tmp_path):
    raw = {**tiny_config(image_folder, tmp_path / "run"), "compile": "default"}
    trainer = Trainer(config_from_dict(raw))  # builds, compiles nothing yet
    assert trainer.ddp_model._orig_mod is trainer.model and trainer.eval_model._orig_mod is trainer.model
    eager = Trainer(config_from_dict({**raw, "compile": "none", "output_dir": str(tmp_path / "eager")}))
    assert eager.ddp_model is eager.model and eager.eval_model is eager.model


def test_predictor_compiles_when_the_config_says():
    config, classes = CONFIGS / "dat_digits.yaml", "data.num_classes=10"
    compiled = load_predictor(config=config, overrides=["compile=default", classes], device="cpu")
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule) and not compiled.model.training
    assert not isinstance(load_predictor(config=config, overrides=[classes], device="cpu").model, type(compiled.model))
