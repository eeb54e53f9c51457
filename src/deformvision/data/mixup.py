"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on a batch, with label smoothing.

Each image is mixed with its mirror in the batch (``images.flip(0)``), one mixing weight ``lam``
per batch, as timm's ``Mixup(mode='batch')`` that DAT and Swin train with.
"""

import torch
import torch.nn.functional as F

from deformvision.data import _random as rnd


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed one-hot targets.

    Args:
        labels: ``(B,)`` int64 class indices in ``0..num_classes-1``.
        num_classes: ``K``.
        smoothing: mass spread uniformly over all classes.

    Returns:
        ``(B, K)`` float32 rows summing to 1: ``1 - smoothing + smoothing / K`` at the label,
        ``smoothing / K`` elsewhere.
    """
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


class Mixup:
    """Mixup or CutMix of a batch, returning the mixed images and soft targets.

    Per call: with probability ``prob`` the batch is mixed (else ``lam = 1``: only label smoothing);
    when both alphas are positive, CutMix is chosen with probability ``switch_prob``, else Mixup.
    ``lam ~ Beta(alpha, alpha)`` of the chosen method. Mixup blends ``lam * x + (1 - lam) * x.flip(0)``;
    CutMix pastes a box of ``x.flip(0)`` with sides ``sqrt(1 - lam)`` of the image's, centred
    uniformly at random and clipped to the image, and then sets ``lam`` to the exact fraction of
    pixels kept. Targets are ``lam * y + (1 - lam) * y.flip(0)`` of label-smoothed one-hots.

    Args:
        mixup_alpha: Beta parameter for Mixup (0: no Mixup).
        cutmix_alpha: Beta parameter for CutMix (0: no CutMix).
        prob: probability of mixing a batch.
        switch_prob: probability of CutMix when both are enabled.
        label_smoothing: smoothing of the one-hot targets (see :func:`smooth_one_hot`).
        num_classes: ``K``.

    Shape:
        - Input: images ``(B, C, H, W)`` float, labels ``(B,)`` int64.
        - Output: images ``(B, C, H, W)`` (a new tensor), targets ``(B, K)`` float32, rows summing to 1.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        *,
        num_classes: int,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"alphas must be >= 0, got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    def _sample(self, generator: torch.Generator | None) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch."""
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rnd.coin(self.switch_prob, generator)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        if alpha == 0 or not rnd.coin(self.prob, generator):
            return 1.0, False
        return rnd.beta(alpha, generator), use_cutmix

    def _cut_box(self, height: int, width: int, lam: float, generator: torch.Generator | None) -> tuple[int, ...]:
        """``(top, bottom, left, right)`` of the pasted box, clipped to the image."""
        cut = (1 - lam) ** 0.5
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = rnd.randint(0, height - 1, generator), rnd.randint(0, width - 1, generator)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return top, bottom, left, right

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix = self._sample(generator)
        images = images.clone()
        if use_cutmix:
            height, width = images.shape[-2:]
            top, bottom, left, right = self._cut_box(height, width, lam, generator)
            images[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        elif lam < 1.0:
            images = images * lam + images.flip(0) * (1.0 - lam)
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"prob={self.prob}, switch_prob={self.switch_prob}, label_smoothing={self.label_smoothing}, "
            f"num_classes={self.num_classes})"
        )
