"""Line plots with matplotlib (optional: ``pip install 'deformvision[plot]'``)."""

from pathlib import Path

from deformvision._atomic import atomic_write

MEASURES = ("cross_query", "cross_layer")


def plot_collapse(results: dict[str, dict[str, dict[str, float | None]]], path: str | Path) -> Path:
    """Write a DeepViT-style figure of attention collapse: similarity vs block depth, one line per model.

    Two panels, cross-query and cross-layer similarity (see :mod:`deformvision.analysis.collapse`); the
    x axis is the block's position in forward order (1-based); blocks with no value are skipped.

    Args:
        results: ``{model label: attention_collapse(...) output}``.
        path: the PNG to write.

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``results`` is empty.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the collapse plot needs matplotlib: pip install 'deformvision[plot]'") from error
    if not results:
        raise ValueError("results must hold at least one model, got none")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, measure in zip(axes, MEASURES, strict=True):
        for label, blocks in results.items():
            points = [(i + 1, entry[measure]) for i, entry in enumerate(blocks.values()) if entry[measure] is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
        axis.set_title(f"{measure.replace('_', '-')} similarity")
        axis.set_xlabel("block (forward order)")
        axis.set_ylabel("mean cosine similarity")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)
    return Path(path)
