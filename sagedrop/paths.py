"""Where the rooms sagedrop deploys as files live: a checkout, or a wheel's bundle.

The local cloud packs the container code (``training_code/``) into ``sourcedir.tar.gz``
and loads the Chalice app (``chalice_app/app.py``) from its file, as AWS gets them. From a
checkout (``pip install -e .``) these are the repository's own folders, so nothing can
drift; from a wheel they are the copies ``setup.py`` bundled under ``sagedrop/_bundled/``.
Python modules are never found through here: every room's packages are installed under
their import names (``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

import sagedrop_contract

PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE.parent
BUNDLED = PACKAGE / "_bundled"
FROM_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "training_code").is_dir()
ROOMS = REPO_ROOT if FROM_CHECKOUT else BUNDLED
CHALICE_APP = ROOMS / "chalice_app"
TRAINING_CODE = ROOMS / "training_code"
TRAIN_SCRIPT = TRAINING_CODE / "train.py"
# The shared contract, as the Lambda package and the container each get a copy of it.
CONTRACT = Path(sagedrop_contract.__file__).resolve().parent
