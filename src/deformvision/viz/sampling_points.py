"""Where deformable attention looks: DAT's deformed sampling points and MSDeformAttn's sampling locations.

Two coordinate conventions meet here, both converted to continuous pixel coordinates ``(x, y)`` of the
input image (pixel edges at integers: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``, its centre is
``(j + 0.5, i + 0.5)``), the convention of :mod:`~deformvision.viz.detections`:

- DAT (:class:`~deformvision.layers.SamplingPoints`): ``(y, x)`` in ``[-1, 1]`` with
  ``grid_sample(align_corners=True)``, so -1/+1 are the centres of the border pixels of the stage's
  ``h x w`` map; map pixel ``i`` is the centre of its ``stride x stride`` input patch, ``(i + 0.5) * stride``.
- MSDeformAttn: ``(x, y)`` in ``[0, 1]`` over each level's map (``align_corners=False``): 0 and 1 are its
  outer edges, so a location times the input size is its pixel position when the level map tiles the input
  exactly (true for the DAT backbones at sizes divisible by their largest stride; otherwise off by less
  than one level stride).

Nothing here computes a sampling location: the points, locations and attention weights drawn are the
tensors the modules computed in their forward pass, read by the hooks of :mod:`deformvision.layers.inspection`
(:func:`~deformvision.analysis.record_attention` for DAT, :func:`~deformvision.analysis.record_msda_sampling`,
re-exported here as :func:`record_sampling_locations`, for Deformable DETR).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from deformvision.layers.inspection import MSDASampling, record_attention
from deformvision.layers.inspection import record_msda_sampling as record_sampling_locations
from deformvision.viz.detections import Color, enlarge, label_color
from deformvision.viz.masks import add_legend

__all__ = [
    "DatBlockPoints",
    "MSDASampling",
    "dat_points_to_pixels",
    "dat_sampling_points",
    "draw_dat_sampling_points",
    "draw_dat_top_keys",
    "draw_msda_sampling_locations",
    "record_sampling_locations",
]

REFERENCE_COLOR: Color = (255, 255, 255)


@dataclass
class DatBlockPoints:
    """The sampling points of one DAT deformable block for one image, in input-image pixels ``(x, y)``.

    Attributes:
        name: the block, ``'stages.{i}.blocks.{j}'``.
        positions: ``(G, Hk, Wk, 2)`` deformed sampling positions per offset group.
        references: ``(G, Hk, Wk, 2)`` the reference grid they were moved from.
        stride: input pixels per pixel of the block's map.
        attention: ``(heads, Hq * Wq, Hk * Wk)`` attention probabilities of the block's queries (its map
            pixels, row-major) over the sampled keys; heads ``g * heads / G`` on read group ``g``'s points.
        query_map: ``(Hq, Wq)`` the block's query map.
    """

    name: str
    positions: Tensor
    references: Tensor
    stride: int
    attention: Tensor
    query_map: tuple[int, int]


def dat_points_to_pixels(points: Tensor, map_size: tuple[int, int], stride: float) -> Tensor:
    """DAT points ``(..., 2)`` ``(y, x)`` in ``[-1, 1]`` (align_corners=True over an ``(h, w)`` map) -> ``(..., 2)``
    ``(x, y)`` continuous pixels of an input whose pixels are ``stride`` times smaller than the map's."""
    h, w = map_size
    y = ((points[..., 0] + 1) / 2 * (h - 1) + 0.5) * stride
    x = ((points[..., 1] + 1) / 2 * (w - 1) + 0.5) * stride
    return torch.stack((x, y), -1)


@torch.no_grad()
def dat_sampling_points(backbone: nn.Module, image: Tensor) -> list[DatBlockPoints]:
    """The deformable blocks' sampling points and attention of a DAT model for one image, in input pixels.

    Read by :func:`~deformvision.analysis.record_attention` from the model's own forward pass.

    Args:
        backbone: a :class:`~deformvision.models.dat.DAT` (classifier or ``features_only`` backbone).
        image: ``(3, H, W)`` normalised image, as the model takes it.

    Returns:
        One :class:`DatBlockPoints` per ``D`` block, in network order.

    Raises:
        ValueError: ``image`` is not one ``(C, H, W)`` tensor.
    """
    if not isinstance(image, Tensor) or image.ndim != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be one (C, H, W) tensor, got {got}")
    with record_attention(backbone) as records:
        backbone(image[None])
    patch_size = backbone.stem.proj.stride[0]
    blocks = []
    for record in records:
        if record.kind != "deformable":
            continue
        stride = patch_size * 2 ** int(record.name.split(".")[1])  # 'stages.{i}.blocks.{j}'
        positions = dat_points_to_pixels(record.points.positions[0].float(), record.map_size, stride)
        references = dat_points_to_pixels(record.points.references[0].float(), record.map_size, stride)
        blocks.append(DatBlockPoints(record.name, positions, references, stride, record.probs[0, 0], record.map_size))
    return blocks


