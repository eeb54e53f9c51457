"""Pictures of what the models do, drawn with PIL and saved as PNG (the line plots of :mod:`~deformvision.viz.plots`
need matplotlib, the ``plot`` extra).

- :mod:`~deformvision.viz.detections`: boxes, class names and scores on an image; titles and panels.
- :mod:`~deformvision.viz.masks`: instance masks and semantic label maps tinted over an image, a legend.
- :mod:`~deformvision.viz.sampling_points`: DAT's deformed sampling points (positions vs references, per
  offset group; the keys of highest attention for chosen queries) and the sampling locations of Deformable
  DETR's multi-scale deformable attention for chosen queries, coloured by query or by level; all read from
  the model's forward pass by :mod:`deformvision.layers.inspection`.
- :mod:`~deformvision.viz.figures`: the papers' pictures of one image (DAT points and top keys per block,
  Deformable DETR's best queries by level), built on the above.
- :mod:`~deformvision.viz.plots`: the attention-collapse plot (similarity vs depth, one line per model).
- :mod:`~deformvision.viz.report`: one self-contained HTML page of figures and tables.
"""

from deformvision.viz.detections import (
    PALETTE,
    add_title,
    draw_detections,
    enlarge,
    label_color,
    legible_scale,
    side_by_side,
)
from deformvision.viz.masks import add_legend, draw_instances, draw_label_map, label_map_colors
from deformvision.viz.sampling_points import (
    DatBlockPoints,
    MSDASampling,
    dat_points_to_pixels,
    dat_sampling_points,
    draw_dat_sampling_points,
    draw_dat_top_keys,
    draw_msda_sampling_locations,
    record_sampling_locations,
)

__all__ = [
    "PALETTE",
    "DatBlockPoints",
    "MSDASampling",
    "add_legend",
    "add_title",
    "dat_points_to_pixels",
    "dat_sampling_points",
    "draw_dat_sampling_points",
    "draw_dat_top_keys",
    "draw_detections",
    "draw_instances",
    "draw_label_map",
    "draw_msda_sampling_locations",
    "enlarge",
    "label_color",
    "label_map_colors",
    "legible_scale",
    "record_sampling_locations",
    "side_by_side",
]
