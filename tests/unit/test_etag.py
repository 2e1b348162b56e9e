"""If-None-Match follows RFC 9110: lists, weak validators and ``*``."""

from __future__ import annotations

import pytest

from appliance.sync_service import etag_matches

ETAG = '"0123abcd"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        (ETAG, True),
        (f"W/{ETAG}", True),
        (f'"other", {ETAG}', True),
        ('"other"', False),
        ("*", True),
        ("0123abcd", False),
    ],
)
def test_if_none_match(header: str | None, expected: bool) -> None:
    assert etag_matches(ETAG, header) is expected
