"""The event loop the commands run on (monitor.shell.loop)."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from monitor.errors import MonitorError
from monitor.shell import loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_by_default_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop", reason="uvloop is not installed on this platform")
    monkeypatch.delenv("MONITOR_EVENT_LOOP", raising=False)
    assert loop.run(_loop_module()) == "uvloop"
    assert loop.run(_loop_module(), choice="uvloop") == "uvloop"
    monkeypatch.setenv("MONITOR_EVENT_LOOP", "asyncio")
    assert loop.run(_loop_module()) == "asyncio"
    assert loop.loop_factory() == ("asyncio", None)


def test_a_bad_choice_is_a_clear_error_and_starts_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_EVENT_LOOP", "tokio")
    coro = _loop_module()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be one
        with pytest.raises(MonitorError, match="MONITOR_EVENT_LOOP='tokio': expected one of"):
            loop.run(coro)
    assert coro.cr_frame is None  # closed, not left pending
