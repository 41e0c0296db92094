"""Let the tests import ``clipkit_template`` from a plain checkout too (CI installs it: ``pip install -e plugins/template``)."""

import sys
from pathlib import Path

try:
    import clipkit_template  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
