"""Instances that are alive, and the claims of those that are not.

Every ``monitor run`` is an instance: it heartbeats in the store every
``store.heartbeat`` seconds (``Store.heartbeat``: a row with its host, pid, version and
start), and tags the feeds and deliveries it claims with its id. An instance whose last
heartbeat is older than ``store.dead_after`` is declared dead by the next instance that
beats, and what it had claimed is due again at once: a killed instance's feeds are
polled again within one poll interval plus that grace, not when their leases run out.

An instance judges the others only once its own heartbeats have gone through for
``dead_after`` in a row: after an outage of the store that every instance lived through
(a database restart), nobody takes the others for dead before they could beat again.

A clean stop forgets the instance (``Store.leave``). ``/healthz`` lists the instances
alive and those declared dead in the last hour (``health``); ``/readyz`` fails while
this instance's heartbeats do not go through (``ready``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from monitor import __version__
from monitor.errors import StoreError
from monitor.log import get_logger
from monitor.store.base import Instance, Store

log = get_logger("monitor.shell.daemon")

SHOW_DEAD = timedelta(hours=1)  # dead instances /healthz still lists (and what was retaken)


def new_instance(now: datetime) -> Instance:
    """This process as an instance: ``host:pid:random`` (a pid is reused after a restart)."""
    host = socket.gethostname()
    return Instance(id=f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}", host=host,
                    pid=os.getpid(), version=__version__, started=now, heartbeat=now)


class Liveness:
    def __init__(self, store: Store, *, every: float, dead_after: float,
                 clock: Callable[[], datetime],
                 on_error: Callable[[StoreError, str], None] | None = None) -> None:
        self.store = store
        self.every = every
        self.dead_after = dead_after
        self.clock = clock
        self.on_error = on_error
        self.me = new_instance(clock())
        self.last_beat: datetime | None = None  # the last heartbeat that went through
        self._ok_since: datetime | None = None  # heartbeats going through since then
        self._error: str | None = None
        self._instances: list[Instance] = []  # as the last heartbeat read them
        self.retaken: list[Instance] = []  # the instances this one declared dead

    @property
    def id(self) -> str:
        return self.me.id

    async def beat(self) -> list[Instance]:
        """One heartbeat (the scheduler's job): record this instance, judge the others
        (when this one has been connected long enough), refresh the list for /healthz.
        A store error is reported and the next beat tries again."""
        now = self.clock()
        judging = (self._ok_since is not None
                   and now - self._ok_since >= timedelta(seconds=self.dead_after))
        try:
            dead = await self.store.heartbeat(
                self.me, now, dead_after=self.dead_after if judging else None)
            self._instances = await self.store.instances(since=now - SHOW_DEAD)
        except StoreError as e:
            self._ok_since = None
            self._error = str(e)
            if self.on_error is not None:
                self.on_error(e, "heartbeat")
            return []
        if self._ok_since is None:
            self._ok_since = now
        self.last_beat, self._error = now, None
        for d in dead:
            log.warning("instance.dead", instance=d.id, host=d.host, pid=d.pid,
                        last_heartbeat=d.heartbeat.isoformat(),
                        silent_s=round((now - d.heartbeat).total_seconds(), 1),
                        feeds_retaken=d.feeds_retaken, deliveries_retaken=d.deliveries_retaken)
        self.retaken += dead
        return dead

    async def tick(self) -> None:
        """``beat`` as the scheduler's job."""
        await self.beat()

    async def leave(self) -> None:
        """A clean stop: the store forgets this instance (an error is only logged)."""
        try:
            await self.store.leave(self.me.id)
        except StoreError as e:
            log.warning("instance.leave_failed", instance=self.me.id, error=str(e))

    def ready(self) -> tuple[bool, str]:
        """Whether this instance's heartbeats go through: it is not at risk of being
        taken for dead (and its work retaken) by the others."""
        if self.last_beat is None:
            return False, self._error or "no heartbeat yet"
        ago = (self.clock() - self.last_beat).total_seconds()
        ok = self._error is None or ago < self.dead_after
        detail = f"last heartbeat {ago:.1f} s ago"
        if self._error is not None:
            detail += f"; failing: {self._error[:200]}"
        return ok, detail

    def health(self) -> dict[str, Any]:
        """/healthz: this instance, the alive ones and the recently dead (with what their
        death made due again)."""
        now = self.clock()
        alive = [i for i in self._instances if i.dead_since is None]
        dead = [i for i in self._instances if i.dead_since is not None]
        return {
            "me": self.me.id,
            "heartbeat_every": self.every,
            "dead_after": self.dead_after,
            "alive": [_row(i, now) for i in alive],
            "dead": [{**_row(i, now), "dead_since": i.dead_since.isoformat(),  # type: ignore[union-attr]
                      "feeds_retaken": i.feeds_retaken,
                      "deliveries_retaken": i.deliveries_retaken} for i in dead],
        }


def _row(i: Instance, now: datetime) -> dict[str, Any]:
    return {"id": i.id, "host": i.host, "pid": i.pid, "version": i.version,
            "started": i.started.isoformat(), "last_heartbeat": i.heartbeat.isoformat(),
            "heartbeat_age_s": round((now - i.heartbeat).total_seconds(), 1)}
