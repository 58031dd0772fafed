"""Driver errors as ``StoreError``s that say what happened and what to do, in one line.

    sqlite_error(e, path=..., what="save_poll 'bbc'")
        → StoreFull("save_poll 'bbc': database or disk is full — free space on the disk
          holding /var/lib/monitor (the store /var/lib/monitor/state.db)")

SQLite's result codes (``sqlite3.Error.sqlite_errorcode``; the primary code is the low
byte), with the message text as a fallback for old drivers:

    SQLITE_FULL (13)                       StoreFull         free space on the disk
    SQLITE_READONLY (8), SQLITE_PERM (3)   StoreReadOnly     make file and directory writable
    SQLITE_CORRUPT (11), SQLITE_NOTADB (26) StoreCorrupt     restore from backup or move aside
    SQLITE_CANTOPEN (14)                   StoreUnavailable  the directory must exist, writable
    SQLITE_BUSY (5), SQLITE_LOCKED (6)     StoreBusy         another process holds the lock
    SQLITE_IOERR (10)                      StoreError "io"   check the disk

PostgreSQL's by SQLSTATE class (asyncpg's ``sqlstate``) and the connection's OS errors:
refused, unknown host or timed out → StoreUnavailable naming host and port; a wrong
password or a missing database → StoreUnavailable with the fix; 53100 disk full →
StoreFull; 25006 read-only transaction (a replica) → StoreReadOnly; 53300 too many
connections and lock timeouts → StoreBusy; XX001/XX002 → StoreCorrupt.
"""

from __future__ import annotations

import errno
import getpass
import os
import sqlite3
from urllib.parse import urlsplit

from monitor.errors import (
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
)

_FULL, _READONLY, _PERM, _CORRUPT, _NOTADB, _CANTOPEN = 13, 8, 3, 11, 26, 14
_BUSY, _LOCKED, _IOERR = 5, 6, 10


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def file_path(path: str) -> str:
    """The file of a SQLite path or ``file:`` URI (``file:/x/m.db?mode=ro`` → ``/x/m.db``)."""
    if path.startswith("file:"):
        path = path[len("file:"):].split("?", 1)[0]
        if path.startswith("//"):  # file:///x/m.db
            path = path[2:]
    return path


def _build(cls: type[StoreError], what: str, detail: str, where: str,
           fix: str | None) -> StoreError:
    message = f"{what}: {detail}" + (f" — {fix}" if fix else "")
    return cls(message, where=where, detail=detail, fix=fix)


def sqlite_error(e: sqlite3.Error | OSError, *, path: str, what: str) -> StoreError:
    """``e`` (from the driver, or from creating the file) as a classified StoreError."""
    where = file_path(path)
    folder = os.path.dirname(os.path.abspath(where)) if where != ":memory:" else "."
    if isinstance(e, OSError):
        detail = e.strerror or str(e)
        code = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _READONLY,
                errno.EACCES: _PERM, errno.EPERM: _PERM}.get(e.errno or 0, _CANTOPEN)
    else:
        detail = str(e)
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
        text = detail.lower()
        if not code:
            code = (_FULL if "is full" in text
                    else _READONLY if "readonly" in text
                    else _NOTADB if "not a database" in text or "malformed" in text
                    else _CANTOPEN if "unable to open" in text
                    else _BUSY if "locked" in text or "busy" in text
                    else 0)
    if code == _FULL:
        return _build(StoreFull, what, detail, where,
                      f"free space on the disk holding {folder} (the store {where})")
    if code in (_READONLY, _PERM):
        return _build(StoreReadOnly, what, detail, where,
                      f"make {where} and its directory {folder} writable by the user "
                      f"monitor runs as ({_user()}); on a read-only mount, move the store")
    if code in (_CORRUPT, _NOTADB):
        return _build(StoreCorrupt, what, detail, where,
                      f"restore {where} from a backup, or move it aside (with its -wal "
                      "and -shm files): monitor then creates a new, empty one")
    if code == _CANTOPEN:
        return _build(StoreUnavailable, what, detail, where,
                      f"check that {folder} exists and that the user monitor runs as "
                      f"({_user()}) may create files there")
    if code in (_BUSY, _LOCKED):
        return _build(StoreBusy, what, detail, where,
                      f"another process holds {where} locked: stop it, or give more time "
                      "with ?busy_timeout=SECONDS in the store URL")
    if code == _IOERR:
        err = _build(StoreError, what, detail, where,
                     f"the disk holding {where} failed a read or write: check it "
                     "(dmesg, free space)")
        err.kind = "io"
        return err
    return StoreError(f"{what}: {detail}", where=where, detail=detail)


_PG_CLASSES: dict[str, type[StoreError]] = {
    "53100": StoreFull,
    "25006": StoreReadOnly,
    "42501": StoreReadOnly,
    "53300": StoreBusy,
    "55P03": StoreBusy,
    "40P01": StoreBusy,
    "XX001": StoreCorrupt,
    "XX002": StoreCorrupt,
    "28P01": StoreUnavailable,
    "28000": StoreUnavailable,
    "3D000": StoreUnavailable,
    "57P03": StoreUnavailable,
}


def postgres_error(e: BaseException, *, where: str, what: str) -> StoreError:
    """A PostgreSQL driver or connection error as a classified StoreError; ``where`` is
    the URL with its password hidden."""
    detail = str(e) or type(e).__name__
    try:
        parts = urlsplit(where)
        server = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
        database = parts.path.lstrip("/") or "(default)"
    except ValueError:
        server, database = where, "?"
    state = str(getattr(e, "sqlstate", "") or "")
    cls = _PG_CLASSES.get(state)
    fix: str | None = None
    if cls is None and isinstance(e, OSError | TimeoutError):
        cls = StoreUnavailable
        fix = (f"check that PostgreSQL runs on {server} and accepts connections from this "
               "host (listen_addresses, pg_hba.conf, a firewall), and that the host name "
               "in the store URL is right")
    elif state == "53100":
        fix = f"free space on the disk of the PostgreSQL server {server}"
    elif state == "25006":
        fix = f"{server} is a read-only replica: point the store URL at the primary"
    elif state == "42501":
        fix = f"grant the store URL's user the rights on database {database} and its schema"
    elif state in ("28P01", "28000"):
        fix = f"check the user and password of the store URL for {server}"
    elif state == "3D000":
        fix = f"create the database {database} on {server}, or fix the store URL"
    elif state == "57P03":
        fix = f"{server} is starting or shutting down: wait, or check the server"
    elif cls is StoreBusy:
        fix = "the database is overloaded or locked by another client: retry, or look at " \
              "pg_stat_activity"
    elif cls is StoreCorrupt:
        fix = f"the database {database} on {server} is damaged: restore it from a backup"
    if cls is None:
        return StoreError(f"{what}: {detail}", where=where, detail=detail)
    return _build(cls, what, detail, where, fix)
