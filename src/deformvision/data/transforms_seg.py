"""Semantic segmentation transforms on ``torchvision.transforms.v2``: the mmseg ADE20K recipe.

A pipeline is called as ``t(image, target) -> (image, target)`` with ``image`` a PIL image (or a
``(3, H, W)`` tensor / ``tv_tensors.Image``) and ``target`` a ``tv_tensors.Mask`` ``(H, W)`` of class
indices (255 = ignore). Geometric steps move both; a ``Mask`` is always resized with nearest
interpolation (``transforms.v2`` does so for masks), so no label value is ever made up.

:func:`build_segmentation_transforms` gives mmseg's (v0.x) ADE20K pipeline, which DAT's Semantic FPN
and UperNet use:

- train: :class:`ResizeToFit` to ``(2048, 512)`` times a ratio drawn from ``[0.5, 2.0]``,
  :class:`CatMaxRandomCrop` 512 x 512 with ``cat_max_ratio=0.75``, horizontal flip 0.5,
  :class:`PhotoMetricDistortion`, ImageNet normalisation, :class:`PadToSize` 512 x 512 (image 0,
  label 255);
- eval: :class:`ResizeToFit` to ``(2048, 512)``, normalisation; the label is kept at its original size
  (mmseg evaluates there: the prediction is resized to the label) unless ``resize_eval_target``.

Random transforms draw from torch's global generator, as all of ``transforms.v2``; run a call under
:func:`deformvision.data._random.seeded` to make it reproducible.
"""

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from deformvision.data._image import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255
ADE20K_SCALE = (2048, 512)
ADE20K_CROP = (512, 512)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """``(h, w)`` of the image among the inputs (else of the first mask)."""
    for kinds in ((PIL.Image.Image, tv_tensors.Image), (tv_tensors.Mask,)):
        found = next((x for x in flat_inputs if isinstance(x, kinds)), None)
        if found is not None:
            height, width = F.get_size(found)
            return height, width
    raise TypeError("expected a PIL image, a tv_tensors.Image or a tv_tensors.Mask among the inputs")


