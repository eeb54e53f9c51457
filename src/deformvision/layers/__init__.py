"""Neural-network building blocks built on :mod:`deformvision.ops`."""

from deformvision.layers.deform_conv import DeformableConv2d, DeformConv2d
from deformvision.layers.deformable_attention import DeformableAttention, SamplingPoints, reference_points
from deformvision.layers.drop import DropPath, drop_path
from deformvision.layers.mlp import Mlp
from deformvision.layers.ms_deform_attn import MSDeformAttn, directional_offset_bias
from deformvision.layers.norm import LayerNorm2d
from deformvision.layers.position_encoding import PositionEmbeddingSine, mask_to_level
from deformvision.layers.window_attention import WindowAttention

__all__ = [
    "DeformConv2d",
    "DeformableConv2d",
    "DeformableAttention",
    "DropPath",
    "LayerNorm2d",
    "MSDeformAttn",
    "Mlp",
    "PositionEmbeddingSine",
    "SamplingPoints",
    "WindowAttention",
    "directional_offset_bias",
    "drop_path",
    "mask_to_level",
    "reference_points",
]
