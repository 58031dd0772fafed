"""Shared fixtures. Local peers (feed server, SMTP, Slack) live in tests/peers/ and are
loaded as pytest plugins: every module there provides fixtures to every test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPORA = SHARED / "corpora"

pytest_plugins = sorted(
    f"tests.peers.{p.stem}"
    for p in (Path(__file__).parent / "peers").glob("*.py")
    if not p.name.startswith("_")
)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: this test needs the shared corpora checked out beside the repo")
    return p
