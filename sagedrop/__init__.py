"""sagedrop: drop a dataset zip, get a tuned, debugged, deployed image classifier."""

from sagedrop.paths import ensure_import_paths

__version__ = "0.1.0"

ensure_import_paths()
