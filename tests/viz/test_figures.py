"""The papers' pictures: Deformable DETR's sampling by level, DAT's panels; the collapse plot."""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from deformvision.models import create_model
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.viz import label_color
from deformvision.viz.figures import dat_figures, default_queries, detr_figure
from deformvision.viz.plots import plot_collapse

TINY_DAT = {
    "img_size": 64,
    "dims": (8, 16, 32, 64),
    "depths": (1, 1, 2, 1),
    "heads": (1, 1, 2, 2),
    "groups": (-1, -1, 2, 1),
    "window_sizes": (4, 4, 2, 1),
    "stage_spec": (("L",), ("S",), ("L", "D"), ("D",)),
}


def tiny_detector() -> DeformableDETR:
    torch.manual_seed(0)
    backbone = create_model("dat_tiny", features_only=True, out_indices=(1, 2, 3), **TINY_DAT)
    return DeformableDETR(
        backbone, 3, num_queries=5, d_model=32, num_heads=4, enc_layers=1, dec_layers=1, dim_feedforward=64
    ).eval()


def test_detr_figure_colours_sampling_points_by_level(tmp_path: Path):
    model = tiny_detector()
    shown = Image.new("RGB", (128, 128), (128, 128, 128))
    figure = detr_figure(model, torch.randn(3, 128, 128), shown, max_queries=2, scale=2)
    figure.save(tmp_path / "detr.png")
    saved = Image.open(tmp_path / "detr.png")
    assert saved.width == 256 and saved.height > 256  # title above, level legend below
    colors = {color for _, color in saved.getcolors(1 << 16)}
    assert {label_color(level) for level in range(4)} <= colors  # four feature levels (strides 8 to 64) ...
    drawn = {color for _, color in saved.crop((0, 0, 256, 256)).getcolors(1 << 16)}  # title and image, no legend
    assert len({label_color(level) for level in range(4)} & drawn) >= 2  # ... on the image, not only the legend
    assert {label_color(4), label_color(5)} <= drawn  # the two queries' boxes, in colours no level uses


def test_dat_figures_of_a_detector_backbone():
    model = tiny_detector()
    shown = Image.new("RGB", (64, 64))
    figures = dat_figures(model.backbone, torch.randn(3, 64, 64), shown, default_queries(shown), k=2, scale=2)
    assert [name for name, _, _ in figures] == ["stages.2.blocks.1", "stages.3.blocks.0"]
    assert all(points.width == top.width == 128 for _, points, top in figures)


def test_plot_collapse(tmp_path: Path):
    results = {
        "a": {"b0": {"cross_query": 0.5, "cross_layer": None}, "b1": {"cross_query": 0.7, "cross_layer": 0.9}},
        "b": {"b0": {"cross_query": 0.2, "cross_layer": None}},
    }
    path = plot_collapse(results, tmp_path / "plot.png")
    with Image.open(path) as image:
        image.verify()
    assert Image.open(path).size == (1000, 400)
    with pytest.raises(ValueError, match="results must hold at least one model"):
        plot_collapse({}, tmp_path / "empty.png")


def test_plot_collapse_without_matplotlib(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install 'deformvision\[plot\]'"):
        plot_collapse({"a": {"b0": {"cross_query": 1.0, "cross_layer": None}}}, tmp_path / "plot.png")
