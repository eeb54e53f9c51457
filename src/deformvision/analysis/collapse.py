"""Attention collapse (DeepViT, Zhou et al. 2021): how alike the attention maps of queries and of layers are.

Definitions, for one attention block with probabilities ``A[h, q, :]`` (head ``h``, query ``q``, a
distribution over the keys), cosine similarity ``cos(a, b) = a . b / (|a| |b|)``:

- ``cross_query``: the mean of ``cos(A[h, q, :], A[h, q', :])`` over all pairs of different queries
  ``q != q'`` that attend over the same key set, all heads and all images. Global attention: all token
  pairs; window attention: pairs in the same window (and, in a shifted window, the same region; padding
  queries are left out); DAT's deformable attention: all pairs (every query of a group reads the same
  sampled points).
- ``cross_layer``: the mean of ``cos(A_l[h, q, :], A_p[h, q, :])`` over queries, heads and images, where ``p``
  is the latest earlier block whose keys are the same index for index (ViT: the previous block; windows:
  the previous block with the same windows and shift; DAT deformable blocks: the previous deformable block
  of the stage, key ``k`` being the point deformed from reference ``k`` in both); ``None`` when there is none.

Every (image, head) holds the same pairs, so these means are also the averages over heads and images.
A model whose attention is uniform over each query's keys gives 1 for both (up to rounding); 1 means
identical maps, near 0 maps that do not overlap.
"""

import torch
from torch import Tensor, nn

from deformvision.layers.inspection import AttentionRecord, record_attention


def _unit_rows(probs: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm, in float64."""
    probs = probs.double()
    return probs / probs.norm(dim=-1, keepdim=True)


def _query_pairs(record: AttentionRecord) -> Tensor:
    """``(W, Nq, Nq)`` bool: pairs of different real queries with the same keys."""
    num_windows, num_queries = record.probs.shape[1], record.probs.shape[3]
    pairs = ~torch.eye(num_queries, dtype=torch.bool).expand(num_windows, -1, -1)
    if record.same_keys is not None:
        pairs = pairs & record.same_keys
    if record.real_queries is not None:
        pairs = pairs & record.real_queries[:, :, None] & record.real_queries[:, None, :]
    return pairs


def cross_query_sum(record: AttentionRecord) -> tuple[float, int]:
    """Sum and number of the cross-query cosine similarities of one record (see the module docstring)."""
    unit = _unit_rows(record.probs)  # B, W, heads, Nq, Nk
    cosines = unit @ unit.transpose(-1, -2)  # B, W, heads, Nq, Nq
    pairs = _query_pairs(record)[None, :, None]  # 1, W, 1, Nq, Nq
    batch, _, heads = unit.shape[:3]
    return float((cosines * pairs).sum()), int(pairs.sum()) * batch * heads


def cross_layer_sum(record: AttentionRecord, previous: AttentionRecord) -> tuple[float, int]:
    """Sum and number of the per-query cosine similarities between two records with the same key set."""
    cosines = (_unit_rows(record.probs) * _unit_rows(previous.probs)).sum(-1)  # B, W, heads, Nq
    batch, _, heads, _ = cosines.shape
    if record.real_queries is None:
        return float(cosines.sum()), cosines.numel()
    real = record.real_queries[None, :, None]  # 1, W, 1, Nq
    return float((cosines * real).sum()), int(record.real_queries.sum()) * batch * heads


def attention_collapse(model: nn.Module, images: Tensor, batch_size: int = 8) -> dict[str, dict[str, float | None]]:
    """Cross-query and cross-layer attention similarity of every attention block of ``model`` on ``images``.

    Args:
        model: a model with attention modules :func:`~deformvision.analysis.record_attention` reads (our DAT,
            timm's ViT and Swin...); run in eval mode without gradients, its mode is restored afterwards.
        images: ``(N, C, H, W)`` float batch, normalised as the model expects; each batch is moved to the
            device of the model's parameters.
        batch_size: images per forward pass.

    Returns:
        ``{block_name: {"cross_query": float, "cross_layer": float | None}}`` in forward order, as defined in
        :mod:`deformvision.analysis.collapse` (``cross_query`` is ``None`` only for a block whose key sets
        each hold a single query).

    Raises:
        TypeError: ``images`` is not a floating-point tensor, ``model`` not a module.
        ValueError: ``images`` is not a non-empty ``(N, C, H, W)`` batch, ``batch_size < 1``, or the model
            has no supported attention module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        got = f"tensor of {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a floating-point tensor, got {got}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = next(model.parameters(), images).device
    sums: dict[str, list] = {}  # name -> [cross-query sum, count, cross-layer sum, count]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model) as records:
            for start in range(0, images.shape[0], batch_size):
                records.clear()
                model(images[start : start + batch_size].to(device))
                for i, record in enumerate(records):
                    entry = sums.setdefault(record.name, [0.0, 0, 0.0, 0])
                    total, count = cross_query_sum(record)
                    entry[0] += total
                    entry[1] += count
                    previous = next((r for r in reversed(records[:i]) if record.same_key_set(r)), None)
                    if previous is not None:
                        total, count = cross_layer_sum(record, previous)
                        entry[2] += total
                        entry[3] += count
    finally:
        model.train(was_training)
    return {
        name: {"cross_query": q / nq if nq else None, "cross_layer": layer / nl if nl else None}
        for name, (q, nq, layer, nl) in sums.items()
    }
