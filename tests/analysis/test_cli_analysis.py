"""The analyze and viz subcommands on small random-init models: JSON keys and values, valid PNG and HTML files."""

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deformvision.cli import main

DAT_TINY_BLOCKS = [f"stages.{i}.blocks.{j}" for i, depth in enumerate((2, 2, 6, 2)) for j in range(depth)]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / name)
    return folder


def assert_png(path: Path, min_size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1]
    return image


def test_analyze_collapse_writes_json_and_plot(image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    args = ["analyze", "collapse", "--model", "dat_tiny", "vit_tiny_patch16_224", "--images", str(image_folder)]
    assert main([*args, "--img-size", "64", "--batch", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "collapse.json").read_text())
    assert summary["images"] == ["a.png", "b.jpg"] and summary["img_size"] == 64
    assert list(summary["models"]) == ["dat_tiny", "vit_tiny_patch16_224"]
    dat, vit = summary["models"]["dat_tiny"], summary["models"]["vit_tiny_patch16_224"]
    assert dat["weights"] == "random init" and dat["model"] == "dat_tiny"
    assert list(dat["blocks"]) == DAT_TINY_BLOCKS
    assert list(vit["blocks"]) == [f"blocks.{i}" for i in range(12)]
    assert vit["blocks"]["blocks.0"]["cross_layer"] is None
    for entry in [*dat["blocks"].values(), *vit["blocks"].values()]:
        assert 0.0 < entry["cross_query"] <= 1.0 + 1e-9
    assert all(vit["blocks"][f"blocks.{i}"]["cross_layer"] is not None for i in range(1, 12))
    assert_png(out / "collapse.png", (600, 300))
    assert "| dat_tiny | random init | 12 |" in capsys.readouterr().out


def test_analyze_report_embeds_the_plot_and_the_dat_pictures(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["analyze", "report", "--model", "dat_tiny", "--images", str(image_folder), "--num-images", "1"]
    assert main([*args, "--img-size", "64", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 1 + 2 * 4  # the collapse plot; points and top keys of dat_tiny's 4 deformable blocks
    for data in pngs:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "stages.3.blocks.1: deformed points and top keys on a.png" in page
    assert "<td>dat_tiny</td>" in page


def test_viz_draws_each_deformable_block(image_folder: Path, tmp_path: Path):
    out = tmp_path / "viz"
    args = ["viz", str(image_folder / "a.png"), "--model", "dat_tiny", "--img-size", "64", "--query", "10,20"]
    assert main([*args, "--top-k", "3", "--out", str(out)]) == 0
    blocks = ["stages.2.blocks.1", "stages.2.blocks.3", "stages.2.blocks.5", "stages.3.blocks.1"]
    expected = {f"a_dat_{block}_{kind}.png" for block in blocks for kind in ("points", "top_keys")}
    assert {p.name for p in out.iterdir()} == expected
    for path in out.iterdir():
        assert_png(path, (448, 448))  # 64 px enlarged 7 times (legible), plus title and legend


def test_bad_arguments_are_reported(image_folder: Path, tmp_path: Path, capsys):
    base = ["--images", str(image_folder), "--img-size", "64", "--out", str(tmp_path)]
    assert main(["analyze", "collapse", "--model", "no_such_net", *base]) == 2
    assert "unknown model 'no_such_net'" in capsys.readouterr().err
    assert main(["analyze", "collapse", "--model", f"dat_tiny={tmp_path / 'missing.pth'}", *base]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["analyze", "collapse", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    image = str(image_folder / "a.png")
    assert main(["viz", image, "--model", "vit_tiny_patch16_224", "--img-size", "64", "--out", str(tmp_path)]) == 2
    assert "has no deformable attention to draw" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["viz", image, "--model", "dat_tiny", "--query", "3;4"])
    assert "a query must be X,Y in pixels, got '3;4'" in capsys.readouterr().err


def test_random_init_models_are_seeded(image_folder: Path, tmp_path: Path):
    args = ["analyze", "collapse", "--model", "dat_tiny", "--images", str(image_folder), "--img-size", "64"]
    outputs = [tmp_path / name for name in ("first", "second", "other_seed")]
    assert main([*args, "--out", str(outputs[0])]) == 0
    assert main([*args, "--out", str(outputs[1])]) == 0
    assert main([*args, "--seed", "1", "--out", str(outputs[2])]) == 0
    first, second, other = (json.loads((out / "collapse.json").read_text()) for out in outputs)
    assert first == second and first != other
