"""How fast DAT could be against the official code: the share of a step spent in matrix products and convolutions.

Ours and the official DAT run their products with the same CPU libraries (MKL / oneDNN), close to the core's
peak. In the forward pass they are the same products (the same FLOPs); in the training step ours adds some that
trade time for memory (backward recomputes window ``qkv``, ``q k^T`` and the offset network), and the fused
attention kernel counted here includes its softmax, so for ``fwd+bwd`` the ceiling below is lower than the
official products alone would set. A step cannot be faster than its products, so

    ceiling = official step time / our time in products and convolutions

is the best ratio ours could reach if everything else (norms, GELU, softmax, sampling, copies, the backward of
all of those) were free, and ``rest for 1.3x`` is what that everything else may cost at most for a 1.3x step.
``official ceiling`` puts the official code's own product time in the denominator (no recomputation, no softmax):
the bound for an implementation whose products are only as fast as the official ones.
Times are the profiler's self CPU time of one step after a warm-up (the profiler adds a little per operator).

Usage: python benchmarks/product_share.py --official-repo DIR [--models dat_tiny ...] [--batch-sizes 1 8]
       [--threads 1]   (DIR: a LeapLabTHU/DAT checkout; the official models need einops)
"""

import argparse

import torch

from deformvision.bench.dat import OFFICIAL_CONFIGS, build, check_official_repo, make_step

# matrix products (attention's fused product + softmax included) and convolutions, forward and backward
PRODUCT_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "mkldnn::_linear_pointwise",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward",
    "aten::convolution_backward",
}


def profile_step(step) -> tuple[float, float]:
    """(total, in products) self CPU milliseconds of one call of ``step`` after a warm-up call."""
    step()
    with torch.profiler.profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCT_OPS) / 1e3
    return total, products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", required=True, help="a checkout of LeapLabTHU/DAT")
    parser.add_argument("--models", nargs="+", default=["dat_tiny"], choices=sorted(OFFICIAL_CONFIGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    official_repo = str(check_official_repo(args.official_repo))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); self CPU ms of one step (profiler)\n")
    print(
        "| model | batch | step | ours total | ours products | official total | official products "
        "| ceiling | official ceiling | rest for 1.3x (ours now) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        ours, official = build("ours", name, None), build("official", name, official_repo)
        for batch in args.batch_sizes:
            for mode in ("fwd", "fwd+bwd"):
                ours_total, ours_products = profile_step(make_step(ours, batch, mode, "cpu"))
                off_total, off_products = profile_step(make_step(official, batch, mode, "cpu"))
                rest_allowed = off_total / 1.3 - ours_products
                print(
                    f"| {name} | {batch} | {mode} | {ours_total:.0f} | {ours_products:.0f} | {off_total:.0f} "
                    f"| {off_products:.0f} | {off_total / ours_products:.2f}x | {off_total / off_products:.2f}x "
                    f"| {rest_allowed:.0f} ({ours_total - ours_products:.0f}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
