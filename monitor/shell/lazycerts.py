"""TLS contexts made while importing aiohttp load their CA certificates at their first
handshake, not at import.

aiohttp builds its two default TLS contexts (verified and not) when it is imported, and
each loads the system's CA bundle: about 25 ms of CPU apiece, a tenth of what ``monitor
once`` costs when every feed answers 304, and spent even when no feed is https.
``certs_on_first_use()`` wraps that import: while it lasts, a context that asks for the
default certificates (``load_default_certs``, ``set_default_verify_paths``) becomes a
``CertsOnUse``, which loads them, once, just before its first ``wrap_bio`` or
``wrap_socket`` (a handshake: asyncio's and uvloop's TLS go through ``wrap_bio``). The
certificates a context trusts when it first meets a server are exactly those it would
have had; nothing about verification changes, only when the bundle is read.

The patch is on ``ssl.SSLContext`` for the length of the import and undone after it, in
the importing thread. A context another thread makes meanwhile is deferred the same way,
and is as correct.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()


class CertsOnUse(ssl.SSLContext):
    """An ``ssl.SSLContext`` whose default CA certificates are loaded before its first
    handshake (see the module docstring)."""

    _deferred: list[tuple[str, Any]]  # ("paths", None) | ("certs", purpose)

    def load_deferred(self) -> None:
        """Load what was deferred (once; thread-safe)."""
        if not self.__dict__.get("_deferred"):
            return
        with _LOCK:  # emptied only once loaded: a second handshake meanwhile waits here
            for what, purpose in self.__dict__.get("_deferred") or ():
                if what == "certs":
                    _LOAD_DEFAULT_CERTS(self, purpose)
                else:
                    _SET_DEFAULT_VERIFY_PATHS(self)
            self._deferred = []

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_deferred()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_deferred()
        return super().wrap_socket(*args, **kwargs)


_LOAD_DEFAULT_CERTS = ssl.SSLContext.load_default_certs
_SET_DEFAULT_VERIFY_PATHS = ssl.SSLContext.set_default_verify_paths


def _defer(ctx: ssl.SSLContext, what: str, purpose: Any = None) -> None:
    if type(ctx) is ssl.SSLContext:
        ctx.__class__ = CertsOnUse
    if not isinstance(ctx, CertsOnUse):  # a subclass of someone else's: load it now
        if what == "certs":
            _LOAD_DEFAULT_CERTS(ctx, purpose)
        else:
            _SET_DEFAULT_VERIFY_PATHS(ctx)
        return
    ctx.__dict__.setdefault("_deferred", []).append((what, purpose))


def _deferred_certs(self: ssl.SSLContext, purpose: Any = ssl.Purpose.SERVER_AUTH) -> None:
    _defer(self, "certs", purpose)


def _deferred_paths(self: ssl.SSLContext) -> None:
    _defer(self, "paths")


@contextlib.contextmanager
def certs_on_first_use() -> Iterator[None]:
    """While it lasts, default CA certificates asked for are loaded at first use."""
    had_paths = "set_default_verify_paths" in vars(ssl.SSLContext)
    ssl.SSLContext.load_default_certs = _deferred_certs  # type: ignore[method-assign]
    ssl.SSLContext.set_default_verify_paths = _deferred_paths  # type: ignore[method-assign]
    try:
        yield
    finally:
        ssl.SSLContext.load_default_certs = _LOAD_DEFAULT_CERTS  # type: ignore[method-assign]
        if had_paths:
            ssl.SSLContext.set_default_verify_paths = (  # type: ignore[method-assign]
                _SET_DEFAULT_VERIFY_PATHS)
        else:
            del ssl.SSLContext.set_default_verify_paths
