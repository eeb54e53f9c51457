"""load_rgb against an independent numpy computation for every PIL mode, EXIF orientation and multi-frame file."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deformvision.data._image import load_rgb

ORIENTATION = 0x0112
# What a viewer shows for each EXIF orientation of the stored (H, W, ...) array (EXIF 2.3, tag 274).
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda x: x,
    2: lambda x: x[:, ::-1],  # mirrored left-right
    3: lambda x: x[::-1, ::-1],  # rotated 180
    4: lambda x: x[::-1],  # mirrored top-bottom
    5: lambda x: x.swapaxes(0, 1),  # transposed
    6: lambda x: np.rot90(x, -1),  # stored rotated 90 counter-clockwise: shown rotated 90 clockwise
    7: lambda x: x[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda x: np.rot90(x, 1),
}


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=2)


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.round(rgb.astype(np.float64) * alpha[..., None].astype(np.float64) / 255).astype(np.uint8)


def _save(image: Image.Image, path: Path, orientation: int = 1, **kwargs: object) -> Path:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), **kwargs)
    return path


def _loaded(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_sixteen_bit_png_and_big_endian_tiff_are_rescaled(tmp_path: Path) -> None:
    values = np.array([[0, 1, 128, 129], [385, 32767, 65407, 65535]], np.uint16)
    expected = _grey(np.round(values.astype(np.float64) * 255 / 65535))
    png = _save(Image.fromarray(values), tmp_path / "a.png")
    assert Image.open(png).mode == "I;16"
    assert np.array_equal(_loaded(png), expected)
    tif = tmp_path / "b.tif"
    Image.frombytes("I;16B", (4, 2), values.astype(">u2").tobytes()).save(tif)
    assert Image.open(tif).mode == "I;16B"
    assert np.array_equal(_loaded(tif), expected)
    assert _loaded(png).max() == 255  # the old convert("RGB") clipped to all-white


def test_thirty_two_bit_integers_are_read_as_sixteen_bit_data(tmp_path: Path) -> None:
    values = np.array([[0, 300, 40000, 65535]], np.int32)
    path = tmp_path / "i.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    assert np.array_equal(_loaded(path), _grey(np.round(values * 255 / 65535)))
    for bad in (70000, -1):
        Image.fromarray(np.array([[0, bad]], np.int32)).save(path)
        with pytest.raises(ValueError, match=rf"i.tif: 32-bit integer \(mode I\) values span \[{min(0, bad)}, "):
            load_rgb(path)


def test_float_images_in_unit_range_are_scaled_and_others_refused(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 0.5, 0.999], [1.0, 1e-3, 0.7, 0.3]], np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    assert np.array_equal(_loaded(path), _grey(np.round(values.astype(np.float64) * 255)))
    Image.fromarray(np.full((2, 2), np.nan, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"f.tif: float \(mode F\) image holds NaN"):
        load_rgb(path)
    Image.fromarray(np.array([[0.0, 3.5]], np.float32)).save(path)
    with pytest.raises(ValueError, match=r"f.tif: float \(mode F\) values span \[0, 3.5\]; only values in \[0, 1\]"):
        load_rgb(path)


def test_cmyk_uses_the_plain_formula(tmp_path: Path) -> None:
    cmyk = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    path = tmp_path / "c.tif"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    assert np.array_equal(_loaded(path), np.round((255 - c) * (255 - k) / 255).astype(np.uint8))


def test_palette_with_transparency_is_composited_over_black(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    indices = rng.integers(0, 4, (6, 5), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "one.png", transparency=2)  # index 2 fully transparent
    expected = palette[indices]
    expected[indices == 2] = 0
    assert np.array_equal(_loaded(tmp_path / "one.png"), expected)
    alphas = np.array([255, 0, 128, 30], np.uint8)
    image.save(tmp_path / "many.png", transparency=alphas.tobytes())  # a tRNS alpha per palette entry
    assert np.array_equal(_loaded(tmp_path / "many.png"), _over_black(palette[indices], alphas[indices]))
    image.save(tmp_path / "opaque.png")
    assert np.array_equal(_loaded(tmp_path / "opaque.png"), palette[indices])


def test_alpha_modes_and_bilevel(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(_loaded(tmp_path / "rgba.png"), _over_black(rgba[..., :3], rgba[..., 3]))
    la = rgba[..., :2]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(_loaded(tmp_path / "la.png"), _grey(_over_black(la[..., :1], la[..., 1])[..., 0]))
    bits = rng.integers(0, 2, (3, 9)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert np.array_equal(_loaded(tmp_path / "bits.png"), _grey(bits * 255))


def test_first_frame_of_multi_frame_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = [rng.choice(np.array([0, 90, 255], np.uint8), (5, 6, 3)) for _ in range(3)]
    images = [Image.fromarray(frame) for frame in frames]
    for name in ("stack.tif", "anim.gif"):
        images[0].save(tmp_path / name, save_all=True, append_images=images[1:])
        assert Image.open(tmp_path / name).n_frames == 3
        assert np.array_equal(_loaded(tmp_path / name), frames[0])


def test_tiff_orientation_that_pillow_misreads_is_refused(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path / "rgb.tif", orientation=6)
    assert np.array_equal(_loaded(path), UPRIGHT[6](rgb))
    path = _save(Image.fromarray(rgb[..., 0]), tmp_path / "grey.tif", orientation=6)
    with pytest.raises(ValueError, match="grey.tif: TIFF with Orientation 6 .* in mode L, which Pillow decodes"):
        load_rgb(path)


def test_unreadable_modes_and_files(tmp_path: Path) -> None:
    Image.new("LAB", (3, 2)).save(tmp_path / "lab.tif")
    with pytest.raises(ValueError, match="lab.tif: mode LAB has no defined conversion to RGB"):
        load_rgb(tmp_path / "lab.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_rgb(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="image file not found: .*gone.png"):
        load_rgb(tmp_path / "gone.png")


def _stored_and_expected(mode: str, values: np.ndarray) -> tuple[Image.Image, np.ndarray, str]:
    """A PIL image of ``mode`` made from random ``(H, W, 4)`` uint16 ``values``, the RGB a reader should get by
    the documented rule (computed in float64), and the file suffix that stores the mode losslessly."""
    v8 = (values % 256).astype(np.uint8)
    wide = values[..., 0].astype(np.float64)
    if mode == "I;16":
        return Image.fromarray(values[..., 0]), _grey(np.round(wide * 255 / 65535)), ".png"
    if mode == "I":
        return Image.fromarray(values[..., 0].astype(np.int32)), _grey(np.round(wide * 255 / 65535)), ".tif"
    if mode == "F":
        unit = (wide / 65535).astype(np.float32)
        return Image.fromarray(unit), _grey(np.round(unit.astype(np.float64) * 255)), ".tif"
    if mode == "RGBA":
        return Image.fromarray(v8, mode="RGBA"), _over_black(v8[..., :3], v8[..., 3]), ".png"
    if mode == "LA":
        return Image.fromarray(v8[..., :2], mode="LA"), _grey(_over_black(v8[..., :1], v8[..., 1])[..., 0]), ".png"
    if mode == "L":
        return Image.fromarray(v8[..., 0]), _grey(v8[..., 0]), ".png"
    return Image.fromarray(v8[..., :3]), v8[..., :3], ".png"


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["RGB", "L", "RGBA", "LA", "I;16", "I", "F"]),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    orientation=st.integers(1, 8),
)
def test_rescaling_and_orientation_property(
    tmp_path_factory: pytest.TempPathFactory, mode: str, height: int, width: int, seed: int, orientation: int
) -> None:
    values = np.random.default_rng(seed).integers(0, 65536, (height, width, 4)).astype(np.uint16)
    image, expected, suffix = _stored_and_expected(mode, values)
    assert image.mode == mode
    path = _save(image, tmp_path_factory.mktemp("prop") / f"x{suffix}", orientation=orientation)
    assert np.array_equal(_loaded(path), UPRIGHT[orientation](expected))
