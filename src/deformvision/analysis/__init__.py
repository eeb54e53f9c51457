"""Model analysis: parameter and multiply-add counts (:func:`count_parameters`, :func:`count_macs`)."""

from deformvision.analysis.flops import CATEGORIES, MacReport, count_macs, count_parameters

__all__ = ["CATEGORIES", "MacReport", "count_macs", "count_parameters"]
