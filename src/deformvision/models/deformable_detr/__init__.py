"""Deformable DETR (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
ICLR 2021)."""
