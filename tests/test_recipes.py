"""The shipped recipes: package data found by name, listed and printed by the CLI, inside the built wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from deformvision.cli import main
from deformvision.engine import load_config
from deformvision.recipes import list_recipes, recipe_description, recipe_path

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "src" / "deformvision" / "recipes"
SOURCE_RECIPES = sorted(path.name for path in RECIPE_DIR.iterdir() if path.suffix == ".yaml")


def test_list_recipes_names_every_yaml_file_of_the_source_tree():
    assert SOURCE_RECIPES and "dat_digits.yaml" in SOURCE_RECIPES
    assert list_recipes() == [name.removesuffix(".yaml") for name in SOURCE_RECIPES]


def test_recipe_path_is_the_file_and_accepts_the_suffix():
    assert recipe_path("dat_digits").read_bytes() == (RECIPE_DIR / "dat_digits.yaml").read_bytes()
    assert recipe_path("dat_digits.yaml") == recipe_path("dat_digits")


def test_recipe_base_key_resolves_from_the_package():
    """dat_base_imagenet names dat_tiny_imagenet as its base: its own keys win, the rest is the base's."""
    base = yaml.safe_load((RECIPE_DIR / "dat_tiny_imagenet.yaml").read_text())
    config = load_config(recipe_path("dat_base_imagenet"))
    assert config.model.name == "dat_base" and config.model.kwargs["drop_path_rate"] == 0.5
    assert config.optim.lr == base["optim"]["lr"] and config.data.batch_size == base["data"]["batch_size"]


def test_unknown_recipe_is_refused_with_the_list():
    with pytest.raises(ValueError, match=r"unknown recipe 'dat_huge'; available: .*dat_digits"):
        recipe_path("dat_huge")
    with pytest.raises(TypeError, match="recipe name must be a str, got PosixPath"):
        recipe_path(RECIPE_DIR / "dat_digits.yaml")


def test_every_recipe_has_a_one_line_description():
    for name in list_recipes():
        first = (RECIPE_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ") and recipe_description(name) == first[2:].strip()
        assert 0 < len(recipe_description(name)) <= 100, name


def test_cli_recipes_lists_and_prints(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_recipes()
    digits = next(line for line in lines if line.startswith("dat_digits "))
    assert digits.endswith("A small DAT classifier on the built-in digits set: trains on a CPU in minutes.")

    assert main(["recipes", "dat_digits"]) == 0
    assert capsys.readouterr().out == (RECIPE_DIR / "dat_digits.yaml").read_text()

    assert main(["recipes", "dat_huge"]) == 2
    assert "unknown recipe 'dat_huge'; available:" in capsys.readouterr().err


def test_train_and_eval_take_a_recipe_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "dat_digits", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load((RECIPE_DIR / "dat_digits.yaml").read_text())
    assert printed["model"]["kwargs"] == expected["model"]["kwargs"]
    assert main(["eval", "deformable_detr_r50_box_refine_coco", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "deformable_detr_r50_box_refine"


def test_train_takes_a_path_before_a_recipe_of_the_same_name(tmp_path, monkeypatch, capsys):
    """A file in the working directory named like a recipe is the file (paths win over names)."""
    monkeypatch.chdir(tmp_path)
    Path("dat_digits.yaml").write_text("model: {name: dat_small}\n")
    assert main(["train", "dat_digits.yaml", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "dat_small"


def test_train_refuses_a_config_that_is_neither_file_nor_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "dat_huge", "--print-config"]) == 2
    assert "config file not found: dat_huge (nor is it a recipe name; recipes: cascade" in capsys.readouterr().err
    assert main(["train", "configs/dat_digits.yaml", "--print-config"]) == 2  # a path, not a name
    assert "config file not found: configs/dat_digits.yaml (nor is it a recipe" in capsys.readouterr().err


def test_the_wheel_ships_every_recipe(tmp_path):
    """Build the wheel from a copy of the sources (so the checkout gets no build/ folder): every recipe is in it."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", "wheels"]
    subprocess.run(command, cwd=source, check=True, capture_output=True)
    (wheel,) = (source / "wheels").glob("deformvision-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(
            name.removeprefix("deformvision/recipes/")
            for name in archive.namelist()
            if name.startswith("deformvision/recipes/") and name.endswith(".yaml")
        )
        assert "deformvision/recipes/__init__.py" in archive.namelist()
    assert shipped == SOURCE_RECIPES
