"""``python -m clipkit`` runs the ``clipkit`` command."""

import sys

from clipkit.cli import main

sys.exit(main())
