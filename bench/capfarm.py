"""The feed farm of the capacity benchmark (``bench/bench_capacity.py``): many RSS feeds
served from a process of its own, so that its CPU is never counted as the daemon's.

    python -m bench.capfarm --feeds 50000 --interval 300 --log-dir DIR [--procs 2]

It listens on one port of 16 loopback addresses (127.0.0.1 … 127.0.0.16); feed ``i`` is
``http://127.0.0.{1 + i % 16}:PORT/f/{i}.xml`` (``feed_url``). It prints ``READY PORT``
on stdout once every address is bound, then serves until SIGTERM, or until the process
that started it goes away (so a crashed harness leaves nothing behind).

What each feed says is a pure function of the feed's number and the time (``Farm``):
every feed starts with 10 items; in each cycle (``interval`` seconds from ``--t0``) a
deterministic 20 % of the feeds gain 1–5 new items, at a point of the cycle of their own
(``phase``) so that publishing is spread. A response lists the newest 10 items; its ETag
and Last-Modified follow the newest item, and a conditional GET that matches either
answers 304. Titles splice thirds of three real headlines (``../shared/corpora``'s UCI
sample) so that they read like news and rarely collide; where the corpus is absent they
are generated from a fixed word list (``Farm.titles_from`` says which). One item in 50
carries the word ``MARKER`` (the rule of the benchmark matches it).

Each request is recorded (wall time, feed, status) as three float64 in
``DIR/requests-N.bin``, one file per serving process, flushed every second: 24 bytes a
request and no formatting on the serving path. ``read_requests`` reads them back.

The HTTP server is a raw ``asyncio.Protocol`` (keep-alive, GET only, no chunking): one
process answers several thousand requests a second, far above the ~170/s that 50,000
feeds every 5 minutes need. With ``--procs N`` the listening sockets are shared by N
forked processes (one accept queue per address).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import csv
import ctypes
import math
import os
import signal
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from xml.sax.saxutils import escape

HOSTS = 16
ITEMS = 10  # items a feed holds and lists
SHARE = 5  # one feed in SHARE gains items in a cycle (20 %)
MARKER = "earthquake"  # one item in 50 carries it
MARKER_EVERY = 50
UCI = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "uci-news-aggregator" / "headlines.csv"
_FALLBACK_TEXT = (
    "minister talks trade deal border court ruling storm warning markets rally oil prices "
    "election result protest capital bank rates strike union health plan vaccine trial "
    "police arrest fire city council budget school reform climate summit energy grid "
    "football final champion record heat drought flood rescue mission space launch "
    "satellite company profit shares fall rise report inquiry scandal resign governor "
    "senate vote bill law tax cuts jobs data growth inflation export import port ship"
)
_FALLBACK = _FALLBACK_TEXT.split()


def host(i: int) -> str:
    return f"127.0.0.{1 + i % HOSTS}"


def feed_url(i: int, port: int) -> str:
    return f"http://{host(i)}:{port}/f/{i}.xml"


def _h(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def load_headlines(path: Path = UCI) -> tuple[list[str], str]:
    """Headlines to build titles from, and where they came from. Those already carrying
    the marker word are left out, so that only the farm decides what matches."""
    if path.exists():
        with path.open(encoding="utf-8", newline="") as fh:
            rows = [r["TITLE"].strip() for r in csv.DictReader(fh)]
        rows = [r for r in rows if r and MARKER not in r.lower()]
        if len(rows) >= 100:
            return rows, f"uci-news-aggregator ({len(rows)} headlines)"
    words = _FALLBACK
    made = [" ".join(words[(_h("w", n, j)) % len(words)] for j in range(8)).capitalize()
            for n in range(2000)]
    return made, f"generated from a word list ({path} absent)"


def _thirds(words: list[str]) -> tuple[list[str], list[str], list[str]]:
    a, b = len(words) // 3, 2 * len(words) // 3
    return words[:a], words[a:b], words[b:]


class Farm:
    """The content of every feed at any time: pure arithmetic on (feed, cycle)."""

    def __init__(self, feeds: int, interval: float, t0: float, headlines: list[str]) -> None:
        self.feeds, self.interval, self.t0 = feeds, interval, t0
        self.headlines = headlines
        self._thirds = [_thirds(h.split()) for h in headlines if len(h.split()) >= 3]
        # per feed: the items it had after cycle 0, 1, 2, … (extended as time goes on)
        self._memo: dict[int, list[int]] = {}

    def phase(self, i: int) -> float:
        """Where in each cycle feed ``i`` publishes, as a fraction of the interval."""
        return (_h("p", i) % 1000) / 1000.0

    def new_items(self, i: int, c: int) -> int:
        """Items feed ``i`` gains in cycle ``c`` (≥ 1): 1–5 for one feed in five."""
        h = _h("n", i, c)
        return 1 + (h // SHARE) % 5 if h % SHARE == 0 else 0

    def published_at(self, i: int, c: int) -> float:
        return self.t0 + (c + self.phase(i)) * self.interval

    def count(self, i: int, now: float) -> int:
        """Items feed ``i`` has published by ``now`` (wall time)."""
        # (+1e-9: an item counts from its own publishing time, whatever the rounding)
        cycles = max(0, math.floor((now - self.t0) / self.interval - self.phase(i) + 1e-9))
        cum = self._memo.setdefault(i, [ITEMS])
        while len(cum) <= cycles:
            cum.append(cum[-1] + self.new_items(i, len(cum)))
        return cum[cycles]

    def item_time(self, i: int, k: int) -> float:
        """When item ``k`` of feed ``i`` was published: the first 10 an hour apart before
        the start, later ones at their cycle's publishing point."""
        if k < ITEMS:
            return self.t0 - (ITEMS - k) * 3600.0
        n, c = ITEMS, 0
        while True:
            c += 1
            n += self.new_items(i, c)
            if k < n:
                return self.published_at(i, c)

    def title(self, i: int, k: int) -> str:
        n = len(self._thirds)
        words = [*self._thirds[_h("a", i, k) % n][0], *self._thirds[_h("b", i, k) % n][1],
                 *self._thirds[_h("c", i, k) % n][2]]
        if self.marked(i, k):
            words = [*words[:2], MARKER, *words[2:]]
        return " ".join(words)

    @staticmethod
    def marked(i: int, k: int) -> bool:
        return _h("m", i, k) % MARKER_EVERY == 0

    def body(self, i: int, n: int) -> tuple[bytes, float]:
        """The feed's document listing its newest items, and its newest item's time."""
        items = []
        newest = 0.0
        for k in range(n - 1, max(-1, n - 1 - ITEMS), -1):
            at = self.item_time(i, k)
            newest = max(newest, at)
            summary = self.headlines[_h("s", i, k) % len(self.headlines)]
            items.append(
                f"<item><title>{escape(self.title(i, k))}</title>"
                f"<link>http://news.example/{i}/{k}</link>"
                f"<guid isPermaLink='false'>urn:cap:{i}:{k}</guid>"
                f"<pubDate>{formatdate(at, usegmt=True)}</pubDate>"
                f"<description>{escape(summary)}</description></item>")
        doc = (f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
               f"<title>Feed {i}</title><link>http://news.example/{i}</link>"
               f"<description>capacity farm</description>{''.join(items)}</channel></rss>")
        return doc.encode(), newest


