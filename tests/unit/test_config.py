"""ServeConfig: impossible settings are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.app import make_app
from appliance.config import ServeConfig


def test_defaults_are_valid_and_embedded(tmp_path: Path) -> None:
    config = ServeConfig(data_dir=tmp_path)
    config.validate()
    assert config.resolved_database_url == f"sqlite://{(tmp_path / 'edgesync.db').resolve()}"
    assert config.resolved_artifact_url == f"file://{(tmp_path / 'artifacts').resolve()}"
    assert config.max_upload_bytes == 64 * 1024 * 1024
    assert (config.url_ttl_seconds, config.node_token_ttl_days) == (900, 90)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_upload_mb": 0}, "--max-upload-mb"),
        ({"poll_interval_seconds": 0}, "--poll-interval"),
        ({"url_ttl_seconds": 9}, "--url-ttl"),
        ({"tls_cert": Path("cert.pem")}, "--tls-key"),
        ({"tls_key": Path("key.pem")}, "--tls-cert"),
        ({"admin_token": "short"}, "16 characters"),
    ],
)
def test_invalid_settings(tmp_path: Path, overrides: dict[str, object], fragment: str) -> None:
    config = ServeConfig(data_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=fragment):
        config.validate()
    with pytest.raises(ValueError, match=fragment):
        make_app(config)


def test_explicit_urls_win(tmp_path: Path) -> None:
    config = ServeConfig(
        data_dir=tmp_path, database_url="postgresql://db/x", artifact_url="s3://bucket"
    )
    assert config.resolved_database_url == "postgresql://db/x"
    assert config.resolved_artifact_url == "s3://bucket"
