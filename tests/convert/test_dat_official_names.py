"""The official DAT v1 name map (models/_dat_official.py) on hand-written official keys."""

import pytest
import torch

from deformvision.models._dat_official import official_to_ours, rename_official_dat


@pytest.mark.parametrize(
    ("official", "ours"),
    [
        ("patch_proj.0.weight", "stem.proj.weight"),
        ("patch_proj.1.norm.bias", "stem.norm.bias"),  # LayerNormProxy's .norm. dropped
        ("down_projs.0.0.weight", "stages.1.downsample.proj.weight"),
        ("down_projs.2.1.norm.weight", "stages.3.downsample.norm.weight"),
        ("cls_norm.norm.weight", "norm.weight"),
        ("cls_head.bias", "head.bias"),
        ("stages.2.layer_norms.0.norm.weight", "stages.2.blocks.0.norm1.weight"),
        ("stages.2.layer_norms.5.norm.bias", "stages.2.blocks.2.norm2.bias"),
        ("stages.1.mlps.3.chunk.linear2.weight", "stages.1.blocks.3.mlp.fc2.weight"),
        ("stages.3.attns.1.rpe_table", "stages.3.blocks.1.attn.rpe_table"),
        ("stages.0.unknown.weight", "stages.0.unknown.weight"),  # no rule: the name is kept
    ],
)
def test_official_to_ours(official, ours):
    assert official_to_ours(official) == ours


def test_rename_window_and_deformable_blocks():
    """Window blocks get qkv/proj; deformable 1x1-conv weights become (C, C); size-dependent buffers go."""
    conv = torch.arange(12.0).view(3, 4, 1, 1)
    state_dict = {
        "stages.0.attns.0.proj_qkv.weight": torch.zeros(9, 3),
        "stages.0.attns.0.proj_out.bias": torch.zeros(3),
        "stages.0.attns.0.relative_position_index": torch.zeros(4, dtype=torch.long),
        "stages.0.attns.1.attn_mask": torch.zeros(1),
        "stages.2.attns.1.proj_q.weight": conv,
        "stages.2.attns.1.proj_out.bias": torch.zeros(3),
    }
    renamed = rename_official_dat(state_dict, window_blocks={(0, 0)})
    assert sorted(renamed) == [
        "stages.0.blocks.0.attn.proj.bias",
        "stages.0.blocks.0.attn.qkv.weight",
        "stages.2.blocks.1.attn.proj_out.bias",
        "stages.2.blocks.1.attn.proj_q.weight",
    ]
    assert torch.equal(renamed["stages.2.blocks.1.attn.proj_q.weight"], conv[:, :, 0, 0])
