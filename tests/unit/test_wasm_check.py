"""WASM validation: in a thread for small modules, in a child process for big ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.wasm_check import IN_PROCESS_LIMIT, validate_bytes, validate_file
from edgesync.errors import InvalidWasm

BIG = IN_PROCESS_LIMIT + 512 * 1024


def test_valid_module(wasm) -> None:
    validate_bytes(wasm.module(1))


def test_big_module_builder_is_valid(wasm) -> None:
    module = wasm.big(BIG)
    assert len(module) > IN_PROCESS_LIMIT
    validate_bytes(module)


@pytest.mark.parametrize("kind", ["not_wasm", "invalid", "empty", "magic_only", "truncated"])
def test_invalid_modules(wasm, kind: str) -> None:
    module = {
        "not_wasm": wasm.not_wasm(),
        "invalid": wasm.invalid(),
        "empty": b"",
        "magic_only": b"\x00asm",
        "truncated": wasm.module(1)[:-3],
    }[kind]
    with pytest.raises(InvalidWasm) as caught:
        validate_bytes(module)
    assert caught.value.status == 400 and caught.value.code == "INVALID_WASM"


async def test_validate_small_file(wasm, tmp_path: Path) -> None:
    good = tmp_path / "good.wasm"
    good.write_bytes(wasm.module(2))
    await validate_file(good, good.stat().st_size)
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(wasm.invalid())
    with pytest.raises(InvalidWasm):
        await validate_file(bad, bad.stat().st_size)


async def test_validate_big_files_in_a_child_process(wasm, tmp_path: Path) -> None:
    good = tmp_path / "big.wasm"
    good.write_bytes(wasm.big(BIG))
    await validate_file(good, good.stat().st_size)

    bad = tmp_path / "big-bad.wasm"
    bad.write_bytes(wasm.invalid(BIG))
    with pytest.raises(InvalidWasm) as caught:
        await validate_file(bad, bad.stat().st_size)
    assert caught.value.details["reason"]

    not_wasm = tmp_path / "big-not.wasm"
    not_wasm.write_bytes(b"\x7fELF" + b"\x00" * BIG)
    with pytest.raises(InvalidWasm):
        await validate_file(not_wasm, not_wasm.stat().st_size)
