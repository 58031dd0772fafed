"""``open_store(url)``: a store from a database URL (the config's ``store:`` setting).

    sqlite:///monitor.db                 relative: to the working directory here; in
                                         config.yaml, to the config file's directory
    sqlite:////var/lib/monitor/m.db      an absolute path (four slashes)
    sqlite:///:memory:                   a private in-memory database (tests)
    sqlite:///m.db?synchronous=full      SQLite options: synchronous, busy_timeout (seconds)
    postgresql://user:pw@host:5432/db    PostgreSQL (``postgres://`` too)
    postgresql://…/db?schema=monitor     tables in that schema (created when missing)

The returned store is not open yet: use ``async with open_store(url) as store:``. It
migrates its schema when it opens, unless ``migrate=False`` (``monitor migrate``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from monitor.errors import StoreError
from monitor.log import redact_url
from monitor.store.base import Store

SUPPORTED = ("sqlite:///", "postgresql://", "postgres://")


def open_store(url: str, *, migrate: bool = True, pool: tuple[int, int] = (1, 5),
               timeout: float = 60.0) -> Store:
    """The Store for ``url`` (not yet opened). Raises StoreError for an unsupported URL.
    ``pool`` (min, max connections) and ``timeout`` (one command's limit, seconds) are
    PostgreSQL's (``store.pool``, ``store.timeout``); SQLite has one connection."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite" and sep:
        return _sqlite(url, migrate)
    if scheme in ("postgresql", "postgres") and sep:
        return _postgres(url, migrate, pool, timeout)
    raise StoreError(
        f"unsupported store URL {redact_url(url)!r}: use one of {', '.join(s + '…' for s in SUPPORTED)}"
    )


def _sqlite(url: str, migrate: bool) -> Store:
    from monitor.store.sqlite import SQLiteStore

    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise StoreError(f"invalid SQLite URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
    path, _, query = rest[1:].partition("?")
    if not path:
        raise StoreError(f"invalid SQLite URL {url!r}: no database path")
    options = dict(parse_qsl(query, keep_blank_values=True))
    synchronous = options.pop("synchronous", "NORMAL")
    try:
        busy = float(options.pop("busy_timeout", "10"))
    except ValueError as e:
        raise StoreError(f"invalid SQLite URL {url!r}: busy_timeout must be a number of seconds") from e
    if options:
        raise StoreError(
            f"invalid SQLite URL {url!r}: unknown option(s) {', '.join(sorted(options))} "
            "(supported: synchronous, busy_timeout)"
        )
    return SQLiteStore(path, synchronous=synchronous, busy_timeout=busy, migrate=migrate)


def _postgres(url: str, migrate: bool, pool: tuple[int, int], timeout: float) -> Store:
    from monitor.store.postgres import PostgresStore

    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise StoreError(f"invalid PostgreSQL URL: {e}") from e
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    return PostgresStore(dsn, schema=schema or None, migrate=migrate, min_size=pool[0],
                         max_size=pool[1], command_timeout=timeout)
