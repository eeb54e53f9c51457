"""The ``predict`` and ``demo`` subcommands: JSON and PNGs of a tiny random model, clear errors, the demo end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo

import deformvision as dv
from deformvision.cli import main
from deformvision.data import build_digits_detection
from deformvision.demo import demo_config, demo_recipe
from deformvision.engine import STAT_NAMES, build_model, build_transforms, load_config, save_config
from deformvision.models._pretrained import weights_path
from deformvision.recipes import recipe_path

# A narrow DAT for the detector (strides 8/16/32 at 64 pixels and up) and a tiny classifier.
TINY_BACKBONE = {
    "dims": [8, 16, 32, 64],
    "depths": [1, 1, 1, 1],
    "heads": [1, 1, 2, 2],
    "groups": [-1, -1, 1, 1],
    "window_sizes": [4, 4, 2, 2],
    "stage_spec": [["L"], ["S"], ["D"], ["D"]],
}
TINY_DETR = {"d_model": 32, "num_heads": 2, "dim_feedforward": 32, "num_queries": 8, "backbone_kwargs": TINY_BACKBONE}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built-in digits detection set of 4 + 4 canvases."""
    return build_digits_detection(tmp_path_factory.mktemp("digits") / "set", num_train=4, num_val=4)


@pytest.fixture(scope="module")
def run_dir(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the demo writes it, with a tiny randomly initialised detector."""
    run = tmp_path_factory.mktemp("run")
    config = demo_config(run, digits, seed=0)
    config.model.kwargs = dict(TINY_DETR)
    save_config(config, run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(config, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model_final.safetensors"))
    return run


@pytest.fixture
def two_images(digits: Path, tmp_path: Path) -> Path:
    """A folder with two validation canvases (one as JPEG) and a text file, which is not an image."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(digits / "val" / "images" / "00001.png").save(folder / "a.png")
    Image.open(digits / "val" / "images" / "00002.png").resize((160, 96)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_json_and_pngs_for_a_folder(run_dir: Path, two_images: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["predict", str(two_images), "--run", str(run_dir), "--output-dir", str(out), "--score-threshold", "0"]
    assert main(argv) == 0
    assert "2 annotated PNG(s)" in capsys.readouterr().out
    result = json.loads((out / "predictions.json").read_text())
    assert result["task"] == "detection" and result["model"] == "deformable_detr_dat_digits"
    assert result["weights"] == str(run_dir / "model_final.safetensors") and result["score_threshold"] == 0
    assert [Path(image["file"]).name for image in result["images"]] == ["a.png", "b.jpg"]
    for image, size, scale in zip(result["images"], [(128, 128), (160, 96)], [3, 4], strict=True):
        assert (image["width"], image["height"]) == size
        assert len(image["detections"]) == 80  # the recipe's num_select pairs of (8 queries x 10 classes), threshold 0
        scores = [d["score"] for d in image["detections"]]
        assert scores == sorted(scores, reverse=True)
        for detection in image["detections"]:
            x0, y0, x1, y1 = detection["box"]
            assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]  # original pixels, clipped
            assert detection["category"] == str(detection["label"])  # the digits' category names
        png = Image.open(out / image["png"])
        assert png.size == (size[0] * scale, size[1] * scale)  # enlarged to a shorter side >= 384


def test_predict_threshold_filters(run_dir: Path, two_images: Path, tmp_path: Path):
    assert (
        main(
            [
                "predict",
                str(two_images / "a.png"),
                "--run",
                str(run_dir),
                "--output-dir",
                str(tmp_path),
                "--score-threshold",
                "0.99",
            ]
        )
        == 0
    )
    (image,) = json.loads((tmp_path / "predictions.json").read_text())["images"]
    assert image["detections"] == []  # a random model is not that sure of anything


def test_predict_names_an_unreadable_image(run_dir: Path, two_images: Path, tmp_path: Path, capsys):
    corrupt = two_images / "c.png"
    corrupt.write_bytes(Image.open(two_images / "a.png").tobytes()[:100])  # pixels without a PNG header
    out = tmp_path / "out"
    assert main(["predict", str(two_images), "--run", str(run_dir), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "deformvision predict: error: cannot read image" in err and str(corrupt) in err
    assert not (out / "predictions.json").exists()


def test_predict_input_errors(run_dir: Path, tmp_path: Path, capsys):
    assert main(["predict", str(tmp_path / "missing.png"), "--run", str(run_dir)]) == 1
    assert "no such image file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--run", str(run_dir)]) == 1
    assert "holds no image file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "empty"), "--run", str(tmp_path)]) == 1
    assert "is not a run directory" in capsys.readouterr().err


def test_predict_with_a_config_file_and_checkpoint(run_dir: Path, two_images: Path, tmp_path: Path):
    argv = [
        "predict",
        str(two_images / "a.png"),
        "--config",
        str(run_dir / "config.yaml"),
        "--checkpoint",
        str(run_dir / "model_final.safetensors"),
        "--output-dir",
        str(tmp_path),
        "--set",
        "loss.num_select=5",
        "--score-threshold",
        "0",
    ]
    assert main(argv) == 0
    (image,) = json.loads((tmp_path / "predictions.json").read_text())["images"]
    assert len(image["detections"]) == 5


def test_predict_top_k_classes_of_a_registered_classifier(two_images: Path, tmp_path: Path):
    torch.manual_seed(0)
    kwargs = {**TINY_BACKBONE, "img_size": 32, "num_classes": 7}
    model = build_model(load_config(None, ["model.name=dat_tiny", f"model.kwargs={json.dumps(kwargs)}"]), 7)
    weights = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    argv = [
        "predict",
        str(two_images),
        "--model",
        "dat_tiny",
        "--checkpoint",
        str(weights),
        "--img-size",
        "32",
        "--model-kwargs",
        json.dumps({k: v for k, v in kwargs.items() if k != "num_classes"}),
        "--top-k",
        "3",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert result["task"] == "classification" and result["top_k"] == 3
    for image in result["images"]:
        top = image["top_k"]
        assert len(top) == 3 and all(0 <= t["label"] < 7 and t["class"] is None for t in top)  # 7: from the head
        assert top[0]["score"] >= top[1]["score"] >= top[2]["score"] and sum(t["score"] for t in top) <= 1.0
        assert (tmp_path / "out" / image["png"]).is_file()


def test_the_config_file_is_the_demo_recipe():
    """The deformable_detr_digits recipe trains what the demo trains (the demo's schedule is a time budget)."""
    config = load_config(recipe_path("deformable_detr_digits"))
    recipe = demo_config(Path("run"), Path("data"), seed=0)
    assert config.model == recipe.model
    assert config.aug == recipe.aug and config.optim == recipe.optim and config.loss == recipe.loss
    assert config.data.batch_size == demo_recipe()["data"]["batch_size"] and config.threads == recipe.threads
    # training images are resized only: a mirrored digit is not that digit
    steps = build_transforms(config, train=True).transforms
    names = [type(t).__name__ for t in steps]
    assert names == ["ToTVTensors", "ClampBoundingBoxes", "Resize", "ToImage", "ToDtype", "Normalize", "NormalizeBoxes"]
    assert steps[2].size is None and steps[2].max_size == 128  # the 128-pixel canvases keep their size


def test_demo_help(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for text in ("--output-dir", "--minutes", "--epochs", "--seed", "--num-train", "sampling_points.png"):
        assert text in out, text


def test_demo_end_to_end(tmp_path: Path):
    """One epoch on 32 canvases, evaluated on 16: every file is written (a subprocess, as a user runs it)."""
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deformvision.cli",
            "demo",
            "--epochs",
            "1",
            "--num-train",
            "32",
            "--num-val",
            "16",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "COCO box AP" in proc.stdout and "Average Precision" in proc.stdout
    for name in (
        "config.yaml",
        "model_final.safetensors",
        "metrics.json",
        "log.jsonl",
        "sampling_points.png",
        "predictions/predictions.json",
    ):
        assert (out / name).is_file(), name
        assert str(out / name) in proc.stdout, name  # it says where everything went
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["coco"]) == set(STAT_NAMES) and metrics["steps"] == 4 and metrics["num_val"] == 16
    predictions = json.loads((out / "predictions" / "predictions.json").read_text())
    assert len(predictions["images"]) == 8
    assert all((out / "predictions" / image["png"]).is_file() for image in predictions["images"])
    picture = Image.open(out / "sampling_points.png")
    assert picture.height > 512 and picture.width > 4 * 512  # detections, 2 DAT blocks, decoder locations
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name"] == "deformable_detr_dat_digits"
    # the run directory serves predict
    val = out / "data" / "digits_detection_32_16" / "val" / "images"
    assert main(["predict", str(val), "--run", str(out), "--output-dir", str(tmp_path / "p")]) == 0


def test_semantic_demo_end_to_end(tmp_path: Path):
    """``demo --task semantic``: one epoch on 16 canvases; mIoU in metrics.json, class maps drawn and saved."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deformvision.cli",
            "demo",
            "--task",
            "semantic",
            "--epochs",
            "1",
            "--num-train",
            "16",
            "--num-val",
            "8",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mIoU" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "semantic" and 0.0 <= metrics["mIoU"] <= 1.0 and metrics["steps"] == 2
    predictions = json.loads((out / "predictions" / "predictions.json").read_text())
    assert predictions["task"] == "semantic" and len(predictions["images"]) == 8
    for image in predictions["images"]:
        label_map = np.array(Image.open(out / "predictions" / image["label_map"]))
        assert label_map.shape == (128, 128) and label_map.max() <= 10
        fractions = {c["label"]: c["fraction"] for c in image["classes"]}
        assert fractions == {k: pytest.approx((label_map == k).mean(), abs=1e-4) for k in np.unique(label_map)}
        assert Image.open(out / "predictions" / image["png"]).width > 2 * 384  # image and overlay side by side


def test_instance_demo_end_to_end(tmp_path: Path):
    """``demo --task instance``: one epoch on 16 canvases; box and mask AP in metrics.json, masks as RLE."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deformvision.cli",
            "demo",
            "--task",
            "instance",
            "--epochs",
            "1",
            "--num-train",
            "16",
            "--num-val",
            "8",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "segm_AP50" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "instance" and {f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES} <= set(metrics)
    predictions = json.loads((out / "predictions" / "predictions.json").read_text())
    assert predictions["task"] == "instance" and len(predictions["images"]) == 8
    for image in predictions["images"]:
        for detection in image["detections"]:
            assert detection["segmentation"]["size"] == [128, 128] and detection["score"] >= 0.3


def test_predict_with_a_model_name_uses_its_pretrained_weights(two_images, tmp_path, monkeypatch, capsys):
    """No --checkpoint: the published ImageNet weights (here a pre-filled cache) and their class names."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    model = dv.create_model("dat_tiny", **TINY_BACKBONE, img_size=32)  # 1000 classes, as the published head
    cfg = dv.models.get_pretrained_cfg("dat_tiny")
    cached = weights_path(cfg.url, "dat_tiny.in1k")
    cached.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, cached)
    argv = [
        "predict",
        str(two_images),
        "--model",
        "dat_tiny",
        "--img-size",
        "32",
        "--top-k",
        "3",
        "--model-kwargs",
        json.dumps(TINY_BACKBONE),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert result["weights"] == str(cached)
    transform = build_transforms(load_config(None, ["model.name=dat_tiny", "data.img_size=32"]), train=False)
    names = [ImageNetInfo().index_to_description(i) for i in range(1000)]
    printed = capsys.readouterr().out
    for image in result["images"]:
        with torch.no_grad():
            expected = model.eval()(transform(Image.open(image["file"]).convert("RGB"))[None])[0].softmax(-1)
        labels = expected.topk(3).indices.tolist()
        assert [t["label"] for t in image["top_k"]] == labels
        assert [t["class"] for t in image["top_k"]] == [names[i] for i in labels]
        assert f"{image['file']}: {names[labels[0]]}" in printed


def test_predict_refuses_a_model_without_weights(two_images, tmp_path, capsys):
    argv = ["predict", str(two_images), "--model", "deformable_detr_dat_digits", "--output-dir", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "deformable_detr_dat_digits has no published weights: pass --checkpoint PATH" in err
    assert not (tmp_path / "predictions.json").exists()


def test_demo_config_refuses_a_bad_task_or_budget():
    with pytest.raises(ValueError, match="task must be one of detection, instance, semantic, got 'panoptic'"):
        demo_config(Path("run"), Path("data"), seed=0, task="panoptic")
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        demo_config(Path("run"), Path("data"), seed=0, epochs=0)
    with pytest.raises(ValueError, match="minutes must be positive, got nan"):
        demo_config(Path("run"), Path("data"), seed=0, minutes=float("nan"))


def test_the_demo_budget_is_the_recipe_schedule():
    """--minutes sets a time budget; --epochs replaces it with epochs (the schedule then follows the steps)."""
    timed = demo_config(Path("run"), Path("data"), seed=0, minutes=3.0).schedule
    assert (timed.max_seconds, timed.max_steps, timed.lr_drop_at, timed.warmup_steps) == (180.0, 0, (0.8,), 49)
    counted = demo_config(Path("run"), Path("data"), seed=0, epochs=2).schedule
    assert (counted.max_seconds, counted.max_steps, counted.epochs) == (0.0, 0, 2)
