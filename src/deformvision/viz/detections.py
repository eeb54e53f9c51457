"""Detections drawn on images with PIL: boxes, class names and scores, one colour per class.

Boxes are absolute ``(x0, y0, x1, y1)`` in pixels of the image they are drawn on, with pixel edges at
integers (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``), as
:class:`~deformvision.models.deformable_detr.PostProcess` returns them for the original image size.
Small images can be enlarged first (``scale``): boxes, points and text then stay legible.
"""

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]

# 12 colours that stay distinct on dark and light backgrounds (Tableau 10 and two more).
PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (255, 215, 0),
    (0, 255, 127),
)
FONT_SIZE = 12


def label_color(index: int) -> Color:
    """The palette colour of a class label (or any other index), cycling."""
    return PALETTE[index % len(PALETTE)]


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def enlarge(image: Image.Image, scale: int) -> Image.Image:
    """``image`` as RGB, enlarged ``scale`` times with nearest-neighbour sampling (pixels stay crisp)."""
    image = image.convert("RGB")
    if scale == 1:
        return image.copy()
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def legible_scale(image: Image.Image, min_side: int = 384) -> int:
    """The integer enlargement that brings the shorter side of ``image`` to at least ``min_side`` pixels."""
    return max(1, -(-min_side // min(image.size)))


def draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: Color, image_width: int) -> None:
    """``text`` in white on a ``color`` box whose bottom-left corner is ``xy`` (below it at the top edge,
    moved left to end inside ``image_width``)."""
    text_font = font()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    width, height = right - left + 4, bottom - top + 2
    x = min(max(xy[0], 0), max(image_width - width, 0))
    y = xy[1] - height if xy[1] - height >= 0 else xy[1]
    draw.rectangle((x, y, x + width, y + height), fill=color)
    draw.text((x + 2 - left, y + 1 - top), text, fill=(255, 255, 255), font=text_font)


def draw_detections(
    image: Image.Image,
    boxes: torch.Tensor | Sequence[Sequence[float]],
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    score_threshold: float = 0.0,
    scale: int = 1,
    width: int = 2,
) -> Image.Image:
    """A copy of ``image`` (enlarged ``scale`` times) with the detections drawn on it.

    Args:
        image: the image the boxes refer to (any PIL mode; drawn in RGB).
        boxes: ``(n, 4)`` absolute ``(x0, y0, x1, y1)`` in pixels of ``image``.
        labels: ``(n,)`` class labels (they pick the colour).
        scores: ``(n,)`` confidences, or ``None``; detections below ``score_threshold`` are not drawn.
        class_names: ``class_names[label]`` is written instead of the label number when given and non-empty.
        score_threshold: the lowest score drawn.
        scale: integer enlargement of the output (boxes scaled with it).
        width: box outline width in output pixels.

    Returns:
        An RGB image of size ``(scale * W, scale * H)``.
    """
    out = enlarge(image, scale)
    draw = ImageDraw.Draw(out)
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).tolist() if scores is not None else None
    order = range(len(labels)) if scores is None else sorted(range(len(labels)), key=scores.__getitem__)
    for i in order:  # lowest score first: the best detections are drawn on top
        if scores is not None and scores[i] < score_threshold:
            continue
        label = int(labels[i])
        color = label_color(label)
        x0, y0, x1, y1 = (boxes[i] * scale).tolist()
        draw.rectangle((x0, y0, max(x1, x0) - 1, max(y1, y0) - 1), outline=color, width=width)
        name = class_names[label] if class_names is not None and label < len(class_names) else ""
        text = name or str(label)
        if scores is not None:
            text += f" {scores[i]:.2f}"
        draw_label(draw, (x0, y0), text, color, out.width)
    return out


def add_title(image: Image.Image, title: str) -> Image.Image:
    """``image`` with a line of black text on a white band above it."""
    text_font = font()
    height = text_font.getbbox("Hg")[3] + 8
    out = Image.new("RGB", (image.width, image.height + height), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, height))
    ImageDraw.Draw(out).text((4, 4), title, fill=(0, 0, 0), font=text_font)
    return out


def side_by_side(panels: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """The panels in a row, top-aligned, ``gap`` white pixels apart, on a white background."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for panel in panels:
        out.paste(panel.convert("RGB"), (x, 0))
        x += panel.width + gap
    return out
