"""The environment of the Python children the control plane starts.

The server's own environment holds its admin token, database URL and S3 keys;
the checkers it runs in child processes (the migration sandbox, the large-module
WebAssembly validator) have no use for any of them. They get only what an
interpreter needs to start, with ``PYTHONPATH`` from :func:`child_pythonpath` so
that ``python -m appliance.…`` works from an editable install and the zipapp alike.
"""

from __future__ import annotations

import os

from edgesync.pythonpath import child_pythonpath

# What a relocated interpreter may need to start at all.
_PASSED_THROUGH = ("PYTHONHOME", "LD_LIBRARY_PATH")


def python_child_environment(**extra: str) -> dict[str, str]:
    """A minimal environment for ``sys.executable -m appliance.<module>``."""
    environment = {
        "PYTHONPATH": child_pythonpath(),
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
    }
    for name in _PASSED_THROUGH:
        if name in os.environ:
            environment[name] = os.environ[name]
    environment.update(extra)
    return environment
