"""The rooms of ``../shared/ARCHITECTURE.md``, read from the imports of every file.

A room that imports what the design forbids fails here, before it fails in a Lambda zip
without torch or in a container without boto3.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from sagedrop.paths import REPO_ROOT

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# Every top-level name the container code's folder offers: its modules and its packages.
TRAINING_MODULES = {p.stem for p in (REPO_ROOT / "training_code").glob("*.py")} | {
    p.name for p in (REPO_ROOT / "training_code").iterdir() if p.is_dir() and p.name[0] != "_"
}
# chalicelib modules linked into training_code (stdlib only, carried by both rooms): the
# training-side name of each, by the file it links to.
SHARED = {
    link.resolve(): link.stem
    for link in (REPO_ROOT / "training_code").glob("*.py")
    if link.is_symlink()
}
# What each room may import besides the standard library (None: anything but `forbidden`).
ROOMS = {
    "chalice_app/app.py": {
        "allowed": {"chalice", "chalicelib", "aws_lambda_powertools"},
    },
    "chalice_app/chalicelib": {
        # mlflow: MLflow's client (mlflow-skinny in the Lambda), for experiment_tracking only
        "allowed": {"chalicelib", "boto3", "botocore", "aws_lambda_powertools", "mlflow"},
    },
    "training_code": {
        "forbidden": {
            "boto3",
            "botocore",
            "chalice",
            "chalicelib",
            "sagedrop",
            "aws_lambda_powertools",
            "moto",
        },
    },
    "sagedrop": {
        # the container code only through its public module
        "forbidden": TRAINING_MODULES - {"offline_api"},
    },
}


def imported_roots(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source``."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(room: str, source: str, shared: bool = False) -> set[str]:
    """What ``source`` imports that its room may not; a shared module may also import
    the other shared modules by their training-side names (its fallback in a container)."""
    rule = ROOMS[room]
    roots = imported_roots(source)
    if "allowed" in rule:
        allowed = rule["allowed"] | (set(SHARED.values()) if shared else set())
        return roots - STDLIB - allowed
    return roots & rule["forbidden"]


def files_of(room: str) -> list[Path]:
    path = REPO_ROOT / room
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_every_room_imports_only_what_the_design_allows(room):
    found = {}
    for path in files_of(room):
        if path.is_symlink():  # a shared module lives in (and is checked with) its own room
            continue
        bad = violations(room, path.read_text(), shared=path.resolve() in SHARED)
        if bad:
            found[str(path.relative_to(REPO_ROOT))] = sorted(bad)
    assert found == {}


@pytest.mark.parametrize(
    ("room", "source", "expected"),
    [
        ("chalice_app/chalicelib", "import torch\nfrom json import loads", {"torch"}),
        ("chalice_app/app.py", "from sagedrop.local import bus", {"sagedrop"}),
        ("training_code", "import boto3\nimport torch", {"boto3"}),
        (
            "sagedrop",
            "from sagedrop_reports.svg_charts import table\nfrom offline_api import page",
            {"sagedrop_reports"},
        ),
        # only a shared module may fall back to a shared module's training-side name
        ("chalice_app/chalicelib", "from job_contract import NUMBER", {"job_contract"}),
    ],
)
def test_the_check_fires_on_a_crafted_file(room, source, expected):
    assert violations(room, source) == expected


def test_a_shared_module_may_import_another_by_its_training_side_name():
    assert set(SHARED.values()) >= {"job_contract", "dataset_rules", "hyperparameter_rules"}
    source = "from job_contract import NUMBER\nimport torch"
    assert violations("chalice_app/chalicelib", source, shared=True) == {"torch"}


def _chalicelib_imports() -> dict[str, set[str]]:
    """Each chalicelib module's imports of its siblings, those for type checking too (a
    circle there is still two modules that cannot be read apart)."""
    folder = REPO_ROOT / "chalice_app" / "chalicelib"
    modules = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "chalicelib":
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chalicelib."):
                found.add(node.module.split(".")[1])
        graph[path.stem] = found - {path.stem}
    return graph


def test_chalicelib_has_no_import_circle():
    """Issue 24: settings and the request builders imported each other."""
    graph = _chalicelib_imports()
    assert "settings" in graph.get("flow", set())  # the graph is read at all
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            assert state.get(imported) != "open", " -> ".join([*path, module, imported])
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_in_the_code_rooms_is_over_500_lines():
    """Issue 24: small modules with one job each; train.py reads as the job's outline."""
    rooms = ("chalice_app", "sagedrop", "training_code")
    long = {
        str(path.relative_to(REPO_ROOT)): count
        for room in rooms
        for path in (REPO_ROOT / room).rglob("*.py")
        if ".chalice" not in path.parts and (count := len(path.read_text().splitlines())) > 500
    }
    assert long == {}
