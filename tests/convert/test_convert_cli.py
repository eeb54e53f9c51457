"""``deformvision convert``: official-format checkpoints -> our safetensors, checked by loading the result.

The subprocess tests run the installed command on an official-format Deformable DETR checkpoint (made from a
random detector with a narrow transformer) and on the official DAT fixture (``tests/fixtures/dat/tiny64``,
with its golden logits); the error paths run in-process through :func:`deformvision.cli.main`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import deformvision.convert.checkpoint as convert_module
from deformvision.cli import main
from deformvision.convert import save_safetensors
from deformvision.models import create_model

DAT_FIXTURE = Path(__file__).parents[1] / "fixtures" / "dat" / "tiny64"
DETR_KWARGS = {"num_queries": 7, "d_model": 32, "num_heads": 2, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 48}


def run_convert(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deformvision.cli", "convert", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def official_detr_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our box-refinement detector's weights under the official names, with the official head aliases."""
    official = {}
    for key, value in model.state_dict().items():
        official[key.replace("backbone.", "backbone.0.body.", 1) if key.startswith("backbone.") else key] = value
        if key.startswith("bbox_embed."):
            official[f"transformer.decoder.{key}"] = value
    return official


def dat_kwargs() -> dict:
    """Our DAT arguments for the fixture's official constructor call."""
    official = json.loads((DAT_FIXTURE / "config.json").read_text())["dat_kwargs"]
    same = ["img_size", "dims", "depths", "heads", "groups", "window_sizes", "stage_spec"]
    return {"mlp_ratio": official["expansion"], **{key: official[key] for key in same}}


@pytest.fixture(scope="module")
def official_detr(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A random box-refinement detector with 4 classes, and its weights as an official checkpoint file."""
    torch.manual_seed(0)
    model = create_model("deformable_detr_r50_box_refine", num_classes=4, **DETR_KWARGS)
    path = tmp_path_factory.mktemp("official") / "official.pth"
    torch.save({"model": official_detr_state_dict(model), "epoch": 49}, path)
    return model, path


def test_official_detr_round_trip(official_detr, tmp_path):
    model, src = official_detr
    result = run_convert(str(src), str(tmp_path / "ours.safetensors"), "--model-kwargs", json.dumps(DETR_KWARGS))
    assert result.returncode == 0, result.stderr
    assert "model deformable_detr_r50_box_refine" in result.stdout  # told from the decoder's head aliases
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["model"] == "deformable_detr_r50_box_refine"
    assert json.loads(metadata["model_kwargs"]) == {"num_classes": 4, **DETR_KWARGS}  # classes from the head
    reloaded = create_model(metadata["model"], checkpoint=tmp_path / "ours.safetensors", **DETR_KWARGS, num_classes=4)
    expected = model.state_dict()
    assert reloaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in expected.items())
    assert [p.name for p in tmp_path.iterdir()] == ["ours.safetensors"]  # no temporary file left


def test_other_number_of_classes_gets_fresh_class_heads(official_detr, tmp_path, caplog):
    model, src = official_detr
    dst = tmp_path / "ours.safetensors"
    assert main(["convert", str(src), str(dst), "--num-classes", "6", "--model-kwargs", json.dumps(DETR_KWARGS)]) == 0
    assert "checkpoint class heads have 4 classes, this model 6" in caplog.text
    written, expected = load_file(dst), model.state_dict()
    assert all(written[key].shape == (6, *value.shape[1:]) for key, value in expected.items() if "class_embed" in key)
    assert all(torch.equal(written[key], value) for key, value in expected.items() if "class_embed" not in key)


def test_official_dat_round_trip_gives_the_golden_logits(tmp_path):
    torch.save({"model": load_file(DAT_FIXTURE / "weights.safetensors")}, tmp_path / "dat.pth")
    result = run_convert(
        str(tmp_path / "dat.pth"),
        str(tmp_path / "dat.safetensors"),
        "--model",
        "dat_tiny",
        "--model-kwargs",
        json.dumps(dat_kwargs()),
    )
    assert result.returncode == 0, result.stderr
    model = create_model("dat_tiny", num_classes=10, checkpoint=tmp_path / "dat.safetensors", **dat_kwargs()).eval()
    golden = load_file(DAT_FIXTURE / "golden.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(golden["input"]), golden["logits"], atol=1e-5, rtol=0)


@pytest.fixture
def own_checkpoint(tmp_path) -> Path:
    """One of our own files: it does not say which variant it is."""
    path = tmp_path / "own.safetensors"
    save_file({"head.weight": torch.zeros(3, 4)}, path)
    return path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "no_such_model"], 2, "unknown model no_such_model"),
        ([], 1, "cannot tell the model"),
        (["--model", "dat_tiny"], 1, "does not fit DAT"),
        (["--model", "dat_tiny", "--model-kwargs", '{"nope": 1}'], 1, "unexpected keyword argument 'nope'"),
    ],
)
def test_errors_are_reported_and_nothing_is_written(own_checkpoint, capsys, args, code, message):
    dst = own_checkpoint.parent / "out.safetensors"
    assert main(["convert", str(own_checkpoint), str(dst), *args]) == code
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in own_checkpoint.parent.iterdir()) == ["own.safetensors"]


def test_output_must_be_safetensors_and_input_must_exist(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")]) == 1
    assert "must be a .safetensors file" in capsys.readouterr().err


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    dst = tmp_path / "out.safetensors"
    save_safetensors({"a": torch.ones(2)}, dst, {"format": "deformvision"})

    def failing_save(tensors, path, metadata):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"a": torch.zeros(2)}, dst, {"format": "deformvision"})
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
    assert torch.equal(load_file(dst)["a"], torch.ones(2))
