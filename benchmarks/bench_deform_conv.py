"""Benchmark of deformvision.ops.deform_conv2d against torchvision.ops.deform_conv2d, side by side.

A thin wrapper over ``deformvision bench deform-conv`` (the measuring code is
:mod:`deformvision.bench.deform_conv`) with this script's defaults: one thread, the CPU. Default workload:
input (2, 256, 64, 64), 3x3 kernel, 256 output channels, offsets of a couple of pixels, float32.

Usage: python benchmarks/bench_deform_conv.py [--threads 1] [--repeats 7] [--batch 2] [--channels 256]
       [--out-channels 256] [--size 64] [--offset-groups 1] [--device cpu|cuda] [--dtype float32] [--no-memory]
"""

import sys

from deformvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "deform-conv", "--threads", "1", "--device", "cpu", *sys.argv[1:]]))
