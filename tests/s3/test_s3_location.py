"""Artifact URLs and the MINIO_* settings: parsing, defaults, and secrets kept out of text."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.artifacts.location import (
    Endpoint,
    S3Location,
    minio_url,
    redact_url,
    with_credentials,
)
from appliance.config import ServeConfig

SECRET = "s3cret/with+odd:chars"
QUOTED = "s3cret%2Fwith%2Bodd%3Achars"


@pytest.mark.parametrize(
    ("url", "hostport", "secure", "bucket", "region"),
    [
        ("s3://k:s@minio:9000", "minio:9000", True, "wasm-functions", "us-east-1"),
        ("s3://k:s@minio:9000/?secure=false", "minio:9000", False, "wasm-functions", "us-east-1"),
        ("minio://k:s@minio:9000/fleet-a?secure=no", "minio:9000", False, "fleet-a", "us-east-1"),
        ("http://k:s@127.0.0.1:9000/wasm-functions", "127.0.0.1:9000", False, "wasm-functions",
         "us-east-1"),
        ("https://k:s@s3.eu-west-1.amazonaws.com/acme-wasm?region=eu-west-1",
         "s3.eu-west-1.amazonaws.com", True, "acme-wasm", "eu-west-1"),
        ("http://[::1]:9000", "[::1]:9000", False, "wasm-functions", "us-east-1"),
    ],
)  # fmt: skip
def test_url_forms(url: str, hostport: str, secure: bool, bucket: str, region: str) -> None:
    location = S3Location.parse(url)
    assert location.endpoint == Endpoint(hostport, secure)
    assert (location.bucket, location.region) == (bucket, region)


def test_keys_are_percent_decoded_and_never_shown() -> None:
    url = f"http://AKIA:{QUOTED}@minio:9000/wasm-functions"
    location = S3Location.parse(url)
    assert (location.access_key, location.secret_key) == ("AKIA", SECRET)
    assert SECRET not in repr(location) and QUOTED not in repr(location)
    assert location.display == "http://AKIA@minio:9000/wasm-functions"
    assert redact_url(url) == "http://AKIA:***@minio:9000/wasm-functions"


def test_public_endpoint() -> None:
    location = S3Location.parse(
        "http://k:s@minio.internal:9000/?public_endpoint=https://files.example.com"
    )
    assert location.public_endpoint == Endpoint("files.example.com", True)
    assert location.endpoint == Endpoint("minio.internal:9000", False)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"s3://AKIA:{QUOTED}@minio:9000/a/b", "the bucket alone"),
        (f"s3://AKIA:{QUOTED}@minio:9000/Bad_Bucket", "no valid bucket name"),
        (f"s3://AKIA:{QUOTED}@minio:9000/?secure=maybe", "secure must be"),
        (f"s3://AKIA:{QUOTED}@minio:9000/?regoin=eu", "unknown parameter"),
        (f"http://AKIA:{QUOTED}@minio:9000/?secure=true", "secure= only"),
        (f"s3://AKIA:{QUOTED}@minio:notaport/", "invalid artifact URL"),
        (f"s3://AKIA:{QUOTED}@/bucket", "no host"),
        ("s3://AKIA@minio:9000/", "both access key and secret key"),
    ],
)
def test_malformed_urls_are_refused_without_the_secret(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        S3Location.parse(url)
    assert SECRET not in str(caught.value) and QUOTED not in str(caught.value)


def test_minio_variables_build_the_url(tmp_path: Path) -> None:
    config = ServeConfig(
        data_dir=tmp_path,
        minio_endpoint="minio:9000",
        minio_access_key="AKIA",
        minio_secret_key=SECRET,
    )
    config.validate()
    url = config.resolved_artifact_url
    assert url == f"http://AKIA:{QUOTED}@minio:9000/wasm-functions"
    location = S3Location.parse(url)
    assert location.secret_key == SECRET and location.endpoint.secure is False
    assert SECRET not in repr(config) and QUOTED not in repr(config)

    secure = ServeConfig(data_dir=tmp_path, minio_endpoint="minio:9000", minio_secure=True)
    assert secure.resolved_artifact_url == "https://minio:9000/wasm-functions"
    # A scheme in MINIO_ENDPOINT wins over --minio-secure.
    assert minio_url("http://minio:9000", None, None, secure=True) == (
        "http://minio:9000/wasm-functions"
    )


def test_artifact_url_wins_and_takes_the_minio_keys(tmp_path: Path) -> None:
    config = ServeConfig(
        data_dir=tmp_path,
        artifact_url="s3://minio:9000/fleet?secure=false",
        minio_endpoint="ignored:1",
        minio_access_key="AKIA",
        minio_secret_key=SECRET,
    )
    config.validate()
    assert config.resolved_artifact_url == f"s3://AKIA:{QUOTED}@minio:9000/fleet?secure=false"
    # Keys in the URL itself are kept.
    assert with_credentials("s3://a:b@h/", "AKIA", SECRET) == "s3://a:b@h/"
    # Nothing configured: the embedded folder.
    assert ServeConfig(data_dir=tmp_path).resolved_artifact_url.startswith("file://")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"minio_endpoint": "minio:9000", "minio_access_key": "AKIA"}, "go together"),
        ({"minio_endpoint": "minio:9000", "minio_secret_key": SECRET}, "go together"),
        ({"minio_endpoint": "ftp://minio"}, "http or https"),
        ({"artifact_url": f"s3://AKIA:{QUOTED}@minio:9000/x/y"}, "the bucket alone"),
    ],
)
def test_invalid_s3_settings(tmp_path: Path, overrides: dict[str, str], fragment: str) -> None:
    config = ServeConfig(data_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=fragment) as caught:
        config.validate()
    assert SECRET not in str(caught.value) and QUOTED not in str(caught.value)
