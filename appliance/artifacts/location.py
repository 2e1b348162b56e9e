"""Where an S3/MinIO artifact store is: parsed from, and built into, one URL.

The URL form (``docs/deploy.md``, "Artifact store: MinIO and S3")::

    s3://ACCESS:SECRET@host:port/bucket?region=us-east-1&secure=false
    minio://ACCESS:SECRET@host:port/bucket            (same as s3://)
    http://ACCESS:SECRET@host:port/bucket             (plain HTTP)
    https://ACCESS:SECRET@host:port/bucket            (TLS)

* ``s3://`` and ``minio://`` use TLS unless ``?secure=false``; ``http://`` and
  ``https://`` say it by their scheme.
* The host is the S3 endpoint (``s3.eu-west-1.amazonaws.com`` on AWS), never a
  bucket name. The bucket is the first path segment, ``wasm-functions`` (the
  seed's) when absent.
* ``region`` defaults to ``us-east-1``. It is always set on the client, so the
  SDK never asks the server for the bucket's region (presigning stays free of
  network I/O).
* ``public_endpoint=https://s3.example.com`` presigns download URLs for another
  host than the one the control plane talks to (nodes outside the cluster).
* Access and secret key are percent-encoded in the user info; they may also
  come from ``--minio-access-key``/``--minio-secret-key``.

This module is stdlib only: the configuration uses it without importing the SDK.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edgesync.protocol import ARTIFACT_BUCKET

S3_SCHEMES = ("s3", "minio", "http", "https")
DEFAULT_REGION = "us-east-1"
# S3's bucket naming rules (the strict, DNS-compatible set MinIO also enforces).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REGION_RE = re.compile(r"^[a-z0-9-]{1,64}$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_KNOWN_QUERY = frozenset({"secure", "region", "public_endpoint"})


def is_s3_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in S3_SCHEMES and "://" in url


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``.

    Used for every message that shows an artifact URL: logs and errors never
    carry the secret key.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"


@dataclass(frozen=True)
class Endpoint:
    """``host[:port]`` and whether to speak TLS to it."""

    hostport: str
    secure: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.hostport}"


@dataclass(frozen=True)
class S3Location:
    endpoint: Endpoint
    bucket: str = ARTIFACT_BUCKET
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    public_endpoint: Endpoint | None = None

    @property
    def display(self) -> str:
        """The store for messages: endpoint, bucket and access key, never the secret."""
        who = f"{self.access_key}@" if self.access_key else ""
        scheme = "https" if self.endpoint.secure else "http"
        return f"{scheme}://{who}{self.endpoint.hostport}/{self.bucket}"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse an artifact URL; ``ValueError`` (with the secret redacted) if malformed."""
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port  # validates the port
        except ValueError as exc:
            raise ValueError(f"invalid artifact URL {shown}: {_reason(exc, url)}") from None
        scheme = parts.scheme.lower()
        if scheme not in S3_SCHEMES:
            raise ValueError(f"invalid artifact URL {shown}: scheme must be one of {S3_SCHEMES}")
        if not parts.hostname:
            raise ValueError(f"invalid artifact URL {shown}: no host (the S3 endpoint)")
        query = _single_values(parts.query, shown)
        unknown = set(query) - _KNOWN_QUERY
        if unknown:
            raise ValueError(
                f"invalid artifact URL {shown}: unknown parameter(s) {', '.join(sorted(unknown))}"
                f" (known: {', '.join(sorted(_KNOWN_QUERY))})"
            )
        if scheme in ("http", "https"):
            if "secure" in query:
                raise ValueError(
                    f"invalid artifact URL {shown}: secure= only goes with s3:// or minio://"
                )
            secure = scheme == "https"
        else:
            secure = _bool(query.get("secure", "true"), "secure", shown)
        host = parts.hostname
        hostport = f"[{host}]" if ":" in host else host
        if port is not None:
            hostport += f":{port}"
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) > 1:
            raise ValueError(
                f"invalid artifact URL {shown}: the path is the bucket alone"
                " (objects are always {name}/{version}/function.wasm in it)"
            )
        bucket = unquote(segments[0]) if segments else ARTIFACT_BUCKET
        if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"invalid artifact URL {shown}: {bucket!r} is no valid bucket name")
        region = query.get("region", DEFAULT_REGION)
        if not REGION_RE.fullmatch(region):
            raise ValueError(f"invalid artifact URL {shown}: invalid region {region!r}")
        access = unquote(parts.username) if parts.username else None
        secret = unquote(parts.password) if parts.password is not None else None
        if bool(access) != bool(secret):
            raise ValueError(
                f"invalid artifact URL {shown}: give both access key and secret key, or neither"
            )
        public = None
        if "public_endpoint" in query:
            public = parse_endpoint(query["public_endpoint"], secure=True)
        return cls(Endpoint(hostport, secure), bucket, region, access, secret, public)


def parse_endpoint(value: str, *, secure: bool) -> Endpoint:
    """``host[:port]`` or ``http(s)://host[:port]`` (a scheme wins over ``secure``)."""
    text = value.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"endpoint {value!r}: scheme must be http or https")
        secure = scheme.lower() == "https"
    text = text.rstrip("/")
    if not text or "/" in text or "@" in text:
        raise ValueError(f"endpoint {value!r}: expected host[:port]")
    try:
        parsed = urlsplit(f"//{text}")
        parsed.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"endpoint {value!r}: {exc}") from None
    if not parsed.hostname:
        raise ValueError(f"endpoint {value!r}: no host")
    return Endpoint(text, secure)


def minio_url(
    endpoint: str, access_key: str | None, secret_key: str | None, *, secure: bool
) -> str:
    """The artifact URL the seed's ``MINIO_*`` variables describe (bucket ``wasm-functions``)."""
    where = parse_endpoint(endpoint, secure=secure)
    return with_credentials(f"{where.url}/{ARTIFACT_BUCKET}", access_key, secret_key)


def with_credentials(url: str, access_key: str | None, secret_key: str | None) -> str:
    """``url`` with the keys as its user info, unless it already carries some."""
    if not access_key or secret_key is None:
        return url
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if not sep or "@" in authority:
        return url
    userinfo = f"{quote(access_key, safe='')}:{quote(secret_key, safe='')}"
    return f"{scheme}://{userinfo}@{rest}"


def _single_values(query: str, shown: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, items in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if len(items) != 1:
            raise ValueError(f"invalid artifact URL {shown}: {key} given more than once")
        values[key] = items[0]
    return values


def _bool(value: str, name: str, shown: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"invalid artifact URL {shown}: {name} must be true or false")


def _reason(exc: Exception, url: str) -> str:
    """An exception's text with the URL's secret (if any) taken out."""
    text = str(exc)
    try:
        secret = urlsplit(url).password
    except ValueError:
        secret = None
    for form in {secret, unquote(secret)} if secret else ():
        text = text.replace(form, "***")
    return text
