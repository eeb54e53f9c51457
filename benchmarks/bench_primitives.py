"""Benchmark of ``deformvision.ops.linear`` / ``dropout`` against ``F.linear`` / ``F.dropout`` at DAT and DETR sizes.

A thin wrapper over ``deformvision bench primitives`` (:mod:`deformvision.bench.primitives`).

Usage: python benchmarks/bench_primitives.py [--device cpu|cuda] [--threads N] [--repeats N]
"""

import sys

from deformvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "primitives", *sys.argv[1:]]))
