"""The local cloud's MLflow store: a SQLite backend and an artifact folder under the root.

``sagedrop up`` points the pipeline's tracking at it (``MLFLOW_TRACKING_URI``, unless
the environment names another server), and ``sagedrop mlflow`` opens MLflow's own UI
over it on 127.0.0.1. The pipeline writes runs with MLflow's client; tests read them
back with the same client.
"""

from __future__ import annotations

import sys
from pathlib import Path

FOLDER = "mlflow"
DEFAULT_PORT = 5000


def store_uri(root: Path) -> str:
    """``sqlite:////abs/root/mlflow/mlflow.db`` (SQLAlchemy's absolute-path form)."""
    return f"sqlite:///{(Path(root) / FOLDER / 'mlflow.db').resolve()}"


def artifact_root(root: Path) -> str:
    return (Path(root) / FOLDER / "artifacts").resolve().as_uri()


def prepare(root: Path) -> dict[str, str]:
    """The folder made; the variables the handlers read to record runs here."""
    (Path(root) / FOLDER / "artifacts").mkdir(parents=True, exist_ok=True)
    return {"MLFLOW_TRACKING_URI": store_uri(root), "MLFLOW_ARTIFACT_ROOT": artifact_root(root)}


def ui_command(root: Path, port: int = DEFAULT_PORT) -> list[str]:
    """MLflow's UI over the store, bound to loopback only."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri(root),
            "--default-artifact-root", artifact_root(root), "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip
