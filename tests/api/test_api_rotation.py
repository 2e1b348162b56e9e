"""Token rotation never brings back a token id the node held before."""

from __future__ import annotations

import jwt
from api_support import Api, Node, expect_error


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def rotate(api: Api, node: Node, jti: str | None = None) -> Node:
    body = {} if jti is None else {"jti": jti}
    rotated = await api.json(
        "POST", f"/api/v1/nodes/{node.id}/token/rotate", json=body, headers=node.headers
    )
    return Node(node.id, rotated["token"], node.body)


async def test_a_rotation_cannot_revive_a_rotated_away_token(api: Api) -> None:
    first = await api.register()
    second = await rotate(api, first)
    path = f"/api/v1/nodes/{first.id}/token/rotate"
    revive = await api.post(path, json={"jti": jti_of(first.token)}, headers=second.headers)
    await expect_error(revive, 401, "UNAUTHORIZED")
    # Neither token came back to life; the current one still works.
    await expect_error(await api.poll(first), 401, "UNAUTHORIZED")
    assert (await api.plan(second))["etag"]


async def test_no_token_id_the_node_ever_held_comes_back(api: Api) -> None:
    node = await api.register()
    held = [node]
    for index in range(3):
        held.append(await rotate(api, held[-1], f"{index:032x}"))
    current = held[-1]
    path = f"/api/v1/nodes/{node.id}/token/rotate"
    for old in held:
        again = await api.post(path, json={"jti": jti_of(old.token)}, headers=current.headers)
        await expect_error(again, 401, "UNAUTHORIZED")
    for old in held[:-1]:
        await expect_error(await api.poll(old), 401, "UNAUTHORIZED")
    assert (await api.plan(current))["etag"]


async def test_the_lost_rotation_retry_still_works_after_the_history_check(api: Api) -> None:
    node = await api.register()
    chosen = "5a" * 16
    first = await rotate(api, node, chosen)
    repeated = await rotate(api, node, chosen)  # the old token, asking the same again
    assert jti_of(repeated.token) == chosen == jti_of(first.token)
    assert (await api.plan(repeated))["etag"]
    # The new token may rotate on as usual.
    assert (await api.plan(await rotate(api, repeated)))["etag"]
