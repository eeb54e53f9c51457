"""The ``analyze`` (attention collapse, HTML report) and ``viz`` (the papers' sampling pictures) subcommands."""

import argparse
import html
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from sklearn.datasets import load_digits
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from deformvision._atomic import save_image_atomic, write_json_atomic
from deformvision.analysis import attention_collapse, collapse
from deformvision.cli._common import _error, _positive_int
from deformvision.data._image import load_rgb
from deformvision.engine import build_transforms
from deformvision.layers import DeformableAttention
from deformvision.models import create_model, list_models
from deformvision.models.deformable_detr import DeformableDETR
from deformvision.predict import collect_images, load_predictor
from deformvision.viz import legible_scale
from deformvision.viz.figures import dat_figures, default_queries, detr_figure
from deformvision.viz.plots import plot_collapse
from deformvision.viz.report import html_table, write_html_report

DEFAULT_MODELS = ("dat_tiny", "vit_small_patch16_224", "swin_tiny_patch4_window7_224")
BUILTIN_IMAGES = 8


# --------------------------------------------------------------------------------------------------
# Models and images


def load_model_spec(spec: str, img_size: int) -> nn.Module:
    """A classifier from ``NAME[=pretrained|=CHECKPOINT]`` (ours or timm's), built for ``img_size``, in eval mode.

    Raises:
        ValueError: an unknown model name.
        FileNotFoundError: a missing checkpoint.
    """
    name, _, weights = spec.partition("=")
    pretrained = weights == "pretrained"
    checkpoint = weights if weights not in ("", "pretrained") else None
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"model {name}: no such checkpoint {checkpoint}")
    if name.partition(".")[0] in list_models():
        return create_model(name, pretrained=pretrained, checkpoint=checkpoint, img_size=img_size).eval()
    if timm.is_model(name):
        model = timm.create_model(name, pretrained=pretrained, img_size=img_size)
        if checkpoint is not None:
            timm.models.load_checkpoint(model, checkpoint)
        return model.eval()
    raise ValueError(f"unknown model {name!r} in {spec!r}: use one of ours ({', '.join(list_models())}) or timm's")


def builtin_images(count: int, img_size: int) -> list[tuple[str, Image.Image]]:
    """The built-in image set: the first ``count`` scikit-learn digits (8x8), light ink on a dark background,
    upscaled bilinearly to ``img_size``."""
    digits = load_digits().images[:count] / 16.0  # N, 8, 8 in [0, 1]
    images = []
    for index, digit in enumerate(digits):
        ink = np.asarray(Image.fromarray(digit.astype(np.float32)).resize((img_size, img_size), Image.BILINEAR))
        pixels = 40 + ink.clip(0, 1)[..., None] * np.array([200.0, 190.0, 150.0])  # H, W, 3
        images.append((f"digit_{index}", Image.fromarray(pixels.round().astype(np.uint8))))
    return images


def read_images(folder: str | None, count: int, img_size: int) -> list[tuple[str, Image.Image]]:
    """``(name, RGB image resized to img_size x img_size)`` of up to ``count`` images of ``folder`` (sorted),
    else of the built-in set."""
    if folder is None:
        return builtin_images(count, img_size)
    files = collect_images([folder])[:count]
    return [(f.name, load_rgb(f).resize((img_size, img_size), Image.BICUBIC)) for f in files]


