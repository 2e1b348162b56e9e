"""Liveness in batches: coalesced per node in memory, written by one flush."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from test_store import add_node, enrollment

from appliance.liveness import LivenessBuffer
from appliance.store.records import LivenessMark
from appliance.store.store import Store
from edgesync.errors import ServiceUnavailable
from edgesync.protocol import parse_time


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[LivenessMark]] = []
        self.fail = False

    async def __call__(self, marks: list[LivenessMark]) -> int:
        if self.fail:
            raise ServiceUnavailable("database away")
        self.batches.append(marks)
        return len(marks)


async def test_marks_coalesce_per_node_and_flush_in_one_batch() -> None:
    recorder, now = Recorder(), [1_000_000.0]
    buffer = LivenessBuffer(recorder, now=lambda: now[0])
    buffer.seen("a", 30, "1.0", '"s1"')
    now[0] += 5
    buffer.seen("a", 30)  # a poll without facts keeps the earlier ones
    buffer.seen("b", 10, None, '"s2"')
    assert buffer.pending == 2
    await buffer.flush()
    (batch,) = recorder.batches
    marks = {mark.node_id: mark for mark in batch}
    assert marks["a"].agent_version == "1.0" and marks["a"].state_etag == '"s1"'
    seen = parse_time(marks["a"].seen_at)
    assert parse_time(marks["a"].offline_after) - seen == timedelta(seconds=90)
    assert seen.timestamp() == pytest.approx(1_000_005.0)
    assert parse_time(marks["b"].offline_after) - parse_time(marks["b"].seen_at) == timedelta(
        seconds=30
    )
    assert buffer.pending == 0 and buffer.flushed_rows == 2
    await buffer.flush()
    assert len(recorder.batches) == 1  # nothing pending: no statement


async def test_a_failed_flush_keeps_its_marks_and_newer_ones_win() -> None:
    recorder, now = Recorder(), [1_000_000.0]
    buffer = LivenessBuffer(recorder, now=lambda: now[0])
    buffer.seen("a", 30, "1.0")
    recorder.fail = True
    with pytest.raises(ServiceUnavailable):
        await buffer.flush()
    assert buffer.pending == 1
    recorder.fail = False
    await buffer.flush()
    assert recorder.batches[0][0].agent_version == "1.0"


async def test_close_writes_what_is_pending() -> None:
    recorder = Recorder()
    buffer = LivenessBuffer(recorder, interval=3600)
    buffer.start()
    buffer.seen("a", 30)
    await buffer.close()
    assert [mark.node_id for mark in recorder.batches[0]] == ["a"]


async def test_the_store_writes_a_batch_and_skips_unknown_nodes(store: Store) -> None:
    token_id = await enrollment(store)
    nodes = [await add_node(store, token_id, name=f"n{i}") for i in range(3)]
    buffer = LivenessBuffer(store.record_liveness, now=lambda: 2_000_000_000.0)
    for i, node in enumerate(nodes):
        buffer.seen(node.id, 30, f"v{i}", None)
    buffer.seen(str(uuid.uuid4()), 30)  # deleted meanwhile: matches no row
    await buffer.flush()
    assert buffer.flushed_rows == 3
    for i, node in enumerate(nodes):
        stored = await store.get_node(node.id)
        assert stored.agent_version == f"v{i}"
        assert parse_time(stored.last_heartbeat_at).timestamp() == 2_000_000_000.0
        assert stored.status(parse_time(stored.last_heartbeat_at) + timedelta(seconds=89)) in (
            "online",
            "syncing",
        )
        assert stored.status(parse_time(stored.last_heartbeat_at) + timedelta(seconds=91)) == (
            "offline"
        )
