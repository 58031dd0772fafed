"""The process's own entry: the ``monitor`` console script and ``python -m monitor``.

The garbage collector is paused before anything else is imported: importing builds
modules, classes and functions, never garbage, and a collection then walks them all
(about 10 ms of a ``monitor once``). ``main`` turns it on again as soon as it knows the
command, except ``monitor once``, which keeps it off until it has started
(``gcpolicy.started``).
"""

from __future__ import annotations

from monitor.shell import gcpolicy


def run() -> int:
    gcpolicy.pause_for_start()
    from monitor.cli.main import main

    return main()
