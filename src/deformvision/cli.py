"""The ``deformvision`` command line.

Each subcommand has an ``_add_<name>_parser(subparsers)`` function that declares its arguments and
sets ``func``, the function running it: ``func(args) -> exit code``.

Subcommands:
    flops   parameters and multiply-adds of registered models at a given input size.
    convert official / Hugging Face checkpoints -> our safetensors, verified by a strict load.
    train   train (or resume) a model from a YAML config with command-line overrides.
    eval    evaluate weights on a config's validation set (classification top-1/5, detection COCO AP).
    predict detections (or top-k classes) of image files as JSON and annotated PNGs.
    demo    train a small DAT Deformable DETR on the built-in digits set on the CPU, evaluate, draw it.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from deformvision import __version__
from deformvision.analysis import CATEGORIES, count_macs, count_parameters
from deformvision.convert import convert_checkpoint
from deformvision.demo import DEFAULT_MINUTES, DEFAULT_OUTPUT_DIR, RECIPES, run_demo
from deformvision.engine import ConfigError, TrainConfig, Trainer, config_to_dict, evaluate, load_config
from deformvision.engine.distributed import destroy_distributed, is_main_process
from deformvision.models import create_model, list_models
from deformvision.predict import load_predictor, predict_files

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs (source checkouts)
DEFAULT_IMG_SIZE = 224  # input side for models that do not declare their own `img_size`
IN_CHANS = 3


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
    _add_train_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_demo_parser(subparsers)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _error(command: str, message: str) -> None:
    print(f"deformvision {command}: error: {message}", file=sys.stderr)


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
        "--model-kwargs", type=_json_object, default={}, metavar="JSON",
        help='further model arguments as a JSON object, e.g. \'{"num_queries": 100}\'',
    )  # fmt: skip
    parser.set_defaults(func=_run_convert)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


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
# train and eval: a YAML config (or the defaults), `--set` overrides, then the shortcut flags

_CONFIG_HELP = """\
configuration:
  Every option of the run lives in the YAML config (see configs/ and deformvision.engine.config):
  sections model, data, aug, loss, optim, schedule, ema, checkpoint, log, and top-level keys
  output_dir, seed, device, deterministic, threads, amp, eval_every, resume. Override any of
  them with --set SECTION.KEY=VALUE (values are YAML: 1e-3, [96,128], null, true); the shortcut
  flags (--epochs, --lr, ...) win over --set, which wins over the file. An unknown key is an
  error listing the valid ones.
"""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--set`` and the shortcut flags shared by ``train`` and ``eval``."""
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
        help="config overrides, e.g. --set optim.lr=1e-3 data.batch_size=16 model.kwargs.drop_path_rate=0.1",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=_positive_int, metavar="B", help="batch size per process")
    parser.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (device)")
    parser.add_argument("--workers", type=int, metavar="N", help="data loading processes (data.num_workers)")
    parser.add_argument("--amp", choices=("none", "auto", "bf16", "fp16"), help="mixed precision (amp)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log.progress=false)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The shortcut flags as overrides (``--epochs 3`` -> ``schedule.epochs=3``)."""
    flags = {
        "epochs": "schedule.epochs", "batch_size": "data.batch_size", "lr": "optim.lr", "output_dir": "output_dir",
        "resume": "resume", "device": "device", "seed": "seed", "amp": "amp", "model": "model.name",
        "data": "data.root", "task": "data.task", "format": "data.format", "img_size": "data.img_size",
        "num_classes": "data.num_classes", "workers": "data.num_workers",
    }  # fmt: skip
    overrides = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in flags.items()
                 if getattr(args, flag, None) is not None]  # fmt: skip
    if getattr(args, "deterministic", False):
        overrides.append("deterministic=true")
    if getattr(args, "overwrite", False):
        overrides.append("overwrite=true")
    if args.no_progress:
        overrides.append("log.progress=false")
    return overrides


def _load_run_config(command: str, args: argparse.Namespace) -> TrainConfig | None:
    """The config of ``args`` (file, ``--set``, flags); prints the error and returns ``None`` if invalid."""
    try:
        return load_config(args.config, [*args.overrides, *_shortcut_overrides(args)])
    except (ConfigError, FileNotFoundError) as err:
        _error(command, str(err))
        return None


