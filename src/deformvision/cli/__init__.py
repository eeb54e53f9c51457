"""The ``deformvision`` command line.

Each subcommand has an ``_add_<name>_parser(subparsers)`` function that declares its arguments and
sets ``func``, the function running it: ``func(args) -> exit code``; they live in
:mod:`~deformvision.cli.training` (train, eval), :mod:`~deformvision.cli.inference` (predict, demo) and
:mod:`~deformvision.cli.tools` (flops, convert, recipes) and :mod:`~deformvision.cli.bench` (bench).

Subcommands:
    flops   parameters and multiply-adds of registered models at a given input size.
    convert official / Hugging Face checkpoints -> our safetensors, verified by a strict load.
    recipes list the shipped training recipes, or print one.
    train   train (or resume) a model from a recipe or YAML config with command-line overrides.
    eval    evaluate weights on a config's validation set (top-1/5, COCO box/mask AP, mIoU).
    predict detections, masks, class maps or top-k classes of image files as JSON and annotated PNGs.
    demo    train a small DAT model on a built-in digits set on the CPU, evaluate, draw it.
    analyze attention collapse of models on images (JSON, plot), an HTML report.
    viz     where deformable attention looks: DAT points and top keys, Deformable DETR sampling by level.
    bench   side-by-side speed and memory tables (DAT, msda, deform-conv, Deformable DETR, primitives) on this
            machine.
"""

import argparse
from collections.abc import Sequence

from deformvision import __version__
from deformvision.cli.analysis import _add_analyze_parser, _add_viz_parser
from deformvision.cli.bench import _add_bench_parser
from deformvision.cli.inference import _add_demo_parser, _add_predict_parser
from deformvision.cli.tools import _add_convert_parser, _add_flops_parser, _add_recipes_parser
from deformvision.cli.training import _add_eval_parser, _add_train_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deformvision`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="deformvision", description="Deformable attention for vision: models, tools and benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    _add_flops_parser(subparsers)
    _add_convert_parser(subparsers)
    _add_recipes_parser(subparsers)
    _add_train_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_demo_parser(subparsers)
    _add_analyze_parser(subparsers)
    _add_viz_parser(subparsers)
    _add_bench_parser(subparsers)
    return parser