def _dot(
    draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: Color, outline: Color | None = None
) -> None:
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=outline)


def draw_dat_sampling_points(
    image: Image.Image, block: DatBlockPoints, *, scale: int = 1, groups: Sequence[int] | None = None
) -> Image.Image:
    """``image`` (enlarged ``scale`` times) with a DAT block's references, offsets and deformed positions.

    Each reference point is a small white dot joined by a line to its deformed position, a dot in its
    offset group's colour (groups are coloured with the detection palette from index 0).

    Args:
        image: the input image the points were computed for (its pixels are the points' unit).
        block: :func:`dat_sampling_points` output for that image.
        scale: integer enlargement of the output.
        groups: the offset groups to draw (default: all).

    Returns:
        An RGB image of size ``(scale * W, scale * H)``.
    """
    out = enlarge(image, scale)
    draw = ImageDraw.Draw(out)
    radius = max(2.0, scale * 0.75)
    for g in groups if groups is not None else range(block.positions.shape[0]):
        color = label_color(g)
        refs = (block.references[g].reshape(-1, 2) * scale).tolist()
        positions = (block.positions[g].reshape(-1, 2) * scale).tolist()
        for (rx, ry), (px, py) in zip(refs, positions, strict=True):
            draw.line((rx, ry, px, py), fill=color, width=1)
            _dot(draw, rx, ry, radius / 2, REFERENCE_COLOR)
            _dot(draw, px, py, radius, color, outline=(0, 0, 0))
    return out


