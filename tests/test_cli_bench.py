"""``deformvision bench``: the tables print with their columns on tiny sizes, bad arguments exit 2 with a clear
message, the benchmark scripts run the same code, and the memory measurement sees a known allocation."""

import runpy
import sys
from pathlib import Path

import pytest
import torch

from deformvision.bench.measure import peak_memory
from deformvision.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_DEFORM_CONV = ["--batch", "1", "--channels", "4", "--out-channels", "4", "--size", "8", "--repeats", "1"]
COLUMNS = ["pass", "mask", "deformvision ms", "torchvision ms", "speed-up", "ours peak MB", "tv peak MB"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """``--threads`` (and the script's default of 1) set the thread count process-wide: undo it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(text: str) -> tuple[str, list[list[str]]]:
    """The header line and the cells of each row (columns are separated by two or more spaces)."""
    lines = text.strip().splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) == {"-"})
    return lines[rule - 1], [line.replace(" (grad)", "_(grad)").split() for line in lines[rule + 1 :]]


def test_bench_deform_conv_prints_the_table(capsys):
    assert main(["bench", "deform-conv", "--device", "cpu", "--threads", "1", *TINY_DEFORM_CONV]) == 0
    out = capsys.readouterr().out
    assert out.startswith("input (1, 4, 8, 8), 3x3 kernel, 4 out channels, offset_groups=1, float32 on cpu, 1 thread")
    header, rows = table_rows(out)
    assert [header.find(column) >= 0 for column in COLUMNS] == [True] * len(COLUMNS)
    assert [(row[0], row[1]) for row in rows] == [
        (mode, mask) for mode in ("fwd", "fwd_(grad)", "fwd+bwd") for mask in ("no", "yes")
    ]
    for row in rows:
        ours, theirs, speed_up = float(row[2]), float(row[3]), float(row[4].rstrip("x"))
        # the speed-up comes from the unrounded times: each printed time is within 0.05 ms of its own
        low, high = (theirs - 0.05) / (ours + 0.05), (theirs + 0.05) / max(ours - 0.05, 1e-9)
        assert low - 0.005 <= speed_up <= high + 0.005
        assert float(row[5]) > 0 and float(row[6]) >= 0


def test_bench_deform_conv_without_memory_columns(capsys):
    assert main(["bench", "deform-conv", "--device", "cpu", "--no-memory", *TINY_DEFORM_CONV]) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert "peak" not in header and len(rows) == 6 and all(len(row) == 5 for row in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deform-conv", "--repeats", "0"], "--repeats: must be a positive integer, got 0"),
        (["deform-conv", "--size", "-8"], "--size: must be a positive integer, got -8"),
        (["deform-conv", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["deform-conv", "--channels", "4", "--offset-groups", "3", "--size", "4", "--repeats", "1"], "divisible"),
        (["msda", "--workloads", "backbone"], "argument --workloads: invalid choice: 'backbone'"),
        (["dat", "--model", "dat_huge"], "argument --model: invalid choice: 'dat_huge'"),
        (["dat", "--official-repo", "no/such/dir"], "'no/such/dir' is not a LeapLabTHU/DAT checkout"),
        (["nbody"], "argument BENCH: invalid choice: 'nbody'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    try:
        code = main(["bench", *argv])
    except SystemExit as exit_:  # argparse refuses before running
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert main(["bench", "deform-conv", "--device", "cuda", *TINY_DEFORM_CONV]) == 2
    assert "device cuda: this machine has no CUDA device" in capsys.readouterr().err


def test_bench_detr_without_transformers_names_the_dependency(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # an import of it fails, as when not installed
    assert main(["bench", "detr", "--device", "cpu", "--size", "64", "--repeats", "1"]) == 2
    assert "bench detr needs transformers" in capsys.readouterr().err


def test_script_is_a_wrapper_of_the_command(monkeypatch, capsys):
    script = REPO / "benchmarks" / "bench_deform_conv.py"
    monkeypatch.setattr(sys, "argv", [str(script), *TINY_DEFORM_CONV, "--no-memory"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "1 thread(s)" in out  # the script's default, on the command's code
    assert len(table_rows(out)[1]) == 6


def test_peak_memory_sees_a_known_allocation():
    def allocate() -> None:
        a = torch.ones(1024, 1024)  # 4 MiB, live together with b
        b = torch.ones(512, 1024)  # 2 MiB
        del a, b
        torch.ones(256, 1024)  # 1 MiB, after both were freed

    peak = peak_memory(allocate, "cpu")
    assert 6 * 2**20 <= peak < 6 * 2**20 + 2**16


def test_bench_detr_compares_the_same_weights_and_prints_a_row_per_case(capsys):
    """Both full-size models are built with the same weights (a mismatch raises), and each case gets a row whose
    ratio is the printed median times' quotient."""
    pytest.importorskip("transformers")
    argv = ["bench", "detr", "--size", "64", "--variants", "multi_scale", "--cases", "inference", "train"]
    assert main([*argv, "--repeats", "1", "--no-memory", "--threads", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| multi")]
    assert [(row[0].strip(), row[1].strip()) for row in rows] == [
        ("multi_scale", "inference"),
        ("multi_scale", "train"),
    ]
    for row in rows:
        ours, theirs = (float(cell.split("(")[0]) for cell in row[2:4])
        assert float(row[4]) == pytest.approx(theirs / ours, rel=0.05)  # the printed ms are rounded


def test_bench_detr_refuses_a_bad_size(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "detr", "--size", "16x16"])
    assert "must be HxW" in capsys.readouterr().err


def test_bench_primitives_prints_a_row_per_layer_and_pass(monkeypatch, capsys):
    from deformvision.bench import primitives

    # small rows of every kind, so that the test checks the table and not the machine
    monkeypatch.setattr(
        primitives, "LINEAR_ROWS", (("M", "fc gelu", 64, 8, 32, "gelu"), ("M", "fc", 64, 32, 8, "none"))
    )
    monkeypatch.setattr(primitives, "FFN_ROWS", (("M", "ffn", 64, 8, 32, 0.1),))
    monkeypatch.setattr(primitives, "DROPOUT_ROWS", (("M", "drop", 64, 8, 0.1),))
    assert main(["bench", "primitives", "--device", "cpu", "--threads", "1", "--repeats", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = lines[0], [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    assert header.startswith("| model | layer |") and header.endswith("| torch / ours |")
    assert [(row[1], row[2], row[3]) for row in rows] == [
        (layer, size, pass_name)
        for layer, size in [
            ("fc gelu", "64 x 8 -> 32 (gelu)"),
            ("fc", "64 x 32 -> 8 (none)"),
            ("ffn", "64 x 8 -> 32"),
            ("drop", "64 x 8"),
        ]
        for pass_name in ("fwd", "fwd+bwd")
    ]
    assert all(float(row[6]) > 0 for row in rows)


def test_bench_dat_names_a_package_the_official_code_needs(tmp_path, monkeypatch, capsys):
    """A checkout whose models/dat.py imports a package that is not installed (the official code needs einops)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dat.py").write_text("import deformvision_no_such_package\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader puts the checkout first; undone after the test
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        assert main(["bench", "dat", "--official-repo", str(tmp_path)]) == 2
    finally:
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]  # the fake checkout's package must not serve a later import
    err = capsys.readouterr().err
    assert "imports 'deformvision_no_such_package', which is not installed" in err
    assert "pip install deformvision_no_such_package" in err