def to_batch(images: list[tuple[str, Image.Image]], model: nn.Module) -> torch.Tensor:
    """``(N, 3, S, S)`` float batch normalised with the model's mean and std (ImageNet's by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", IMAGENET_DEFAULT_MEAN)).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", IMAGENET_DEFAULT_STD)).view(3, 1, 1)
    arrays = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1) for _, image in images]
    return (torch.stack(arrays) - mean) / std


def _weights_label(spec: str) -> str:
    weights = spec.partition("=")[2]
    return "random init" if not weights else weights


def _run_collapse_models(args: argparse.Namespace, images: list) -> tuple[dict[str, dict], dict[str, nn.Module]]:
    """The collapse entry of every model spec, and the models (random ones seeded with ``args.seed``)."""
    results, models = {}, {}
    for spec in args.model:
        torch.manual_seed(args.seed)
        model = models[spec] = load_model_spec(spec, args.img_size)
        print(f"{spec}: {len(images)} image(s) at {args.img_size}x{args.img_size}")
        blocks = attention_collapse(model, to_batch(images, model), batch_size=args.batch)
        results[spec] = {"model": spec.partition("=")[0], "weights": _weights_label(spec), "blocks": blocks}
    return results, models


def _collapse_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Per model: the mean cross-query and cross-layer similarity over blocks, first and last block."""
    header = ["model", "weights", "blocks", "cross-query mean", "first", "last", "cross-layer mean"]
    rows = []
    for entry in results.values():
        query = [b["cross_query"] for b in entry["blocks"].values() if b["cross_query"] is not None]
        layer = [b["cross_layer"] for b in entry["blocks"].values() if b["cross_layer"] is not None]
        rows.append(
            [
                entry["model"],
                entry["weights"],
                str(len(entry["blocks"])),
                f"{np.mean(query):.4f}",
                f"{query[0]:.4f}",
                f"{query[-1]:.4f}",
                f"{np.mean(layer):.4f}" if layer else "-",
            ]
        )
    return header, rows


# --------------------------------------------------------------------------------------------------
# analyze


def _add_analyze_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="attention collapse of models on images; an HTML report",
        description="Measure attention collapse (DeepViT) and draw where deformable attention looks.",
        epilog=(
            "models: NAME, NAME=pretrained or NAME=CHECKPOINT; NAME is one of ours or a timm model\n"
            "example: deformvision analyze collapse --model dat_tiny vit_small_patch16_224 --out collapse/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="analyses", dest="analysis", required=True, metavar="ANALYSIS")
    for name, help_text in (
        ("collapse", "cross-query and cross-layer attention similarity per block: collapse.json, collapse.png"),
        ("report", "one HTML page: the collapse plot and table, and the deformable sampling pictures"),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--model",
            nargs="+",
            default=list(DEFAULT_MODELS),
            metavar="SPEC",
            help=f"models (default: {' '.join(DEFAULT_MODELS)}, random init)",
        )
        sub.add_argument("--images", metavar="DIR", help="a folder of images (default: the built-in digits)")
        sub.add_argument(
            "--num-images",
            type=_positive_int,
            default=BUILTIN_IMAGES,
            metavar="N",
            help=f"images used, the first N (default: {BUILTIN_IMAGES})",
        )
        sub.add_argument("--img-size", type=_positive_int, default=224, metavar="S", help="input side (default 224)")
        sub.add_argument("--batch", type=_positive_int, default=4, metavar="B", help="images per forward pass")
        sub.add_argument("--seed", type=int, default=0, help="seed of random-init models (default: 0)")
        sub.add_argument("--out", type=Path, default=Path("analysis"), metavar="DIR", help="output folder")
        sub.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    try:
        images = read_images(args.images, args.num_images, args.img_size)
        results, models = _run_collapse_models(args, images)
    except (ValueError, OSError, RuntimeError) as error:
        _error(f"analyze {args.analysis}", str(error))
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"images": [name for name, _ in images], "img_size": args.img_size, "models": results}
    write_json_atomic(args.out / "collapse.json", summary)
    try:
        plot = plot_collapse(
            {f"{e['model']} ({e['weights']})": e["blocks"] for e in results.values()}, args.out / "collapse.png"
        )
    except ImportError as error:
        _error(f"analyze {args.analysis}", f"{error} (collapse.json is written)")
        return 2
    header, rows = _collapse_table(results)
    print("| " + " | ".join(header) + " |\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows))
    written = [args.out / "collapse.json", plot]
    if args.analysis == "report":
        written.append(_write_report(args.out / "report.html", images, models, plot, header, rows))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _write_report(path: Path, images: list, models: dict[str, nn.Module], plot: Path, header: list, rows: list) -> Path:
    definitions = "<pre>" + html.escape((collapse.__doc__ or "").strip()) + "</pre>"
    sections = [("Attention collapse", html_table(header, rows) + definitions, [plot])]
    for spec, model in models.items():
        if not any(isinstance(m, DeformableAttention) for m in model.modules()):
            continue
        batch = to_batch(images, model)
        for (name, image), x in zip(images[:2], batch, strict=False):
            figures = dat_figures(model, x, image, default_queries(image), k=8, scale=legible_scale(image, 448))
            for block, points, top in figures:
                sections.append((f"{spec}, {block}: deformed points and top keys on {name}", "", [points, top]))
    return write_html_report(path, "deformvision analysis", sections)


# --------------------------------------------------------------------------------------------------
# viz


def _query(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"a query must be X,Y in pixels, got {text!r}") from error
    return x, y


def _add_viz_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="draw where deformable attention looks (DAT points and top keys, Deformable DETR sampling)",
        description=(
            "For each image: a DAT's deformed points and the top-k keys of chosen queries per deformable\n"
            "block (<image>_dat_<block>_{points,top_keys}.png), and for a Deformable DETR the last decoder\n"
            "layer's sampling points of its best queries coloured by level (<image>_detr.png)."
        ),
        epilog="example: deformvision viz photo.jpg --model dat_tiny=dat_tiny.pth --query 100,80",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="SPEC", help="a classifier: NAME, NAME=pretrained or NAME=CHECKPOINT")
    source.add_argument("--run", metavar="DIR", help="a training run directory (e.g. a Deformable DETR)")
    source.add_argument("--config", metavar="YAML", help="a config; weights from --checkpoint or the config")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights for --run / --config")
    parser.add_argument("--img-size", type=_positive_int, default=224, metavar="S", help="classifier input side")
    parser.add_argument(
        "--query",
        type=_query,
        action="append",
        metavar="X,Y",
        help="a DAT query position in pixels of the model input (repeatable; default: 3)",
    )
    parser.add_argument("--top-k", type=_positive_int, default=8, metavar="K", help="keys per DAT query")
    parser.add_argument("--max-queries", type=_positive_int, default=5, metavar="Q", help="detector queries drawn")
    parser.add_argument("--out", type=Path, default=Path("viz"), metavar="DIR", help="output folder")
    parser.set_defaults(func=_run_viz)


