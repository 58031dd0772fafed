"""Take the README's screenshot of the status page: docs/status-page.png.

    .venv/bin/python tools/status_screenshot.py [OUT.png]

Runs ``monitor demo --keep`` (the real pipeline on the bundled feeds, then the daemon
left running with its status page), waits until the page shows the demo's failing feed,
captures the whole page with headless Chromium (``tests/browser.py``: Debian's chromium
and chromium-driver) and stops the demo.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import browser_unavailable, chromium, screenshot_page  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, text: str, limit: float = 90.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if text in r.read().decode("utf-8"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} never showed {text!r}")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "status-page.png"
    reason = browser_unavailable()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    listen = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="monitor-shot-") as tmp:
        demo = subprocess.Popen(
            [sys.executable, "-m", "monitor", "demo", "--keep", tmp, "--listen", listen],
            cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            url = f"http://{listen}/"
            wait_for(url, "HTTP 404")
            with chromium(width=1280) as browser:
                screenshot_page(browser, url, out)
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(30)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
