"""Neural-network building blocks built on :mod:`deformvision.ops`.

Generic layers (``DropPath``, ``Mlp``, ``LayerNorm2d``, ``trunc_normal_``) come from :mod:`timm.layers`;
what is here is what timm and torchvision do not have.
"""

from deformvision.layers.deform_conv import DeformConv2d, DeformConv2dPack
from deformvision.layers.deformable_attention import DeformableAttention, SamplingPoints, reference_points
from deformvision.layers.dropout import Dropout
from deformvision.layers.gelu_mlp import linear_gelu_linear
from deformvision.layers.linear import Linear
from deformvision.layers.ms_deform_attn import MSDeformAttn, directional_offset_bias
from deformvision.layers.position_encoding import PositionEmbeddingSine, mask_to_level
from deformvision.layers.recomputed_norm import apply_to_layer_norm
from deformvision.layers.window_attention import WindowAttention

__all__ = [
    "DeformConv2d",
    "DeformConv2dPack",
    "DeformableAttention",
    "Dropout",
    "Linear",
    "MSDeformAttn",
    "PositionEmbeddingSine",
    "SamplingPoints",
    "WindowAttention",
    "apply_to_layer_norm",
    "directional_offset_bias",
    "linear_gelu_linear",
    "mask_to_level",
    "reference_points",
]
