"""See inside attention layers: the one path by which analyses and pictures read what a model computed.

It sits with the layers, below :mod:`deformvision.analysis` (which re-exports it) and :mod:`deformvision.viz`,
so that both read the same hooks.

Everything here is read by forward hooks from the tensors the modules compute in their ``forward``;
nothing is recomputed (no second copy of a sampling or attention formula):

- :func:`record_attention`: the attention probabilities of every attention block of a model (ours:
  :class:`~deformvision.layers.WindowAttention`, :class:`~deformvision.layers.DeformableAttention`;
  timm's ``Attention`` (ViT and relatives) and Swin ``WindowAttention``), in forward order, with the
  deformed sampling points of DAT's deformable blocks. Fused attention keeps no probabilities, so inside
  the context every recorded module runs with ``fused_attn = False`` (the explicit softmax path, the same
  result up to rounding); the probabilities are the input of its ``attn_drop`` dropout.
- :func:`record_msda_sampling`: the sampling locations, attention weights and reference points of a
  Deformable DETR :class:`~deformvision.layers.MSDeformAttn`, read at its ``sampling`` step.
"""

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
from torch import Tensor, nn

from deformvision.layers.deformable_attention import DeformableAttention, SamplingPoints
from deformvision.layers.ms_deform_attn import MSDeformAttn
from deformvision.layers.window_attention import WindowAttention, window_attention_mask, window_partition

ATTENTION_TYPES = (WindowAttention, DeformableAttention, TimmAttention, TimmWindowAttention)
"""The attention modules :func:`record_attention` reads."""


@dataclass
class AttentionRecord:
    """The attention probabilities of one call of one attention block.

    Attributes:
        name: the block, the attention module's name without its trailing ``.attn`` (``'stages.2.blocks.1'``,
            ``'blocks.0'``, ``'layers.0.blocks.1'``).
        kind: ``'global'`` (all tokens are keys), ``'window'`` (keys of the query's window) or
            ``'deformable'`` (keys sampled at DAT's deformed points).
        probs: ``(B, W, heads, Nq, Nk)`` float32 probabilities over ``W`` independent key sets (windows; 1
            for global and deformable attention), each row sums to 1.
        same_keys: ``(W, Nq, Nq)`` bool, which query pairs of a window may attend to the same keys (a shifted
            window holds up to 4 regions that do not see each other); ``None``: every pair.
        real_queries: ``(W, Nq)`` bool, queries that are image tokens, not padding; ``None``: all.
        map_size: ``(H, W)`` of the block's query map (``None`` for token sequences).
        points: the deformed sampling points of a deformable block (``None`` otherwise); its ``Hk * Wk`` points
            are the ``Nk`` keys, row-major, those of offset group ``g`` read by heads ``g * heads / G`` on.
    """

    name: str
    kind: str
    probs: Tensor
    same_keys: Tensor | None = None
    real_queries: Tensor | None = None
    map_size: tuple[int, int] | None = None
    points: SamplingPoints | None = None

    def same_key_set(self, other: "AttentionRecord") -> bool:
        """Whether ``other``'s queries attend over the same key set, index for index (cross-layer comparable)."""
        if (self.kind, self.probs.shape) != (other.kind, other.probs.shape):
            return False
        pairs = [(self.same_keys, other.same_keys), (self.real_queries, other.real_queries)]
        return all(a is b or (a is not None and b is not None and torch.equal(a, b)) for a, b in pairs)


def _block_name(module_name: str) -> str:
    return module_name.removesuffix(".attn")


def _window_layout(module: WindowAttention, height: int, width: int) -> tuple[Tensor | None, Tensor | None]:
    """``same_keys`` ``(nW, N, N)`` and ``real_queries`` ``(nW, N)`` of our window attention on an ``H x W`` map."""
    ws, s = module.window_size, module.shift_size
    mask = window_attention_mask(height, width, ws, s)  # nW, N, N, 0 where allowed
    real = F.pad(torch.ones(1, height, width, 1), (0, 0, 0, (-width) % ws, 0, (-height) % ws))  # 1, Hp, Wp, 1
    if s > 0:
        real = torch.roll(real, shifts=(-s, -s), dims=(1, 2))
    real_queries = window_partition(real, ws)[..., 0].bool()  # nW, N
    return (None if mask is None else mask == 0), (None if bool(real_queries.all()) else real_queries)


