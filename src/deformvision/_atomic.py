"""The one way the library writes a file: atomically, so a crash never leaves a half-written file.

:func:`atomic_write` hands a temporary file beside the target to a writer function, then flushes it to
disk (``os.fsync``), renames it over the target (``os.replace``, atomic on POSIX and Windows) and
flushes the directory entry. Readers see the previous file or the complete new one, even if the
process is killed (SIGKILL, power loss) at any moment. The temporary is removed when the writer
raises; one left by a killed process is named ``.<target name>.tmp-<pid>`` (hidden, never read as the
target; :func:`remove_stale_temporaries` clears them).

This module imports only the standard library, so every layer may use it.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

TMP_TAG = ".tmp-"
_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}  # other suffixes name their PIL format


class SavesToPath(Protocol):
    """Anything with ``save(path, format=...)``, such as a PIL image."""

    def save(self, fp: Path, format: str | None = None) -> None: ...  # noqa: A002 (PIL's argument name)


def temporary_name(path: Path) -> Path:
    """The temporary file of this process for ``path``: ``.<name>.tmp-<pid>`` in the same directory."""
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then atomically replace ``path`` with it.

    ``write`` may open, close and reopen ``tmp`` (``save_file(tensors, tmp)``, ``torch.save(obj, tmp)``).
    If it raises, the temporary is removed, ``path`` is untouched and the error propagates. The parent
    directory must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically (see :func:`atomic_write`).

    Raises:
        TypeError: ``obj`` holds a value JSON cannot represent (nothing is written).
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def save_image_atomic(image: SavesToPath, path: str | os.PathLike) -> Path:
    """Save a PIL image to ``path`` atomically, in the format of ``path``'s suffix (``.png``...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    image_format = _IMAGE_FORMATS.get(suffix, suffix[1:].upper() or None)
    return atomic_write(path, lambda tmp: image.save(tmp, format=image_format))


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Append whole ``lines`` (each without its newline) to ``path`` in one write, then flush it.

    An append-only log cannot be replaced atomically as a whole; one ``write`` of complete lines in
    append mode means a crash loses at most the lines of this call and a reader never sees lines of
    different calls interleaved (a torn final line, possible only on a full disk or power loss, is the
    most that can be damaged).
    """
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporaries that killed writers left in ``folder`` (``.*.tmp-*``)."""
    for stale in Path(folder).glob(f".*{TMP_TAG}*"):
        stale.unlink(missing_ok=True)
