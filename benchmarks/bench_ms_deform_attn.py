"""Benchmark of multi-scale deformable attention: every available path against the grid_sample reference.

A thin wrapper over ``deformvision bench msda`` (the workloads and the measuring code are
:mod:`deformvision.bench.msda`). On CPU the profiler prints ``USDT: ...`` lines on stderr; the table goes
to stdout.

Usage: python benchmarks/bench_ms_deform_attn.py [--device cpu|cuda] [--repeats N] [--locations realistic|uniform]
       [--threads N] [--workloads encoder decoder]
"""

import sys

from deformvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "msda", *sys.argv[1:]]))
