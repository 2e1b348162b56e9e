"""Reading a node from outside the agent process: ``agent status`` and ``invoke``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from agent.credentials import Credentials
from agent.datadir import unreadable
from agent.edgedb import read_state_readonly
from agent.loop import STATUS_FILE
from agent.runtime.base import FunctionNotDeployed, Limits, module_path
from edgesync.errors import EdgesyncError
from edgesync.protocol import NodeState


def enrolled(data_dir: Path) -> Credentials:
    """The node's credentials; a clear error for a dir no agent has enrolled."""
    credentials = Credentials.load(data_dir)
    if credentials is None or not (data_dir / "edge.db").is_file():
        raise EdgesyncError(
            f"{data_dir} holds no enrolled node (run edgesync agent --data-dir {data_dir}"
            " --enrollment-token ... first)",
            code="NOT_ENROLLED",
        )
    return credentials


def committed_state(data_dir: Path) -> NodeState:
    database = data_dir / "edge.db"
    try:
        return read_state_readonly(database)
    except (sqlite3.Error, ValueError) as exc:  # libsql raises ValueError
        raise unreadable(database, exc) from exc


def read_status(data_dir: Path) -> dict[str, Any]:
    credentials = enrolled(data_dir)
    state = committed_state(data_dir)
    status: dict[str, Any] = {
        "node_id": credentials.node_id,
        "name": credentials.name,
        "server": credentials.server,
        "token_expires_at": credentials.token_expires_at,
        "state": state.to_dict(),
        "state_etag": state.digest(),
    }
    try:
        status["agent"] = json.loads((data_dir / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        status["agent"] = None
    return status


def invoke_local(
    data_dir: Path, name: str, stdin: bytes, runtime_kind: str, timeout: float, memory_mb: int
) -> bytes:
    """Run the function the node's committed state names, in this process."""
    from agent.runtime import open_runtime

    enrolled(data_dir)
    state = committed_state(data_dir)
    table = {ref.name: ref for ref in state.functions}
    ref = table.get(name)
    if ref is None:
        raise FunctionNotDeployed(f"function {name} is not deployed on this node")
    runtime = open_runtime(runtime_kind, data_dir)
    try:
        runtime.prepare(ref.sha256, module_path(data_dir, ref.sha256))
        runtime.activate({name: ref})
        env = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": f"/functions/{name}",
            "QUERY_STRING": "",
            "CONTENT_LENGTH": str(len(stdin)),
            "CONTENT_TYPE": "",
        }
        result = asyncio.run(
            runtime.invoke(name, stdin, env, Limits(timeout, memory_mb * 1024 * 1024))
        )
        return result.stdout
    finally:
        runtime.close()
