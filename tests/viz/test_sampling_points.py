"""Sampling points of DAT and MSDeformAttn: pixel conventions, the recorded tensors are the layer's, pictures."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deformvision.layers import MSDeformAttn
from deformvision.models import create_model
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.ops import ms_deform_attn
from deformvision.viz import (
    dat_points_to_pixels,
    dat_sampling_points,
    draw_dat_sampling_points,
    draw_dat_top_keys,
    draw_msda_sampling_locations,
    label_color,
    record_sampling_locations,
)

# A DAT of ~90k parameters: deformable blocks in stages 2 (2 groups) and 3 (1 group).
TINY_DAT = {
    "img_size": 64,
    "dims": (8, 16, 32, 64),
    "depths": (1, 1, 2, 1),
    "heads": (1, 1, 2, 2),
    "groups": (-1, -1, 2, 1),
    "window_sizes": (4, 4, 2, 1),
    "stage_spec": (("L",), ("S",), ("L", "D"), ("D",)),
    "drop_path_rate": 0.0,
}


def test_dat_points_to_pixels_follows_grid_sample_align_corners_true():
    h, w, stride = 5, 7, 8
    columns = torch.arange(w, dtype=torch.float64).expand(1, 1, h, w)  # each map pixel holds its column
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(1, 1, h, w)
    points = torch.rand(1, 3, 4, 2, dtype=torch.float64) * 2 - 1  # (y, x) in [-1, 1]
    grid = points[..., (1, 0)]  # grid_sample wants (x, y)
    column = F.grid_sample(columns, grid, align_corners=True)[0, 0]
    row = F.grid_sample(rows, grid, align_corners=True)[0, 0]
    pixels = dat_points_to_pixels(points[0], (h, w), stride)
    torch.testing.assert_close(pixels[..., 0], (column + 0.5) * stride)  # map pixel c is input pixels [8c, 8c + 8)
    torch.testing.assert_close(pixels[..., 1], (row + 0.5) * stride)
    corners = dat_points_to_pixels(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), (h, w), stride)
    torch.testing.assert_close(corners, torch.tensor([[4.0, 4.0], [52.0, 36.0]]))  # border pixel centres


def test_dat_sampling_points_of_every_deformable_block():
    torch.manual_seed(0)
    model = create_model("dat_tiny", features_only=True, **TINY_DAT).eval()
    image = torch.randn(3, 64, 64)
    blocks = dat_sampling_points(model, image)
    assert [b.name for b in blocks] == ["stages.2.blocks.1", "stages.3.blocks.0"]
    assert [b.stride for b in blocks] == [16, 32]
    assert blocks[0].positions.shape == blocks[0].references.shape == (2, 4, 4, 2)
    assert blocks[1].positions.shape == (1, 2, 2, 2)
    for block in blocks:  # references lie inside the image; offsets move them (random offsets are not zero)
        assert block.references.min() > 0 and block.references.max() < 64
        assert not torch.equal(block.positions, block.references)
    # the very points the model returns from its forward pass, in pixels
    own = model.sampling_points(image[None])
    for block, (stage, size) in zip(blocks, [(2, (4, 4)), (3, (2, 2))], strict=True):
        expected = dat_points_to_pixels(own[block.name].positions[0], size, 4 * 2**stage)
        torch.testing.assert_close(block.positions, expected)
        assert block.query_map == size
        assert block.attention.shape == (2, size[0] * size[1], size[0] * size[1])  # heads, queries, keys
        torch.testing.assert_close(block.attention.sum(-1), torch.ones(2, size[0] * size[1]))


def test_dat_sampling_points_wants_one_image():
    model = create_model("dat_tiny", features_only=True, **TINY_DAT).eval()
    with pytest.raises(ValueError, match=r"image must be one \(C, H, W\) tensor, got \(1, 3, 64, 64\)"):
        dat_sampling_points(model, torch.randn(1, 3, 64, 64))


def test_draw_dat_top_keys(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("dat_tiny", features_only=True, **TINY_DAT).eval()
    block = dat_sampling_points(model, torch.randn(3, 64, 64))[0]  # 4x4 queries and keys per group, 2 groups
    block.attention = torch.zeros_like(block.attention)
    block.attention[0, 5, 7] = 1.0  # query (row 1, col 1): head 0 (group 0) puts all its weight on key 7 ...
    block.attention[1, 5, 2] = 1.0  # ... and head 1 (group 1) on key 2 of its group
    out = draw_dat_top_keys(Image.new("RGB", (64, 64)), block, [(20.0, 30.0)], k=2, scale=2)
    out.save(tmp_path / "top.png")
    saved = Image.open(tmp_path / "top.png")
    assert saved.width == 128 and saved.height > 128  # the legend band below
    for group, key in ((0, 7), (1, 2)):
        x, y = (block.positions[group].reshape(-1, 2)[key] * 2).round().int().tolist()
        if 0 <= x < 128 and 0 <= y < 128:
            assert saved.getpixel((x, y)) == label_color(0)  # the query's colour on its top keys
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 32\]"):
        draw_dat_top_keys(Image.new("RGB", (64, 64)), block, [(1.0, 1.0)], k=33)
    with pytest.raises(ValueError, match=r"query 0 \(x, y\) = \(70.0, 1.0\) is outside the 64x64 image"):
        draw_dat_top_keys(Image.new("RGB", (64, 64)), block, [(70.0, 1.0)])


def test_draw_dat_sampling_points(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("dat_tiny", features_only=True, **TINY_DAT).eval()
    block = dat_sampling_points(model, torch.randn(3, 64, 64))[0]
    out = draw_dat_sampling_points(Image.new("RGB", (64, 64)), block, scale=3)
    out.save(tmp_path / "dat.png")
    saved = Image.open(tmp_path / "dat.png")
    assert saved.size == (192, 192)
    colors = {color for _, color in saved.getcolors(1 << 16)}
    assert {label_color(0), label_color(1), (255, 255, 255)} <= colors  # both groups and the references
    only_first = draw_dat_sampling_points(Image.new("RGB", (64, 64)), block, scale=3, groups=[0])
    assert label_color(1) not in {color for _, color in only_first.getcolors(1 << 16)}


def _msda_inputs(reference_dim: int) -> tuple[MSDeformAttn, tuple]:
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, num_levels=2, num_heads=4, num_points=3).double()
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)  # not the official all-zero start
    torch.nn.init.normal_(module.attention_weights.weight, std=0.5)
    shapes = torch.tensor([[8, 8], [4, 4]])
    start = torch.tensor([0, 64])
    query = torch.randn(2, 5, 32, dtype=torch.float64)
    reference = torch.rand(2, 5, 2, reference_dim, dtype=torch.float64) * 0.5 + 0.25
    memory = torch.randn(2, 80, 32, dtype=torch.float64)
    return module, (query, reference, memory, shapes, start)


def _record(module: MSDeformAttn, inputs: tuple):
    with torch.no_grad(), record_sampling_locations(module) as calls:
        output = module(*inputs)
    return calls[0], output


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_recorded_locations_reproduce_the_layer(reference_dim: int):
    module, inputs = _msda_inputs(reference_dim)
    query, reference, memory, shapes, start = inputs
    sampling, output = _record(module, inputs)
    assert sampling.locations.shape == (2, 5, 4, 2, 3, 2) and sampling.weights.shape == (2, 5, 4, 2, 3)
    torch.testing.assert_close(sampling.weights.sum((-2, -1)), torch.ones(2, 5, 4, dtype=torch.float64))
    value = module.value_proj(memory).view(2, 80, 4, 8)
    rebuilt = module.output_proj(ms_deform_attn(value, shapes, start, sampling.locations, sampling.weights))
    torch.testing.assert_close(rebuilt, output)
    offsets = module.sampling_offsets(query).view(2, 5, 4, 2, 3, 2)  # independent: the documented formula
    if reference_dim == 2:
        expected = reference[:, :, None, :, None] + offsets / shapes.flip(-1)[:, None].double()
    else:
        expected = reference[:, :, None, :, None, :2] + offsets / 3 * reference[:, :, None, :, None, 2:] * 0.5
    torch.testing.assert_close(sampling.locations, expected.detach())


def test_record_sampling_locations_hooks_each_call_and_cleans_up():
    module, (query, reference, memory, shapes, start) = _msda_inputs(2)
    with record_sampling_locations(module) as calls:
        module(query, reference, memory, shapes, start)
        module(query[:1], reference[:1], memory[:1], spatial_shapes=shapes, level_start_index=start)  # keywords too
    assert len(calls) == 2 and calls[1].locations.shape[0] == 1
    assert torch.equal(calls[1].reference_points, reference[:1])
    assert not calls[0].locations.requires_grad
    module(query, reference, memory, shapes, start)
    assert len(calls) == 2 and not module._forward_pre_hooks and not module.sampling._forward_pre_hooks


def test_record_sampling_locations_inside_a_detector():
    torch.manual_seed(0)
    backbone = create_model("dat_tiny", features_only=True, out_indices=(1, 2, 3), **TINY_DAT)
    detector = DeformableDETR(
        backbone,
        3,
        num_queries=5,
        d_model=32,
        num_heads=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        with_box_refine=True,
        two_stage=True,
    ).eval()
    with torch.no_grad(), record_sampling_locations(detector.transformer.decoder.layers[-1].cross_attn) as calls:
        detector([torch.randn(3, 128, 128)])
    (sampling,) = calls
    heads, levels, points = 4, 4, 4
    assert sampling.locations.shape == (1, 5, heads, levels, points, 2)
    assert sampling.reference_points.shape == (1, 5, levels, 4)  # boxes: two-stage with box refinement


def test_draw_msda_sampling_locations(tmp_path: Path):
    module, inputs = _msda_inputs(4)
    sampling, _ = _record(module, inputs)
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [20.0, 30.0, 60.0, 60.0]])
    colors = [(255, 0, 0), (0, 255, 0)]
    out = draw_msda_sampling_locations(
        Image.new("RGB", (64, 64)), sampling, [1, 3], image_index=1, boxes=boxes, colors=colors, scale=2
    )
    out.save(tmp_path / "msda.png")
    saved = Image.open(tmp_path / "msda.png")
    assert saved.size == (128, 128)
    assert saved.getpixel((20, 50)) == (255, 0, 0)  # left edge of the first query's box
    counts = {color: n for n, color in saved.getcolors(1 << 16)}
    assert counts[(0, 255, 0)] > 100  # the second query's box and points
    one_level = draw_msda_sampling_locations(Image.new("RGB", (64, 64)), sampling, [1], levels=[0])
    assert one_level.size == (64, 64) and len(one_level.getcolors(1 << 16)) > 1


def test_draw_msda_sampling_locations_coloured_by_level(tmp_path: Path):
    module, inputs = _msda_inputs(2)
    sampling, _ = _record(module, inputs)
    sampling.weights = torch.ones_like(sampling.weights) / 24
    out = draw_msda_sampling_locations(Image.new("RGB", (64, 64)), sampling, [0, 2], scale=2, color_by_level=True)
    out.save(tmp_path / "levels.png")
    saved = Image.open(tmp_path / "levels.png")
    assert saved.width == 128 and saved.height > 128  # legend band
    colors = {color for _, color in saved.getcolors(1 << 16)}
    assert {label_color(0), label_color(1)} <= colors
    only_level_1 = draw_msda_sampling_locations(
        Image.new("RGB", (64, 64)), sampling, [0], levels=[1], colors=[(1, 2, 3)], color_by_level=True
    )
    image_part = {color for _, color in only_level_1.crop((0, 0, 64, 64)).getcolors(1 << 16)}
    assert label_color(1) in image_part and label_color(0) not in image_part
