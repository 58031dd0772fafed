"""A real PostgreSQL restart: a private server of our own (initdb into a temporary
directory, on a port of its own), restarted with ``pg_ctl restart -m fast`` under a
store that is in use. The shared server at 127.0.0.1:5432 is never touched.

Skips, saying why, when the PostgreSQL server binaries (initdb, pg_ctl) are not
installed, or when running as root without an unprivileged user to run them as."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.errors import StoreUnavailable
from monitor.store.base import StoredStory
from monitor.store.postgres import PostgresStore
from tests.test_store import feed, stored

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def _bindir() -> Path | None:
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(initdb).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PrivatePG:
    bindir: Path
    data: Path
    port: int
    user: str | None  # run as this user (we are root), or as ourselves

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={pwd.getpwnam(self.user).pw_gid}",
                   "--clear-groups", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-t", "30",
                  "-l", str(self.data / "server.log"), *extra)

    @property
    def dsn(self) -> str:
        return f"postgresql://monitor@127.0.0.1:{self.port}/postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def private_pg() -> Iterator[PrivatePG]:
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) installed")
    user: str | None = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to run PostgreSQL as another user")
        try:
            user = pwd.getpwnam("nobody").pw_name
        except KeyError:
            pytest.skip("running as root, and no unprivileged user 'nobody' to run PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="monitor-pg-"))
    data = root / "data"
    data.mkdir()
    if user is not None:
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for p in (root, data):
            os.chown(p, uid, gid)
    pg = PrivatePG(bindir=bindir, data=data, port=_free_port(), user=user)
    try:
        pg._run("initdb", "-D", str(data), "-U", "monitor", "--auth=trust", "-E", "UTF8")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {pg.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{root}'\nfsync = off\n")
        pg.ctl("start")
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL: {e}")
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg.ctl("stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


async def test_the_store_survives_a_real_postgresql_restart(private_pg: PrivatePG) -> None:
    """Restarted under a store in use: calls fail as StoreUnavailable meanwhile (no hang,
    no crash), the store reconnects by itself within its backoff, nothing committed is
    lost, and the LISTEN side reconnects and asks for a reload of what it missed."""
    gaps: list[int] = []
    heard: list[list[StoredStory]] = []

    async def on_gap() -> None:
        gaps.append(1)

    async with PostgresStore(private_pg.dsn, min_size=2, max_size=4,
                             command_timeout=10) as store, \
            PostgresStore(private_pg.dsn, max_size=2) as peer:
        store.listener.backoff = 0.2
        await store.watch_stories(heard.append, on_gap)
        await store.save_feed(feed("a", next_poll=None))
        await peer.save_poll(feed("b"), [stored("s1", "c1")], [])
        await asyncio.to_thread(private_pg.ctl, "stop", "-m", "fast")
        with pytest.raises(StoreUnavailable):  # down: an error, at once, not a hang
            await asyncio.wait_for(store.get_feeds(), 15)
        down = store.outage()
        assert down is not None
        await asyncio.to_thread(private_pg.ctl, "start")
        started = time.monotonic()
        while True:
            try:
                names = [f.name for f in await store.get_feeds()]
                break
            except StoreUnavailable as e:
                assert "unreachable" in str(e) or "connection" in str(e).lower(), e
                await asyncio.sleep(0.1)
            assert time.monotonic() - started < 30, "never reconnected"
        print(f"\nreconnected {time.monotonic() - started:.1f} s after the server was back")
        assert names == ["a", "b"]  # nothing committed before the restart is lost
        assert store.outage() is None
        await asyncio.wait_for(_until(lambda: bool(gaps)), 20)  # listening again
        await peer.save_poll(feed("b"), [stored("s2", "c2")], [])
        await asyncio.wait_for(_until(lambda: any(
            s.story.id == "s2" for batch in heard for s in batch)), 20)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(400):  # (bounded by the caller's wait_for too)
        if cond():
            return
        await asyncio.sleep(0.05)
