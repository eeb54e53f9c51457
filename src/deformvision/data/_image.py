"""Image files: the extensions we read, decoding to RGB with errors that name the file; ImageNet statistics."""

from pathlib import Path

from PIL import Image

IMG_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMG_EXTENSIONS` (any case) and is not a hidden file."""
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode ``path`` as an RGB PIL image (grayscale and palette images converted).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path``, if PIL cannot decode it (corrupt, truncated or not an image).
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes the whole file before it is closed
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's decoders raise all three
        raise ValueError(f"cannot read image {path}: {err}") from err


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
