"""Model analysis.

- :mod:`~deformvision.analysis.flops`: parameter and multiply-add counts (:func:`count_parameters`,
  :func:`count_macs`).
- :mod:`~deformvision.layers.inspection`: what attention layers compute, read by forward hooks
  (:func:`record_attention`, :func:`record_msda_sampling`); the one path used by analyses and pictures.
- :mod:`~deformvision.analysis.collapse`: attention collapse, cross-query and cross-layer similarity of
  attention maps (:func:`attention_collapse`).
"""

from deformvision.analysis.collapse import attention_collapse
from deformvision.analysis.flops import CATEGORIES, MacReport, count_macs, count_parameters
from deformvision.layers.inspection import (
    ATTENTION_TYPES,
    AttentionRecord,
    MSDASampling,
    record_attention,
    record_msda_sampling,
)

__all__ = [
    "ATTENTION_TYPES",
    "CATEGORIES",
    "AttentionRecord",
    "MSDASampling",
    "MacReport",
    "attention_collapse",
    "count_macs",
    "count_parameters",
    "record_attention",
    "record_msda_sampling",
]
