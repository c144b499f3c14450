"""Loading a model artifact's own serving code, the way SageMaker's container does.

The artifact's ``code/inference.py`` imports its helpers (``image_io``, ``model_def``,
``graph_runtime``) as top-level modules from its own folder. Loading it under a private
module name, with that folder first on ``sys.path`` only while it imports, keeps two
artifacts (or the repository's ``training_code``) from shadowing each other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HELPERS = ("image_io", "model_def", "graph_runtime")


def load_inference_code(code_dir: str | Path) -> ModuleType:
    code_dir = Path(code_dir).resolve()
    entry = code_dir / "inference.py"
    if not entry.is_file():
        raise FileNotFoundError(f"{entry} is missing: the artifact cannot serve")
    name = f"sagedrop_artifact_{hashlib.sha256(str(code_dir).encode()).hexdigest()[:12]}"
    saved = {helper: sys.modules.pop(helper) for helper in HELPERS if helper in sys.modules}
    sys.path.insert(0, str(code_dir))
    try:
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
    finally:
        sys.path.remove(str(code_dir))
        for helper in HELPERS:
            sys.modules.pop(helper, None)
        sys.modules.update(saved)
