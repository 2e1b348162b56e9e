"""Upload claims and staging files that end with the upload that made them.

An upload claims ``(name, version)`` in the metadata store before it stores the
object (only the claimant writes, so concurrent uploads of one version never
mix their bytes; the loser gets 409). A claim must not outlive its upload: a
retry after a crash or a failed upload has to succeed as soon as the failure is
over. So this process is a *serve instance* (a random id with a lease it renews
in the database), every claim names its instance, and a claim is over when

* its upload failed in this process (released at once, or, if the database was
  away, recognised as not live by the next upload of that version), or
* its instance is gone: its lease ran out (another host), or its staging dir on
  this host is no longer locked (killed), or the embedded SQLite store, which
  one process alone may open, was opened by another instance.

Staging files live in ``<data-dir>/staging/<instance id>/``, a directory this
process holds an exclusive ``flock`` on (the kernel drops it when the process
dies). At start-up and on every lease renewal the directories no live process
holds are removed, with their instance's claims: what a killed upload left
behind goes, whatever instant it was killed at.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from appliance.store.records import FunctionRecord
from appliance.store.store import Store
from edgesync.errors import ServiceUnavailable
from edgesync.protocol import utcnow

log = logging.getLogger("edgesync.uploads")

LEASE = timedelta(seconds=30)
RENEW_SECONDS = 5.0


@dataclass
class Claim:
    record: FunctionRecord
    published: bool = False


class UploadClaims:
    """This process's identity as a serve instance, its uploads and its staging dir."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        *,
        lease: timedelta = LEASE,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self.instance_id = uuid.uuid4().hex
        self._store = store
        self._data_dir = data_dir
        self._root = data_dir / "staging"
        self.staging_dir = self._root / self.instance_id
        self._lease = lease
        self._renew_seconds = renew_seconds
        self._live: set[str] = set()
        self._lock_fd: int | None = None
        self._lease_until = utcnow()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._lock_fd = await asyncio.to_thread(_make_locked_dir, self._root, self.instance_id)
        try:
            dead = await asyncio.to_thread(sweep_staging, self._root, self.instance_id)
            if not self._store.db.shared:
                # The embedded store has one process at a time (the data-dir lock):
                # every other instance it knows is gone.
                dead |= set(await self._store.other_instances(self.instance_id))
            released = await self._store.retire_instances(dead)
            if released:
                log.info("released %d upload claim(s) of stopped servers", released)
            await self._renew()
        except BaseException:
            await self._drop_staging_dir()
            raise
        self._task = asyncio.create_task(self._keep_alive(), name="edgesync-upload-claims")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._store.retire_instances([self.instance_id])
        except Exception as exc:  # the lease runs out by itself
            log.warning("could not retire serve instance %s: %s", self.instance_id, exc)
        await self._drop_staging_dir()

    async def _drop_staging_dir(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.staging_dir, True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- uploads ----------------------------------------------------------------------

    @asynccontextmanager
    async def claim(self, record: FunctionRecord) -> AsyncIterator[Claim]:
        """Claim ``record``'s version for the body of the ``with``; released unless published."""
        self._require_lease()
        claim = Claim(record)
        self._live.add(record.id)
        reserved = False
        try:
            await self._store.reserve_function(record, utcnow(), self.instance_id, self._live)
            reserved = True
            yield claim
        finally:
            self._live.discard(record.id)
            if reserved and not claim.published:
                await self._release(record)

    async def publish(self, claim: Claim) -> None:
        """Make the claimed version part of the target."""
        # Past our lease another replica may have taken the claim over: stop.
        self._require_lease()
        await self._store.publish_function(claim.record.id)
        claim.published = True

    async def _release(self, record: FunctionRecord) -> None:
        try:
            await self._store.release_function(record.id)
        except Exception as exc:
            # Not live any more: the next upload of this version takes it over.
            log.warning(
                "upload of %s %s failed and its claim could not be released now (%s);"
                " a retry takes it over",
                record.name,
                record.version,
                type(exc).__name__,
            )

    def _require_lease(self) -> None:
        # Half a lease of margin: this process stops using its claims well before
        # another replica may take them over (clocks of replicas differ a little).
        if utcnow() >= self._lease_until - self._lease / 2:
            raise ServiceUnavailable(
                "this server could not renew its upload lease in the database", retry_after=5
            )

    # -- the lease --------------------------------------------------------------------

    async def _renew(self) -> None:
        now = utcnow()
        await self._store.announce_instance(
            self.instance_id, socket.gethostname(), str(self._data_dir), now, self._lease
        )
        self._lease_until = now + self._lease

    async def _keep_alive(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._renew_seconds)
            try:
                await self._renew()
                dead = await asyncio.to_thread(sweep_staging, self._root, self.instance_id)
                await self._store.retire_instances(dead)
                await self._store.collect_dead_claims(self.instance_id, self._live, utcnow())
            except Exception as exc:  # the database is away: try again next round
                if not failing:
                    log.warning("cannot renew the upload lease: %s", type(exc).__name__)
                failing = True
                continue
            if failing:
                log.info("upload lease renewed again")
            failing = False


def _make_locked_dir(root: Path, instance_id: str) -> int:
    """Create ``root/instance_id`` and hold a ``flock`` on it; return the held descriptor.

    Built under a dot name and renamed, so a sweeper never sees it unlocked.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    building = root / f".{instance_id}"
    building.mkdir(mode=0o700)
    fd = os.open(building, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    building.rename(root / instance_id)
    return fd


def sweep_staging(root: Path, keep: str) -> set[str]:
    """Remove staging dirs no live process holds, and loose files; return their instance ids.

    Loose files are the staging files of versions before per-instance dirs.
    Names starting with a dot are instances being set up.
    """
    dead: set[str] = set()
    if not root.is_dir():
        return dead
    for entry in root.iterdir():
        if entry.name == keep or entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not _held(entry):
                shutil.rmtree(entry, ignore_errors=True)
                dead.add(entry.name)
        else:
            with suppress(FileNotFoundError):
                entry.unlink()
    return dead


def _held(directory: Path) -> bool:
    """Whether a live process holds the ``flock`` of ``directory``."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
