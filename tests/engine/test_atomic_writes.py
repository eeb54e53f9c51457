"""A process SIGKILLed in the middle of each kind of file write leaves the previous file intact.

Each case writes a previous version of a file with the library, then runs the real library function that
replaces it in a child process (forked: no second import of torch), whose ``os.replace`` of that file
signals the parent and sleeps: the new content is written beside the target but not in place. The parent
kills the child there and checks that the previous file is byte-identical and that only hidden
temporaries (``.<name>.tmp-<pid>``) were left. A non-atomic writer never calls ``os.replace`` on the
target, so its case fails (the child never signals). The download case instead stalls the HTTP body
half-way, so the child is killed while it is writing the payload.
"""

import hashlib
import http.server
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_utils import TINY_DAT, tiny_config
from PIL import Image
from safetensors.torch import save_file

from deformvision.convert import convert_checkpoint
from deformvision.demo import run_demo
from deformvision.engine.checkpoint import POINTER, CheckpointManager, find_checkpoint
from deformvision.engine.config import config_from_dict, save_config
from deformvision.models import create_model
from deformvision.models._pretrained import cached_weights, weights_path
from deformvision.predict import Predictor, predict_files
from deformvision.viz.plots import plot_collapse
from deformvision.viz.report import write_html_report

SIGNAL_FILE = "blocked"  # written by the child into the case's folder once it is inside the write
TIMEOUT_S = 120


def _block_on_replace_of(target_name: str, folder: Path) -> None:
    """In the child: ``os.replace(src, dst)`` with ``dst`` named ``target_name`` signals and sleeps."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target_name:
            (folder / SIGNAL_FILE).write_text(str(src))
            time.sleep(TIMEOUT_S)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _child(write: Callable[[], None], target_name: str | None, folder: Path) -> None:
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    if target_name is not None:
        _block_on_replace_of(target_name, folder)
    write()


def _kill_inside(write: Callable[[], None], folder: Path, target_name: str | None, inside: Callable[[], bool]) -> None:
    """Run ``write`` in a forked child and SIGKILL it once ``inside()`` holds."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(write, target_name, folder))
    child.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not inside() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    reached = inside()
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert reached, f"the child finished (exit code {child.exitcode}) without writing through os.replace"
    assert child.exitcode == -signal.SIGKILL


def _snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def _assert_only_temporaries_beside(target: Path) -> None:
    """Beside ``target``, nothing of its name but hidden temporaries ``.<name>.tmp-<pid>``."""
    others = [p.name for p in target.parent.iterdir() if target.name in p.name and p != target]
    assert all(name.startswith(f".{target.name}.tmp-") for name in others), others


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((64, 64), value), "layer.bias": torch.arange(64.0) + value}


# --------------------------------------------------------------------------------------------------
# One case per kind of file: write the previous version; return the new write and the files it must keep


def _config_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    target = tmp / "config.yaml"
    save_config(config_from_dict(tiny_config(tmp / "data", tmp, seed=0)), target)
    new = config_from_dict(tiny_config(tmp / "data", tmp, seed=1))
    return lambda: save_config(new, target), [target]


def _checkpoint_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    manager = CheckpointManager(tmp, keep=2)
    manager.save(_weights(1.0), {"epoch": 0, "global_step": 1}, step=1)
    kept = [tmp / POINTER, *sorted((tmp / "checkpoints").iterdir())]
    return lambda: manager.save(_weights(2.0), {"epoch": 1, "global_step": 2}, step=2), kept


def _convert_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    kwargs = {**TINY_DAT, "num_classes": 3}
    sources = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        sources.append(tmp / f"source{seed}.safetensors")
        save_file(create_model("dat_tiny", **kwargs).state_dict(), str(sources[-1]))
    target = tmp / "converted.safetensors"
    convert_checkpoint(sources[0], target, model="dat_tiny", model_kwargs=kwargs)
    return lambda: convert_checkpoint(sources[1], target, model="dat_tiny", model_kwargs=kwargs), [target]


def _predictions_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    config = config_from_dict(tiny_config(tmp / "data", tmp / "run"))
    torch.manual_seed(0)
    model = create_model("dat_tiny", **TINY_DAT, num_classes=3).eval()
    predictor = Predictor(model, config, ["red", "green", "blue"], torch.device("cpu"))
    images = []
    for i, colour in enumerate(("red", "blue")):
        images.append(tmp / f"{i}.png")
        Image.new("RGB", (32, 32), colour).save(images[-1])
    out = tmp / "predictions"
    target = predict_files(predictor, images[:1], out, top_k=1)
    return lambda: predict_files(predictor, images, out, top_k=2), [target]


_BLOCKS = {
    "stages.0.blocks.0": {"cross_query": 0.9, "cross_layer": None},
    "stages.0.blocks.1": {"cross_query": 0.8, "cross_layer": 0.7},
}


