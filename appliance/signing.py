"""Signed, short-lived download URLs (HMAC-SHA256 over the function id and expiry)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from edgesync.errors import UrlExpiredOrInvalid


@dataclass(frozen=True)
class UrlSigner:
    key: bytes
    ttl_seconds: int = 900

    def _signature(self, function_id: str, expires: int) -> str:
        message = f"download:{function_id}:{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def sign(self, function_id: str, now: float | None = None) -> tuple[int, str]:
        """Return ``(expires, signature)`` for a download of ``function_id``."""
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        return expires, self._signature(function_id, expires)

    def verify(self, function_id: str, expires: str | None, signature: str | None) -> None:
        """Raise :class:`UrlExpiredOrInvalid` for a tampered, partial or expired URL."""
        # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
        # At most 12 digits: a timestamp, not a number int() refuses (over 4300 digits).
        if not expires or not signature or len(expires) > 12:
            raise UrlExpiredOrInvalid("download URL is invalid")
        if not (expires.isascii() and expires.isdigit()):
            raise UrlExpiredOrInvalid("download URL is invalid")
        expected = self._signature(function_id, int(expires))
        # As bytes: compare_digest raises TypeError on non-ASCII str.
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise UrlExpiredOrInvalid("download URL is invalid")
        if int(expires) < time.time():
            raise UrlExpiredOrInvalid("download URL has expired")
