"""The ``deformvision`` command line: the ``flops`` subcommand."""

import shutil
import subprocess

import pytest

from deformvision.cli import main


def test_flops_prints_a_markdown_table(capsys):
    assert main(["flops", "dat_tiny", "--input-size", "64", "96", "--batch", "2"]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "model",
        "input",
        "params (M)",
        "GMACs",
        "conv",
        "linear",
        "matmul",
        "sampling",
    ]
    assert set(rule) <= set("|-: ")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["dat_tiny", "2x3x64x96", "28.319"]
    assert float(cells[3]) == pytest.approx(sum(float(c) for c in cells[4:]), abs=0.002)


def test_flops_console_script():
    script = shutil.which("deformvision")
    if script is None:
        pytest.skip("console script not installed (pip install -e .)")
    result = subprocess.run([script, "flops", "dat_tiny", "--img-size", "64"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| dat_tiny" in result.stdout and "1x3x64x64" in result.stdout


def test_flops_unknown_model(capsys):
    assert main(["flops", "dat_tiny", "dat_huge"]) != 0
    err = capsys.readouterr().err
    assert "unknown model(s): dat_huge" in err and "dat_tiny" in err
    assert "Traceback" not in err


def test_flops_input_too_small(capsys):
    assert main(["flops", "dat_tiny", "--img-size", "16"]) != 0
    err = capsys.readouterr().err
    assert "dat_tiny at 16x16" in err and "at least 32" in err


def test_flops_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--img-size" in out and "--input-size" in out and "--batch" in out and "dat_base_384" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", "dat_tiny", "--img-size", "64", "--input-size", "64", "64"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
