"""Signed download URLs: HMAC over the function id and the expiry."""

from __future__ import annotations

import time

import pytest

from appliance.signing import UrlSigner
from edgesync.errors import UrlExpiredOrInvalid

FUNCTION_ID = "0b6f8a8e-7c1d-4a7e-9d8e-1f2a3b4c5d6e"
OTHER_ID = "1c7f9b9f-8d2e-4b8f-ae9f-2a3b4c5d6e7f"


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(b"k" * 32, ttl_seconds=900)


def test_fresh_signature_verifies(signer: UrlSigner) -> None:
    expires, sig = signer.sign(FUNCTION_ID)
    signer.verify(FUNCTION_ID, str(expires), sig)
    assert abs(expires - (time.time() + 900)) < 60


def test_sign_is_deterministic_for_a_given_now(signer: UrlSigner) -> None:
    assert signer.sign(FUNCTION_ID, now=1000.0) == signer.sign(FUNCTION_ID, now=1000.0)
    assert signer.sign(FUNCTION_ID, now=1000.0)[0] == 1900


def _refused(signer: UrlSigner, function_id: str, expires: str | None, sig: str | None) -> str:
    with pytest.raises(UrlExpiredOrInvalid) as caught:
        signer.verify(function_id, expires, sig)
    assert caught.value.status == 403
    assert caught.value.code == "URL_EXPIRED_OR_INVALID"
    return caught.value.message


def test_tampered_signature(signer: UrlSigner) -> None:
    expires, sig = signer.sign(FUNCTION_ID)
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    _refused(signer, FUNCTION_ID, str(expires), flipped)
    _refused(signer, FUNCTION_ID, str(expires), sig.upper())
    _refused(signer, FUNCTION_ID, str(expires), sig[:-1])


def test_tampered_function_id(signer: UrlSigner) -> None:
    expires, sig = signer.sign(FUNCTION_ID)
    _refused(signer, OTHER_ID, str(expires), sig)


def test_tampered_expiry(signer: UrlSigner) -> None:
    expires, sig = signer.sign(FUNCTION_ID)
    _refused(signer, FUNCTION_ID, str(expires + 3600), sig)


def test_expired_url(signer: UrlSigner) -> None:
    expires, sig = signer.sign(FUNCTION_ID, now=time.time() - 10_000)
    assert "expired" in _refused(signer, FUNCTION_ID, str(expires), sig)


def test_other_key_is_refused(signer: UrlSigner) -> None:
    expires, sig = UrlSigner(b"x" * 32).sign(FUNCTION_ID)
    _refused(signer, FUNCTION_ID, str(expires), sig)


@pytest.mark.parametrize(
    ("expires", "sig"),
    [
        (None, "ab"),
        ("", "ab"),
        ("123", None),
        ("123", ""),
        ("-5", "ab"),
        ("1e9", "ab"),
        (None, None),
        ("²", "ab"),  # isdigit() but not int()-able
        ("123", "é"),  # non-ASCII signature
    ],
)
def test_missing_or_malformed_params(
    signer: UrlSigner, expires: str | None, sig: str | None
) -> None:
    _refused(signer, FUNCTION_ID, expires, sig)
