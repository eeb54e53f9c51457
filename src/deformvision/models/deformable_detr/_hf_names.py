"""Hugging Face ``DeformableDetrForObjectDetection`` checkpoints -> official Deformable DETR names: the name map.

The map is data (the rule tables ``_KEY_RULES``, ``_RESNET_RULES``, ``_ENCODER_LAYER``, ``_DECODER_LAYER``)
and the small functions that apply it. The official names are those :meth:`DeformableDETR.checkpoint_filter`
reads, so it renames a Hugging Face state dict here first, then converts it like an official checkpoint;
``deformvision.convert`` re-exports these functions for the ``convert`` command. Both Hugging Face layouts
are read: the one of ``state_dict()`` in transformers 5 (``mlp.fc1``, ``self_attn.o_proj``,
``model.backbone.model``) and the legacy one that transformers 4 wrote and transformers 5 still writes
with ``save_pretrained`` (``fc1``, ``self_attn.out_proj``, ``model.backbone.conv_encoder.model``).

Differences handled:

- the decoder self-attention has separate ``q_proj`` / ``k_proj`` / ``v_proj``; they are stacked (rows q, k,
  v) into ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias``;
- the backbone is the Hugging Face ``ResNetBackbone`` (``embedder``, ``encoder.stages.{s}.layers.{j}.layer.{k}``,
  ``shortcut``), renamed to torchvision's ResNet names, or a timm ResNet, whose names already are;
- heads: ``save_pretrained`` drops tied copies. Without box refinement only ``class_embed.0`` and
  ``bbox_embed.0`` are written (one shared head, as ours); with it the box heads live only under
  ``model.decoder.bbox_embed`` (two-stage: the class heads too, under ``model.decoder.class_embed``), which
  are copied to the top-level names;
- transformers 5 ties ``class_embed`` across decoder layers when ``with_box_refine`` and not ``two_stage``
  (the official model has independent heads): a checkpoint that holds only ``class_embed.0`` gets it
  copied to every decoder layer, which reproduces the Hugging Face model's outputs exactly. A checkpoint
  with all class heads keeps them as they are (the official semantics).

Parameters the official model lacks (e.g. the learned position embedding of
``position_embedding_type="learned"``) raise a ValueError. This module imports nothing from deformvision.

:func:`huggingface_model_config` maps a Hugging Face ``config.json`` to our registered variant and its sizes.
"""

import logging
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_HF_MARKERS = ("model.encoder.layers.", "model.decoder.layers.", "model.input_proj.", "model.level_embed")

# Per-layer sub-names, Hugging Face prefix -> official prefix (first match wins; both HF layouts listed).
_ENCODER_LAYER = {
    "self_attn.": "self_attn.",
    "self_attn_layer_norm.": "norm1.",
    "mlp.fc1.": "linear1.",
    "fc1.": "linear1.",
    "mlp.fc2.": "linear2.",
    "fc2.": "linear2.",
    "final_layer_norm.": "norm2.",
}
_DECODER_LAYER = {
    "self_attn.o_proj.": "self_attn.out_proj.",
    "self_attn.out_proj.": "self_attn.out_proj.",
    "self_attn_layer_norm.": "norm2.",
    "encoder_attn.": "cross_attn.",
    "encoder_attn_layer_norm.": "norm1.",
    "mlp.fc1.": "linear1.",
    "fc1.": "linear1.",
    "mlp.fc2.": "linear2.",
    "fc2.": "linear2.",
    "final_layer_norm.": "norm3.",
}
_QKV = re.compile(r"model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def is_huggingface_state_dict(state_dict: dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` has the names of a Hugging Face ``DeformableDetrForObjectDetection``."""
    return any(key.startswith(_HF_MARKERS) for key in state_dict)


def huggingface_to_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face Deformable DETR state dict to the official checkpoint's names.

    Returns the official layout: ``backbone.0.body.*`` (torchvision ResNet names), ``input_proj.*``,
    ``query_embed.weight``, ``transformer.*`` (with the aliases ``transformer.decoder.{class,bbox}_embed.*``
    where the checkpoint has the decoder copies), ``class_embed.{i}.*``, ``bbox_embed.{i}.*``.

    Raises:
        ValueError: a key has no official counterpart, or a decoder self-attention lacks q, k or v.
    """
    converted: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}  # (layer prefix, weight|bias) -> {q, k, v}
    unknown = []
    for key, value in state_dict.items():
        qkv_match = _QKV.fullmatch(key)
        if qkv_match:
            layer, part, kind = qkv_match.groups()
            qkv.setdefault((f"transformer.decoder.layers.{layer}.self_attn.", kind), {})[part] = value
            continue
        new = _apply(_KEY_RULES, key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"Hugging Face keys without an official Deformable DETR counterpart: {shown}")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{prefix}: the checkpoint has {sorted(parts)}_proj.{kind} but needs q, k and v")
        converted[f"{prefix}in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    _complete_heads(converted)
    return converted


Rule = tuple[str, str | Callable[[re.Match], str | None]]  # (pattern, replacement template or function)


def _layer_name(stack: str, match: re.Match, prefixes: dict[str, str]) -> str | None:
    """``transformer.{stack}.layers.{i}.<official sub-name>``, None for an unknown sub-name."""
    rest = match[2]
    for hf_prefix, official_prefix in prefixes.items():
        if rest.startswith(hf_prefix):
            return f"transformer.{stack}.layers.{match[1]}.{official_prefix}{rest.removeprefix(hf_prefix)}"
    return None


# Hugging Face ``ResNetModel`` names -> torchvision's (timm ResNet names are torchvision's already).
_RESNET_RULES: list[Rule] = [
    (r"embedder\.embedder\.convolution\.(.+)", r"conv1.\1"),
    (r"embedder\.embedder\.normalization\.(.+)", r"bn1.\1"),
    (
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.(.+)",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.{m[3]}",
    ),
    (
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(.+)",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}",
    ),
    (
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.(.+)",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}",
    ),
    (
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(.+)",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}",
    ),
]

# Every Hugging Face key except the decoder's q/k/v projections -> its official name (None: no counterpart).
_KEY_RULES: list[Rule] = [
    (
        r"model\.backbone\.(?:conv_encoder\.)?model\.(.+)",
        lambda m: "backbone.0.body." + (_apply(_RESNET_RULES, m[1]) or m[1]),
    ),
    (r"model\.level_embed", "transformer.level_embed"),
    (
        r"model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(weight|bias)",
        r"transformer.\1.\2",
    ),
    (r"model\.input_proj\.(.+)", r"input_proj.\1"),
    (r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    (r"model\.decoder\.((?:class|bbox)_embed\.\d+\..+)", r"transformer.decoder.\1"),
    (r"(?:class|bbox)_embed\.\d+\..+", r"\g<0>"),
    (r"model\.encoder\.layers\.(\d+)\.(.+)", lambda m: _layer_name("encoder", m, _ENCODER_LAYER)),
    (r"model\.decoder\.layers\.(\d+)\.(.+)", lambda m: _layer_name("decoder", m, _DECODER_LAYER)),
]


def _apply(rules: list[Rule], name: str) -> str | None:
    """The replacement of the first rule whose pattern matches all of ``name``; None if none matches."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def _complete_heads(converted: dict[str, Tensor]) -> None:
    """Fill the top-level heads that ``save_pretrained`` left out (see the module docstring), in place."""
    head_aliases = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")
    aliases = [k for k in converted if k.startswith(head_aliases)]
    for key in aliases:
        converted.setdefault(key.removeprefix("transformer.decoder."), converted[key])
    box_heads = {int(k.split(".")[1]) for k in converted if k.startswith("bbox_embed.")}
    class_heads = {int(k.split(".")[1]) for k in converted if k.startswith("class_embed.")}
    box_refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in aliases)
    if box_refine and class_heads == {0} and len(box_heads) > 1:
        logger.info(
            "Hugging Face box-refinement checkpoint with one class head (transformers ties class_embed across "
            "decoder layers): copying class_embed.0 to all %d decoder layers",
            len(box_heads),
        )
        for key in [k for k in converted if k.startswith("class_embed.0.")]:
            for index in sorted(box_heads - {0}):
                converted[f"class_embed.{index}.{key.removeprefix('class_embed.0.')}"] = converted[key]


