"""``deformvision flops`` on a detector: counted by a real forward pass (NMS has no meta-device version)."""

import pytest

from deformvision.cli import main


def test_flops_cli_counts_a_detector(capsys) -> None:
    assert main(["flops", "mask_rcnn_dat_tiny", "--input-size", "64", "96"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["mask_rcnn_dat_tiny", "1x3x64x96", "47.830"]
    assert float(cells[3]) == pytest.approx(sum(float(c) for c in cells[4:]), abs=0.002)
    assert float(cells[3]) > 100  # the detector resizes the 64x96 input to 800x1200 before counting
