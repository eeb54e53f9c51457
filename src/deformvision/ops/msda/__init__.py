"""Multi-scale deformable attention: the sampling core of Deformable DETR's ``MSDeformAttn``.

For every query, head, level and point the op bilinearly samples the level's value map at a learned
location and sums the samples weighted by the attention weights (Zhu et al., "Deformable DETR", 2021).
Semantics are those of the official op (fundamentalvision/Deformable-DETR, ``ms_deform_attn_core_pytorch``
and its CUDA kernel), which equal ``F.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`` at ``2 * location - 1``.

Backends (``backend=`` of :func:`ms_deform_attn`):

- ``"reference"``: one ``F.grid_sample`` per level, plain PyTorch, any floating dtype and device. It is the
  source of truth the other paths are tested against.
- ``"cpu"``: CPU tensors only. All levels are sampled with one ``F.embedding_bag`` over a value table in
  which every level is bordered by one row/column of zeros: each point's four bilinear corners become four
  table rows whose weights (bilinear weight times attention weight) are precomputed, and taps outside the
  map read the zero border. The backward recomputes the taps, gets the tap-weight gradients from one
  sampled dense-dense product (``torch.sparse.sampled_addmm``), the value gradient by sorting the taps
  (few queries) or the points (many queries) by table row and gathering with ``F.embedding_bag`` again
  (no serial scatter), and applies the chain rule to the locations and attention weights by hand.
  Deterministic. float16/bfloat16 are computed in float32. At Deformable DETR encoder size on a 2-core CPU
  it is about 4-5x faster than the reference forward and 2.5-3x faster forward+backward, with under half
  the reference's peak memory; at decoder size (300 queries) about 6-7x forward and 3-3.5x forward+backward
  (``benchmarks/bench_ms_deform_attn.py``).
- ``"triton"``: fused ``@triton.jit`` kernels (:mod:`deformvision.ops.msda.triton_kernels`) for CUDA tensors of dtype
  float32/float16/bfloat16 (on CPU tensors only inside the Triton interpreter, ``TRITON_INTERPRET=1``).
  The backward is bitwise reproducible when ``torch.are_deterministic_algorithms_enabled()``.
- ``"auto"`` (default): CPU tensors -> ``"cpu"``; CUDA float32/float16/bfloat16 with triton installed ->
  ``"triton"``; anything else -> ``"reference"``.

The op is registered as ``torch.ops.deformvision.ms_deform_attn`` (with a fake implementation and a
backward op ``torch.ops.deformvision.ms_deform_attn_backward``), so ``torch.compile(fullgraph=True)``
traces through it without a graph break. During ONNX export (``torch.onnx.is_in_onnx_export()``) the
reference path is traced instead, which exports as one ``GridSample`` per level (opset >= 16) with the
level shapes baked in as constants: use the TorchScript-based exporter, ``torch.onnx.export(...,
dynamo=False)``. The dynamo-based exporter (``dynamo=True``) cannot use it: ``torch.export`` treats the
level shapes as data, which the per-level split needs as Python ints, and the custom op has no ONNX
translation.

On CUDA, the reference backend's backward (``grid_sample``'s) is not deterministic; it raises under
``torch.use_deterministic_algorithms(True)``, as ``grid_sample`` does.

Modules, one job each: :mod:`~deformvision.ops.msda.contract` (argument checks shared by all backends),
:mod:`~deformvision.ops.msda.reference`, :mod:`~deformvision.ops.msda.cpu`,
:mod:`~deformvision.ops.msda.triton_kernels` and :mod:`~deformvision.ops.msda.triton_launch` (the backends),
:mod:`~deformvision.ops.msda.dispatch` (backend choice, ``torch.library`` registration, the public entry).
"""

from deformvision.ops.msda.dispatch import ms_deform_attn
from deformvision.ops.msda.reference import ms_deform_attn_reference

__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]