# DeformableDetrConfig defaults, for config.json files that leave a value out.
_CONFIG_DEFAULTS = {
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "num_queries": 300,
    "two_stage_num_proposals": 300,
    "num_feature_levels": 4,
    "with_box_refine": False,
    "two_stage": False,
    "dilation": False,
    "activation_function": "relu",
    "position_embedding_type": "sine",
}


def huggingface_model_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Our registered model and its keyword arguments for a Hugging Face ``DeformableDetrConfig`` (config.json).

    The name follows the flags (``two_stage``, ``with_box_refine``, ``num_feature_levels == 1`` and
    ``dilation``); the arguments are the sizes (``num_classes`` from ``id2label``, queries, widths, depths,
    heads, points, levels). Settings our model cannot represent raise a ValueError: another activation or
    position embedding, different encoder and decoder heads or FFN widths, and two-stage proposals in another
    number than the queries.
    """
    if config.get("model_type", "deformable_detr") != "deformable_detr":
        raise ValueError(f"not a Deformable DETR config: model_type {config.get('model_type')!r}")
    c = {**_CONFIG_DEFAULTS, **config}
    problems = [
        f"{key} {c[key]!r} (ours: {expected!r})"
        for key, expected in (("activation_function", "relu"), ("position_embedding_type", "sine"))
        if c[key] != expected
    ]
    for encoder_key, decoder_key in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if c[encoder_key] != c[decoder_key]:
            problems.append(f"{encoder_key} {c[encoder_key]} != {decoder_key} {c[decoder_key]} (ours: one value)")
    if c["two_stage"] and c["two_stage_num_proposals"] != c["num_queries"]:
        problems.append(
            f"two_stage_num_proposals {c['two_stage_num_proposals']} != num_queries {c['num_queries']} (ours: equal)"
        )
    if problems:
        raise ValueError("unsupported Hugging Face Deformable DETR config: " + "; ".join(problems))
    if c["two_stage"]:
        name = "deformable_detr_r50_two_stage"
    elif c["with_box_refine"]:
        name = "deformable_detr_r50_box_refine"
    elif c["num_feature_levels"] == 1:
        name = "deformable_detr_r50_single_scale_dc5" if c["dilation"] else "deformable_detr_r50_single_scale"
    else:
        name = "deformable_detr_r50"
    kwargs = {
        "num_queries": c["num_queries"],
        "num_feature_levels": c["num_feature_levels"],
        "d_model": c["d_model"],
        "num_heads": c["encoder_attention_heads"],
        "enc_layers": c["encoder_layers"],
        "dec_layers": c["decoder_layers"],
        "dim_feedforward": c["encoder_ffn_dim"],
        "enc_n_points": c["encoder_n_points"],
        "dec_n_points": c["decoder_n_points"],
    }
    labels = config.get("id2label") or {}
    num_classes = len(labels) if labels else config.get("num_labels")
    if num_classes:
        kwargs["num_classes"] = num_classes
    return name, kwargs
