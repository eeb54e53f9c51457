"""Speed and memory of a DAT model: forward and forward+backward, ours (eager, optionally compiled) against
the official code.

Times: per batch size and pass, every implementation is built in one fresh process and they take turns
for ``repeats`` rounds after a warm-up (a busy machine slows them alike); the table gives the median and the
range. Peak memory: each implementation in a fresh process of its own; the peak of live tensors during a
second step (:func:`~deformvision.bench.measure.peak_memory`, the analogue of CUDA's
``max_memory_allocated``) and, in brackets, the process's peak resident memory over the first two steps,
which also counts what the C allocator holds after frees (on CPU it varies from run to run with the heap's
fragmentation). With ``compile`` our model also runs through ``torch.compile`` (Inductor); its first call,
which compiles, is reported on its own.

The official implementation (LeapLabTHU/DAT, v1 at 566a593) is not part of deformvision: ``official_repo``
points at a checkout of it, timed with the same configuration.
"""

import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deformvision.bench.measure import check_device, check_repeats, peak_memory, round_times, sync
from deformvision.models import create_model

OFFICIAL_CONFIGS = {  # the official constructor arguments of the registered variants (configs/*.yaml)
    "dat_tiny": dict(
        dims=[96, 192, 384, 768],
        depths=[2, 2, 6, 2],
        heads=[3, 6, 12, 24],
        groups=[-1, -1, 3, 6],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D"] * 3, ["L", "D"]],
        drop_path_rate=0.2,
    ),
    "dat_small": dict(
        dims=[96, 192, 384, 768],
        depths=[2, 2, 18, 2],
        heads=[3, 6, 12, 24],
        groups=[-1, -1, 3, 6],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D"] * 9, ["L", "D"]],
        drop_path_rate=0.3,
    ),
    "dat_base": dict(
        dims=[128, 256, 512, 1024],
        depths=[2, 2, 18, 2],
        heads=[4, 8, 16, 32],
        groups=[-1, -1, 4, 8],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D"] * 9, ["L", "D"]],
        drop_path_rate=0.5,
    ),
}
COMMON_OFFICIAL_ARGS = dict(
    img_size=224,
    patch_size=4,
    num_classes=1000,
    expansion=4,
    window_sizes=[7, 7, 7, 7],
    strides=[-1, -1, 1, 1],
    offset_range_factor=[-1, -1, 2, 2],
    use_pes=[False, False, True, True],
    dwc_pes=[False] * 4,
    sr_ratios=[-1, -1, -1, -1],
    no_offs=[False] * 4,
    fixed_pes=[False] * 4,
    use_dwc_mlps=[False] * 4,
    use_conv_patches=False,
    drop_rate=0.0,
    attn_drop_rate=0.0,
)
MODES = ("fwd", "fwd+bwd")


def check_official_repo(repo: str | Path) -> Path:
    """The checkout's path, once its ``DAT`` imports: FileNotFoundError if it has no ``models/dat.py``,
    ModuleNotFoundError naming the package to install if the official code needs one that is missing."""
    path = Path(repo)
    if not (path / "models" / "dat.py").is_file():
        raise FileNotFoundError(f"official_repo {str(repo)!r} is not a LeapLabTHU/DAT checkout: no models/dat.py in it")
    load_official_dat_class(path)
    return path


def load_official_dat_class(repo: Path) -> type:
    """Import ``DAT`` from an official checkout's ``models/dat.py``. It imports ``timm.models.layers``, which
    timm, a dependency of deformvision, still provides, and ``einops``, which the user installs."""
    sys.path.insert(0, str(repo))
    try:
        from models.dat import DAT  # noqa: PLC0415  (the official package, from the checkout)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "models":
            raise
        package = err.name.split(".")[0]
        raise ModuleNotFoundError(
            f"the official DAT code in {str(repo)!r} imports {err.name!r}, which is not installed: "
            f"pip install {package}",
            name=err.name,
        ) from err
    return DAT


def build(impl: str, model_name: str, official_repo: str | None) -> nn.Module:
    """Our registered model (``ours``, ``ours compiled``) or the official one with its configuration (random
    weights)."""
    torch.manual_seed(0)
    if impl == "official":
        return load_official_dat_class(Path(official_repo))(**COMMON_OFFICIAL_ARGS, **OFFICIAL_CONFIGS[model_name])
    model = create_model(model_name)
    return torch.compile(model) if impl == "ours compiled" else model


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def make_step(model: nn.Module, batch: int, mode: str, device: str) -> Callable[[], None]:
    """One ``fwd`` (eval, no gradients) or ``fwd+bwd`` (train, backward of the mean logit) call of ``model``."""
    model.train(mode == "fwd+bwd")
    x = torch.randn(batch, 3, 224, 224, device=device)

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                model(x)
        else:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out  # the official forward returns a tuple
            logits.float().mean().backward()
            model.zero_grad(set_to_none=True)

    return step


