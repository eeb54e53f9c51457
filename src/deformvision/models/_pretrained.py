"""Pretrained weights by name: where each variant's weights are, and how they reach the model.

Every model family declares ``default_cfgs`` beside its registered variants: timm's
:class:`~timm.models.PretrainedCfg` per ``"architecture.tag"`` (built with
:func:`timm.models.generate_default_cfgs`), so timm's tools (``resolve_data_config``,
``list_pretrained``) read the same mean/std/input size/crop/interpolation as we do.

A cfg's ``url`` names the published file. It may end in ``#sha256=<64 hex digits>`` (pip's
convention): the downloaded file must then have exactly that digest. Without a pinned digest the
first download's digest is recorded beside the cached file and every later load must match it.

Flow of ``pretrained=True``: download (with a progress bar) to a temporary file in the cache
directory -> SHA-256 check -> fsync and atomic rename into the cache -> read and convert with the model's
``checkpoint_filter`` (official and Hugging Face layouts) -> strict load. Once cached, nothing
touches the network, so it works offline.

The cache directory is ``$TORCH_HOME/hub/checkpoints/deformvision`` (``torch.hub.get_dir()``, the
one timm and torchvision use) unless ``cache_dir`` is given.
"""

import hashlib
import logging
import re
from os import PathLike
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import torch.hub
from timm.models import PretrainedCfg
from torch import nn
from tqdm import tqdm

from deformvision._atomic import atomic_write, write_text_atomic
from deformvision.models._checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-f]{64})$")
_CHUNK = 1 << 20


def split_url(url: str) -> tuple[str, str | None]:
    """``"https://host/file#sha256=<hex>"`` -> ``("https://host/file", "<hex>")`` (digest None if absent).

    Raises:
        ValueError: the URL has a fragment that is not ``sha256=`` and 64 lower-case hex digits.
    """
    address, _, fragment = url.partition("#")
    if not fragment:
        return address, None
    match = _SHA256_FRAGMENT.match(fragment)
    if match is None:
        raise ValueError(f"weights URL {url!r}: the part after '#' must be 'sha256=' and 64 lower-case hex digits")
    return address, match[1]


def file_sha256(path: str | PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``torch.hub.get_dir() / "checkpoints" / "deformvision"`` (follows ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "deformvision"


def weights_path(url: str, name: str, cache_dir: str | PathLike | None = None) -> Path:
    """Where :func:`cached_weights` keeps the file of ``url``: ``<cache_dir>/<name>-<8 hex of the URL><suffix>``."""
    address = split_url(url)[0]
    suffix = ".safetensors" if urlsplit(address).path.endswith(".safetensors") else ".pth"
    url_tag = hashlib.sha256(address.encode()).hexdigest()[:8]
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{name}-{url_tag}{suffix}"


def cached_weights(url: str, name: str, cache_dir: str | PathLike | None = None, progress: bool = True) -> Path:
    """The local file of the weights at ``url``, downloaded and checked on first use.

    Args:
        url: where the file is (``https://``, ``file://``...), optionally with ``#sha256=<hex>``.
        name: a readable stem for the cached file (``"dat_tiny.in1k"``); a short hash of the URL is
            appended so that two sources never share a file.
        cache_dir: the directory of cached weights (default: :func:`default_cache_dir`).
        progress: show a progress bar while downloading.

    Raises:
        ValueError: the file's SHA-256 differs from the pinned (or first recorded) one; a download
            with the wrong digest is deleted, never cached.
        RuntimeError: the file is not cached and cannot be downloaded (the message says where to put
            a copy downloaded by hand).
    """
    address, expected = split_url(url)
    path = weights_path(url, name, cache_dir)
    record = path.with_name(path.name + ".sha256")  # digest of an unpinned file's first download

    if path.is_file():
        recorded = expected or (record.read_text().strip() if record.is_file() else None)
        if recorded is not None and (actual := file_sha256(path)) != recorded:
            raise ValueError(
                f"cached weights {path} have SHA-256 {actual}, expected {recorded} (from {url}); "
                "the file is damaged or not the published one: delete it to download it again"
            )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    actual = _download(address, path, expected, progress)
    if expected is None:
        logger.warning("weights %s have no pinned SHA-256; recorded %s from the first download", name, actual)
        write_text_atomic(record, actual + "\n")
    return path


def _download(address: str, path: Path, expected: str | None, progress: bool) -> str:
    """Download ``address`` to ``path`` atomically (:func:`~deformvision._atomic.atomic_write`); return its SHA-256.

    A file whose digest is not ``expected`` (when given) is deleted and never reaches ``path``.
    """
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        with urlopen(Request(address, headers={"User-Agent": "deformvision"})) as response:
            total = response.headers.get("Content-Length")
            with (
                open(tmp, "wb") as f,
                tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=path.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if expected is not None and digest.hexdigest() != expected:
            raise ValueError(
                f"downloaded weights from {address} have SHA-256 {digest.hexdigest()}, expected {expected}: "
                "refused (the file is not the published one, or the download was damaged)"
            )

    try:
        atomic_write(path, write)
    except (URLError, OSError) as err:
        raise RuntimeError(
            f"cannot download pretrained weights from {address}: {err}. Without network, download the "
            f"file elsewhere and pass checkpoint=PATH (or --checkpoint), or copy it to {path}"
        ) from err
    return digest.hexdigest()


def load_pretrained(
    model: nn.Module, cfg: PretrainedCfg, cache_dir: str | PathLike | None = None, progress: bool = True
) -> Path:
    """Load the weights that ``cfg`` names into ``model`` (see the module docstring for the flow).

    The file may be in the official layout of the model family, Hugging Face's, or ours: the
    model's ``checkpoint_filter`` converts it. ``cfg.file`` (a local path) wins over ``cfg.url``.

    Returns:
        The local file the weights were read from.

    Raises:
        ValueError: ``cfg`` names no weights, or the file fails its SHA-256 check or does not fit.
        RuntimeError: the weights are not cached and cannot be downloaded.
    """
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    if cfg.file:
        path = Path(cfg.file)
    elif cfg.url:
        url = cfg.url if isinstance(cfg.url, str) else cfg.url[0]
        path = cached_weights(url, name, cache_dir, progress)
    else:
        raise ValueError(f"no pretrained weights are published for {name}; pass checkpoint=PATH instead")
    logger.info("loading pretrained weights %s from %s", name, path)
    load_checkpoint(model, path)
    return path
