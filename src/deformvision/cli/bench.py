"""The ``bench`` subcommand: the side-by-side benchmark tables of :mod:`deformvision.bench` on this machine."""

import argparse
from collections.abc import Callable

import torch

from deformvision.bench import dat, deform_conv, detr, msda, primitives
from deformvision.cli._common import _error, _positive_int

_DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time our models and ops against the code users would otherwise run, on this machine",
        description=(
            "Print side-by-side tables (median time, peak memory, ratio) on this machine's CPU or GPU:\n"
            "  dat          DAT forward / forward+backward; --official-repo DIR adds the official model,\n"
            "               --compile our model through torch.compile\n"
            "  msda         multi-scale deformable attention paths against the grid_sample reference\n"
            "               (CUDA: Triton fp32/fp16/bf16, and the official CUDA op if installed)\n"
            "  deform-conv  deform_conv2d against torchvision.ops.deform_conv2d\n"
            "  detr         Deformable DETR R-50 against Hugging Face transformers (inference, training step)\n"
            "  primitives   deformvision.ops.linear / dropout against torch.nn.functional at the models' sizes"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benches = parser.add_subparsers(title="benchmarks", dest="bench", required=True, metavar="BENCH")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = benches.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--device", choices=("cpu", "cuda"), default=_DEFAULT_DEVICE, help="default: cuda if any")
        sub.add_argument("--threads", type=_positive_int, metavar="T", help="torch CPU threads (default: torch's)")
        return sub

    sub = add("dat", "DAT forward and forward+backward time and peak memory, ours against the official model")
    sub.add_argument("--model", default="dat_tiny", choices=sorted(dat.OFFICIAL_CONFIGS))
    sub.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 8], metavar="B")
    sub.add_argument("--repeats", type=_positive_int, metavar="N", help="timed runs (default: 3 CPU, 20 CUDA)")
    sub.add_argument("--official-repo", metavar="DIR", help="a checkout of LeapLabTHU/DAT (v1) to compare with")
    sub.add_argument("--compile", action="store_true", help="also our model through torch.compile")
    sub.set_defaults(func=_run_dat)

    sub = add("msda", "multi-scale deformable attention paths against the grid_sample reference")
    sub.add_argument("--repeats", type=_positive_int, metavar="N", help="timed runs (default: 3 CPU, 20 CUDA)")
    sub.add_argument("--locations", choices=msda.LOCATIONS, default="realistic", help="sampling locations")
    sub.add_argument("--workloads", choices=msda.WORKLOADS, nargs="+", default=list(msda.WORKLOADS))
    sub.set_defaults(func=_run_msda)

    sub = add("deform-conv", "deform_conv2d against torchvision.ops.deform_conv2d, forward and backward")
    sub.add_argument("--repeats", type=_positive_int, default=7, metavar="N", help="timed runs (default: 7)")
    sub.add_argument("--batch", type=_positive_int, default=2, metavar="N")
    sub.add_argument("--channels", type=_positive_int, default=256, metavar="C")
    sub.add_argument("--out-channels", type=_positive_int, default=256, metavar="C")
    sub.add_argument("--size", type=_positive_int, default=64, metavar="S", help="input height and width")
    sub.add_argument("--offset-groups", type=_positive_int, default=1, metavar="G")
    sub.add_argument("--dtype", choices=deform_conv.DTYPES, default="float32")
    sub.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    sub.set_defaults(func=_run_deform_conv)

    sub = add("detr", "Deformable DETR R-50 inference and training step against Hugging Face (needs transformers)")
    sub.add_argument("--repeats", type=_positive_int, default=3, metavar="N", help="timed runs (default: 3)")
    sub.add_argument(
        "--size", type=_image_size, default=(512, 683), metavar="HxW", help="image size (default: 512x683)"
    )
    sub.add_argument("--variants", nargs="+", choices=detr.VARIANTS, default=list(detr.VARIANTS))
    sub.add_argument("--cases", nargs="+", choices=detr.CASES, default=list(detr.CASES))
    sub.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    sub.set_defaults(func=_run_detr)

    sub = add("primitives", "ops.linear and ops.dropout against F.linear and F.dropout at DAT and DETR sizes")
    sub.add_argument("--repeats", type=_positive_int, default=5, metavar="N", help="timed runs (default: 5)")
    sub.set_defaults(func=_run_primitives)


def _default_repeats(args: argparse.Namespace) -> int:
    return args.repeats or (20 if args.device == "cuda" else 3)


def _run_dat(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: dat.run(
            args.model,
            tuple(args.batch_sizes),
            args.device,
            _default_repeats(args),
            args.official_repo,
            args.compile,
            args.threads,
        ),
    )


def _run_msda(args: argparse.Namespace) -> int:
    return _run(args, lambda: msda.run(args.device, _default_repeats(args), args.locations, tuple(args.workloads)))


def _run_deform_conv(args: argparse.Namespace) -> int:
    def bench() -> None:
        workload = deform_conv.Workload(args.batch, args.channels, args.out_channels, args.size, args.offset_groups)
        deform_conv.run(workload, args.device, args.dtype, args.repeats, not args.no_memory)

    return _run(args, bench)


def _run_detr(args: argparse.Namespace) -> int:
    height, width = args.size
    return _run(
        args,
        lambda: detr.run(
            tuple(args.variants), tuple(args.cases), height, width, args.device, args.repeats, not args.no_memory
        ),
    )


def _run_primitives(args: argparse.Namespace) -> int:
    return _run(args, lambda: primitives.run(args.device, args.repeats))


def _image_size(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) as two integers of at least 32."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 32:
        raise argparse.ArgumentTypeError(f"must be HxW (or S) with sides >= 32, got {text!r}")
    return (sides[0], sides[-1])


def _run(args: argparse.Namespace, bench: Callable[[], None]) -> int:
    """Run ``bench`` with ``--threads`` applied; a refused argument or missing dependency exits 2."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        bench()
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        _error(f"bench {args.bench}", str(err))
        return 2
    return 0
