"""The official DAT v1 checkpoint layout (LeapLabTHU/DAT@566a593) and how it maps to our :class:`DAT`.

The official model names its parts ``patch_proj``, ``down_projs``, ``stages.{i}.layer_norms`` /
``mlps`` / ``attns``, ``cls_norm``, ``cls_head``; wraps LayerNorms in a proxy (``.norm.``); uses 1x1
convolutions where ours are linear layers; and stores size-dependent buffers (``attn_mask``,
``relative_position_index``) that ours compute for the size seen.
"""

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

_OFFICIAL_PREFIXES = ("patch_proj.", "down_projs.", "cls_head.")


def is_official_dat(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has the official layout (rather than ours)."""
    return any(k.startswith(_OFFICIAL_PREFIXES) for k in state_dict)


def rename_official_dat(
    state_dict: dict[str, torch.Tensor], window_blocks: set[tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """The official state dict under our names.

    Args:
        state_dict: an official DAT v1 state dict.
        window_blocks: ``(stage, block)`` of the window-attention blocks of the model it is for (their
            projections are ``qkv`` / ``proj``; the deformable blocks' 1x1-conv projections become linear).
    """
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith(("attn_mask", "relative_position_index")):
            continue  # size-dependent buffers: ours are computed at run time
        new = key.replace(".norm.", ".")  # LayerNormProxy(C).norm -> nn.LayerNorm(C)
        new = re.sub(r"^patch_proj\.0\.", "stem.proj.", new)
        new = re.sub(r"^patch_proj\.1\.", "stem.norm.", new)
        new = re.sub(r"^down_projs\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.proj.", new)
        new = re.sub(r"^down_projs\.(\d+)\.1\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm.", new)
        new = re.sub(r"^cls_norm\.", "norm.", new)
        new = re.sub(r"^cls_head\.", "head.", new)
        new = re.sub(
            r"^stages\.(\d+)\.layer_norms\.(\d+)\.",
            lambda m: f"stages.{m[1]}.blocks.{int(m[2]) // 2}.norm{int(m[2]) % 2 + 1}.",
            new,
        )
        new = re.sub(r"^stages\.(\d+)\.mlps\.(\d+)\.chunk\.linear([12])\.", r"stages.\1.blocks.\2.mlp.fc\3.", new)
        new = re.sub(r"^stages\.(\d+)\.attns\.(\d+)\.", r"stages.\1.blocks.\2.attn.", new)
        if ".attn." in new:
            stage, block = int(new.split(".")[1]), int(new.split(".")[3])
            if (stage, block) in window_blocks:
                new = new.replace(".proj_qkv.", ".qkv.").replace(".proj_out.", ".proj.")
            elif re.search(r"\.proj_(q|k|v|out)\.weight$", new):
                value = value.flatten(1)  # 1x1 conv (C, C, 1, 1) -> linear (C, C)
        renamed[new] = value
    return renamed


def resize_table(table: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of a ``(heads, h, w)`` position table to ``(heads, *size)`` (as the official
    ``load_pretrained``)."""
    resized = F.interpolate(table[None].float(), size=tuple(size), mode="bicubic", align_corners=False)
    return resized[0].to(table.dtype)
