"""Hungarian matching between Deformable DETR predictions and ground-truth boxes."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


def checked_xyxy(boxes: Tensor, name: str) -> Tensor:
    """``(N, 4)`` ``(cx, cy, w, h)`` boxes -> ``(N, 4)`` ``(x0, y0, x1, y1)`` (:func:`torchvision.ops.box_convert`).

    torchvision's :func:`~torchvision.ops.generalized_box_iou` does not validate its input: a box with
    ``x1 < x0`` or ``y1 < y0`` gives wrong values silently and NaN coordinates propagate. Predictions
    and targets are therefore checked where they enter the GIoU (the matcher's cost, the GIoU loss).

    Raises:
        ValueError: ``boxes`` is not ``(N, 4)``, or a box has a negative width or height or a NaN
            coordinate. The check reads the values (a device sync on GPU).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be (N, 4) (cx, cy, w, h) boxes, got shape {tuple(boxes.shape)}")
    xyxy = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
    valid = xyxy[:, 2:] >= xyxy[:, :2]  # False for x1 < x0, y1 < y0 and NaN
    if not bool(valid.all()):
        bad = (~valid.all(dim=1)).nonzero()[:, 0]
        raise ValueError(
            f"{name} has {bad.numel()} degenerate box(es) (negative width or height, or NaN), e.g. index "
            f"{int(bad[0])}: {boxes[bad[0]].tolist()}; boxes must be (cx, cy, w, h) with w >= 0, h >= 0"
        )
    return xyxy


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, solved per image with the Hungarian algorithm.

    The cost of matching prediction ``i`` with target ``j`` is::

        C[i, j] = cost_bbox * |b_i - t_j|_1 + cost_class * focal[i, c_j] + cost_giou * -GIoU(b_i, t_j)

    with boxes in normalised ``(cx, cy, w, h)`` (the L1 term) or their ``xyxy`` corners (the GIoU
    term), and the focal class cost of Deformable DETR: with ``p = sigmoid(logit)``,
    ``focal = alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8))``,
    i.e. the focal loss of calling the prediction "class c" minus that of calling it "not class c".
    There is no "no object" class: unmatched predictions simply get no target.

    The costs are computed for the whole batch at once, then split per image and solved with
    :func:`scipy.optimize.linear_sum_assignment` on the CPU. Runs under ``torch.no_grad``.

    Args:
        cost_class: weight of the focal class cost.
        cost_bbox: weight of the L1 distance of the ``(cx, cy, w, h)`` boxes.
        cost_giou: weight of the negative generalized IoU.
        focal_alpha: focal ``alpha`` of the class cost.
        focal_gamma: focal ``gamma`` of the class cost.
    """

    def __init__(
        self,
        cost_class: float = 2,
        cost_bbox: float = 5,
        cost_giou: float = 2,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )

    def cost_matrix(self, logits: Tensor, boxes: Tensor, target_labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of every prediction against every target.

        Args:
            logits: ``(N, K)`` class logits of ``N`` predictions.
            boxes: ``(N, 4)`` predicted boxes, normalised ``(cx, cy, w, h)``.
            target_labels: ``(M,)`` int64 class indices in ``[0, K)``.
            target_boxes: ``(M, 4)`` target boxes, normalised ``(cx, cy, w, h)``.

        Returns:
            ``(N, M)`` cost matrix in the dtype of ``logits``.
        """
        prob = logits.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg_cost = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos_cost = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        cost_class = pos_cost[:, target_labels] - neg_cost[:, target_labels]
        target_boxes = target_boxes.to(boxes.dtype)
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(checked_xyxy(boxes, "pred_boxes"), checked_xyxy(target_boxes, "target boxes"))
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match the predictions of every image to its targets.

        Args:
            outputs: dict with
                ``"pred_logits"``: ``(B, Q, K)`` class logits (sigmoid scores, no "no object" logit);
                ``"pred_boxes"``: ``(B, Q, 4)`` boxes, normalised ``(cx, cy, w, h)``.
                Other keys (``"aux_outputs"``, ``"enc_outputs"``) are ignored.
            targets: ``B`` dicts (one per image) with
                ``"labels"``: ``(M_b,)`` int64 class indices in ``[0, K)``;
                ``"boxes"``: ``(M_b, 4)`` boxes, normalised ``(cx, cy, w, h)`` (cast to the dtype of the
                predictions). ``M_b`` may be 0.

        Returns:
            ``B`` pairs ``(query_indices, target_indices)`` of int64 CPU tensors of length
            ``min(Q, M_b)``: query ``query_indices[k]`` is matched to target ``target_indices[k]``.
            ``query_indices`` is sorted ascending; each query and each target appears at most once,
            and the assignment minimises the summed cost of the image.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, num_queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {batch}")
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty.clone()) for _ in sizes]

        target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.device)
        cost = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), target_labels, target_boxes)
        cost = cost.view(batch, num_queries, -1).cpu()
        if cost.dtype not in (torch.float32, torch.float64):  # numpy has no bfloat16
            cost = cost.double()

        indices = []
        for b, image_cost in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(image_cost[b].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