def _report_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    report = write_html_report(tmp / "report.html", "earlier", [("one", "<p>earlier</p>", [])])
    return lambda: write_html_report(report, "new", [("two", "<p>new</p>", [Image.new("RGB", (8, 8))])]), [report]


def _plot_case(tmp: Path) -> tuple[Callable[[], None], list[Path]]:
    plot = plot_collapse({"earlier": _BLOCKS}, tmp / "collapse.png")
    return lambda: plot_collapse({"new": _BLOCKS}, plot), [plot]


CASES = {  # kind: (case, the file the new write is killed in, relative to the case's folder)
    "config.yaml": (_config_case, "config.yaml"),
    "checkpoint weights": (_checkpoint_case, "checkpoints/step_000000002.safetensors"),
    "training state": (_checkpoint_case, "checkpoints/step_000000002.state.pt"),
    "last-checkpoint pointer": (_checkpoint_case, POINTER),
    "converted weights": (_convert_case, "converted.safetensors"),
    "predictions.json": (_predictions_case, "predictions/predictions.json"),
    "analysis report": (_report_case, "report.html"),
    "collapse plot": (_plot_case, "collapse.png"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_sigkill_during_a_write_keeps_the_previous_file(kind, tmp_path):
    make_case, relative_target = CASES[kind]
    write_new, kept = make_case(tmp_path)
    before = _snapshot(kept)
    target = tmp_path / relative_target
    _kill_inside(write_new, tmp_path, target.name, lambda: (tmp_path / SIGNAL_FILE).exists())

    temporary = Path((tmp_path / SIGNAL_FILE).read_text())
    assert temporary.parent == target.parent and temporary.name.startswith(f".{target.name}.tmp-")
    assert temporary.stat().st_size > 0  # killed with the new content written, not yet in place
    assert _snapshot(kept) == before  # byte-identical: the previous file(s), nothing partial at their names
    _assert_only_temporaries_beside(target)
    if target.name not in {p.name for p in kept}:  # a new checkpoint's file: none at its name
        assert not target.exists()
    if _checkpoint_case is make_case:  # the pointer still names the complete previous pair
        assert set(find_checkpoint(tmp_path)) <= set(kept)


def test_sigkill_during_the_demo_metrics_write_leaves_no_partial_file(tmp_path):
    """The demo's last write, ``metrics.json``: killed inside it, no file at its name (an earlier demo's
    metrics were removed when the new run started, with its other run files: see ``run_dir.RUN_FILES``)."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"an": "earlier demo"}\n')

    def demo() -> None:
        run_demo(out, task="semantic", epochs=1, num_train=8, num_val=2, log=lambda line: None)

    _kill_inside(demo, tmp_path, "metrics.json", lambda: (tmp_path / SIGNAL_FILE).exists())
    assert not (out / "metrics.json").exists()
    _assert_only_temporaries_beside(out / "metrics.json")
    temporary = Path((tmp_path / SIGNAL_FILE).read_text())
    assert temporary.parent == out and temporary.name.startswith(".metrics.json.tmp-")
    assert (out / "model_final.safetensors").is_file() and (out / "predictions" / "predictions.json").is_file()


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``: half of it, then waits for ``release`` before the rest."""

    payload = b""
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        half = len(self.payload) // 2
        try:
            self.wfile.write(self.payload[:half])
            self.wfile.flush()
            self.release.wait(TIMEOUT_S)
            self.wfile.write(self.payload[half:])
        except (BrokenPipeError, ConnectionResetError):  # the killed client
            pass

    def log_message(self, *args) -> None:
        pass


def test_sigkill_during_a_weights_download_leaves_no_partial_file(tmp_path):
    """Killed with half of the body written: nothing at the cache's name; the next call downloads it whole."""
    payload = bytes(range(256)) * (3 << 12)  # 3 MiB: the first 1 MiB chunk is written before the stall
    _StallingHandler.payload = payload
    _StallingHandler.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/w.pth#sha256={hashlib.sha256(payload).hexdigest()}"
        cache = tmp_path / "cache"
        cache.mkdir()
        target = weights_path(url, "tiny", cache)

        def half_written() -> bool:
            return any(p.stat().st_size >= len(payload) // 3 for p in cache.glob(f".{target.name}.tmp-*"))

        _kill_inside(lambda: cached_weights(url, "tiny", cache, progress=False), tmp_path, None, half_written)
        assert not target.exists()
        _assert_only_temporaries_beside(target)
        _StallingHandler.release.set()
        assert cached_weights(url, "tiny", cache, progress=False).read_bytes() == payload  # temporaries ignored
    finally:
        _StallingHandler.release.set()
        server.shutdown()
