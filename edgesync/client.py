"""A small synchronous client of the control-plane API, for the operator CLI.

Built on the standard library (``http.client``) so that client commands start
fast and pull in nothing heavy. Uploads stream the module from disk as a
multipart body of known length: the file is never read whole into memory.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from edgesync.errors import EdgesyncError
from edgesync.neterrors import answered_error, origin, unreachable

CHUNK = 256 * 1024


class ApiClient:
    def __init__(
        self, server: str, token: str | None, *, timeout: float = 60, ca_file: str | None = None
    ) -> None:
        try:
            parts = urlsplit(server.rstrip("/"))
            parts.port  # noqa: B018 -- raises on a port out of range or not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise EdgesyncError(
                f"server URL must look like http://host:port, not {server!r}", code="BAD_CONFIG"
            )
        self._parts = parts
        self._token = token
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self._parts.hostname or "", self._parts.port
        if self._parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        return http.client.HTTPConnection(host, port, timeout=self._timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "edgesync-cli"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """Send a JSON request; return the decoded body or raise :class:`EdgesyncError`."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = json.dumps(body).encode() if body is not None else None
        headers = self._headers({"Content-Type": "application/json"} if payload else None)
        return self._send(method, path, payload, headers)

    def upload(
        self,
        name: str,
        version: str,
        module: Path,
        sha256: str | None = None,
        progress: Callable[[int], None] | None = None,
        requires_schema: int = 0,
    ) -> Any:
        """POST a module as multipart/form-data, streamed from disk."""
        boundary = f"edgesync-{uuid.uuid4().hex}"
        fields = {"name": name, "version": version}
        if sha256:
            fields["sha256"] = sha256
        if requires_schema:
            fields["requires_schema"] = str(requires_schema)
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
            for key, value in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="module"; '
            f'filename="{module.name}"\r\nContent-Type: application/wasm\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = module.stat().st_size

        def body() -> Iterator[bytes]:
            yield head
            with module.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk
            yield tail

        headers = self._headers(
            {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            }
        )
        return self._send("POST", "/api/v1/functions", body(), headers)

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        connection = self._connection()
        target = f"{self._parts.path}{path}"
        try:
            try:
                connection.request(method, target, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server refused mid-body (e.g. 413): its answer is still readable
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self._parts.geturl(), exc) from exc
        finally:
            connection.close()
        if response.status == 204:
            return None
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        if response.status >= 400:
            raise answered_error(self._parts.geturl(), response.status, decoded)
        if not isinstance(decoded, dict):  # every answer of the API is a JSON object
            raise EdgesyncError(
                f"{origin(self._parts.geturl())} answered HTTP {response.status} without a"
                " JSON object: is it an edgesync control plane?",
                code="BAD_RESPONSE",
            )
        return decoded


def client_from(server: str | None, token: str | None) -> ApiClient:
    if not server:
        raise EdgesyncError(
            "no server given: pass --server or set EDGESYNC_SERVER", code="BAD_CONFIG"
        )
    return ApiClient(server, token or os.environ.get("EDGESYNC_TOKEN"))
