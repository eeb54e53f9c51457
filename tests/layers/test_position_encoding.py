"""Sine positional encoding and level masks against the official Deformable DETR golden tensors."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deformvision.layers.position_encoding import PositionEmbeddingSine, mask_to_level

FIXTURE = Path(__file__).parents[1] / "fixtures" / "detr" / "multi_scale.safetensors"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


def reference_float64(mask: torch.Tensor, num_pos_feats: int, offset: float) -> torch.Tensor:
    """The encoding written out per formula, in float64 (B, 2F, H, W)."""
    valid = (~mask).double()
    y, x = valid.cumsum(1), valid.cumsum(2)
    y = (y + offset) / (y[:, -1:] + 1e-6) * 2 * math.pi
    x = (x + offset) / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    channels = []
    for coord in (y, x):
        for i in range(num_pos_feats):
            angle = coord / 10000 ** (2 * (i // 2) / num_pos_feats)
            channels.append(angle.sin() if i % 2 == 0 else angle.cos())
    return torch.stack(channels, dim=1)


def padded_masks() -> torch.Tensor:
    """Three images padded at the bottom/right of a 9 x 13 batch (one unpadded)."""
    mask = torch.ones(3, 9, 13, dtype=torch.bool)
    for b, (h, w) in enumerate([(9, 13), (6, 13), (7, 4)]):
        mask[b, :h, :w] = False
    return mask


@pytest.mark.parametrize("level", range(4))
def test_equals_official_at_valid_cells(golden, level):
    mask, expected = golden[f"masks.{level}"], golden[f"pos.{level}"]
    pos = PositionEmbeddingSine(num_pos_feats=16)(mask)
    assert pos.shape == expected.shape == (2, 32, *mask.shape[1:]) and pos.dtype == torch.float32
    valid = (~mask)[:, None].expand_as(pos)
    torch.testing.assert_close(pos[valid], expected[valid], rtol=0, atol=1e-6)
    assert torch.equal(pos[valid], expected[valid])  # same float32 operations -> same bits
    assert torch.isfinite(pos).all()  # padded cells: finite noise, never used


@pytest.mark.parametrize("level", range(4))
def test_mask_to_level_equals_official(golden, level):
    expected = golden[f"masks.{level}"]
    mask = mask_to_level(golden["image_mask"], expected.shape[-2:])
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_mask_to_level_is_pytorch_nearest():
    mask = padded_masks()
    size = (4, 6)
    rows = torch.arange(size[0]) * mask.shape[1] // size[0]  # floor(dst * in / out)
    cols = torch.arange(size[1]) * mask.shape[2] // size[1]
    assert torch.equal(mask_to_level(mask, size), mask[:, rows][:, :, cols])


@pytest.mark.parametrize("offset", [-0.5, 0.0])
def test_matches_formula_in_float64(offset):
    mask = padded_masks()
    pos = PositionEmbeddingSine(offset=offset)(mask)
    expected = reference_float64(mask, 128, offset).float()
    assert pos.shape == (3, 256, 9, 13)
    valid = (~mask)[:, None].expand_as(pos)
    torch.testing.assert_close(pos[valid], expected[valid], rtol=0, atol=2e-6)


def test_computed_in_float32_whatever_the_dtype():
    mask = padded_masks()
    module = PositionEmbeddingSine()
    pos32 = module(mask)
    for dtype in (torch.float64, torch.bfloat16):
        pos = module(mask, dtype=dtype)
        assert pos.dtype == dtype and torch.equal(pos, pos32.to(dtype))


def test_unnormalized_uses_raw_cumulative_positions():
    mask = padded_masks()
    pos = PositionEmbeddingSine(num_pos_feats=4, temperature=100, normalize=False)(mask)
    rows, cols = (~mask).float().cumsum(1), (~mask).float().cumsum(2)
    # frequencies 1, 1, 1/10, 1/10 per axis; channels sin, cos, sin, cos; y first
    expected = [rows.sin(), rows.cos(), (rows / 10).sin(), (rows / 10).cos()]
    expected += [cols.sin(), cols.cos(), (cols / 10).sin(), (cols / 10).cos()]
    torch.testing.assert_close(pos, torch.stack(expected, dim=1))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bool mask"):
        PositionEmbeddingSine()(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(num_pos_feats=5)
