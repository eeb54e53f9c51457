"""The ``train`` and ``eval`` subcommands: a YAML config (or the defaults), ``--set`` overrides, shortcut flags."""

import argparse
import json

import yaml

from deformvision._atomic import write_text_atomic
from deformvision.cli._common import _error, _positive_int, config_file
from deformvision.engine import ConfigError, TrainConfig, Trainer, config_to_dict, evaluate, load_config
from deformvision.engine.distributed import destroy_distributed, is_main_process
from deformvision.models import list_models
from deformvision.recipes import list_recipes

# --------------------------------------------------------------------------------------------------
# train and eval: a YAML config (or the defaults), `--set` overrides, then the shortcut flags

_CONFIG_HELP = """\
configuration:
  CONFIG is a recipe name (`deformvision recipes` lists them) or a YAML file path. Every option of
  the run lives in the YAML config (see deformvision.engine.config):
  sections model, data, aug, loss, optim, schedule, ema, checkpoint, log, and top-level keys
  output_dir, seed, device, deterministic, threads, amp, compile, eval_every, resume. Override any of
  them with --set SECTION.KEY=VALUE (values are YAML: 1e-3, [96,128], null, true); the shortcut
  flags (--epochs, --lr, ...) win over --set, which wins over the file. An unknown key is an
  error listing the valid ones.
"""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--set`` and the shortcut flags shared by ``train`` and ``eval``."""
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="config overrides, e.g. --set optim.lr=1e-3 data.batch_size=16 model.kwargs.drop_path_rate=0.1",
    )
    parser.add_argument("--batch-size", type=_positive_int, metavar="B", help="batch size per process")
    parser.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (device)")
    parser.add_argument("--workers", type=int, metavar="N", help="data loading processes (data.num_workers)")
    parser.add_argument("--amp", choices=("none", "auto", "bf16", "fp16"), help="mixed precision (amp)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (compile=default; other modes: --set compile=MODE)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log.progress=false)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The shortcut flags as overrides (``--epochs 3`` -> ``schedule.epochs=3``)."""
    flags = {
        "epochs": "schedule.epochs",
        "batch_size": "data.batch_size",
        "lr": "optim.lr",
        "output_dir": "output_dir",
        "resume": "resume",
        "device": "device",
        "seed": "seed",
        "amp": "amp",
        "model": "model.name",
        "data": "data.root",
        "task": "data.task",
        "format": "data.format",
        "img_size": "data.img_size",
        "num_classes": "data.num_classes",
        "workers": "data.num_workers",
    }
    overrides = [
        f"{key}={json.dumps(getattr(args, flag))}"
        for flag, key in flags.items()
        if getattr(args, flag, None) is not None
    ]
    if getattr(args, "deterministic", False):
        overrides.append("deterministic=true")
    if args.compile:
        overrides.append("compile=default")
    if getattr(args, "overwrite", False):
        overrides.append("overwrite=true")
    if args.no_progress:
        overrides.append("log.progress=false")
    return overrides


def _load_run_config(command: str, args: argparse.Namespace) -> TrainConfig | None:
    """The config of ``args`` (file, ``--set``, flags); prints the error and returns ``None`` if invalid."""
    try:
        path = config_file(args.config) if args.config is not None else None
        return load_config(path, [*args.overrides, *_shortcut_overrides(args)])
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
            "  deformvision train dat_digits\n"
            "  deformvision train dat_digits --epochs 5 --set optim.lr=1e-3 checkpoint.every_steps=20\n"
            "  deformvision train my_run.yaml --output-dir runs/x --resume auto\n"
            "  deformvision train dat_digits --set schedule.max_seconds=600   # a 10-minute budget\n"
            "  torchrun --nproc_per_node 8 -m deformvision.cli train deformable_detr_r50_coco \\\n"
            "      --set data.root=/data/coco\n"
            f"\nrecipes: {', '.join(list_recipes())}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="recipe name (e.g. dat_digits) or YAML config file")
    _add_run_options(parser)
    parser.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs in all (schedule.epochs)")
    parser.add_argument("--lr", type=float, metavar="LR", help="base learning rate (optim.lr)")
    parser.add_argument("--output-dir", metavar="DIR", help="run directory (output_dir)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="RUN",
        help="resume from the newest checkpoint of RUN (a run directory or its last_checkpoint.json); "
        "without RUN, or 'auto': from output_dir if it has one, else start fresh",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in output_dir (its config, log, checkpoints and weights); without it (and "
        "without --resume) a run directory that holds a run is refused",
    )
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
            "  deformvision eval dat_digits --checkpoint runs/dat_digits\n"
            "  deformvision eval --model dat_tiny --checkpoint dat_tiny.safetensors --data /data/imagenet\n"
            "  deformvision eval deformable_detr_r50_coco --checkpoint r50_deformable_detr.pth \\\n"
            "      --set data.root=/data/coco"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="recipe name or YAML config file (default: the built-in defaults)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights: a safetensors or official file, or a run directory (its final weights, else newest "
        "checkpoint); default: model.checkpoint of the config",
    )
    parser.add_argument("--model", metavar="NAME", help=f"registered model (model.name): {', '.join(list_models())}")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (data.root)")
    parser.add_argument("--task", choices=("classification", "detection", "instance", "semantic"), help="data.task")
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
            write_text_atomic(args.output, text + "\n")
    return 0
