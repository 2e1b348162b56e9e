"""Wire types of docs/protocol.md: name/version rules, parsing and validation errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edgesync.errors import (
    EdgesyncError,
    InvalidName,
    InvalidVersion,
    ServiceUnavailable,
    ValidationFailed,
)
from edgesync.protocol import (
    Ack,
    ApplySchema,
    DeployFunction,
    FunctionRef,
    NodeState,
    Plan,
    RemoveFunction,
    artifact_key,
    format_time,
    parse_time,
    utcnow,
    validate_name,
    validate_version,
)

SHA = "ab" * 32


@pytest.mark.parametrize(
    "name", ["a", "0", "hello", "hello-world", "hello_world", "a1-b2_c3", "a" * 63]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 64,
        "Hello",
        "-hello",
        "_hello",
        "hello.world",
        "hello world",
        "héllo",
        "hello/../x",
        "hello\n",
        "\nhello",
        None,
        42,
    ],
)
def test_invalid_names(name: Any) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name(name)
    assert caught.value.status == 400
    assert caught.value.code == "INVALID_NAME"


@pytest.mark.parametrize(
    "version", ["1", "1.2.3", "v1.0.0-rc.1+build.5", "2024_01", "A" * 50, "0.1.0-beta"]
)
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version",
    ["", ".1", "-1", "+1", "1" * 51, "1.0 beta", "1/2", "1.0\n", "ü1", None, 1.0],
)
def test_invalid_versions(version: Any) -> None:
    with pytest.raises(InvalidVersion) as caught:
        validate_version(version)
    assert caught.value.code == "INVALID_VERSION"


def test_artifact_key_is_the_seed_layout() -> None:
    assert artifact_key("hello", "1.2.0") == "hello/1.2.0/function.wasm"


def test_time_round_trip_is_utc_and_fixed_width() -> None:
    now = utcnow()
    text = format_time(now)
    assert text.endswith("Z") and len(text) == len("2024-01-01T00:00:00.000000Z")
    assert parse_time(text) == now


# -- NodeState ---------------------------------------------------------------------


def test_node_state_is_canonical() -> None:
    a = FunctionRef("a", "1", SHA)
    b = FunctionRef("b", "1", SHA)
    assert NodeState(1, (b, a)) == NodeState(1, (a, b))
    assert NodeState(1, (b, a)).digest() == NodeState(1, (a, b)).digest()
    assert NodeState(1, (a,)).digest() != NodeState(2, (a,)).digest()


def test_node_state_round_trip() -> None:
    state = NodeState(3, (FunctionRef("hello", "1.0", SHA),))
    assert NodeState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not an object", "state"),
        ({"functions": []}, "state.schema_version"),
        ({"schema_version": "3", "functions": []}, "state.schema_version"),
        ({"schema_version": True, "functions": []}, "state.schema_version"),
        ({"schema_version": -1, "functions": []}, "state.schema_version"),
        ({"schema_version": 1}, "state.functions"),
        ({"schema_version": 1, "functions": {}}, "state.functions"),
        (
            {"schema_version": 1, "functions": [{"name": "a", "version": "1"}]},
            "state.functions[0].sha256",
        ),
        (
            {"schema_version": 1, "functions": [{"name": "a", "version": "1", "sha256": "AB"}]},
            "state.functions[0].sha256",
        ),
        (
            {
                "schema_version": 1,
                "functions": [
                    {"name": "a", "version": "1", "sha256": SHA},
                    {"name": "a", "version": "2", "sha256": SHA},
                ],
            },
            "state.functions",
        ),
    ],
)
def test_node_state_parse_errors_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        NodeState.from_dict(body)
    assert caught.value.code == "VALIDATION_FAILED"
    assert caught.value.details["field"] == field


def test_node_state_rejects_bad_function_names_and_sha_with_newline() -> None:
    with pytest.raises(InvalidName):
        NodeState.from_dict(
            {"schema_version": 0, "functions": [{"name": "A", "version": "1", "sha256": SHA}]}
        )
    with pytest.raises(InvalidVersion):
        NodeState.from_dict(
            {"schema_version": 0, "functions": [{"name": "a", "version": "", "sha256": SHA}]}
        )
    with pytest.raises(ValidationFailed):
        NodeState.from_dict(
            {
                "schema_version": 0,
                "functions": [{"name": "a", "version": "1", "sha256": SHA + "\n"}],
            }
        )


# -- Ack -----------------------------------------------------------------------------


GOOD_ACK: dict[str, Any] = {
    "sync_id": "3f1d2c1e-0000-4000-8000-000000000000",
    "status": "success",
    "state": {"schema_version": 2, "functions": [{"name": "hello", "version": "1", "sha256": SHA}]},
    "error": None,
}


def test_success_ack_round_trip() -> None:
    ack = Ack.from_dict(GOOD_ACK)
    assert ack.status == "success" and ack.error is None
    assert ack.state.schema_version == 2
    assert ack.to_dict() == GOOD_ACK


def test_failed_ack_carries_the_error_object() -> None:
    body = copy.deepcopy(GOOD_ACK)
    body["status"] = "failed"
    body["error"] = {"code": "SQL_ERROR", "message": "boom", "details": {"i": 1}, "retryable": True}
    ack = Ack.from_dict(body)
    assert ack.error is not None
    assert ack.error.code == "SQL_ERROR"
    assert ack.error.details == {"i": 1}
    assert ack.error.retryable is True
    assert Ack.from_dict(ack.to_dict()) == ack


def _mutated(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(GOOD_ACK)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "ack"),
        (_mutated(sync_id=...), "ack.sync_id"),
        (_mutated(sync_id=7), "ack.sync_id"),
        (_mutated(status="done"), "ack.status"),
        (_mutated(status=None), "ack.status"),
        (_mutated(state=...), "ack.state"),
        (_mutated(state=[]), "ack.state"),
        (_mutated(state={"schema_version": 1}), "ack.state.functions"),
        (_mutated(status="failed"), "ack.error"),
        (_mutated(status="failed", error={"message": "m"}), "ack.error.code"),
        (_mutated(status="failed", error={"code": "X"}), "ack.error.message"),
    ],
)
def test_ack_parse_errors_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        Ack.from_dict(body)
    assert caught.value.details["field"] == field
    assert caught.value.status == 400


# -- Plan ----------------------------------------------------------------------------


def test_plan_round_trip_keeps_action_order_and_types() -> None:
    plan = Plan(
        sync_id="s",
        etag='"e"',
        target=NodeState(1, (FunctionRef("hello", "2", SHA),)),
        actions=(
            ApplySchema(1, "d", "CREATE TABLE t (x);"),
            DeployFunction("fid", "hello", "2", SHA, 10, "http://x/d?sig=1", "2030-01-01T00:00Z"),
            RemoveFunction("hello", "1"),
        ),
    )
    parsed = Plan.from_dict(plan.to_dict())
    assert parsed == plan
    assert [a.type for a in parsed.actions] == [
        "apply_schema",
        "deploy_function",
        "remove_function",
    ]


def test_plan_with_unknown_action_type_is_refused() -> None:
    body = {
        "sync_id": None,
        "etag": '"e"',
        "target": {"schema_version": 0, "functions": []},
        "actions": [{"type": "reboot"}],
    }
    with pytest.raises(ValidationFailed) as caught:
        Plan.from_dict(body)
    assert caught.value.details["field"] == "plan.actions[0].type"


# -- errors --------------------------------------------------------------------------


def test_error_envelope_shape_and_round_trip() -> None:
    error = ValidationFailed("bad", details={"field": "x"})
    body = error.envelope()
    assert body == {
        "error": {
            "code": "VALIDATION_FAILED",
            "message": "bad",
            "details": {"field": "x"},
            "retryable": False,
        }
    }
    back = EdgesyncError.from_envelope(400, body)
    assert (back.code, back.status, back.details, back.retryable) == (
        "VALIDATION_FAILED",
        400,
        {"field": "x"},
        False,
    )


def test_error_from_a_non_envelope_body() -> None:
    error = EdgesyncError.from_envelope(502, "<html>bad gateway</html>")
    assert error.code == "BAD_RESPONSE"
    assert error.retryable is True


def test_service_unavailable_is_retryable_with_retry_after() -> None:
    error = ServiceUnavailable("later", retry_after=7)
    assert error.status == 503 and error.retryable is True
    assert error.headers["Retry-After"] == "7"
