"""Instances' heartbeats (``shell.liveness``) on a real store, with a clock the test moves:
who is declared dead, when, by whom, and what /healthz and /readyz say."""

from __future__ import annotations

from pathlib import Path

from monitor.errors import StoreUnavailable
from monitor.shell.liveness import Liveness
from monitor.store.sqlite import SQLiteStore
from tests.clock import Clock
from tests.test_store import feed, t


async def test_a_silent_instance_is_declared_dead_and_its_feeds_retaken(tmp_path: Path) -> None:
    clock = Clock(t(0))
    async with SQLiteStore(str(tmp_path / "m.db")) as store:
        a = Liveness(store, every=2, dead_after=6, clock=clock)
        b = Liveness(store, every=2, dead_after=6, clock=clock)
        assert a.id != b.id
        await a.beat()
        await b.beat()
        await store.save_feeds([feed("f1", next_poll=t(0))])
        [claimed] = await store.claim_due_feeds(t(0), limit=1, lease_until=t(10), by=a.id)
        # a falls silent (killed); b keeps beating
        for _ in range(5):
            clock.advance(seconds=2)
            assert await b.beat() == []  # not yet: silent for less than dead_after
            if (clock() - t(0)).total_seconds() >= 6:
                break
        clock.advance(seconds=2)
        [dead] = await b.beat()
        assert dead.id == a.id and dead.feeds_retaken == 1
        assert [f.name for f in await store.claim_due_feeds(clock(), limit=5,
                                                            lease_until=t(10), by=b.id)] == ["f1"]
        health = b.health()
        assert [i["id"] for i in health["alive"]] == [b.id]
        assert [(i["id"], i["feeds_retaken"]) for i in health["dead"]] == [(a.id, 1)]
        assert b.ready() == (True, "last heartbeat 0.0 s ago")
        # a comes back (it was only slow): alive again, not judged by it at once
        assert await a.beat() == []
        await b.beat()
        assert sorted(i["id"] for i in b.health()["alive"]) == sorted([a.id, b.id])
        await a.leave()
        await b.beat()
        assert [i["id"] for i in b.health()["alive"]] == [b.id]
        del claimed


async def test_an_instance_judges_only_after_dead_after_of_good_heartbeats(
        tmp_path: Path) -> None:
    """After an outage every instance lived through (a database restart), nobody takes
    the others for dead before they could beat again."""
    clock = Clock(t(0))
    async with SQLiteStore(str(tmp_path / "m.db")) as store:
        a = Liveness(store, every=2, dead_after=6, clock=clock)
        b = Liveness(store, every=2, dead_after=6, clock=clock)
        await a.beat()
        await b.beat()
        clock.advance(seconds=30)  # both silent for 30 s (the store was down)
        errors: list[str] = []
        b.on_error = lambda e, during: errors.append(during)
        real, b.store = b.store, _Down()  # type: ignore[assignment]
        assert await b.beat() == [] and errors == ["heartbeat"]
        ok, detail = b.ready()
        assert not ok and "failing" in detail
        b.store = real
        assert await b.beat() == []  # back, but not judging yet: a may beat again
        clock.advance(seconds=2)
        await a.beat()
        clock.advance(seconds=5)
        assert await b.beat() == []  # judging now, and a is alive
        assert b.ready()[0]


class _Down:
    async def heartbeat(self, *a: object, **kw: object) -> list[object]:
        raise StoreUnavailable("heartbeat: unreachable")

    async def instances(self, *a: object, **kw: object) -> list[object]:
        raise StoreUnavailable("instances: unreachable")