def _print_config(config: TrainConfig) -> None:
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train a DAT classifier or a Deformable DETR detector as a config describes, on one CPU, one GPU\n"
            "or many processes: the same command runs under `torchrun --nproc_per_node N` (multi-node through\n"
            "torchrun's variables). The run directory (output_dir) gets config.yaml, log.jsonl (JSON lines per\n"
            "logging interval and epoch), checkpoints/ with last_checkpoint.json, and model_final.safetensors.\n"
            "Checkpoints are written atomically; --resume continues exactly where the last one left off,\n"
            "mid-epoch included (with --deterministic on CPU, bit for bit)."
        ),
        epilog=_CONFIG_HELP
        + (
            "\nexamples:\n"
            "  deformvision train configs/dat_digits.yaml\n"
            "  deformvision train configs/dat_digits.yaml --epochs 5 --set optim.lr=1e-3 checkpoint.every_steps=20\n"
            "  deformvision train configs/dat_digits.yaml --output-dir runs/x --resume auto\n"
            "  torchrun --nproc_per_node 8 -m deformvision.cli train configs/deformable_detr_r50_coco.yaml \\\n"
            "      --set data.root=/data/coco\n"
            f"\nconfigs: {', '.join(sorted(p.name for p in _CONFIG_DIR.glob('*.yaml'))) or '(none found)'}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config file (e.g. configs/dat_digits.yaml)")
    _add_run_options(parser)
    parser.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs in all (schedule.epochs)")
    parser.add_argument("--lr", type=float, metavar="LR", help="base learning rate (optim.lr)")
    parser.add_argument("--output-dir", metavar="DIR", help="run directory (output_dir)")
    parser.add_argument(
        "--resume", nargs="?", const="auto", metavar="RUN",
        help="resume from the newest checkpoint of RUN (a run directory or its last_checkpoint.json); "
        "without RUN, or 'auto': from output_dir if it has one, else start fresh",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier run in output_dir (its config, log, checkpoints and weights); without it (and "
        "without --resume) a run directory that holds a run is refused",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (seed)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (deterministic=true)")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    config = _load_run_config("train", args)
    if config is None:
        return 2
    if args.print_config:
        _print_config(config)
        return 0
    try:
        try:
            trainer = Trainer(config)
        except (FileNotFoundError, ValueError) as err:  # a setup problem (data, weights, options): no traceback
            _error("train", str(err))
            return 1
        trainer.fit()
    finally:
        destroy_distributed()
    return 0


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate weights on a validation set",
        description=(
            "Evaluate model weights on the validation set of a config (classification: top-1/top-5 accuracy\n"
            "and loss; detection: the 12 COCO box AP/AR numbers, with the pycocotools summary). Give a config,\n"
            "or build one from the defaults with --model, --data and friends. Prints the metrics as JSON.\n"
            "Runs under torchrun too (each process evaluates a shard)."
        ),
        epilog=_CONFIG_HELP
        + (
            "\nexamples:\n"
            "  deformvision eval configs/dat_digits.yaml --checkpoint runs/dat_digits\n"
            "  deformvision eval --model dat_tiny --checkpoint dat_tiny.safetensors --data /data/imagenet\n"
            "  deformvision eval configs/deformable_detr_r50_coco.yaml --checkpoint r50_deformable_detr.pth \\\n"
            "      --set data.root=/data/coco"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file (default: the built-in defaults)")
    parser.add_argument(
        "--checkpoint", metavar="PATH",
        help="weights: a safetensors or official file, or a run directory (its final weights, else newest "
        "checkpoint); default: model.checkpoint of the config",
    )  # fmt: skip
    parser.add_argument("--model", metavar="NAME", help=f"registered model (model.name): {', '.join(list_models())}")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (data.root)")
    parser.add_argument("--task", choices=("classification", "detection"), help="data.task")
    parser.add_argument("--format", choices=("image_folder", "coco", "digits"), help="data.format")
    parser.add_argument("--img-size", type=_positive_int, metavar="S", help="classification input side (data.img_size)")
    parser.add_argument("--num-classes", type=_positive_int, metavar="K", help="classes of the head (data.num_classes)")
    parser.add_argument("--output", metavar="FILE", help="also write the metrics to this JSON file")
    _add_run_options(parser)
    parser.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    config = _load_run_config("eval", args)
    if config is None:
        return 2
    if args.print_config:
        _print_config(config)
        return 0
    if args.checkpoint is None and config.model.checkpoint is None:
        _error("eval", "no weights: give --checkpoint PATH (or model.checkpoint in the config)")
        return 2
    try:
        metrics = evaluate(config, args.checkpoint)
        main_process = is_main_process()  # under torchrun every process has the metrics: one prints them
    except (FileNotFoundError, ValueError) as err:
        _error("eval", str(err))
        return 1
    finally:
        destroy_distributed()
    if main_process:
        text = json.dumps(metrics, indent=2)
        print(text)
        if args.output:
            Path(args.output).write_text(text + "\n")
    return 0


# --------------------------------------------------------------------------------------------------
# predict


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in (or classify) image files",
        description=(
            "Run a detector (or a classifier) on image files and folders (their image files, not recursive).\n"
            "Writes OUTPUT_DIR/predictions.json (per image: detections with boxes [x0, y0, x1, y1] in original\n"
            "image pixels, scores, labels and category names when known; for a classifier the top-k classes)\n"
            "and one annotated PNG per image. The model comes from a training run directory (--run: its\n"
            "config.yaml and weights, e.g. the output of `deformvision train` or `deformvision demo`), a config\n"
            "file (--config, weights from --checkpoint), or a registered model name (--model, with --checkpoint)."
        ),
        epilog=(
            "examples:\n"
            "  deformvision predict --run deformvision_demo photos/ more.png\n"
            "  deformvision predict --config configs/deformable_detr_digits.yaml \\\n"
            "      --checkpoint runs/deformable_detr_digits/model_final.safetensors img.png\n"
            "  deformvision predict --model deformable_detr_r50 --checkpoint r50_deformable_detr.pth \\\n"
            "      --img-size 800 img.jpg\n"
            "  deformvision predict --model dat_tiny --top-k 5 cat.jpg        # published ImageNet weights\n"
            "  deformvision predict --model dat_tiny --checkpoint dat_tiny.pth --top-k 5 cat.jpg"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="DIR", help="a training run directory (config.yaml and weights)")
    source.add_argument("--config", metavar="FILE", help="a YAML config (model, data and evaluation resize)")
    source.add_argument("--model", metavar="NAME", help="a registered model name")
    parser.add_argument(
        "--checkpoint", metavar="PATH",
        help="weights (default: the run's, model.checkpoint, or with --model the published pretrained weights)",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", default="predictions", metavar="DIR", help="where to write (default: predictions)"
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.3, metavar="T", help="lowest detection score kept (default: 0.3)"
    )
    parser.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="classes per image (default: 5)")
    parser.add_argument(
        "--img-size", type=_positive_int, metavar="S",
        help="input side: detectors resize the shorter side to S (aug.val_size), classifiers crop S (data.img_size)",
    )  # fmt: skip
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
        help="config overrides, e.g. --set aug.max_size=1333 loss.num_select=50",
    )  # fmt: skip
    parser.add_argument(
        "--model-kwargs", type=_json_object, default={}, metavar="JSON", help="further model arguments (JSON object)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch (default: 8)"
    )
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.img_size is not None:
        overrides += [f"aug.val_size={args.img_size}", f"data.img_size={args.img_size}"]
    try:
        predictor = load_predictor(run=args.run, config=args.config, model=args.model, checkpoint=args.checkpoint,
                                   overrides=overrides, model_kwargs=args.model_kwargs, device=args.device)  # fmt: skip
        path = predict_files(predictor, args.inputs, args.output_dir, score_threshold=args.score_threshold,
                             top_k=args.top_k, batch_size=args.batch_size)  # fmt: skip
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        _error("predict", str(err))
        return 1
    images = json.loads(path.read_text())["images"]
    if predictor.task == "detection":
        found = sum(len(image["detections"]) for image in images)
        print(f"{found} detection(s) with score >= {args.score_threshold:g} in {len(images)} image(s)")
    else:
        for image in images:
            best = ", ".join(f"{c['class'] or c['label']} {c['score']:.2f}" for c in image["top_k"][:3])
            print(f"{image['file']}: {best}")
    print(f"wrote {path} and {len(images)} annotated PNG(s) in {path.parent}")
    return 0


# --------------------------------------------------------------------------------------------------
# demo


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and draw a small DAT model on built-in data, on the CPU, in minutes",
        description=(
            "The whole pipeline in a few minutes on a CPU, no download: build a built-in digits set (128x128\n"
            "canvases with 1-6 digits), train a small DAT model for a time budget, evaluate it, and write\n"
            "predictions and pictures. --task detection (default): a two-stage Deformable DETR with box\n"
            "refinement, the 12 COCO box AP/AR numbers and a picture of the learned deformable sampling points;\n"
            "--task instance: Mask R-CNN, COCO box and mask AP; --task semantic: Semantic FPN, mIoU."
        ),
        epilog=(
            "writes into OUTPUT_DIR: config.yaml and model_final.safetensors (a run directory for\n"
            "`deformvision eval` and `deformvision predict --run`), metrics.json, log.jsonl, predictions/\n"
            "(predictions.json and annotated PNGs of validation images), sampling_points.png (detection),\n"
            "data/ (the dataset)\n"
            "\n"
            "examples:\n"
            "  deformvision demo\n"
            "  deformvision demo --task semantic --output-dir demo_semantic\n"
            "  deformvision demo --minutes 3 --output-dir /tmp/demo\n"
            "  deformvision demo --epochs 1 --num-train 32 --num-val 16   # a quick smoke test"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=sorted(RECIPES), default="detection",
                        help="what the model learns (default: detection)")  # fmt: skip
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
                        help=f"where to write everything (default: ./{DEFAULT_OUTPUT_DIR})")  # fmt: skip
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, metavar="M",
                        help=f"training time budget in minutes (default: {DEFAULT_MINUTES:g})")  # fmt: skip
    budget.add_argument("--epochs", type=_positive_int, metavar="N", help="train N epochs instead, however long")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="training seed (default: 0)")
    parser.add_argument("--num-train", type=_positive_int, default=1000, metavar="N",
                        help="training canvases (default: 1000, the built-in set)")  # fmt: skip
    parser.add_argument("--num-val", type=_positive_int, default=200, metavar="N",
                        help="validation canvases (default: 200, the built-in set)")  # fmt: skip
    parser.add_argument("--threads", type=_positive_int, metavar="T", help="CPU threads (default: 1, fastest here)")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        _error("demo", f"--minutes must be positive, got {args.minutes:g}")
        return 2
    try:
        result = run_demo(args.output_dir, task=args.task, minutes=args.minutes, epochs=args.epochs, seed=args.seed,
                          num_train=args.num_train, num_val=args.num_val, threads=args.threads)  # fmt: skip
    except ValueError as err:  # e.g. an output directory holding another dataset
        _error("demo", str(err))
        return 1
    m = result.metrics
    if args.task == "detection":
        numbers = (f"COCO box AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  APs {m['APs']:.3f}  "
                   f"APm {m['APm']:.3f}  AR100 {m['AR100']:.3f}")  # fmt: skip
    elif args.task == "instance":
        numbers = "  ".join(f"{name} {m[name]:.3f}" for name in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"))
    else:
        numbers = f"mIoU {m['mIoU']:.3f}  aAcc {m['aAcc']:.3f}  mAcc {m['mAcc']:.3f}"
    print(
        f"\ndemo finished in {result.total_seconds / 60:.1f} min ({result.train_seconds / 60:.1f} min of training: "
        f"{result.steps} steps, {result.epochs:.1f} epochs)\n{numbers}\nwrote:"
    )
    for what, path in result.files.items():
        print(f"  {what:16s} {path}")
    print(f"next: deformvision predict --run {result.output_dir} IMAGE_OR_FOLDER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
