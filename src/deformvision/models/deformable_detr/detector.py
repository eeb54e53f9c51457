"""The Deformable DETR detector: backbone, input projections, deformable transformer, class and box heads.

Follows the official ``models/deformable_detr.py`` (fundamentalvision/Deformable-DETR@11169a6): the same
parameter names (``input_proj``, ``query_embed``, ``class_embed``, ``bbox_embed``, ``transformer``), the
same initialisation and outputs. Two deliberate differences in the module structure (not in the numbers):
shared heads are stored once (``class_embed.0`` / ``bbox_embed.0``; the official state dict repeats them per
decoder layer) and the transformer does not alias the heads (``transformer.decoder.{class,bbox}_embed``);
:meth:`DeformableDETR.checkpoint_filter` converts official checkpoints.
"""

import copy
import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deformvision._checks import check_bool, check_int, check_rate
from deformvision.layers.linear import Linear
from deformvision.layers.position_encoding import PositionEmbeddingSine, mask_to_level
from deformvision.models.deformable_detr._hf_names import huggingface_to_official, is_huggingface_state_dict
from deformvision.models.deformable_detr.transformer import DeformableTransformer, TransformerOutput
from deformvision.ops.linear import linear

logger = logging.getLogger(__name__)

_ALIAS_PREFIXES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")


class BoxMLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (the box head; official name ``layers.{i}``).

    Shape:
        - Input: ``(*, input_dim)``
        - Output: ``(*, output_dim)``
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(Linear(d_in, d_out) for d_in, d_out in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else linear(x, layer.weight, layer.bias, "relu")
        return x


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad ``(C, H_i, W_i)`` images at the bottom/right with zeros to one ``(B, C, H, W)`` batch.

    Returns the batch and its ``(B, H, W)`` bool mask, True = padding (DETR's ``NestedTensor``).
    """
    if not images or any(img.ndim != 3 or img.shape[0] != images[0].shape[0] for img in images):
        raise ValueError(f"expected a non-empty list of (C, H, W) images, got {[tuple(i.shape) for i in images]}")
    H = max(img.shape[1] for img in images)
    W = max(img.shape[2] for img in images)
    batch = images[0].new_zeros(len(images), images[0].shape[0], H, W)
    mask = torch.ones(len(images), H, W, dtype=torch.bool, device=images[0].device)
    for b, img in enumerate(images):
        batch[b, :, : img.shape[1], : img.shape[2]] = img
        mask[b, : img.shape[1], : img.shape[2]] = False
    return batch, mask


class DeformableDETR(nn.Module):
    """Deformable DETR (Zhu et al., ICLR 2021), with optional box refinement and two-stage queries.

    Pipeline: backbone maps (timm's ``features_only`` contract: ``forward`` returns NCHW maps, ``feature_info``
    is a :class:`timm.models.FeatureInfo` whose ``channels()`` describe them) -> per map ``Conv1x1 +
    GroupNorm(32)`` to ``d_model`` -> extra levels up to ``num_feature_levels`` by ``Conv3x3 stride 2 +
    GroupNorm(32)`` (the first on the raw last backbone map, later ones on the previous extra level) -> per
    level the image mask resized by nearest neighbour, a sine position encoding (``d_model / 2`` frequencies
    per axis) -> :class:`DeformableTransformer` -> heads.

    Heads: ``class_embed`` (Linear to ``num_classes`` sigmoid logits, no "no object" class) and ``bbox_embed``
    (3-layer MLP to box offsets in logit space). Without box refinement one head of each is shared by all
    decoder layers (``class_embed.0``, ``bbox_embed.0``); with it each decoder layer has its own, and two-stage
    adds one more of each (index ``dec_layers``) for the encoder proposals.

    Initialisation (official): class bias ``-log((1 - 0.01) / 0.01)``; last box layer weight and bias 0 with
    bias ``[2:] = -2`` for the shared / first refinement head (0 for every head in two-stage); input
    projection convs Xavier-uniform with zero bias; ``query_embed ~ N(0, 1)``; transformer as
    :meth:`DeformableTransformer.reset_parameters`.

    Args:
        backbone: a ``features_only`` model: ours (``resnet50``, ``dat_tiny``) or a timm one
            (``timm.create_model(..., features_only=True)``).
        num_classes: class logits ``K``.
        num_queries: object queries (two-stage: proposals kept).
        num_feature_levels: levels given to the transformer, at least the number of backbone maps.
        with_box_refine: iterative box refinement.
        two_stage: two-stage query selection; requires ``with_box_refine`` (the official models only exist
            that way), else a ValueError.
        aux_loss: return every decoder layer's predictions (``aux_outputs``).
        d_model, num_heads, enc_layers, dec_layers, dim_feedforward, dropout, enc_n_points, dec_n_points:
            transformer sizes (see :class:`DeformableTransformer`); ``d_model`` divisible by 32 (GroupNorm).

    Outputs of :meth:`forward` (a dict), ``B`` images, ``Q`` queries:
        ``pred_logits`` ``(B, Q, K)``; ``pred_boxes`` ``(B, Q, 4)`` ``(cx, cy, w, h)`` in ``[0, 1]`` relative
        to each *unpadded* image; ``aux_outputs`` (``aux_loss``): the same two for decoder layers
        ``0 .. dec_layers - 2``; ``enc_outputs`` (two-stage): ``pred_logits`` ``(B, S, K)`` and ``pred_boxes``
        ``(B, S, 4)`` of the proposal of every encoder token (``S`` tokens; 1.0 on invalid ones).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        with_box_refine: bool = False,
        two_stage: bool = False,
        aux_loss: bool = True,
        d_model: int = 256,
        num_heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
    ) -> None:
        super().__init__()
        sizes = {
            "num_classes": num_classes,
            "num_queries": num_queries,
            "num_feature_levels": num_feature_levels,
            "d_model": d_model,
            "num_heads": num_heads,
            "enc_layers": enc_layers,
            "dec_layers": dec_layers,
            "dim_feedforward": dim_feedforward,
            "enc_n_points": enc_n_points,
            "dec_n_points": dec_n_points,
        }
        for name, value in sizes.items():
            check_int(name, value)
        for name, flag in {"with_box_refine": with_box_refine, "two_stage": two_stage, "aux_loss": aux_loss}.items():
            check_bool(name, flag)
        check_rate("dropout", dropout)
        if two_stage and not with_box_refine:
            raise ValueError("two_stage=True needs with_box_refine=True (the official two-stage model refines boxes)")
        channels = backbone.feature_info.channels()  # of the returned maps (len(feature_info) counts all stages)
        if num_feature_levels < len(channels):
            raise ValueError(
                f"num_feature_levels ({num_feature_levels}) must be at least the number of backbone maps "
                f"({len(channels)}); build the backbone with fewer out_indices"
            )
        if d_model % 32:
            raise ValueError(f"d_model must be divisible by 32 (GroupNorm(32) in the input projections), got {d_model}")
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.aux_loss = aux_loss
        self.transformer = DeformableTransformer(
            d_model,
            num_heads,
            enc_layers,
            dec_layers,
            dim_feedforward,
            dropout,
            num_feature_levels,
            enc_n_points,
            dec_n_points,
            box_refine=with_box_refine,
            two_stage=two_stage,
            num_proposals=num_queries,
        )
        projections = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in channels]
        in_channels = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, d_model, 3, stride=2, padding=1), nn.GroupNorm(32, d_model))
            )
            in_channels = d_model
        self.input_proj = nn.ModuleList(projections)
        self.position_encoding = PositionEmbeddingSine(d_model // 2)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)

        class_head = Linear(d_model, num_classes)
        box_head = BoxMLP(d_model, d_model, 4, 3)
        nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        num_heads = (dec_layers + int(two_stage)) if with_box_refine else 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_heads))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_heads))
        if not two_stage:
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)

    # ----------------------------------------------------------------------------------------------
    def _layer_heads(self, heads: nn.ModuleList) -> list[nn.Module]:
        """The head of every decoder layer (the shared one repeated without box refinement)."""
        num_layers = len(self.transformer.decoder.layers)
        return list(heads[:num_layers]) if self.with_box_refine else [heads[0]] * num_layers

    def input_projection(self, features: Sequence[Tensor], mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone maps and the image mask -> per level ``(B, d, H_l, W_l)`` inputs and ``(B, H_l, W_l)`` masks.

        ``mask``: ``(B, H, W)`` bool, True = padding, at the input resolution; every level's mask is it resized
        by nearest neighbour (:func:`mask_to_level`), extra levels included.
        """
        num_maps = len(self.backbone.feature_info.channels())
        if len(features) != num_maps:
            raise ValueError(f"expected {num_maps} backbone maps, got {len(features)}")
        srcs = [proj(feat) for proj, feat in zip(self.input_proj[: len(features)], features, strict=True)]
        for level in range(len(features), self.num_feature_levels):
            srcs.append(self.input_proj[level](features[-1] if level == len(features) else srcs[-1]))
        masks = [mask_to_level(mask, src.shape[-2:]) for src in srcs]
        return srcs, masks

    def run_transformer(
        self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor]
    ) -> TransformerOutput:
        """The transformer on projected levels (``srcs``, ``masks``, positional encodings ``pos`` per level)."""
        return self.transformer(
            srcs,
            masks,
            pos,
            self._layer_heads(self.bbox_embed),
            query_embed=None if self.two_stage else self.query_embed.weight,
            proposal_heads=(self.class_embed[-1], self.bbox_embed[-1]) if self.two_stage else None,
        )

    def predict(self, t: TransformerOutput) -> dict:
        """The output dict (see the class docstring) from the transformer's output."""
        logits = torch.stack([head(h) for head, h in zip(self._layer_heads(self.class_embed), t.hs, strict=True)])
        out = {"pred_logits": logits[-1], "pred_boxes": t.boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], t.boxes[:-1], strict=True)
            ]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": t.enc_logits, "pred_boxes": t.enc_boxes_unact.sigmoid()}
        return out

    def forward_from_features(self, features: Sequence[Tensor], mask: Tensor) -> dict:
        """Everything after the backbone: its maps (``feature_info`` order) and the ``(B, H, W)`` image mask."""
        srcs, masks = self.input_projection(features, mask)
        pos = [self.position_encoding(m, dtype=src.dtype) for m, src in zip(masks, srcs, strict=True)]
        return self.predict(self.run_transformer(srcs, masks, pos))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's blocks in the backward pass instead of storing their activations.

        The backbone's own ``set_grad_checkpointing`` (DAT, ResNet); the transformer is not checkpointed.
        """
        if not hasattr(self.backbone, "set_grad_checkpointing"):
            raise ValueError(f"the backbone {type(self.backbone).__name__} has no set_grad_checkpointing")
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> dict:
        """Detect objects.

        Args:
            images: a list of ``(3, H_i, W_i)`` images (padded at the bottom/right to a batch here), or a
                ``(B, 3, H, W)`` batch.
            mask: for a batch, ``(B, H, W)`` bool, True = padding (default: no padding); not with a list.

        Returns:
            The output dict (see the class docstring); boxes are relative to each unpadded image.
        """
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise ValueError(
                    f"expected a (B, 3, H, W) batch or a list of (3, H, W) images, got {tuple(images.shape)}"
                )
            if mask is None:
                mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
            elif mask.dtype != torch.bool or mask.shape != (images.shape[0], *images.shape[2:]):
                raise ValueError(
                    f"mask must be a bool (B, H, W) = {(images.shape[0], *images.shape[2:])} tensor, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
        else:
            if mask is not None:
                raise ValueError("mask is computed from the image sizes for a list of images; pass a batch to give one")
            images, mask = pad_images(images)
        return self.forward_from_features(self.backbone(images), mask)

    # ----------------------------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Convert an official or Hugging Face Deformable DETR state dict (or our own) to this model.

        - Hugging Face ``DeformableDetrForObjectDetection`` names are first renamed to the official ones
          (:func:`~deformvision.models.deformable_detr._hf_names.huggingface_to_official`);
        - an official checkpoint's variant is read from its keys: box refinement aliases the per-layer box
          heads as ``transformer.decoder.bbox_embed.*``; a checkpoint of the other variant is refused;
        - official ``backbone.0.body.*`` keys (and our ``backbone.*``) go through the backbone's own
          ``checkpoint_filter`` if it has one;
        - the aliases ``transformer.decoder.class_embed.*`` / ``transformer.decoder.bbox_embed.*`` are dropped
          (they must equal ``class_embed.*`` / ``bbox_embed.*``);
        - a model with shared heads keeps ``class_embed.0`` / ``bbox_embed.0`` of the official per-layer
          copies, which must all be equal (different ones mean a box-refinement checkpoint: ValueError);
        - class heads of another number of classes are replaced by the model's own (fresh) ones, with a
          logged warning; everything else must fit (checked by the strict load that follows).
        """
        if is_huggingface_state_dict(state_dict):
            state_dict = huggingface_to_official(state_dict)
        if any(k.startswith("backbone.0.body.") for k in state_dict):  # the official layout (or converted HF)
            # official box-refinement models alias their per-layer box heads inside the decoder; others do not
            refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in state_dict)
            if refine != self.with_box_refine:
                kind = "with" if refine else "without"
                raise ValueError(
                    f"checkpoint is a Deformable DETR {kind} box refinement (its decoder "
                    f"{'has' if refine else 'has no'} transformer.decoder.bbox_embed.* heads) but this model has "
                    f"with_box_refine={self.with_box_refine}: build it with with_box_refine={refine}"
                )
        own = self.state_dict()
        converted = {}
        backbone_official = {k: v for k, v in state_dict.items() if k.startswith("backbone.0.body.")}
        backbone_ours = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        backbone_state = backbone_official or backbone_ours
        if backbone_state and hasattr(self.backbone, "checkpoint_filter"):
            backbone_state = self.backbone.checkpoint_filter(backbone_state)
        converted.update({f"backbone.{k}": v for k, v in backbone_state.items()})
        rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}
        for key, value in rest.items():
            if key.startswith(_ALIAS_PREFIXES):  # official aliases of the heads
                _check_copy(rest, key, key.removeprefix("transformer.decoder."), "an alias")
                continue
            if key.startswith(("class_embed.", "bbox_embed.")) and not self.with_box_refine:
                head, index, name = key.split(".", 2)
                _check_copy(
                    rest,
                    key,
                    f"{head}.0.{name}",
                    "a per-layer copy of the shared head",
                    hint=" (a box-refinement checkpoint? build the model with with_box_refine=True)",
                )
                if index != "0":
                    continue
            converted[key] = value
        resized = [
            k for k, v in converted.items() if k.startswith("class_embed.") and k in own and v.shape != own[k].shape
        ]
        for key in resized:
            converted[key] = own[key]
        if resized:
            logger.warning(
                "checkpoint class heads have %d classes, this model %d: keeping the model's own class_embed.* "
                "(%d tensors)",
                state_dict[resized[0]].shape[0],
                self.num_classes,
                len(resized),
            )
        return converted


def _check_copy(state_dict: dict[str, Tensor], key: str, original: str, what: str, hint: str = "") -> None:
    """Raise a ValueError unless ``state_dict[key]`` (``what`` of ``original``) equals ``state_dict[original]``."""
    if original not in state_dict:
        raise ValueError(f"checkpoint key {key} should be {what} of {original}, which is missing")
    if not torch.equal(state_dict[key], state_dict[original]):
        raise ValueError(f"checkpoint key {key} should be {what} of {original} but differs from it{hint}")
