"""The papers' pictures of one image, every one read through :mod:`deformvision.layers.inspection`.

- :func:`dat_figures`: per deformable block of a DAT, the deformed points (references -> positions, per
  offset group) and, for chosen query positions, the keys of highest attention (DAT, Fig. 6).
- :func:`detr_figure`: the last decoder layer's sampling locations of Deformable DETR's top-scoring
  queries, coloured by feature level, with their boxes (Deformable DETR, Fig. 5).
"""

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import box_convert

from deformvision.layers.inspection import record_msda_sampling
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.viz.detections import add_title, label_color
from deformvision.viz.sampling_points import (
    dat_sampling_points,
    draw_dat_sampling_points,
    draw_dat_top_keys,
    draw_msda_sampling_locations,
)


def default_queries(image: Image.Image) -> list[tuple[float, float]]:
    """Three query positions ``(x, y)`` in pixels: the centre and two points on the diagonal at 1/4 and 3/4."""
    w, h = image.size
    return [(w / 2, h / 2), (w / 4, h / 4), (3 * w / 4, 3 * h / 4)]


@torch.no_grad()
def dat_figures(
    backbone: nn.Module, x: Tensor, shown: Image.Image, queries: Sequence[tuple[float, float]], k: int, scale: int
) -> list[tuple[str, Image.Image, Image.Image]]:
    """Per deformable block of a DAT: its name and two titled panels, its deformed points and the top-``k`` keys
    of ``queries``.

    Args:
        backbone: the DAT (classifier or backbone), in eval mode.
        x: ``(3, H, W)`` the normalised input.
        shown: the image as the model saw it, ``W x H`` pixels (drawn underneath).
        queries: query positions ``(x, y)`` in pixels of ``shown``.
        k: keys per query.
        scale: integer enlargement.
    """
    figures = []
    for block in dat_sampling_points(backbone, x):
        groups = block.positions.shape[0]
        points = draw_dat_sampling_points(shown, block, scale=scale)
        points = add_title(points, f"{block.name}: {groups} group(s), white = reference, dot = deformed point")
        top = draw_dat_top_keys(shown, block, queries, k=k, scale=scale)
        top = add_title(top, f"{block.name}: grey = deformed points, top-{k} keys of each query")
        figures.append((block.name, points, top))
    return figures


@torch.no_grad()
def detr_figure(model: DeformableDETR, x: Tensor, shown: Image.Image, max_queries: int, scale: int) -> Image.Image:
    """The last decoder layer's sampling locations of the ``max_queries`` best queries, coloured by level.

    Args:
        model: the detector, in eval mode.
        x: ``(3, H, W)`` the normalised input.
        shown: the image as the model saw it (``W x H`` pixels).
        max_queries: queries drawn, by decreasing best class score.
        scale: integer enlargement.
    """
    with record_msda_sampling(model.transformer.decoder.layers[-1].cross_attn) as calls:
        outputs = model([x])
    scores = outputs["pred_logits"][0].sigmoid().max(-1).values.cpu()  # Q
    queries = scores.argsort(descending=True)[:max_queries].tolist()
    size = torch.tensor([shown.width, shown.height] * 2, dtype=torch.float32)
    boxes = box_convert(outputs["pred_boxes"][0, queries].float().cpu(), in_fmt="cxcywh", out_fmt="xyxy") * size
    levels = calls[-1].locations.shape[3]
    colors = [label_color(levels + n) for n in range(len(queries))]  # boxes in colours the levels do not use
    out = draw_msda_sampling_locations(
        shown, calls[-1], queries, boxes=boxes, colors=colors, scale=scale, color_by_level=True
    )
    best = ", ".join(f"{scores[q]:.2f}" for q in queries)
    return add_title(out, f"decoder sampling points of the {len(queries)} best queries (scores {best}), size ~ weight")