class _Recorder:
    """Hooks on one attention module: its input gives the layout, its ``attn_drop`` input the probabilities."""

    def __init__(self, name: str, module: nn.Module, records: list[AttentionRecord]) -> None:
        self.name, self.module, self.records = name, module, records
        self.layout: dict = {}
        self.handles = [
            module.register_forward_pre_hook(self.before, with_kwargs=True),
            module.attn_drop.register_forward_pre_hook(self.probabilities),
        ]
        if isinstance(module, DeformableAttention):
            self.handles.append(module.register_forward_hook(self.after))

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        if isinstance(module, WindowAttention):
            same_keys, real = _window_layout(module, x.shape[1], x.shape[2])  # x: B, H, W, C
            self.layout = dict(kind="window", batch=x.shape[0], same_keys=same_keys, real=real, map_size=x.shape[1:3])
        elif isinstance(module, DeformableAttention):
            self.layout = dict(kind="deformable", batch=x.shape[0], map_size=x.shape[1:3])
        elif isinstance(module, TimmWindowAttention):  # x: B*nW, N, C; mask: nW, N, N (0 or -100) or None
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            num_windows = 1 if mask is None else mask.shape[0]  # unmasked: every window counts as an image
            same_keys = None if mask is None else (mask == 0).cpu()
            self.layout = dict(kind="window", batch=x.shape[0] // num_windows, same_keys=same_keys)
        else:  # timm Attention, x: B, N, C
            self.layout = dict(kind="global", batch=x.shape[0])

    def probabilities(self, dropout: nn.Module, args: tuple) -> None:
        probs = args[0].detach().float()  # (B * W, heads, Nq, Nk) or (B, W * heads, Nq, Nk)
        layout = self.layout
        probs = probs.reshape(layout["batch"], -1, self.module.num_heads, *probs.shape[-2:]).cpu()  # B, W, heads, ..
        map_size = None if layout.get("map_size") is None else tuple(layout["map_size"])
        same_keys, real = layout.get("same_keys"), layout.get("real")
        self.records.append(AttentionRecord(_block_name(self.name), layout["kind"], probs, same_keys, real, map_size))

    def after(self, module: nn.Module, args: tuple, output: tuple[Tensor, SamplingPoints]) -> None:
        points = output[1]
        self.records[-1].points = SamplingPoints(points.positions.detach().cpu(), points.references.detach().cpu())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[list[AttentionRecord]]:
    """Within the context, every attention call of ``model`` appends its :class:`AttentionRecord` to the list.

    The recorded modules run their explicit (unfused) attention inside the context; their ``fused_attn``
    settings and all hooks are restored on exit.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: it contains no attention module of :data:`ATTENTION_TYPES`.

    Example:
        >>> with torch.no_grad(), record_attention(model) as records:  # doctest: +SKIP
        ...     model(images)
        >>> [(r.name, r.probs.shape) for r in records]  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, ATTENTION_TYPES)]
    if not modules:
        supported = ", ".join(t.__module__ + "." + t.__name__ for t in ATTENTION_TYPES)
        raise ValueError(f"model {type(model).__name__} has no attention module of the supported kinds ({supported})")
    records: list[AttentionRecord] = []
    fused = [m.fused_attn for _, m in modules]
    recorders = []
    try:
        for name, module in modules:
            module.fused_attn = False
            recorders.append(_Recorder(name, module, records))
        yield records
    finally:
        for recorder in recorders:
            recorder.remove()
        for (_, module), flag in zip(modules, fused, strict=True):
            module.fused_attn = flag


# --------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (Deformable DETR)


@dataclass
class MSDASampling:
    """The sampling of one :class:`~deformvision.layers.MSDeformAttn` call (``N`` images, ``Q`` queries).

    Attributes:
        locations: ``(N, Q, M, L, P, 2)`` ``(x, y)`` in ``[0, 1]`` of each level's map, per head ``M``,
            level ``L`` and point ``P``.
        weights: ``(N, Q, M, L, P)`` attention weights (each head's ``L * P`` weights sum to 1).
        reference_points: ``(N, Q, L, 2|4)`` the call's reference points ``(x, y)`` or boxes ``(cx, cy, w, h)``.
    """

    locations: Tensor
    weights: Tensor
    reference_points: Tensor


@contextlib.contextmanager
def record_msda_sampling(module: MSDeformAttn) -> Iterator[list[MSDASampling]]:
    """Within the context, every forward call of ``module`` appends its :class:`MSDASampling` to the list.

    The locations and weights are the very tensors the layer passes to its ``sampling`` step (detached);
    the reference points are its ``reference_points`` argument. Hooks are removed on exit.

    Raises:
        TypeError: ``module`` is not an :class:`~deformvision.layers.MSDeformAttn`.

    Example:
        >>> layer = model.transformer.decoder.layers[-1].cross_attn  # doctest: +SKIP
        >>> with torch.no_grad(), record_msda_sampling(layer) as calls:  # doctest: +SKIP
        ...     outputs = model(images)
        >>> calls[0].locations.shape  # N, Q, M, L, P, 2  # doctest: +SKIP
    """
    if not isinstance(module, MSDeformAttn):
        raise TypeError(f"module must be a deformvision.layers.MSDeformAttn, got {type(module).__name__}")
    calls: list[MSDASampling] = []
    signature = inspect.signature(module.forward)
    reference: list[Tensor] = []

    def before(mod: MSDeformAttn, args: tuple, kwargs: dict) -> None:
        reference[:] = [signature.bind(*args, **kwargs).arguments["reference_points"].detach()]

    def sampling(mod: nn.Module, args: tuple) -> None:
        locations, weights = args[3], args[4]
        calls.append(MSDASampling(locations.detach(), weights.detach(), reference[0]))

    handles = [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.sampling.register_forward_pre_hook(sampling),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
