"""The files a wheel of sagedrop carries besides its packages.

The local cloud deploys the container code and the Chalice app as a checkout has them:
it packs ``training_code/`` (``train.py`` and its ``requirements.txt`` are not
importable, so no package holds them) into ``sourcedir.tar.gz`` and loads
``chalice_app/app.py``. A wheel bundles both rooms' files under ``sagedrop/_bundled/``,
where ``sagedrop.paths`` finds them when there is no checkout. Editable installs skip
the copy: they read the checkout itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# room → the files of it the local cloud reads as files
BUNDLED = {
    "training_code": ("**/*",),
    "chalice_app": ("app.py", "requirements.txt"),
}


def bundled_files(room: str) -> list[Path]:
    """The room's files to bundle, caches left out, in a stable order."""
    found = {
        path
        for pattern in BUNDLED[room]
        for path in (ROOT / room).glob(pattern)
        if path.is_file()
        and path.suffix != ".pyc"
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
    }
    return sorted(found)


class BuildWithRooms(build_py):
    """``build_py``, then the rooms' files copied under ``sagedrop/_bundled/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, "sagedrop", "_bundled")
        for room in BUNDLED:
            for path in bundled_files(room):
                destination = target / room / path.relative_to(ROOT / room)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)


# The metadata folder at the top, not in training_code/ (package_dir[""]), where it would
# be packed into sourcedir.tar.gz.
setup(cmdclass={"build_py": BuildWithRooms}, options={"egg_info": {"egg_base": "."}})
