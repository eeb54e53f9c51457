"""Imports only go down the layers: every module of src/deformvision, parsed, imports included in functions.

The layer of a module is the rank of its top-level part of the package (``deformvision.<part>``). A module may
import its own part and any part of a lower rank, nothing of the same rank or above. docs/architecture.md shows
the same table.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "deformvision"

LAYERS = [
    ["_private", "recipes"],  # top-level private modules (e.g. _atomic.py) and the recipe files: data, no models
    ["ops"],  # deform_conv2d, ms_deform_attn
    ["layers"],  # attention and convolution layers
    ["models"],  # model families, registry, checkpoint reading and name maps
    ["__init__", "data", "analysis", "viz", "convert"],  # the package's API; beside each other, above models
    ["engine"],  # training and evaluation
    ["predict", "bench"],  # inference on image files; the side-by-side benchmarks
    ["demo"],  # the built-in end-to-end demos
    ["cli"],  # the `deformvision` command
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The layering part of a dotted module name under ``deformvision`` (``deformvision`` itself: ``__init__``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "_private" if parts[1].startswith("_") else parts[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``deformvision`` import in the file, at any depth of the tree.

    ``from deformvision import x`` counts as importing ``deformvision.x`` when ``x`` is a part of the package
    (``from deformvision import models``), else as importing the package itself.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module
            if module == "deformvision":
                found += [
                    (node.lineno, f"deformvision.{alias.name}" if alias.name in RANK else module)
                    for alias in node.names
                ]
            else:
                found.append((node.lineno, module))
    return [(line, module) for line, module in found if module.split(".")[0] == "deformvision"]


def upward_imports(path: Path) -> list[str]:
    """The imports of ``path`` that do not go down the layers, as ``file:line: importer -> imported``."""
    importer = part_of(module_name(path))
    problems = []
    for line, module in imported_modules(path):
        imported = part_of(module)
        if imported != importer and RANK[imported] >= RANK[importer]:
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} -> {imported} ({module})")
    return problems


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert parts <= set(RANK), f"not in LAYERS: {sorted(parts - set(RANK))}"
    assert {"ops", "layers", "models", "engine", "cli", "recipes"} <= parts


def test_imports_go_down_the_layers():
    problems = [problem for path in sorted(PACKAGE.rglob("*.py")) for problem in upward_imports(path)]
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from deformvision.convert.checkpoint import head_num_classes\n", "models -> convert"),
        ("def f():\n    from deformvision.engine import Trainer\n", "models -> engine"),  # at call time
        ("import deformvision.cli\n", "models -> cli"),
        ("from deformvision import viz\n", "models -> viz"),
        ("from deformvision import create_model\n", "models -> __init__"),
        ("from ...data import collate\n", "models -> data"),  # relative: models/deformable_detr/ -> deformvision/
    ],
)
def test_an_upward_import_is_caught(tmp_path, monkeypatch, source, expected):
    """A file planted at models/deformable_detr/injected.py with one upward import is reported."""
    package = tmp_path / "deformvision"
    (package / "models" / "deformable_detr").mkdir(parents=True)
    injected = package / "models" / "deformable_detr" / "injected.py"
    injected.write_text("import torch\nfrom deformvision.layers import DeformConv2d\n" + source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    (problem,) = upward_imports(injected)
    assert problem.startswith("deformvision/models/deformable_detr/injected.py:") and expected in problem
