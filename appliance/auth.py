"""Who is calling: the admin, a node, or nobody.

* Admin token: compared by SHA-256 digest in constant time.
* Enrollment tokens: ``est_<id>.<secret>``; the secret is stored as a bcrypt
  hash (as the seed asks) and checked only at registration, in a thread.
* Node tokens: HS256 JWTs (``sub`` = node id, ``jti``), signed with a key the
  store generates once and shares between replicas. The node row keeps the
  current ``jti`` and the token's SHA-256, so rotation retires the old token.

The per-request path never runs bcrypt and decodes each distinct JWT once: a
verified token is cached, and what can change (rotation) is checked against
the node's stamp, which the ``FleetCache`` serves from memory (for at most
1 s on a shared database: the bound on honouring a rotation made elsewhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from appliance.metrics import Metrics
from appliance.store.records import NodeStamp
from appliance.store.store import Store
from edgesync.errors import Forbidden, InvalidEnrollmentToken, Unauthorized
from edgesync.protocol import format_time

ENROLLMENT_PREFIX = "est_"
VERIFIED_CACHE_SIZE = 100_000
# RFC 6750 section 2.1: what a bearer token may consist of.
BEARER_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Node JWTs (RFC 8725): one algorithm, an explicit type and issuer.
NODE_TOKEN_ALGORITHM = "HS256"
NODE_TOKEN_TYPE = "JWT"
NODE_TOKEN_ISSUER = "edgesync"
# bcrypt looks at 72 bytes at most (bcrypt 5 refuses more); ours are 43.
ENROLLMENT_SECRET_MAX_BYTES = 72


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The caller of one request. ``node_id`` is None for the admin."""

    kind: str  # "admin" or "node"
    node_id: str | None = None
    jti: str | None = None
    previous: bool = False  # a rotated-away token, admitted only to repeat its rotation

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route is for operators only")

    def require_node_or_admin(self, node_id: str) -> None:
        """The admin, or the node ``node_id`` itself (no other node)."""
        if not self.is_admin and self.node_id != node_id:
            raise Forbidden("a node token opens only its own node's routes")

    def require_node(self, node_id: str) -> None:
        if self.node_id != node_id:
            raise Forbidden("a node token opens only its own node's routes")


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: datetime

    @property
    def digest(self) -> str:
        return token_digest(self.token)


@dataclass(frozen=True)
class _Verified:
    node_id: str
    jti: str
    expires: float


