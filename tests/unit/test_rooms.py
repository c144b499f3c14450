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
CODE_ROOMS = ("chalice_app", "sagedrop", "sagedrop_contract", "training_code")
# What each room may import besides the standard library (None: anything but `forbidden`).
ROOMS = {
    "sagedrop_contract": {
        # every room carries it: the Lambda, the container, the artifact's code/
        "allowed": {"sagedrop_contract"},
    },
    "chalice_app/app.py": {
        "allowed": {"chalice", "chalicelib", "aws_lambda_powertools"},
    },
    "chalice_app/chalicelib": {
        # mlflow: MLflow's client (mlflow-skinny in the Lambda), for experiment_tracking only
        "allowed": {
            "chalicelib",
            "sagedrop_contract",
            "boto3",
            "botocore",
            "aws_lambda_powertools",
            "mlflow",
        },
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


def violations(room: str, source: str) -> set[str]:
    """What ``source`` imports that its room may not."""
    rule = ROOMS[room]
    roots = imported_roots(source)
    if "allowed" in rule:
        return roots - STDLIB - rule["allowed"]
    return roots & rule["forbidden"]


def files_of(room: str) -> list[Path]:
    path = REPO_ROOT / room
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_every_room_imports_only_what_the_design_allows(room):
    found = {}
    for path in files_of(room):
        bad = violations(room, path.read_text())
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
        ("sagedrop_contract", "from chalicelib import naming\nimport json", {"chalicelib"}),
        # the old second names of the contract's modules are gone
        ("chalice_app/chalicelib", "from job_contract import NUMBER", {"job_contract"}),
    ],
)
def test_the_check_fires_on_a_crafted_file(room, source, expected):
    assert violations(room, source) == expected


def test_no_symbolic_link_and_no_path_edit_outside_the_artifact_loader():
    """Issue 24: one file, one module name. A link made a second name (and a second
    class of every exception); a ``sys.path`` edit made the package work only from a
    checkout. Only ``sagedrop.artifacts`` puts a folder on the path: an artifact's
    ``code/``, as the inference toolkit does."""
    links = [
        str(path.relative_to(REPO_ROOT))
        for room in CODE_ROOMS
        for path in (REPO_ROOT / room).rglob("*")
        if path.is_symlink()
    ]
    assert links == []
    editing = sorted(
        str(path.relative_to(REPO_ROOT))
        for room in CODE_ROOMS
        for path in (REPO_ROOT / room).rglob("*.py")
        if _edits_sys_path(path.read_text())
    )
    assert editing == ["sagedrop/artifacts.py"]


def _edits_sys_path(source: str) -> bool:
    """Whether ``source`` calls a method of ``sys.path`` or assigns to it."""
    for node in ast.walk(ast.parse(source)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value for t in targets if isinstance(t, ast.Subscript)), None)
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "path"
            and isinstance(target.value, ast.Name)
            and target.value.id == "sys"
        ):
            return True
    return False


def _contract_imports_inside_functions(source: str) -> list[int]:
    """Lines where a function imports the shared contract (instead of its module's top)."""
    lines = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name.split(".")[0] == "sagedrop_contract" for name in names):
                lines.append(node.lineno)
    return lines


def test_the_host_imports_the_contract_only_at_module_top():
    """While an artifact's code/ loads, ``sagedrop_contract`` is the artifact's copy
    (``sagedrop.artifacts``): a host module importing it late, in a function, could get
    that copy. At the top of each module, it is bound before any endpoint loads."""
    late = {
        str(path.relative_to(REPO_ROOT)): found
        for room in ("sagedrop", "chalice_app")
        for path in (REPO_ROOT / room).rglob("*.py")
        if (found := _contract_imports_inside_functions(path.read_text()))
    }
    assert late == {}
    assert _contract_imports_inside_functions(
        "def f():\n    from sagedrop_contract import job_contract\n"
    ) == [2]


@pytest.mark.parametrize(
    ("source", "edits"),
    [
        ("import sys\nsys.path.insert(0, 'x')", True),
        ("import sys\nsys.path[:0] = ['x']", True),
        ("import sys\nsys.path.append('x')", True),
        ("import sys\nprint(sys.path)", False),
        ("import os\nos.path.join('a')", False),
    ],
)
def test_the_path_edit_check_fires(source, edits):
    assert _edits_sys_path(source) is edits


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
    long = {
        str(path.relative_to(REPO_ROOT)): count
        for room in CODE_ROOMS
        for path in (REPO_ROOT / room).rglob("*.py")
        if ".chalice" not in path.parts and (count := len(path.read_text().splitlines())) > 500
    }
    assert long == {}
