"""Detections drawn with PIL: output size, colours where the boxes are, thresholds, titles and panels."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from deformvision.viz import PALETTE, add_title, draw_detections, label_color, legible_scale, side_by_side

BACKGROUND = (40, 40, 40)


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (64, 48), BACKGROUND)


def test_boxes_are_drawn_in_their_class_colour_on_an_enlarged_copy(image: Image.Image, tmp_path: Path):
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [40.0, 5.0, 60.0, 25.0]])
    out = draw_detections(image, boxes, [3, 7], [0.9, 0.8], [str(d) for d in range(10)], scale=2)
    path = tmp_path / "detections.png"
    out.save(path)
    saved = Image.open(path)
    assert saved.size == (128, 96) and saved.mode == "RGB"
    assert saved.getpixel((20, 70)) == label_color(3)  # left edge of the first box, x0 = 10 -> 20
    assert saved.getpixel((119, 30)) == label_color(7)  # right edge of the second box, x1 = 60 -> 119
    assert saved.getpixel((60, 60)) == BACKGROUND  # inside the first box: not filled
    assert image.getpixel((10, 30)) == BACKGROUND  # the input is not modified


def test_detections_below_the_threshold_are_not_drawn(image: Image.Image):
    boxes = [[10, 20, 30, 40], [40, 5, 60, 25]]
    out = draw_detections(image, boxes, [3, 7], [0.9, 0.1], score_threshold=0.5)
    assert out.getpixel((10, 30)) == label_color(3)
    assert label_color(7) not in {color for _, color in out.getcolors(1 << 16)}


def test_no_detections_and_unknown_names(image: Image.Image):
    assert draw_detections(image, torch.zeros(0, 4), []).tobytes() == image.tobytes()
    out = draw_detections(image, [[2, 2, 20, 20]], [15], class_names=["a", "b"])  # label beyond the names
    assert out.getpixel((2, 19)) == label_color(15)


def test_palette_cycles_and_legible_scale():
    assert label_color(len(PALETTE) + 2) == PALETTE[2]
    assert legible_scale(Image.new("RGB", (128, 200))) == 3
    assert legible_scale(Image.new("RGB", (640, 480))) == 1


def test_title_and_panels(image: Image.Image):
    titled = add_title(image, "a title")
    assert titled.width == image.width and titled.height > image.height
    assert titled.getpixel((titled.width - 1, 0)) == (255, 255, 255)
    row = side_by_side([image, titled], gap=4)
    assert row.size == (2 * image.width + 4, titled.height)
    with pytest.raises(ValueError):
        side_by_side([])
