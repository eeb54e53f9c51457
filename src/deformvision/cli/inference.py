"""The ``predict`` and ``demo`` subcommands."""

import argparse
import json

from deformvision.cli._common import _error, _json_object, _positive_int, config_file
from deformvision.demo import DEFAULT_MINUTES, DEFAULT_OUTPUT_DIR, TASKS, run_demo
from deformvision.engine import ConfigError
from deformvision.predict import load_predictor, predict_files

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
            "  deformvision predict --config deformable_detr_digits \\\n"
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
    source.add_argument(
        "--config", metavar="FILE", help="a YAML config or a recipe name (model, data and evaluation resize)"
    )
    source.add_argument("--model", metavar="NAME", help="a registered model name")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights (default: the run's, model.checkpoint, or with --model the published pretrained weights)",
    )
    parser.add_argument(
        "--output-dir", default="predictions", metavar="DIR", help="where to write (default: predictions)"
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.3, metavar="T", help="lowest detection score kept (default: 0.3)"
    )
    parser.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="classes per image (default: 5)")
    parser.add_argument(
        "--img-size",
        type=_positive_int,
        metavar="S",
        help="input side: detectors resize the shorter side to S (aug.val_size), classifiers crop S (data.img_size)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="config overrides, e.g. --set aug.max_size=1333 loss.num_select=50",
    )
    parser.add_argument(
        "--model-kwargs", type=_json_object, default={}, metavar="JSON", help="further model arguments (JSON object)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch (default: 8)"
    )
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (compile=default; other modes: --set compile=MODE)",
    )
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.img_size is not None:
        overrides += [f"aug.val_size={args.img_size}", f"data.img_size={args.img_size}"]
    if args.compile:
        overrides.append("compile=default")
    try:
        config = config_file(args.config) if args.config is not None else None
        predictor = load_predictor(
            run=args.run,
            config=config,
            model=args.model,
            checkpoint=args.checkpoint,
            overrides=overrides,
            model_kwargs=args.model_kwargs,
            device=args.device,
        )
        path = predict_files(
            predictor,
            args.inputs,
            args.output_dir,
            score_threshold=args.score_threshold,
            top_k=args.top_k,
            batch_size=args.batch_size,
        )
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
            "`deformvision eval` and `deformvision predict --run`; also checkpoints/ and last_checkpoint.json),\n"
            "metrics.json, log.jsonl, predictions/\n"
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
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="detection", help="what the model learns (default: detection)"
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help=f"where to write everything (default: ./{DEFAULT_OUTPUT_DIR})",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        metavar="M",
        help=f"training time budget in minutes (default: {DEFAULT_MINUTES:g})",
    )
    budget.add_argument("--epochs", type=_positive_int, metavar="N", help="train N epochs instead, however long")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="training seed (default: 0)")
    parser.add_argument(
        "--num-train",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="training canvases (default: 1000, the built-in set)",
    )
    parser.add_argument(
        "--num-val",
        type=_positive_int,
        default=200,
        metavar="N",
        help="validation canvases (default: 200, the built-in set)",
    )
    parser.add_argument("--threads", type=_positive_int, metavar="T", help="CPU threads (default: 1, fastest here)")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        _error("demo", f"--minutes must be positive, got {args.minutes:g}")
        return 2
    try:
        result = run_demo(
            args.output_dir,
            task=args.task,
            minutes=args.minutes,
            epochs=args.epochs,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            threads=args.threads,
        )
    except ValueError as err:  # e.g. an output directory holding another dataset
        _error("demo", str(err))
        return 1
    m = result.metrics
    if args.task == "detection":
        numbers = (
            f"COCO box AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  APs {m['APs']:.3f}  "
            f"APm {m['APm']:.3f}  AR100 {m['AR100']:.3f}"
        )
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
