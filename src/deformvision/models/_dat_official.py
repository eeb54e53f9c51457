"""The official DAT v1 checkpoint layout (LeapLabTHU/DAT@566a593) and how it maps to our :class:`DAT`.

The official model names its parts ``patch_proj``, ``down_projs``, ``stages.{i}.layer_norms`` /
``mlps`` / ``attns``, ``cls_norm``, ``cls_head``; wraps LayerNorms in a proxy (``.norm.``); uses 1x1
convolutions where ours are linear layers; and stores size-dependent buffers (``attn_mask``,
``relative_position_index``) that ours compute for the size seen. The renames are a rule table
(``_PREFIX_RULES``, ``_WINDOW_RENAMES``) applied by :func:`rename_official_dat`.
:func:`fit_dat_state_dict` (what ``DAT.checkpoint_filter`` runs) also fits our own or official checkpoints of
another resolution, window or head to a model.
"""

import logging
import math
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger("deformvision.models.dat")  # the messages are about DAT checkpoints

_OFFICIAL_PREFIXES = ("patch_proj.", "down_projs.", "cls_head.")

# The name map: official key prefix -> ours (first match wins; the rest of the key is kept). Applied after the
# LayerNormProxy's ``.norm.`` is dropped; a key no rule matches keeps its name.
_PREFIX_RULES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"patch_proj\.0\.", "stem.proj."),
    (r"patch_proj\.1\.", "stem.norm."),
    (r"down_projs\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.proj."),
    (r"down_projs\.(\d+)\.1\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"cls_norm\.", "norm."),
    (r"cls_head\.", "head."),
    # layer_norms.{2j} / .{2j+1}: the two norms of block j
    (
        r"stages\.(\d+)\.layer_norms\.(\d+)\.",
        lambda m: f"stages.{m[1]}.blocks.{int(m[2]) // 2}.norm{int(m[2]) % 2 + 1}.",
    ),
    (r"stages\.(\d+)\.mlps\.(\d+)\.chunk\.linear([12])\.", r"stages.\1.blocks.\2.mlp.fc\3."),
    (r"stages\.(\d+)\.attns\.(\d+)\.", r"stages.\1.blocks.\2.attn."),
]
# Window-attention blocks: official projection names -> ours (the deformable blocks keep ``proj_q/k/v/out``).
_WINDOW_RENAMES = {".proj_qkv.": ".qkv.", ".proj_out.": ".proj."}
_SIZE_DEPENDENT_BUFFERS = ("attn_mask", "relative_position_index")  # ours are computed at run time
_CONV_1X1 = re.compile(r"\.proj_(q|k|v|out)\.weight$")  # deformable blocks: official 1x1 convs, our linears


def is_official_dat(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has the official layout (rather than ours)."""
    return any(k.startswith(_OFFICIAL_PREFIXES) for k in state_dict)


def official_to_ours(key: str) -> str:
    """An official key under our name, by the first rule of ``_PREFIX_RULES`` that matches its start."""
    key = key.replace(".norm.", ".")  # LayerNormProxy(C).norm -> nn.LayerNorm(C)
    for pattern, replacement in _PREFIX_RULES:
        match = re.match(pattern, key)
        if match:
            new_prefix = replacement(match) if callable(replacement) else match.expand(replacement)
            return new_prefix + key[match.end() :]
    return key


def rename_official_dat(
    state_dict: dict[str, torch.Tensor], window_blocks: set[tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """The official state dict under our names (:func:`official_to_ours`), without its size-dependent buffers.

    Args:
        state_dict: an official DAT v1 state dict.
        window_blocks: ``(stage, block)`` of the window-attention blocks of the model it is for (their
            projections are renamed by ``_WINDOW_RENAMES``; the deformable blocks' 1x1-conv projections
            ``(C, C, 1, 1)`` become linear ``(C, C)``).
    """
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith(_SIZE_DEPENDENT_BUFFERS):
            continue
        new = official_to_ours(key)
        if ".attn." in new:
            stage, block = int(new.split(".")[1]), int(new.split(".")[3])  # stages.{stage}.blocks.{block}.attn.
            if (stage, block) in window_blocks:
                for official, ours in _WINDOW_RENAMES.items():
                    new = new.replace(official, ours)
            elif _CONV_1X1.search(new):
                value = value.flatten(1)  # (C, C, 1, 1) -> (C, C)
        renamed[new] = value
    return renamed


def resize_table(table: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of a ``(heads, h, w)`` position table to ``(heads, *size)`` (as the official
    ``load_pretrained``)."""
    resized = F.interpolate(table[None].float(), size=tuple(size), mode="bicubic", align_corners=False)
    return resized[0].to(table.dtype)


def fit_dat_state_dict(
    state_dict: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    window_blocks: set[tuple[int, int]],
    features_only: bool,
) -> dict[str, torch.Tensor]:
    """``state_dict`` (official DAT v1 or ours) with a DAT's names and sizes; ``own`` is that DAT's state dict.

    Official names are renamed (:func:`rename_official_dat`, ``window_blocks``: the ``(stage, block)`` pairs with
    window attention); position tables of another resolution or window are resized bicubically; with
    ``features_only`` the classifier's norm and head are dropped and missing per-output norms keep ``own``'s
    values; a head that does not fit keeps ``own``'s (with a warning).
    """
    if is_official_dat(state_dict):
        state_dict = rename_official_dat(state_dict, window_blocks)
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("rpe_table") and key in own and value.shape != own[key].shape and value.ndim == 3:
            value = resize_table(value, own[key].shape[1:])
        elif key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
            side, new_side = math.isqrt(value.shape[0]), math.isqrt(own[key].shape[0])
            table = value.T.reshape(1, -1, side, side)  # 1, heads, 2w-1, 2w-1
            value = resize_table(table[0], (new_side, new_side)).reshape(-1, new_side**2).T
        converted[key] = value
    if features_only:
        for key in [k for k in converted if k.startswith(("head.", "norm."))]:
            del converted[key]
        for key, value in own.items():
            if key.startswith("feature_norms.") and key not in converted:
                converted[key] = value
    for key in ("head.weight", "head.bias"):
        if key in converted and (key not in own or converted[key].shape != own[key].shape):
            shape = tuple(converted[key].shape)
            logger.warning("checkpoint head %s %s does not fit this model: keeping the model's own", key, shape)
            if key in own:
                converted[key] = own[key]
            else:
                del converted[key]
    return converted
