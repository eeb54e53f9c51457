"""Image files: the extensions we read, decoding to 8-bit RGB with errors that name the file; ImageNet statistics.

How each PIL mode becomes RGB (:func:`load_rgb`) is a rule a researcher can predict from the file alone:
8-bit data is kept, wider integers are rescaled by their 16-bit range, floats must already lie in
``[0, 1]``, and transparent pixels are composited over black.
"""

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

IMG_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PLAIN_MODES = ("RGB", "RGBX", "L", "1", "CMYK", "YCbCr")  # PIL's own convert("RGB") is exact for these
_ALPHA_MODES = ("RGBA", "LA", "PA")
_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_UINT16_MAX = 65535
# Pillow 13 decodes TIFFs whose Orientation swaps the axes (5-8) wrongly in these modes except the listed ones
# (measured: L, P, I;16*, RGBA and CMYK come out scrambled), so such files are refused rather than misread.
_TIFF_TRANSPOSE_OK = ("RGB", "LA", "I", "F")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMG_EXTENSIONS` (any case) and is not a hidden file."""
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode ``path`` as an 8-bit RGB PIL image, upright and in the colours it shows.

    - The EXIF ``Orientation`` tag (1-8) is applied, so the image is as a viewer shows it.
    - Multi-frame files (animated GIF, TIFF stacks): the first frame.
    - ``RGB``, ``L`` (grey replicated), ``1`` (0 or 255), ``YCbCr``, palette ``P``: PIL's conversion.
      ``CMYK`` uses the plain formula ``R = (255 - C) * (255 - K) / 255`` (no ICC colour management).
    - Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a ``transparency`` entry) is composited over
      black: ``round(colour * alpha / 255)``, so fully transparent pixels are black whatever colour
      they store.
    - 16-bit integers (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, e.g. 16-bit PNG/TIFF) and 32-bit
      integers (``I``) are rescaled by the 16-bit range: ``round(value * 255 / 65535)``. An ``I`` image
      with a value outside ``0..65535`` is refused (its scale is unknown).
    - Floats (``F``, e.g. float TIFF) must lie in ``[0, 1]`` and become ``round(value * 255)``; NaN,
      infinite or out-of-range values are refused (no per-image min/max stretching, which would change
      the contrast from image to image).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path``, if PIL cannot decode it (corrupt, truncated or not an image), its
            mode has no RGB meaning (e.g. ``LAB``, ``HSV``), its values break the rules above, or it is a
            TIFF whose Orientation transposes it in a mode that Pillow decodes wrongly then.
    """
    try:
        with Image.open(path) as img:
            mode = img.mode
            orientation = img.getexif().get(ExifTags.Base.Orientation) if img.format == "TIFF" else None
            upright = ImageOps.exif_transpose(img)  # decodes the first frame before the file is closed
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's decoders raise all three
        raise ValueError(f"cannot read image {path}: {err}") from err
    if orientation in (5, 6, 7, 8) and mode not in _TIFF_TRANSPOSE_OK:
        raise ValueError(
            f"cannot read image {path}: TIFF with Orientation {orientation} (a 90-degree rotation or transposition) "
            f"in mode {mode}, which Pillow decodes wrongly; save it with the rotation applied "
            f"(readable modes: {', '.join(_TIFF_TRANSPOSE_OK)})"
        )
    return _to_rgb(upright, path)


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """``img`` (decoded, upright) as 8-bit RGB by the rules of :func:`load_rgb`."""
    if img.mode == "RGB":
        return img  # already a fresh decoded copy: no second copy
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _PLAIN_MODES or img.mode == "P":
        return img.convert("RGB")
    if img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)  # (H, W, 4)
        # round(c * a / 255) exactly: c * a / 255 is never a tie (255 is odd)
        return Image.fromarray(((2 * rgba[..., :3] * rgba[..., 3:] + 255) // 510).astype(np.uint8))
    if img.mode in _UINT16_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)  # (H, W)
        if img.mode == "I" and values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            raise ValueError(
                f"cannot read image {path}: 32-bit integer (mode I) values span [{values.min()}, {values.max()}]; "
                f"only 0..{_UINT16_MAX} (16-bit data) can be rescaled to 8 bits"
            )
        return _grey_to_rgb((values + 128) // 257)  # round(v * 255 / 65535) = round(v / 257), never a tie
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)  # (H, W)
        if not np.isfinite(values).all():
            raise ValueError(f"cannot read image {path}: float (mode F) image holds NaN or infinite values")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"cannot read image {path}: float (mode F) values span [{values.min():g}, {values.max():g}]; "
                f"only values in [0, 1] are read (scaled by 255)"
            )
        return _grey_to_rgb(np.rint(values * 255))
    raise ValueError(
        f"cannot read image {path}: mode {img.mode} has no defined conversion to RGB (readable modes: "
        f"{', '.join((*_PLAIN_MODES, 'P', *_ALPHA_MODES, *_UINT16_MODES, 'I', 'F'))})"
    )


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    """``(H, W)`` values in ``0..255`` as an RGB image with the grey replicated."""
    return Image.fromarray(np.repeat(values.astype(np.uint8)[..., None], 3, axis=2))  # (H, W, 3)


def passes_verify(path: Path) -> bool:
    """Whether PIL's fast integrity check (``Image.verify``: header and, for PNG, chunk CRCs) passes.

    ``verify`` does not decode the pixels, so a file that passes may still fail in :func:`load_rgb`.
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception:  # PIL raises many kinds on bad files; any of them means "not readable"
        return False
    return True
