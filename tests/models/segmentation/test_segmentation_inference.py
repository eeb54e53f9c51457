"""Whole-image and sliding-window inference: windows, overlap averaging, padding of small images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deformvision as dv
from deformvision.models.segmentation import slide_inference, sliding_windows, whole_inference

# 10x7 image, 4x4 windows every 3 pixels: rows start at 0, 3, 6 (the last ends at 10), columns at 0, 3.
WINDOWS_10x7 = [(0, 4, 0, 4), (0, 4, 3, 7), (3, 7, 0, 4), (3, 7, 3, 7), (6, 10, 0, 4), (6, 10, 3, 7)]
ROW_COVER = [1, 1, 1, 2, 1, 1, 2, 1, 1, 1]  # rows 3 and 6 are in two row spans
COL_COVER = [1, 1, 1, 2, 1, 1, 1]  # column 3 is in both column spans


def test_sliding_windows_by_hand():
    assert sliding_windows(10, 7, 4, 3) == WINDOWS_10x7
    # mmseg's ADE20K setting on a 512x683 image: one row, two columns, the second shifted back to end at 683
    assert sliding_windows(512, 683, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert sliding_windows(300, 400, 512, 341) == [(0, 300, 0, 400)]  # smaller than the crop: one window
    assert sliding_windows(8, 8, 4, 4) == [(0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    with pytest.raises(ValueError, match="stride .* must not exceed crop_size"):
        sliding_windows(10, 10, 4, 5)
    with pytest.raises(ValueError, match="crop_size must be a positive int or a pair"):
        sliding_windows(10, 10, (4, 0), 2)


def test_overlap_counts():
    count = np.zeros((10, 7), dtype=int)
    for y0, y1, x0, x1 in sliding_windows(10, 7, 4, 3):
        count[y0:y1, x0:x1] += 1
    np.testing.assert_array_equal(count, np.outer(ROW_COVER, COL_COVER))
    # a model returning ones everywhere: the average over the covering windows is one everywhere
    ones = slide_inference(lambda x: x.new_ones(x.shape[0], 2, *x.shape[-2:]), torch.randn(2, 3, 10, 7), 2, 4, 3)
    torch.testing.assert_close(ones, torch.ones(2, 2, 10, 7), rtol=0, atol=0)


def test_windows_are_placed_where_they_were_cut():
    """A model whose logits are the pixel's position inside its window: the result is the mean over windows."""

    def local_position(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.arange(h, dtype=x.dtype)[:, None].expand(h, w)
        cols = torch.arange(w, dtype=x.dtype)[None, :].expand(h, w)
        return torch.stack([rows, cols])[None].expand(b, 2, h, w)

    expected = np.zeros((2, 10, 7))
    for r in range(10):
        for c in range(7):
            covering = [(y0, x0) for y0, y1, x0, x1 in WINDOWS_10x7 if y0 <= r < y1 and x0 <= c < x1]
            expected[:, r, c] = np.mean([(r - y0, c - x0) for y0, x0 in covering], axis=0)
    got = slide_inference(local_position, torch.zeros(1, 3, 10, 7), crop_size=4, stride=3)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_pixelwise_model_slide_equals_whole(batch_size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)
    images = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        whole = whole_inference(conv, images)
        torch.testing.assert_close(whole, conv(images))
        slide = slide_inference(conv, images, 5, crop_size=(32, 24), stride=(20, 16), batch_size=batch_size)
        torch.testing.assert_close(slide, whole, rtol=1e-6, atol=1e-6)
        # images smaller than the crop: padded to the crop, the logits cropped back
        small = images[..., :20, :30]
        seen = []
        slide = slide_inference(lambda x: seen.append(x.shape) or conv(x), small, crop_size=32, stride=21)
        assert seen == [(1, 3, 32, 32)] * 2  # one window per image, at the crop size
        torch.testing.assert_close(slide, conv(small), rtol=1e-6, atol=1e-6)


def test_output_size_and_errors():
    conv = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(1, 3, 24, 36)
    with torch.no_grad():
        expected = F.interpolate(conv(images), size=(48, 72), mode="bilinear", align_corners=False)
        torch.testing.assert_close(whole_inference(conv, images, output_size=(48, 72)), expected)
        slide = slide_inference(conv, images, crop_size=16, stride=8, output_size=(48, 72))
        torch.testing.assert_close(slide, expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="num_classes is 3 but the model returned 4 channels"):
            slide_inference(conv, images, 3, crop_size=16, stride=8)
        with pytest.raises(ValueError, match=r"logits at its input size \(24, 36\), got \(12, 18\)"):
            whole_inference(lambda x: conv(x)[..., ::2, ::2], images)
        with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) tensor"):
            slide_inference(conv, images[0])


def test_segmentor_slide_with_one_full_window_equals_whole():
    torch.manual_seed(0)
    model = dv.create_model(
        "upernet_dat_tiny",
        num_classes=4,
        channels=16,
        aux_channels=8,
        backbone_kwargs={
            "dims": (16, 32, 64, 128),
            "depths": (1, 1, 2, 2),
            "heads": (1, 2, 4, 8),
            "groups": (-1, -1, 2, 4),
            "stage_spec": (("L",), ("S",), ("L", "D"), ("L", "D")),
        },
    ).eval()
    images = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        whole = whole_inference(model, images)
        assert whole.shape == (2, 4, 72, 100)
        torch.testing.assert_close(slide_inference(model, images, 4, crop_size=(72, 100), stride=(72, 100)), whole)
        # overlapping windows of a real model: a different but well-formed result
        slide = slide_inference(model, images, 4, crop_size=64, stride=32, batch_size=3)
        assert slide.shape == whole.shape and torch.isfinite(slide).all()
        torch.testing.assert_close(slide_inference(model, images, 4, crop_size=64, stride=32), slide)
