"""``PYTHONPATH`` for the Python children edgesync starts (``python -m agent.…``).

The control plane's checkers and the agent's WasmEdge workers run this project's
own modules in a child interpreter. ``sys.path`` alone is not enough to find them:
an editable install (``pip install -e``) reaches the sources through an import
hook that a ``.pth`` file installs, and a child started from the real interpreter
(not the venv's) never reads that file. The folder that holds the project's
packages is therefore named first; ``sys.path`` follows for the dependencies (the
shiv zipapp's extracted site-packages among them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def project_root() -> Path:
    """The folder holding the ``edgesync``, ``appliance`` and ``agent`` packages."""
    import edgesync

    return Path(edgesync.__file__).resolve().parent.parent


def child_pythonpath() -> str:
    entries = [str(project_root()), *(p for p in sys.path if p)]
    return os.pathsep.join(dict.fromkeys(entries))
