"""Image classification dataset read from a class-per-subfolder tree."""

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from deformvision.data._image import IMG_EXTENSIONS, is_image_file, load_rgb, passes_verify

_SHOWN = 5  # paths shown in an error or warning


def _shown(items: list[Any]) -> str:
    return ", ".join(str(item) for item in items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


class ImageFolder(Dataset):
    """Images in ``root/<class name>/**/<file>``, labelled by class folder.

    Class names are the sub-folders of ``root`` in sorted order, mapped to indices ``0..K-1``; the
    samples are every file with an image extension (see :data:`IMG_EXTENSIONS`, any case) below each
    class folder, sorted by path. Samples are decoded to RGB PIL images and passed to ``transform``.

    Args:
        root: the dataset folder.
        transform: called on each RGB PIL image (e.g. from
            :func:`~deformvision.data.build_classification_transforms`); ``None`` returns the image.
        skip_corrupt: check every file once at construction with PIL's ``verify()`` (header and
            checksums, no decoding) and leave out those that fail, with one warning naming them. The
            dataset is then the same for the same files. Without it, a bad file raises only when loaded.

    Attributes:
        classes: the class names, ``classes[i]`` is label ``i``.
        class_to_idx: class name -> label.
        samples: ``(path, label)`` pairs in index order.
        targets: the labels in index order.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: naming the folders, if ``root`` has no class folders, or a class folder has no
            image file (or, with ``skip_corrupt``, no readable one): a class without samples would
            silently never be learnt.

    Image files directly in ``root`` belong to no class; they are left out with one warning.

    ``dataset[i]`` is ``(transform(image), label)``; a file that cannot be decoded raises
    ``ValueError`` naming it (``verify()`` does not decode pixels, so a truncated file can still do so
    with ``skip_corrupt``).
    """

    def __init__(
        self, root: str | Path, transform: Callable[[Any], Any] | None = None, skip_corrupt: bool = False
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder root is not a folder: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"no class folders in {self.root} (expected {self.root}/<class name>/<image files>)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        loose = sorted(p.name for p in self.root.iterdir() if p.is_file() and is_image_file(p))
        if loose:
            message = f"ignoring {len(loose)} image file(s) directly in {self.root}, outside every class folder"
            warnings.warn(f"{message} (e.g. {_shown(loose)})", stacklevel=2)
        samples = [
            (path, label)
            for name, label in self.class_to_idx.items()
            for path in sorted(p for p in (self.root / name).rglob("*") if p.is_file() and is_image_file(p))
        ]
        self._check_every_class_has_images(samples, "image files")
        if skip_corrupt:
            samples = self._drop_unreadable(samples)
            self._check_every_class_has_images(samples, "readable images")
        self.samples: list[tuple[Path, int]] = samples
        self.targets = [label for _, label in samples]

    def _check_every_class_has_images(self, samples: list[tuple[Path, int]], what: str) -> None:
        present = {label for _, label in samples}
        empty = [name for name, label in self.class_to_idx.items() if label not in present]
        if empty:
            raise ValueError(
                f"no {what} in {len(empty)} of {len(self.classes)} class folder(s): "
                f"{_shown([self.root / name for name in empty])} (a class needs at least "
                f"one file with an extension in {', '.join(IMG_EXTENSIONS)})"
            )

    def _drop_unreadable(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        kept = [(path, label) for path, label in samples if passes_verify(path)]
        if len(kept) < len(samples):
            bad = sorted({path for path, _ in samples} - {path for path, _ in kept})
            warnings.warn(f"skipping {len(bad)} unreadable image(s) in {self.root}: {_shown(bad)}", stacklevel=3)
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_rgb(path)
        return (self.transform(img) if self.transform is not None else img), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, classes={len(self.classes)})"