def fit_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` (``keep_ratio``): the ``(h, w)`` of the image scaled by the largest factor
    that keeps its long side within ``max(scale)`` and its short side within ``min(scale)``; each side
    ``int(side * factor + 0.5)``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class ResizeToFit(v2.Transform):
    """Resize keeping the aspect ratio so the image fits in ``scale`` (mmseg's ``Resize`` with ``keep_ratio``).

    With ``ratio_range=(low, high)``, a ratio ``r`` is drawn uniformly from it and the scale is
    ``(int(scale[0] * r), int(scale[1] * r))``; the output size is :func:`fit_size` of it. Images are
    resized bilinearly (antialiased when shrinking), masks by nearest neighbour. ``resize_masks=False``
    leaves masks at their size (evaluation at the label's original resolution).
    """

    def __init__(
        self,
        scale: tuple[int, int] = ADE20K_SCALE,
        ratio_range: tuple[float, float] | None = None,
        resize_masks: bool = True,
    ) -> None:
        super().__init__()
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale must be two positive sizes (long, short), got {scale!r}")
        if ratio_range is not None and not (len(ratio_range) == 2 and 0 < ratio_range[0] <= ratio_range[1]):
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.resize_masks = resize_masks

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        scale: tuple[float, float] = self.scale
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = low + float(torch.rand(())) * (high - low)
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        return {"size": list(fit_size(*_image_size(flat_inputs), scale))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) and not self.resize_masks:
            return inpt
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, ratio_range={self.ratio_range}, resize_masks={self.resize_masks}"


def crop_passes(label: torch.Tensor, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """mmseg's test for a crop: at least two classes (``ignore_index`` not counted) and none of them
    covering ``cat_max_ratio`` or more of the counted pixels."""
    _, counts = torch.unique(label[label != ignore_index], return_counts=True)
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio


class CatMaxRandomCrop(v2.Transform):
    """mmseg's ``RandomCrop`` with ``cat_max_ratio``: a crop of ``size`` ``(h, w)`` at a uniform position.

    A side larger than the image is cut to the image's (:class:`PadToSize` pads afterwards). With
    ``cat_max_ratio < 1`` and a mask among the inputs, a drawn crop whose label fails
    :func:`crop_passes` is drawn again, up to ``max_tries`` times; as in mmseg, the crop drawn after
    the last failed check is used unchecked.
    """

    def __init__(
        self,
        size: tuple[int, int] = ADE20K_CROP,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
    ) -> None:
        super().__init__()
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"crop size must be two positive ints (h, w), got {size!r}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1] (1 turns the check off), got {cat_max_ratio}")
        self.size = tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _draw(self, height: int, width: int) -> dict[str, int]:
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, int]:
        height, width = _image_size(flat_inputs)
        params = self._draw(height, width)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if mask is None or self.cat_max_ratio >= 1:
            return params
        for _ in range(self.max_tries):
            top, left = params["top"], params["left"]
            window = mask[..., top : top + params["height"], left : left + params["width"]]
            if crop_passes(window.as_subclass(torch.Tensor), self.cat_max_ratio, self.ignore_index):
                break
            params = self._draw(height, width)
        return params

    def transform(self, inpt: Any, params: dict[str, int]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    def extra_repr(self) -> str:
        return f"size={self.size}, cat_max_ratio={self.cat_max_ratio}, ignore_index={self.ignore_index}"


class PadToSize(v2.Transform):
    """Pad at the bottom and right to at least ``size`` ``(h, w)``: images with ``fill``, masks with
    ``mask_fill`` (mmseg's ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``)."""

    def __init__(self, size: tuple[int, int], fill: float = 0.0, mask_fill: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = tuple(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - width, 0), max(self.size[0] - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}, mask_fill={self.mask_fill}"


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB in ``[0, 1]`` -> HSV, each in ``[0, 1]`` (hue a fraction of the circle)."""
    r, g, b = image.unbind(-3)
    value, _ = image.max(-3)
    chroma = value - image.min(-3).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        ((g - b) / safe_chroma) % 6,
        torch.where(value == g, (b - r) / safe_chroma + 2, (r - g) / safe_chroma + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(
        value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), torch.zeros_like(value)
    )
    return torch.stack((hue, saturation, value), dim=-3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = image.unbind(-3)
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # per sector (0..5), which of (value, q, p, t) each channel takes
    choices = torch.stack((value, q, p, t), dim=0)
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=image.device)
    index = table[sector].movedim(-1, -3)  # (..., 3, H, W)
    return torch.gather(choices.unsqueeze(-3).expand(4, *index.shape), 0, index.unsqueeze(0)).squeeze(0)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's ``PhotoMetricDistortion`` on a float image in ``[0, 1]``: each step applied with probability 1/2.

    In order: brightness (add ``delta / 255``, ``delta`` uniform in ``±brightness_delta``); contrast
    (multiply by a factor uniform in ``contrast_range``) here or, with probability 1/2, last;
    saturation (multiply HSV saturation by a factor uniform in ``saturation_range``); hue (shift by
    ``k / 180`` of the circle, ``k`` an integer in ``[-hue_delta, hue_delta)``, OpenCV's 8-bit hue unit);
    values clipped to ``[0, 1]`` after each step. The draws and ranges are mmseg's; mmseg computes in
    8-bit (rounding down after each step), this in float, so values differ by that rounding. Masks and
    other inputs pass through.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(0, 2, ()))

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + float(torch.rand(())) * (high - low)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self._coin():
            params["brightness"] = self._uniform(-self.brightness_delta, self.brightness_delta) / 255
        params["contrast_first"] = self._coin()
        contrast = self._uniform(*self.contrast_range) if self._coin() else None
        if self._coin():
            params["saturation"] = self._uniform(*self.saturation_range)
        if self._coin():
            params["hue"] = int(torch.randint(-self.hue_delta, self.hue_delta, ())) / 180
        params["contrast"] = contrast
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if not inpt.is_floating_point():
            raise TypeError(f"PhotoMetricDistortion needs a float image in [0, 1] (after ToDtype), got {inpt.dtype}")
        image = inpt.as_subclass(torch.Tensor)
        if "brightness" in params:
            image = (image + params["brightness"]).clamp(0, 1)
        if params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 1)
        if "saturation" in params or "hue" in params:
            hsv = rgb_to_hsv(image)
            hue, saturation, value = hsv.unbind(-3)
            if "saturation" in params:
                saturation = (saturation * params["saturation"]).clamp(0, 1)
            if "hue" in params:
                hue = (hue + params["hue"]) % 1.0
            image = hsv_to_rgb(torch.stack((hue, saturation, value), dim=-3)).clamp(0, 1)
        if not params["contrast_first"] and params["contrast"] is not None:
            image = (image * params["contrast"]).clamp(0, 1)
        return tv_tensors.wrap(image, like=inpt)


def build_segmentation_transforms(
    train: bool,
    *,
    scale: tuple[int, int] = ADE20K_SCALE,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    crop_size: tuple[int, int] = ADE20K_CROP,
    cat_max_ratio: float = 0.75,
    hflip: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
    resize_eval_target: bool = False,
) -> v2.Compose:
    """mmseg's ADE20K pipeline: ``(PIL image, Mask (H, W))`` -> ``(float (3, h, w), int64 (h', w'))``.

    Train: ``ToImage``, :class:`ResizeToFit` ``(scale, ratio_range)``, :class:`CatMaxRandomCrop`
    ``(crop_size, cat_max_ratio)``, ``RandomHorizontalFlip(hflip)``, ``ToDtype(float32, scale=True)``,
    :class:`PhotoMetricDistortion` (if ``photometric``), ``Normalize(mean, std)``, :class:`PadToSize`
    ``crop_size`` (image 0, label ``ignore_index``): every output is ``crop_size``. Eval: ``ToImage``,
    :class:`ResizeToFit` ``scale``, ``ToDtype``, ``Normalize``; the label stays at its original size
    (``resize_eval_target=False``, mmseg's protocol: resize the logits to the label) or is resized with
    the image. Both end with ``ToPureTensor`` (plain tensors; the label int64 as given).

    The defaults are ADE20K's; for small images scale them down, e.g. for 128-pixel canvases
    ``scale=(256, 64)`` (short side 64 * ratio), ``crop_size=(64, 64)``.

    Raises:
        ValueError: naming the argument, for a flip probability outside ``[0, 1]``, bad sizes, ratio
            range or ``cat_max_ratio``.
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    normalize = v2.Normalize(list(mean), list(std))
    to_float = v2.ToDtype(torch.float32, scale=True)
    if not train:
        resize = ResizeToFit(scale, resize_masks=resize_eval_target)
        return v2.Compose([v2.ToImage(), resize, to_float, normalize, v2.ToPureTensor()])
    steps: list[v2.Transform] = [
        v2.ToImage(),
        ResizeToFit(scale, ratio_range),
        CatMaxRandomCrop(crop_size, cat_max_ratio, ignore_index),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps.append(to_float)
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [normalize, PadToSize(crop_size, 0.0, ignore_index), v2.ToPureTensor()]
    return v2.Compose(steps)
