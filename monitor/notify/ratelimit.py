"""Pacing of a channel's sends: a token bucket on the event loop's clock."""

from __future__ import annotations

import asyncio


class RateLimiter:
    """Async token bucket: at most ``rate`` acquisitions per second, bursts of ``burst``.

    ``acquire()`` sleeps (without blocking the loop) until a token is available; waiters
    are served in order.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._last: float | None = None
        self._lock = asyncio.Lock()

    def reserve(self, now: float, n: int = 1) -> float:
        """Take ``n`` tokens at time ``now`` (seconds, monotonic); return the wait needed."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, n: int = 1) -> None:
        """Wait until ``n`` sends fit the rate (a batch of n counts as n messages)."""
        async with self._lock:
            wait = self.reserve(asyncio.get_running_loop().time(), n)
            if wait > 0:
                await asyncio.sleep(wait)
