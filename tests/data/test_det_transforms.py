"""Detection transforms (torchvision.transforms.v2) keep boxes and masks on the pixels they move."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from deformvision.data import IMAGENET_MEAN, IMAGENET_STD, build_detection_transforms
from deformvision.data import transforms_det as T
from deformvision.data._random import seeded


def _scene() -> tuple[Image.Image, dict[str, torch.Tensor]]:
    """A 100x60 (W x H) black image with one white box at xyxy (10, 20, 30, 50), plus a second box."""
    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[20:50, 10:30] = 255
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0], [60.0, 5.0, 95.0, 15.0]]),
        "labels": torch.tensor([3, 7]),
        "area": torch.tensor([600.0, 350.0]),
        "iscrowd": torch.tensor([0, 0]),
        "image_id": torch.tensor(9),
        "orig_size": torch.tensor([60, 100]),
        "size": torch.tensor([60, 100]),
    }
    return Image.fromarray(pixels), target


def _white_box(img) -> list[float]:
    """Pixel-edge xyxy bounds of the bright pixels of a PIL image, a normalised tensor or a (H, W) mask."""
    if isinstance(img, Image.Image):
        bright = np.asarray(img)[..., 0] > 127
    elif img.ndim == 2:
        bright = img.numpy() > 0
    else:
        bright = (img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy() > 0.5
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _pixels_xyxy(cxcywh: list[float], height: int, width: int) -> list[float]:
    cx, cy, w, h = cxcywh
    return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]


def test_eval_resize_moves_box_with_its_pixels_and_keeps_other_keys() -> None:
    img, target = _scene()
    x, out = build_detection_transforms(False, val_size=30, max_size=1333)(img, target)
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 30, 50)
    assert out["size"].tolist() == [30, 50] and out["orig_size"].tolist() == [60, 100] and out["image_id"] == 9
    # xyxy (10, 20, 30, 50) halved is (5, 10, 15, 25): cxcywh (10, 17.5, 10, 15) / (50, 30, 50, 30)
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.2, 17.5 / 30, 0.2, 0.5]))
    assert type(out["boxes"]) is torch.Tensor and out["labels"].tolist() == [3, 7]
    assert _white_box(x) == [5, 10, 15, 25]
    assert torch.equal(target["boxes"][0], torch.tensor([10.0, 20.0, 30.0, 50.0]))  # the input is not modified
    # the normalised image: black pixels are -mean / std
    torch.testing.assert_close(x[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))


@pytest.mark.parametrize(
    ("height", "width", "size", "max_size", "expected"),
    [
        (60, 100, 30, None, (30, 50)),  # shorter side to 30
        (100, 60, 30, None, (50, 30)),
        (480, 640, 800, 1333, (800, 1066)),  # COCO: int(800 * 640 / 480), under the cap
        (60, 100, 800, 1000, (600, 1000)),  # longer side capped at 1000
        (300, 1000, 800, 1333, (400, 1333)),  # capped: 1333 * 300 / 1000 = 399.9 -> 400
        (50, 1000, 800, 1333, (66, 1333)),  # v2 keeps the longer side at max_size (DETR's rounding: 67 x 1340)
        (128, 128, 128, 128, (128, 128)),  # the digits recipe: size == max_size
        (100, 200, 128, 128, (64, 128)),  # size >= max_size: the longer side is max_size
    ],
)
def test_resize_shape_is_detrs(height: int, width: int, size: int, max_size: int | None, expected) -> None:
    out = T.resize(size, max_size)(Image.new("RGB", (width, height)))
    assert (out.height, out.width) == expected


def test_hflip_and_no_crop_recipe_mirrors_boxes() -> None:
    img, target = _scene()
    kwargs = {"scales": (60,), "max_size": 100, "crop": None}
    x, kept = build_detection_transforms(True, hflip=0.0, **kwargs)(img, target)
    y, flipped = build_detection_transforms(True, hflip=1.0, **kwargs)(img, target)
    torch.testing.assert_close(kept["boxes"][0], torch.tensor([0.2, 35 / 60, 0.2, 0.5]))  # cxcywh of (10, 20, 30, 50)
    # mirrored: (100 - 30, 20, 100 - 10, 50) and (100 - 95, 5, 100 - 60, 15)
    torch.testing.assert_close(
        flipped["boxes"] * torch.tensor([100, 60, 100, 60]),
        torch.tensor([[80.0, 35.0, 20.0, 30.0], [22.5, 10.0, 35.0, 10.0]]),
    )
    assert _white_box(x) == [10, 20, 30, 50] and _white_box(y) == [70, 20, 90, 50]
    assert kept["size"].tolist() == flipped["size"].tolist() == [60, 100]  # resized to scale 60 only: never cropped


def test_flip_probability() -> None:
    img, target = _scene()
    transform = build_detection_transforms(True, scales=(60,), max_size=100, crop=None, hflip=0.5)
    flips = 0
    for seed in range(200):
        with seeded(seed):
            flips += transform(img, target)[1]["boxes"][0, 0].item() > 0.5
    assert 70 <= flips <= 130  # Binomial(200, 0.5): 5 standard deviations


def _crop_with_known_params(crop: T.RandomSizeCrop, img, target, seed: int):
    with seeded(seed):
        params = crop.make_params([img])
    with seeded(seed):
        return params, crop(img, target)


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 79), st.integers(0, 59), st.integers(1, 40), st.integers(1, 40)),
        min_size=1,
        max_size=6,
    ),
    sizes=st.tuples(st.integers(1, 60), st.integers(1, 90)).map(sorted),
    seed=st.integers(0, 2**31),
)
def test_random_size_crop_keeps_exactly_the_boxes_that_overlap_the_crop(boxes, sizes, seed) -> None:
    width, height = 80, 60
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    xyxy = [(x, y, min(x + w, width), min(y + h, height)) for x, y, w, h in boxes]
    masks = np.zeros((len(xyxy), height, width), bool)
    for i, (x0, y0, x1, y1) in enumerate(xyxy):
        masks[i, y0:y1, x0:x1] = True
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(xyxy, dtype=torch.float32), format="XYXY", canvas_size=(height, width)
        ),
        "masks": tv_tensors.Mask(torch.from_numpy(masks)),
        "labels": torch.arange(len(xyxy)),
        "area": torch.full((len(xyxy),), 7.0),
        "iscrowd": torch.zeros(len(xyxy), dtype=torch.int64),
    }
    crop = T.RandomSizeCrop(*sizes)
    params, (out, cropped) = _crop_with_known_params(crop, img, target, seed)
    top, left, h, w = params["top"], params["left"], params["height"], params["width"]
    assert min(sizes[0], min(width, sizes[1])) <= w <= min(width, sizes[1])
    assert min(sizes[0], min(height, sizes[1])) <= h <= min(height, sizes[1])
    np.testing.assert_array_equal(np.asarray(out), pixels[top : top + h, left : left + w])

    expected = []  # the intersections with the crop, in crop coordinates, of the boxes that overlap it
    for i, (x0, y0, x1, y1) in enumerate(xyxy):
        box = (max(x0, left) - left, max(y0, top) - top, min(x1, left + w) - left, min(y1, top + h) - top)
        if box[2] > box[0] and box[3] > box[1]:
            expected.append((i, box))
    kept = [i for i, _ in expected]
    assert cropped["labels"].tolist() == kept
    assert cropped["boxes"].tolist() == [list(map(float, box)) for _, box in expected]
    assert isinstance(cropped["boxes"], tv_tensors.BoundingBoxes) and cropped["boxes"].canvas_size == (h, w)
    assert isinstance(cropped["masks"], tv_tensors.Mask)
    assert torch.equal(cropped["masks"], torch.from_numpy(masks[kept][:, top : top + h, left : left + w]))
    assert len(cropped["area"]) == len(cropped["iscrowd"]) == len(kept)


def test_random_size_crop_keeps_a_small_image_whole_and_checks_its_range() -> None:
    small = Image.new("RGB", (10, 8))
    with seeded(0):
        assert T.RandomSizeCrop(20, 40)(small, {})[0].size == (10, 8)
    with pytest.raises(ValueError, match="min_size=600, max_size=384"):
        T.RandomSizeCrop(600, 384)


@pytest.mark.parametrize("seed", range(12))
def test_train_recipe_keeps_box_and_mask_on_their_pixels(seed: int) -> None:
    img, target = _scene()
    mask = torch.zeros(2, 60, 100, dtype=torch.uint8)
    mask[0, 20:50, 10:30] = 1
    mask[1, 5:15, 60:95] = 1
    target["masks"] = tv_tensors.Mask(mask)
    transforms = build_detection_transforms(
        True, scales=(48, 64, 80), max_size=140, crop=(24, 56), crop_resize=(50, 60, 70)
    )
    with seeded(seed):
        x, out = transforms(img, target)
    height, width = x.shape[-2:]
    assert out["size"].tolist() == [height, width] and max(height, width) <= 140
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) == len(out["area"])
    assert out["masks"].shape[-2:] == (height, width)
    if 3 in out["labels"].tolist():
        i = out["labels"].tolist().index(3)
        expected = _pixels_xyxy(out["boxes"][i].tolist(), height, width)
        np.testing.assert_allclose(_white_box(x), expected, atol=1.5)  # resampling blurs edges by < 1.5 px
        assert out["masks"][i].any()
    with seeded(seed):
        again = transforms(img, target)
    assert torch.equal(x, again[0]) and torch.equal(out["boxes"], again[1]["boxes"])


@pytest.mark.parametrize("seed", range(6))
def test_masks_move_with_their_boxes(seed: int) -> None:
    img, target = _scene()
    mask = torch.zeros(2, 60, 100, dtype=torch.uint8)
    mask[0, 20:50, 10:30] = 1
    mask[1, 5:15, 60:95] = 1
    target["masks"] = tv_tensors.Mask(mask)
    with seeded(seed):  # flips and upscales by at most 2: a nearest-neighbour edge is off by at most 2 px
        x, out = build_detection_transforms(True, scales=(48, 80, 120), max_size=200, crop=None)(img, target)
    height, width = x.shape[-2:]
    for i in range(2):
        expected = _pixels_xyxy(out["boxes"][i].tolist(), height, width)
        np.testing.assert_allclose(_white_box(out["masks"][i]), expected, atol=2.0)


def test_train_recipe_varies_with_the_seed_and_leaves_global_rngs_alone() -> None:
    img, target = _scene()
    transforms = build_detection_transforms(
        True, scales=(48, 64, 80), max_size=140, crop=(24, 56), crop_resize=(50, 60, 70)
    )
    torch.manual_seed(123)
    state = torch.get_rng_state()
    shapes = set()
    for seed in range(10):
        with seeded(seed):
            shapes.add(tuple(transforms(img, target)[0].shape))
    assert len(shapes) > 2 and torch.equal(torch.get_rng_state(), state)


def test_plain_and_tv_tensor_boxes_give_the_same_result() -> None:
    img, target = _scene()
    wrapped = dict(target, boxes=tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(60, 100)))
    transform = build_detection_transforms(False, val_size=30)
    torch.testing.assert_close(transform(img, target)[1]["boxes"], transform(img, wrapped)[1]["boxes"], rtol=0, atol=0)


def test_eval_recipe_on_an_inference_target() -> None:
    img, _ = _scene()
    x, out = build_detection_transforms(False)(img, {})
    assert x.shape == (3, 800, 1333) and list(out) == ["size"] and out["size"].tolist() == [800, 1333]


def test_to_tensors_without_normalisation() -> None:
    img, target = _scene()
    x, out = v2.Compose([T.ToTVTensors(), *T.to_tensors()])(img, target)
    assert x.min() == 0 and x.max() == 1 and x[0, 20, 10] == 1  # pixel values / 255
    torch.testing.assert_close(out["boxes"][1], torch.tensor([77.5 / 100, 10 / 60, 35 / 100, 10 / 60]))


def test_clear_errors() -> None:
    img, target = _scene()
    with pytest.raises(ValueError, match="hflip"):
        build_detection_transforms(True, hflip=1.5)
    with pytest.raises(ValueError, match="scales"):
        build_detection_transforms(True, scales=())
    with pytest.raises(ValueError, match="crop_resize"):
        build_detection_transforms(True, crop_resize=(0,))
    with pytest.raises(ValueError, match=r"target\['boxes'\] must be \(n, 4\)"):
        build_detection_transforms(False)(img, {"boxes": torch.zeros(2, 5)})
    with pytest.raises(TypeError, match=r"takes \(image, target dict\)"):
        build_detection_transforms(False)(img)
