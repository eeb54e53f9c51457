"""Instance masks and semantic label maps drawn over images with PIL, one colour per class.

Masks and label maps are in pixels of the image they are drawn on (``(H, W)``, as the image's
``(height, width)``); with ``scale`` the picture is enlarged with nearest-neighbour sampling so that
small images stay legible.
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from deformvision.viz.detections import draw_detections, enlarge, font, label_color


def _blend(image: Image.Image, colors: np.ndarray, where: np.ndarray, alpha: float) -> Image.Image:
    """``image`` (RGB) with ``colors[y, x]`` blended in at ``alpha`` where ``where[y, x]``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mixed = np.where(where[..., None], (1 - alpha) * pixels + alpha * colors, pixels)
    return Image.fromarray(mixed.round().astype(np.uint8))


def draw_instances(
    image: Image.Image,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    scale: int = 1,
) -> Image.Image:
    """A copy of ``image`` with each instance's mask tinted in its class colour and its box and name on top.

    Args:
        image: the image the masks refer to.
        masks: ``(n, H, W)`` (or ``(n, 1, H, W)``) masks, boolean or probabilities (drawn where ``> 0.5``).
        boxes: ``(n, 4)`` absolute ``(x0, y0, x1, y1)`` in pixels of ``image``.
        labels: ``(n,)`` class labels (they pick the colour).
        scores: ``(n,)`` confidences or ``None``.
        class_names: names written instead of the label numbers.
        alpha: opacity of the tint.
        scale: integer enlargement of the output.
    """
    masks = torch.as_tensor(masks).reshape(-1, image.height, image.width) > 0.5
    colors = np.zeros((image.height, image.width, 3), dtype=np.float32)
    covered = np.zeros((image.height, image.width), dtype=bool)
    order = range(len(masks)) if scores is None else torch.as_tensor(scores).argsort().tolist()
    for i in order:  # lowest score first: the best instance's colour ends on top
        mask = masks[i].numpy()
        colors[mask] = label_color(int(labels[i]))
        covered |= mask
    tinted = _blend(image, colors, covered, alpha)
    return draw_detections(tinted, boxes, labels, scores, class_names, scale=scale)


def label_map_colors(label_map: torch.Tensor | np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``(H, W, 3)`` float colours of a label map: class ``k`` in :func:`label_color` ``(k)``, ignored pixels black."""
    label_map = np.asarray(label_map)
    table = np.array([label_color(k) for k in range(256)], dtype=np.float32)
    colors = table[np.clip(label_map, 0, 255).astype(np.int64)]
    colors[label_map == ignore_index] = 0.0
    return colors


def draw_label_map(
    image: Image.Image,
    label_map: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.6,
    skip: Sequence[int] = (),
    scale: int = 1,
) -> Image.Image:
    """``image`` with each pixel tinted in the colour of its class in ``label_map`` ``(H, W)``.

    Classes in ``skip`` (e.g. the background) are left untinted.
    """
    label_map = np.asarray(label_map)
    if label_map.shape != (image.height, image.width):
        raise ValueError(f"label_map has shape {label_map.shape}, expected the image's {(image.height, image.width)}")
    where = ~np.isin(label_map, list(skip))
    return enlarge(_blend(image, label_map_colors(label_map), where, alpha), scale)


def add_legend(image: Image.Image, class_names: Sequence[str], classes: Sequence[int]) -> Image.Image:
    """``image`` with a white band below it: a swatch of each class's colour and its name, in rows that fit."""
    text_font = font()
    line = text_font.getbbox("Hg")[3] + 8
    measure = ImageDraw.Draw(image.copy())
    entries = []  # (x, row, name, colour)
    x, row = 4, 0
    for k in classes:
        name = class_names[k] if k < len(class_names) and class_names[k] else str(k)
        width = line + int(measure.textlength(name, font=text_font)) + 8
        if x > 4 and x + width > image.width:
            x, row = 4, row + 1
        entries.append((x, row, name, label_color(k)))
        x += width
    out = Image.new("RGB", (image.width, image.height + line * (row + 1)), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for x, row, name, color in entries:
        y = image.height + 4 + row * line
        draw.rectangle((x, y, x + line - 8, y + line - 8), fill=color)
        draw.text((x + line - 4, y), name, fill=(0, 0, 0), font=text_font)
    return out
