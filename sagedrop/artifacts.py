"""Loading a model artifact's own serving code, the way SageMaker's container does.

The artifact's ``code/inference.py`` imports its helpers (``image_io``, ``model_def``,
``graph_runtime``) and its copy of the artifact contract (``sagedrop_contract``) as
top-level modules from its own folder, which the inference toolkit puts on the path.
``artifact_code_importable`` is that, for one import and in one process: the folder first
on ``sys.path`` and those names free in ``sys.modules`` while it imports, everything as it
was afterwards, so two artifacts (or an artifact and sagedrop itself) never shadow each
other. It is the one place sagedrop edits ``sys.path``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from sagedrop_contract import artifact_layout

_IMPORT_LOCK = threading.RLock()


def is_artifact_module(name: str) -> bool:
    """A module name an artifact's ``code/`` brings (and may bring in its own version)."""
    package = artifact_layout.CONTRACT_PACKAGE
    return (
        name in artifact_layout.SERVING_MODULES or name == package or name.startswith(f"{package}.")
    )


@contextmanager
def artifact_code_importable(code_dir: str | Path) -> Iterator[None]:
    """While inside: ``code_dir`` first on ``sys.path`` and the artifact's module names
    unbound, so its imports find its own files. After: ``sys.path`` and those names in
    ``sys.modules`` exactly as before (what the artifact imported stays bound only in
    its modules). One import at a time: the lock covers the whole swap. Another thread
    that imports one of those names for the first time inside the window would get the
    artifact's copy, which is why sagedrop's and chalicelib's modules import the contract
    at their top, never inside a function (``unit/test_rooms.py`` holds them to it)."""
    path = str(Path(code_dir).resolve())
    with _IMPORT_LOCK:
        saved = {name: sys.modules.pop(name) for name in list(sys.modules)
                 if is_artifact_module(name)}  # fmt: skip
        sys.path.insert(0, path)
        try:
            yield
        finally:
            sys.path.remove(path)
            for name in [name for name in sys.modules if is_artifact_module(name)]:
                del sys.modules[name]
            sys.modules.update(saved)


def load_inference_code(code_dir: str | Path) -> ModuleType:
    """The artifact's ``inference.py`` as a module of its own (a private name per folder),
    its helpers and contract from its own ``code/``."""
    code_dir = Path(code_dir).resolve()
    entry = code_dir / artifact_layout.ENTRY_POINT
    if not entry.is_file():
        raise FileNotFoundError(f"{entry} is missing: the artifact cannot serve")
    name = f"sagedrop_artifact_{hashlib.sha256(str(code_dir).encode()).hexdigest()[:12]}"
    with artifact_code_importable(code_dir):
        spec = importlib.util.spec_from_file_location(name, entry)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {entry}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
