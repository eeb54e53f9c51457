"""Run a module on ``layer_norm(x)`` without the module keeping the normalised tensor for backward.

In a pre-norm transformer block the first linear layer after a LayerNorm keeps the normalised tensor (for its
weight gradient) while the LayerNorm keeps its own input ``x``: two tensors of the block's width per norm.
:func:`apply_to_layer_norm` keeps ``x`` only. It runs the consumer under
:func:`torch.autograd.graph.saved_tensors_hooks` that swap the normalised tensor (or a view of it), wherever the
consumer's ops save it, for a recipe (``x``, which the LayerNorm keeps anyway, and the norm's parameters); the
backward pass recomputes ``layer_norm(x)`` (the same op, so the same values) when it unpacks it. Every other saved
tensor passes through unchanged, and the consumer's code is not touched.

The hooks are not installed (the consumer then runs as usual) when no gradient is recorded, under autocast, while
``torch.compile`` traces (its partitioner chooses what to recompute itself), or when other saved-tensor hooks are
active (activation checkpointing or offloading own the saved tensors then).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _NormRecipe:
    """What :func:`apply_to_layer_norm` keeps instead of (a view of) ``layer_norm(x)``: ``x`` (with its version),
    the norm and the view's geometry."""

    __slots__ = ("bias", "eps", "geometry", "shape", "version", "weight", "x")

    def __init__(self, x: torch.Tensor, norm: nn.LayerNorm, view: torch.Tensor) -> None:
        self.x, self.version = x, x._version
        self.shape, self.weight, self.bias, self.eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        self.geometry = view.size(), view.stride(), view.storage_offset()

    def recompute(self) -> torch.Tensor:
        if self.x._version != self.version:
            raise RuntimeError(
                "the input of a LayerNorm whose output is recomputed in backward was modified in place after the "
                "forward pass (apply_to_layer_norm)"
            )
        with torch.no_grad():
            y = F.layer_norm(self.x, self.shape, self.weight, self.bias, self.eps)  # contiguous, as in forward
            return y.as_strided(*self.geometry)  # the view that was saved (e.g. Linear's 2-d view of its input)


def _other_hooks_active() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None  # unknown (another torch): assume active, stay out of the way


def apply_to_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, consumer: Callable[[torch.Tensor], object]) -> object:
    """``consumer(norm(x))``, the normalised tensor recomputed in backward instead of kept by ``consumer``.

    Same values and gradients as ``consumer(norm(x))``; ``norm`` must be an ``nn.LayerNorm`` (its forward is the
    ``F.layer_norm`` call that is repeated).

    Shape:
        - ``x``: ``(..., C)``; ``consumer`` takes ``(..., C)`` and returns anything.
    """
    y = norm(x)
    if (
        type(norm) is not nn.LayerNorm
        or not (torch.is_grad_enabled() and y.requires_grad)
        or torch.is_autocast_enabled(x.device.type)
        or torch.compiler.is_compiling()
        or not y.is_contiguous()
        or _other_hooks_active()
    ):
        return consumer(y)
    storage = y.untyped_storage().data_ptr()

    def pack(t: torch.Tensor) -> torch.Tensor | _NormRecipe:
        if t.untyped_storage().data_ptr() == storage:  # y or a view of it (nn.Linear keeps a 2-d view of its input)
            return _NormRecipe(x, norm, t)
        return t

    def unpack(saved: torch.Tensor | _NormRecipe) -> torch.Tensor:
        return saved.recompute() if isinstance(saved, _NormRecipe) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return consumer(y)
