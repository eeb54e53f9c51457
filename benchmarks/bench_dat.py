"""Speed and memory of a DAT model: forward and forward+backward, ours against the official code.

Prints a markdown table: median time over ``--repeats`` runs after a warm-up, and peak memory
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident memory above what it
held before the first run, measured in a fresh subprocess per row so rows do not share a peak).

The official implementation (LeapLabTHU/DAT, v1 at 566a593) is not part of deformvision. Pass
``--official-repo`` pointing at a checkout of it to time it in the same run with the same weights;
if timm is not installed, its three helpers used by the official model files are stood in for.

    python benchmarks/bench_dat.py --model dat_tiny --batch-sizes 1 8
    python benchmarks/bench_dat.py --official-repo ~/src/DAT --device cuda
"""

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

import deformvision as dv

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


def load_official_dat_class(repo: Path) -> type:
    """Import ``DAT`` from an official checkout's ``models/dat.py`` (standing in for timm if absent)."""
    if importlib.util.find_spec("timm") is None:
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = dv.layers.DropPath
        layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        layers.trunc_normal_ = nn.init.trunc_normal_
        for name, module in {
            "timm": types.ModuleType("timm"),
            "timm.models": types.ModuleType("timm.models"),
            "timm.models.layers": layers,
        }.items():
            sys.modules[name] = module
    sys.path.insert(0, str(repo))
    from models.dat import DAT  # noqa: PLC0415  (the official package, from the checkout)

    return DAT


def build(impl: str, model_name: str, official_repo: str | None) -> nn.Module:
    """Our registered model or the official one with the same configuration (random weights)."""
    torch.manual_seed(0)
    if impl == "ours":
        return dv.create_model(model_name)
    return load_official_dat_class(Path(official_repo))(**COMMON_OFFICIAL_ARGS, **OFFICIAL_CONFIGS[model_name])


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def measure(impl: str, model_name: str, batch: int, mode: str, device: str, repeats: int, official_repo: str | None):
    """Median seconds and peak memory (bytes) of one configuration."""
    model = build(impl, model_name, official_repo).to(device)
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

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    rss_before = current_rss()
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dat_tiny", choices=sorted(OFFICIAL_CONFIGS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--official-repo", default=None, help="checkout of LeapLabTHU/DAT (v1) to compare with")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (20 if args.device.startswith("cuda") else 3)

    if args.worker:  # one measurement, in its own process
        impl, batch, mode = args.worker.split(":")
        seconds, peak = measure(impl, args.model, int(batch), mode, args.device, repeats, args.official_repo)
        print(json.dumps({"seconds": seconds, "peak": peak}))
        return

    impls = ["ours"] + (["official"] if args.official_repo else [])
    rows = []
    for batch in args.batch_sizes:
        for mode in ("fwd", "fwd+bwd"):
            result = {}
            for impl in impls:
                cmd = [
                    sys.executable,
                    __file__,
                    "--model",
                    args.model,
                    "--device",
                    args.device,
                    "--repeats",
                    str(repeats),
                    "--worker",
                    f"{impl}:{batch}:{mode}",
                ]
                if args.official_repo:
                    cmd += ["--official-repo", args.official_repo]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                result[impl] = json.loads(out.strip().splitlines()[-1])
            rows.append((batch, mode, result))

    print(
        f"{args.model} at 224x224 on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {repeats})\n"
    )
    header = "| batch | pass | ours ms | ours peak MiB |"
    if args.official_repo:
        header += " official ms | official peak MiB | time ratio (official/ours) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for batch, mode, result in rows:
        ours = result["ours"]
        line = f"| {batch} | {mode} | {ours['seconds'] * 1e3:.1f} | {ours['peak'] / 2**20:.0f} |"
        if args.official_repo:
            off = result["official"]
            ratio = off["seconds"] / ours["seconds"]
            line += f" {off['seconds'] * 1e3:.1f} | {off['peak'] / 2**20:.0f} | {ratio:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
