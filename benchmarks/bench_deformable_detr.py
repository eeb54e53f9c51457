"""Deformable DETR R50 (multi-scale, box refinement, two-stage) against Hugging Face transformers'
``DeformableDetr`` with the same weights: inference and a training step.

A thin wrapper over ``deformvision bench detr`` (the measuring code is :mod:`deformvision.bench.detr`) with this
script's defaults: one thread, the CPU, 5 repeats.

Usage: python benchmarks/bench_deformable_detr.py [--threads 1] [--repeats 5] [--size 512x683]
       [--variants multi_scale box_refine two_stage] [--cases inference train] [--no-memory]
"""

import sys

from deformvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "detr", "--threads", "1", "--device", "cpu", "--repeats", "5", *sys.argv[1:]]))
