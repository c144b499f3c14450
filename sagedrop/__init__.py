"""sagedrop: drop a dataset zip, get a tuned, debugged, deployed image classifier."""

__version__ = "0.1.0"
