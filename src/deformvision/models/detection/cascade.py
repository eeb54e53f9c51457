"""Cascade Mask R-CNN (Cai & Vasconcelos) on torchvision's detection framework.

torchvision has no cascade, so :class:`CascadeRoIHeads` replaces torchvision's
:class:`~torchvision.models.detection.roi_heads.RoIHeads` and reuses its parts: the ``BoxCoder``,
``Matcher`` and ``BalancedPositiveNegativeSampler`` of ``torchvision.models.detection._utils``,
:class:`~torchvision.ops.MultiScaleRoIAlign`,
:func:`~torchvision.ops.generalized_box_iou_loss`, and the Mask R-CNN loss / inference helpers.
The configuration is the one of Swin's and DAT's ``cascade_mask_rcnn_*_giou_4conv1f`` (mmdet v2):

- 3 stages with IoU thresholds 0.5 / 0.6 / 0.7 (positive = negative threshold, no low-quality
  matches), 512 RoIs per image at 25 % positives, ground truth added to the proposals;
- box coder stds ``[0.1, 0.1, 0.2, 0.2]``, ``[0.05, 0.05, 0.1, 0.1]``, ``[0.033, 0.033, 0.067, 0.067]``
  (torchvision's weights are their inverses);
- per stage a "4conv1fc" box head (4 conv3x3 256 + BatchNorm + ReLU, fc 1024) and class-specific
  regression; losses: cross-entropy and GIoU (weight 10) on the decoded boxes, both averaged over the
  sampled RoIs; one Mask R-CNN mask head per stage; stage loss weights 1 / 0.5 / 0.25;
- stage ``t + 1`` trains on stage ``t``'s refined boxes (detached; the refined GT proposals dropped,
  the GT added again), each RoI regressed by its assigned class (background RoIs by their best class);
- test: boxes refined through the stages, class scores merged over the 3 stages, boxes from the last
  stage, masks = mean of the 3 mask heads' sigmoid on the final boxes; score 0.05, NMS 0.5, 100 per image.

Score merging: mmdet (hence the paper's models) averages the 3 stages' *logits* and applies softmax
(``score_merge="mean_logits"``, the default); ``"mean_probs"`` averages the 3 stages' softmax instead.

Labels here follow torchvision: 0 is background, classes are ``1..num_classes - 1``.
"""

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, RPNHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, generalized_box_iou_loss
from torchvision.ops import boxes as box_ops