def interleaved_times(
    impls: list[str],
    model_name: str,
    batch: int,
    mode: str,
    device: str,
    repeats: int,
    official_repo: str | None,
    threads: int,
) -> list[list[float]]:
    """Seconds of ``repeats`` steps of every implementation, built in this process and taking turns
    (:func:`~deformvision.bench.measure.round_times`, after one warm-up call each)."""
    torch.set_num_threads(threads)
    steps = [make_step(build(impl, model_name, official_repo).to(device), batch, mode, device) for impl in impls]
    return round_times(steps, device, repeats)


def peak_and_first_call(
    impl: str, model_name: str, batch: int, mode: str, device: str, official_repo: str | None, threads: int
) -> dict[str, float]:
    """One implementation's peak memory (bytes) and its first call's seconds.

    ``peak``: the live-tensor peak of a second step (:func:`~deformvision.bench.measure.peak_memory`: CUDA
    ``max_memory_allocated``, CPU the allocator's live bytes). ``rss``: the process's peak resident memory over
    the first two steps above what it held before them (CPU; on CUDA the same as ``peak``), which also counts
    what the C allocator keeps after frees.
    """
    torch.set_num_threads(threads)
    step = make_step(build(impl, model_name, official_repo).to(device), batch, mode, device)
    rss_before = current_rss()
    start = time.perf_counter()
    step()  # warm-up (compiled: compiles)
    sync(device)
    first = time.perf_counter() - start
    peak = peak_memory(step, device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before if device == "cpu" else peak
    return {"peak": peak, "rss": rss, "first": first}


def in_new_process(fn: Callable, *args: object) -> object:
    """``fn(*args)`` in a fresh (spawned) Python process: its own peak memory, no state of earlier rows."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run(
    model: str = "dat_tiny",
    batch_sizes: tuple[int, ...] = (1, 8),
    device: str = "cpu",
    repeats: int = 3,
    official_repo: str | None = None,
    compiled: bool = False,
    threads: int | None = None,
) -> None:
    """Print the table: per batch size and pass, the time and peak memory of ours, with ``compiled`` of ours
    through ``torch.compile`` too, with ``official_repo`` of the official model; ``threads``: torch's CPU
    threads in every row's process (default: this process's count)."""
    if model not in OFFICIAL_CONFIGS:
        raise ValueError(f"model must be one of {', '.join(OFFICIAL_CONFIGS)}, got {model!r}")
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    check_device(device)
    check_repeats(repeats)
    if official_repo is not None:
        official_repo = str(check_official_repo(official_repo))
    threads = threads or torch.get_num_threads()
    impls = ["ours"] + (["ours compiled"] if compiled else []) + (["official"] if official_repo else [])
    print(
        f"{model} at 224x224 on {device} (torch {torch.__version__}, {threads} threads, median of {repeats} "
        f"interleaved rounds, min-max in brackets; peak memory of live tensors (process peak RSS) of each in its own "
        f"process)\n"
    )
    header = "| batch | pass |" + "".join(f" {impl} ms | {impl} peak MiB (RSS) |" for impl in impls)
    header += "".join(f" time {impl}/ours | peak ours/{impl} |" for impl in impls[1:])
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    first_calls = []
    for batch in batch_sizes:
        for mode in MODES:
            times = in_new_process(
                interleaved_times, impls, model, batch, mode, device, repeats, official_repo, threads
            )
            peaks = {
                impl: in_new_process(peak_and_first_call, impl, model, batch, mode, device, official_repo, threads)
                for impl in impls
            }
            medians = [statistics.median(t) for t in times]
            line = f"| {batch} | {mode} |"
            for impl, impl_times, median in zip(impls, times, medians, strict=True):
                spread = f"{median * 1e3:.1f} ({min(impl_times) * 1e3:.0f}-{max(impl_times) * 1e3:.0f})"
                line += f" {spread} | {peaks[impl]['peak'] / 2**20:.0f} ({peaks[impl]['rss'] / 2**20:.0f}) |"
            for impl, median in zip(impls[1:], medians[1:], strict=True):
                line += f" {median / medians[0]:.2f} | {peaks['ours']['peak'] / peaks[impl]['peak']:.2f} |"
            print(line, flush=True)
            if compiled:
                first_calls.append(f"batch {batch} {mode}: {peaks['ours compiled']['first']:.1f} s")
    if first_calls:
        print("\ntorch.compile first call (compilation, not in the times above): " + "; ".join(first_calls))
