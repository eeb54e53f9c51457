"""Shared inputs of the detection tests: a narrow DAT, two odd-sized images and their targets."""

import pytest
import torch

# A narrow DAT (all block kinds, deformable attention in stages 2-3) that runs on ~100-px images.
NARROW_DAT = {
    "img_size": 64,
    "dims": (16, 32, 64, 128),
    "depths": (1, 1, 2, 2),
    "heads": (1, 2, 4, 8),
    "groups": (-1, -1, 2, 4),
    "window_sizes": (4, 4, 4, 4),
    "stage_spec": (("L",), ("S",), ("L", "D"), ("L", "D")),
}
NUM_CLASSES = 5
# small resizing and few RoIs keep a train step of the 256-channel heads cheap on the CPU; no stochastic
# depth, which may drop a block's whole branch for the batch and leave its parameters without gradient
SMALL = {
    "num_classes": NUM_CLASSES,
    "backbone_kwargs": NARROW_DAT,
    "min_size": 96,
    "max_size": 128,
    "drop_path_rate": 0.0,
}
FEW_ROIS = {
    "mask_rcnn": {"rpn_post_nms_top_n_train": 32, "rpn_post_nms_top_n_test": 16, "box_batch_size_per_image": 32},
    "cascade_mask_rcnn": {"rpn_post_nms_top_n_train": 32, "rpn_post_nms_top_n_test": 16, "batch_size_per_image": 32},
    "retinanet": {},
}


def box_mask(height: int, width: int, box: list[float]) -> torch.Tensor:
    """``(height, width)`` uint8 mask of an integer box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.fixture
def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 70, 90, generator=generator), torch.rand(3, 96, 64, generator=generator)]


@pytest.fixture
def targets(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    boxes = [[[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 80.0, 40.0]], [[5.0, 20.0, 40.0, 90.0]]]
    labels = [[0, NUM_CLASSES - 1], [2]]
    result = []
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        height, width = image.shape[1:]
        result.append(
            {
                "boxes": torch.tensor(image_boxes),
                "labels": torch.tensor(image_labels),
                "masks": torch.stack([box_mask(height, width, b) for b in image_boxes]),
            }
        )
    return result
