"""The node's identity on disk: ``DIR/node.json``, mode 0600, written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FILENAME = "node.json"


@dataclass
class Credentials:
    server: str
    node_id: str
    token: str
    token_expires_at: str
    name: str
    poll_interval_seconds: int = 30
    mqtt: dict[str, Any] | None = None
    # Set before a token rotation and cleared once the new token is saved: after
    # a crash or a lost answer, the same rotation is asked for again.
    pending_jti: str | None = None

    @classmethod
    def load(cls, data_dir: Path) -> Credentials | None:
        path = data_dir / FILENAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**fields)

    def save(self, data_dir: Path) -> None:
        """Replace the file atomically; it never exists with wider permissions."""
        path = data_dir / FILENAME
        partial = data_dir / f".{FILENAME}.tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, path)

    def redacted(self) -> dict[str, Any]:
        data = asdict(self)
        data["token"] = "***"
        return data
