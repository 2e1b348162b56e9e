"""The node's identity on disk: ``DIR/node.json``, mode 0600, written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgesync.errors import EdgesyncError

FILENAME = "node.json"
REQUIRED = ("server", "node_id", "token", "token_expires_at", "name")


@dataclass
class Credentials:
    server: str
    node_id: str
    token: str
    token_expires_at: str
    name: str
    # As the control plane said: checked where it is used (agent.backoff.poll_interval).
    poll_interval_seconds: Any = 30
    mqtt: dict[str, Any] | None = None
    # Set before a token rotation and cleared once the new token is saved: after
    # a crash or a lost answer, the same rotation is asked for again.
    pending_jti: str | None = None

    @classmethod
    def load(cls, data_dir: Path) -> Credentials | None:
        """The saved identity, None before enrolment; a damaged file is a clear error."""
        path = data_dir / FILENAME
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeError) as exc:
            raise _damaged(path, "it is not JSON") from exc
        if not isinstance(raw, dict):
            raise _damaged(path, "it is not a JSON object")
        missing = [name for name in REQUIRED if not isinstance(raw.get(name), str)]
        if missing:
            raise _damaged(path, f"{', '.join(missing)} missing or not text")
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if not isinstance(fields.get("mqtt"), (dict, type(None))):
            fields["mqtt"] = None
        if not isinstance(fields.get("pending_jti"), (str, type(None))):
            fields["pending_jti"] = None
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


def _damaged(path: Path, why: str) -> EdgesyncError:
    return EdgesyncError(
        f"{path} is damaged ({why}): restore it, or enrol this node again in an empty --data-dir",
        code="BAD_CREDENTIALS",
    )
