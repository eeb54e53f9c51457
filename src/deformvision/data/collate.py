"""Batching detection samples of different sizes into one padded tensor with a padding mask."""

import torch

from deformvision.data.transforms_det import Target


def collate_detection(
    batch: list[tuple[torch.Tensor, Target]],
) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    """Pad a list of ``(image (3, H_i, W_i), target)`` to the largest height and width (DETR's ``NestedTensor``).

    Images are placed at the top-left and padded with zeros on the bottom and right, so targets whose
    boxes are normalised by their own image's size (``target['size']``) stay valid.

    Returns:
        ``(images, mask, targets)``: images ``(B, 3, H_max, W_max)``, mask ``(B, H_max, W_max)`` bool,
        ``True`` on padding, and the targets as a list.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool)
    for i, image in enumerate(images):
        padded[i, :, : image.shape[-2], : image.shape[-1]] = image
        mask[i, : image.shape[-2], : image.shape[-1]] = False
    return padded, mask, [target for _, target in batch]
