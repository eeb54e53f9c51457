"""An obviously-correct float64 multi-scale deformable attention, one point and one corner at a time.

Shared by the msda tests as the independent reference: plain Python loops over the batch, queries, heads,
levels, points and the four bilinear corners, with no grid_sample and no vectorised index arithmetic.
Differentiable by autograd (its gradients are the reference gradients).
"""

import math

import torch


def msda_loop(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """(N, S, M, D), level (H, W) list, (N, Lq, M, L, P, 2), (N, Lq, M, L, P) -> (N, Lq, M * D), all float64.

    Location (x, y) of a level of H x W pixels reads pixel coordinates (x * W - 0.5, y * H - 0.5); each of
    the four corners around them that lies inside the map adds bilinear weight * attention weight * value.
    A point with a non-finite coordinate adds nothing.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    starts = [sum(h * w for h, w in shapes[:level]) for level in range(L)]
    rows = []
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                total = value.new_zeros(D)
                for level, (H, W) in enumerate(shapes):
                    for p in range(P):
                        loc_x, loc_y = locations[n, q, m, level, p]
                        if not (math.isfinite(loc_x.item()) and math.isfinite(loc_y.item())):
                            continue
                        x = loc_x * W - 0.5
                        y = loc_y * H - 0.5
                        if not (-1 < x.item() < W and -1 < y.item() < H):
                            continue  # every corner lies outside the map
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        for row, weight_y in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for col, weight_x in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= row < H and 0 <= col < W:
                                    pixel = value[n, starts[level] + row * W + col, m]  # (D,)
                                    total = total + weights[n, q, m, level, p] * weight_y * weight_x * pixel
                rows.append(total)
    if not rows:
        return value.new_zeros(N, Lq, M * D)
    return torch.stack(rows).view(N, Lq, M * D)


def msda_loop_forward_backward(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> list[torch.Tensor]:
    """[output, grad_value, grad_locations, grad_weights] of :func:`msda_loop` in float64."""
    leaves = [t.detach().double().requires_grad_() for t in (value, locations, weights)]
    output = msda_loop(leaves[0], shapes, leaves[1], leaves[2])
    if not output.requires_grad:  # nothing sampled anything
        return [output.detach()] + [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(output, leaves, grad_output.double(), allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads, strict=True)]
    return [output.detach()] + grads