class Recorder:
    """(wall time, feed, status) of each request, appended to a binary file each second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buf = array.array("d")
        self._fh = path.open("ab")

    def add(self, feed: int, status: int) -> None:
        self.buf.extend((time.time(), float(feed), float(status)))

    def flush(self) -> None:
        if self.buf:
            self.buf.tofile(self._fh)
            self._fh.flush()
            self.buf = array.array("d")

    def close(self) -> None:
        self.flush()
        self._fh.close()


def read_requests(log_dir: Path) -> Iterator[tuple[float, int, int]]:
    """Every request recorded in ``log_dir`` so far, (time, feed, status), files in turn
    (not in time order across files)."""
    for path in sorted(log_dir.glob("requests-*.bin")):
        data = array.array("d")
        raw = path.read_bytes()
        data.frombytes(raw[: len(raw) - len(raw) % 24])
        for j in range(0, len(data), 3):
            yield data[j], int(data[j + 1]), int(data[j + 2])


class _Http(asyncio.Protocol):
    def __init__(self, farm: Farm, rec: Recorder) -> None:
        self.farm, self.rec = farm, rec
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self._send(431, b"", {}, close=True)
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            if not self._answer(head):
                return

    def _answer(self, head: str) -> bool:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close"
        path = parts[1] if len(parts) == 3 else ""
        if parts[0] != "GET" or not path.startswith("/f/") or not path.endswith(".xml"):
            self._send(404, b"not found", {}, close=close)
            return not close
        try:
            i = int(path[3:-4])
        except ValueError:
            i = -1
        if not 0 <= i < self.farm.feeds:
            self._send(404, b"not found", {}, close=close)
            return not close
        n = self.farm.count(i, time.time())
        etag = f'"{i}-{n}"'
        newest = self.farm.item_time(i, n - 1)
        modified = formatdate(newest, usegmt=True)
        if headers.get("if-none-match") == etag or headers.get("if-modified-since") == modified:
            status, body = 304, b""
        else:
            status, body = 200, self.farm.body(i, n)[0]
        self.rec.add(i, status)
        self._send(status, body, {"ETag": etag, "Last-Modified": modified,
                                  "Content-Type": "application/rss+xml; charset=utf-8"},
                   close=close)
        return not close

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: "OK", 304: "Not Modified", 404: "Not Found"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if status != 304:
            head.append(f"Content-Length: {len(body)}")
        if close:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if close:
            self.transport.close()


def bind_all(port: int) -> list[socket.socket]:
    """Listening sockets on the same port of every farm address (``port`` 0: one free on
    127.0.0.1 that the others also have free, a few tries)."""
    for _ in range(20):
        socks: list[socket.socket] = []
        try:
            first = socket.socket()
            socks.append(first)
            first.bind(("127.0.0.1", port))
            chosen = first.getsockname()[1]
            for n in range(2, HOSTS + 1):
                s = socket.socket()
                socks.append(s)
                s.bind((f"127.0.0.{n}", chosen))
            for s in socks:
                s.listen(1024)
                s.setblocking(False)
            return socks
        except OSError:
            for s in socks:
                s.close()
            if port:
                raise
    raise OSError("no port free on all 16 loopback addresses")


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _serve(farm: Farm, socks: list[socket.socket], rec: Recorder, parent: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    servers = [await loop.create_server(lambda: _Http(farm, rec), sock=s, backlog=1024)
               for s in socks]
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            rec.flush()
            if os.getppid() != parent:
                break
    finally:
        for srv in servers:
            srv.close()
        rec.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.capfarm", description=__doc__.split("\n")[0])
    ap.add_argument("--feeds", type=int, required=True)
    ap.add_argument("--interval", type=float, required=True)
    ap.add_argument("--t0", type=float, default=0.0, help="wall time of cycle 0 (default: now)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--log-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    die_with_parent()
    parent = os.getppid()
    headlines, source = load_headlines()
    farm = Farm(args.feeds, args.interval, args.t0 or time.time(), headlines)
    socks = bind_all(args.port)
    print(f"READY {socks[0].getsockname()[1]} {source}", flush=True)
    children: list[int] = []
    for n in range(1, args.procs):
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            asyncio.run(_serve(farm, socks, Recorder(args.log_dir / f"requests-{n}.bin"),
                               os.getppid()))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(_serve(farm, socks, Recorder(args.log_dir / "requests-0.bin"), parent))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