def _run_viz(args: argparse.Namespace) -> int:
    try:
        files = collect_images(args.images)
        if args.model is not None:
            model, config = load_model_spec(args.model, args.img_size), None
        else:
            predictor = load_predictor(run=args.run, config=args.config, checkpoint=args.checkpoint, device="cpu")
            model, config = predictor.model, predictor.config
        backbone = model.backbone if isinstance(model, DeformableDETR) else model
        has_dat = any(isinstance(m, DeformableAttention) for m in backbone.modules())
        if not has_dat and not isinstance(model, DeformableDETR):
            raise ValueError(f"{type(model).__name__} has no deformable attention to draw (a DAT or Deformable DETR)")
        args.out.mkdir(parents=True, exist_ok=True)
        for file in files:
            for path in _viz_image(args, model, config, backbone, has_dat, file):
                print(f"wrote {path}")
    except (ValueError, OSError, RuntimeError) as error:
        _error("viz", str(error))
        return 2
    return 0


def _viz_image(args, model: nn.Module, config, backbone: nn.Module, has_dat: bool, file: Path) -> list[Path]:
    image = load_rgb(file)
    if config is None:  # a classifier by name: a square input
        image = image.resize((args.img_size, args.img_size), Image.BICUBIC)
        x = to_batch([(file.name, image)], model)[0]
    else:  # the run's or config's evaluation transform
        transform = build_transforms(config, train=False)
        x = transform(image) if config.data.task == "classification" else transform(image, {})[0]
        image = image.resize((x.shape[-1], x.shape[-2]), Image.BILINEAR)
    scale = legible_scale(image, 448)
    written = []
    if has_dat:
        figures = dat_figures(backbone, x, image, args.query or default_queries(image), args.top_k, scale)
        for block, points, top in figures:
            for kind, panel in (("points", points), ("top_keys", top)):
                written.append(args.out / f"{file.stem}_dat_{block}_{kind}.png")
                save_image_atomic(panel, written[-1])
    if isinstance(model, DeformableDETR):
        written.append(args.out / f"{file.stem}_detr.png")
        save_image_atomic(detr_figure(model, x, image, args.max_queries, scale), written[-1])
    return written
