"""Side-by-side benchmarks on the user's own hardware: our models and ops against the code users would
otherwise run. Each module prints a markdown table (``deformvision bench ...``; the scripts in ``benchmarks/``
are thin wrappers over the same functions).

- :mod:`~deformvision.bench.dat`: DAT forward and forward+backward, ours (eager or compiled) and the official code;
- :mod:`~deformvision.bench.msda`: ``ms_deform_attn`` paths against the grid_sample reference (and the official
  CUDA op where it is installed);
- :mod:`~deformvision.bench.deform_conv`: ``deform_conv2d`` against ``torchvision.ops.deform_conv2d``;
- :mod:`~deformvision.bench.detr`: Deformable DETR inference and a training step against Hugging Face ``transformers``;
- :mod:`~deformvision.bench.primitives`: ``ops.linear`` and ``ops.dropout`` against ``F.linear`` and ``F.dropout``;
- :mod:`~deformvision.bench.measure`: the timing and peak-memory measurements they share.
"""