STAGE_IOU_THRESHOLDS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_BOX_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class CascadeStage(nn.Module):
    """One cascade stage: box head and class-specific predictor, mask head and predictor, and its
    (parameter-free) box coder and matcher.

    Args:
        num_classes: classes including background.
        iou_threshold: positive / negative IoU threshold of the stage's matcher.
        box_stds: ``(sx, sy, sw, sh)`` target stds; the box coder's weights are ``1 / stds``.
        channels: FPN channels; representation: fc width.
    """

    def __init__(
        self, num_classes: int, iou_threshold: float, box_stds: tuple[float, ...], channels: int = 256
    ) -> None:
        super().__init__()
        self.box_head = FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [1024], norm_layer=nn.BatchNorm2d)
        self.box_predictor = FastRCNNPredictor(1024, num_classes)  # cls (C) and class-specific reg (4 C)
        self.mask_head = MaskRCNNHeads(channels, [channels] * 4, 1)
        self.mask_predictor = MaskRCNNPredictor(channels, channels, num_classes)
        self.box_coder = det_utils.BoxCoder(tuple(1.0 / s for s in box_stds))
        self.proposal_matcher = det_utils.Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)

    def decode(self, box_regression: torch.Tensor, rois: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Boxes ``(N, 4)`` of ``rois (N, 4)`` regressed by class ``labels (N,)`` with ``box_regression (N, 4 C)``."""
        deltas = box_regression.reshape(box_regression.shape[0], box_regression.shape[1] // 4, 4)  # N, C, 4
        deltas = deltas[torch.arange(labels.shape[0], device=labels.device), labels]  # N, 4
        return self.box_coder.decode_single(deltas, rois)


class CascadeRoIHeads(nn.Module):
    """The RoI heads of Cascade Mask R-CNN, a drop-in for torchvision's ``RoIHeads`` in ``GeneralizedRCNN``.

    Args:
        num_classes: classes including background (torchvision's convention).
        box_roi_pool: RoIAlign of the box heads (7x7 on ``"0"``-``"3"``); mask_roi_pool: of the mask heads (14x14).
        iou_thresholds, loss_weights, box_stds: per stage.
        batch_size_per_image, positive_fraction: RoI sampling of every stage.
        giou_loss_weight: weight of the GIoU loss of every stage (before the stage weight).
        score_thresh, nms_thresh, detections_per_img: test-time filtering.
        score_merge: ``"mean_logits"`` (mmdet) or ``"mean_probs"``; see the module docstring.
        channels: FPN channels.
    """

    def __init__(
        self,
        num_classes: int,
        box_roi_pool: MultiScaleRoIAlign,
        mask_roi_pool: MultiScaleRoIAlign,
        iou_thresholds: tuple[float, ...] = STAGE_IOU_THRESHOLDS,
        loss_weights: tuple[float, ...] = STAGE_LOSS_WEIGHTS,
        box_stds: tuple[tuple[float, ...], ...] = STAGE_BOX_STDS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        giou_loss_weight: float = 10.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        score_merge: Literal["mean_logits", "mean_probs"] = "mean_logits",
        channels: int = 256,
    ) -> None:
        super().__init__()
        if not len(iou_thresholds) == len(loss_weights) == len(box_stds) > 0:
            raise ValueError(
                f"iou_thresholds, loss_weights and box_stds need one entry per stage, got "
                f"{len(iou_thresholds)}, {len(loss_weights)}, {len(box_stds)}"
            )
        if score_merge not in ("mean_logits", "mean_probs"):
            raise ValueError(f"score_merge must be 'mean_logits' or 'mean_probs', got {score_merge!r}")
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.stages = nn.ModuleList(
            CascadeStage(num_classes, iou, stds, channels) for iou, stds in zip(iou_thresholds, box_stds, strict=True)
        )
        self.loss_weights = tuple(loss_weights)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.giou_loss_weight = giou_loss_weight
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.score_merge = score_merge

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Losses (training) or detections (eval) from the RPN's ``proposals`` (per image ``(P_i, 4)``).

        Returns:
            ``(detections, losses)`` as torchvision's ``RoIHeads``: in training ``([], losses)`` with
            ``loss_classifier_stage{t}``, ``loss_box_giou_stage{t}``, ``loss_mask_stage{t}`` (already
            multiplied by the stage weights); in eval ``(detections, {})``, per image ``boxes (D, 4)``,
            ``labels (D,)`` (1-based), ``scores (D,)``, ``masks (D, 1, 28, 28)`` probabilities.
        """
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}

    def _box_forward(
        self, stage: CascadeStage, features: dict[str, torch.Tensor], rois: list[torch.Tensor], image_shapes
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum P_i, C)`` class logits and ``(sum P_i, 4 C)`` regression of the RoIs of all images."""
        x = self.box_roi_pool(features, rois, image_shapes)  # sum P_i, 256, 7, 7
        return stage.box_predictor(stage.box_head(x))

    def _mask_logits(
        self, stage: CascadeStage, features: dict[str, torch.Tensor], rois: list[torch.Tensor], image_shapes
    ) -> torch.Tensor:
        """``(sum P_i, C, 28, 28)`` mask logits of the RoIs of all images."""
        x = self.mask_roi_pool(features, rois, image_shapes)  # sum P_i, 256, 14, 14
        return stage.mask_predictor(stage.mask_head(x))

    def _sample(
        self, stage: CascadeStage, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Add the GT to each image's proposals, match them with the stage's matcher and sample.

        Returns per image: sampled RoIs ``(S_i, 4)``, labels ``(S_i,)`` (0 background), matched GT
        index ``(S_i,)`` (0 for images without GT), and whether each RoI is a GT box ``(S_i,)``.
        """
        rois, labels, matched, is_gt = [], [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(props.dtype), target["labels"]
            props = torch.cat([props, gt_boxes])
            gt_flag = torch.arange(props.shape[0], device=props.device) >= props.shape[0] - gt_boxes.shape[0]
            if gt_boxes.numel() == 0:
                idx = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                lab = torch.zeros_like(idx)
            else:
                match = stage.proposal_matcher(box_ops.box_iou(gt_boxes, props))  # P+G; -1 below threshold
                idx = match.clamp(min=0)
                lab = torch.where(match >= 0, gt_labels[idx], torch.zeros_like(idx))
            rois.append(props), labels.append(lab), matched.append(idx), is_gt.append(gt_flag)
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos_masks, neg_masks, strict=True)]
        return (
            [r[k] for r, k in zip(rois, keep, strict=True)],
            [lab[k] for lab, k in zip(labels, keep, strict=True)],
            [m[k] for m, k in zip(matched, keep, strict=True)],
            [g[k] for g, k in zip(is_gt, keep, strict=True)],
        )

    def _forward_train(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        losses = {}
        proposals = [p.detach() for p in proposals]
        for t, (stage, weight) in enumerate(zip(self.stages, self.loss_weights, strict=True)):
            rois, labels, matched, is_gt = self._sample(stage, proposals, targets)
            class_logits, box_regression = self._box_forward(stage, features, rois, image_shapes)
            all_rois, all_labels = torch.cat(rois), torch.cat(labels)  # S, 4; S
            matched_gt = zip(targets, matched, rois, strict=True)
            gt_boxes = torch.cat([_matched_boxes(tgt["boxes"], m, r) for tgt, m, r in matched_gt])  # S, 4
            pos = torch.where(all_labels > 0)[0]
            decoded = stage.decode(box_regression[pos], all_rois[pos], all_labels[pos])  # Npos, 4
            giou = generalized_box_iou_loss(decoded, gt_boxes[pos], reduction="sum")
            losses[f"loss_classifier_stage{t}"] = weight * F.cross_entropy(class_logits, all_labels)
            losses[f"loss_box_giou_stage{t}"] = weight * self.giou_loss_weight * giou / max(all_labels.numel(), 1)

            pos_per_image = [torch.where(lab > 0)[0] for lab in labels]
            mask_rois = [r[p] for r, p in zip(rois, pos_per_image, strict=True)]
            mask_matched = [m[p] for m, p in zip(matched, pos_per_image, strict=True)]
            mask_logits = self._mask_logits(stage, features, mask_rois, image_shapes)
            gt_masks, gt_labels = [tgt["masks"] for tgt in targets], [tgt["labels"] for tgt in targets]
            loss_mask = maskrcnn_loss(mask_logits, mask_rois, gt_masks, gt_labels, mask_matched)
            losses[f"loss_mask_stage{t}"] = weight * loss_mask

            if t < len(self.stages) - 1:
                with torch.no_grad():
                    best = class_logits[:, 1:].argmax(dim=1) + 1  # background RoIs: their best class
                    refined = self._refine(
                        stage, box_regression, rois, torch.where(all_labels > 0, all_labels, best), image_shapes
                    )
                    proposals = [r[~g] for r, g in zip(refined, is_gt, strict=True)]  # GT added again next stage
        return losses

    def _refine(
        self,
        stage: CascadeStage,
        box_regression: torch.Tensor,
        rois: list[torch.Tensor],
        labels: torch.Tensor,
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """The stage's boxes for its RoIs, each regressed by ``labels`` and clipped to its image (detached)."""
        boxes = stage.decode(box_regression, torch.cat(rois), labels).detach()  # sum P_i, 4
        boxes = boxes.split([r.shape[0] for r in rois])
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(boxes, image_shapes, strict=True)]

    def _forward_test(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        rois, stage_logits = proposals, []
        for t, stage in enumerate(self.stages):
            class_logits, box_regression = self._box_forward(stage, features, rois, image_shapes)
            stage_logits.append(class_logits)
            if t < len(self.stages) - 1:
                best = class_logits[:, 1:].argmax(dim=1) + 1
                rois = self._refine(stage, box_regression, rois, best, image_shapes)
        if self.score_merge == "mean_logits":
            scores = F.softmax(torch.stack(stage_logits).mean(dim=0), dim=-1)  # sum P_i, C
        else:
            scores = torch.stack([F.softmax(logits, dim=-1) for logits in stage_logits]).mean(dim=0)
        last = self.stages[-1]
        num_rois, num_classes = scores.shape
        all_rois = torch.cat(rois)
        boxes = last.box_coder.decode_single(
            box_regression.reshape(-1, 4), all_rois[:, None].expand(-1, num_classes, -1).reshape(-1, 4)
        ).reshape(num_rois, num_classes, 4)
        detections = self._postprocess(scores, boxes, [r.shape[0] for r in rois], image_shapes)

        final_boxes = [d["boxes"] for d in detections]
        final_labels = [d["labels"] for d in detections]
        stage_probs = [
            maskrcnn_inference(self._mask_logits(s, features, final_boxes, image_shapes), final_labels)
            for s in self.stages
        ]
        for i, det in enumerate(detections):
            det["masks"] = torch.stack([probs[i] for probs in stage_probs]).mean(dim=0)  # D, 1, 28, 28
        return detections

    def _postprocess(
        self, scores: torch.Tensor, boxes: torch.Tensor, counts: list[int], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: clip, drop background, score threshold, drop empty boxes, per-class NMS, top k.

        ``scores (N, C)`` probabilities and ``boxes (N, C, 4)`` of all images' RoIs, ``counts`` RoIs per image.
        """
        results = []
        for img_scores, img_boxes, shape in zip(scores.split(counts), boxes.split(counts), image_shapes, strict=True):
            img_boxes = box_ops.clip_boxes_to_image(img_boxes, shape)
            labels = torch.arange(img_scores.shape[1], device=scores.device).expand_as(img_scores)
            img_boxes, img_scores, labels = (
                img_boxes[:, 1:].reshape(-1, 4),
                img_scores[:, 1:].reshape(-1),
                labels[:, 1:].reshape(-1),
            )
            keep = torch.where(img_scores > self.score_thresh)[0]
            img_boxes, img_scores, labels = img_boxes[keep], img_scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(img_boxes, min_size=1e-2)
            img_boxes, img_scores, labels = img_boxes[keep], img_scores[keep], labels[keep]
            keep = box_ops.batched_nms(img_boxes, img_scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": img_boxes[keep], "labels": labels[keep], "scores": img_scores[keep]})
        return results


def _matched_boxes(gt_boxes: torch.Tensor, matched: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """``(S, 4)`` GT box matched to each RoI (the RoIs themselves where the image has no GT: all background)."""
    return gt_boxes[matched].to(rois.dtype) if gt_boxes.numel() else rois


class CascadeMaskRCNN(GeneralizedRCNN):
    """Cascade Mask R-CNN: torchvision's transform and RPN, :class:`CascadeRoIHeads`.

    Args:
        backbone: returns an ``OrderedDict`` of FPN maps ``"0"``-``"3"`` (strides 4-32) and ``"pool"``
            (stride 64), and has ``out_channels``.
        num_classes: classes including background (torchvision's convention).
        min_size, max_size: resizing of :class:`~torchvision.models.detection.transform.GeneralizedRCNNTransform`
            (``min_size`` a tuple: one drawn per image in training).
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: RPN proposals per image (mmdet's cascade:
            2000 in training, 1000 in test).
        **roi_heads_kwargs: :class:`CascadeRoIHeads` arguments.

    Calling convention (torchvision's): ``model(images, targets)`` -> losses in training,
    ``model(images)`` -> per-image ``boxes``, ``labels``, ``scores``, ``masks (D, 1, H, W)`` in eval.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        **roi_heads_kwargs: Any,
    ) -> None:
        channels = backbone.out_channels
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        rpn = RegionProposalNetwork(
            anchors,
            RPNHead(channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n=dict(training=2000, testing=1000),
            post_nms_top_n=dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            nms_thresh=0.7,
        )
        names = ["0", "1", "2", "3"]
        roi_heads = CascadeRoIHeads(
            num_classes,
            MultiScaleRoIAlign(names, output_size=7, sampling_ratio=0),
            MultiScaleRoIAlign(names, output_size=14, sampling_ratio=0),
            channels=channels,
            **roi_heads_kwargs,
        )
        transform = GeneralizedRCNNTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
        super().__init__(backbone, rpn, roi_heads, transform)


__all__ = ["CascadeMaskRCNN", "CascadeRoIHeads", "CascadeStage"]
