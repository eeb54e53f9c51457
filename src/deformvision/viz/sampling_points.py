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

The decoder's sampling locations are not stored by the model: :func:`record_sampling_locations` hooks an
:class:`~deformvision.layers.MSDeformAttn` and recomputes them from the module's inputs and parameters
(:func:`msda_sampling_locations`), the same formula as its ``forward``.
"""

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from deformvision.layers import MSDeformAttn
from deformvision.viz.detections import Color, enlarge, label_color

REFERENCE_COLOR: Color = (255, 255, 255)


@dataclass
class DatBlockPoints:
    """The sampling points of one DAT deformable block for one image, in input-image pixels ``(x, y)``.

    Attributes:
        name: the block, ``'stages.{i}.blocks.{j}'``.
        positions: ``(G, Hk, Wk, 2)`` deformed sampling positions per offset group.
        references: ``(G, Hk, Wk, 2)`` the reference grid they were moved from.
        stride: input pixels per pixel of the block's map.
    """

    name: str
    positions: Tensor
    references: Tensor
    stride: int


def dat_points_to_pixels(points: Tensor, map_size: tuple[int, int], stride: float) -> Tensor:
    """DAT points ``(..., 2)`` ``(y, x)`` in ``[-1, 1]`` (align_corners=True over an ``(h, w)`` map) -> ``(..., 2)``
    ``(x, y)`` continuous pixels of an input whose pixels are ``stride`` times smaller than the map's."""
    h, w = map_size
    y = ((points[..., 0] + 1) / 2 * (h - 1) + 0.5) * stride
    x = ((points[..., 1] + 1) / 2 * (w - 1) + 0.5) * stride
    return torch.stack((x, y), -1)


@torch.no_grad()
def dat_sampling_points(backbone: nn.Module, image: Tensor) -> list[DatBlockPoints]:
    """The deformable blocks' sampling points of a DAT model for one image, in input pixels.

    Args:
        backbone: a :class:`~deformvision.models.dat.DAT` (classifier or ``features_only`` backbone).
        image: ``(3, H, W)`` normalised image, as the model takes it.

    Returns:
        One :class:`DatBlockPoints` per ``D`` block, in network order.
    """
    maps, points = backbone.forward_stages(image[None])
    patch_size = backbone.stem.proj.stride[0]
    blocks = []
    for name, block_points in points.items():
        stage = int(name.split(".")[1])
        map_size = tuple(maps[stage].shape[1:3])  # channels-last (1, h, w, C)
        stride = patch_size * 2**stage
        blocks.append(DatBlockPoints(
            name, dat_points_to_pixels(block_points.positions[0].float(), map_size, stride),
            dat_points_to_pixels(block_points.references[0].float(), map_size, stride), stride,
        ))  # fmt: skip
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


# --------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (Deformable DETR)


@dataclass
class MSDASampling:
    """The sampling of one :class:`~deformvision.layers.MSDeformAttn` call (``N`` images, ``Q`` queries).

    Attributes:
        locations: ``(N, Q, M, L, P, 2)`` ``(x, y)`` in ``[0, 1]`` of each level's map, per head ``M``,
            level ``L`` and point ``P``.
        weights: ``(N, Q, M, L, P)`` attention weights (each head's ``L * P`` weights sum to 1).
        reference_points: ``(N, Q, L, 2|4)`` the call's reference points ``(x, y)`` or boxes ``(cx, cy, w, h)``.
    """

    locations: Tensor
    weights: Tensor
    reference_points: Tensor


def msda_sampling_locations(
    module: MSDeformAttn, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor
) -> MSDASampling:
    """Recompute the sampling locations and attention weights of ``module`` for these inputs.

    The same formula as :meth:`MSDeformAttn.forward` (a pure function of the query, the reference
    points, the level shapes and the module's ``sampling_offsets`` / ``attention_weights`` layers).

    Args:
        module: the attention layer.
        query: ``(N, Q, d_model)`` its ``query`` input (queries plus positional embedding).
        reference_points: ``(N, Q, L, 2)`` points ``(x, y)`` or ``(N, Q, L, 4)`` boxes ``(cx, cy, w, h)``.
        spatial_shapes: ``(L, 2)`` ``(H_l, W_l)``.
    """
    N, Q, _ = query.shape
    M, L, P = module.n_heads, module.n_levels, module.n_points
    offsets = module.sampling_offsets(query).view(N, Q, M, L, P, 2)
    weights = F.softmax(module.attention_weights(query).view(N, Q, M, L * P), -1).view(N, Q, M, L, P)
    ref = reference_points[:, :, None, :, None, :]  # N, Q, 1, L, 1, 2|4
    if reference_points.shape[-1] == 2:
        size_xy = spatial_shapes.flip(-1).to(offsets.dtype)  # L, 2: (W, H)
        locations = ref + offsets / size_xy[:, None, :]
    else:
        locations = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
    return MSDASampling(locations, weights, reference_points)


