"""The agent's side of its WasmEdge workers: starting, calling, killing, replacing.

Two pools of the same worker program (:mod:`.worker`):

* :class:`WorkerPool` runs functions for the event loop: up to ``size`` workers
  started on demand, one call at a time each, spoken to through asyncio streams (no
  thread hand-off). A call past its backstop, a worker that dies, or a cancelled
  call costs that worker: it is killed and the next call starts a fresh one.
* :class:`CompilePool` serves the blocking ``prepare`` path (AOT compilation, from
  any thread): up to ``size`` workers, closed when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.base import RuntimeUnavailable
from agent.runtime.wasmedge.channel import Frame, FrameChannel
from agent.runtime.wasmedge.discovery import Installation, worker_command
from agent.runtime.wasmedge.protocol import encode, read_frame
from edgesync.errors import EdgesyncError

log = logging.getLogger("edgesync.runtime.wasmedge")

START_SECONDS = 60.0  # a cold start maps LLVM (~100 MB) from disk
COMPILER_IDLE_SECONDS = 30.0


class WorkerDied(EdgesyncError):
    """The worker running a call died (crash, OOM kill, kill -9)."""

    def __init__(self, reason: str, *, backstop: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.backstop = backstop  # killed by us at the call's backstop


def _spawn(installation: Installation) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    command, env = worker_command(installation)
    try:
        process = subprocess.Popen(
            [*command, installation.library, str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the agent, which decides
        )
    except OSError as exc:
        ours.close()
        raise RuntimeUnavailable(f"cannot start a WasmEdge worker: {exc}") from exc
    finally:
        theirs.close()
    return process, ours


def _not_ready(process: subprocess.Popen[bytes], hello: dict[str, Any] | None) -> Exception:
    if hello is not None:
        return RuntimeUnavailable(f"WasmEdge worker failed: {hello.get('message')}")
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1)
    return RuntimeUnavailable(
        f"WasmEdge worker exited (status {process.returncode}) before it was ready"
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


@dataclass(eq=False)
class _AsyncWorker:
    process: subprocess.Popen[bytes]
    socket: socket.socket
    channel: FrameChannel
    forget: set[str] = field(default_factory=set)
    backstopped: bool = False

    def kill(self, backstop: bool = False) -> None:
        self.backstopped = self.backstopped or backstop
        _kill(self.process)
        try:
            self.channel.close()
        except RuntimeError:  # its event loop is closed already
            self.socket.close()

    async def call(self, message: dict[str, Any], payload: bytes) -> Frame:
        if self.forget:
            message = {**message, "forget": sorted(self.forget)}
            self.forget.clear()
        return await self.channel.request(message, payload)


class WorkerPool:
    """Up to ``size`` workers for the event loop that first uses it."""

    def __init__(self, installation: Installation, size: int) -> None:
        self._installation = installation
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_AsyncWorker] = []
        self._busy: set[_AsyncWorker] = set()
        self._starting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dead: list[subprocess.Popen[bytes]] = []

    def pids(self, *, busy_only: bool = False) -> list[int]:
        workers = self._busy if busy_only else (*self._idle, *self._busy)
        return [worker.process.pid for worker in workers]

    def forget(self, key: str) -> None:
        for worker in (*self._idle, *self._busy):
            worker.forget.add(key)

    async def call(self, message: dict[str, Any], payload: bytes, backstop: float) -> Frame:
        """One request on an idle worker; :class:`WorkerDied` when it dies meanwhile."""
        worker = await self._acquire()
        timer = asyncio.get_running_loop().call_later(backstop, worker.kill, True)
        try:
            reply = await worker.call(message, payload)
        except (ConnectionError, OSError) as exc:
            self._discard(worker)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(worker.process.wait, 5)
            what = _death(worker.process)
            log.warning(
                "WasmEdge worker %d %s%s; the next call starts a new one",
                worker.process.pid,
                what,
                " at its call's backstop" if worker.backstopped else "",
            )
            raise WorkerDied(f"the worker {what}", backstop=worker.backstopped) from exc
        except BaseException:  # cancelled: the call may run on, so the worker goes
            self._discard(worker)
            raise
        finally:
            timer.cancel()
        self._release(worker)
        return reply

    async def _acquire(self) -> _AsyncWorker:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # streams belong to one loop: start afresh
            self.close()
            self._loop = loop
        while True:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.poll() is None:
                    self._busy.add(worker)
                    return worker
                self._dead.append(worker.process)  # died idle (OOM killer, kill): not a call's
                worker.kill()
            if len(self._busy) + self._starting < self._size:
                return await self._start()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise

    async def _start(self) -> _AsyncWorker:
        self._starting += 1
        try:
            process, channel = _spawn(self._installation)
            try:
                frames = await FrameChannel.open(channel)
                worker = _AsyncWorker(process, channel, frames)
                async with asyncio.timeout(START_SECONDS):
                    hello, _ = await frames.next_frame()
            except (ConnectionError, TimeoutError) as exc:
                _kill(process)
                raise _not_ready(process, None) from exc
            except BaseException:
                _kill(process)
                self._dead.append(process)
                raise
            if hello.get("status") != "ready":
                _kill(process)
                raise _not_ready(process, hello)
        finally:
            self._starting -= 1
        self._busy.add(worker)
        return worker

    def _release(self, worker: _AsyncWorker) -> None:
        self._busy.discard(worker)
        self._idle.append(worker)
        self._wake()

    def _discard(self, worker: _AsyncWorker) -> None:
        self._busy.discard(worker)
        worker.kill()
        self._dead.append(worker.process)
        self._dead = [p for p in self._dead if p.poll() is None]
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for worker in (*self._idle, *self._busy):
            worker.kill()
            self._dead.append(worker.process)
        self._idle, self._busy = [], set()
        for process in self._dead:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._dead = []


def _death(process: subprocess.Popen[bytes]) -> str:
    """What happened to a worker, completing "the worker ..."."""
    code = process.poll()
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class _SyncWorker:
    def __init__(self, installation: Installation) -> None:
        self.process, self.channel = _spawn(installation)
        self.channel.settimeout(START_SECONDS)
        self.replies = self.channel.makefile("rb")
        try:
            hello = read_frame(self.replies)
        except OSError:
            hello = None
        if hello is None or hello[0].get("status") != "ready":
            self.close()
            raise _not_ready(self.process, hello[0] if hello else None)
        self.channel.settimeout(None)
        self.version: str = hello[0]["version"]

    def call(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One request; ``TimeoutError`` (the worker is then closed) past ``timeout``."""
        self.channel.settimeout(timeout)
        self.channel.sendall(encode(message))
        frame = read_frame(self.replies)
        if frame is None:
            self.close()
            raise WorkerDied(f"the worker {_death(self.process)}")
        return frame[0]

    def close(self) -> None:
        self.replies.close()
        self.channel.close()
        _kill(self.process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class CompilePool:
    """Blocking workers for ``prepare`` (any thread); idle ones close after a while."""

    def __init__(self, installation: Installation, size: int) -> None:
        self._installation = installation
        self._size = size
        self._idle: list[_SyncWorker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._reaper: threading.Timer | None = None
        self._closed = False

    def start_one(self) -> str:
        """Start a worker now (proving the installation works); its WasmEdge version."""
        worker = _SyncWorker(self._installation)
        with self._cond:
            self._count += 1
            self._idle.append(worker)
            self._schedule_reap()
        return worker.version

    def call(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        worker = self._acquire()
        try:
            reply = worker.call(message, timeout)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            worker.close()
            raise
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()
            self._schedule_reap()
        return reply

    def _acquire(self) -> _SyncWorker:
        with self._cond:
            while not self._idle and self._count >= self._size:
                self._cond.wait()
            if self._closed:
                raise RuntimeUnavailable("the WasmEdge runtime is closed")
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _SyncWorker(self._installation)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _schedule_reap(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self._reaper = threading.Timer(COMPILER_IDLE_SECONDS, self._reap)
        self._reaper.daemon = True
        self._reaper.start()

    def _reap(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for worker in idle:
            worker.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._reaper is not None:
                self._reaper.cancel()
        self._reap()