class Authority:
    """Issues and checks every kind of token."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        stamps: Callable[[str], Awaitable[NodeStamp | None]],
        *,
        admin_token: str,
        signing_key: str,
        node_token_ttl: timedelta = timedelta(days=90),
        bcrypt_rounds: int = 12,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._stamps = stamps
        self._admin_digest = token_digest(admin_token).encode()
        self._signing_key = signing_key
        self.node_token_ttl = node_token_ttl
        self._bcrypt_rounds = bcrypt_rounds
        self._verified: dict[str, _Verified] = {}

    # -- per request ----------------------------------------------------------------

    async def authenticate(self, header: str | None, *, allow_previous: bool = False) -> Principal:
        """The caller behind an ``Authorization`` header.

        ``allow_previous`` (the rotation route only) also admits the node's
        rotated-away token, flagged ``previous``: it may repeat its rotation.
        """
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not BEARER_TOKEN_RE.fullmatch(token):
            # RFC 6750 token68 characters only: a NUL or non-ASCII byte (aiohttp hands
            # those through as surrogate escapes) is refused before any hashing.
            raise Unauthorized("malformed bearer token", headers={"WWW-Authenticate": "Bearer"})
        # A node token seen before skips the admin comparison: only verified JWTs
        # are cached, and the admin token is never a JWT of ours.
        verified = self._verified.get(token)
        if verified is None:
            if hmac.compare_digest(token_digest(token).encode(), self._admin_digest):
                return Principal("admin")
            verified = self._decode(token)
        if verified.expires < time.time():
            self._verified.pop(token, None)
            raise Unauthorized("token has expired")
        stamp = await self._stamps(verified.node_id)
        if stamp is not None and stamp.token_jti == verified.jti:
            return Principal("node", verified.node_id, verified.jti)
        if allow_previous and stamp is not None and stamp.previous_token_jti == verified.jti:
            return Principal("node", verified.node_id, verified.jti, previous=True)
        self._verified.pop(token, None)
        raise Unauthorized("token has been rotated or its node is gone")

    def known_node_token(self, token: str) -> tuple[str, str] | None:
        """``(node_id, jti)`` of a node token verified before and unexpired, or None.

        No I/O and no decoding: the poll fast path's check. The caller still
        compares the jti with the node's current stamp."""
        verified = self._verified.get(token)
        if verified is None or verified.expires < time.time():
            return None
        return verified.node_id, verified.jti

    def _decode(self, token: str) -> _Verified:
        """Verify a node JWT under RFC 8725's rules: HS256 only (the header's ``alg``
        is never trusted), every required claim present with its JSON type, ``typ``
        and ``iss`` ours. Any library failure is a 401, never a 500."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._signing_key,
                algorithms=[NODE_TOKEN_ALGORITHM],
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized("token is invalid or expired") from exc
        # Tokens issued before ``typ``/``iss`` were set carry neither (they expire
        # within the node-token TTL); a token that names either must name ours.
        if (
            header.get("typ", NODE_TOKEN_TYPE) != NODE_TOKEN_TYPE
            or claims.get("iss", NODE_TOKEN_ISSUER) != NODE_TOKEN_ISSUER
            or not _claims_typed(claims)
        ):
            raise Unauthorized("token is invalid or expired")
        verified = _Verified(claims["sub"], claims["jti"], float(claims["exp"]))
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = verified
        return verified

    # -- node tokens ----------------------------------------------------------------

    def issue_node_token(self, node_id: str, now: datetime, jti: str | None = None) -> IssuedToken:
        import jwt

        jti = jti or uuid.uuid4().hex
        expires_at = now + self.node_token_ttl
        token = jwt.encode(
            {
                "iss": NODE_TOKEN_ISSUER,
                "sub": node_id,
                "jti": jti,
                "iat": int(now.timestamp()),
                "exp": int(expires_at.timestamp()),
            },
            self._signing_key,
            algorithm=NODE_TOKEN_ALGORITHM,
            headers={"typ": NODE_TOKEN_TYPE},
        )
        return IssuedToken(token, jti, expires_at)

    def verify_node_password(self, node_id: str, token: str) -> str | None:
        """Signature and subject check without the stamp (for callers like MQTT auth)."""
        try:
            verified = self._verified.get(token) or self._decode(token)
        except Unauthorized:
            return None
        return verified.jti if verified.node_id == node_id else None

    # -- enrollment tokens ----------------------------------------------------------

    async def new_enrollment_secret(self) -> tuple[str, str, str]:
        """Return ``(token_id, token, secret_hash)`` for a new enrollment token."""
        token_id = uuid.uuid4().hex[:16]
        secret = secrets.token_urlsafe(32)
        secret_hash = await asyncio.to_thread(self._bcrypt_hash, secret)
        return token_id, f"{ENROLLMENT_PREFIX}{token_id}.{secret}", secret_hash

    async def check_enrollment(self, token: Any, now: datetime) -> str:
        """Return the enrollment token's id when ``token`` is valid, unexpired and unspent."""
        if (
            not isinstance(token, str)
            or not token.startswith(ENROLLMENT_PREFIX)
            or "." not in token
        ):
            raise InvalidEnrollmentToken("enrollment token is invalid")
        token_id, secret = token[len(ENROLLMENT_PREFIX) :].split(".", 1)
        if (
            not secret
            or not BEARER_TOKEN_RE.fullmatch(secret)
            or len(secret) > ENROLLMENT_SECRET_MAX_BYTES
        ):
            # Never handed to bcrypt: it refuses secrets over 72 bytes.
            raise InvalidEnrollmentToken("enrollment token is invalid")
        record = await self._store.get_enrollment_token(token_id)
        if record is None or not await asyncio.to_thread(
            self._bcrypt_check, secret, record.secret_hash
        ):
            raise InvalidEnrollmentToken("enrollment token is invalid")
        if record.expires_at <= format_time(now) or record.uses >= record.max_uses:
            raise InvalidEnrollmentToken("enrollment token is expired or used up")
        return record.id

    def _bcrypt_hash(self, secret: str) -> str:
        import bcrypt

        self._metrics.bcrypt_calls.inc()
        return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(self._bcrypt_rounds)).decode()

    def _bcrypt_check(self, secret: str, hashed: str) -> bool:
        import bcrypt

        self._metrics.bcrypt_calls.inc()
        try:
            return bcrypt.checkpw(secret.encode(), hashed.encode())
        except ValueError:  # an over-long secret or a corrupt stored hash: no match
            return False


def _claims_typed(claims: dict[str, Any]) -> bool:
    """PyJWT checks presence; these are the types (a string ``exp`` is refused)."""
    numeric = all(
        isinstance(claims[name], int | float) and not isinstance(claims[name], bool)
        for name in ("exp", "iat")
    )
    return numeric and all(isinstance(claims[name], str) for name in ("sub", "jti"))
