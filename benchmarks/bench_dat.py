"""Speed and memory of a DAT model: forward and forward+backward, ours against the official code.

A thin wrapper over ``deformvision bench dat`` (the measuring code is :mod:`deformvision.bench.dat`); it takes
the same options:

    python benchmarks/bench_dat.py --model dat_tiny --batch-sizes 1 8 [--threads 2] [--compile]
    python benchmarks/bench_dat.py --official-repo ~/src/DAT --device cuda
"""

import sys

from deformvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "dat", *sys.argv[1:]]))