@contextlib.contextmanager
def record_sampling_locations(module: MSDeformAttn) -> Iterator[list[MSDASampling]]:
    """Within the context, every forward call of ``module`` appends its :class:`MSDASampling` to the list.

    A forward hook (removed on exit) recomputes them with :func:`msda_sampling_locations` from the call's
    arguments, detached; nothing is stored by the module itself.

    Example:
        >>> layer = model.transformer.decoder.layers[-1].cross_attn  # doctest: +SKIP
        >>> with torch.no_grad(), record_sampling_locations(layer) as calls:  # doctest: +SKIP
        ...     outputs = model(images)
        >>> calls[0].locations.shape  # N, Q, M, L, P, 2  # doctest: +SKIP
    """
    calls: list[MSDASampling] = []
    signature = inspect.signature(module.forward)

    def hook(mod: MSDeformAttn, args: tuple, kwargs: dict, output: Tensor) -> None:
        bound = signature.bind(*args, **kwargs).arguments
        with torch.no_grad():
            calls.append(msda_sampling_locations(
                mod, bound["query"].detach(), bound["reference_points"].detach(), bound["spatial_shapes"]
            ))  # fmt: skip

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


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
) -> Image.Image:
    """``image`` (enlarged ``scale`` times) with the sampling locations of some queries of one MSDeformAttn call.

    Every location of a query (all heads, levels and points) is a dot in the query's colour whose area
    grows with its attention weight; the query's reference point is a white-ringed dot and its box, when
    given, an outline.

    Args:
        image: the (unpadded) input image; locations in ``[0, 1]`` are scaled by its size.
        sampling: the call's :class:`MSDASampling`.
        queries: indices of the queries to draw.
        image_index: the image of the batch.
        boxes: ``(len(queries), 4)`` absolute ``(x0, y0, x1, y1)`` in pixels of ``image``, drawn as outlines.
        colors: one colour per query (default: the palette in query order).
        scale: integer enlargement of the output.
        levels: the feature levels whose locations are drawn (default: all).

    Returns:
        An RGB image of size ``(scale * W, scale * H)``.
    """
    out = enlarge(image, scale)
    draw = ImageDraw.Draw(out)
    size = torch.tensor([image.width * scale, image.height * scale], dtype=torch.float32)
    colors = colors if colors is not None else [label_color(k) for k in range(len(queries))]
    level_index = list(levels) if levels is not None else list(range(sampling.locations.shape[3]))
    base_radius = max(1.5, scale * 0.6)
    for k, query in enumerate(queries):
        locations = sampling.locations[image_index, query][:, level_index].float() * size  # M, L', P, 2
        weights = sampling.weights[image_index, query][:, level_index].float()  # M, L', P
        if boxes is not None:
            draw.rectangle((boxes[k] * scale).tolist(), outline=colors[k], width=2)
        order = weights.flatten().argsort().tolist()  # heaviest last, on top
        flat_locations, flat_weights = locations.reshape(-1, 2).tolist(), weights.flatten().tolist()
        num_points = len(flat_weights) / weights.shape[0]  # per head: uniform attention is 1 / num_points
        for i in order:
            radius = base_radius * (0.6 + 1.4 * min(1.0, (flat_weights[i] * num_points) ** 0.5 / 2))
            _dot(draw, *flat_locations[i], radius, colors[k])
        reference = sampling.reference_points[image_index, query, 0, :2].float() * size  # level 0, valid ratio 1
        _dot(draw, *reference.tolist(), base_radius * 2, colors[k], outline=REFERENCE_COLOR)
    return out
