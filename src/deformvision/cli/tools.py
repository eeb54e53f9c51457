"""The ``flops``, ``convert`` and ``recipes`` subcommands."""

import argparse
from collections.abc import Sequence

import torch

from deformvision.analysis import CATEGORIES, count_macs, count_parameters
from deformvision.cli._common import _error, _json_object, _positive_int
from deformvision.convert import convert_checkpoint
from deformvision.models import create_model, list_models
from deformvision.recipes import list_recipes, recipe_description, recipe_path

DEFAULT_IMG_SIZE = 224  # input side for models that do not declare their own `img_size`
IN_CHANS = 3


# --------------------------------------------------------------------------------------------------
# flops


def _add_flops_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="count parameters and multiply-adds (MACs) of models",
        description=(
            "Print a markdown table of the parameters and the multiply-adds (MACs, the 'FLOPs' of the\n"
            "DAT/Swin papers) of one forward pass of each model, with the per-category breakdown.\n"
            "Each model is built with its registered configuration; only the input size changes."
        ),
        epilog=(
            "columns (MAC columns in billions):\n"
            "  GMACs     total: the sum of the following columns\n"
            "  conv      convolutions (including 1x1 projections)\n"
            "  linear    nn.Linear layers and 2-D matrix products\n"
            "  matmul    batched matrix products (attention scores and weighted sums)\n"
            "  sampling  bilinear sampling: grid_sample 4 MACs per output element and channel;\n"
            "            multi-scale deformable attention 5 per tap and channel\n"
            "  other     further ops PyTorch's counter knows (shown only when non-zero)\n"
            "  biases, norms, softmax, activations and element-wise ops are not counted\n"
            "\n"
            f"available models: {', '.join(list_models())}\n"
            "\n"
            "example: deformvision flops dat_tiny dat_small --img-size 224"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--img-size",
        type=_positive_int,
        metavar="S",
        help=f"square input side (default: the model's own img_size, else {DEFAULT_IMG_SIZE})",
    )
    size.add_argument("--input-size", type=_positive_int, nargs=2, metavar=("H", "W"), help="input height and width")
    parser.add_argument("--batch", type=_positive_int, default=1, metavar="B", help="batch size (default: 1)")
    parser.set_defaults(func=_run_flops)


def _run_flops(args: argparse.Namespace) -> int:
    unknown = [name for name in args.models if name not in list_models()]
    if unknown:
        _error("flops", f"unknown model(s): {', '.join(unknown)}; available: {', '.join(list_models())}")
        return 2

    results = []  # (model name, input shape, parameters, MAC report)
    for name in args.models:
        model = create_model(name)
        params = count_parameters(model)
        if args.input_size:
            height, width = args.input_size
        elif args.img_size:
            height = width = args.img_size
        else:
            height, width = _default_input_size(model)
        shape = (args.batch, IN_CHANS, height, width)
        # On the meta device the forward pass only propagates shapes: the count is the same, much faster.
        model.to("meta")
        try:
            try:
                report = count_macs(model, shape)
            except NotImplementedError:  # data-dependent shapes (a detector's NMS) have no shape-only version:
                torch.manual_seed(0)  # count on the CPU for real; the RoI heads' share depends on the detections
                report = count_macs(create_model(name), shape)
            results.append((name, shape, params, report))
        except ValueError as exc:  # e.g. an input below the model's minimum size
            _error("flops", f"{name} at {height}x{width}: {exc}")
            return 1

    categories = [*CATEGORIES, *(["other"] if any("other" in r.categories for *_, r in results) else [])]
    rows = [
        [name, "x".join(map(str, shape)), f"{params / 1e6:.3f}", f"{report.total / 1e9:.3f}"]
        + [f"{report.categories.get(category, 0) / 1e9:.3f}" for category in categories]
        for name, shape, params, report in results
    ]
    print(markdown_table(["model", "input", "params (M)", "GMACs", *categories], rows, left_aligned=2))
    return 0


def _default_input_size(model: torch.nn.Module) -> tuple[int, int]:
    """The input size a model is built for (its ``img_size``), else ``DEFAULT_IMG_SIZE`` square."""
    size = getattr(model, "img_size", DEFAULT_IMG_SIZE)
    return (size, size) if isinstance(size, int) else tuple(size)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left_aligned: int = 1) -> str:
    """A markdown table with padded columns; the first ``left_aligned`` columns align left, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i < left_aligned else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i < left_aligned else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(header), line(rule), *(line(row) for row in rows)])


# --------------------------------------------------------------------------------------------------
# convert


def _add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official or Hugging Face checkpoint to our safetensors",
        description=(
            "Convert SRC (an official Deformable DETR or DAT .pth, a Hugging Face Deformable DETR file or\n"
            "directory, or one of our files) through the model's checkpoint filter, check that it loads\n"
            "strictly into the model, and write the model's weights to DST (.safetensors, written atomically).\n"
            "Load the result with create_model(MODEL, **model_kwargs, checkpoint=DST) (both are printed)."
        ),
        epilog=(
            "the model, when not named: from a Hugging Face directory's config.json (with its sizes), else\n"
            "from the checkpoint's keys (official Deformable DETR variants; the DC5 variant must be named;\n"
            "official DAT-T/S/B/B-384)\n"
            "\n"
            f"available models: {', '.join(list_models())}\n"
            "\n"
            "example: deformvision convert r50_deformable_detr-checkpoint.pth ddetr_r50.safetensors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint file or Hugging Face directory")
    parser.add_argument("dst", metavar="DST", help="output .safetensors file")
    parser.add_argument("--model", metavar="NAME", help="registered model name (default: told from SRC)")
    parser.add_argument(
        "--num-classes", type=_positive_int, metavar="N", help="classes (default: the checkpoint's class head)"
    )
    parser.add_argument(
        "--model-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="further model arguments as a JSON object, e.g. '{\"num_queries\": 100}'",
    )
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    if args.model is not None and args.model not in list_models():
        _error("convert", f"unknown model {args.model}; available: {', '.join(list_models())}")
        return 2
    try:
        result = convert_checkpoint(args.src, args.dst, args.model, args.num_classes, args.model_kwargs)
    except (FileNotFoundError, ValueError) as exc:
        _error("convert", str(exc))
        return 1
    print(
        f"wrote {args.dst}: {result.num_tensors} tensors, {result.num_parameters / 1e6:.3f}M parameters, "
        f"model {result.model} with {result.model_kwargs}"
    )
    return 0


# --------------------------------------------------------------------------------------------------
# recipes


def _add_recipes_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipes",
        help="list the shipped training recipes, or print one",
        description=(
            "Without NAME, list the training recipes shipped with deformvision (name and description);\n"
            "with NAME, print that recipe's YAML. Train one with `deformvision train NAME`; to change it,\n"
            "save the printed YAML to a file, edit it and train that file (or use --set overrides)."
        ),
        epilog="example: deformvision recipes dat_digits > my_digits.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="a recipe to print")
    parser.set_defaults(func=_run_recipes)


def _run_recipes(args: argparse.Namespace) -> int:
    if args.name is not None:
        try:
            path = recipe_path(args.name)
        except ValueError as err:
            _error("recipes", str(err))
            return 2
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    names = list_recipes()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {recipe_description(name)}")
    return 0
