"""aiohttp's default TLS contexts, made while it is imported, read the CA bundle at their
first handshake instead (``shell.lazycerts``): they then trust exactly what a default
context trusts, verification still refuses an unknown issuer, and a real HTTPS fetch
through the default certificates (``SSL_CERT_FILE`` naming a private CA) succeeds."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from monitor.shell.lazycerts import CertsOnUse, certs_on_first_use

FETCH = """
import asyncio, sys
from monitor.shell.fetch import Fetcher
import aiohttp.connector as c
assert type(c._SSL_CONTEXT_VERIFIED).__name__ == "CertsOnUse", type(c._SSL_CONTEXT_VERIFIED)
assert c._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"] == 0  # nothing read yet

async def main():
    async with Fetcher(user_agent="t", connect_timeout=5, timeout=10, max_bytes=10**6,
                       max_redirects=3, concurrency=2, per_host=2) as f:
        r = await f.fetch(sys.argv[1], etag=None, last_modified=None)
    print(type(r).__name__, getattr(r, "body", b"").decode(), getattr(r, "reason", ""))

asyncio.run(main())
"""


def test_a_deferred_context_trusts_what_a_default_one_does() -> None:
    with certs_on_first_use():
        ctx = ssl.create_default_context()
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.set_default_verify_paths()
    assert isinstance(ctx, CertsOnUse) and isinstance(bare, CertsOnUse)
    assert ctx.cert_store_stats()["x509_ca"] == 0
    # the patch is gone: a context made now loads at once
    assert not isinstance(ssl.create_default_context(), CertsOnUse)
    ref = ssl.create_default_context()
    assert (ctx.verify_mode, ctx.check_hostname, ctx.options, ctx.verify_flags) == (
        ref.verify_mode, ref.check_hostname, ref.options, ref.verify_flags)
    for c in (ctx, bare):
        c.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
        assert c.get_ca_certs() == ref.get_ca_certs()
    if ref.cert_store_stats()["x509_ca"] == 0:
        pytest.skip("no system CA bundle here: the comparison above proves little")


@pytest.fixture
async def https_feed(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose certificate a private CA issued; the URL of
    its feed, and the CA's PEM file."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))

    async def feed(request: web.Request) -> web.Response:
        return web.Response(text="<rss>secure</rss>", content_type="application/rss+xml")

    app = web.Application()
    app.router.add_get("/feed.xml", feed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield f"https://127.0.0.1:{port}/feed.xml", pem
    finally:
        await runner.cleanup()


async def _fetch_in_fresh_process(url: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FETCH, url, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_an_https_feed_is_verified_with_the_default_certificates(
    https_feed: tuple[str, Path]
) -> None:
    url, pem = https_feed
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    # the private CA as the default bundle: loaded at the first handshake, it verifies
    out = await _fetch_in_fresh_process(url, {**env, "SSL_CERT_FILE": str(pem)})
    assert out.startswith("Fetched <rss>secure</rss>"), out
    # the system's bundle does not know that CA: refused, as it always was
    out = await _fetch_in_fresh_process(url, env)
    assert out.startswith("FetchFailed") and "certificate" in out.lower(), out


def test_handshakes_racing_the_first_all_see_every_certificate() -> None:
    import threading

    with certs_on_first_use():
        ctx = ssl.create_default_context()
    want = len(ssl.create_default_context().get_ca_certs())
    seen: list[int] = []
    start = threading.Barrier(8)

    def handshake() -> None:
        start.wait()
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
        seen.append(len(ctx.get_ca_certs()))

    threads = [threading.Thread(target=handshake) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [want] * 8
