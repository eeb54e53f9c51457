"""Masks and label maps drawn over images: exactly the labelled pixels change, in their class colour."""

import numpy as np
import pytest
import torch
from PIL import Image

from deformvision.viz import add_legend, draw_instances, draw_label_map, label_color


def test_label_map_tints_exactly_its_classes_with_the_blend_formula():
    image = Image.fromarray(np.full((6, 8, 3), 100, np.uint8))
    label_map = np.zeros((6, 8), np.int64)
    label_map[1:3, 2:5] = 3
    label_map[4, 6] = 7
    out = np.asarray(draw_label_map(image, label_map, alpha=0.5, skip=[0])).astype(np.float64)
    expected = np.full((6, 8, 3), 100.0)
    for k in (3, 7):
        expected[label_map == k] = np.round(0.5 * 100 + 0.5 * np.array(label_color(k)))
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="label_map has shape"):
        draw_label_map(image, label_map[:5])


def test_instances_tint_their_masks_and_leave_the_rest():
    image = Image.fromarray(np.zeros((60, 60, 3), np.uint8))
    masks = torch.zeros(1, 1, 60, 60)
    masks[0, 0, 40:50, 40:50] = 0.9
    out = np.asarray(
        draw_instances(image, masks, torch.tensor([[30.0, 30.0, 56.0, 56.0]]), torch.tensor([4]), alpha=0.5)
    )
    inside = out[42:48, 42:48].reshape(-1, 3)
    assert (inside == np.round(0.5 * np.array(label_color(4)))).all()  # tinted (outline and name are elsewhere)
    assert (out[:10, :] == 0).all() and (out[:, :10] == 0).all()  # far from the box and mask: untouched


def test_legend_wraps_to_the_image_width():
    image = Image.new("RGB", (120, 40))
    one_row = add_legend(image, ["a", "b"], [0, 1])
    many = add_legend(image, [f"class {k}" for k in range(10)], list(range(10)))
    assert one_row.width == many.width == 120 and many.height > one_row.height > 40
