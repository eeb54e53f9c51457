"""build_instance_transforms: torchvision-detector targets (xyxy pixels, uint8 masks) moved with the image."""

import numpy as np
import pytest
import torch
from PIL import Image

from deformvision.data import build_instance_transforms
from deformvision.data._random import seeded
from deformvision.data.transforms_det import ToInstanceTarget

H, W = 60, 100
BOXES = [[10, 20, 30, 50], [60, 5, 95, 15]]


def _scene() -> tuple[Image.Image, dict[str, torch.Tensor]]:
    """A black 100x60 (W x H) image with two white rectangles, their boxes and masks (the same pixels)."""
    pixels = np.zeros((H, W, 3), np.uint8)
    masks = np.zeros((2, H, W), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(BOXES):
        pixels[y0:y1, x0:x1] = 255
        masks[k, y0:y1, x0:x1] = 1
    target = {
        "boxes": torch.tensor(BOXES, dtype=torch.float32),
        "masks": torch.from_numpy(masks),
        "labels": torch.tensor([3, 7]),
        "area": torch.tensor([600.0, 350.0]),
        "iscrowd": torch.tensor([0, 0]),
        "image_id": torch.tensor(4),
    }
    return Image.fromarray(pixels), target


def _check_types(image: torch.Tensor, target: dict[str, torch.Tensor]) -> None:
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert type(target["masks"]) is torch.Tensor and target["masks"].dtype == torch.uint8
    n = len(target["boxes"])
    assert len(target["masks"]) == len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
    assert target["size"].tolist() == list(image.shape[1:])


def test_eval_keeps_pixels_and_boxes() -> None:
    img, target = _scene()
    image, out = build_instance_transforms(False)(img, target)
    _check_types(image, out)
    assert image.shape == (3, H, W)
    assert torch.equal(image, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
    assert out["boxes"].tolist() == BOXES and torch.equal(out["masks"], target["masks"])
    assert out["labels"].tolist() == [3, 7] and out["image_id"] == 4


def test_flip_moves_boxes_and_masks() -> None:
    img, target = _scene()
    image, out = build_instance_transforms(True, hflip=1.0)(img, target)
    _check_types(image, out)
    # x -> W - x: (10, 20, 30, 50) -> (70, 20, 90, 50); (60, 5, 95, 15) -> (5, 5, 40, 15)
    assert out["boxes"].tolist() == [[70, 20, 90, 50], [5, 5, 40, 15]]
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    assert torch.equal(image[0] > 0.5, out["masks"].sum(0) > 0)
    assert torch.equal(target["boxes"], torch.tensor(BOXES, dtype=torch.float32))  # the input is not modified
    assert build_instance_transforms(True, hflip=0.0)(img, target)[1]["boxes"].tolist() == BOXES


@pytest.mark.parametrize("seed", range(12))
def test_crop_keeps_masks_in_step_and_drops_empty_objects(seed: int) -> None:
    img, target = _scene()
    with seeded(seed):
        image, out = build_instance_transforms(True, hflip=0.5, crop=(20, 60), crop_prob=1.0)(img, target)
    _check_types(image, out)
    assert image.shape[1] <= H and image.shape[2] <= 60 and image.shape[1] >= 20
    white = image[0] > 0.5
    assert torch.equal(white, out["masks"].sum(0) > 0)  # every white pixel belongs to a kept mask
    for box, mask in zip(out["boxes"].tolist(), out["masks"], strict=True):
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        assert box == [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]
    area_of = {600.0: 3, 350.0: 7}
    assert out["labels"].tolist() == [area_of[a] for a in out["area"].tolist()]


def test_to_instance_target_drops_empty_boxes() -> None:
    image = torch.zeros(3, 8, 8)
    target = {
        "boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0], [2.0, 2.0, 2.0, 6.0], [3.0, 5.0, 6.0, 5.0]]),
        "labels": torch.tensor([0, 1, 2]),
        "masks": torch.ones(3, 8, 8, dtype=torch.uint8),
    }
    _, out = ToInstanceTarget()(image, target)
    assert out["boxes"].tolist() == [[1.0, 1.0, 4.0, 4.0]] and out["labels"].tolist() == [0]
    assert out["masks"].shape == (1, 8, 8)


def test_determinism_and_argument_errors() -> None:
    img, target = _scene()
    transforms = build_instance_transforms(True, crop=(20, 60))
    runs = []
    for _ in range(2):
        with seeded(3):
            runs.append(transforms(img, target))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1]["masks"], runs[1][1]["masks"])
    with pytest.raises(ValueError, match="hflip must be a probability"):
        build_instance_transforms(True, hflip=1.5)
    with pytest.raises(ValueError, match="crop_prob must be a probability"):
        build_instance_transforms(True, crop_prob=-0.1)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        build_instance_transforms(True, crop=(50, 20))
