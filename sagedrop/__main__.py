"""``python -m sagedrop`` runs the CLI."""

import sys

from sagedrop.cli import main

sys.exit(main())
