"""Serving: exactly what a model artifact's ``code/`` folder carries (see README.md here)."""
