"""The Authority: admin token, node JWTs, rotation and enrollment tokens (real store)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import jwt
import pytest

from appliance.auth import Authority, Principal, token_digest
from appliance.metrics import Metrics
from appliance.store.records import EnrollmentTokenRecord, NodeRecord
from appliance.store.store import Store
from edgesync.errors import Forbidden, InvalidEnrollmentToken, Unauthorized
from edgesync.protocol import format_time, utcnow

ADMIN_TOKEN = "unit-admin-token-0123456789abcdef"
SIGNING_KEY = "11" * 32


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def authority(store: Store, metrics: Metrics) -> Authority:
    return Authority(
        store,
        metrics,
        store.node_stamp,
        admin_token=ADMIN_TOKEN,
        signing_key=SIGNING_KEY,
        bcrypt_rounds=4,
    )


def bcrypt_calls(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("edgesync_bcrypt_calls_total") or 0.0


async def register(
    store: Store, authority: Authority, enrollment_id: str | None = None
) -> tuple[str, str]:
    """A registered node and its current token (as the register route does it)."""
    now = utcnow()
    if enrollment_id is None:
        enrollment_id, _ = await _enrollment(store, authority, ttl=timedelta(hours=1))
    node_id = str(uuid.uuid4())
    issued = authority.issue_node_token(node_id, now)
    node = NodeRecord(
        id=node_id,
        name="edge",
        region=None,
        labels={},
        current_schema_version=0,
        state_seq=0,
        token_jti=issued.jti,
        token_expires_at=format_time(issued.expires_at),
        poll_interval_seconds=30,
        agent_version=None,
        sync_status="idle",
        last_heartbeat_at=format_time(now),
        offline_after=format_time(now + timedelta(seconds=90)),
        last_sync_at=None,
        created_at=format_time(now),
    )
    await store.register_node(node, issued.digest, enrollment_id)
    return node_id, issued.token


# -- admin ---------------------------------------------------------------------------


async def test_admin_token_gives_the_admin(authority: Authority) -> None:
    caller = await authority.authenticate(f"Bearer {ADMIN_TOKEN}")
    assert caller.is_admin and caller.node_id is None
    caller.require_admin()
    caller.require_node_or_admin("any-node")
    with pytest.raises(Forbidden):
        caller.require_node("any-node")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        ADMIN_TOKEN,
        f"Basic {ADMIN_TOKEN}",
        "Bearer ",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        "Bearer not.a.jwt",
    ],
)
async def test_bad_headers_are_unauthorized(authority: Authority, header: str | None) -> None:
    with pytest.raises(Unauthorized) as caught:
        await authority.authenticate(header)
    assert caught.value.status == 401 and caught.value.code == "UNAUTHORIZED"


# -- node tokens -----------------------------------------------------------------------


async def test_issued_node_token_authenticates_its_node(store: Store, authority: Authority) -> None:
    node_id, token = await register(store, authority)
    claims = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    assert claims["sub"] == node_id
    assert {"exp", "iat", "sub", "jti"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 90 * 24 * 3600
    caller = await authority.authenticate(f"Bearer {token}")
    assert caller == Principal("node", node_id, claims["jti"])
    caller.require_node(node_id)
    caller.require_node_or_admin(node_id)
    with pytest.raises(Forbidden):
        caller.require_admin()
    with pytest.raises(Forbidden):
        caller.require_node(str(uuid.uuid4()))
    with pytest.raises(Forbidden):
        caller.require_node_or_admin(str(uuid.uuid4()))


async def test_token_is_stored_only_as_a_hash(store: Store, authority: Authority) -> None:
    node_id, token = await register(store, authority)
    row = await store.db.fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
    assert row is not None
    assert row["token_hash"] == token_digest(token)
    assert token not in {str(value) for value in row.values()}


async def test_wrong_signature_is_unauthorized(store: Store, authority: Authority) -> None:
    _node_id, token = await register(store, authority)
    claims = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    forged = jwt.encode(claims, "22" * 32, algorithm="HS256")
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {forged}")
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}AA"
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {tampered}")


async def test_unsigned_token_is_unauthorized(store: Store, authority: Authority) -> None:
    _node_id, token = await register(store, authority)
    claims = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {unsigned}")


async def test_token_missing_a_claim_is_unauthorized(store: Store, authority: Authority) -> None:
    node_id, _ = await register(store, authority)
    no_jti = jwt.encode(
        {"sub": node_id, "iat": int(time.time()), "exp": int(time.time()) + 60},
        SIGNING_KEY,
        algorithm="HS256",
    )
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {no_jti}")


async def test_expired_token_is_unauthorized(store: Store, authority: Authority) -> None:
    node_id, token = await register(store, authority)
    old_jti = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])["jti"]
    # Make an expired token the node's *current* one: only its age refuses it.
    expired = authority.issue_node_token(node_id, utcnow() - timedelta(days=91))
    assert await store.rotate_token(
        node_id, old_jti, expired.jti, expired.digest, format_time(expired.expires_at)
    )
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {expired.token}")


async def test_rotated_away_token_is_unauthorized(store: Store, authority: Authority) -> None:
    node_id, token = await register(store, authority)
    first = await authority.authenticate(f"Bearer {token}")  # now cached as verified
    assert first.jti is not None
    issued = authority.issue_node_token(node_id, utcnow())
    assert await store.rotate_token(
        node_id, first.jti, issued.jti, issued.digest, format_time(issued.expires_at)
    )
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {token}")
    assert (await authority.authenticate(f"Bearer {issued.token}")).node_id == node_id
    # Rotating again from the retired token id changes nothing.
    again = authority.issue_node_token(node_id, utcnow())
    assert not await store.rotate_token(node_id, first.jti, again.jti, again.digest, "x")
    assert (await authority.authenticate(f"Bearer {issued.token}")).node_id == node_id


async def test_token_of_an_unknown_node_is_unauthorized(authority: Authority) -> None:
    ghost = authority.issue_node_token(str(uuid.uuid4()), utcnow())
    with pytest.raises(Unauthorized):
        await authority.authenticate(f"Bearer {ghost.token}")


async def test_verify_node_password_checks_subject(store: Store, authority: Authority) -> None:
    node_id, token = await register(store, authority)
    jti = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])["jti"]
    assert authority.verify_node_password(node_id, token) == jti
    assert authority.verify_node_password(str(uuid.uuid4()), token) is None
    assert authority.verify_node_password(node_id, "garbage") is None


async def test_authentication_never_runs_bcrypt(
    store: Store, authority: Authority, metrics: Metrics
) -> None:
    _node_id, token = await register(store, authority)
    before = bcrypt_calls(metrics)
    for _ in range(5):
        await authority.authenticate(f"Bearer {token}")
        await authority.authenticate(f"Bearer {ADMIN_TOKEN}")
    assert bcrypt_calls(metrics) == before


# -- enrollment tokens -----------------------------------------------------------------


async def _enrollment(
    store: Store, authority: Authority, *, ttl: timedelta, max_uses: int = 1
) -> tuple[str, str]:
    now = utcnow()
    token_id, token, secret_hash = await authority.new_enrollment_secret()
    await store.create_enrollment_token(
        EnrollmentTokenRecord(
            token_id, secret_hash, "eu", max_uses, 0, format_time(now + ttl), format_time(now)
        )
    )
    return token_id, token


async def test_enrollment_token_is_stored_as_bcrypt_hash(
    store: Store, authority: Authority, metrics: Metrics
) -> None:
    token_id, token = await _enrollment(store, authority, ttl=timedelta(hours=1))
    assert token.startswith(f"est_{token_id}.")
    record = await store.get_enrollment_token(token_id)
    assert record is not None
    secret = token.split(".", 1)[1]
    assert secret not in record.secret_hash and record.secret_hash.startswith("$2")
    assert await authority.check_enrollment(token, utcnow()) == token_id
    assert bcrypt_calls(metrics) == 2  # one hash at creation, one check


async def test_enrollment_token_expires(store: Store, authority: Authority) -> None:
    token_id, token = await _enrollment(store, authority, ttl=timedelta(seconds=60))
    assert await authority.check_enrollment(token, utcnow()) == token_id
    with pytest.raises(InvalidEnrollmentToken) as caught:
        await authority.check_enrollment(token, utcnow() + timedelta(seconds=61))
    assert caught.value.status == 401


async def test_enrollment_token_max_uses(store: Store, authority: Authority) -> None:
    token_id, token = await _enrollment(store, authority, ttl=timedelta(hours=1), max_uses=2)
    for _ in range(2):
        assert await authority.check_enrollment(token, utcnow()) == token_id
        await register(store, authority, token_id)  # spends one use
    with pytest.raises(InvalidEnrollmentToken):
        await authority.check_enrollment(token, utcnow())
    # The store refuses a third use on its own too (two racing registrations).
    with pytest.raises(InvalidEnrollmentToken):
        await register(store, authority, token_id)
    record = await store.get_enrollment_token(token_id)
    assert record is not None and record.uses == 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: None,
        lambda t: 12345,
        lambda t: "",
        lambda t: t.replace("est_", "xyz_"),
        lambda t: t.split(".")[0],
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "est_" + "0" * 16 + "." + t.split(".", 1)[1],
    ],
)
async def test_bad_enrollment_tokens(store: Store, authority: Authority, mangle) -> None:
    _, token = await _enrollment(store, authority, ttl=timedelta(hours=1))
    with pytest.raises(InvalidEnrollmentToken):
        await authority.check_enrollment(mangle(token), utcnow())
