"""The deformable transformer of Deformable DETR: encoder, decoder with box refinement, two-stage proposals.

Semantics (and parameter names) are those of the official ``models/deformable_transformer.py``
(fundamentalvision/Deformable-DETR@11169a6): post-norm layers, multi-scale deformable attention in the
encoder and in the decoder's cross-attention, reference points in the frame of the *valid* (unpadded)
image that are scaled by each level's valid ratio before sampling the padded maps.

As in the official code, the valid ratios, the encoder reference points, the two-stage proposal grid and
the sine frequencies are computed in float32 whatever the model's dtype (they then mix with the model's
dtype by type promotion), so a float64 model reproduces the official float64 run to float64 rounding (up to
1-ulp differences of the float32 ``log`` of the two-stage proposals, which depend on the platform).

The encoder and decoder stacks live in :mod:`~deformvision.models.deformable_detr.encoder_decoder`.

Unlike the official code the transformer owns no prediction heads: the detector passes its box heads to
:meth:`DeformableTransformer.forward` (the decoder predicts a box after every layer, and with box
refinement the next reference points are those boxes) and, for two-stage, the class and box heads that
score the encoder proposals.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deformvision._checks import check_int, check_rate
from deformvision.layers.linear import Linear
from deformvision.layers.ms_deform_attn import MSDeformAttn
from deformvision.models.deformable_detr.encoder_decoder import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    Shapes,
)


def valid_ratios(mask: Tensor) -> Tensor:
    """``(B, H, W)`` padding mask (True = padding) -> ``(B, 2)`` float32 ``(valid_W / W, valid_H / H)``.

    The valid size is read from the first row / column, as the official ``get_valid_ratio``.
    """
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / H
    valid_w = (~mask[:, 0, :]).sum(1).float() / W
    return torch.stack([valid_w, valid_h], -1)


def encoder_proposals(padding_mask: Tensor, shapes: Shapes) -> tuple[Tensor, Tensor]:
    """Two-stage proposals, one per encoder token: a box of size ``0.05 * 2^l`` centred on the token, float32.

    The centre of pixel ``(i, j)`` of level ``l`` is ``((j + 0.5) / valid_W_l, (i + 0.5) / valid_H_l)``, so
    padded pixels lie beyond 1. A proposal is valid when all of ``(cx, cy, w, h)`` are in ``(0.01, 0.99)``
    and the token is not padding.

    Args:
        padding_mask: ``(B, S)`` bool, True = padding.
        shapes: ``(H_l, W_l)`` per level.

    Returns:
        ``(B, S, 4)`` float32 proposals as logits ``log(p / (1 - p))`` (``+inf`` where invalid), and the
        ``(B, S)`` bool validity.
    """
    B = padding_mask.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(shapes):
        mask = padding_mask[:, start : start + h * w].view(B, h, w)
        valid_size = torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)  # B, 2: (W, H)
        ys = torch.arange(h, dtype=torch.float32, device=mask.device)
        xs = torch.arange(w, dtype=torch.float32, device=mask.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)  # h, w, 2
        centre = (grid[None] + 0.5) / valid_size[:, None, None, :]  # B, h, w, 2
        size = torch.ones_like(centre) * 0.05 * (2.0**level)
        proposals.append(torch.cat((centre, size), -1).view(B, h * w, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)  # B, S, 4
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~padding_mask
    logits = torch.log(proposals / (1 - proposals)).masked_fill(~valid[..., None], float("inf"))
    return logits, valid


def proposal_position_embedding(boxes_unact: Tensor, num_pos_feats: int, temperature: float = 10000) -> Tensor:
    """Sine embedding of box logits ``(B, Q, 4)`` -> ``(B, Q, 4 * num_pos_feats)``.

    Each coordinate ``c`` of ``sigmoid(box) * 2 pi`` gives ``sin(c / t_0), cos(c / t_1), sin(c / t_2), ...``
    with ``t_i = temperature ** (2 * (i // 2) / num_pos_feats)`` (float32); coordinates in the order
    ``(cx, cy, w, h)``. The official code fixes ``num_pos_feats = 128`` (d_model 256); the detector uses
    ``d_model / 2``.
    """
    exponent = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes_unact.device)
    dim_t = temperature ** (2 * (exponent // 2) / num_pos_feats)
    angles = boxes_unact.sigmoid()[..., None] * (2 * math.pi) / dim_t  # B, Q, 4, F
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(2)


@dataclass
class TransformerOutput:
    """What :class:`DeformableTransformer` computes (``B`` images, ``Q`` queries, ``S`` tokens, ``n`` layers).

    Attributes:
        hs: ``(n, B, Q, d)`` decoder output of every layer.
        boxes: ``(n, B, Q, 4)`` boxes ``(cx, cy, w, h)`` of every layer, normalised by the valid image size.
        init_reference: ``(B, Q, 2)`` initial reference points, or ``(B, Q, 4)`` boxes (two-stage).
        references: ``(n, B, Q, 2|4)`` reference points after every decoder layer.
        memory: ``(B, S, d)`` encoder output (padded tokens hold meaningless values).
        tgt, query_pos: ``(B, Q, d)`` decoder content and positional queries.
        padding_mask: ``(B, S)`` bool, True = padded token.
        enc_logits: two-stage: ``(B, S, K)`` class logits of the encoder proposals (logit 0 = objectness).
        enc_boxes_unact: two-stage: ``(B, S, 4)`` box logits of the proposals (``+inf`` on invalid tokens).
        topk_proposals: two-stage: ``(B, Q)`` tokens chosen as queries, best first.
    """

    hs: Tensor
    boxes: Tensor
    init_reference: Tensor
    references: Tensor
    memory: Tensor
    tgt: Tensor
    query_pos: Tensor
    padding_mask: Tensor
    enc_logits: Tensor | None = None
    enc_boxes_unact: Tensor | None = None
    topk_proposals: Tensor | None = None


class DeformableTransformer(nn.Module):
    """Encoder + decoder of Deformable DETR, with optional two-stage query selection.

    Queries: without ``two_stage``, learned (``query_embed`` given to :meth:`forward`, split into positional
    and content halves) with reference points ``sigmoid(reference_points(query_pos))``; with ``two_stage``,
    the ``num_proposals`` encoder tokens whose proposal (scored by the detector's extra class head, logit 0)
    is best become the queries: their refined proposal boxes (detached) are the 4-d reference points and
    ``pos_trans_norm(pos_trans(sine embedding))`` gives the positional and content queries.

    Args:
        d_model: channels.
        num_heads: attention heads (encoder, decoder self- and cross-attention).
        num_encoder_layers, num_decoder_layers: depths.
        dim_feedforward: FFN hidden channels.
        dropout: dropout in every layer (and in the decoder's self-attention weights).
        num_feature_levels: levels ``L``.
        enc_n_points, dec_n_points: sampling points per head and level.
        box_refine: iterative box refinement in the decoder.
        two_stage: two-stage query selection (official models use it with box refinement only).
        num_proposals: queries selected in two-stage mode.
    """

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        box_refine: bool = False,
        two_stage: bool = False,
        num_proposals: int = 300,
    ) -> None:
        super().__init__()
        sizes = {
            "d_model": d_model,
            "num_heads": num_heads,
            "num_encoder_layers": num_encoder_layers,
            "num_decoder_layers": num_decoder_layers,
            "dim_feedforward": dim_feedforward,
            "num_feature_levels": num_feature_levels,
            "enc_n_points": enc_n_points,
            "dec_n_points": dec_n_points,
            "num_proposals": num_proposals,
        }
        for name, value in sizes.items():
            check_int(name, value)
        check_rate("dropout", dropout)
        self.d_model = d_model
        self.two_stage = two_stage
        self.num_proposals = num_proposals
        layer_args = (d_model, dim_feedforward, dropout, num_feature_levels, num_heads)
        self.encoder = DeformableEncoder(
            [DeformableEncoderLayer(*layer_args, enc_n_points) for _ in range(num_encoder_layers)]
        )
        self.decoder = DeformableDecoder(
            [DeformableDecoderLayer(*layer_args, dec_n_points) for _ in range(num_decoder_layers)], box_refine
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.reference_points = Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Xavier-uniform on every matrix, then MSDeformAttn's own init, level_embed ~ N(0, 1).

        Biases outside MSDeformAttn keep PyTorch's default init, except ``reference_points.bias = 0``.
        """
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def _select_proposals(
        self, memory: Tensor, padding_mask: Tensor, shapes: Shapes, class_head: nn.Module, box_head: nn.Module
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Two-stage queries: score every token's proposal, keep the best ``num_proposals``.

        Returns ``query_pos`` and ``tgt`` ``(B, Q, d)``, the 4-d reference boxes ``(B, Q, 4)`` and the
        :class:`TransformerOutput` fields ``enc_logits``, ``enc_boxes_unact``, ``topk_proposals``.
        """
        if memory.shape[1] < self.num_proposals:
            raise ValueError(
                f"two-stage selects {self.num_proposals} of the encoder tokens but the input gives only "
                f"{memory.shape[1]} (levels {shapes}); use a larger input or fewer queries"
            )
        proposals, valid = encoder_proposals(padding_mask, shapes)  # B, S, 4 logits; B, S
        out_memory = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid[..., None], 0.0)))
        enc_logits = class_head(out_memory)  # B, S, K
        enc_boxes_unact = box_head(out_memory) + proposals  # B, S, 4
        topk = torch.topk(enc_logits[..., 0], self.num_proposals, dim=1).indices  # B, Q: best objectness first
        topk_boxes = torch.gather(enc_boxes_unact, 1, topk[..., None].expand(-1, -1, 4)).detach()
        embed = self.pos_trans_norm(self.pos_trans(proposal_position_embedding(topk_boxes, self.d_model // 2)))
        query_pos, tgt = torch.split(embed, self.d_model, dim=2)
        extra = {"enc_logits": enc_logits, "enc_boxes_unact": enc_boxes_unact, "topk_proposals": topk}
        return query_pos, tgt, topk_boxes.sigmoid(), extra

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        box_heads: Sequence[nn.Module],
        query_embed: Tensor | None = None,
        proposal_heads: tuple[nn.Module, nn.Module] | None = None,
    ) -> TransformerOutput:
        """Encode the levels, choose the queries, decode.

        Args:
            srcs: per level ``(B, d, H_l, W_l)`` projected feature maps, largest first.
            masks: per level ``(B, H_l, W_l)`` bool, True = padding.
            pos_embeds: per level ``(B, d, H_l, W_l)`` positional encodings (``level_embed[l]`` is added here).
            box_heads: one box head per decoder layer (see :class:`DeformableDecoder`).
            query_embed: ``(Q, 2 * d)`` learned queries ``[query_pos | tgt]``; not two-stage only.
            proposal_heads: ``(class_head, box_head)`` scoring the encoder proposals; two-stage only.
        """
        if self.two_stage != (proposal_heads is not None) or self.two_stage == (query_embed is not None):
            raise ValueError("pass query_embed without two_stage and proposal_heads with two_stage (only)")
        shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # B, S, d
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)  # B, S
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[level] for level, p in enumerate(pos_embeds)], 1
        )  # B, S, d
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)  # L, 2
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        ratios = torch.stack([valid_ratios(m) for m in masks], 1)  # B, L, 2
        memory = self.encoder(src, pos, shapes, spatial_shapes, level_start_index, ratios, padding_mask)

        extra = {}
        if self.two_stage:
            query_pos, tgt, reference_points, extra = self._select_proposals(
                memory, padding_mask, shapes, *proposal_heads
            )
        else:
            query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)
            query_pos = query_pos[None].expand(src.shape[0], -1, -1)  # B, Q, d
            tgt = tgt[None].expand(src.shape[0], -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()  # B, Q, 2
        hs, references, boxes = self.decoder(
            tgt,
            query_pos,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            ratios,
            padding_mask,
            box_heads,
        )
        return TransformerOutput(
            hs=hs,
            boxes=boxes,
            init_reference=reference_points,
            references=references,
            memory=memory,
            tgt=tgt,
            query_pos=query_pos,
            padding_mask=padding_mask,
            **extra,
        )