def draw_dat_top_keys(
    image: Image.Image, block: DatBlockPoints, queries: Sequence[tuple[float, float]], *, k: int = 8, scale: int = 1
) -> Image.Image:
    """``image`` (enlarged) with a DAT block's deformed points and, for chosen queries, their ``k`` most attended.

    As the DAT paper's figures: all deformed points of the block are small grey dots; each query (a map
    pixel, marked by a ringed dot in its colour) is joined to its ``k`` keys of highest attention weight
    (averaged over the heads reading each offset group), dots in the query's colour whose size grows
    with the weight. A legend below names the queries.

    Args:
        image: the input image the points were computed for.
        block: :func:`dat_sampling_points` output for that image.
        queries: query positions ``(x, y)`` in input pixels; each selects the block map pixel holding it.
        k: keys to show per query, ``1 <= k <= G * Hk * Wk``.
        scale: integer enlargement.

    Returns:
        An RGB image ``scale * W`` wide, ``scale * H`` high plus the legend band.

    Raises:
        ValueError: ``k`` out of range, or a query outside the image.
    """
    groups = block.positions.shape[0]
    num_keys = block.positions[0].numel() // 2
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= groups * num_keys:
        raise ValueError(f"k must be an integer in [1, {groups * num_keys}] (the block's sampled keys), got {k!r}")
    out = enlarge(image, scale)
    draw = ImageDraw.Draw(out)
    radius = max(2.0, scale * 0.75)
    all_points = (block.positions.reshape(-1, 2) * scale).tolist()  # G * Hk * Wk, 2
    for x, y in all_points:
        _dot(draw, x, y, radius / 2, (160, 160, 160))
    heads = block.attention.shape[0]
    names = []
    for n, (x, y) in enumerate(queries):
        if not (0 <= x < image.width and 0 <= y < image.height):
            raise ValueError(f"query {n} (x, y) = {(x, y)} is outside the {image.width}x{image.height} image")
        row = min(int(y // block.stride), block.query_map[0] - 1)
        col = min(int(x // block.stride), block.query_map[1] - 1)
        weights = block.attention[:, row * block.query_map[1] + col]  # heads, Hk * Wk
        weights = weights.view(groups, heads // groups, -1).mean(1).flatten() / groups  # G * Hk * Wk, sums to 1
        top = weights.topk(k)
        color = label_color(n)
        center = ((col + 0.5) * block.stride * scale, (row + 0.5) * block.stride * scale)
        for weight, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            px, py = all_points[index]
            draw.line((*center, px, py), fill=color, width=1)
            _dot(draw, px, py, radius * (0.8 + 1.2 * (weight / top.values[0].item()) ** 0.5), color, outline=(0, 0, 0))
        _dot(draw, *center, radius * 2, color, outline=REFERENCE_COLOR)
        names.append(f"query ({x:g}, {y:g}): top-{k} keys, {100 * top.values.sum().item():.0f}% of its attention")
    return add_legend(out, names, range(len(names)))


# --------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (Deformable DETR)


def draw_msda_sampling_locations(
    image: Image.Image,
    sampling: MSDASampling,
    queries: Sequence[int],
    *,
    image_index: int = 0,
    boxes: Tensor | None = None,
    colors: Sequence[Color] | None = None,
    scale: int = 1,
    levels: Sequence[int] | None = None,
    color_by_level: bool = False,
) -> Image.Image:
    """``image`` (enlarged ``scale`` times) with the sampling locations of some queries of one MSDeformAttn call.

    Every location of a query (all heads, levels and points) is a dot in the query's colour (or its level's)
    whose area grows with its attention weight; the query's reference point is a white-ringed dot (a white
    dot ringed in the query's colour when coloured by level) and its box, when given, an outline.

    Args:
        image: the (unpadded) input image; locations in ``[0, 1]`` are scaled by its size.
        sampling: the call's :class:`MSDASampling`.
        queries: indices of the queries to draw.
        image_index: the image of the batch.
        boxes: ``(len(queries), 4)`` absolute ``(x0, y0, x1, y1)`` in pixels of ``image``, drawn as outlines.
        colors: one colour per query (default: the palette in query order).
        scale: integer enlargement of the output.
        levels: the feature levels whose locations are drawn (default: all).
        color_by_level: colour each location by its feature level (palette index = level) instead of by
            query, as Deformable DETR's figures, with a legend of the levels below the image.

    Returns:
        An RGB image of size ``(scale * W, scale * H)`` (plus the legend band when ``color_by_level``).
    """
    out = enlarge(image, scale)
    draw = ImageDraw.Draw(out)
    size = torch.tensor([image.width * scale, image.height * scale], dtype=torch.float32)
    colors = colors if colors is not None else [label_color(k) for k in range(len(queries))]
    level_index = list(levels) if levels is not None else list(range(sampling.locations.shape[3]))
    base_radius = max(1.5, scale * 0.6)
    for k, query in enumerate(queries):
        locations = sampling.locations[image_index, query][:, level_index].float().cpu() * size  # M, L', P, 2
        weights = sampling.weights[image_index, query][:, level_index].float().cpu()  # M, L', P
        if boxes is not None:
            draw.rectangle((boxes[k].cpu() * scale).tolist(), outline=colors[k], width=2)
        order = weights.flatten().argsort().tolist()  # heaviest last, on top
        flat_locations, flat_weights = locations.reshape(-1, 2).tolist(), weights.flatten().tolist()
        flat_levels = torch.tensor(level_index)[None, :, None].expand(weights.shape).flatten().tolist()
        num_points = len(flat_weights) / weights.shape[0]  # per head: uniform attention is 1 / num_points
        for i in order:
            radius = base_radius * (0.6 + 1.4 * min(1.0, (flat_weights[i] * num_points) ** 0.5 / 2))
            _dot(draw, *flat_locations[i], radius, label_color(flat_levels[i]) if color_by_level else colors[k])
        reference = sampling.reference_points[image_index, query, 0, :2].float().cpu() * size  # level 0, valid ratio 1
        if color_by_level:  # white, ringed in the query's colour
            _dot(draw, *reference.tolist(), base_radius * 2, REFERENCE_COLOR, outline=colors[k])
        else:
            _dot(draw, *reference.tolist(), base_radius * 2, colors[k], outline=REFERENCE_COLOR)
    if color_by_level:
        return add_legend(out, [f"level {level}" for level in range(sampling.locations.shape[3])], level_index)
    return out
