"""What both runtimes do alike around their engines: the function table, parallel prepare."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.runtime.base import FunctionNotDeployed
from edgesync.protocol import FunctionRef


class FunctionTable:
    """The active ``name -> FunctionRef`` table, replaced whole on each release."""

    def __init__(self) -> None:
        self._table: dict[str, FunctionRef] = {}

    def activate(self, table: Mapping[str, FunctionRef]) -> None:
        self._table = dict(table)  # one reference swap: readers see old or new

    def functions(self) -> dict[str, FunctionRef]:
        return dict(self._table)

    def deployed(self, name: str) -> FunctionRef:
        """The active version of ``name``; :class:`FunctionNotDeployed` when there is none."""
        ref = self._table.get(name)
        if ref is None:
            raise FunctionNotDeployed(f"function {name!r} is not deployed")
        return ref


def prepare_in_parallel(
    prepare: Callable[[str, Path], None], modules: Iterable[tuple[str, Path]], parallel: int
) -> None:
    """``prepare(sha256, path)`` for each module, ``parallel`` at a time.

    Every started compile finishes before the first failure is raised, so nothing
    is left writing once the release is aborted.
    """
    todo = list(dict.fromkeys(modules))
    if len(todo) < 2 or parallel < 2:
        for sha256, path in todo:
            prepare(sha256, path)
        return
    with ThreadPoolExecutor(min(parallel, len(todo)), "prepare") as threads:
        futures = [threads.submit(prepare, sha256, path) for sha256, path in todo]
    for future in futures:
        future.result()
