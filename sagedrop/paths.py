"""Where the other rooms of the repository live, seen from the ``sagedrop`` package.

sagedrop runs from a checkout (``pip install -e .``): the Lambda code in ``chalice_app/``
and the container code in ``training_code/`` are deployed as they are, so the local cloud
uses them from their own folders instead of a packaged copy that could drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHALICE_APP = REPO_ROOT / "chalice_app"
TRAINING_CODE = REPO_ROOT / "training_code"
TRAIN_SCRIPT = TRAINING_CODE / "train.py"


def ensure_import_paths() -> None:
    """Make ``import chalicelib`` work (the Lambda package's own top-level name)."""
    path = str(CHALICE_APP)
    if path not in sys.path:
        sys.path.insert(0, path)


def ensure_training_code_importable() -> None:
    """Make ``training_code/offline_api.py`` importable: the container code's one public
    module for sagedrop (charts, trace reader, rules), standard library only.

    Appended, not prepended: a model artifact's own ``code/`` folder, which
    ``sagedrop.artifacts`` puts first while it loads, still wins over these.
    """
    path = str(TRAINING_CODE)
    if path not in sys.path:
        sys.path.append(path)
