"""The encoder and decoder stacks of the deformable transformer and their layers (official names).

Post-norm layers with multi-scale deformable attention (encoder self-attention, decoder cross-attention) and a
ReLU FFN; the decoder predicts a box after every layer. :mod:`~deformvision.models.deformable_detr.transformer`
assembles them with the two-stage proposals and the query set-up.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deformvision.layers.dropout import Dropout
from deformvision.layers.linear import Linear
from deformvision.layers.ms_deform_attn import MSDeformAttn
from deformvision.ops.linear import linear_relu_dropout

Shapes = list[tuple[int, int]]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` as Deformable DETR computes it: ``log(max(x, eps) / max(1 - x, eps))``.

    ``x`` is clamped to ``[0, 1]`` first, so the result is finite and bounded by ``|log(eps)|``
    (about 11.5 for the default ``eps``); :func:`torch.logit` with ``eps`` clamps ``x`` itself to
    ``[eps, 1 - eps]``, which rounds differently.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def encoder_reference_points(shapes: Shapes, ratios: Tensor) -> Tensor:
    """Pixel centres of every level as reference points of the encoder queries, float32.

    Pixel ``(i, j)`` of level ``l`` is ``((j + 0.5) / valid_W_l, (i + 0.5) / valid_H_l)`` (normalised by the
    valid size of its own level), then multiplied by every level's valid ratio to address that level's
    padded map.

    Args:
        shapes: ``(H_l, W_l)`` per level.
        ratios: ``(B, L, 2)`` float32 valid ratios ``(w, h)``.

    Returns:
        ``(B, S, L, 2)`` float32 ``(x, y)``, ``S = sum_l H_l * W_l``.
    """
    points = []
    for level, (h, w) in enumerate(shapes):
        ys = torch.arange(h, dtype=torch.float32, device=ratios.device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=ratios.device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")  # h, w
        ref_y = ref_y.reshape(-1)[None] / (ratios[:, None, level, 1] * h)  # B, h*w
        ref_x = ref_x.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))  # B, h*w, 2
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]  # B, S, L, 2


def ffn_hidden(linear1: nn.Linear, dropout: nn.Dropout, x: Tensor) -> Tensor:
    """``dropout(relu(linear1(x)))``, the FFN's hidden layer, as one call that keeps only ``x`` and its output
    for backward (:func:`~deformvision.ops.linear_relu_dropout`; ``dropout``'s module is not called)."""
    return linear_relu_dropout(x, linear1.weight, linear1.bias, dropout.p if dropout.training else 0.0)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then a ReLU FFN.

    ``src = norm1(src + drop(self_attn(src + pos, ref, src)))``; ``src = norm2(src + drop(FFN(src)))``.
    """

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float, num_levels: int, num_heads: int, num_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout2 = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(ffn_hidden(self.linear1, self.dropout2, src))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer`; every token queries around its own pixel centre."""

    def __init__(self, layers: Sequence[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        shapes: Shapes,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        ratios: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        """``src``, ``pos``: ``(B, S, d)``; ``ratios``: ``(B, L, 2)``; ``padding_mask``: ``(B, S)`` -> ``(B, S, d)``."""
        reference_points = encoder_reference_points(shapes, ratios)  # B, S, L, 2
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, deformable cross-attention to the memory, ReLU FFN.

    ``q = k = tgt + query_pos``; ``tgt = norm2(tgt + drop(MHA(q, k, tgt)))``;
    ``tgt = norm1(tgt + drop(cross_attn(tgt + query_pos, ref, memory)))``; ``tgt = norm3(tgt + drop(FFN(tgt)))``.
    (The norm numbering is the official one.)
    """

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float, num_levels: int, num_heads: int, num_points: int
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout3 = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attn = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(ffn_hidden(self.linear1, self.dropout3, tgt))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableDecoder(nn.Module):
    """A stack of :class:`DeformableDecoderLayer` that predicts a box after every layer.

    Layer ``l`` samples around its reference points ``r_l`` (2-d points or 4-d boxes in the valid-image
    frame, multiplied by the valid ratios of every level); its box is
    ``sigmoid(box_heads[l](out_l) + inverse_sigmoid(r_l))`` on all four coordinates for 4-d ``r_l``, on
    ``(cx, cy)`` only for 2-d ones. With ``box_refine`` the next layer's reference is that box, detached
    (iterative refinement); otherwise every layer uses the initial reference points.

    Args:
        layers: the decoder layers.
        box_refine: iterative box refinement.
    """

    def __init__(self, layers: Sequence[DeformableDecoderLayer], box_refine: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.box_refine = box_refine

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        ratios: Tensor,
        padding_mask: Tensor,
        box_heads: Sequence[nn.Module],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run all layers.

        Args:
            tgt, query_pos: ``(B, Q, d)`` content and positional queries.
            reference_points: ``(B, Q, 2)`` ``(x, y)`` or ``(B, Q, 4)`` ``(cx, cy, w, h)`` in ``[0, 1]``.
            memory: ``(B, S, d)`` encoder output; ``padding_mask`` ``(B, S)`` True = padding.
            ratios: ``(B, L, 2)`` valid ratios ``(w, h)``.
            box_heads: one box head per layer (the same module repeated when heads are shared).

        Returns:
            ``hs`` ``(num_layers, B, Q, d)`` every layer's output; ``references`` ``(num_layers, B, Q, 2|4)``
            the reference points after every layer (the input ones without refinement); ``boxes``
            ``(num_layers, B, Q, 4)`` every layer's boxes ``(cx, cy, w, h)``.
        """
        hs, references, boxes = [], [], []
        out = tgt
        for layer, box_head in zip(self.layers, box_heads, strict=True):
            scale = ratios if reference_points.shape[-1] == 2 else torch.cat([ratios, ratios], -1)  # B, L, 2|4
            level_points = reference_points[:, :, None] * scale[:, None]  # B, Q, L, 2|4
            out = layer(out, query_pos, level_points, memory, spatial_shapes, level_start_index, padding_mask)
            delta = box_head(out)  # B, Q, 4
            if reference_points.shape[-1] == 4:
                box = (delta + inverse_sigmoid(reference_points)).sigmoid()
            else:
                box = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1).sigmoid()
            if self.box_refine:
                reference_points = box.detach()
            hs.append(out)
            references.append(reference_points)
            boxes.append(box)
        return torch.stack(hs), torch.stack(references), torch.stack(boxes)
