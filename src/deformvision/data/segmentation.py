"""Semantic segmentation datasets: a folder of images with PNG label maps, and ADE20K (SceneParsing 2016).

A sample is ``(image, target)`` passed through ``transforms(image, target)``, where ``image`` is the
RGB PIL image and ``target`` a ``tv_tensors.Mask`` ``(H, W)`` int64 of class indices, ``ignore_index``
(255) for pixels that do not count. Without transforms the image becomes a float ``(3, H, W)``
``tv_tensors.Image`` in ``[0, 1]`` and the target stays as read;
:func:`~deformvision.data.build_segmentation_transforms` gives the training and evaluation pipelines.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from deformvision.data._image import is_image_file, load_rgb

IGNORE_INDEX = 255

# The 150 classes of ADE20K's SceneParsing benchmark, in label order (label k is the file's value k + 1).
ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
_LABEL_MODES = ("1", "L", "P", "I;16", "I")  # single-channel PNG modes whose values are class indices (never rescaled)
_SHOWN = 5  # file names shown in an error about unmatched files


def _files(folder: Path, what: str, keep: Callable[[Path], bool]) -> dict[str, Path]:
    """``relative path without suffix -> path`` of the files under ``folder`` that ``keep`` accepts."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and keep(path) and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise ValueError(
                    f"{what} folder {folder} holds two files with the stem {key!r}: {found[key].name} and {path.name}"
                )
            found[key] = path
    return found


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: value 0 ("other") becomes ``ignore_index``, every other value
    ``v`` becomes ``v - 1``, and ``ignore_index`` stays ``ignore_index``. Returns int64."""
    label = label.astype(np.int64)
    reduced = label - 1
    reduced[(label == 0) | (label == ignore_index)] = ignore_index
    return reduced


class SegmentationFolder(Dataset):
    """Images and PNG label maps with the same relative path and stem, as ``(image, target)`` pairs.

    ``images_dir/a/x.jpg`` goes with ``labels_dir/a/x.png`` (sub-folders are searched, hidden files
    skipped; images have any of :data:`~deformvision.data.IMG_EXTENSIONS`). A label map is a
    single-channel PNG (mode ``1``, ``L``, ``P``, ``I;16`` or ``I``) of the image's size, read as
    integer class indices: a palette PNG's indices are the labels, 16-bit values are kept as they are
    (not rescaled like a 16-bit image) and a 1-bit map gives 0 and 1. The image is read by the rules of
    :func:`~deformvision.data._image.load_rgb`, EXIF orientation applied, so the label map must match the
    upright image. Samples are in sorted path order.

    Args:
        images_dir: folder of the images.
        labels_dir: folder of the label maps.
        transforms: ``(PIL image, Mask) -> (image, target)``; ``None``: the image as a float
            ``(3, H, W)`` ``tv_tensors.Image`` in ``[0, 1]``, the target as read.
        reduce_zero_label: map 0 to ``ignore_index`` and every other value ``v`` to ``v - 1`` (for
            label maps where 0 means "unlabelled", as ADE20K's).
        num_classes: if given, every value of a (reduced) label map must be below it or equal to
            ``ignore_index`` (checked when a sample is read).
        ignore_index: the label of pixels that do not count.

    Attributes:
        samples: ``(image path, label path)`` in index order.

    Raises:
        FileNotFoundError: naming the folder, if either folder does not exist.
        ValueError: if there are no images, if two files in a folder share a stem, or if an image has
            no label map or a label map no image (naming a few of them). Reading a sample raises
            ``ValueError`` naming the file for an unreadable image or label map, a label map that is
            not single-channel, whose size differs from the image's, or with a value out of range.
    """

    def __init__(
        self,
        images_dir: str | Path,
        labels_dir: str | Path,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        *,
        reduce_zero_label: bool = False,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.labels_dir = Path(labels_dir)
        self.transforms = (
            transforms if transforms is not None else v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        )
        self.reduce_zero_label = reduce_zero_label
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        images = _files(self.images_dir, "images", is_image_file)
        labels = _files(self.labels_dir, "labels", lambda p: p.suffix.lower() == ".png")
        if not images:
            raise ValueError(f"no images found in {self.images_dir}")
        without_label = sorted(set(images) - set(labels))
        without_image = sorted(set(labels) - set(images))
        if without_label or without_image:
            problems = []
            if without_label:
                shown = ", ".join(images[k].name for k in without_label[:_SHOWN])
                problems.append(
                    f"{len(without_label)} image(s) without a label map in {self.labels_dir} (e.g. {shown})"
                )
            if without_image:
                shown = ", ".join(labels[k].name for k in without_image[:_SHOWN])
                problems.append(
                    f"{len(without_image)} label map(s) without an image in {self.images_dir} (e.g. {shown})"
                )
            raise ValueError("images and label maps do not match: " + "; ".join(problems))
        self.samples = [(images[k], labels[k]) for k in sorted(images)]

    def load_label(self, path: Path) -> np.ndarray:
        """The label map at ``path`` as an int64 ``(H, W)`` array (reduced if ``reduce_zero_label``)."""
        try:
            with Image.open(path) as img:
                if img.mode not in _LABEL_MODES:
                    raise ValueError(
                        f"label map {path} has mode {img.mode}; expected a single-channel PNG of "
                        f"class indices (mode {', '.join(_LABEL_MODES)})"
                    )
                label = np.array(img)
        except FileNotFoundError:
            raise FileNotFoundError(f"label map not found: {path}") from None
        except (OSError, SyntaxError) as err:
            raise ValueError(f"cannot read label map {path}: {err}") from err
        if self.reduce_zero_label:
            return reduce_zero_label(label, self.ignore_index)
        return label.astype(np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, label_path = self.samples[index]
        image = load_rgb(image_path)
        label = self.load_label(label_path)
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"label map {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path} is {image.width}x{image.height}"
            )
        if self.num_classes is not None:
            bad = np.unique(label[(label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))])
            if bad.size:
                raise ValueError(
                    f"label map {label_path} has values {bad[:10].tolist()} outside "
                    f"0..{self.num_classes - 1} and ignore_index={self.ignore_index}"
                )
        return self.transforms(image, tv_tensors.Mask(torch.from_numpy(label)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images_dir={str(self.images_dir)!r}, labels_dir={str(self.labels_dir)!r}, "
            f"samples={len(self)}, reduce_zero_label={self.reduce_zero_label})"
        )


class ADE20K(SegmentationFolder):
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, label 0 ("other") ignored.

    Reads the released layout ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``ADEChallengeData2016/annotations/{training,validation}/*.png`` (20210 / 2000 images). ``root`` is
    the folder that holds ``ADEChallengeData2016`` or that folder itself. Labels are reduced as mmseg's
    ``reduce_zero_label``: file value ``v >= 1`` is class ``v - 1`` (:data:`ADE20K_CLASSES`), 0 becomes
    255 (ignored).

    Raises:
        ValueError: for a ``split`` other than ``"training"`` or ``"validation"``; see
            :class:`SegmentationFolder` for the rest.
        FileNotFoundError: naming the folders looked at, if ``root`` has no ``images/<split>``.
    """

    SPLITS = ("training", "validation")
    classes = ADE20K_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"ADE20K split must be one of {self.SPLITS}, got {split!r}")
        root = Path(root)
        candidates = [root / "ADEChallengeData2016", root]
        base = next((c for c in candidates if (c / "images" / split).is_dir()), None)
        if base is None:
            looked = " or ".join(str(c / "images" / split) for c in candidates)
            raise FileNotFoundError(f"ADE20K {split} images not found: no folder {looked}")
        self.root = base
        self.split = split
        super().__init__(
            base / "images" / split,
            base / "annotations" / split,
            transforms,
            reduce_zero_label=True,
            num_classes=len(ADE20K_CLASSES),
        )
