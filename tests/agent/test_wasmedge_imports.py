"""What a function may import, on both runtimes: WASI preview 1 and nothing else.

WasmEdge links its own socket extensions under ``wasi_snapshot_preview1``
(``sock_open``, ``sock_connect``, ...): a function importing them could open network
connections from the node. Both runtimes refuse such modules at deploy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_runtimes import RUNTIME_KINDS, make_runtime, store_module, wasm_of

from agent.runtime.base import ModuleRejected, Runtime

SOCKET_CLIENT = """(module
  (import "wasi_snapshot_preview1" "sock_open" (func $open (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $open (i32.const 1) (i32.const 1) (i32.const 0)))))"""

HOST_FUNCTION = """(module
  (import "env" "secret" (func $secret (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $secret))))"""


@pytest.fixture(params=RUNTIME_KINDS)
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    instance = make_runtime(str(request.param), tmp_path / "node")
    try:
        yield instance
    finally:
        instance.close()


@pytest.mark.parametrize(
    ("wat", "named"),
    [(SOCKET_CLIENT, "wasi_snapshot_preview1.sock_open"), (HOST_FUNCTION, "env.secret")],
    ids=["wasmedge-sockets", "host-function"],
)
def test_imports_beyond_wasi_preview1_are_refused_at_deploy(
    runtime: Runtime, tmp_path: Path, wat: str, named: str
) -> None:
    sha, path = store_module(tmp_path / "node", wasm_of(wat))
    with pytest.raises(ModuleRejected) as caught:
        runtime.prepare(sha, path)
    assert caught.value.code == "INVALID_MODULE"
    assert caught.value.details["imports"] == [named]
